/**
 * Slack's `users.list`, `users.info` and `users.lookupByEmail`, confined to the
 * caller's workspace: a user outside it does not exist as far as the caller can tell
 * (invariant 5). Guests see users as members do; bots need `users:read`, and
 * `users:read.email` for addresses.
 */
import { Effect, Option } from "effect"
import type { Principal } from "../auth/Principal.ts"
import { Auth } from "../auth/Principal.ts"
import * as Ids from "../domain/Ids.ts"
import { Accounts } from "../store/Accounts.ts"
import type { WorkspaceUser } from "../store/Accounts.ts"
import type { ApiHandler } from "../transport/ApiMethod.ts"
import { optionalNumber, optionalString, requireString } from "../transport/ApiMethod.ts"
import { fail, orDieOnSql } from "./auth.ts"

/** The largest page; also what a request without `limit` gets. */
export const maxPageSize = 1000

/** Cursors are opaque to clients: base64url of `u:<last user id>`. */
export const encodeCursor = (lastUserId: string): string => Buffer.from(`u:${lastUserId}`, "utf8").toString("base64url")

export const decodeCursor = (cursor: string): string | undefined => {
  const decoded = Buffer.from(cursor, "base64url").toString("utf8")
  if (!decoded.startsWith("u:")) return undefined
  const userId = decoded.slice(2)
  return Ids.isId("U", userId) ? userId : undefined
}

/** `limit` as Slack reads it: absent or 0 means "as many as you will give", which is `maxPageSize` at most. */
export const pageSize = (limit: number | undefined): number =>
  limit === undefined || limit <= 0 ? maxPageSize : Math.max(1, Math.min(Math.floor(limit), maxPageSize))

const fold = (s: string) => s.normalize("NFKD").replace(/[\u0300-\u036f]/g, "")

export const canSeeEmails = (principal: Principal): boolean =>
  principal.scopes === "all" || principal.scopes.has("users:read.email")

/** Slack's user object; `email` only when `showEmail` (every user here shares the caller's workspace). */
export const userObject = (u: WorkspaceUser, showEmail: boolean) => ({
  id: u.userId,
  team_id: u.teamId,
  name: u.handle,
  deleted: u.deleted,
  color: "",
  real_name: u.name,
  tz: "UTC",
  tz_label: "Coordinated Universal Time",
  tz_offset: 0,
  profile: {
    real_name: u.name,
    real_name_normalized: fold(u.name),
    display_name: u.name,
    display_name_normalized: fold(u.name),
    status_text: "",
    status_emoji: "",
    avatar_hash: "",
    team: u.teamId,
    ...(showEmail && u.email !== undefined ? { email: u.email } : {}),
    ...(u.botId === undefined ? {} : { bot_id: u.botId })
  },
  is_admin: u.role === "owner" || u.role === "admin",
  is_owner: u.role === "owner",
  is_primary_owner: u.isPrimaryOwner,
  is_restricted: u.role === "guest",
  is_ultra_restricted: false,
  is_bot: u.isBot,
  is_app_user: false,
  updated: Math.floor(u.createdAt.getTime() / 1000)
})

export const make = Effect.gen(function*() {
  const accounts = yield* Accounts
  const auth = yield* Auth

  const list: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      yield* auth.requireScope(principal, "users:read")
      const limit = pageSize(yield* optionalNumber(request, "limit"))
      const cursor = optionalString(request, "cursor")
      const after = cursor === undefined ? undefined : decodeCursor(cursor)
      if (cursor !== undefined && after === undefined) return yield* fail("invalid_cursor")
      const rows = yield* orDieOnSql(accounts.users(principal.teamId, { after, limit: limit + 1 }))
      const page = rows.slice(0, limit)
      const last = page[page.length - 1]
      const showEmail = canSeeEmails(principal)
      return {
        members: page.map((u) => userObject(u, showEmail)),
        cache_ts: Math.floor(Date.now() / 1000),
        response_metadata: { next_cursor: rows.length > limit && last !== undefined ? encodeCursor(last.userId) : "" }
      }
    })

  const info: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      yield* auth.requireScope(principal, "users:read")
      const userId = yield* requireString(request, "user")
      if (!Ids.isId("U", userId)) return yield* fail("user_not_found")
      const user = yield* orDieOnSql(accounts.user(principal.teamId, userId))
      if (Option.isNone(user)) return yield* fail("user_not_found")
      return { user: userObject(user.value, canSeeEmails(principal)) }
    })

  const lookupByEmail: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      yield* auth.requireScope(principal, "users:read.email")
      const email = (yield* requireString(request, "email")).trim()
      const user = yield* orDieOnSql(accounts.userByEmail(principal.teamId, email))
      if (Option.isNone(user)) return yield* fail("users_not_found")
      return { user: userObject(user.value, true) }
    })

  return new Map<string, ApiHandler>([
    ["users.list", list],
    ["users.info", info],
    ["users.lookupByEmail", lookupByEmail]
  ])
})
