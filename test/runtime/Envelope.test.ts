/**
 * The reply codec: a success goes through the request's success schema alone (the
 * fast path), a failure through the whole Exit schema; both read back as they were,
 * and in the same wire form the full Exit schema gives.
 */
import { Either, Exit, Schema } from "effect"
import { describe, expect, it } from "vitest"
import * as Envelope from "../../src/runtime/Envelope.ts"

class Refused extends Schema.TaggedError<Refused>()("Refused", { why: Schema.String }) {}
class Stamp extends Schema.TaggedRequest<Stamp>()("Stamp", {
  failure: Refused,
  // A transformation, so that encoding is not the identity.
  success: Schema.Struct({ at: Schema.DateFromNumber, n: Schema.Int }),
  payload: {}
}) {}

const full = Schema.exitSchema(new Stamp() as unknown as Schema.TaggedRequest.Any) as unknown as Schema.Schema<Exit.Exit<unknown, unknown>, unknown>

describe("Envelope exit codec", () => {
  it("encodes a success as the full Exit schema does, and decodes it back", () => {
    const exit = Exit.succeed({ at: new Date(1_700_000_000_000), n: 3 })
    const encoded = Either.getOrThrow(Envelope.encodeExit(new Stamp(), exit))
    expect(encoded).toEqual(Schema.encodeSync(full)(exit))
    expect(encoded).toEqual({ _tag: "Success", value: { at: 1_700_000_000_000, n: 3 } })
    // Through JSON, as on the wire.
    const decoded = Either.getOrThrow(Envelope.decodeExit(new Stamp(), JSON.parse(JSON.stringify(encoded))))
    expect(decoded).toEqual(exit)
  })

  it("round-trips a failure through the full Exit schema", () => {
    const exit = Exit.fail(new Refused({ why: "closed" }))
    const encoded = Either.getOrThrow(Envelope.encodeExit(new Stamp(), exit))
    const decoded = Either.getOrThrow(Envelope.decodeExit(new Stamp(), JSON.parse(JSON.stringify(encoded))))
    expect(decoded).toEqual(exit)
  })

  it("refuses a success that its schema does not accept, both ways", () => {
    expect(Either.isLeft(Envelope.encodeExit(new Stamp(), Exit.succeed({ at: new Date(0), n: 1.5 })))).toBe(true)
    expect(Either.isLeft(Envelope.decodeExit(new Stamp(), { _tag: "Success", value: { at: "soon", n: 1 } }))).toBe(true)
    expect(Either.isLeft(Envelope.decodeExit(new Stamp(), { _tag: "Nonsense" }))).toBe(true)
  })
})
