/**
 * Password hashing: scrypt with a random per-password salt, the parameters stored with
 * the hash (`scrypt$<log2 N>$<r>$<p>$<salt>$<key>`, base64), so the cost can be raised
 * later without invalidating what is stored, and a constant-time comparison.
 *
 * scrypt is deliberately slow (about 100 ms at the default cost) and runs on libuv's
 * small thread pool, which file I/O shares: a semaphore bounds how many hashes run at
 * once so a burst of logins cannot starve the rest of the node.
 */
import { Context, Effect, Layer } from "effect"
import { randomBytes, scrypt, timingSafeEqual } from "node:crypto"

export interface ScryptParams {
  /** log2 of the CPU/memory cost N. Default 15 (32 MiB at r = 8). */
  readonly logN: number
  /** Block size. Default 8. */
  readonly r: number
  /** Parallelisation. Default 1. */
  readonly p: number
  /** Derived key bytes. Default 32. */
  readonly keyLength: number
  /** Salt bytes. Default 16. */
  readonly saltLength: number
  /** Hashes computed at once on this node; the rest wait. Default 2. */
  readonly maxConcurrent: number
}

export const defaults: ScryptParams = { logN: 15, r: 8, p: 1, keyLength: 32, saltLength: 16, maxConcurrent: 2 }

export interface PasswordsShape {
  /** A new hash of `password` with a fresh salt, in the stored format. */
  readonly hash: (password: string) => Effect.Effect<string>
  /** Whether `password` matches `stored`; false for a malformed `stored`. */
  readonly verify: (password: string, stored: string) => Effect.Effect<boolean>
  /**
   * Spends the time of one verification and answers false: the unknown-account branch
   * of a login, so timing does not tell which of email and password was wrong.
   */
  readonly verifyNothing: (password: string) => Effect.Effect<false>
}

export class Passwords extends Context.Tag("chorus/auth/Passwords")<Passwords, PasswordsShape>() {}

interface Parsed {
  readonly logN: number
  readonly r: number
  readonly p: number
  readonly salt: Buffer
  readonly key: Buffer
}

/** Parses the stored format; undefined when it is not one this module wrote. */
export const parse = (stored: string): Parsed | undefined => {
  const parts = stored.split("$")
  if (parts.length !== 6 || parts[0] !== "scrypt") return undefined
  const [logN, r, p] = [Number(parts[1]), Number(parts[2]), Number(parts[3])]
  // Bounds keep a corrupted row from asking for gigabytes.
  if (!Number.isInteger(logN) || logN < 1 || logN > 22) return undefined
  if (!Number.isInteger(r) || r < 1 || r > 32) return undefined
  if (!Number.isInteger(p) || p < 1 || p > 16) return undefined
  const salt = Buffer.from(parts[4] ?? "", "base64")
  const key = Buffer.from(parts[5] ?? "", "base64")
  if (salt.length === 0 || key.length < 16) return undefined
  return { logN, r, p, salt, key }
}

/** NIST SP 800-63B: normalise before hashing, so the same password typed on two keyboards matches. */
const normalise = (password: string) => Buffer.from(password.normalize("NFKC"), "utf8")

const derive = (password: string, salt: Buffer, logN: number, r: number, p: number, keyLength: number) =>
  Effect.async<Buffer>((resume) => {
    const N = 2 ** logN
    scrypt(normalise(password), salt, keyLength, { N, r, p, maxmem: 256 * N * r + 1_048_576 }, (error, key) => {
      // Parameters are validated before we get here; a failure is a bug or an exhausted machine.
      if (error) resume(Effect.die(error))
      else resume(Effect.succeed(key))
    })
  })

export const make = (options: Partial<ScryptParams> = {}): Effect.Effect<PasswordsShape> =>
  Effect.gen(function*() {
    const params = { ...defaults, ...options }
    const permits = yield* Effect.makeSemaphore(params.maxConcurrent)
    const bounded = permits.withPermits(1)

    const hash = (password: string) =>
      bounded(Effect.gen(function*() {
        const salt = randomBytes(params.saltLength)
        const key = yield* derive(password, salt, params.logN, params.r, params.p, params.keyLength)
        return `scrypt$${params.logN}$${params.r}$${params.p}$${salt.toString("base64")}$${key.toString("base64")}`
      }))

    const verify = (password: string, stored: string) => {
      const parsed = parse(stored)
      if (parsed === undefined) return Effect.succeed(false)
      return bounded(derive(password, parsed.salt, parsed.logN, parsed.r, parsed.p, parsed.key.length)).pipe(
        Effect.map((key) => timingSafeEqual(key, parsed.key))
      )
    }

    const dummySalt = randomBytes(params.saltLength)
    const verifyNothing = (password: string) =>
      bounded(derive(password, dummySalt, params.logN, params.r, params.p, params.keyLength)).pipe(Effect.as(false as const))

    return { hash, verify, verifyNothing }
  })

/** The default cost; tests pass a low `logN` to stay fast. */
export const layer = (options: Partial<ScryptParams> = {}): Layer.Layer<Passwords> => Layer.effect(Passwords, make(options))
