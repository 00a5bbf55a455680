import { describe, expect, it } from "vitest"
import * as Tokens from "../../src/auth/Tokens.ts"

describe("Tokens", () => {
  it("issues xoxp- user and xoxb- bot tokens of 32 random bytes", () => {
    const user = Tokens.generate("user")
    const bot = Tokens.generate("bot")
    expect(user.secret).toMatch(/^xoxp-[A-Za-z0-9_-]{43}$/)
    expect(bot.secret).toMatch(/^xoxb-[A-Za-z0-9_-]{43}$/)
    expect(Buffer.from(user.secret.slice(5), "base64url")).toHaveLength(32)
    expect(Tokens.isWellFormed(user.secret)).toBe(true)
    expect(Tokens.isWellFormed(bot.secret)).toBe(true)
  })

  it("keeps only the SHA-256 of the secret, and an id that is not the secret", () => {
    const t = Tokens.generate("user")
    expect(t.hash).toHaveLength(32)
    expect(t.hash.equals(Tokens.hash(t.secret))).toBe(true)
    expect(t.id).not.toContain(t.secret.slice(5))
  })

  it("never repeats", () => {
    const secrets = new Set(Array.from({ length: 1000 }, () => Tokens.generate("user").secret))
    expect(secrets.size).toBe(1000)
  })

  it("refuses shapes it never issues", () => {
    for (const s of ["", "xoxp-", "xoxa-" + "A".repeat(43), "xoxp-" + "A".repeat(42), "xoxp-" + "A".repeat(44), "xoxp-" + "!".repeat(43), "Bearer xoxp-x"]) {
      expect(Tokens.isWellFormed(s)).toBe(false)
    }
  })
})
