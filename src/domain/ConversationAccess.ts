/**
 * Who may see a conversation (invariant 5), as pure functions that every read method
 * and the store's listing queries follow:
 *
 * - a conversation of another workspace does not exist for the caller;
 * - a public channel is visible to every member of its workspace except guests, who
 *   see only the channels they are in (Slack's restricted accounts);
 * - a private channel, a group DM or a DM is visible to its members only.
 *
 * "Not visible" always reads as `channel_not_found`, never as a permission error, so
 * the answer does not reveal that a private conversation exists. Bots are members of
 * their workspace like anyone else, and their token's scopes narrow what they may read
 * by conversation type (`scopeFor`).
 */
import type { Role } from "../auth/Principal.ts"

export type ConversationType = "public_channel" | "private_channel" | "mpim" | "im"

export const conversationTypes: ReadonlyArray<ConversationType> = ["public_channel", "private_channel", "mpim", "im"]

/** The flags a channel row carries. */
export interface ConversationFlags {
  readonly team_id: string
  readonly is_private: boolean
  readonly is_im: boolean
  readonly is_mpim: boolean
}

export const typeOf = (c: Omit<ConversationFlags, "team_id">): ConversationType =>
  c.is_im ? "im" : c.is_mpim ? "mpim" : c.is_private ? "private_channel" : "public_channel"

export interface Viewer {
  readonly teamId: string
  readonly role: Role
}

/** Whether a viewer may see public channels they are not in. */
export const seesPublicWithoutMembership = (viewer: Viewer): boolean => viewer.role !== "guest"

/** Whether `viewer` may see (and read) `conversation`, given whether they are a member of it. */
export const canSee = (viewer: Viewer, conversation: ConversationFlags, isMember: boolean): boolean => {
  if (conversation.team_id !== viewer.teamId) return false
  if (isMember) return true
  return typeOf(conversation) === "public_channel" && seesPublicWithoutMembership(viewer)
}

/** What a bot's token must hold to read a conversation's metadata and members, or its messages. */
export type Access = "read" | "history"

const scopePrefix: Record<ConversationType, string> = {
  public_channel: "channels",
  private_channel: "groups",
  mpim: "mpim",
  im: "im"
}

/** Slack's scope for `access` to conversations of `type`: `channels:read`, `groups:history`, … */
export const scopeFor = (type: ConversationType, access: Access): string => `${scopePrefix[type]}:${access}`

/**
 * The `types` argument (comma-separated), deduplicated in Slack's order; `public_channel`
 * when absent or empty, undefined when it names an unknown type (`invalid_types`).
 */
export const parseTypes = (raw: string | undefined): ReadonlyArray<ConversationType> | undefined => {
  const names = (raw ?? "").split(",").map((s) => s.trim()).filter((s) => s.length > 0)
  if (names.length === 0) return ["public_channel"]
  const wanted = new Set<string>(names)
  for (const name of wanted) if (!(conversationTypes as ReadonlyArray<string>).includes(name)) return undefined
  return conversationTypes.filter((t) => wanted.has(t))
}
