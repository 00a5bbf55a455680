/**
 * An actor's address: its behaviour type and its id, e.g. `channel/C0ABC`.
 */
import { Data, Either } from "effect"

export class ActorAddress extends Data.Class<{ readonly type: string; readonly id: string }> {
  override toString(): string {
    return `${this.type}/${this.id}`
  }
}

export class InvalidAddress extends Data.TaggedError("InvalidAddress")<{ readonly input: string }> {
  override get message(): string {
    return `not an actor address (want <type>/<id>): ${JSON.stringify(this.input)}`
  }
}

const typePattern = /^[a-z][a-z0-9_-]{0,63}$/

/** Parses `type/id`; the id may itself contain slashes. */
export const parse = (input: string): Either.Either<ActorAddress, InvalidAddress> => {
  const slash = input.indexOf("/")
  if (slash <= 0 || slash === input.length - 1 || input.length > 512) return Either.left(new InvalidAddress({ input }))
  const type = input.slice(0, slash)
  if (!typePattern.test(type)) return Either.left(new InvalidAddress({ input }))
  return Either.right(new ActorAddress({ type, id: input.slice(slash + 1) }))
}

export const make = (type: string, id: string): ActorAddress => new ActorAddress({ type, id })
