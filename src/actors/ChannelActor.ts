/**
 * The channel actor (`channel/<id>`; DMs and group DMs are channels too): the one
 * writer of a channel's timeline. It reads like a state machine — state, a batch of
 * commands, the events they make — around one fenced transaction per batch:
 *
 *   receive(batch)
 *     1. answer retries: a command id or `client_msg_id` seen before gets its original
 *        answer (recent window in memory, else one lookup for the whole batch; an
 *        older `client_msg_id` is looked up only once the commit finds it taken);
 *     2. load what the batch refers to and the cache lacks (messages and their
 *        reactions, thread parents, names wanted by renames): one query each;
 *     3. decide each command in order against a draft of the state (membership,
 *        archive, authorship, …): a refusal is the command's answer; an accepted
 *        command appends events with the next gap-free `seq` and a strictly increasing
 *        `ts` (MessageTs.ts), and the rows that record them;
 *     4. commit the draft under the shard's fence, at once: as row writes merged into
 *        the node's group commit (the hot path: posts, edits, reactions, joins), or in
 *        the actor's own transaction when rows cannot express it (deletions, thread
 *        recounts, creation) — Channels.ts;
 *     5. only then publish the events in seq order, then the per-user events, and
 *        complete every command.
 *
 * A batch is every command queued while the previous one committed, so a busy channel
 * writes hundreds of messages per transaction (group commit). A conversation is created
 * by its own actor (`CreateChannel`, `OpenConversation`), so that `channel_created` and
 * the first members' events are seq 1, 2, ….
 *
 * Failure: a unique or `last_seq` conflict at commit means another writer (a zombie
 * owner) touched the timeline: the actor dies, and its restart reloads the state and
 * decides the batch again (invariant 3 and 4). The draft is discarded on any failure,
 * so a retried batch starts from the committed state.
 */
import type { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { Cause, Clock, Data, Effect, Exit, Layer, Option } from "effect"
import type { ChannelEvent, UserEvent } from "../domain/ChannelEvents.ts"
import { canSee, typeOf } from "../domain/ConversationAccess.ts"
import type { ChannelRow } from "../domain/SlackConversation.ts"
import { toSlackConversation } from "../domain/SlackConversation.ts"
import type { MessageRow, ReactionSummary, SlackMessage } from "../domain/SlackMessage.ts"
import { toSlackMessage } from "../domain/SlackMessage.ts"
import type { ActorContext, Incoming } from "../runtime/Behaviour.ts"
import type { ExitOf } from "../runtime/Entity.ts"
import type { FencedOut } from "../runtime/RuntimeErrors.ts"
import * as Behaviour from "../runtime/Behaviour.ts"
import type { CommandRow, EventRow, ReactionRow, ThreadTotals } from "../store/Channels.ts"
import * as ChannelsStore from "../store/Channels.ts"
import { Channels } from "../store/Channels.ts"
import type * as P from "./ChannelProtocol.ts"
import { Channel, ChannelError, limits, normaliseReactionName } from "./ChannelProtocol.ts"
import type { Outgoing } from "./EventPublisher.ts"
import * as EventPublisher from "./EventPublisher.ts"
import * as MessageTs from "./MessageTs.ts"
import type { Nats } from "../transport/Nats.ts"

// ---- state ----------------------------------------------------------------------------

/** A message as the actor knows it: its row and its reactions (name → users, in order). */
interface Entry {
  readonly row: MessageRow
  readonly reactions: ReadonlyMap<string, ReadonlyArray<string>>
}

/** What a command id or client_msg_id was answered with. */
type Remembered =
  | { readonly _tag: "post"; readonly ts: string; readonly seq: number; readonly user: string | null }
  | { readonly _tag: "reply"; readonly reply: unknown }

export interface State {
  readonly id: string
  /** Undefined until the conversation is created. */
  channel: ChannelRow | undefined
  readonly members: Set<string>
  /** The channel clock: microseconds of the last ts handed out. */
  clock: number
  /** Recent messages by ts (insertion order ≈ recency), bounded by `cacheSize`. */
  readonly cache: Map<string, Entry>
  /**
   * Answers by `c:<command id>` / `m:<client_msg_id>`, oldest first: every command this
   * activation applied within `windowRetentionMs` (the senders' retry horizon), and at
   * least the last `windowMin` (see `remember`).
   */
  readonly window: Map<string, { readonly at: number; readonly value: Remembered }>
  /** When this activation began (ms): only commands sent before may have been applied by another. */
  readonly activatedAt: number
}

/** Messages kept in memory per channel; older ones are read on demand. */
export const cacheSize = 512
/** Answers kept in memory for retries whatever their age; older ones are found in PostgreSQL. */
export const windowMin = 2048
/** How long an answer stays in memory: beyond any sender's retries (requestDeadline, 30 s by default). */
export const windowRetentionMs = 120_000
/** The most answers kept, whatever their age (bounds memory under floods). */
export const windowMax = 100_000
/**
 * Clock skew allowed between a sender and this node: a command sent less than this
 * before the activation began may have been applied by the previous one.
 */
const skewMarginMs = 5_000
/** Messages loaded at start. */
const warmMessages = 100

const bounded = <K, V>(map: Map<K, V>, size: number) => {
  while (map.size > size) {
    const oldest = map.keys().next()
    if (oldest.done === true) break
    map.delete(oldest.value)
  }
}

const remember = (state: State, key: string, value: Remembered, now: number) => {
  state.window.delete(key)
  state.window.set(key, { at: now, value })
  for (const [oldest, { at }] of state.window) {
    if (state.window.size <= windowMin || (state.window.size <= windowMax && at >= now - windowRetentionMs)) break
    state.window.delete(oldest)
  }
}

const cacheEntry = (state: State, entry: Entry) => {
  state.cache.delete(entry.row.ts)
  state.cache.set(entry.row.ts, entry)
  bounded(state.cache, cacheSize)
}

const entriesOf = (rows: ReadonlyArray<MessageRow>, reactions: ReadonlyArray<ReactionRow>): Array<Entry> => {
  const byTs = new Map<string, Map<string, Array<string>>>()
  for (const r of reactions) {
    let names = byTs.get(r.message_ts)
    if (names === undefined) byTs.set(r.message_ts, names = new Map())
    const users = names.get(r.name)
    if (users === undefined) names.set(r.name, [r.user_id])
    else users.push(r.user_id)
  }
  return rows.map((row) => ({ row: normaliseRow(row), reactions: byTs.get(row.ts) ?? new Map() }))
}

/** Rows from PostgreSQL, with the defaults the actor relies on. */
const normaliseRow = (row: MessageRow): MessageRow => ({ ...row, reply_users: row.reply_users ?? [] })

const commandKey = (commandId: string) => `c:${commandId}`
const clientMsgKey = (clientMsgId: string) => `m:${clientMsgId}`

// ---- input hygiene --------------------------------------------------------------------

const loneSurrogate = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g

/** Text PostgreSQL accepts in `text` and `jsonb`: no NUL, no lone surrogates. */
export const cleanText = (s: string): string => s.replace(/\u0000/g, "").replace(loneSurrogate, "\ufffd")

const cleanJson = (value: unknown, depth = 0): unknown => {
  if (typeof value === "string") return cleanText(value)
  if (depth > 32 || value === null || typeof value !== "object") return value
  if (Array.isArray(value)) return value.map((v) => cleanJson(v, depth + 1))
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(value)) out[cleanText(k)] = cleanJson(v, depth + 1)
  return out
}

const present = (value: unknown): boolean => value !== undefined && value !== null && !(Array.isArray(value) && value.length === 0)

// ---- the draft of one batch -----------------------------------------------------------

/**
 * The batch's changes over the committed state, which stays untouched until the
 * commit succeeds (a failed commit is retried from the same state).
 */
class Draft {
  /** The channel's settings as changed so far; `last_seq`/`last_ts` live in `seq`/`lastTs`. */
  channel: ChannelRow | undefined
  seq: number
  lastTs: string | null
  clock: number
  readonly memberDelta = new Map<string, boolean>()
  memberCount: number
  /** Messages created or changed in this batch, in their latest state. */
  readonly messages = new Map<string, Entry>()
  readonly inserted = new Set<string>()
  readonly updated = new Set<string>()
  readonly recount = new Set<string>()
  /** Reaction keys touched, with whether the row existed before the batch. */
  readonly reactionBase = new Map<string, { readonly before: boolean; readonly row: ReactionRow }>()
  readonly joinedSeq = new Map<string, number>()
  readonly events: Array<EventRow> = []
  readonly outgoing: Array<Outgoing> = []
  readonly commands: Array<CommandRow> = []
  readonly remembered = new Map<string, Remembered>()
  /** Channel names other channels hold (for renames). */
  takenNames: ReadonlySet<string> = new Set()
  /** Whether this draft creates the conversation (its row is inserted first). */
  creating = false

  constructor(readonly state: State, readonly nowMicros: number) {
    this.channel = state.channel === undefined ? undefined : { ...state.channel }
    this.seq = state.channel?.last_seq ?? 0
    this.lastTs = state.channel?.last_ts ?? null
    this.clock = state.clock
    this.memberCount = state.members.size
  }

  get id(): string {
    return this.state.id
  }

  get changed(): boolean {
    return this.events.length > 0
  }

  isMember(user: string): boolean {
    return this.memberDelta.get(user) ?? this.state.members.has(user)
  }

  setMember(user: string, member: boolean, seq: number) {
    if (this.isMember(user) === member) return
    this.memberDelta.set(user, member)
    this.memberCount += member ? 1 : -1
    if (member) this.joinedSeq.set(user, seq)
  }

  /** Current members; for DMs and group DMs (small). */
  memberList(): Array<string> {
    const all = new Set(this.state.members)
    for (const [user, member] of this.memberDelta) {
      if (member) all.add(user)
      else all.delete(user)
    }
    return [...all]
  }

  message(ts: string): Entry | undefined {
    return this.messages.get(ts) ?? this.state.cache.get(ts)
  }

  /** Records a message's new state: a new row, a changed row, or changed reactions only. */
  putMessage(entry: Entry, change: "new" | "row" | "reactions") {
    this.messages.set(entry.row.ts, entry)
    if (change === "new") this.inserted.add(entry.row.ts)
    else if (change === "row" && !this.inserted.has(entry.row.ts)) this.updated.add(entry.row.ts)
  }

  /** The channel row as it will be committed. */
  get row(): ChannelRow | undefined {
    return this.channel === undefined ? undefined : { ...this.channel, last_seq: this.seq, last_ts: this.lastTs }
  }

  /** The next ts of the channel clock. */
  tick(): string {
    this.clock = MessageTs.nextMicros(this.clock, this.nowMicros)
    return MessageTs.format(this.clock)
  }

  get nowMs(): number {
    return Math.floor(this.nowMicros / 1000)
  }

  /** Appends a channel event with the next seq; `fields` are Slack's shape. */
  emit(type: string, fields: Record<string, unknown>, ts?: string): ChannelEvent {
    return this.record({ ...fields, type, channel: this.id, seq: ++this.seq, event_ts: ts ?? this.tick() })
  }

  private record(event: ChannelEvent): ChannelEvent {
    this.events.push({ seq: event.seq, type: event.type, event, created_at: this.nowMs })
    this.outgoing.push(EventPublisher.channelEvent(event))
    return event
  }

  /** A per-user event for `event.user`. */
  notify(event: UserEvent) {
    this.outgoing.push(EventPublisher.userEvent(event.user, event))
  }

  /** Posts a message row (already numbered by `numbered`) and emits its event. */
  postRow(row: MessageRow): { readonly message: SlackMessage; readonly seq: number } {
    this.putMessage({ row, reactions: new Map() }, "new")
    this.lastTs = row.ts
    const message = toSlackMessage(row)
    this.record({ ...message, type: "message", channel: this.id, seq: row.seq, event_ts: row.ts, channel_type: channelType(this.channel) })
    return { message, seq: row.seq }
  }

  /** A fresh message row with the next seq and ts. */
  numbered(fields: Partial<MessageRow> & { readonly user_id: string | null; readonly text: string }): MessageRow {
    const seq = ++this.seq
    const ts = this.tick()
    return {
      channel_id: this.id,
      ts,
      seq,
      team_id: this.channel?.team_id ?? "",
      bot_id: null,
      subtype: null,
      blocks: null,
      attachments: null,
      files: null,
      thread_ts: null,
      reply_broadcast: false,
      reply_count: 0,
      reply_users: [],
      latest_reply: null,
      client_msg_id: null,
      edited_ts: null,
      edited_by: null,
      deleted: false,
      extra: null,
      ...fields
    }
  }

  /** A system message (`channel_join`, `channel_topic`, …) from `user`. */
  systemMessage(subtype: string, user: string, text: string, extra: Record<string, unknown> = {}) {
    return this.postRow(this.numbered({ user_id: user, subtype, text, extra }))
  }

  touchReaction(row: ReactionRow, beforeBatch: boolean) {
    const key = `${row.message_ts}\u0000${row.name}\u0000${row.user_id}`
    if (!this.reactionBase.has(key)) this.reactionBase.set(key, { before: beforeBatch, row })
  }
}

/** Slack's `channel_type` of message events. */
const channelType = (c: ChannelRow | undefined): string => {
  if (c === undefined) return "channel"
  return c.is_im ? "im" : c.is_mpim ? "mpim" : c.is_private ? "group" : "channel"
}

/** Slack's `channel_type` of member events: C (public) or G (everything else). */
const memberChannelType = (c: ChannelRow): string => (typeOf(c) === "public_channel" ? "C" : "G")

/** The conversation object as `viewer` sees it now. */
const conversationFor = (d: Draft, viewer: string) => {
  const c = d.row as ChannelRow
  const isIm = c.is_im
  const others = isIm ? d.memberList().filter((u) => u !== viewer) : []
  return toSlackConversation({
    ...c,
    is_member: d.isMember(viewer),
    last_read: null,
    last_read_seq: null,
    im_user: isIm ? (others[0] ?? viewer) : null,
    num_members: d.memberCount
  })
}

const reactionSummaries = (entry: Entry): ReadonlyArray<ReactionSummary> =>
  [...entry.reactions].map(([name, users]) => ({ name, users, count: users.length }))

// ---- deciding one command -------------------------------------------------------------

type Outcome = { readonly _tag: "ok"; readonly reply: unknown; readonly remember?: Remembered } | { readonly _tag: "error"; readonly code: string }

const ok = (reply: unknown, rememberAs?: Remembered): Outcome =>
  rememberAs === undefined ? { _tag: "ok", reply } : { _tag: "ok", reply, remember: rememberAs }
const refuse = (code: string): Outcome => ({ _tag: "error", code })

/**
 * Why `user` may not act in the channel as a member, or undefined when they may.
 * Someone who may not see the channel learns nothing of it (`channel_not_found`).
 */
const memberProblem = (d: Draft, user: string, team: string, role: P.Role = "member"): string | undefined => {
  const c = d.channel
  if (c === undefined || c.team_id !== team) return "channel_not_found"
  if (d.isMember(user)) return undefined
  return canSee({ teamId: team, role }, c, false) ? "not_in_channel" : "channel_not_found"
}

const isAdmin = (role: P.Role) => role === "owner" || role === "admin"
const isDm = (c: ChannelRow) => c.is_im || c.is_mpim

/** Message subtypes that cannot start a thread (as on Slack). */
const unthreadable = new Set(["channel_join", "channel_leave"])

const postMessage = (d: Draft, m: P.PostMessage, commandId: string): Outcome => {
  const problem = memberProblem(d, m.on_behalf_of ?? m.user, m.team)
  if (problem !== undefined) return refuse(problem)
  const c = d.channel as ChannelRow
  if (c.is_archived) return refuse("is_archived")
  const text = cleanText(m.text)
  if (text.length > limits.text) return refuse("msg_too_long")
  const blocks = present(m.blocks) ? cleanJson(m.blocks) : null
  const attachments = present(m.attachments) ? cleanJson(m.attachments) : null
  const files = present(m.files) ? (cleanJson(m.files) as ReadonlyArray<unknown>) : null
  if (text.trim().length === 0 && blocks === null && attachments === null && files === null) return refuse("no_text")
  if (m.client_msg_id !== undefined && (m.client_msg_id.length === 0 || m.client_msg_id.length > limits.clientMsgId)) {
    return refuse("invalid_client_msg_id")
  }
  let parent: Entry | undefined
  if (m.thread_ts !== undefined) {
    const wanted = MessageTs.normalise(m.thread_ts)
    let found = wanted === undefined ? undefined : d.message(wanted)
    // A reply's ts stands for its thread.
    if (found !== undefined && found.row.thread_ts !== null && found.row.thread_ts !== found.row.ts) found = d.message(found.row.thread_ts)
    if (found === undefined || found.row.deleted || unthreadable.has(found.row.subtype ?? "")) return refuse("thread_not_found")
    parent = found
  }
  const extra: Record<string, unknown> = {}
  if (parent !== undefined && parent.row.user_id !== null) extra["parent_user_id"] = parent.row.user_id
  if (m.app_id !== undefined) extra["app_id"] = m.app_id
  if (m.username !== undefined) extra["username"] = cleanText(m.username)
  if (m.icon_emoji !== undefined || m.icon_url !== undefined) {
    extra["icons"] = { ...(m.icon_emoji === undefined ? {} : { emoji: cleanText(m.icon_emoji) }), ...(m.icon_url === undefined ? {} : { image_64: cleanText(m.icon_url) }) }
  }
  if (files !== null) {
    extra["upload"] = true
    extra["display_as_bot"] = false
  }
  const row = d.numbered({
    user_id: m.user,
    bot_id: m.bot_id ?? null,
    text,
    blocks,
    attachments,
    files,
    subtype: files !== null ? "file_share" : m.bot_id !== undefined ? "bot_message" : null,
    thread_ts: parent?.row.ts ?? null,
    reply_broadcast: parent !== undefined && m.reply_broadcast === true,
    client_msg_id: m.client_msg_id ?? null,
    extra: Object.keys(extra).length === 0 ? null : extra
  })
  if (parent !== undefined) {
    const p = parent.row
    d.putMessage({
      row: {
        ...p,
        thread_ts: p.ts,
        reply_count: p.reply_count + 1,
        reply_users: p.reply_users.includes(m.user) ? p.reply_users : [...p.reply_users, m.user],
        latest_reply: row.ts
      },
      reactions: parent.reactions
    }, "row")
  }
  const { message, seq } = d.postRow(row)
  for (const file of files ?? []) {
    const id = (file as { readonly id?: unknown } | null)?.id
    if (typeof id === "string") d.emit("file_shared", { file_id: id, user_id: m.user, file: { id }, channel_id: d.id })
  }
  const remembered: Remembered = { _tag: "post", ts: row.ts, seq, user: m.user }
  if (m.client_msg_id === undefined) {
    d.commands.push({ command_id: commandId, seq, reply: { ts: row.ts, seq }, created_at: d.nowMs })
  }
  return ok({ ts: row.ts, seq, message }, remembered)
}

/** The message `ts` names, when it exists and is not deleted. */
const liveMessage = (d: Draft, ts: string): Entry | undefined => {
  const normal = MessageTs.normalise(ts)
  const entry = normal === undefined ? undefined : d.message(normal)
  return entry === undefined || entry.row.deleted ? undefined : entry
}

const updateMessage = (d: Draft, m: P.UpdateMessage): Outcome => {
  const problem = memberProblem(d, m.on_behalf_of ?? m.user, m.team)
  if (problem !== undefined) return refuse(problem)
  if ((d.channel as ChannelRow).is_archived) return refuse("is_archived")
  const entry = liveMessage(d, m.ts)
  if (entry === undefined) return refuse("message_not_found")
  const old = entry.row
  if (old.user_id !== m.user || (old.subtype !== null && old.subtype !== "bot_message")) return refuse("cant_update_message")
  const text = m.text === undefined ? old.text : cleanText(m.text)
  if (text.length > limits.text) return refuse("msg_too_long")
  const blocks = m.blocks === undefined ? old.blocks : present(m.blocks) ? cleanJson(m.blocks) : null
  const attachments = m.attachments === undefined ? old.attachments : present(m.attachments) ? cleanJson(m.attachments) : null
  if (text.trim().length === 0 && blocks === null && attachments === null) return refuse("no_text")
  const eventTs = d.tick()
  const row: MessageRow = { ...old, text, blocks, attachments, edited_ts: eventTs, edited_by: m.user }
  const next: Entry = { row, reactions: entry.reactions }
  d.putMessage(next, "row")
  const message = toSlackMessage(row, reactionSummaries(next))
  const event = d.emit("message", {
    subtype: "message_changed",
    hidden: true,
    message,
    previous_message: toSlackMessage(old, reactionSummaries(entry)),
    ts: eventTs,
    channel_type: channelType(d.channel)
  }, eventTs)
  return ok({ ts: row.ts, seq: event.seq, message })
}

const deleteMessage = (d: Draft, m: P.DeleteMessage): Outcome => {
  const problem = memberProblem(d, m.on_behalf_of ?? m.user, m.team, m.role)
  if (problem !== undefined) return refuse(problem)
  if ((d.channel as ChannelRow).is_archived) return refuse("is_archived")
  const entry = liveMessage(d, m.ts)
  if (entry === undefined) return refuse("message_not_found")
  const old = entry.row
  if (old.user_id !== m.user && !isAdmin(m.role)) return refuse("cant_delete_message")
  const row: MessageRow = { ...old, deleted: true, text: "", blocks: null, attachments: null, files: null }
  d.putMessage({ row, reactions: entry.reactions }, "row")
  if (old.thread_ts !== null && old.thread_ts !== old.ts) {
    // A reply: its thread is recounted from what remains at commit.
    const parent = d.message(old.thread_ts)
    if (parent !== undefined) {
      d.putMessage({ row: { ...parent.row, reply_count: Math.max(0, parent.row.reply_count - 1) }, reactions: parent.reactions }, "row")
    }
    d.recount.add(old.thread_ts)
  }
  const eventTs = d.tick()
  const event = d.emit("message", {
    subtype: "message_deleted",
    hidden: true,
    deleted_ts: old.ts,
    previous_message: toSlackMessage(old, reactionSummaries(entry)),
    ts: eventTs,
    channel_type: channelType(d.channel)
  }, eventTs)
  return ok({ ts: old.ts, seq: event.seq })
}

/** Shows a shared file as deleted in the message that shared it (Slack's tombstone). */
const removeFile = (d: Draft, m: P.RemoveFile): Outcome => {
  const c = d.channel
  if (c === undefined || c.team_id !== m.team) return refuse("channel_not_found")
  const entry = liveMessage(d, m.ts)
  const files = entry?.row.files
  if (entry === undefined || !Array.isArray(files)) return ok({ changed: false })
  let changed = false
  const next = files.map((f: unknown) => {
    const file = f as { readonly id?: unknown; readonly mode?: unknown } | null
    if (file?.id !== m.file || file.mode === "tombstone") return f
    changed = true
    return { id: m.file, mode: "tombstone" }
  })
  if (!changed) return ok({ changed: false })
  const old = entry.row
  const row: MessageRow = { ...old, files: next }
  const updated: Entry = { row, reactions: entry.reactions }
  d.putMessage(updated, "row")
  const eventTs = d.tick()
  d.emit("message", {
    subtype: "message_changed",
    hidden: true,
    message: toSlackMessage(row, reactionSummaries(updated)),
    previous_message: toSlackMessage(old, reactionSummaries(entry)),
    ts: eventTs,
    channel_type: channelType(c)
  }, eventTs)
  d.emit("file_deleted", { file_id: m.file, channel_ids: [d.id] })
  return ok({ changed: true })
}

/** Distinct reactions one message may carry. */
const maxReactionNames = 50

const react = (d: Draft, m: P.AddReaction | P.RemoveReaction, add: boolean): Outcome => {
  const problem = memberProblem(d, m.user, m.team)
  if (problem !== undefined) return refuse(problem)
  if ((d.channel as ChannelRow).is_archived) return refuse("is_archived")
  const name = normaliseReactionName(m.name)
  if (name === undefined) return refuse("invalid_name")
  const entry = liveMessage(d, m.ts)
  if (entry === undefined) return refuse("message_not_found")
  const users = entry.reactions.get(name) ?? []
  const has = users.includes(m.user)
  if (add && has) return refuse("already_reacted")
  if (!add && !has) return refuse("no_reaction")
  if (add && users.length === 0 && entry.reactions.size >= maxReactionNames) return refuse("too_many_reactions")
  const reactions = new Map(entry.reactions)
  const nextUsers = add ? [...users, m.user] : users.filter((u) => u !== m.user)
  if (nextUsers.length === 0) reactions.delete(name)
  else reactions.set(name, nextUsers)
  d.touchReaction({ message_ts: entry.row.ts, name, user_id: m.user, created_at: d.nowMs }, has)
  // Reactions live in their own table: the message row itself is unchanged.
  d.putMessage({ row: entry.row, reactions }, "reactions")
  const event = d.emit(add ? "reaction_added" : "reaction_removed", {
    user: m.user,
    reaction: name,
    ...(entry.row.user_id === null ? {} : { item_user: entry.row.user_id }),
    item: { type: "message", channel: d.id, ts: entry.row.ts }
  })
  return ok({ seq: event.seq })
}

/** Adds `user` with Slack's events: member_joined_channel, a channel_join message, channel_joined to them. */
const addMember = (d: Draft, user: string, inviter: string | undefined, withMessage: boolean) => {
  const c = d.channel as ChannelRow
  const joined = d.emit("member_joined_channel", {
    user,
    channel_type: memberChannelType(c),
    team: c.team_id,
    ...(inviter === undefined ? {} : { inviter })
  })
  d.setMember(user, true, joined.seq)
  if (withMessage) {
    d.systemMessage("channel_join", user, `<@${user}> has joined the channel`, inviter === undefined ? {} : { inviter })
  }
  return joined.seq
}

const notifyJoined = (d: Draft, user: string, seq: number) => {
  const c = d.channel as ChannelRow
  d.notify({
    type: c.is_im ? "im_created" : "channel_joined",
    user,
    channel: conversationFor(d, user),
    channel_id: d.id,
    seq
  })
}

const removeMember = (d: Draft, user: string, actor: string | undefined) => {
  const c = d.channel as ChannelRow
  if (actor === undefined) d.systemMessage("channel_leave", user, `<@${user}> has left the channel`)
  const left = d.emit("member_left_channel", {
    user,
    channel_type: memberChannelType(c),
    team: c.team_id,
    ...(actor === undefined ? {} : { actor_id: actor })
  })
  d.setMember(user, false, left.seq)
  d.notify({ type: "channel_left", user, channel: d.id, channel_id: d.id, seq: left.seq, ...(actor === undefined ? {} : { actor_id: actor }) })
}

const join = (d: Draft, m: P.Join): Outcome => {
  const c = d.channel
  if (c === undefined || c.team_id !== m.team) return refuse("channel_not_found")
  if (d.isMember(m.user)) {
    return c.is_archived ? refuse("is_archived") : ok({ channel: conversationFor(d, m.user), already_in_channel: true })
  }
  if (isDm(c) || !canSee({ teamId: m.team, role: m.role }, c, false)) return refuse("channel_not_found")
  if (c.is_archived) return refuse("is_archived")
  const seq = addMember(d, m.user, undefined, true)
  notifyJoined(d, m.user, seq)
  return ok({ channel: conversationFor(d, m.user), already_in_channel: false })
}

const leave = (d: Draft, m: P.Leave): Outcome => {
  const problem = memberProblem(d, m.user, m.team)
  if (problem === "not_in_channel") return ok({ not_in_channel: true })
  if (problem !== undefined) return refuse(problem)
  const c = d.channel as ChannelRow
  if (c.is_im) return refuse("method_not_supported_for_channel_type")
  if (c.is_archived) return refuse("is_archived")
  removeMember(d, m.user, undefined)
  return ok({ not_in_channel: false })
}

const invite = (d: Draft, m: P.Invite): Outcome => {
  const problem = memberProblem(d, m.user, m.team, m.role)
  if (problem !== undefined) return refuse(problem)
  const c = d.channel as ChannelRow
  if (isDm(c)) return refuse("method_not_supported_for_channel_type")
  if (c.is_archived) return refuse("is_archived")
  if (m.role === "guest") return refuse("restricted_action")
  const users = [...new Set(m.users)]
  if (users.length === 0) return refuse("no_user")
  if (users.length > limits.invite) return refuse("too_many_users")
  if (users.includes(m.user)) return refuse("cant_invite_self")
  if (users.some((u) => d.isMember(u))) return refuse("already_in_channel")
  for (const user of users) {
    const seq = addMember(d, user, m.user, true)
    notifyJoined(d, user, seq)
  }
  return ok({ channel: conversationFor(d, m.user) })
}

const kick = (d: Draft, m: P.Kick): Outcome => {
  const problem = memberProblem(d, m.user, m.team, m.role)
  if (problem !== undefined) return refuse(problem)
  const c = d.channel as ChannelRow
  if (isDm(c)) return refuse("method_not_supported_for_channel_type")
  if (m.target === m.user) return refuse("cant_kick_self")
  // Public channels: admins and the channel's creator; private ones: any member but guests.
  const allowed = m.role !== "guest" && (c.is_private || isAdmin(m.role) || c.creator === m.user)
  if (!allowed) return refuse("restricted_action")
  if (c.is_archived) return refuse("is_archived")
  if (!d.isMember(m.target)) return refuse("not_in_channel")
  removeMember(d, m.target, m.user)
  return ok({})
}

const archive = (d: Draft, m: P.Archive | P.Unarchive, archived: boolean): Outcome => {
  const problem = memberProblem(d, m.user, m.team, m.role)
  if (problem !== undefined) return refuse(problem)
  const c = d.channel as ChannelRow
  if (isDm(c)) return refuse("method_not_supported_for_channel_type")
  if (m.role === "guest") return refuse("restricted_action")
  if (c.is_archived === archived) return refuse(archived ? "already_archived" : "not_archived")
  if (archived) {
    d.systemMessage("channel_archive", m.user, `<@${m.user}> archived the channel`)
    d.emit("channel_archive", { user: m.user })
  } else {
    d.emit("channel_unarchive", { user: m.user })
    d.systemMessage("channel_unarchive", m.user, `<@${m.user}> un-archived the channel`)
  }
  d.channel = { ...(d.channel as ChannelRow), is_archived: archived }
  return ok({})
}

const rename = (d: Draft, m: P.Rename): Outcome => {
  const problem = memberProblem(d, m.user, m.team, m.role)
  if (problem !== undefined) return refuse(problem)
  const c = d.channel as ChannelRow
  if (isDm(c)) return refuse("method_not_supported_for_channel_type")
  if (c.is_archived) return refuse("is_archived")
  if (c.creator !== m.user && !isAdmin(m.role)) return refuse("not_authorized")
  if (c.name === m.name) return ok({ channel: conversationFor(d, m.user) })
  if (d.takenNames.has(m.name)) return refuse("name_taken")
  const oldName = c.name ?? ""
  d.channel = { ...c, name: m.name }
  d.emit("channel_rename", { name: m.name, old_name: oldName, created: Math.floor(c.created_at / 1000) })
  d.systemMessage("channel_name", m.user, `<@${m.user}> renamed the channel from "${oldName}" to "${m.name}"`, { name: m.name, old_name: oldName })
  return ok({ channel: conversationFor(d, m.user) })
}

const setText = (d: Draft, m: P.SetTopic | P.SetPurpose, field: "topic" | "purpose"): Outcome => {
  const problem = memberProblem(d, m.user, m.team)
  if (problem !== undefined) return refuse(problem)
  const c = d.channel as ChannelRow
  if (c.is_archived) return refuse("is_archived")
  const value = cleanText(field === "topic" ? (m as P.SetTopic).topic : (m as P.SetPurpose).purpose)
  if ([...value].length > limits.topic) return refuse("too_long")
  d.channel = field === "topic"
    ? { ...c, topic: value, topic_set_by: m.user, topic_set_at: d.nowMs }
    : { ...c, purpose: value, purpose_set_by: m.user, purpose_set_at: d.nowMs }
  const text = value.length === 0
    ? `<@${m.user}> cleared the channel ${field}`
    : `<@${m.user}> set the channel ${field}: ${value}`
  d.systemMessage(field === "topic" ? "channel_topic" : "channel_purpose", m.user, text, { [field]: value })
  return ok({ channel: conversationFor(d, m.user) })
}

const describe = (d: Draft, m: P.Describe): Outcome => {
  const c = d.channel
  if (c === undefined || c.team_id !== m.team) return refuse("channel_not_found")
  if (!canSee({ teamId: m.team, role: "member" }, c, d.isMember(m.user))) return refuse("channel_not_found")
  return ok({ channel: conversationFor(d, m.user) })
}

/** The row of a conversation about to be created by `m`. */
const newChannelRow = (id: string, m: P.CreateChannel | P.OpenConversation, nowMs: number): ChannelRow => {
  const dm = m._tag === "OpenConversation"
  return {
    id,
    team_id: m.team,
    name: dm ? null : m.name,
    is_private: dm ? true : m.is_private,
    is_im: dm && m.members.length <= 2,
    is_mpim: dm && m.members.length > 2,
    dm_key: dm ? m.dm_key : null,
    creator: m.user,
    topic: "",
    topic_set_by: null,
    topic_set_at: null,
    purpose: "",
    purpose_set_by: null,
    purpose_set_at: null,
    is_archived: false,
    last_seq: 0,
    last_ts: null,
    created_at: nowMs
  }
}

/** Fills a draft that creates the conversation (its row is inserted by the commit). */
const create = (d: Draft, m: P.CreateChannel | P.OpenConversation): Outcome => {
  const row = newChannelRow(d.id, m, d.nowMs)
  d.channel = row
  d.creating = true
  d.emit("channel_created", {
    name: row.name,
    created: Math.floor(row.created_at / 1000),
    creator: row.creator,
    is_private: row.is_private,
    is_im: row.is_im,
    is_mpim: row.is_mpim
  })
  if (m._tag === "CreateChannel") {
    const seq = addMember(d, m.user, undefined, true)
    notifyJoined(d, m.user, seq)
    return ok({ channel: conversationFor(d, m.user), seq: d.seq })
  }
  const members = [...new Set(m.members)]
  const joined = members.map((user) => [user, addMember(d, user, user === m.user ? undefined : m.user, false)] as const)
  for (const [user, seq] of joined) notifyJoined(d, user, seq)
  return ok({ id: d.id, created: true })
}

const openValid = (id: string, m: P.OpenConversation): boolean => {
  const members = new Set(m.members)
  if (!members.has(m.user) || members.size !== m.members.length || members.size > limits.groupDmOthers + 1) return false
  return members.size <= 2 ? id.startsWith("D") : id.startsWith("C")
}

// ---- the behaviour --------------------------------------------------------------------

/** What the decision steps see: a `PostMessages` is split into its posts first (`expandPosts`). */
type ChannelIncoming = Exclude<Incoming<P.ChannelRequest>, { readonly _tag: "PostMessages" }>

const settle = (incoming: ChannelIncoming, exit: Exit.Exit<unknown, unknown>) =>
  (incoming.complete as (exit: Exit.Exit<unknown, unknown>) => void)(exit)

/** The idempotency key of a command. */
const keyOf = (incoming: ChannelIncoming): string | undefined => {
  if (incoming._tag === "Describe") return undefined
  if (incoming._tag === "PostMessage" && incoming.message.client_msg_id !== undefined) return clientMsgKey(incoming.message.client_msg_id)
  return commandKey(incoming.commandId)
}

/** Timestamps a batch refers to (normalised). */
const referencedTs = (incoming: ChannelIncoming): string | undefined => {
  switch (incoming._tag) {
    case "PostMessage":
      return incoming.message.thread_ts === undefined ? undefined : MessageTs.normalise(incoming.message.thread_ts)
    case "UpdateMessage":
    case "DeleteMessage":
    case "AddReaction":
    case "RemoveReaction":
    case "RemoveFile":
      return MessageTs.normalise(incoming.message.ts)
    default:
      return undefined
  }
}

export const init = Effect.fnUntraced(function*(ctx: ActorContext) {
  const store = yield* Channels
  const id = ctx.address.id
  const activatedAt = Date.now()
  const state: State = { id, channel: undefined, members: new Set(), clock: 0, cache: new Map(), window: new Map(), activatedAt }
  const row = yield* store.channel(id)
  if (Option.isNone(row)) return state
  const channel = row.value
  state.channel = channel
  for (const user of yield* store.members(id)) state.members.add(user)
  const lastEventTs = channel.last_seq > 0 ? yield* store.eventTs(id, channel.last_seq) : undefined
  state.clock = Math.max(
    channel.last_ts === null ? 0 : MessageTs.toMicros(channel.last_ts) ?? 0,
    lastEventTs === undefined ? 0 : MessageTs.toMicros(lastEventTs) ?? 0
  )
  const recent = [...(yield* store.recentMessages(id, warmMessages))].reverse()
  const reactions = yield* store.reactions(id, recent.map((m) => m.ts))
  for (const entry of entriesOf(recent, reactions)) {
    cacheEntry(state, entry)
    if (entry.row.client_msg_id !== null) {
      remember(state, clientMsgKey(entry.row.client_msg_id), { _tag: "post", ts: entry.row.ts, seq: entry.row.seq, user: entry.row.user_id }, activatedAt)
    }
  }
  return state
})

/** Loads the messages `ts` (with their reactions) into the cache. */
const load = Effect.fnUntraced(function*(state: State, ts: ReadonlyArray<string>) {
  if (ts.length === 0) return
  const store = yield* Channels
  const rows = yield* store.messages(state.id, ts)
  const reactions = yield* store.reactions(state.id, rows.map((r) => r.ts))
  for (const entry of entriesOf(rows, reactions)) cacheEntry(state, entry)
})

/** Loads into the cache the messages `ts` (and their thread parents) that it lacks. */
const preload = Effect.fnUntraced(function*(state: State, wanted: Iterable<string>) {
  const first = [...new Set(wanted)].filter((ts) => !state.cache.has(ts))
  yield* load(state, first)
  const parents = new Set<string>()
  for (const ts of new Set(wanted)) {
    const row = state.cache.get(ts)?.row
    if (row !== undefined && row.thread_ts !== null && row.thread_ts !== row.ts && !state.cache.has(row.thread_ts)) parents.add(row.thread_ts)
  }
  yield* load(state, [...parents])
})

/**
 * Finds in PostgreSQL the answers of retried commands the window no longer holds.
 *
 * A client may resend a `client_msg_id` at any time (after a reconnect), but almost
 * never does: looking each one up would cost a query per post. So they are looked up
 * only when `lookUpClientMsgIds`, which `receive` sets after a commit met one the
 * channel already holds (its unique index refused the row).
 */
const recallFromStore = Effect.fnUntraced(function*(state: State, batch: ReadonlyArray<ChannelIncoming>, lookUpClientMsgIds: boolean) {
  const store = yield* Channels
  const clientMsgIds: Array<string> = []
  const commandIds: Array<string> = []
  for (const incoming of batch) {
    const key = keyOf(incoming)
    if (key === undefined || state.window.has(key)) continue
    // A command id is only resent within one send, so a command first sent after
    // this activation began was applied by it, if at all, and is in the window.
    if (key.startsWith("m:")) {
      if (lookUpClientMsgIds) clientMsgIds.push(key.slice(2))
    } else if (incoming.sentAt < state.activatedAt + skewMarginMs) commandIds.push(key.slice(2))
  }
  // Before its creation, a channel has nothing stored.
  if (state.channel === undefined) return
  const now = Date.now()
  if (clientMsgIds.length === 0 && commandIds.length === 0) return
  for (const row of yield* store.messagesByClientMsgId(state.id, [...new Set(clientMsgIds)])) {
    if (row.client_msg_id !== null) remember(state, clientMsgKey(row.client_msg_id), { _tag: "post", ts: row.ts, seq: row.seq, user: row.user_id }, now)
  }
  const posts = new Set(batch.filter((i) => i._tag === "PostMessage").map((i) => i.commandId))
  for (const row of yield* store.commands(state.id, [...new Set(commandIds)])) {
    const reply = row.reply as { readonly ts?: unknown; readonly seq?: unknown }
    if (posts.has(row.command_id) && typeof reply.ts === "string" && typeof reply.seq === "number") {
      remember(state, commandKey(row.command_id), { _tag: "post", ts: reply.ts, seq: reply.seq, user: null }, now)
    } else {
      remember(state, commandKey(row.command_id), { _tag: "reply", reply: row.reply }, now)
    }
  }
})

/** The answer to a command already applied. */
const replay = (state: State, incoming: ChannelIncoming, remembered: Remembered): Exit.Exit<unknown, unknown> => {
  if (remembered._tag === "reply") return Exit.succeed(remembered.reply)
  if (incoming._tag === "PostMessage" && remembered.user !== null && remembered.user !== incoming.message.user) {
    return Exit.fail(new ChannelError({ code: "invalid_client_msg_id" }))
  }
  const entry = state.cache.get(remembered.ts)
  const message = entry === undefined ? { type: "message", ts: remembered.ts } : toSlackMessage(entry.row, reactionSummaries(entry))
  return Exit.succeed({ ts: remembered.ts, seq: remembered.seq, message })
}

const decide = (d: Draft, incoming: ChannelIncoming): Outcome => {
  switch (incoming._tag) {
    case "PostMessage":
      return postMessage(d, incoming.message, incoming.commandId)
    case "UpdateMessage":
      return updateMessage(d, incoming.message)
    case "DeleteMessage":
      return deleteMessage(d, incoming.message)
    case "AddReaction":
      return react(d, incoming.message, true)
    case "RemoveReaction":
      return react(d, incoming.message, false)
    case "RemoveFile":
      return removeFile(d, incoming.message)
    case "Describe":
      return describe(d, incoming.message)
    case "Join":
      return join(d, incoming.message)
    case "Leave":
      return leave(d, incoming.message)
    case "Invite":
      return invite(d, incoming.message)
    case "Kick":
      return kick(d, incoming.message)
    case "Archive":
      return archive(d, incoming.message, true)
    case "Unarchive":
      return archive(d, incoming.message, false)
    case "Rename":
      return rename(d, incoming.message)
    case "SetTopic":
      return setText(d, incoming.message, "topic")
    case "SetPurpose":
      return setText(d, incoming.message, "purpose")
    case "CreateChannel":
    case "OpenConversation": {
      const c = d.channel
      const m = incoming.message
      if (c === undefined) return refuse("channel_not_found") // handled by `createFirst`
      if (m._tag === "OpenConversation" && c.dm_key === m.dm_key && c.team_id === m.team) return ok({ id: d.id, created: false })
      return refuse(m._tag === "CreateChannel" ? "name_taken" : "channel_not_found")
    }
  }
}

/** Records an accepted command's answer, for retries. */
const recordOutcome = (d: Draft, incoming: ChannelIncoming, outcome: Outcome, eventsBefore: number) => {
  if (outcome._tag !== "ok") return
  const key = keyOf(incoming)
  if (key === undefined) return
  if (outcome.remember !== undefined) {
    d.remembered.set(key, outcome.remember)
    return
  }
  // Commands that changed nothing are answered the same way when retried.
  if (d.events.length === eventsBefore) return
  d.remembered.set(key, { _tag: "reply", reply: outcome.reply })
  d.commands.push({ command_id: incoming.commandId, seq: d.seq, reply: outcome.reply, created_at: d.nowMs })
}

const toExit = (outcome: Outcome): Exit.Exit<unknown, unknown> =>
  outcome._tag === "ok" ? Exit.succeed(outcome.reply) : Exit.fail(new ChannelError({ code: outcome.code }))

type Commit = { readonly _tag: "committed"; readonly totals: ReadonlyArray<ThreadTotals> } | { readonly _tag: "taken"; readonly existing: string | undefined }

/** The commit met a `client_msg_id` the channel holds already (posted before the window). */
class ClientMsgIdTaken extends Data.TaggedError("ClientMsgIdTaken")<{ readonly channel: string }> {}

/** Writes a draft in one fenced transaction. A second writer makes the actor die. */
const commit = Effect.fnUntraced(function*(ctx: ActorContext, d: Draft) {
  const store = yield* Channels
  const channel = d.row as ChannelRow
  const reactionsIn: Array<ReactionRow> = []
  const reactionsOut: Array<Omit<ReactionRow, "created_at">> = []
  for (const [key, { before, row }] of d.reactionBase) {
    const [ts, name, user] = key.split("\u0000") as [string, string, string]
    const now = d.message(ts)?.reactions.get(name)?.includes(user) ?? false
    if (now && !before) reactionsIn.push(row)
    if (!now && before) reactionsOut.push({ message_ts: ts, name, user_id: user })
  }
  const upsertMembers: Array<{ user_id: string; joined_seq: number }> = []
  const deleteMembers: Array<string> = []
  for (const [user, member] of d.memberDelta) {
    if (member) upsertMembers.push({ user_id: user, joined_seq: d.joinedSeq.get(user) ?? d.seq })
    else if (d.state.members.has(user)) deleteMembers.push(user)
  }
  const messageRows = (set: ReadonlySet<string>) => [...set].map((ts) => (d.messages.get(ts) as Entry).row)
  const write: ChannelsStore.BatchWrite = {
    channelId: d.id,
    expectedSeq: d.state.channel?.last_seq ?? 0,
    channel,
    insertMessages: messageRows(d.inserted),
    updateMessages: messageRows(d.updated),
    recountThreads: [...d.recount],
    events: d.events,
    insertReactions: reactionsIn,
    deleteReactions: reactionsOut,
    upsertMembers,
    deleteMembers,
    commands: d.commands
  }
  // A taken client_msg_id is a resend to look up; any other conflict, a second writer.
  const dieOnConflict = <A>(effect: Effect.Effect<A, SqlError | FencedOut>) =>
    Effect.catchIf(effect, (error) => ChannelsStore.isUniqueViolation(error), (error) =>
      ChannelsStore.violatedConstraint(error) === ChannelsStore.clientMsgIdIndex
        ? Effect.fail(new ClientMsgIdTaken({ channel: d.id }))
        : Effect.die(new ChannelsStore.TimelineConflict(d.id, `unique constraint violated at commit: ${error.message}`)))
  if (!d.creating && !ChannelsStore.needsTransaction(write)) {
    yield* ctx.commit(ChannelsStore.rowWrites(write)).pipe(dieOnConflict)
    return { _tag: "committed", totals: [] } satisfies Commit
  }
  return yield* ctx.transaction(
    Effect.gen(function*() {
      if (d.creating) {
        const inserted = yield* store.insertChannel(channel)
        if (inserted._tag === "taken") return { _tag: "taken", existing: inserted.existing } satisfies Commit
      }
      return { _tag: "committed", totals: yield* store.commit(write) } satisfies Commit
    })
  ).pipe(dieOnConflict)
})

/** Applies a committed draft to the state (the only place the state changes). */
const apply = (state: State, d: Draft, totals: ReadonlyArray<ThreadTotals>) => {
  state.channel = d.row
  state.clock = d.clock
  for (const [user, member] of d.memberDelta) {
    if (member) state.members.add(user)
    else state.members.delete(user)
  }
  for (const entry of d.messages.values()) cacheEntry(state, entry)
  for (const t of totals) {
    const entry = state.cache.get(t.ts)
    if (entry !== undefined) {
      cacheEntry(state, { row: { ...entry.row, reply_count: t.reply_count, reply_users: t.reply_users, latest_reply: t.latest_reply }, reactions: entry.reactions })
    }
  }
  const now = Date.now()
  for (const [key, value] of d.remembered) remember(state, key, value, now)
}

const nowMicros = Effect.map(Clock.currentTimeNanos, (nanos) => Number(nanos / 1000n))

/**
 * Creates the conversation with the batch's first creation command, in its own
 * transaction, before the rest of the batch (which then sees the channel).
 */
const createFirst = Effect.fnUntraced(function*(ctx: ActorContext, state: State, batch: ReadonlyArray<ChannelIncoming>, answers: Map<ChannelIncoming, Exit.Exit<unknown, unknown>>) {
  const publisher = yield* EventPublisher.EventPublisher
  for (const incoming of batch) {
    if (state.channel !== undefined) return
    if (answers.has(incoming) || (incoming._tag !== "CreateChannel" && incoming._tag !== "OpenConversation")) continue
    const m = incoming.message
    if (m._tag === "OpenConversation" && !openValid(state.id, m)) {
      answers.set(incoming, Exit.fail(new ChannelError({ code: "invalid_arguments" })))
      continue
    }
    if (m._tag === "CreateChannel" && !state.id.startsWith("C")) {
      answers.set(incoming, Exit.fail(new ChannelError({ code: "invalid_arguments" })))
      continue
    }
    const d = new Draft(state, yield* nowMicros)
    const outcome = create(d, m)
    recordOutcome(d, incoming, outcome, 0)
    // A creation posts no message, so it cannot meet a taken client_msg_id.
    const result = yield* commit(ctx, d).pipe(Effect.catchTag("ClientMsgIdTaken", Effect.die))
    if (result._tag === "taken") {
      answers.set(
        incoming,
        m._tag === "OpenConversation" && result.existing !== undefined
          ? Exit.succeed({ id: result.existing, created: false })
          : Exit.fail(new ChannelError({ code: m._tag === "CreateChannel" ? "name_taken" : "channel_not_found" }))
      )
      continue
    }
    apply(state, d, result.totals)
    yield* publisher.publish(d.outgoing)
    answers.set(incoming, toExit(outcome))
  }
})

/**
 * Splits each `PostMessages` into one `PostMessage` per post, in place and in order,
 * each with its own command id (`<batch id>/<index>`, stable across the sender's
 * retries) and an answer that fills the batch's answer; the batch is answered once its
 * last post is. From here on a batched post is indistinguishable from a single one:
 * same idempotency, same refusals, consecutive seqs.
 */
const expandPosts = (batch: ReadonlyArray<Incoming<P.ChannelRequest>>): ReadonlyArray<ChannelIncoming> => {
  if (!batch.some((incoming) => incoming._tag === "PostMessages")) return batch as ReadonlyArray<ChannelIncoming>
  const expanded: Array<ChannelIncoming> = []
  for (const incoming of batch) {
    if (incoming._tag !== "PostMessages") {
      expanded.push(incoming)
      continue
    }
    const posts = incoming.message.posts
    const answerBatch = incoming.complete as (exit: Exit.Exit<unknown, unknown>) => void
    const answers = new Array<P.BatchedPostAnswer>(posts.length)
    let missing = posts.length
    let failed = false
    const answerPost = (index: number, exit: ExitOf<P.PostMessage>) => {
      if (failed || answers[index] !== undefined) return
      if (Exit.isSuccess(exit)) {
        answers[index] = { ok: true, ts: exit.value.ts, seq: exit.value.seq }
      } else {
        const refusal = Cause.failureOption(exit.cause)
        if (Option.isNone(refusal)) {
          // Not a refusal (a defect): the whole batch fails, as a single post would.
          failed = true
          answerBatch(exit)
          return
        }
        answers[index] = { ok: false, error: refusal.value.code }
      }
      if (--missing === 0) answerBatch(Exit.succeed(answers))
    }
    posts.forEach((post, index) => {
      expanded.push({
        _tag: "PostMessage",
        message: post,
        commandId: `${incoming.commandId}/${index}`,
        delivery: incoming.delivery,
        sentAt: incoming.sentAt,
        complete: (exit: ExitOf<P.PostMessage>) => answerPost(index, exit)
      })
    })
  }
  return expanded
}

export const receive = Effect.fnUntraced(function*(ctx: ActorContext, state: State, received: ReadonlyArray<Incoming<P.ChannelRequest>>) {
  const batch = expandPosts(received)
  const answers = new Map<ChannelIncoming, Exit.Exit<unknown, unknown>>()
  // Optimistic about client_msg_ids (see recallFromStore); the draft is discarded
  // when one turns out taken, and the batch decided again knowing the stored ones.
  const applied = yield* decideAndCommit(ctx, state, batch, answers, false).pipe(
    Effect.catchTag("ClientMsgIdTaken", () => decideAndCommit(ctx, state, batch, answers, true)),
    Effect.catchTag("ClientMsgIdTaken", (taken) =>
      Effect.die(new ChannelsStore.TimelineConflict(taken.channel, "a client_msg_id taken after its lookup")))
  )
  for (const incoming of batch) settle(incoming, answers.get(incoming) ?? applied.get(incoming) ?? Exit.die(new Error("unanswered")))
  return state
})

/**
 * Steps 1–5 of a batch; answers in `answers` (retries and creations, which survive a
 * second attempt) and in the map returned (the draft's, once committed and published).
 */
const decideAndCommit = Effect.fnUntraced(function*(
  ctx: ActorContext,
  state: State,
  batch: ReadonlyArray<ChannelIncoming>,
  answers: Map<ChannelIncoming, Exit.Exit<unknown, unknown>>,
  lookUpClientMsgIds: boolean
) {
  const store = yield* Channels
  const publisher = yield* EventPublisher.EventPublisher
  const recalled = (incoming: ChannelIncoming) => {
    const key = keyOf(incoming)
    return key === undefined ? undefined : state.window.get(key)?.value
  }

  // 1. Retries of commands applied before this batch, and 2. what the batch refers to.
  yield* recallFromStore(state, batch, lookUpClientMsgIds)
  const wanted: Array<string> = []
  for (const incoming of batch) {
    const remembered = recalled(incoming)
    if (remembered?._tag === "post") wanted.push(remembered.ts)
    const ts = referencedTs(incoming)
    if (ts !== undefined) wanted.push(ts)
  }
  yield* preload(state, wanted)
  for (const incoming of batch) {
    const remembered = recalled(incoming)
    if (remembered !== undefined) answers.set(incoming, replay(state, incoming, remembered))
  }

  // 3. Creation first (its own transaction), then everything else in one draft.
  if (state.channel === undefined) yield* createFirst(ctx, state, batch, answers)
  const d = new Draft(state, yield* nowMicros)
  const renames = batch.flatMap((i) => (i._tag === "Rename" && !answers.has(i) ? [i.message.name] : []))
  if (renames.length > 0 && state.channel !== undefined) {
    d.takenNames = new Set(yield* store.namesTaken(state.channel.team_id, renames, state.id))
  }
  const decided: Array<readonly [ChannelIncoming, Outcome]> = []
  /** Commands repeated within the batch (a sender's retry overtook the original). */
  const repeats: Array<readonly [ChannelIncoming, string]> = []
  for (const incoming of batch) {
    if (answers.has(incoming)) continue
    const key = keyOf(incoming)
    if (key !== undefined && d.remembered.has(key)) {
      repeats.push([incoming, key])
      continue
    }
    const eventsBefore = d.events.length
    const outcome = decide(d, incoming)
    recordOutcome(d, incoming, outcome, eventsBefore)
    decided.push([incoming, outcome])
  }

  // 4. One transaction for the batch.
  if (d.changed) {
    const result = yield* commit(ctx, d)
    if (result._tag === "taken") return yield* Effect.die(new Error(`channel ${state.id}: a creation in the batch of an existing channel`))
    apply(state, d, result.totals)
  }

  // 5. Publish in seq order, then answer.
  yield* publisher.publish(d.outgoing)
  const applied = new Map<ChannelIncoming, Exit.Exit<unknown, unknown>>()
  for (const [incoming, outcome] of decided) applied.set(incoming, toExit(outcome))
  for (const [incoming, key] of repeats) {
    const remembered = state.window.get(key)?.value
    applied.set(incoming, remembered === undefined ? Exit.die(new Error(`forgot ${key}`)) : replay(state, incoming, remembered))
  }
  return applied
})

export const behaviour = Behaviour.make({
  entity: Channel,
  init,
  receive: (ctx, state, batch) => receive(ctx, state, batch)
})

/** The services the channel behaviour needs, over PostgreSQL and NATS. */
export const services: Layer.Layer<Channels | EventPublisher.EventPublisher, never, SqlClient.SqlClient | Nats> =
  Layer.merge(ChannelsStore.layer, EventPublisher.layerNats)

