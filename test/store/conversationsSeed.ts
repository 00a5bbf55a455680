// Seeding the conversation tables directly (as the channel actor would leave them), for
// the read tests: channels, members, messages (top-level, threads, broadcasts, deleted)
// and reactions, with the columns of migrations/0004_channels.ts.

import { SqlClient } from "@effect/sql"
import { Effect } from "effect"

/** The fixed-width ts of `second` (from 1,700,000,000) and `micro`. */
export const tsOf = (second: number, micro = 0): string =>
  `${String(1_700_000_000 + second).padStart(10, "0")}.${String(micro).padStart(6, "0")}`

export interface ChannelSeed {
  readonly id: string
  readonly team_id: string
  readonly creator: string
  readonly name?: string | null
  readonly is_private?: boolean
  readonly is_im?: boolean
  readonly is_mpim?: boolean
  readonly is_archived?: boolean
  readonly topic?: string
  readonly purpose?: string
  readonly created_at?: number
}

export interface MessageSeed {
  readonly channel_id: string
  readonly team_id: string
  readonly ts: string
  readonly user_id?: string
  readonly text?: string
  readonly subtype?: string
  readonly thread_ts?: string
  readonly reply_broadcast?: boolean
  readonly deleted?: boolean
}

let seq = 0

export const insertChannel = (c: ChannelSeed) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql`INSERT INTO channels ${
      sql.insert({
        id: c.id,
        team_id: c.team_id,
        name: c.name === undefined ? c.id.toLowerCase() : c.name,
        is_private: c.is_private ?? false,
        is_im: c.is_im ?? false,
        is_mpim: c.is_mpim ?? false,
        dm_key: c.is_im === true ? `${c.id}-key` : null,
        creator: c.creator,
        topic: c.topic ?? "",
        purpose: c.purpose ?? "",
        is_archived: c.is_archived ?? false,
        created_at: c.created_at ?? 1_700_000_000
      })
    }`)

export const insertMembers = (channelId: string, userIds: ReadonlyArray<string>) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.forEach(userIds, (userId) =>
      sql`INSERT INTO channel_members (channel_id, user_id, joined_seq) VALUES (${channelId}, ${userId}, 0)`, { discard: true }))

/**
 * Inserts messages; a reply (thread_ts ≠ ts) also turns its parent into a thread parent
 * (thread_ts = ts, reply_count, reply_users, latest_reply), as the channel actor does.
 */
export const insertMessages = (messages: ReadonlyArray<MessageSeed>) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.forEach(messages, (m) =>
      Effect.gen(function*() {
        seq += 1
        yield* sql`INSERT INTO messages ${
          sql.insert({
            channel_id: m.channel_id,
            ts: m.ts,
            seq,
            team_id: m.team_id,
            user_id: m.user_id ?? null,
            subtype: m.subtype ?? null,
            text: m.text ?? `text ${m.ts}`,
            thread_ts: m.thread_ts ?? null,
            reply_broadcast: m.reply_broadcast ?? false,
            deleted: m.deleted ?? false
          })
        }`
        if (m.thread_ts !== undefined && m.thread_ts !== m.ts) {
          yield* sql`
            UPDATE messages SET thread_ts = ts, reply_count = reply_count + 1, latest_reply = ${m.ts},
              reply_users = CASE WHEN ${m.user_id ?? ""} = ANY(reply_users) OR ${m.user_id ?? null}::text IS NULL
                                 THEN reply_users ELSE array_append(reply_users, ${m.user_id ?? ""}) END
            WHERE channel_id = ${m.channel_id} AND ts = ${m.thread_ts}`
        }
        yield* sql`UPDATE channels SET last_seq = ${seq}, last_ts = ${m.ts} WHERE id = ${m.channel_id}`
      }), { discard: true }))

export const insertReaction = (channelId: string, messageTs: string, name: string, userId: string, createdAt: number) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql`INSERT INTO reactions (channel_id, message_ts, name, user_id, created_at)
        VALUES (${channelId}, ${messageTs}, ${name}, ${userId}, ${createdAt})`)

export const markRead = (channelId: string, userId: string, lastRead: string, lastReadSeq: number) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql`UPDATE channel_members SET last_read = ${lastRead}, last_read_seq = ${lastReadSeq}
        WHERE channel_id = ${channelId} AND user_id = ${userId}`)
