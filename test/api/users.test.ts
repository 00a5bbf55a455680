// users.list, users.info and users.lookupByEmail: Slack's user objects, confined to the
// caller's workspace, with cursor pagination and bot scopes.

import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Tokens from "../../src/auth/Tokens.ts"
import * as Ids from "../../src/domain/Ids.ts"
import { Accounts } from "../../src/store/Accounts.ts"
import { startHarness, type Harness } from "./accountsHarness.ts"

let h: Harness
let north: { userId: string; teamId: string; token: string }
let south: { userId: string; teamId: string; token: string }
const northUsers: string[] = []
/** n5@north.test, a plain member. */
let memberId: string

beforeAll(async () => {
  h = await startHarness()
  north = await h.owner("owner@north.test", "north")
  south = await h.owner("owner@south.test", "south")
  northUsers.push(north.userId)
  for (let i = 0; i < 11; i++) {
    const email = `n${i}@north.test`
    const { userId } = await h.signup(email, `North ${i}`)
    expect(await h.call("admin.users.invite", { email, role: i === 0 ? "guest" : "member" }, north.token)).toMatchObject({ ok: true })
    northUsers.push(userId)
    if (i === 5) memberId = userId
  }
  northUsers.sort()
})
afterAll(async () => {
  await h?.close()
})

/** A bot user in `teamId` and a bot token with `scopes`. */
async function bot(teamId: string, scopes: string[]): Promise<{ userId: string; botId: string; token: string }> {
  const userId = Ids.make("U")
  const botId = Ids.make("B")
  const token = Tokens.generate("bot")
  await h.runtime.runPromise(Effect.gen(function*() {
    const accounts = yield* Accounts
    yield* accounts.addBotUser({ teamId, userId, botId, name: "Helper Bot", handle: "helper" })
    yield* accounts.issueToken({ id: token.id, hash: token.hash, userId, teamId, kind: "bot", appId: Ids.make("A"), botId, scopes })
  }))
  return { userId, botId, token: token.secret }
}

describe("users.list", () => {
  it("pages through the workspace's members in id order with opaque cursors", async () => {
    const seen: string[] = []
    let cursor: string | undefined
    let pages = 0
    do {
      const page = await h.call("users.list", { limit: "5", ...(cursor === undefined ? {} : { cursor }) }, north.token)
      expect(page.ok).toBe(true)
      expect(page.members.length).toBeLessThanOrEqual(5)
      seen.push(...page.members.map((m: { id: string }) => m.id))
      cursor = page.response_metadata.next_cursor || undefined
      pages++
    } while (cursor !== undefined)
    expect(seen).toEqual(northUsers)
    expect(pages).toBe(3)
  })

  it("answers everything in one page without a limit, and an empty next_cursor at the end", async () => {
    const all = await h.call("users.list", {}, north.token)
    expect(all.members.map((m: { id: string }) => m.id)).toEqual(northUsers)
    expect(all.response_metadata).toEqual({ next_cursor: "" })
    expect(typeof all.cache_ts).toBe("number")
    const exact = await h.call("users.list", { limit: 12 }, north.token)
    expect(exact.members).toHaveLength(12)
    expect(exact.response_metadata.next_cursor).toBe("")
  })

  it("never shows another workspace's members", async () => {
    const southList = await h.call("users.list", {}, south.token)
    expect(southList.members.map((m: { id: string }) => m.id)).toEqual([south.userId])
  })

  it("refuses a malformed cursor", async () => {
    expect(await h.call("users.list", { cursor: "bm9wZQ" }, north.token)).toEqual({ ok: false, error: "invalid_cursor" })
    expect(await h.call("users.list", { cursor: "%%%" }, north.token)).toEqual({ ok: false, error: "invalid_cursor" })
    expect(await h.call("users.list", { limit: "ten" }, north.token)).toMatchObject({ ok: false, error: "invalid_arguments" })
  })

  it("works for guests, who see the members and their emails", async () => {
    const guest = await h.login("n0@north.test", north.teamId)
    const list = await h.call("users.list", {}, guest.token)
    expect(list.members).toHaveLength(12)
    const me = list.members.find((m: { id: string }) => m.id === guest.userId)
    expect(me).toMatchObject({ is_restricted: true, profile: { email: "n0@north.test" } })
  })
})

describe("users.info", () => {
  it("answers Slack's user object for a member", async () => {
    const id = memberId
    const info = await h.call("users.info", { user: id }, north.token)
    expect(info).toMatchObject({
      ok: true,
      user: {
        id,
        team_id: north.teamId,
        deleted: false,
        is_bot: false,
        is_admin: false,
        is_owner: false,
        is_restricted: false,
        profile: { team: north.teamId }
      }
    })
    expect(info.user).toMatchObject({ name: "north.5", real_name: "North 5", profile: { email: "n5@north.test", display_name: "North 5" } })
  })

  it("answers user_not_found for users of other workspaces and for nonsense", async () => {
    expect(await h.call("users.info", { user: south.userId }, north.token)).toEqual({ ok: false, error: "user_not_found" })
    expect(await h.call("users.info", { user: north.userId }, south.token)).toEqual({ ok: false, error: "user_not_found" })
    expect(await h.call("users.info", { user: "UNOBODY0000" }, north.token)).toEqual({ ok: false, error: "user_not_found" })
    expect(await h.call("users.info", { user: "' OR 1=1 --" }, north.token)).toEqual({ ok: false, error: "user_not_found" })
    expect(await h.call("users.info", {}, north.token)).toMatchObject({ ok: false, error: "invalid_arguments" })
  })

  it("sees a user who belongs to both workspaces from each, with the role of each", async () => {
    expect(await h.call("admin.users.invite", { email: "owner@south.test", role: "guest" }, north.token)).toEqual({ ok: true, user_id: south.userId })
    const fromNorth = await h.call("users.info", { user: south.userId }, north.token)
    expect(fromNorth.user).toMatchObject({ team_id: north.teamId, is_restricted: true, is_owner: false })
    const fromSouth = await h.call("users.info", { user: south.userId }, south.token)
    expect(fromSouth.user).toMatchObject({ team_id: south.teamId, is_restricted: false, is_owner: true })
  })
})

describe("users.lookupByEmail", () => {
  it("finds a member by email, case-insensitively", async () => {
    const found = await h.call("users.lookupByEmail", { email: "N3@North.TEST" }, north.token)
    expect(found).toMatchObject({ ok: true, user: { team_id: north.teamId, profile: { email: "n3@north.test" } } })
  })

  it("answers users_not_found for an email outside the workspace", async () => {
    expect(await h.call("users.lookupByEmail", { email: "n3@north.test" }, south.token)).toEqual({ ok: false, error: "users_not_found" })
    expect(await h.call("users.lookupByEmail", { email: "ghost@nowhere.test" }, north.token)).toEqual({ ok: false, error: "users_not_found" })
  })
})

describe("bot tokens", () => {
  it("auth.test answers bot_id and the bot's user id", async () => {
    const b = await bot(north.teamId, ["users:read"])
    expect(await h.call("auth.test", {}, b.token)).toMatchObject({
      ok: true,
      user_id: b.userId,
      bot_id: b.botId,
      team_id: north.teamId,
      user: "helper"
    })
    const teams = await h.call("auth.teams.list", {}, b.token)
    expect(teams.teams.map((t: { id: string }) => t.id)).toEqual([north.teamId])
  })

  it("need users:read, and users:read.email for addresses", async () => {
    const reader = await bot(north.teamId, ["users:read"])
    const list = await h.call("users.list", {}, reader.token)
    expect(list.ok).toBe(true)
    expect(list.members.every((m: { profile: { email?: string } }) => m.profile.email === undefined)).toBe(true)
    const self = list.members.find((m: { id: string }) => m.id === reader.userId)
    expect(self).toMatchObject({ is_bot: true, profile: { bot_id: reader.botId } })
    expect(await h.call("users.lookupByEmail", { email: "n1@north.test" }, reader.token)).toEqual({
      ok: false,
      error: "missing_scope",
      needed: "users:read.email",
      provided: "users:read"
    })
    const blind = await bot(north.teamId, ["chat:write"])
    expect(await h.call("users.list", {}, blind.token)).toMatchObject({ ok: false, error: "missing_scope", needed: "users:read" })
    expect(await h.call("team.info", {}, blind.token)).toMatchObject({ ok: false, error: "missing_scope", needed: "team:read" })
    const emails = await bot(north.teamId, ["users:read", "users:read.email"])
    expect(await h.call("users.lookupByEmail", { email: "n1@north.test" }, emails.token)).toMatchObject({ ok: true })
    expect(await h.call("team.create", { name: "Bot Team", domain: "bot-team" }, emails.token)).toEqual({
      ok: false,
      error: "not_allowed_token_type"
    })
    expect(await h.call("admin.users.invite", { email: "z@north.test" }, emails.token)).toEqual({ ok: false, error: "not_allowed_token_type" })
  })
})
