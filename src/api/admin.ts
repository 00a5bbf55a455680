/**
 * Workspace administration: `admin.users.invite` (ext semantics, API.md). Owners and
 * admins invite members and guests; only an owner invites an admin.
 */
import { Effect } from "effect"
import { Auth } from "../auth/Principal.ts"
import type { Role } from "../auth/Principal.ts"
import { Accounts } from "../store/Accounts.ts"
import type { InvitedRole } from "../store/Accounts.ts"
import type { ApiHandler, ApiRequest } from "../transport/ApiMethod.ts"
import { optionalString, requireString } from "../transport/ApiMethod.ts"
import { fail, isTruthy, normaliseEmail, orDieOnSql } from "./auth.ts"

/** Whether `inviter` may grant `role`: owners and admins may invite, only owners make admins. */
export const mayInvite = (inviter: Role, role: InvitedRole): "ok" | "not_an_admin" | "not_allowed" => {
  if (inviter !== "owner" && inviter !== "admin") return "not_an_admin"
  if (role === "admin" && inviter !== "owner") return "not_allowed"
  return "ok"
}

/** `role` (member, guest, admin), else Slack's `is_restricted`/`is_ultra_restricted` (guest); member by default. */
const invitedRole = (request: ApiRequest): InvitedRole | undefined => {
  const role = optionalString(request, "role")
  if (role !== undefined) return role === "member" || role === "guest" || role === "admin" ? role : undefined
  if (isTruthy(request.args["is_restricted"]) || isTruthy(request.args["is_ultra_restricted"])) return "guest"
  return "member"
}

export const make = Effect.gen(function*() {
  const accounts = yield* Accounts
  const auth = yield* Auth

  const invite: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      if (principal.tokenKind !== "user") return yield* fail("not_allowed_token_type")
      const team = optionalString(request, "team_id")
      if (team !== undefined && team !== principal.teamId) return yield* fail("team_not_found")
      // Who may invite at all comes first: a member learns nothing about the arguments.
      if (mayInvite(principal.role, "member") !== "ok") return yield* fail("not_an_admin")
      const email = normaliseEmail(yield* requireString(request, "email"))
      if (email === undefined) return yield* fail("invalid_email")
      const role = invitedRole(request)
      if (role === undefined) return yield* fail("invalid_role", "role must be member, guest or admin")
      if (mayInvite(principal.role, role) !== "ok") return yield* fail("not_allowed", "only an owner can invite an admin")
      const outcome = yield* accounts.invite({ teamId: principal.teamId, email, role, invitedBy: principal.userId }).pipe(
        Effect.catchTag("AlreadyInTeam", () => fail("already_in_team")),
        orDieOnSql
      )
      return outcome._tag === "Added" ? { user_id: outcome.userId } : { invited: true }
    })

  return new Map<string, ApiHandler>([["admin.users.invite", invite]])
})
