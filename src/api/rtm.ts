/**
 * `rtm.connect` (API.md, "real time"): authenticates the caller's workspace token and
 * answers the WebSocket URL of this node's gateway with a single-use ticket (valid for
 * 30 s, on this node only: see GatewayTickets.ts), plus Slack's `self` and `team`.
 *
 * The URL is built from the node's advertised URL (`CHORUS_ADVERTISE_URL`): `http` →
 * `ws`, `https` → `wss`, path `/ws`. A client that will resume appends `&resume=1`
 * (ext): the gateway then holds the socket's events after `hello` until the client's
 * `resume` frame, so the missed events come first and in order (Gateway.ts).
 */
import { Effect, Option } from "effect"
import { Auth } from "../auth/Principal.ts"
import { ChorusConfig } from "../config/ChorusConfig.ts"
import { Accounts } from "../store/Accounts.ts"
import type { ApiHandler } from "../transport/ApiMethod.ts"
import { gatewayPath } from "../transport/GatewayProtocol.ts"
import { GatewayTickets } from "../transport/GatewayTickets.ts"
import { fail, orDieOnSql } from "./auth.ts"

/** The gateway URL for a ticket, from the node's advertised URL. */
export const gatewayUrl = (advertiseUrl: string, ticket: string): string => {
  const url = new URL(advertiseUrl)
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:"
  url.pathname = `${url.pathname.replace(/\/+$/, "")}${gatewayPath}`
  url.search = new URLSearchParams({ ticket }).toString()
  url.hash = ""
  return url.toString()
}

export const make = Effect.gen(function*() {
  const auth = yield* Auth
  const accounts = yield* Accounts
  const tickets = yield* GatewayTickets
  const config = yield* ChorusConfig

  const connect: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      const [user, team] = yield* orDieOnSql(Effect.all([
        accounts.user(principal.teamId, principal.userId),
        accounts.workspace(principal.teamId)
      ], { concurrency: 2 }))
      if (Option.isNone(user) || user.value.deleted) return yield* fail("account_inactive")
      if (Option.isNone(team)) return yield* fail("team_not_found")
      const ticket = yield* tickets.issue({ userId: principal.userId, teamId: principal.teamId, tokenId: principal.tokenId, principal })
      return {
        url: gatewayUrl(config.advertiseUrl, ticket),
        self: { id: principal.userId, name: user.value.handle },
        team: { id: team.value.id, name: team.value.name, domain: team.value.domain }
      }
    })

  return new Map<string, ApiHandler>([["rtm.connect", connect]])
})
