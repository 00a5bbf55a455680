/**
 * Every read of conversations and messages: `conversations.list`, `.info`, `.members`,
 * `.history`, `.replies`, `users.conversations`, `chat.getPermalink`, `reactions.get`,
 * with Slack's arguments, answers and error codes.
 *
 * Invariant 5: a conversation the caller may not see (another workspace's; a private
 * channel, group DM or DM they are not in; a public channel, for a guest who is not in
 * it) answers `channel_not_found` from every method, exactly as a conversation that
 * does not exist — checked before anything else about it, scopes included, so an answer
 * never tells an outsider that it exists (src/domain/ConversationAccess.ts). Listings
 * apply the same rules inside their queries. Bot tokens need Slack's scope for the
 * conversation's type (`channels:read`, `groups:history`, …), and, as on Slack, a bot
 * reads the messages of the conversations it is in only (`not_in_channel`).
 */
import { Effect, Option } from "effect"
import type { Schema } from "effect"
import { Auth } from "../auth/Principal.ts"
import type { WorkspacePrincipal } from "../auth/Principal.ts"
import { ChorusConfig } from "../config/ChorusConfig.ts"
import * as Access from "../domain/ConversationAccess.ts"
import * as Cursor from "../domain/Cursor.ts"
import * as Range from "../domain/HistoryRange.ts"
import * as Ids from "../domain/Ids.ts"
import type { ChannelView, UnreadCounts } from "../domain/SlackConversation.ts"
import { toSlackConversation } from "../domain/SlackConversation.ts"
import type { MessageRow, SlackMessage } from "../domain/SlackMessage.ts"
import { toSlackMessage } from "../domain/SlackMessage.ts"
import { Accounts } from "../store/Accounts.ts"
import { ConversationsRead } from "../store/ConversationsRead.ts"
import type { ApiError, ApiHandler, ApiRequest } from "../transport/ApiMethod.ts"
import { optionalNumber, optionalString, requireString } from "../transport/ApiMethod.ts"
import { fail, isTruthy, orDieOnSql } from "./auth.ts"

/** What a request without `limit` (or with 0) gets. */
export const defaultPageSize = 100
/** The largest page; a larger `limit` is cut to it. */
export const maxPageSize = 1000

export const pageSize = (limit: number | undefined): number =>
  limit === undefined || limit <= 0 ? defaultPageSize : Math.max(1, Math.min(Math.floor(limit), maxPageSize))

/** Slack's permalink of a message: `<base>/archives/<channel>/p<ts without dot>`, with the thread for a reply. */
export const permalink = (baseUrl: string, channelId: string, message: Pick<MessageRow, "ts" | "thread_ts">): string => {
  const base = `${baseUrl.replace(/\/+$/, "")}/archives/${channelId}/p${message.ts.replace(".", "")}`
  return message.thread_ts !== null && message.thread_ts !== message.ts
    ? `${base}?thread_ts=${message.thread_ts}&cid=${channelId}`
    : base
}

/** What Slack shows in place of a deleted thread parent whose replies remain. */
export const tombstone = (message: SlackMessage): SlackMessage => {
  const { attachments: _a, blocks: _b, edited: _e, files: _f, ...rest } = message
  return { ...rest, type: "message", subtype: "tombstone", text: "This message was deleted.", user: "USLACKBOT", hidden: true }
}

/** Message subtypes that cannot be threaded (`thread_not_found`, as on Slack). */
const unthreadable = new Set(["channel_join", "channel_leave"])

const noUnread: UnreadCounts = { unread_count: 0, unread_count_display: 0 }

export const make = Effect.gen(function*() {
  const store = yield* ConversationsRead
  const accounts = yield* Accounts
  const auth = yield* Auth
  const config = yield* ChorusConfig

  // ---- shared steps ---------------------------------------------------------------------

  /** The `cursor` argument decoded with `schema`; `invalid_cursor` when it is not one. */
  const cursorArg = <A, I>(request: ApiRequest, schema: Schema.Schema<A, I, never>): Effect.Effect<Option.Option<A>, ApiError> => {
    const raw = optionalString(request, "cursor")
    if (raw === undefined) return Effect.succeed(Option.none())
    const decoded = Cursor.decode(schema, raw)
    return Option.isNone(decoded) ? fail("invalid_cursor") : Effect.succeed(decoded)
  }

  /**
   * The `channel` argument as the caller may see it, or `channel_not_found`; then the
   * bot scope `access` needs for its type (none for `undefined`), and for reading
   * messages as a bot, membership (`not_in_channel`).
   */
  const visibleChannel = (
    principal: WorkspacePrincipal,
    request: ApiRequest,
    access: Access.Access | undefined,
    options: { readonly numMembers?: boolean } = {}
  ): Effect.Effect<ChannelView, ApiError> =>
    Effect.gen(function*() {
      const channelId = yield* requireString(request, "channel")
      if (!Ids.isId("C", channelId) && !Ids.isId("D", channelId)) return yield* fail("channel_not_found")
      const found = yield* orDieOnSql(store.channel(channelId, principal.userId, options))
      if (Option.isNone(found) || !Access.canSee(principal, found.value, found.value.is_member)) {
        return yield* fail("channel_not_found")
      }
      const view = found.value
      if (access !== undefined) yield* auth.requireScope(principal, Access.scopeFor(Access.typeOf(view), access))
      if (access === "history" && principal.tokenKind === "bot" && !view.is_member) return yield* fail("not_in_channel")
      return view
    })

  const typesArg = (principal: WorkspacePrincipal, request: ApiRequest) =>
    Effect.gen(function*() {
      const types = Access.parseTypes(optionalString(request, "types"))
      if (types === undefined) return yield* fail("invalid_types", "types must be among public_channel, private_channel, mpim, im")
      for (const type of types) yield* auth.requireScope(principal, Access.scopeFor(type, "read"))
      return types
    })

  /** Slack's message objects for `rows`, with their reactions (one query for the page). */
  const render = (channelId: string, rows: ReadonlyArray<MessageRow>) =>
    Effect.map(orDieOnSql(store.reactions(channelId, rows.map((r) => r.ts))), (byTs) =>
      rows.map((row) => {
        const message = toSlackMessage(row, byTs.get(row.ts))
        return row.deleted ? tombstone(message) : message
      }))

  /** A message by its `argument` (a ts), not deleted; `notFound` otherwise. */
  const messageArg = (channelId: string, request: ApiRequest, argument: string, badTs: string, notFound: string) =>
    Effect.gen(function*() {
      const ts = Range.exactTs(yield* requireString(request, argument))
      if (ts === undefined) return yield* fail(badTs)
      const found = yield* orDieOnSql(store.message(channelId, ts))
      if (Option.isNone(found) || found.value.deleted) return yield* fail(notFound)
      return found.value
    })

  const conversationsPage = (
    principal: WorkspacePrincipal,
    request: ApiRequest,
    memberOf: string | undefined,
    numMembers: boolean,
    withUnread = false
  ) =>
    Effect.gen(function*() {
      const types = yield* typesArg(principal, request)
      const limit = pageSize(yield* optionalNumber(request, "limit"))
      const cursor = yield* cursorArg(request, Cursor.ConversationsCursor)
      const rows = yield* orDieOnSql(store.conversations({
        teamId: principal.teamId,
        viewerId: principal.userId,
        memberOf,
        types,
        publicToNonMembers: Access.seesPublicWithoutMembership(principal),
        excludeArchived: isTruthy(request.args["exclude_archived"]),
        after: Option.getOrUndefined(cursor)?.id,
        limit: limit + 1,
        numMembers
      }))
      const page = rows.slice(0, limit)
      const last = page[page.length - 1]
      // The caller's own conversations carry their unread counts (one query for the page).
      const counted = withUnread
        ? page.filter((v) => v.is_member && v.last_read !== null && (v.last_read_seq ?? 0) < v.last_seq)
        : []
      const unread = counted.length === 0
        ? new Map<string, UnreadCounts>()
        : yield* orDieOnSql(store.unreadMany(principal.userId, counted.map((v) => ({ channelId: v.id, lastRead: v.last_read as string }))))
      return {
        channels: page.map((view) =>
          toSlackConversation(view, withUnread && view.is_member && view.last_read !== null ? unread.get(view.id) ?? noUnread : undefined)
        ),
        response_metadata: {
          next_cursor: rows.length > limit && last !== undefined ? Cursor.encode(Cursor.ConversationsCursor, { k: "conversations", id: last.id }) : ""
        }
      }
    })

  // ---- methods ------------------------------------------------------------------------

  const list: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      return yield* conversationsPage(principal, request, undefined, true)
    })

  const usersConversations: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      const user = optionalString(request, "user") ?? principal.userId
      if (user !== principal.userId) {
        if (!Ids.isId("U", user) || Option.isNone(yield* orDieOnSql(accounts.user(principal.teamId, user)))) {
          return yield* fail("user_not_found")
        }
      }
      return yield* conversationsPage(principal, request, user, false, user === principal.userId)
    })

  const info: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      const view = yield* visibleChannel(principal, request, "read", { numMembers: isTruthy(request.args["include_num_members"]) })
      let unread: UnreadCounts | undefined
      if (view.is_member && view.last_read !== null) {
        unread = (view.last_read_seq ?? 0) >= view.last_seq
          ? noUnread
          : yield* orDieOnSql(store.unread(view.id, principal.userId, view.last_read))
      }
      return { channel: toSlackConversation(view, unread) }
    })

  const members: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      const view = yield* visibleChannel(principal, request, "read")
      const limit = pageSize(yield* optionalNumber(request, "limit"))
      const cursor = Option.getOrUndefined(yield* cursorArg(request, Cursor.MembersCursor))
      if (cursor !== undefined && cursor.c !== view.id) return yield* fail("invalid_cursor")
      const ids = yield* orDieOnSql(store.members(view.id, { after: cursor?.u, limit: limit + 1 }))
      const page = ids.slice(0, limit)
      const last = page[page.length - 1]
      return {
        members: page,
        response_metadata: {
          next_cursor: ids.length > limit && last !== undefined ? Cursor.encode(Cursor.MembersCursor, { k: "members", c: view.id, u: last }) : ""
        }
      }
    })

  const history: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      const view = yield* visibleChannel(principal, request, "history")
      const limit = pageSize(yield* optionalNumber(request, "limit"))
      const cursor = Option.getOrUndefined(yield* cursorArg(request, Cursor.HistoryCursor))
      if (cursor !== undefined && cursor.c !== view.id) return yield* fail("invalid_cursor")
      const range = Range.window({
        latest: optionalString(request, "latest"),
        oldest: optionalString(request, "oldest"),
        inclusive: isTruthy(request.args["inclusive"])
      }, "older")
      if (typeof range === "string") return yield* fail(range)
      const w = cursor === undefined ? range : Range.after(range, cursor.d, cursor.ts)
      const rows = yield* orDieOnSql(store.history(view.id, w, limit + 1))
      const page = rows.slice(0, limit)
      const hasMore = rows.length > limit
      const last = page[page.length - 1]
      const messages = yield* render(view.id, w.direction === "older" ? page : [...page].reverse())
      return {
        messages,
        has_more: hasMore,
        pin_count: 0,
        channel_actions_ts: null,
        channel_actions_count: 0,
        response_metadata: {
          next_cursor: hasMore && last !== undefined
            ? Cursor.encode(Cursor.HistoryCursor, { k: "history", c: view.id, d: w.direction, ts: last.ts })
            : ""
        }
      }
    })

  const replies: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      const view = yield* visibleChannel(principal, request, "history")
      const ts = Range.exactTs(yield* requireString(request, "ts"))
      if (ts === undefined) return yield* fail("thread_not_found")
      const found = yield* orDieOnSql(store.message(view.id, ts))
      if (Option.isNone(found)) return yield* fail("thread_not_found")
      // `ts` may name the parent or any message of the thread.
      let parent = found.value
      if (parent.thread_ts !== null && parent.thread_ts !== parent.ts) {
        if (parent.deleted) return yield* fail("thread_not_found")
        const root = yield* orDieOnSql(store.message(view.id, parent.thread_ts))
        if (Option.isNone(root)) return yield* fail("thread_not_found")
        parent = root.value
      }
      if (parent.subtype !== null && unthreadable.has(parent.subtype)) return yield* fail("thread_not_found")
      if (parent.deleted && parent.reply_count === 0) return yield* fail("thread_not_found")

      const limit = pageSize(yield* optionalNumber(request, "limit"))
      const cursor = Option.getOrUndefined(yield* cursorArg(request, Cursor.RepliesCursor))
      if (cursor !== undefined && (cursor.c !== view.id || cursor.t !== parent.ts)) return yield* fail("invalid_cursor")
      const range = Range.window({
        latest: optionalString(request, "latest"),
        oldest: optionalString(request, "oldest"),
        inclusive: isTruthy(request.args["inclusive"])
      }, "newer")
      if (typeof range === "string") return yield* fail(range)
      const w = cursor === undefined ? range : Range.after(range, "newer", cursor.ts)
      // The first page starts with the parent, and it counts towards `limit`.
      const withParent = cursor === undefined
      const wanted = withParent ? limit - 1 : limit
      const rows = yield* orDieOnSql(store.replies(view.id, parent.ts, w, wanted + 1))
      const page = withParent ? [parent, ...rows.slice(0, wanted)] : rows.slice(0, wanted)
      const hasMore = rows.length > wanted
      const last = page[page.length - 1]
      return {
        messages: yield* render(view.id, page),
        has_more: hasMore,
        response_metadata: {
          next_cursor: hasMore && last !== undefined
            ? Cursor.encode(Cursor.RepliesCursor, { k: "replies", c: view.id, t: parent.ts, ts: last.ts })
            : ""
        }
      }
    })

  const getPermalink: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      const view = yield* visibleChannel(principal, request, undefined)
      const message = yield* messageArg(view.id, request, "message_ts", "message_not_found", "message_not_found")
      return { channel: view.id, permalink: permalink(config.advertiseUrl, view.id, message) }
    })

  const reactionsGet: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      yield* auth.requireScope(principal, "reactions:read")
      if (optionalString(request, "channel") === undefined && optionalString(request, "timestamp") === undefined) {
        return yield* fail(optionalString(request, "file") === undefined ? "no_item_specified" : "file_not_found")
      }
      const view = yield* visibleChannel(principal, request, undefined)
      const message = yield* messageArg(view.id, request, "timestamp", "bad_timestamp", "message_not_found")
      const [rendered] = yield* render(view.id, [message])
      return {
        type: "message",
        channel: view.id,
        message: { ...rendered, permalink: permalink(config.advertiseUrl, view.id, message) }
      }
    })

  return new Map<string, ApiHandler>([
    ["conversations.list", list],
    ["conversations.info", info],
    ["conversations.members", members],
    ["conversations.history", history],
    ["conversations.replies", replies],
    ["users.conversations", usersConversations],
    ["chat.getPermalink", getPermalink],
    ["reactions.get", reactionsGet]
  ])
})
