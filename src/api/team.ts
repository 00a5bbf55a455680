/**
 * Workspaces: `team.create` (ext: the caller becomes owner and gets a token acting in
 * the new workspace) and Slack's `team.info`.
 */
import { Effect, Option } from "effect"
import { Auth } from "../auth/Principal.ts"
import * as Ids from "../domain/Ids.ts"
import { Accounts } from "../store/Accounts.ts"
import type { Workspace } from "../store/Accounts.ts"
import type { ApiHandler } from "../transport/ApiMethod.ts"
import { optionalString, requireString } from "../transport/ApiMethod.ts"
import { fail, newUserToken, normaliseName, orDieOnSql, teamSummary } from "./auth.ts"

/** A DNS label: lower-case letters, digits and inner hyphens, 1 to 63 characters. */
const domainPattern = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/

/** The domain in lower case when valid, else undefined (`invalid_domain`). */
export const normaliseDomain = (raw: string): string | undefined => {
  const domain = raw.trim().toLowerCase()
  return domainPattern.test(domain) ? domain : undefined
}

/** Slack's team object. */
export const teamObject = (w: Workspace) => ({
  ...teamSummary(w),
  email_domain: "",
  icon: { image_default: true },
  created: Math.floor(w.createdAt.getTime() / 1000)
})

export const make = Effect.gen(function*() {
  const accounts = yield* Accounts
  const auth = yield* Auth

  const create: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticate(request.token)
      if (principal.tokenKind !== "user") return yield* fail("not_allowed_token_type")
      const name = normaliseName(yield* requireString(request, "name"))
      if (name === undefined) return yield* fail("invalid_name", "name must be 1 to 80 characters")
      const domain = normaliseDomain(yield* requireString(request, "domain"))
      if (domain === undefined) {
        return yield* fail("invalid_domain", "domain must be 1 to 63 lower-case letters, digits or inner hyphens")
      }
      const teamId = Ids.make("T")
      const token = newUserToken(principal.userId, teamId)
      const workspace = yield* accounts.createWorkspace({ workspace: { id: teamId, name, domain }, ownerId: principal.userId, token: token.row }).pipe(
        Effect.catchTag("DomainTaken", () => fail("domain_taken")),
        orDieOnSql
      )
      return { team: teamSummary(workspace), token: token.secret }
    })

  const info: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      yield* auth.requireScope(principal, "team:read")
      const wanted = optionalString(request, "team") ?? principal.teamId
      if (wanted !== principal.teamId) {
        // Another workspace: only for an active member of it, and never for a bot.
        if (principal.tokenKind !== "user" || !Ids.isId("T", wanted)) return yield* fail("team_not_found")
        const member = yield* orDieOnSql(accounts.membership(wanted, principal.userId))
        if (Option.isNone(member) || member.value.deleted) return yield* fail("team_not_found")
      }
      const workspace = yield* orDieOnSql(accounts.workspace(wanted))
      if (Option.isNone(workspace)) return yield* fail("team_not_found")
      return { team: teamObject(workspace.value) }
    })

  return new Map<string, ApiHandler>([
    ["team.create", create],
    ["team.info", info]
  ])
})
