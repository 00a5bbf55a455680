/**
 * The channel actor's protocol (`channel/<channel id>`; DMs and group DMs are channels
 * too): the requests it accepts, what each answers, and the pure rules the Web API
 * methods check before asking (channel names, lengths).
 *
 * Every request names its sender (`user`) and the workspace the sender acts in
 * (`team`); the actor trusts both (the sender authenticated them) and checks them
 * against the channel: the channel must belong to `team`, and the sender must be a
 * member, except to join a public channel. A sender who may not see the channel gets
 * `channel_not_found` (invariant 5), never `not_in_channel` for a private one.
 *
 * Requests that depend on the sender's workspace role carry it (`role`). All requests
 * are volatile: the sender waits for the answer and retries with the same command id,
 * and the actor is idempotent on that id (and on `client_msg_id` for messages).
 */
import { Schema } from "effect"
import * as Entity from "../runtime/Entity.ts"

/** A Slack error code the actor refuses a request with (`channel_not_found`, `is_archived`, …). */
export class ChannelError extends Schema.TaggedError<ChannelError>()("ChannelError", {
  code: Schema.String
}) {}

const Role = Schema.Literal("owner", "admin", "member", "guest")
export type Role = typeof Role.Type

/** Slack's conversation object as the sender sees it (the channel shape of `conversations.info`). */
const Conversation = Schema.Unknown

/** Sender of a request. */
const sender = { user: Schema.String, team: Schema.String }

/**
 * Apps (src/apps/SlashCommands.ts): an app answering a member's slash command acts on
 * that member's standing: the channel must accept `on_behalf_of` as a member, and the
 * app's bot (`user`) need not be one, as on Slack. Set by the server, never from a
 * client's arguments.
 */
const onBehalfOf = { on_behalf_of: Schema.optional(Schema.String) }

// ---- messages -------------------------------------------------------------------------

/**
 * Posts a message (a thread reply when `thread_ts` is given). The contract the gateway
 * relies on: keep `user, team, text, thread_ts, reply_broadcast, client_msg_id, blocks,
 * attachments` and the success shape as they are. A retry with the same
 * `client_msg_id` answers the original `ts`/`seq`, never a second message.
 */
export class PostMessage extends Schema.TaggedRequest<PostMessage>()("PostMessage", {
  failure: ChannelError,
  success: Schema.Struct({ ts: Schema.String, seq: Schema.Number, message: Schema.Unknown }),
  payload: {
    ...sender,
    text: Schema.String,
    thread_ts: Schema.optional(Schema.String),
    reply_broadcast: Schema.optional(Schema.Boolean),
    client_msg_id: Schema.optional(Schema.String),
    blocks: Schema.optional(Schema.Unknown),
    attachments: Schema.optional(Schema.Unknown),
    /** For bot senders: the bot and app ids (Slack's `bot_id`, `app_id`). */
    bot_id: Schema.optional(Schema.String),
    app_id: Schema.optional(Schema.String),
    /** Display overrides of a bot's message (Slack's `username`, `icon_emoji`, `icon_url`). */
    username: Schema.optional(Schema.String),
    icon_emoji: Schema.optional(Schema.String),
    icon_url: Schema.optional(Schema.String),
    /**
     * Files shared with the message (Slack's file objects, from
     * `files.completeUploadExternal`): the message gets subtype `file_share`, may have
     * no text, and a `file_shared` event follows it for each file.
     */
    files: Schema.optional(Schema.Array(Schema.Unknown)),
    ...onBehalfOf
  }
}) {}

/** The most messages one `PostMessages` carries. */
export const maxBatchedPosts = 64

/** One message's answer within `PostMessages`: its `ts` and `seq`, or the code that refused it. */
export const BatchedPostAnswer = Schema.Union(
  Schema.Struct({ ok: Schema.Literal(true), ts: Schema.String, seq: Schema.Number }),
  Schema.Struct({ ok: Schema.Literal(false), error: Schema.String })
)
export type BatchedPostAnswer = typeof BatchedPostAnswer.Type

/**
 * Messages one sender posted to one channel, in the order sent: what a gateway sends
 * for the messages a client queued behind one in flight, so a fast sender costs one
 * request and one commit per batch instead of a round trip per message (decision
 * 0020). Each is decided exactly as its own `PostMessage` (its `client_msg_id`, its
 * refusal, its `seq`, in this order); the answers come in the same order.
 */
export class PostMessages extends Schema.TaggedRequest<PostMessages>()("PostMessages", {
  failure: ChannelError,
  success: Schema.Array(BatchedPostAnswer),
  payload: {
    posts: Schema.Array(PostMessage).pipe(Schema.minItems(1), Schema.maxItems(maxBatchedPosts))
  }
}) {}

/** Edits a message; only its author may (`cant_update_message`). */
export class UpdateMessage extends Schema.TaggedRequest<UpdateMessage>()("UpdateMessage", {
  failure: ChannelError,
  success: Schema.Struct({ ts: Schema.String, seq: Schema.Number, message: Schema.Unknown }),
  payload: {
    ...sender,
    ts: Schema.String,
    text: Schema.optional(Schema.String),
    blocks: Schema.optional(Schema.Unknown),
    attachments: Schema.optional(Schema.Unknown),
    ...onBehalfOf
  }
}) {}

/** Deletes a message: its author, or a workspace owner or admin (`cant_delete_message`). */
export class DeleteMessage extends Schema.TaggedRequest<DeleteMessage>()("DeleteMessage", {
  failure: ChannelError,
  success: Schema.Struct({ ts: Schema.String, seq: Schema.Number }),
  payload: { ...sender, role: Role, ts: Schema.String, ...onBehalfOf }
}) {}

/** Adds the sender's reaction `name` to the message `ts` (`already_reacted`). */
export class AddReaction extends Schema.TaggedRequest<AddReaction>()("AddReaction", {
  failure: ChannelError,
  success: Schema.Struct({ seq: Schema.Number }),
  payload: { ...sender, ts: Schema.String, name: Schema.String }
}) {}

/** Removes the sender's reaction (`no_reaction`). */
export class RemoveReaction extends Schema.TaggedRequest<RemoveReaction>()("RemoveReaction", {
  failure: ChannelError,
  success: Schema.Struct({ seq: Schema.Number }),
  payload: { ...sender, ts: Schema.String, name: Schema.String }
}) {}

/**
 * Shows the file `file` as deleted in the message `ts` that shared it (Slack's
 * tombstone, `{id, mode: "tombstone"}`), with a `message_changed` and a `file_deleted`
 * event. The sender already checked that they may delete the file (its owner or a
 * workspace admin), so membership is not required. A file already tombstoned, or a
 * message gone, changes nothing.
 */
export class RemoveFile extends Schema.TaggedRequest<RemoveFile>()("RemoveFile", {
  failure: ChannelError,
  success: Schema.Struct({ changed: Schema.Boolean }),
  payload: { ...sender, ts: Schema.String, file: Schema.String }
}) {}

// ---- creation -------------------------------------------------------------------------

/**
 * Creates a public or private channel with the sender as its creator and first member
 * (`name_taken`). Sent to a fresh id; a retry with the same command id answers the
 * channel it created.
 */
export class CreateChannel extends Schema.TaggedRequest<CreateChannel>()("CreateChannel", {
  failure: ChannelError,
  success: Schema.Struct({ channel: Conversation, seq: Schema.Number }),
  payload: { ...sender, name: Schema.String, is_private: Schema.Boolean }
}) {}

/**
 * Creates the DM (one member besides the sender, or the sender alone) or group DM
 * (2–8 others) of `members` (the sender included), keyed by `dm_key` (the sorted
 * member ids). When the workspace already has a conversation with that key (another
 * actor won the race), answers its id with `created: false`.
 */
export class OpenConversation extends Schema.TaggedRequest<OpenConversation>()("OpenConversation", {
  failure: ChannelError,
  success: Schema.Struct({ id: Schema.String, created: Schema.Boolean }),
  payload: { ...sender, members: Schema.Array(Schema.String), dm_key: Schema.String }
}) {}

/** The conversation object as the sender sees it; members only for private ones. */
export class Describe extends Schema.TaggedRequest<Describe>()("Describe", {
  failure: ChannelError,
  success: Schema.Struct({ channel: Conversation }),
  payload: sender
}) {}

// ---- membership -----------------------------------------------------------------------

/** Joins a public channel (guests may not: `channel_not_found`). Already a member: no change. */
export class Join extends Schema.TaggedRequest<Join>()("Join", {
  failure: ChannelError,
  success: Schema.Struct({ channel: Conversation, already_in_channel: Schema.Boolean }),
  payload: { ...sender, role: Role }
}) {}

/** Leaves; answers `not_in_channel: true` (no change) for a public channel the sender is not in. */
export class Leave extends Schema.TaggedRequest<Leave>()("Leave", {
  failure: ChannelError,
  success: Schema.Struct({ not_in_channel: Schema.Boolean }),
  payload: sender
}) {}

/**
 * Adds `users` (already checked to be members of the workspace). Refused as a whole
 * when one of them is already in the channel (`already_in_channel`) or is the sender
 * (`cant_invite_self`).
 */
export class Invite extends Schema.TaggedRequest<Invite>()("Invite", {
  failure: ChannelError,
  success: Schema.Struct({ channel: Conversation }),
  payload: { ...sender, role: Role, users: Schema.Array(Schema.String) }
}) {}

/** Removes `target` (`cant_kick_self`, `not_in_channel`, `restricted_action`). */
export class Kick extends Schema.TaggedRequest<Kick>()("Kick", {
  failure: ChannelError,
  success: Schema.Struct({}),
  payload: { ...sender, role: Role, target: Schema.String }
}) {}

// ---- channel settings -----------------------------------------------------------------

export class Archive extends Schema.TaggedRequest<Archive>()("Archive", {
  failure: ChannelError,
  success: Schema.Struct({}),
  payload: { ...sender, role: Role }
}) {}

export class Unarchive extends Schema.TaggedRequest<Unarchive>()("Unarchive", {
  failure: ChannelError,
  success: Schema.Struct({}),
  payload: { ...sender, role: Role }
}) {}

/** Renames (the creator, or a workspace owner or admin: `not_authorized`); `name` already valid. */
export class Rename extends Schema.TaggedRequest<Rename>()("Rename", {
  failure: ChannelError,
  success: Schema.Struct({ channel: Conversation }),
  payload: { ...sender, role: Role, name: Schema.String }
}) {}

export class SetTopic extends Schema.TaggedRequest<SetTopic>()("SetTopic", {
  failure: ChannelError,
  success: Schema.Struct({ channel: Conversation }),
  payload: { ...sender, topic: Schema.String }
}) {}

export class SetPurpose extends Schema.TaggedRequest<SetPurpose>()("SetPurpose", {
  failure: ChannelError,
  success: Schema.Struct({ channel: Conversation }),
  payload: { ...sender, purpose: Schema.String }
}) {}

export const Channel = Entity.make(
  "channel",
  [
    PostMessage,
    PostMessages,
    UpdateMessage,
    DeleteMessage,
    AddReaction,
    RemoveReaction,
    RemoveFile,
    CreateChannel,
    OpenConversation,
    Describe,
    Join,
    Leave,
    Invite,
    Kick,
    Archive,
    Unarchive,
    Rename,
    SetTopic,
    SetPurpose
  ],
  {
    PostMessage: "volatile",
    PostMessages: "volatile",
    UpdateMessage: "volatile",
    DeleteMessage: "volatile",
    AddReaction: "volatile",
    RemoveReaction: "volatile",
    RemoveFile: "volatile",
    CreateChannel: "volatile",
    OpenConversation: "volatile",
    Describe: "volatile",
    Join: "volatile",
    Leave: "volatile",
    Invite: "volatile",
    Kick: "volatile",
    Archive: "volatile",
    Unarchive: "volatile",
    Rename: "volatile",
    SetTopic: "volatile",
    SetPurpose: "volatile"
  }
)

export type ChannelRequest = Entity.Requests<
  [
    typeof PostMessage,
    typeof PostMessages,
    typeof UpdateMessage,
    typeof DeleteMessage,
    typeof AddReaction,
    typeof RemoveReaction,
    typeof RemoveFile,
    typeof CreateChannel,
    typeof OpenConversation,
    typeof Describe,
    typeof Join,
    typeof Leave,
    typeof Invite,
    typeof Kick,
    typeof Archive,
    typeof Unarchive,
    typeof Rename,
    typeof SetTopic,
    typeof SetPurpose
  ]
>

// ---- rules ----------------------------------------------------------------------------

/** Slack's limits. */
export const limits = {
  /** Characters of a message's text (`msg_too_long`). */
  text: 40_000,
  /** Characters of a channel name (`invalid_name_maxlength`). */
  name: 80,
  /** Characters of a topic or purpose (`too_long`). */
  topic: 250,
  /** Members of a group DM besides the sender. */
  groupDmOthers: 8,
  /** Users per `conversations.invite`. */
  invite: 1000,
  /** A client_msg_id's length. */
  clientMsgId: 128
} as const

/**
 * A channel name as Slack normalises it (trimmed, lower case, a leading `#` dropped),
 * or the error code that refuses it: `invalid_name_required`, `invalid_name_maxlength`,
 * `invalid_name_specials` (anything but a–z, 0–9, `-` and `_`), `invalid_name_punctuation`
 * (nothing but `-` and `_`).
 */
export const normaliseChannelName = (raw: string): { readonly name: string } | { readonly error: string } => {
  const name = raw.trim().replace(/^#/, "").toLowerCase()
  if (name.length === 0) return { error: "invalid_name_required" }
  if (name.length > limits.name) return { error: "invalid_name_maxlength" }
  if (!/^[a-z0-9_-]+$/.test(name)) return { error: "invalid_name_specials" }
  if (/^[-_]+$/.test(name)) return { error: "invalid_name_punctuation" }
  return { name }
}

/** Slack's emoji names: `thumbsup`, `+1`, `thumbsup::skin-tone-2`; surrounding colons dropped. */
export const normaliseReactionName = (raw: string): string | undefined => {
  const name = raw.trim().replace(/^:/, "").replace(/:$/, "")
  return name.length > 0 && name.length <= 100 && /^[a-z0-9_+'-]+(::skin-tone-[2-6])?$/.test(name) ? name : undefined
}

/** The key of a DM or group DM: its members' ids, sorted, comma-separated. */
export const dmKey = (members: ReadonlyArray<string>): string => [...new Set(members)].sort().join(",")

/**
 * A guest may act only in the channels they were invited to: to a guest, a channel
 * they are not in does not exist, public or not.
 */
export const codeFor = (role: Role, code: string): string =>
  role === "guest" && code === "not_in_channel" ? "channel_not_found" : code
