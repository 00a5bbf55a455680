/**
 * Slack's `users.getPresence` and `users.setPresence`, answered by the presence actors
 * (src/actors/PresenceActor.ts) through the sharding client.
 *
 * - `users.getPresence {user?}`: the caller's own presence comes with how it was
 *   reckoned (`online`, `auto_away`, `manual_away`, `connection_count`, and
 *   `last_activity` while connected); another user's is `presence` alone, as on Slack.
 *   A user outside the caller's workspace is `user_not_found` (invariant 5).
 * - `users.setPresence {presence: auto|away}`: manual away, or back to automatic.
 */
import { Effect, Option } from "effect"
import type { PresenceView } from "../actors/PresenceProtocol.ts"
import { actorIdOfUser, Get, PresenceEntity, SetManual } from "../actors/PresenceProtocol.ts"
import { Auth } from "../auth/Principal.ts"
import { ChorusConfig } from "../config/ChorusConfig.ts"
import * as Ids from "../domain/Ids.ts"
import { ShardingClient } from "../runtime/ShardingClient.ts"
import { Accounts } from "../store/Accounts.ts"
import type { ApiHandler } from "../transport/ApiMethod.ts"
import { ApiError, optionalString, requireString } from "../transport/ApiMethod.ts"
import { fail, orDieOnSql } from "./auth.ts"

/** Slack's answer for `view`; the details only for the user themself. */
export const presenceAnswer = (view: PresenceView, self: boolean): Record<string, unknown> => {
  if (!self) return { presence: view.presence }
  const { user: _user, ...fields } = view
  return fields
}

const unavailable = () => new ApiError({ code: "service_unavailable", status: 503 })

export const make = Effect.gen(function*() {
  const auth = yield* Auth
  const accounts = yield* Accounts
  const client = yield* ShardingClient
  const config = yield* ChorusConfig

  const getPresence: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      yield* auth.requireScope(principal, "users:read")
      const user = optionalString(request, "user") ?? principal.userId
      if (user !== principal.userId) {
        if (!Ids.isId("U", user) || Option.isNone(yield* orDieOnSql(accounts.user(principal.teamId, user)))) {
          return yield* fail("user_not_found")
        }
      }
      const views = yield* client.send(PresenceEntity, actorIdOfUser(user, config.shards), new Get({ users: [user] })).pipe(
        Effect.mapError(unavailable)
      )
      const view = views[0]
      if (view === undefined) return yield* Effect.die(new Error("the presence actor answered nothing"))
      return presenceAnswer(view, user === principal.userId)
    })

  const setPresence: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      yield* auth.requireScope(principal, "users:write")
      const presence = yield* requireString(request, "presence")
      if (presence !== "auto" && presence !== "away") return yield* fail("invalid_presence")
      yield* client.send(
        PresenceEntity,
        actorIdOfUser(principal.userId, config.shards),
        new SetManual({ user: principal.userId, away: presence === "away" })
      ).pipe(Effect.mapError(unavailable))
      return {}
    })

  return new Map<string, ApiHandler>([
    ["users.getPresence", getPresence],
    ["users.setPresence", setPresence]
  ])
})
