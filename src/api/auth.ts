/**
 * Accounts and tokens (API.md, "Accounts, workspaces and tokens"): `auth.signup`,
 * `auth.login`, `auth.teams.list` (ext), and Slack's `auth.test`, `auth.revoke`.
 */
import type { SqlError } from "@effect/sql/SqlError"
import { Effect, Option } from "effect"
import { Revocation } from "../auth/AuthLive.ts"
import { Passwords } from "../auth/Passwords.ts"
import { Auth } from "../auth/Principal.ts"
import * as Tokens from "../auth/Tokens.ts"
import { ChorusConfig } from "../config/ChorusConfig.ts"
import * as Ids from "../domain/Ids.ts"
import { Accounts } from "../store/Accounts.ts"
import type { NewToken, Workspace } from "../store/Accounts.ts"
import type { ApiHandler } from "../transport/ApiMethod.ts"
import { ApiError, optionalString, requireString } from "../transport/ApiMethod.ts"

// ---- shared by the account, workspace and user groups -------------------------------

export const fail = (code: string, message?: string) =>
  Effect.fail(new ApiError(message === undefined ? { code } : { code, messages: [`[ERROR] ${message}`] }))

/** A database failure is nobody's argument error: it becomes a defect (`internal_error`). */
export const orDieOnSql = <A, E, R>(effect: Effect.Effect<A, E | SqlError, R>): Effect.Effect<A, Exclude<E, SqlError>, R> =>
  Effect.catchIf(effect, isSqlError, Effect.die) as Effect.Effect<A, Exclude<E, SqlError>, R>

const isSqlError = (e: unknown): e is SqlError =>
  typeof e === "object" && e !== null && (e as { readonly _tag?: unknown })._tag === "SqlError"

const emailPattern =
  /^[^\s@"<>(),;:\\[\]]{1,64}@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$/i

/** The trimmed address when it looks deliverable, else undefined (`invalid_email`). */
export const normaliseEmail = (raw: string): string | undefined => {
  const email = raw.trim()
  return email.length <= 254 && emailPattern.test(email) ? email : undefined
}

export const minPasswordLength = 8
/** Bounds the work one login can ask of scrypt. */
export const maxPasswordLength = 1024

export const isValidPassword = (password: string): boolean => {
  const length = [...password].length
  return length >= minPasswordLength && length <= maxPasswordLength
}

export const maxNameLength = 80

/** A person's or workspace's name, trimmed and with runs of whitespace collapsed; undefined when empty, too long or holding control characters. */
export const normaliseName = (raw: string): string | undefined => {
  const name = raw.trim().replace(/\s+/g, " ")
  // eslint-disable-next-line no-control-regex
  if (name.length === 0 || [...name].length > maxNameLength || /[\u0000-\u001f\u007f]/.test(name)) return undefined
  return name
}

const asciiFold = (s: string) => s.normalize("NFKD").replace(/[\u0300-\u036f]/g, "")

/** Slack's `name` (username): from the full name, else the email's local part; 21 characters at most. */
export const handleFor = (name: string, email: string): string => {
  const clean = (s: string) =>
    asciiFold(s).toLowerCase().replace(/\s+/g, ".").replace(/[^a-z0-9._-]/g, "").replace(/^[._-]+|[._-]+$/g, "").slice(0, 21)
  const fromName = clean(name)
  if (fromName.length > 0) return fromName
  const fromEmail = clean(email.split("@")[0] ?? "")
  return fromEmail.length > 0 ? fromEmail : "user"
}

export const isTruthy = (value: unknown): boolean => value === true || value === 1 || value === "true" || value === "1"

export const newUserToken = (userId: string, teamId: string | undefined): { readonly secret: string; readonly row: NewToken } => {
  const token = Tokens.generate("user")
  return {
    secret: token.secret,
    row: { id: token.id, hash: token.hash, userId, teamId, kind: "user", appId: undefined, botId: undefined, scopes: undefined }
  }
}

export const teamSummary = (w: Workspace) => ({ id: w.id, name: w.name, domain: w.domain })

// ---- methods -------------------------------------------------------------------------

export const make = Effect.gen(function*() {
  const accounts = yield* Accounts
  const auth = yield* Auth
  const revocation = yield* Revocation
  const passwords = yield* Passwords
  const config = yield* ChorusConfig

  const signup: ApiHandler = (request) =>
    Effect.gen(function*() {
      const rawEmail = yield* requireString(request, "email")
      const password = yield* requireString(request, "password")
      const rawName = yield* requireString(request, "name")
      const email = normaliseEmail(rawEmail)
      if (email === undefined) return yield* fail("invalid_email")
      if (!isValidPassword(password)) {
        return yield* fail("invalid_password", `password must be ${minPasswordLength} to ${maxPasswordLength} characters`)
      }
      const name = normaliseName(rawName)
      if (name === undefined) return yield* fail("invalid_name", `name must be 1 to ${maxNameLength} characters`)
      // Cheap check first, so a duplicate costs no scrypt; the insert decides races.
      if (Option.isSome(yield* orDieOnSql(accounts.accountByEmail(email)))) return yield* fail("email_taken")
      const passwordHash = yield* passwords.hash(password)
      const userId = Ids.make("U")
      const token = newUserToken(userId, undefined)
      yield* accounts.signup({ account: { id: userId, email, name, handle: handleFor(name, email), passwordHash }, token: token.row }).pipe(
        Effect.catchTag("EmailTaken", () => fail("email_taken")),
        orDieOnSql
      )
      return { user_id: userId, token: token.secret }
    })

  const login: ApiHandler = (request) =>
    Effect.gen(function*() {
      const email = yield* requireString(request, "email")
      const password = yield* requireString(request, "password")
      const wantedTeam = optionalString(request, "team_id")
      const account = yield* orDieOnSql(accounts.accountByEmail(email.trim()))
      const stored = Option.getOrUndefined(account)?.passwordHash
      // The same work and the same answer whichever of email and password is wrong.
      const verified = stored === undefined ? yield* passwords.verifyNothing(password) : yield* passwords.verify(password, stored)
      if (!verified || Option.isNone(account)) return yield* fail("invalid_auth")
      const userId = account.value.id

      let teamId: string | undefined
      if (wantedTeam !== undefined) {
        if (!Ids.isId("T", wantedTeam) || Option.isNone(yield* orDieOnSql(accounts.workspace(wantedTeam)))) {
          return yield* fail("team_not_found")
        }
        const member = yield* orDieOnSql(accounts.membership(wantedTeam, userId))
        if (Option.isNone(member)) return yield* fail("not_in_team")
        if (member.value.deleted) return yield* fail("account_inactive")
        teamId = wantedTeam
      } else {
        teamId = (yield* orDieOnSql(accounts.workspacesOf(userId)))[0]?.id
      }

      const token = newUserToken(userId, teamId)
      yield* orDieOnSql(accounts.issueToken(token.row))
      // No workspace yet: the token acts in none, like a signup's (it can create one).
      return { user_id: userId, team_id: teamId ?? null, token: token.secret }
    })

  const teamsList: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticate(request.token)
      const workspaces = yield* orDieOnSql(accounts.workspacesOf(principal.userId))
      // A bot lives in its own workspace only.
      const visible = principal.tokenKind === "bot" ? workspaces.filter((w) => w.id === principal.teamId) : workspaces
      return { teams: visible.map(teamSummary), response_metadata: { next_cursor: "" } }
    })

  const test: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticate(request.token)
      const account = yield* orDieOnSql(accounts.accountById(principal.userId))
      const workspace = principal.teamId === undefined
        ? Option.none<Workspace>()
        : yield* orDieOnSql(accounts.workspace(principal.teamId))
      return {
        url: `${config.advertiseUrl}/`,
        ...Option.match(workspace, {
          onNone: () => ({}),
          onSome: (w) => ({ team: w.name, team_id: w.id })
        }),
        user: Option.match(account, { onNone: () => "", onSome: (a) => a.handle }),
        user_id: principal.userId,
        ...(principal.botId === undefined ? {} : { bot_id: principal.botId }),
        is_enterprise_install: false
      }
    })

  const revoke: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticate(request.token)
      if (isTruthy(request.args["test"])) return { revoked: false }
      yield* revocation.revoke(principal.tokenId)
      return { revoked: true }
    })

  return new Map<string, ApiHandler>([
    ["auth.signup", signup],
    ["auth.login", login],
    ["auth.teams.list", teamsList],
    ["auth.test", test],
    ["auth.revoke", revoke]
  ])
})
