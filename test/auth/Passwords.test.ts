import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import * as Passwords from "../../src/auth/Passwords.ts"

const run = <A>(f: (p: Passwords.PasswordsShape) => Effect.Effect<A>, options: Partial<Passwords.ScryptParams> = { logN: 8 }) =>
  Effect.runPromise(Effect.flatMap(Passwords.make(options), f))

describe("Passwords", () => {
  it("verifies the right password and refuses a wrong one", async () => {
    await run((p) =>
      Effect.gen(function*() {
        const stored = yield* p.hash("hunter2hunter2")
        expect(yield* p.verify("hunter2hunter2", stored)).toBe(true)
        expect(yield* p.verify("hunter2hunter3", stored)).toBe(false)
        expect(yield* p.verify("", stored)).toBe(false)
      }))
  })

  it("salts every hash and stores the parameters with it", async () => {
    await run((p) =>
      Effect.gen(function*() {
        const a = yield* p.hash("same password")
        const b = yield* p.hash("same password")
        expect(a).not.toBe(b)
        expect(a).toMatch(/^scrypt\$8\$8\$1\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/)
        const parsed = Passwords.parse(a)
        expect(parsed?.salt.length).toBe(16)
        expect(parsed?.key.length).toBe(32)
      }))
  })

  it("verifies a hash made with other parameters (the cost can change later)", async () => {
    const stored = await run((p) => p.hash("older password"), { logN: 9, r: 4, p: 2, keyLength: 48 })
    expect(stored.startsWith("scrypt$9$4$2$")).toBe(true)
    expect(await run((p) => p.verify("older password", stored))).toBe(true)
    expect(await run((p) => p.verify("older passwork", stored))).toBe(false)
  })

  it("normalises Unicode so composed and decomposed forms match", async () => {
    await run((p) =>
      Effect.gen(function*() {
        const stored = yield* p.hash("caf\u00e9 au lait")
        expect(yield* p.verify("cafe\u0301 au lait", stored)).toBe(true)
      }))
  })

  it("refuses malformed stored hashes without throwing", async () => {
    for (const stored of ["", "plain", "scrypt$8$8$1$$", "scrypt$99$8$1$c2FsdA==$a2V5a2V5a2V5a2V5a2V5a2V5", "bcrypt$2b$10$abc$def$ghi"]) {
      expect(Passwords.parse(stored)).toBeUndefined()
      expect(await run((p) => p.verify("anything at all", stored))).toBe(false)
    }
  })

  it("verifyNothing spends a verification and answers false", async () => {
    expect(await run((p) => p.verifyNothing("whatever it is"))).toBe(false)
  })

  it("hashes at the default cost in well under a second", async () => {
    const started = Date.now()
    const stored = await run((p) => p.hash("default cost password"), {})
    expect(stored.startsWith(`scrypt$${Passwords.defaults.logN}$8$1$`)).toBe(true)
    expect(Date.now() - started).toBeLessThan(2_000)
  })
})
