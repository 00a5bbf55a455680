/**
 * `reactions.add` and `reactions.remove` on messages, through the channel's actor
 * (`already_reacted`, `no_reaction`, `message_not_found`, `invalid_name`).
 * `reactions.get` is a read (conversationsRead.ts).
 */
import { Effect } from "effect"
import * as ChannelActor from "../actors/ChannelActor.ts"
import * as P from "../actors/ChannelProtocol.ts"
import type { ApiHandler } from "../transport/ApiMethod.ts"
import { optionalString, requireString } from "../transport/ApiMethod.ts"
import { fail } from "./auth.ts"
import { channelIdArg, makeWrites } from "./conversationsWrite.ts"

export const make = Effect.gen(function*() {
  const { ask, auth, sender } = yield* makeWrites

  const react = (add: boolean): ApiHandler => (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      yield* auth.requireScope(principal, "reactions:write")
      if (optionalString(request, "channel") === undefined || optionalString(request, "timestamp") === undefined) {
        return yield* fail(optionalString(request, "file") === undefined ? "no_item_specified" : "file_not_found")
      }
      const channelId = yield* channelIdArg(request)
      const ts = yield* requireString(request, "timestamp")
      const raw = yield* requireString(request, "name")
      if (P.normaliseReactionName(raw) === undefined) return yield* fail("invalid_name")
      const message = { ...sender(principal), ts, name: raw }
      yield* ask(principal, channelId, add ? new P.AddReaction(message) : new P.RemoveReaction(message))
      return {}
    })

  return new Map<string, ApiHandler>([
    ["reactions.add", react(true)],
    ["reactions.remove", react(false)]
  ])
}).pipe(Effect.provide(ChannelActor.services))
