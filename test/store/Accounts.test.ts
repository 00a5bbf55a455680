// The accounts repository against PostgreSQL: atomic signup with invites, the
// invite/signup race, uniqueness decided by the database, and token rows.

import { SqlClient } from "@effect/sql"
import { Effect, Option } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Tokens from "../../src/auth/Tokens.ts"
import * as Ids from "../../src/domain/Ids.ts"
import { Accounts, type NewToken } from "../../src/store/Accounts.ts"
import { startHarness, type Harness } from "../api/accountsHarness.ts"

let h: Harness
beforeAll(async () => {
  h = await startHarness()
})
afterAll(async () => {
  await h?.close()
})

const run = <A, E>(f: (a: typeof Accounts.Service) => Effect.Effect<A, E>) => h.runtime.runPromise(Effect.flatMap(Accounts, f))
const runEither = <A, E>(f: (a: typeof Accounts.Service) => Effect.Effect<A, E>) =>
  h.runtime.runPromise(Effect.either(Effect.flatMap(Accounts, f)))

const userToken = (userId: string, teamId?: string): NewToken => {
  const t = Tokens.generate("user")
  return { id: t.id, hash: t.hash, userId, teamId, kind: "user", appId: undefined, botId: undefined, scopes: undefined }
}

const newAccount = (email: string) => {
  const id = Ids.make("U")
  return { account: { id, email, name: email, handle: "h", passwordHash: "scrypt$x" }, token: userToken(id) }
}

const newWorkspace = async (domain: string) => {
  const owner = newAccount(`owner@${domain}.test`)
  await run((a) => a.signup(owner))
  const id = Ids.make("T")
  await run((a) => a.createWorkspace({ workspace: { id, name: domain, domain }, ownerId: owner.account.id, token: userToken(owner.account.id, id) }))
  return { teamId: id, ownerId: owner.account.id }
}

describe("Accounts", () => {
  it("keeps only the hash of a token, and resolves it with the holder's membership", async () => {
    const ws = await newWorkspace("hashes")
    const token = userToken(ws.ownerId, ws.teamId)
    await run((a) => a.issueToken(token))
    const rows = await h.runtime.runPromise(Effect.flatMap(SqlClient.SqlClient, (sql) => sql<{ hash: Buffer }>`SELECT hash FROM tokens WHERE id = ${token.id}`))
    expect(rows[0]?.hash.equals(Buffer.from(token.hash))).toBe(true)
    const stored = await run((a) => a.tokenByHash(token.hash))
    expect(Option.getOrThrow(stored)).toMatchObject({ id: token.id, userId: ws.ownerId, teamId: ws.teamId, role: "owner", revoked: false, memberDeleted: false })
    await run((a) => a.revokeToken(token.id))
    await run((a) => a.revokeToken(token.id))
    expect(Option.getOrThrow(await run((a) => a.tokenByHash(token.hash))).revoked).toBe(true)
    expect(Option.isNone(await run((a) => a.tokenByHash(Tokens.hash("xoxp-unknown"))))).toBe(true)
  })

  it("signup consumes every invite of the email, in every workspace, with its role", async () => {
    const one = await newWorkspace("invites-one")
    const two = await newWorkspace("invites-two")
    expect(await run((a) => a.invite({ teamId: one.teamId, email: "Many@Invites.test", role: "guest", invitedBy: one.ownerId }))).toEqual({ _tag: "Invited" })
    expect(await run((a) => a.invite({ teamId: two.teamId, email: "many@invites.test", role: "admin", invitedBy: two.ownerId }))).toEqual({ _tag: "Invited" })
    const signup = newAccount("MANY@invites.test")
    const result = await run((a) => a.signup(signup))
    expect([...result.joined].sort((x, y) => x.teamId.localeCompare(y.teamId))).toEqual(
      [{ teamId: one.teamId, role: "guest" }, { teamId: two.teamId, role: "admin" }].sort((x, y) => x.teamId.localeCompare(y.teamId))
    )
    const left = await h.runtime.runPromise(Effect.flatMap(SqlClient.SqlClient, (sql) => sql`SELECT 1 FROM invites WHERE email = 'many@invites.test'`))
    expect(left).toHaveLength(0)
    expect(Option.getOrThrow(await run((a) => a.membership(two.teamId, signup.account.id))).role).toBe("admin")
  })

  it("a refused signup leaves no account, token or consumed invite behind", async () => {
    const ws = await newWorkspace("refused")
    await run((a) => a.signup(newAccount("taken@refused.test")))
    const again = newAccount("Taken@Refused.test")
    const result = await runEither((a) => a.signup(again))
    expect(result._tag === "Left" && result.left._tag).toBe("EmailTaken")
    expect(Option.isNone(await run((a) => a.tokenByHash(again.token.hash)))).toBe(true)
    expect(Option.isNone(await run((a) => a.accountById(again.account.id)))).toBe(true)
    expect(Option.isSome(await run((a) => a.membership(ws.teamId, ws.ownerId)))).toBe(true)
  })

  it("never strands an invite racing the same email's signup", async () => {
    const ws = await newWorkspace("race")
    for (let i = 0; i < 20; i++) {
      const email = `racer${i}@race.test`
      const signup = newAccount(email)
      const [, invited] = await Promise.all([
        run((a) => a.signup(signup)),
        runEither((a) => a.invite({ teamId: ws.teamId, email, role: "member", invitedBy: ws.ownerId }))
      ])
      // Either the invite came first (consumed by the signup) or the account did (added at once).
      const member = await run((a) => a.membership(ws.teamId, signup.account.id))
      expect(Option.isSome(member)).toBe(true)
      expect(invited._tag === "Right" || invited.left._tag === "AlreadyInTeam").toBe(true)
    }
    const stranded = await h.runtime.runPromise(Effect.flatMap(SqlClient.SqlClient, (sql) => sql`SELECT email FROM invites WHERE team_id = ${ws.teamId}`))
    expect(stranded).toEqual([])
  })

  it("refuses a taken domain atomically, creating neither member nor token", async () => {
    const ws = await newWorkspace("unique-domain")
    const other = newAccount("other@unique-domain.test")
    await run((a) => a.signup(other))
    const id = Ids.make("T")
    const token = userToken(other.account.id, id)
    const result = await runEither((a) => a.createWorkspace({ workspace: { id, name: "x", domain: "unique-domain" }, ownerId: other.account.id, token }))
    expect(result._tag === "Left" && result.left._tag).toBe("DomainTaken")
    expect(Option.isNone(await run((a) => a.workspace(id)))).toBe(true)
    expect(Option.isNone(await run((a) => a.tokenByHash(token.hash)))).toBe(true)
    expect((await run((a) => a.workspacesOf(other.account.id))).length).toBe(0)
    expect((await run((a) => a.workspacesOf(ws.ownerId))).map((w) => w.id)).toEqual([ws.teamId])
  })

  it("pages users by id and lists removed members as deleted", async () => {
    const ws = await newWorkspace("paging")
    for (let i = 0; i < 6; i++) {
      const acc = newAccount(`p${i}@paging.test`)
      await run((a) => a.signup(acc))
      await run((a) => a.invite({ teamId: ws.teamId, email: acc.account.email, role: "member", invitedBy: ws.ownerId }))
    }
    const all = await run((a) => a.users(ws.teamId, { after: undefined, limit: 100 }))
    expect(all).toHaveLength(7)
    const ids = all.map((u) => u.userId)
    expect(ids).toEqual([...ids].sort())
    const page = await run((a) => a.users(ws.teamId, { after: ids[2], limit: 3 }))
    expect(page.map((u) => u.userId)).toEqual(ids.slice(3, 6))
    const owner = all.find((u) => u.userId === ws.ownerId)
    expect(owner).toMatchObject({ role: "owner", isPrimaryOwner: true, isBot: false, deleted: false })
  })
})
