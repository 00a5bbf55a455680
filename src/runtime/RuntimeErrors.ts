/**
 * The runtime's failures, one tagged class each, so callers handle exactly the ones
 * they can (`catchTag`) and the types say what may fail.
 */
import { Schema } from "effect"

/** The sender could not get an answer in time; the command's outcome is unknown. */
export class DeliveryTimeout extends Schema.TaggedError<DeliveryTimeout>()("DeliveryTimeout", {
  address: Schema.String,
  commandId: Schema.String,
  waitedMs: Schema.Number
}) {}

/** The actor failed repeatedly on this message; it went to the dead-letter stream. */
export class ActorFailed extends Schema.TaggedError<ActorFailed>()("ActorFailed", {
  address: Schema.String,
  commandId: Schema.String,
  reason: Schema.String
}) {}

/** The message could not be decoded (a bug or a version skew between nodes). */
export class MalformedMessage extends Schema.TaggedError<MalformedMessage>()("MalformedMessage", {
  address: Schema.String,
  reason: Schema.String
}) {}

/** The actor's mailbox is full: back off and retry. */
export class MailboxFull extends Schema.TaggedError<MailboxFull>()("MailboxFull", {
  address: Schema.String
}) {}

export type DeliveryError = DeliveryTimeout | ActorFailed | MalformedMessage | MailboxFull

/** Inside an owner: this node no longer holds the shard's lease (or its epoch is stale). */
export class FencedOut extends Schema.TaggedError<FencedOut>()("FencedOut", {
  shard: Schema.Number,
  epoch: Schema.Number,
  reason: Schema.String
}) {}
