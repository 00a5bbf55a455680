/**
 * The SQL of conversations' timelines (schema: migrations/0004_channels.ts and
 * 0005_channel_commands.ts): what a channel actor loads at start and reads before a
 * batch, the one statement group it commits per batch, and the few lookups the write
 * methods make before asking an actor (a DM by its member set, a channel by name, who
 * may see a channel).
 *
 * The channel actor is the only writer of a channel's rows. A batch is written one of
 * two ways:
 *
 * - `rowWrites`: inserts and updates only (posts, edits, reactions added, members
 *   added, settings) — the hot path — as row writes for the node's group commit
 *   (src/runtime/GroupCommit.ts), merged with every other actor's batch;
 * - `commit`: inside the actor's own fenced transaction, for what rows cannot express:
 *   deletions (reactions removed, members gone), thread recounts, and creation. It
 *   also checks that `channels.last_seq` is still the value the actor loaded.
 *
 * Either way the primary key `(channel_id, seq)` of `channel_events` (every batch
 * inserts events with fresh seqs) and the unique `client_msg_id` stop a second writer
 * (a zombie owner) from forking the timeline: the violation kills the actor, which
 * reloads rather than retry.
 *
 * Units: every `created_at`, `topic_set_at` and `purpose_set_at` is milliseconds since
 * the epoch; Slack objects show whole seconds.
 */
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { Context, Effect, Layer, Option } from "effect"
import type { ChannelRow } from "../domain/SlackConversation.ts"
import * as GroupCommit from "../runtime/GroupCommit.ts"
import type { MessageRow } from "../domain/SlackMessage.ts"

export type { ChannelRow }

export interface ReactionRow {
  readonly message_ts: string
  readonly name: string
  readonly user_id: string
  readonly created_at: number
}

export interface EventRow {
  readonly seq: number
  readonly type: string
  readonly event: unknown
  readonly created_at: number
}

export interface CommandRow {
  readonly command_id: string
  readonly seq: number | null
  readonly reply: unknown
  readonly created_at: number
}

/** A named channel, as `conversations.create` needs to tell a retry from a clash. */
export interface NamedChannel {
  readonly id: string
  readonly creator: string
  readonly isPrivate: boolean
  /** Milliseconds since the epoch. */
  readonly createdAt: number
}

/** What a caller may know about a channel before asking its actor. */
export interface Access {
  readonly id: string
  readonly teamId: string
  readonly isPrivate: boolean
  readonly isIm: boolean
  readonly isMpim: boolean
  readonly isArchived: boolean
  readonly isMember: boolean
}

/** Everything one batch changes; applied in one transaction by `commit`. */
export interface BatchWrite {
  readonly channelId: string
  /** `channels.last_seq` as loaded: the commit dies unless it is still that. */
  readonly expectedSeq: number
  readonly channel: ChannelRow
  readonly insertMessages: ReadonlyArray<MessageRow>
  /** Existing messages in their new state (text, edits, deletion, thread counters). */
  readonly updateMessages: ReadonlyArray<MessageRow>
  /** Thread parents whose counters must be recounted (a reply was deleted). */
  readonly recountThreads: ReadonlyArray<string>
  readonly events: ReadonlyArray<EventRow>
  readonly insertReactions: ReadonlyArray<ReactionRow>
  readonly deleteReactions: ReadonlyArray<Omit<ReactionRow, "created_at">>
  /** Members added (or re-added) and the seq of their joining. */
  readonly upsertMembers: ReadonlyArray<{ readonly user_id: string; readonly joined_seq: number }>
  readonly deleteMembers: ReadonlyArray<string>
  readonly commands: ReadonlyArray<CommandRow>
}

/** A thread parent's counters after a recount. */
export interface ThreadTotals {
  readonly ts: string
  readonly reply_count: number
  readonly reply_users: ReadonlyArray<string>
  readonly latest_reply: string | null
}

/** The commit found the timeline changed under it: a zombie writer. Fatal for the actor. */
export class TimelineConflict extends Error {
  constructor(readonly channelId: string, detail: string) {
    super(`channel ${channelId}: ${detail}`)
    this.name = "TimelineConflict"
  }
}

export interface ChannelsShape {
  readonly channel: (id: string) => Effect.Effect<Option.Option<ChannelRow>, SqlError>
  readonly members: (id: string) => Effect.Effect<ReadonlyArray<string>, SqlError>
  /** The `event_ts` of event `seq` (the channel clock's last reading). */
  readonly eventTs: (id: string, seq: number) => Effect.Effect<string | undefined, SqlError>
  /** The newest messages (deleted ones included), newest first. */
  readonly recentMessages: (id: string, limit: number) => Effect.Effect<ReadonlyArray<MessageRow>, SqlError>
  readonly messages: (id: string, ts: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<MessageRow>, SqlError>
  /** Reactions of those messages, oldest first. */
  readonly reactions: (id: string, ts: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<ReactionRow>, SqlError>
  readonly messagesByClientMsgId: (id: string, clientMsgIds: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<MessageRow>, SqlError>
  readonly commands: (id: string, commandIds: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<CommandRow>, SqlError>
  /** Which of `names` other channels of the workspace hold. */
  readonly namesTaken: (teamId: string, names: ReadonlyArray<string>, exceptId: string) => Effect.Effect<ReadonlyArray<string>, SqlError>
  /**
   * Inserts a new conversation (`last_seq` 0) unless its name or DM key is taken in the
   * workspace: `"inserted"`, or `"taken"` with the id holding a DM key.
   */
  readonly insertChannel: (row: ChannelRow) => Effect.Effect<{ readonly _tag: "inserted" } | { readonly _tag: "taken"; readonly existing: string | undefined }, SqlError>
  /** Applies a batch; run it inside the actor's fenced transaction. */
  readonly commit: (write: BatchWrite) => Effect.Effect<ReadonlyArray<ThreadTotals>, SqlError>
  readonly byDmKey: (teamId: string, key: string) => Effect.Effect<Option.Option<string>, SqlError>
  readonly byName: (teamId: string, name: string) => Effect.Effect<Option.Option<NamedChannel>, SqlError>
  readonly access: (id: string, userId: string) => Effect.Effect<Option.Option<Access>, SqlError>
  readonly isMember: (id: string, userId: string) => Effect.Effect<boolean, SqlError>
}

export class Channels extends Context.Tag("chorus/store/Channels")<Channels, ChannelsShape>() {}

const messageColumns = `channel_id, ts, seq, team_id, user_id, bot_id, subtype, text, blocks, attachments, files,
  thread_ts, reply_broadcast, reply_count, reply_users, latest_reply, client_msg_id, edited_ts, edited_by, deleted, extra`

const messageRecord = `channel_id text, ts text, seq bigint, team_id text, user_id text, bot_id text, subtype text,
  text text, blocks jsonb, attachments jsonb, files jsonb, thread_ts text, reply_broadcast boolean,
  reply_count integer, reply_users text[], latest_reply text, client_msg_id text, edited_ts text, edited_by text,
  deleted boolean, extra jsonb`

const channelColumns = `id, team_id, name, is_private, is_im, is_mpim, dm_key, creator, topic, topic_set_by,
  topic_set_at, purpose, purpose_set_by, purpose_set_at, is_archived, last_seq, last_ts, created_at`

/** JSON for `jsonb_to_recordset` (a missing or undefined field reads as NULL). */
const rows = (values: ReadonlyArray<object>): string => JSON.stringify(values)

/** PostgreSQL's unique_violation: a second writer, never retried blindly. */
export const isUniqueViolation = (error: unknown): boolean =>
  typeof error === "object" && error !== null && (error as { readonly _tag?: unknown })._tag === "SqlError" &&
  ((error as { readonly cause?: { readonly code?: unknown } }).cause?.code === "23505")

/** The unique index a `client_msg_id` already posted to the channel violates. */
export const clientMsgIdIndex = "messages_client_msg_id"

/** The constraint a unique violation names (node-postgres reports it), if any. */
export const violatedConstraint = (error: unknown): string | undefined => {
  const constraint = (error as { readonly cause?: { readonly constraint?: unknown } } | null)?.cause?.constraint
  return typeof constraint === "string" ? constraint : undefined
}

/** Whether `write` must go through `commit` (a transaction) rather than `rowWrites`. */
export const needsTransaction = (write: BatchWrite): boolean =>
  write.deleteReactions.length > 0 || write.deleteMembers.length > 0 || write.recountThreads.length > 0

const json = (value: unknown): GroupCommit.Cell => (value === null || value === undefined ? null : { json: value })

const messageCells = (m: MessageRow) => ({
  channel_id: m.channel_id,
  ts: m.ts,
  seq: m.seq,
  team_id: m.team_id,
  user_id: m.user_id,
  bot_id: m.bot_id,
  subtype: m.subtype,
  text: m.text,
  blocks: json(m.blocks),
  attachments: json(m.attachments),
  files: json(m.files),
  thread_ts: m.thread_ts,
  reply_broadcast: m.reply_broadcast,
  reply_count: m.reply_count,
  reply_users: [...m.reply_users],
  latest_reply: m.latest_reply,
  client_msg_id: m.client_msg_id,
  edited_ts: m.edited_ts,
  edited_by: m.edited_by,
  deleted: m.deleted,
  extra: json(m.extra)
})

const messageUpdateTypes = {
  blocks: "jsonb",
  attachments: "jsonb",
  files: "jsonb",
  reply_count: "integer",
  reply_users: "text[]",
  deleted: "boolean",
  extra: "jsonb"
} as const

const channelUpdateTypes = { topic_set_at: "bigint", purpose_set_at: "bigint", is_archived: "boolean", last_seq: "bigint" } as const

/** A batch without deletions or recounts as row writes for the group commit. */
export const rowWrites = (w: BatchWrite): ReadonlyArray<GroupCommit.Write> => {
  if (needsTransaction(w)) throw new Error("rowWrites: this batch needs a transaction (Channels.commit)")
  const id = w.channelId
  const c = w.channel
  return [
    GroupCommit.update("channels", ["id"], [{
      id,
      name: c.name,
      topic: c.topic,
      topic_set_by: c.topic_set_by,
      topic_set_at: c.topic_set_at,
      purpose: c.purpose,
      purpose_set_by: c.purpose_set_by,
      purpose_set_at: c.purpose_set_at,
      is_archived: c.is_archived,
      last_seq: c.last_seq,
      last_ts: c.last_ts
    }], channelUpdateTypes),
    GroupCommit.insert("channel_events", w.events.map((e) => ({ channel_id: id, seq: e.seq, type: e.type, event: { json: e.event }, created_at: e.created_at }))),
    GroupCommit.insert("messages", w.insertMessages.map(messageCells)),
    GroupCommit.update(
      "messages",
      ["channel_id", "ts"],
      w.updateMessages.map((m) => {
        const cells = messageCells(m)
        return {
          channel_id: cells.channel_id,
          ts: cells.ts,
          text: cells.text,
          blocks: cells.blocks,
          attachments: cells.attachments,
          files: cells.files,
          thread_ts: cells.thread_ts,
          reply_count: cells.reply_count,
          reply_users: cells.reply_users,
          latest_reply: cells.latest_reply,
          edited_ts: cells.edited_ts,
          edited_by: cells.edited_by,
          deleted: cells.deleted,
          extra: cells.extra
        }
      }),
      messageUpdateTypes
    ),
    GroupCommit.insert("reactions", w.insertReactions.map((r) => ({ channel_id: id, ...r }))),
    GroupCommit.insert(
      "channel_members",
      w.upsertMembers.map((m) => ({ channel_id: id, user_id: m.user_id, joined_seq: m.joined_seq })),
      { target: ["channel_id", "user_id"], update: ["joined_seq"] }
    ),
    GroupCommit.insert("channel_commands", w.commands.map((k) => ({ channel_id: id, command_id: k.command_id, seq: k.seq, reply: { json: k.reply }, created_at: k.created_at })))
  ]
}

export const make: Effect.Effect<ChannelsShape, never, SqlClient.SqlClient> = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const messageCols = sql.literal(messageColumns)
  const messageRec = sql.literal(messageRecord)
  const channelCols = sql.literal(channelColumns)

  const channel: ChannelsShape["channel"] = (id) =>
    Effect.map(sql<ChannelRow>`SELECT ${channelCols} FROM channels WHERE id = ${id}`, (r) => Option.fromNullable(r[0]))

  const members: ChannelsShape["members"] = (id) =>
    Effect.map(sql<{ user_id: string }>`SELECT user_id FROM channel_members WHERE channel_id = ${id}`, (r) => r.map((m) => m.user_id))

  const eventTs: ChannelsShape["eventTs"] = (id, seq) =>
    Effect.map(
      sql<{ ts: string | null }>`SELECT event->>'event_ts' AS ts FROM channel_events WHERE channel_id = ${id} AND seq = ${seq}`,
      (r) => r[0]?.ts ?? undefined
    )

  const recentMessages: ChannelsShape["recentMessages"] = (id, limit) =>
    sql<MessageRow>`SELECT ${messageCols} FROM messages WHERE channel_id = ${id} ORDER BY ts DESC LIMIT ${limit}`

  const messages: ChannelsShape["messages"] = (id, ts) =>
    ts.length === 0
      ? Effect.succeed([])
      : sql<MessageRow>`SELECT ${messageCols} FROM messages WHERE channel_id = ${id} AND ts IN ${sql.in(ts)}`

  const reactions: ChannelsShape["reactions"] = (id, ts) =>
    ts.length === 0
      ? Effect.succeed([])
      : sql<ReactionRow>`
        SELECT message_ts, name, user_id, created_at FROM reactions
        WHERE channel_id = ${id} AND message_ts IN ${sql.in(ts)}
        ORDER BY created_at, name, user_id`

  const messagesByClientMsgId: ChannelsShape["messagesByClientMsgId"] = (id, ids) =>
    ids.length === 0
      ? Effect.succeed([])
      : sql<MessageRow>`SELECT ${messageCols} FROM messages WHERE channel_id = ${id} AND client_msg_id IN ${sql.in(ids)}`

  const commands: ChannelsShape["commands"] = (id, ids) =>
    ids.length === 0
      ? Effect.succeed([])
      : sql<CommandRow>`
        SELECT command_id, seq, reply, created_at FROM channel_commands
        WHERE channel_id = ${id} AND command_id IN ${sql.in(ids)}`

  const namesTaken: ChannelsShape["namesTaken"] = (teamId, names, exceptId) =>
    names.length === 0
      ? Effect.succeed([])
      : Effect.map(
        sql<{ name: string }>`SELECT name FROM channels WHERE team_id = ${teamId} AND name IN ${sql.in(names)} AND id <> ${exceptId}`,
        (r) => r.map((c) => c.name)
      )

  const insertChannel: ChannelsShape["insertChannel"] = (row) =>
    Effect.gen(function*() {
      const inserted = yield* sql<{ id: string }>`
        INSERT INTO channels (id, team_id, name, is_private, is_im, is_mpim, dm_key, creator, topic, topic_set_by,
          topic_set_at, purpose, purpose_set_by, purpose_set_at, is_archived, last_seq, last_ts, created_at)
        VALUES (${row.id}, ${row.team_id}, ${row.name}, ${row.is_private}, ${row.is_im}, ${row.is_mpim}, ${row.dm_key},
          ${row.creator}, ${row.topic}, ${row.topic_set_by}, ${row.topic_set_at}, ${row.purpose}, ${row.purpose_set_by},
          ${row.purpose_set_at}, ${row.is_archived}, 0, NULL, ${row.created_at})
        ON CONFLICT DO NOTHING
        RETURNING id`
      if (inserted.length > 0) return { _tag: "inserted" } as const
      const same = yield* sql<{ id: string }>`SELECT id FROM channels WHERE id = ${row.id}`
      if (same.length > 0) return yield* Effect.die(new TimelineConflict(row.id, "the channel exists already"))
      if (row.dm_key !== null) {
        const existing = yield* byDmKey(row.team_id, row.dm_key)
        return { _tag: "taken", existing: Option.getOrUndefined(existing) } as const
      }
      return { _tag: "taken", existing: undefined } as const
    })

  const commit: ChannelsShape["commit"] = (w) =>
    Effect.gen(function*() {
      const id = w.channelId
      const c = w.channel
      const updated = yield* sql<{ id: string }>`
        UPDATE channels SET
          name = ${c.name}, topic = ${c.topic}, topic_set_by = ${c.topic_set_by}, topic_set_at = ${c.topic_set_at},
          purpose = ${c.purpose}, purpose_set_by = ${c.purpose_set_by}, purpose_set_at = ${c.purpose_set_at},
          is_archived = ${c.is_archived}, last_seq = ${c.last_seq}, last_ts = ${c.last_ts}
        WHERE id = ${id} AND last_seq = ${w.expectedSeq}
        RETURNING id`
      if (updated.length !== 1) {
        return yield* Effect.die(new TimelineConflict(id, `last_seq is no longer ${w.expectedSeq}`))
      }
      if (w.events.length > 0) {
        yield* sql`
          INSERT INTO channel_events (channel_id, seq, type, event, created_at)
          SELECT ${id}, seq, type, event, created_at
          FROM jsonb_to_recordset(${rows(w.events)}::jsonb) AS r(seq bigint, type text, event jsonb, created_at bigint)`
      }
      if (w.insertMessages.length > 0) {
        yield* sql`
          INSERT INTO messages (${messageCols})
          SELECT ${messageCols} FROM jsonb_to_recordset(${rows(w.insertMessages)}::jsonb) AS r(${messageRec})`
      }
      if (w.updateMessages.length > 0) {
        const changed = yield* sql<{ ts: string }>`
          UPDATE messages AS m SET
            text = r.text, blocks = r.blocks, attachments = r.attachments, files = r.files, thread_ts = r.thread_ts,
            reply_count = r.reply_count, reply_users = r.reply_users, latest_reply = r.latest_reply,
            edited_ts = r.edited_ts, edited_by = r.edited_by, deleted = r.deleted, extra = r.extra
          FROM jsonb_to_recordset(${rows(w.updateMessages)}::jsonb) AS r(${messageRec})
          WHERE m.channel_id = ${id} AND m.ts = r.ts
          RETURNING m.ts`
        if (changed.length !== w.updateMessages.length) {
          return yield* Effect.die(new TimelineConflict(id, "a message to update is missing"))
        }
      }
      if (w.insertReactions.length > 0) {
        yield* sql`
          INSERT INTO reactions (channel_id, message_ts, name, user_id, created_at)
          SELECT ${id}, message_ts, name, user_id, created_at
          FROM jsonb_to_recordset(${rows(w.insertReactions)}::jsonb) AS r(message_ts text, name text, user_id text, created_at bigint)`
      }
      if (w.deleteReactions.length > 0) {
        yield* sql`
          DELETE FROM reactions AS x
          USING jsonb_to_recordset(${rows(w.deleteReactions)}::jsonb) AS r(message_ts text, name text, user_id text)
          WHERE x.channel_id = ${id} AND x.message_ts = r.message_ts AND x.name = r.name AND x.user_id = r.user_id`
      }
      if (w.deleteMembers.length > 0) {
        yield* sql`DELETE FROM channel_members WHERE channel_id = ${id} AND user_id IN ${sql.in(w.deleteMembers)}`
      }
      if (w.upsertMembers.length > 0) {
        yield* sql`
          INSERT INTO channel_members (channel_id, user_id, joined_seq)
          SELECT ${id}, user_id, joined_seq
          FROM jsonb_to_recordset(${rows(w.upsertMembers)}::jsonb) AS r(user_id text, joined_seq bigint)
          ON CONFLICT (channel_id, user_id) DO UPDATE SET joined_seq = EXCLUDED.joined_seq`
      }
      if (w.commands.length > 0) {
        yield* sql`
          INSERT INTO channel_commands (channel_id, command_id, seq, reply, created_at)
          SELECT ${id}, command_id, seq, reply, created_at
          FROM jsonb_to_recordset(${rows(w.commands)}::jsonb) AS r(command_id text, seq bigint, reply jsonb, created_at bigint)`
      }
      if (w.recountThreads.length === 0) return []
      // A reply was deleted: recount its thread from what remains (rare, so plain SQL).
      return yield* sql<ThreadTotals>`
        UPDATE messages AS p SET
          reply_count = t.reply_count, reply_users = t.reply_users, latest_reply = t.latest_reply
        FROM (
          SELECT parent.ts,
            (SELECT count(*) FROM messages r WHERE r.channel_id = ${id} AND r.thread_ts = parent.ts AND r.ts <> parent.ts AND NOT r.deleted)::int AS reply_count,
            COALESCE((SELECT array_agg(u.user_id ORDER BY u.first_ts) FROM (
              SELECT r.user_id, min(r.ts) AS first_ts FROM messages r
              WHERE r.channel_id = ${id} AND r.thread_ts = parent.ts AND r.ts <> parent.ts AND NOT r.deleted AND r.user_id IS NOT NULL
              GROUP BY r.user_id) u), '{}') AS reply_users,
            (SELECT max(r.ts) FROM messages r WHERE r.channel_id = ${id} AND r.thread_ts = parent.ts AND r.ts <> parent.ts AND NOT r.deleted) AS latest_reply
          FROM messages parent WHERE parent.channel_id = ${id} AND parent.ts IN ${sql.in(w.recountThreads)}
        ) AS t
        WHERE p.channel_id = ${id} AND p.ts = t.ts
        RETURNING p.ts, p.reply_count, p.reply_users, p.latest_reply`
    })

  const byDmKey: ChannelsShape["byDmKey"] = (teamId, key) =>
    Effect.map(sql<{ id: string }>`SELECT id FROM channels WHERE team_id = ${teamId} AND dm_key = ${key}`, (r) => Option.fromNullable(r[0]?.id))

  const byName: ChannelsShape["byName"] = (teamId, name) =>
    Effect.map(
      sql<{ id: string; creator: string; is_private: boolean; created_at: number }>`
        SELECT id, creator, is_private, created_at FROM channels WHERE team_id = ${teamId} AND name = ${name}`,
      (r) => Option.map(Option.fromNullable(r[0]), (c) => ({ id: c.id, creator: c.creator, isPrivate: c.is_private, createdAt: c.created_at }))
    )

  const access: ChannelsShape["access"] = (id, userId) =>
    Effect.map(
      sql<{ id: string; team_id: string; is_private: boolean; is_im: boolean; is_mpim: boolean; is_archived: boolean; is_member: boolean }>`
        SELECT c.id, c.team_id, c.is_private, c.is_im, c.is_mpim, c.is_archived,
          EXISTS (SELECT 1 FROM channel_members m WHERE m.channel_id = c.id AND m.user_id = ${userId}) AS is_member
        FROM channels c WHERE c.id = ${id}`,
      (r) =>
        Option.map(Option.fromNullable(r[0]), (c) => ({
          id: c.id,
          teamId: c.team_id,
          isPrivate: c.is_private,
          isIm: c.is_im,
          isMpim: c.is_mpim,
          isArchived: c.is_archived,
          isMember: c.is_member
        }))
    )

  const isMember: ChannelsShape["isMember"] = (id, userId) =>
    Effect.map(
      sql<{ one: number }>`SELECT 1 AS one FROM channel_members WHERE channel_id = ${id} AND user_id = ${userId}`,
      (r) => r.length > 0
    )

  return {
    channel,
    members,
    eventTs,
    recentMessages,
    messages,
    reactions,
    messagesByClientMsgId,
    commands,
    namesTaken,
    insertChannel,
    commit,
    byDmKey,
    byName,
    access,
    isMember
  } satisfies ChannelsShape
})

export const layer: Layer.Layer<Channels, never, SqlClient.SqlClient> = Layer.effect(Channels, make)
