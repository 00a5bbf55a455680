// auth.signup, auth.login, auth.teams.list, auth.test, auth.revoke, team.create,
// team.info and admin.users.invite, called in-process against a real PostgreSQL.

import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { defaultPassword, startHarness, type Harness } from "./accountsHarness.ts"

let h: Harness
beforeAll(async () => {
  h = await startHarness()
})
afterAll(async () => {
  await h?.close()
})

describe("auth.signup", () => {
  it("creates an account and a token that acts in no workspace", async () => {
    const a = await h.call("auth.signup", { email: "Ada@Example.com", password: "lovelace1815", name: "Ada Lovelace" })
    expect(a).toMatchObject({ ok: true })
    expect(a.user_id).toMatch(/^U[0-9A-Z]{10}$/)
    expect(a.token).toMatch(/^xoxp-[A-Za-z0-9_-]{43}$/)
    const test = await h.call("auth.test", {}, a.token)
    expect(test).toMatchObject({ ok: true, user_id: a.user_id, user: "ada.lovelace", is_enterprise_install: false })
    expect(test.team_id).toBeUndefined()
    expect(await h.call("auth.teams.list", {}, a.token)).toMatchObject({ ok: true, teams: [] })
    // Workspace methods need a workspace token.
    expect(await h.call("users.list", {}, a.token)).toMatchObject({ ok: false, error: "not_allowed_token_type" })
  })

  it("refuses a taken email, case-insensitively", async () => {
    await h.signup("grace@example.com")
    expect(await h.call("auth.signup", { email: "GRACE@example.COM", password: defaultPassword, name: "Imposter" }))
      .toEqual({ ok: false, error: "email_taken" })
  })

  it("validates email, password and name", async () => {
    const base = { email: "valid@example.com", password: defaultPassword, name: "Valid" }
    for (const email of ["nope", "a@b", "@example.com", "a b@example.com", "a@exa mple.com", `${"x".repeat(65)}@example.com`]) {
      expect(await h.call("auth.signup", { ...base, email })).toMatchObject({ ok: false, error: "invalid_email" })
    }
    expect(await h.call("auth.signup", { ...base, password: "short7!" })).toMatchObject({ ok: false, error: "invalid_password" })
    expect(await h.call("auth.signup", { ...base, password: "x".repeat(1025) })).toMatchObject({ ok: false, error: "invalid_password" })
    expect(await h.call("auth.signup", { ...base, name: "   " })).toMatchObject({ ok: false, error: "invalid_name" })
    expect(await h.call("auth.signup", { ...base, name: "x".repeat(81) })).toMatchObject({ ok: false, error: "invalid_name" })
    expect(await h.call("auth.signup", { ...base, name: "bell\u0007" })).toMatchObject({ ok: false, error: "invalid_name" })
    expect(await h.call("auth.signup", { email: "valid@example.com", password: defaultPassword })).toMatchObject({
      ok: false,
      error: "invalid_arguments"
    })
    // None of the refusals created the account.
    expect(await h.call("auth.signup", base)).toMatchObject({ ok: true })
  })

  it("lets one of two concurrent signups with the same email win", async () => {
    const answers = await Promise.all(
      Array.from({ length: 5 }, (_, i) => h.call("auth.signup", { email: "race@example.com", password: defaultPassword, name: `Racer ${i}` }))
    )
    expect(answers.filter((a) => a.ok)).toHaveLength(1)
    expect(answers.filter((a) => !a.ok).map((a) => a.error)).toEqual(Array(4).fill("email_taken"))
  })
})

describe("team.create and auth.login", () => {
  it("makes the caller owner, with a token acting in the new workspace", async () => {
    const { token, userId } = await h.signup("founder@example.com", "Founder")
    const created = await h.call("team.create", { name: "  Acme   Inc ", domain: "Acme-HQ" }, token)
    expect(created).toMatchObject({ ok: true, team: { name: "Acme Inc", domain: "acme-hq" } })
    expect(created.team.id).toMatch(/^T[0-9A-Z]{10}$/)
    expect(await h.call("auth.test", {}, created.token)).toMatchObject({
      ok: true,
      url: "http://chorus.test/",
      team: "Acme Inc",
      team_id: created.team.id,
      user_id: userId,
      user: "founder"
    })
    expect(await h.call("team.info", {}, created.token)).toMatchObject({
      ok: true,
      team: { id: created.team.id, name: "Acme Inc", domain: "acme-hq", icon: { image_default: true } }
    })
    const me = await h.call("users.info", { user: userId }, created.token)
    expect(me.user).toMatchObject({ is_owner: true, is_primary_owner: true, is_admin: true, is_restricted: false })
    expect(await h.call("auth.teams.list", {}, token)).toEqual({
      ok: true,
      teams: [{ id: created.team.id, name: "Acme Inc", domain: "acme-hq" }],
      response_metadata: { next_cursor: "" }
    })
  })

  it("refuses taken and invalid domains, and bad names", async () => {
    const { token } = await h.signup("domains@example.com")
    expect(await h.call("team.create", { name: "One", domain: "shared" }, token)).toMatchObject({ ok: true })
    expect(await h.call("team.create", { name: "Two", domain: "SHARED" }, token)).toEqual({ ok: false, error: "domain_taken" })
    for (const domain of ["-lead", "trail-", "under_score", "dots.here", "spa ce", "x".repeat(64), "ünï"]) {
      expect(await h.call("team.create", { name: "Bad", domain }, token)).toMatchObject({ ok: false, error: "invalid_domain" })
    }
    expect(await h.call("team.create", { name: "", domain: "fine" }, token)).toMatchObject({ ok: false })
    expect(await h.call("team.create", { name: "\t", domain: "fine" }, token)).toMatchObject({ ok: false, error: "invalid_name" })
    expect(await h.call("team.create", { name: "Fine", domain: "fine" })).toEqual({ ok: false, error: "not_authed" })
  })

  it("gives only one of two concurrent creations of a domain", async () => {
    const { token } = await h.signup("racer-domain@example.com")
    const answers = await Promise.all(Array.from({ length: 4 }, () => h.call("team.create", { name: "Race", domain: "contested" }, token)))
    expect(answers.filter((a) => a.ok)).toHaveLength(1)
    expect(answers.filter((a) => !a.ok).every((a) => a.error === "domain_taken")).toBe(true)
  })

  it("logs in to the first workspace, or the one asked for", async () => {
    const { token, userId } = await h.signup("multi@example.com", "Multi")
    const first = await h.call("team.create", { name: "First", domain: "multi-first" }, token)
    const second = await h.call("team.create", { name: "Second", domain: "multi-second" }, token)
    const noTeam = await h.login("multi@example.com")
    expect(noTeam).toMatchObject({ userId, teamId: first.team.id })
    expect(await h.call("auth.test", {}, noTeam.token)).toMatchObject({ team_id: first.team.id })
    const chosen = await h.login("MULTI@example.com", second.team.id)
    expect(chosen.teamId).toBe(second.team.id)
    expect(await h.call("auth.test", {}, chosen.token)).toMatchObject({ team_id: second.team.id, user_id: userId })
    const teams = await h.call("auth.teams.list", {}, chosen.token)
    expect(teams.teams.map((t: { id: string }) => t.id)).toEqual([first.team.id, second.team.id])
  })

  it("logs in without a workspace when the account has none", async () => {
    const { userId } = await h.signup("loner@example.com")
    const a = await h.call("auth.login", { email: "loner@example.com", password: defaultPassword })
    expect(a).toMatchObject({ ok: true, user_id: userId, team_id: null })
    expect(await h.call("team.create", { name: "Later", domain: "loner-later" }, a.token)).toMatchObject({ ok: true })
  })

  it("answers invalid_auth alike for an unknown email and a wrong password", async () => {
    await h.signup("careful@example.com")
    expect(await h.call("auth.login", { email: "careful@example.com", password: "wrong password" })).toEqual({ ok: false, error: "invalid_auth" })
    expect(await h.call("auth.login", { email: "nobody@example.com", password: defaultPassword })).toEqual({ ok: false, error: "invalid_auth" })
    expect(await h.call("auth.login", { email: "careful@example.com" })).toMatchObject({ ok: false, error: "invalid_arguments" })
  })

  it("refuses a workspace that does not exist or that the account is not in", async () => {
    const other = await h.owner("other-owner@example.com", "other-place")
    await h.signup("outsider@example.com")
    const login = (team_id: string) => h.call("auth.login", { email: "outsider@example.com", password: defaultPassword, team_id })
    expect(await login("TNOSUCHTEAM")).toEqual({ ok: false, error: "team_not_found" })
    expect(await login("not-an-id")).toEqual({ ok: false, error: "team_not_found" })
    expect(await login(other.teamId)).toEqual({ ok: false, error: "not_in_team" })
  })
})

describe("tokens", () => {
  it("auth.revoke makes a token answer token_revoked, and leaves the others alone", async () => {
    const { token } = await h.signup("revoker@example.com")
    const other = await h.login("revoker@example.com")
    expect(await h.call("auth.revoke", { test: "true" }, token)).toEqual({ ok: true, revoked: false })
    expect(await h.call("auth.test", {}, token)).toMatchObject({ ok: true })
    expect(await h.call("auth.revoke", {}, token)).toEqual({ ok: true, revoked: true })
    expect(await h.call("auth.test", {}, token)).toEqual({ ok: false, error: "token_revoked" })
    expect(await h.call("auth.revoke", {}, token)).toEqual({ ok: false, error: "token_revoked" })
    expect(await h.call("auth.test", {}, other.token)).toMatchObject({ ok: true })
  })

  it("answers not_authed without a token and invalid_auth for an unknown one", async () => {
    expect(await h.call("auth.test", {})).toEqual({ ok: false, error: "not_authed" })
    expect(await h.call("auth.test", {}, "")).toEqual({ ok: false, error: "not_authed" })
    expect(await h.call("auth.test", {}, "xoxp-garbage")).toEqual({ ok: false, error: "invalid_auth" })
    expect(await h.call("auth.test", {}, `xoxp-${"A".repeat(43)}`)).toEqual({ ok: false, error: "invalid_auth" })
    expect(await h.call("users.list", {}, `xoxb-${"A".repeat(43)}`)).toEqual({ ok: false, error: "invalid_auth" })
  })
})

describe("admin.users.invite", () => {
  it("adds an existing account at once, with the role asked for", async () => {
    const acme = await h.owner("owner@acme.test", "acme")
    const bob = await h.signup("bob@acme.test", "Bob")
    expect(await h.call("admin.users.invite", { email: "BOB@acme.test" }, acme.token)).toEqual({ ok: true, user_id: bob.userId })
    const bobHere = await h.login("bob@acme.test", acme.teamId)
    expect(await h.call("auth.test", {}, bobHere.token)).toMatchObject({ ok: true, team_id: acme.teamId })
    expect((await h.call("users.info", { user: bob.userId }, acme.token)).user).toMatchObject({
      is_admin: false,
      is_owner: false,
      is_restricted: false
    })
    expect(await h.call("admin.users.invite", { email: "bob@acme.test" }, acme.token)).toEqual({ ok: false, error: "already_in_team" })
  })

  it("records an invite that the email's signup honours, with the invited role", async () => {
    const globex = await h.owner("owner@globex.test", "globex")
    expect(await h.call("admin.users.invite", { email: "Guest@Globex.test", role: "guest" }, globex.token)).toEqual({ ok: true, invited: true })
    // Inviting again updates the pending invite rather than failing.
    expect(await h.call("admin.users.invite", { email: "guest@globex.test", is_restricted: "true" }, globex.token)).toEqual({
      ok: true,
      invited: true
    })
    expect(await h.call("admin.users.invite", { email: "newadmin@globex.test", role: "admin" }, globex.token)).toEqual({ ok: true, invited: true })
    const guest = await h.signup("guest@globex.test", "Gus Guest")
    const admin = await h.signup("newadmin@globex.test", "Ada Admin")
    // The signup token acts in no workspace; a login acts in the invited one.
    const guestLogin = await h.login("guest@globex.test")
    expect(guestLogin.teamId).toBe(globex.teamId)
    const users = await h.call("users.list", {}, guestLogin.token)
    const byId = new Map(users.members.map((m: { id: string }) => [m.id, m]))
    expect(byId.get(guest.userId)).toMatchObject({ is_restricted: true, is_admin: false })
    expect(byId.get(admin.userId)).toMatchObject({ is_restricted: false, is_admin: true, is_owner: false })
    expect(byId.get(globex.userId)).toMatchObject({ is_owner: true })
    // Consumed: inviting them again finds them in the team.
    expect(await h.call("admin.users.invite", { email: "guest@globex.test" }, globex.token)).toEqual({ ok: false, error: "already_in_team" })
  })

  it("lets owners and admins invite, only owners invite admins, and refuses members and guests", async () => {
    const initech = await h.owner("owner@initech.test", "initech")
    for (const [email, role] of [["admin@initech.test", "admin"], ["member@initech.test", "member"], ["guest@initech.test", "guest"]] as const) {
      await h.signup(email)
      expect(await h.call("admin.users.invite", { email, role }, initech.token)).toMatchObject({ ok: true })
    }
    const admin = await h.login("admin@initech.test", initech.teamId)
    const member = await h.login("member@initech.test", initech.teamId)
    const guest = await h.login("guest@initech.test", initech.teamId)

    expect(await h.call("admin.users.invite", { email: "a1@initech.test" }, admin.token)).toEqual({ ok: true, invited: true })
    expect(await h.call("admin.users.invite", { email: "a2@initech.test", role: "guest" }, admin.token)).toEqual({ ok: true, invited: true })
    expect(await h.call("admin.users.invite", { email: "a3@initech.test", role: "admin" }, admin.token)).toMatchObject({
      ok: false,
      error: "not_allowed"
    })
    expect(await h.call("admin.users.invite", { email: "a4@initech.test", role: "admin" }, initech.token)).toEqual({ ok: true, invited: true })
    expect(await h.call("admin.users.invite", { email: "m1@initech.test" }, member.token)).toEqual({ ok: false, error: "not_an_admin" })
    expect(await h.call("admin.users.invite", { email: "g1@initech.test" }, guest.token)).toEqual({ ok: false, error: "not_an_admin" })
    // Bad arguments are reported to admins only.
    expect(await h.call("admin.users.invite", { email: "not-an-email" }, member.token)).toEqual({ ok: false, error: "not_an_admin" })
    expect(await h.call("admin.users.invite", { email: "not-an-email" }, admin.token)).toMatchObject({ ok: false, error: "invalid_email" })
    expect(await h.call("admin.users.invite", { email: "x@initech.test", role: "owner" }, initech.token)).toMatchObject({
      ok: false,
      error: "invalid_role"
    })
    expect(await h.call("admin.users.invite", { email: "x@initech.test", team_id: "TOTHERTEAM" }, initech.token)).toEqual({
      ok: false,
      error: "team_not_found"
    })
    // A token acting in no workspace cannot invite.
    const fresh = await h.signup("fresh@initech.test")
    expect(await h.call("admin.users.invite", { email: "y@initech.test" }, fresh.token)).toEqual({ ok: false, error: "not_allowed_token_type" })
  })
})

describe("team.info", () => {
  it("answers team_not_found for a workspace the caller is not in, and the other workspace for one it is in", async () => {
    const a = await h.owner("owner@info-a.test", "info-a")
    const b = await h.owner("owner@info-b.test", "info-b")
    expect(await h.call("team.info", { team: b.teamId }, a.token)).toEqual({ ok: false, error: "team_not_found" })
    expect(await h.call("team.info", { team: "TNOSUCHTEAM" }, a.token)).toEqual({ ok: false, error: "team_not_found" })
    expect(await h.call("admin.users.invite", { email: "owner@info-a.test" }, b.token)).toMatchObject({ ok: true })
    expect(await h.call("team.info", { team: b.teamId }, a.token)).toMatchObject({ ok: true, team: { id: b.teamId, domain: "info-b" } })
  })
})
