/**
 * Opaque pagination cursors (API.md, "Pagination"): base64url of a small JSON object
 * whose shape each listing declares as a Schema. A cursor comes back from the client,
 * so it is input like any other: `decode` checks its size, its alphabet, its JSON and
 * its shape (no extra fields), and answers `Option.none()` for anything else, which
 * methods turn into `invalid_cursor`.
 *
 * Every cursor carries a kind (`k`) and, where it pages inside one conversation, that
 * conversation's id, so a cursor from one listing or channel is refused by another
 * rather than silently reinterpreted.
 */
import { Option, Schema } from "effect"
import * as Ids from "./Ids.ts"

/** The longest cursor accepted; ours are far shorter. */
export const maxLength = 512

const base64url = /^[A-Za-z0-9_-]+$/

export const encode = <A, I>(schema: Schema.Schema<A, I, never>, value: NoInfer<A>): string =>
  Buffer.from(JSON.stringify(Schema.encodeSync(schema)(value)), "utf8").toString("base64url")

export const decode = <A, I>(schema: Schema.Schema<A, I, never>, cursor: string): Option.Option<A> => {
  if (cursor.length === 0 || cursor.length > maxLength || !base64url.test(cursor)) return Option.none()
  let json: unknown
  try {
    json = JSON.parse(Buffer.from(cursor, "base64url").toString("utf8"))
  } catch {
    return Option.none()
  }
  return Schema.decodeUnknownOption(schema)(json, { onExcessProperty: "error" })
}

// ---- field shapes --------------------------------------------------------------------

/** A message ts in its canonical fixed-width form, `##########.######`. */
export const Ts = Schema.String.pipe(Schema.pattern(/^\d{10}\.\d{6}$/))

/** A conversation id: `C…` (channels) or `D…` (direct messages). */
export const ConversationId = Schema.String.pipe(Schema.filter((s) => Ids.isId("C", s) || Ids.isId("D", s)))

export const UserId = Schema.String.pipe(Schema.filter((s) => Ids.isId("U", s)))

// ---- the cursors of the conversation reads --------------------------------------------

/**
 * `conversations.history`: the ts of the last message handed out and the direction the
 * pages run in (`older`: from `latest` back; `newer`: from `oldest` forward).
 */
export const HistoryCursor = Schema.Struct({
  k: Schema.Literal("history"),
  c: ConversationId,
  d: Schema.Literal("older", "newer"),
  ts: Ts
})
export type HistoryCursor = typeof HistoryCursor.Type

/** `conversations.replies`: the thread and the ts of the last message handed out (pages run forward). */
export const RepliesCursor = Schema.Struct({
  k: Schema.Literal("replies"),
  c: ConversationId,
  t: Ts,
  ts: Ts
})
export type RepliesCursor = typeof RepliesCursor.Type

/** `conversations.list`, `users.conversations`: the last conversation id handed out (pages by id). */
export const ConversationsCursor = Schema.Struct({
  k: Schema.Literal("conversations"),
  id: ConversationId
})
export type ConversationsCursor = typeof ConversationsCursor.Type

/** `conversations.members`: the last member id handed out (pages by user id). */
export const MembersCursor = Schema.Struct({
  k: Schema.Literal("members"),
  c: ConversationId,
  u: UserId
})
export type MembersCursor = typeof MembersCursor.Type
