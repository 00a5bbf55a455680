/**
 * Every read of conversations and their timelines (schema: migrations/0004_channels.ts,
 * indexes: 0006_read_indexes.ts). The channel actor is the only writer of these rows;
 * this repository only reads, so any node answers reads without asking the owner.
 *
 * Each query is bounded by one conversation or one user, and served by an index:
 *
 * - a timeline page (`history`): `messages_timeline` (channel_id, ts) over top-level
 *   messages, so a page never steps over thread replies;
 * - a thread page (`replies`): `messages_thread` (channel_id, thread_ts, ts);
 * - one message, its reactions: the primary keys;
 * - a workspace's public channels (`conversations`): `channels_team_public` (team_id,
 *   id); a user's conversations: `channel_members_user`;
 * - a conversation's members: the primary key of `channel_members`.
 *
 * Visibility (invariant 5) is decided by the caller with src/domain/ConversationAccess.ts,
 * except for listings, whose pages must be cut after filtering: `conversations` takes the
 * viewer and applies the same rules in SQL.
 */
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import type { Fragment } from "@effect/sql/Statement"
import { Context, Effect, Layer, Option } from "effect"
import type { ConversationType } from "../domain/ConversationAccess.ts"
import type { Bound, Window } from "../domain/HistoryRange.ts"
import type { ChannelView, UnreadCounts } from "../domain/SlackConversation.ts"
import type { MessageRow, ReactionSummary } from "../domain/SlackMessage.ts"

/** What a listing asks for. */
export interface ConversationsQuery {
  readonly teamId: string
  /** Whose view: `is_member`, `last_read` and visibility are the viewer's. */
  readonly viewerId: string
  /**
   * Undefined for every conversation the viewer may see (`conversations.list`); a user
   * id for that user's conversations, as far as the viewer may see them
   * (`users.conversations`).
   */
  readonly memberOf: string | undefined
  readonly types: ReadonlyArray<ConversationType>
  /** The viewer may see public channels they are not in (members; not guests). */
  readonly publicToNonMembers: boolean
  readonly excludeArchived: boolean
  /** Conversation ids after this one (keyset pages by id). */
  readonly after: string | undefined
  readonly limit: number
  readonly numMembers: boolean
}

export interface ConversationsReadShape {
  /** The conversation with the viewer's membership, whatever its workspace (the caller checks). */
  readonly channel: (
    channelId: string,
    viewerId: string,
    options?: { readonly numMembers?: boolean }
  ) => Effect.Effect<Option.Option<ChannelView>, SqlError>
  /** A page of conversations by id, visible to the viewer (see `ConversationsQuery`). */
  readonly conversations: (query: ConversationsQuery) => Effect.Effect<ReadonlyArray<ChannelView>, SqlError>
  /** A page of member ids, by id, after `after`. */
  readonly members: (
    channelId: string,
    page: { readonly after: string | undefined; readonly limit: number }
  ) => Effect.Effect<ReadonlyArray<string>, SqlError>
  /** Top-level messages after `lastRead`, counted up to `unreadCountCap`. */
  readonly unread: (channelId: string, viewerId: string, lastRead: string) => Effect.Effect<UnreadCounts, SqlError>
  /** `unread` for several conversations in one statement (a page of `users.conversations`), by channel id. */
  readonly unreadMany: (
    viewerId: string,
    markers: ReadonlyArray<{ readonly channelId: string; readonly lastRead: string }>
  ) => Effect.Effect<ReadonlyMap<string, UnreadCounts>, SqlError>
  /**
   * Top-level messages (thread parents, unthreaded messages, broadcast replies) of the
   * window, not deleted, in the window's direction: newest first for `older`, oldest
   * first for `newer`.
   */
  readonly history: (channelId: string, window: Window, limit: number) => Effect.Effect<ReadonlyArray<MessageRow>, SqlError>
  /** The replies of thread `threadTs` in the window (not the parent), not deleted, oldest first. */
  readonly replies: (
    channelId: string,
    threadTs: string,
    window: Window,
    limit: number
  ) => Effect.Effect<ReadonlyArray<MessageRow>, SqlError>
  /** One message, deleted or not. */
  readonly message: (channelId: string, ts: string) => Effect.Effect<Option.Option<MessageRow>, SqlError>
  /** The reactions of the messages `ts`, in Slack's order (first reacted first; users in reaction order). */
  readonly reactions: (
    channelId: string,
    ts: ReadonlyArray<string>
  ) => Effect.Effect<ReadonlyMap<string, ReadonlyArray<ReactionSummary>>, SqlError>
}

export class ConversationsRead extends Context.Tag("chorus/store/ConversationsRead")<ConversationsRead, ConversationsReadShape>() {}

/** Unread counts stop here: enough for any badge, and a bound on what one `conversations.info` costs. */
export const unreadCountCap = 1000

// ---- statements (exported for the query-plan tests) ------------------------------------

const messageColumns = `channel_id, ts, seq, team_id, user_id, bot_id, subtype, text, blocks, attachments, files,
  thread_ts, reply_broadcast, reply_count, reply_users, latest_reply, client_msg_id, edited_ts, edited_by, deleted, extra`

const channelColumns = `c.id, c.team_id, c.name, c.is_private, c.is_im, c.is_mpim, c.dm_key, c.creator,
  c.topic, c.topic_set_by, c.topic_set_at, c.purpose, c.purpose_set_by, c.purpose_set_at,
  c.is_archived, c.last_seq, c.last_ts, c.created_at,
  m.user_id IS NOT NULL AS is_member, m.last_read, m.last_read_seq`

/** The predicate of `messages_timeline`, word for word, so the planner can use that index. */
const topLevel = "(thread_ts IS NULL OR thread_ts = ts OR reply_broadcast)"

/** The predicate of `channels_team_public`. */
const isPublic = "(NOT c.is_private AND NOT c.is_im AND NOT c.is_mpim)"

const typePredicate: Record<ConversationType, string> = {
  public_channel: isPublic,
  private_channel: "(c.is_private AND NOT c.is_im AND NOT c.is_mpim)",
  mpim: "(c.is_mpim AND NOT c.is_im)",
  im: "c.is_im"
}

export const statements = (sql: SqlClient.SqlClient) => {
  const empty = sql.literal("")

  const bounds = (w: Window): Fragment => {
    const side = (bound: Bound | undefined, strict: string, loose: string) =>
      bound === undefined ? empty : sql`AND ts ${sql.literal(bound.inclusive ? loose : strict)} ${bound.ts} `
    return sql`${side(w.lower, ">", ">=")}${side(w.upper, "<", "<=")}`
  }

  const types = (ts: ReadonlyArray<ConversationType>): Fragment =>
    ts.length === 0 ? sql.literal("false") : sql.literal(`(${ts.map((t) => typePredicate[t]).join(" OR ")})`)

  /** The viewer's extras over a page `p` of channel rows: the other user of a DM, the member count. */
  const withExtras = (inner: Fragment, viewerId: string, numMembers: boolean) =>
    sql<ChannelView>`
      SELECT p.*,
        CASE WHEN p.is_im THEN COALESCE(
          (SELECT o.user_id FROM channel_members o WHERE o.channel_id = p.id AND o.user_id <> ${viewerId} ORDER BY o.user_id LIMIT 1),
          ${viewerId}) END AS im_user,
        ${numMembers ? sql`(SELECT count(*)::int FROM channel_members n WHERE n.channel_id = p.id)` : sql.literal("NULL::int")} AS num_members
      FROM (${inner}) p
      ORDER BY p.id`

  const channel = (channelId: string, viewerId: string, numMembers: boolean) =>
    withExtras(
      sql`
        SELECT ${sql.literal(channelColumns)}
        FROM channels c LEFT JOIN channel_members m ON m.channel_id = c.id AND m.user_id = ${viewerId}
        WHERE c.id = ${channelId}`,
      viewerId,
      numMembers
    )

  /** Undefined when the query cannot match anything. */
  const conversations = (q: ConversationsQuery) => {
    const after = q.after ?? ""
    const archived = q.excludeArchived ? sql.literal("AND NOT c.is_archived") : empty
    if (q.memberOf !== undefined) {
      const nonMember = q.publicToNonMembers ? sql.literal(`OR ${isPublic}`) : empty
      return withExtras(
        sql`
          SELECT ${sql.literal(channelColumns)}
          FROM channel_members u
          JOIN channels c ON c.id = u.channel_id
          LEFT JOIN channel_members m ON m.channel_id = c.id AND m.user_id = ${q.viewerId}
          WHERE u.user_id = ${q.memberOf} AND c.team_id = ${q.teamId} AND ${types(q.types)}
            AND c.id > ${after} ${archived}
            AND (m.user_id IS NOT NULL ${nonMember})
          ORDER BY c.id
          LIMIT ${q.limit}`,
        q.viewerId,
        q.numMembers
      )
    }
    const publicPart = q.publicToNonMembers && q.types.includes("public_channel")
    const memberTypes = publicPart ? q.types.filter((t) => t !== "public_channel") : q.types
    const parts: Array<Fragment> = []
    if (publicPart) {
      parts.push(sql`(
        SELECT ${sql.literal(channelColumns)}
        FROM channels c LEFT JOIN channel_members m ON m.channel_id = c.id AND m.user_id = ${q.viewerId}
        WHERE c.team_id = ${q.teamId} AND ${sql.literal(isPublic)} AND c.id > ${after} ${archived}
        ORDER BY c.id
        LIMIT ${q.limit})`)
    }
    if (memberTypes.length > 0) {
      parts.push(sql`(
        SELECT ${sql.literal(channelColumns)}
        FROM channel_members m JOIN channels c ON c.id = m.channel_id
        WHERE m.user_id = ${q.viewerId} AND c.team_id = ${q.teamId} AND ${types(memberTypes)}
          AND c.id > ${after} ${archived}
        ORDER BY c.id
        LIMIT ${q.limit})`)
    }
    if (parts.length === 0) return undefined
    const union = parts.length === 1 ? parts[0] as Fragment : sql`${parts[0] as Fragment} UNION ALL ${parts[1] as Fragment}`
    return withExtras(sql`SELECT * FROM (${union}) u ORDER BY id LIMIT ${q.limit}`, q.viewerId, q.numMembers)
  }

  const members = (channelId: string, after: string | undefined, limit: number) =>
    sql<{ user_id: string }>`
      SELECT user_id FROM channel_members
      WHERE channel_id = ${channelId} AND user_id > ${after ?? ""}
      ORDER BY user_id
      LIMIT ${limit}`

  const unread = (channelId: string, viewerId: string, lastRead: string) =>
    sql<UnreadCounts>`
      SELECT count(*)::int AS unread_count,
             (count(*) FILTER (WHERE s.user_id IS DISTINCT FROM ${viewerId}))::int AS unread_count_display
      FROM (
        SELECT user_id FROM messages
        WHERE channel_id = ${channelId} AND ${sql.literal(topLevel)} AND NOT deleted AND ts > ${lastRead}
        ORDER BY ts
        LIMIT ${unreadCountCap}
      ) s`

  const unreadMany = (viewerId: string, markers: ReadonlyArray<{ readonly channelId: string; readonly lastRead: string }>) =>
    sql<UnreadCounts & { channel_id: string }>`
      SELECT x.channel_id, u.unread_count, u.unread_count_display
      FROM jsonb_to_recordset(${JSON.stringify(markers.map((m) => ({ channel_id: m.channelId, last_read: m.lastRead })))}::jsonb)
        AS x(channel_id text, last_read text)
      CROSS JOIN LATERAL (
        SELECT count(*)::int AS unread_count,
               (count(*) FILTER (WHERE s.user_id IS DISTINCT FROM ${viewerId}))::int AS unread_count_display
        FROM (
          SELECT user_id FROM messages
          WHERE channel_id = x.channel_id AND ${sql.literal(topLevel)} AND NOT deleted AND ts > x.last_read
          ORDER BY ts
          LIMIT ${unreadCountCap}
        ) s
      ) u`

  const history = (channelId: string, w: Window, limit: number) =>
    sql<MessageRow>`
      SELECT ${sql.literal(messageColumns)} FROM messages
      WHERE channel_id = ${channelId} AND ${sql.literal(topLevel)} AND NOT deleted ${bounds(w)}
      ORDER BY ts ${sql.literal(w.direction === "older" ? "DESC" : "ASC")}
      LIMIT ${limit}`

  const replies = (channelId: string, threadTs: string, w: Window, limit: number) =>
    sql<MessageRow>`
      SELECT ${sql.literal(messageColumns)} FROM messages
      WHERE channel_id = ${channelId} AND thread_ts = ${threadTs} AND ts <> ${threadTs} AND NOT deleted ${bounds(w)}
      ORDER BY ts
      LIMIT ${limit}`

  const message = (channelId: string, ts: string) =>
    sql<MessageRow>`SELECT ${sql.literal(messageColumns)} FROM messages WHERE channel_id = ${channelId} AND ts = ${ts}`

  const reactions = (channelId: string, ts: ReadonlyArray<string>) =>
    sql<{ message_ts: string; name: string; users: ReadonlyArray<string>; count: number }>`
      SELECT message_ts, name, array_agg(user_id ORDER BY created_at, user_id) AS users, count(*)::int AS count
      FROM reactions
      WHERE channel_id = ${channelId} AND message_ts = ANY(${[...ts]}::text[])
      GROUP BY message_ts, name
      ORDER BY message_ts, min(created_at), name`

  return { channel, conversations, members, unread, unreadMany, history, replies, message, reactions }
}

// ---- the repository --------------------------------------------------------------------

export const make: Effect.Effect<ConversationsReadShape, never, SqlClient.SqlClient> = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const s = statements(sql)

  const channel: ConversationsReadShape["channel"] = (channelId, viewerId, options) =>
    Effect.map(s.channel(channelId, viewerId, options?.numMembers === true), (rows) => Option.fromNullable(rows[0]))

  const conversations: ConversationsReadShape["conversations"] = (query) => {
    if (query.limit <= 0) return Effect.succeed([])
    const statement = s.conversations(query)
    return statement === undefined ? Effect.succeed([]) : statement
  }

  const members: ConversationsReadShape["members"] = (channelId, { after, limit }) =>
    Effect.map(s.members(channelId, after, limit), (rows) => rows.map((r) => r.user_id))

  const unread: ConversationsReadShape["unread"] = (channelId, viewerId, lastRead) =>
    Effect.map(s.unread(channelId, viewerId, lastRead), (rows) => rows[0] ?? { unread_count: 0, unread_count_display: 0 })

  const unreadMany: ConversationsReadShape["unreadMany"] = (viewerId, markers) =>
    markers.length === 0
      ? Effect.succeed(new Map())
      : Effect.map(s.unreadMany(viewerId, markers), (rows) =>
        new Map(rows.map((r) => [r.channel_id, { unread_count: r.unread_count, unread_count_display: r.unread_count_display }] as const)))

  const history: ConversationsReadShape["history"] = (channelId, window, limit) => s.history(channelId, window, limit)

  const replies: ConversationsReadShape["replies"] = (channelId, threadTs, window, limit) =>
    s.replies(channelId, threadTs, window, limit)

  const message: ConversationsReadShape["message"] = (channelId, ts) =>
    Effect.map(s.message(channelId, ts), (rows) => Option.fromNullable(rows[0]))

  const reactions: ConversationsReadShape["reactions"] = (channelId, ts) => {
    if (ts.length === 0) return Effect.succeed(new Map())
    return Effect.map(s.reactions(channelId, ts), (rows) => {
      const byMessage = new Map<string, Array<ReactionSummary>>()
      for (const row of rows) {
        const list = byMessage.get(row.message_ts) ?? []
        list.push({ name: row.name, users: row.users, count: row.count })
        byMessage.set(row.message_ts, list)
      }
      return byMessage
    })
  }

  return { channel, conversations, members, unread, unreadMany, history, replies, message, reactions }
})

/** The PostgreSQL repository (the schema comes from `Database.migrate`). */
export const layer: Layer.Layer<ConversationsRead, never, SqlClient.SqlClient> = Layer.effect(ConversationsRead, make)
