/**
 * A conversation as Slack's clients expect it, from its `channels` row as one viewer
 * sees it: the same object in `conversations.list`, `.info`, `users.conversations`.
 * Viewer-dependent fields (`is_member`, `last_read`, unread counts, the other user of a
 * DM) come from the viewer's `channel_members` row, read with the channel.
 */
import { typeOf } from "./ConversationAccess.ts"

/** A `channels` row (BIGINT columns arrive as numbers; see Database.ts). */
export interface ChannelRow {
  readonly id: string
  readonly team_id: string
  /** Null for DMs. */
  readonly name: string | null
  readonly is_private: boolean
  readonly is_im: boolean
  readonly is_mpim: boolean
  readonly dm_key: string | null
  readonly creator: string
  readonly topic: string
  readonly topic_set_by: string | null
  readonly topic_set_at: number | null
  readonly purpose: string
  readonly purpose_set_by: string | null
  readonly purpose_set_at: number | null
  readonly is_archived: boolean
  readonly last_seq: number
  readonly last_ts: string | null
  readonly created_at: number
}

/** A channel row with what one viewer's membership says about it. */
export interface ChannelView extends ChannelRow {
  readonly is_member: boolean
  /** The viewer's read marker; null when not a member. */
  readonly last_read: string | null
  readonly last_read_seq: number | null
  /** For a DM: the member who is not the viewer (the viewer for a DM with oneself). */
  readonly im_user: string | null
  /** Present when asked for. */
  readonly num_members: number | null
}

export interface UnreadCounts {
  /** Top-level messages after the viewer's read marker (at most the count cap of the store). */
  readonly unread_count: number
  /** The same without the viewer's own messages. */
  readonly unread_count_display: number
}

/**
 * Unix seconds (Slack's unit) from a stored time. The schema stores milliseconds
 * (src/store/Channels.ts); a value below 10^11 can only be seconds (as milliseconds it
 * would be 1973), so rows written in seconds read correctly too.
 */
export const toUnixSeconds = (stored: number | null): number =>
  stored === null ? 0 : stored >= 1e11 ? Math.floor(stored / 1000) : Math.floor(stored)

const textField = (value: string, by: string | null, at: number | null) => ({
  value,
  creator: by ?? "",
  last_set: toUnixSeconds(at)
})

export type SlackConversation = Readonly<Record<string, unknown>> & {
  readonly id: string
}

/** Slack's conversation object for the viewer of `view`; `unread` when computed (conversations.info). */
export const toSlackConversation = (view: ChannelView, unread?: UnreadCounts): SlackConversation => {
  const type = typeOf(view)
  const conversation: Record<string, unknown> = {
    id: view.id,
    ...(view.name === null ? {} : { name: view.name, name_normalized: view.name }),
    is_channel: type === "public_channel" || type === "private_channel",
    is_group: false,
    is_im: type === "im",
    is_mpim: type === "mpim",
    is_private: type !== "public_channel",
    is_archived: view.is_archived,
    is_general: false,
    is_shared: false,
    is_ext_shared: false,
    is_org_shared: false,
    context_team_id: view.team_id,
    created: toUnixSeconds(view.created_at),
    creator: view.creator,
    is_member: view.is_member,
    topic: textField(view.topic, view.topic_set_by, view.topic_set_at),
    purpose: textField(view.purpose, view.purpose_set_by, view.purpose_set_at),
    seq: view.last_seq
  }
  if (type === "im" && view.im_user !== null) conversation["user"] = view.im_user
  if (view.num_members !== null) conversation["num_members"] = view.num_members
  if (view.is_member && view.last_read !== null) conversation["last_read"] = view.last_read
  if (unread !== undefined) {
    conversation["unread_count"] = unread.unread_count
    conversation["unread_count_display"] = unread.unread_count_display
  }
  return conversation as SlackConversation
}
