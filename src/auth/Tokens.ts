/**
 * API tokens: `xoxp-` (user) or `xoxb-` (bot) followed by 32 random bytes in base64url.
 * The secret is shown once, when issued; the store keeps only its SHA-256, so a leaked
 * database holds no usable token. Pure functions, no I/O.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto"

export type TokenKind = "user" | "bot"

const prefixes: Record<TokenKind, string> = { user: "xoxp-", bot: "xoxb-" }

/** 32 random bytes encode to 43 base64url characters. */
const secretPattern = /^xox[pb]-[A-Za-z0-9_-]{43}$/

export interface IssuedToken {
  /** Stable id of the token row (logs, revocation, rate limits); never the secret. */
  readonly id: string
  /** What the caller presents; returned once and never stored. */
  readonly secret: string
  /** SHA-256 of the secret: what the store keeps and looks up by. */
  readonly hash: Buffer
  readonly kind: TokenKind
}

export const hash = (secret: string): Buffer => createHash("sha256").update(secret, "utf8").digest()

export const generate = (kind: TokenKind): IssuedToken => {
  const secret = prefixes[kind] + randomBytes(32).toString("base64url")
  return { id: randomUUID(), secret, hash: hash(secret), kind }
}

/** Whether `value` has the shape of a token we issue; anything else is `invalid_auth` without a lookup. */
export const isWellFormed = (value: string): boolean => secretPattern.test(value)

