/**
 * The `Auth` service over the accounts repository: a token is resolved by its SHA-256
 * in one indexed query (token joined with the holder's membership), and the answer is
 * kept in a small in-process cache for at most `cacheTtl` (1 s by default). So a
 * revocation, a removal or a role change made on another node takes effect here within
 * that time; `Revocation.revoke` on this node takes effect at once.
 */
import { Context, Duration, Effect, Layer, Option } from "effect"
import type { SqlClient } from "@effect/sql"
import * as AccountsStore from "../store/Accounts.ts"
import { Accounts } from "../store/Accounts.ts"
import type { StoredToken } from "../store/Accounts.ts"
import { ApiError } from "../transport/ApiMethod.ts"
import * as Passwords from "./Passwords.ts"
import type { AuthShape, Principal, WorkspacePrincipal } from "./Principal.ts"
import { Auth } from "./Principal.ts"
import * as Tokens from "./Tokens.ts"

export interface AuthOptions {
  /** How long a resolved token is trusted without asking PostgreSQL. Default 1 s; zero disables the cache. */
  readonly cacheTtl: Duration.DurationInput
  /** Most tokens cached; the oldest entry goes first. Default 10,000. */
  readonly cacheCapacity: number
}

export const defaults: AuthOptions = { cacheTtl: "1 second", cacheCapacity: 10_000 }

export interface RevocationShape {
  /** Revokes the token for good, and forgets it on this node at once. Idempotent. */
  readonly revoke: (tokenId: string) => Effect.Effect<void>
}

/** Revoking tokens; with `Auth`, because only the cache's owner can forget a token at once. */
export class Revocation extends Context.Tag("chorus/auth/Revocation")<Revocation, RevocationShape>() {}

const fail = (code: string) => Effect.fail(new ApiError({ code }))

/** What a stored token means for its caller, or the Slack error code that refuses it. */
export const principalOf = (token: StoredToken): Principal | string => {
  if (token.revoked) return "token_revoked"
  if (token.teamId !== undefined && (token.role === undefined || token.memberDeleted)) return "account_inactive"
  return {
    userId: token.userId,
    teamId: token.teamId,
    role: token.teamId === undefined ? undefined : token.role,
    tokenKind: token.kind,
    botId: token.botId,
    appId: token.appId,
    scopes: token.scopes === undefined ? "all" : new Set(token.scopes),
    tokenId: token.id
  }
}

interface Entry {
  readonly principal: Principal
  readonly expiresAt: number
}

export const make = (options: Partial<AuthOptions> = {}) =>
  Effect.gen(function*() {
    const accounts = yield* Accounts
    const ttl = Duration.toMillis(options.cacheTtl ?? defaults.cacheTtl)
    const capacity = options.cacheCapacity ?? defaults.cacheCapacity
    // Keyed by the token's hash (base64), so the cache holds no secret.
    const cache = new Map<string, Entry>()
    const keyOf = new Map<string, string>() // token id -> cache key, for revocation

    const remember = (key: string, principal: Principal) => {
      if (ttl <= 0) return
      if (cache.size >= capacity) {
        const oldest = cache.keys().next()
        if (!oldest.done) {
          const entry = cache.get(oldest.value)
          cache.delete(oldest.value)
          if (entry !== undefined) keyOf.delete(entry.principal.tokenId)
        }
      }
      cache.set(key, { principal, expiresAt: Date.now() + ttl })
      keyOf.set(principal.tokenId, key)
    }

    const forget = (tokenId: string) => {
      const key = keyOf.get(tokenId)
      if (key === undefined) return
      keyOf.delete(tokenId)
      cache.delete(key)
    }

    const authenticate: AuthShape["authenticate"] = (token) => {
      if (token === undefined || token.length === 0) return fail("not_authed")
      if (!Tokens.isWellFormed(token)) return fail("invalid_auth")
      const hash = Tokens.hash(token)
      const key = hash.toString("base64")
      const hit = cache.get(key)
      if (hit !== undefined) {
        if (hit.expiresAt > Date.now()) return Effect.succeed(hit.principal)
        cache.delete(key)
        keyOf.delete(hit.principal.tokenId)
      }
      return accounts.tokenByHash(hash).pipe(
        Effect.orDie,
        Effect.flatMap(Option.match({
          onNone: () => fail("invalid_auth"),
          onSome: (stored) => {
            const principal = principalOf(stored)
            if (typeof principal === "string") return fail(principal)
            remember(key, principal)
            return Effect.succeed(principal)
          }
        }))
      )
    }

    const authenticateInWorkspace: AuthShape["authenticateInWorkspace"] = (token) =>
      Effect.flatMap(authenticate(token), (principal) =>
        principal.teamId !== undefined && principal.role !== undefined
          ? Effect.succeed(principal as WorkspacePrincipal)
          : fail("not_allowed_token_type"))

    const requireScope: AuthShape["requireScope"] = (principal, scope) => {
      if (principal.scopes === "all" || principal.scopes.has(scope)) return Effect.void
      return Effect.fail(
        new ApiError({ code: "missing_scope", detail: { needed: scope, provided: [...principal.scopes].join(",") } })
      )
    }

    const revoke: RevocationShape["revoke"] = (tokenId) =>
      accounts.revokeToken(tokenId).pipe(Effect.orDie, Effect.zipRight(Effect.sync(() => forget(tokenId))))

    return {
      auth: { authenticate, authenticateInWorkspace, requireScope } satisfies AuthShape,
      revocation: { revoke } satisfies RevocationShape
    }
  })

/** `Auth` and `Revocation` over the `Accounts` repository. */
export const layer = (options: Partial<AuthOptions> = {}): Layer.Layer<Auth | Revocation, never, Accounts> =>
  Layer.effectContext(
    Effect.map(make(options), ({ auth, revocation }) => Context.make(Auth, auth).pipe(Context.add(Revocation, revocation)))
  )

/**
 * Everything the account, workspace and user methods need, over PostgreSQL: the
 * `Accounts` repository, `Auth` with `Revocation`, and `Passwords` at the default cost.
 */
export const layerPg = (
  options: Partial<AuthOptions> = {}
): Layer.Layer<Auth | Revocation | Accounts | Passwords.Passwords, never, SqlClient.SqlClient> =>
  layer(options).pipe(Layer.provideMerge(AccountsStore.layer), Layer.merge(Passwords.layer()))
