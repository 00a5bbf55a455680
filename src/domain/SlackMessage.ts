/**
 * A message as Slack's clients expect it, from its `messages` row: the same object in
 * `conversations.history`, `.replies`, `message` events and search results.
 */

/** A `messages` row (BIGINT columns arrive as numbers; see Database.ts). */
export interface MessageRow {
  readonly channel_id: string
  readonly ts: string
  readonly seq: number
  readonly team_id: string
  readonly user_id: string | null
  readonly bot_id: string | null
  readonly subtype: string | null
  readonly text: string
  readonly blocks: unknown
  readonly attachments: unknown
  readonly files: unknown
  readonly thread_ts: string | null
  readonly reply_broadcast: boolean
  readonly reply_count: number
  readonly reply_users: ReadonlyArray<string>
  readonly latest_reply: string | null
  readonly client_msg_id: string | null
  readonly edited_ts: string | null
  readonly edited_by: string | null
  readonly deleted: boolean
  /** Other Slack fields kept verbatim (username, icon_emoji, bot_profile, …). */
  readonly extra: Readonly<Record<string, unknown>> | null
}

export interface ReactionSummary {
  readonly name: string
  readonly users: ReadonlyArray<string>
  readonly count: number
}

export type SlackMessage = Readonly<Record<string, unknown>> & {
  readonly type: "message"
  readonly ts: string
  readonly text: string
}

/** Slack's message object. `reactions` are attached when the caller has them. */
export const toSlackMessage = (row: MessageRow, reactions?: ReadonlyArray<ReactionSummary>): SlackMessage => {
  const message: Record<string, unknown> = {
    type: "message",
    ...(row.extra ?? {}),
    ts: row.ts,
    text: row.text,
    team: row.team_id,
    seq: row.seq
  }
  if (row.user_id !== null) message["user"] = row.user_id
  if (row.bot_id !== null) message["bot_id"] = row.bot_id
  if (row.subtype !== null) message["subtype"] = row.subtype
  if (row.blocks !== null && row.blocks !== undefined) message["blocks"] = row.blocks
  if (row.attachments !== null && row.attachments !== undefined) message["attachments"] = row.attachments
  if (row.files !== null && row.files !== undefined) message["files"] = row.files
  if (row.client_msg_id !== null) message["client_msg_id"] = row.client_msg_id
  if (row.edited_ts !== null) message["edited"] = { user: row.edited_by ?? row.user_id, ts: row.edited_ts }
  if (row.thread_ts !== null) {
    message["thread_ts"] = row.thread_ts
    if (row.thread_ts === row.ts) {
      // The parent of a thread.
      message["reply_count"] = row.reply_count
      message["reply_users"] = row.reply_users
      message["reply_users_count"] = row.reply_users.length
      if (row.latest_reply !== null) message["latest_reply"] = row.latest_reply
    } else {
      message["parent_user_id"] = (row.extra?.["parent_user_id"] as string | undefined) ?? undefined
      if (row.reply_broadcast) message["subtype"] = "thread_broadcast"
    }
  }
  if (reactions !== undefined && reactions.length > 0) message["reactions"] = reactions
  return message as SlackMessage
}
