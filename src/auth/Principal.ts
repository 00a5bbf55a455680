/**
 * Who is calling: what a token resolves to. Every chat method starts from a Principal
 * and checks what it may see and do from it (invariant 5: nobody reads or writes a
 * conversation or workspace they are not a member of).
 */
import { Context } from "effect"
import type { Effect } from "effect"
import type { ApiError } from "../transport/ApiMethod.ts"

export type Role = "owner" | "admin" | "member" | "guest"

export interface Principal {
  /** The account (`U…`); for a bot token, the bot's user id. */
  readonly userId: string
  /** The workspace the token acts in; undefined for a fresh signup token. */
  readonly teamId: string | undefined
  /** The account's role in that workspace. */
  readonly role: Role | undefined
  readonly tokenKind: "user" | "bot"
  /** For bot tokens: the bot (`B…`) and app (`A…`) ids. */
  readonly botId: string | undefined
  readonly appId: string | undefined
  /** Granted scopes; user tokens hold every scope (`"all"`). */
  readonly scopes: ReadonlySet<string> | "all"
  /** Stable id of the token row (for revocation and rate limits), never the secret. */
  readonly tokenId: string
}

/** A principal that acts in a workspace. */
export interface WorkspacePrincipal extends Principal {
  readonly teamId: string
  readonly role: Role
}

export interface AuthShape {
  /**
   * Resolves a token: `not_authed` when none was given, `invalid_auth` when unknown,
   * `token_revoked` when revoked, `account_inactive` when the member was removed.
   */
  readonly authenticate: (token: string | undefined) => Effect.Effect<Principal, ApiError>
  /** As `authenticate`, and the token must act in a workspace (else `not_allowed_token_type`). */
  readonly authenticateInWorkspace: (token: string | undefined) => Effect.Effect<WorkspacePrincipal, ApiError>
  /** Fails with `missing_scope` (with `needed` and `provided`) unless the principal holds `scope`. */
  readonly requireScope: (principal: Principal, scope: string) => Effect.Effect<void, ApiError>
}

export class Auth extends Context.Tag("chorus/auth/Auth")<Auth, AuthShape>() {}
