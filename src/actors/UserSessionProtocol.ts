/**
 * The user-session actor's protocol (`user/<user id>`; ARCHITECTURE.md, "User-session
 * actor"): the one writer of a user's per-user state — today their read markers — and
 * the publisher of the per-user events that follow from it.
 *
 * `Mark` moves the user's read marker in one conversation (`conversations.mark`) and
 * answers the unread counts after it; every socket of the user, on every node, gets
 * Slack's `channel_marked` / `group_marked` / `im_marked` on `evt.user.<user>` (the
 * subject the gateways already follow for the user's channel_joined, channel_left, …).
 * Volatile: the caller waits and retries; a mark is a state, so a retry is harmless.
 */
import { Schema } from "effect"
import * as Entity from "../runtime/Entity.ts"

/** A Slack error code the actor refuses a request with (`channel_not_found`, `not_in_channel`). */
export class UserSessionError extends Schema.TaggedError<UserSessionError>()("UserSessionError", {
  code: Schema.String
}) {}

const Role = Schema.Literal("owner", "admin", "member", "guest")

export const Marked = Schema.Struct({
  channel: Schema.String,
  /** The read marker now (canonical ts). */
  ts: Schema.String,
  unread_count: Schema.Int,
  unread_count_display: Schema.Int
})
export type Marked = typeof Marked.Type

export class Mark extends Schema.TaggedRequest<Mark>()("Mark", {
  failure: UserSessionError,
  success: Marked,
  payload: {
    /** The workspace the user acts in, and their role there (for what they may see). */
    team: Schema.String,
    role: Role,
    channel: Schema.String,
    /** Canonical ts (`##########.######`). */
    ts: Schema.String
  }
}) {}

export const UserSession = Entity.make("user", [Mark], { Mark: "volatile" })

export type UserSessionRequest = Entity.Requests<[typeof Mark]>

/** Slack's event for a mark, by conversation type: `im_marked`, `group_marked` (private channels, group DMs), `channel_marked`. */
export const markedEventType = (c: { readonly is_im: boolean; readonly is_mpim: boolean; readonly is_private: boolean }): string =>
  c.is_im ? "im_marked" : c.is_mpim || c.is_private ? "group_marked" : "channel_marked"
