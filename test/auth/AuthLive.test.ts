// Auth over PostgreSQL: error codes, workspace tokens, scopes, and how fast a
// revocation or removal made elsewhere (another node) takes effect through the cache.

import { SqlClient } from "@effect/sql"
import { Effect, Exit } from "effect"
import * as Cause from "effect/Cause"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Revocation } from "../../src/auth/AuthLive.ts"
import { Auth, type Principal } from "../../src/auth/Principal.ts"
import * as Tokens from "../../src/auth/Tokens.ts"
import { Accounts } from "../../src/store/Accounts.ts"
import { startHarness, type Harness } from "../api/accountsHarness.ts"

let h: Harness
beforeAll(async () => {
  h = await startHarness({ cacheTtl: 300 })
})
afterAll(async () => {
  await h?.close()
})

const errorOf = async <A>(effect: Effect.Effect<A, { readonly code: string }, any>): Promise<string> => {
  const exit = await h.runtime.runPromiseExit(effect)
  if (Exit.isSuccess(exit)) return "ok"
  const failure = Cause.failureOption(exit.cause)
  if (failure._tag === "Some") return (failure.value as { readonly code: string }).code
  throw new Error(Cause.pretty(exit.cause))
}

const authenticate = (token: string | undefined) => Effect.flatMap(Auth, (auth) => auth.authenticate(token))
const inWorkspace = (token: string | undefined) => Effect.flatMap(Auth, (auth) => auth.authenticateInWorkspace(token))
/** What another node does: write PostgreSQL, with no say over this node's cache. */
const revokeElsewhere = (tokenId: string) => Effect.flatMap(Accounts, (accounts) => accounts.revokeToken(tokenId))
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

describe("AuthLive", () => {
  it("resolves a workspace token to its principal", async () => {
    const owner = await h.owner("owner@auth.test", "auth-live")
    const p = await h.runtime.runPromise(inWorkspace(owner.token))
    expect(p).toMatchObject({ userId: owner.userId, teamId: owner.teamId, role: "owner", tokenKind: "user", scopes: "all" })
    expect(p.tokenId).not.toContain(owner.token)
  })

  it("needs a workspace for authenticateInWorkspace", async () => {
    const { token } = await h.signup("nowhere@auth.test")
    const p: Principal = await h.runtime.runPromise(authenticate(token))
    expect(p.teamId).toBeUndefined()
    expect(p.role).toBeUndefined()
    expect(await errorOf(inWorkspace(token))).toBe("not_allowed_token_type")
  })

  it("answers not_authed, invalid_auth and token_revoked", async () => {
    expect(await errorOf(authenticate(undefined))).toBe("not_authed")
    expect(await errorOf(authenticate(""))).toBe("not_authed")
    expect(await errorOf(authenticate("nonsense"))).toBe("invalid_auth")
    expect(await errorOf(authenticate(Tokens.generate("user").secret))).toBe("invalid_auth")
    const { token } = await h.signup("revoked@auth.test")
    const p = await h.runtime.runPromise(authenticate(token))
    await h.runtime.runPromise(Effect.flatMap(Revocation, (r) => r.revoke(p.tokenId)))
    // Revoked on this node: at once, cache or not.
    expect(await errorOf(authenticate(token))).toBe("token_revoked")
  })

  it("takes a revocation made on another node into account within the cache TTL", async () => {
    const { token } = await h.signup("elsewhere@auth.test")
    const p = await h.runtime.runPromise(authenticate(token))
    await h.runtime.runPromise(revokeElsewhere(p.tokenId))
    const deadline = Date.now() + 1_000
    let code = await errorOf(authenticate(token))
    while (code === "ok" && Date.now() < deadline) {
      await sleep(50)
      code = await errorOf(authenticate(token))
    }
    expect(code).toBe("token_revoked")
  })

  it("answers account_inactive once the member is removed from the token's workspace", async () => {
    const owner = await h.owner("owner@removal.test", "removal")
    await h.signup("leaver@removal.test")
    expect(await h.call("admin.users.invite", { email: "leaver@removal.test" }, owner.token)).toMatchObject({ ok: true })
    const leaver = await h.login("leaver@removal.test", owner.teamId)
    expect(await errorOf(inWorkspace(leaver.token))).toBe("ok")
    await h.runtime.runPromise(Effect.flatMap(SqlClient.SqlClient, (sql) =>
      sql`UPDATE workspace_members SET deleted = true WHERE team_id = ${owner.teamId} AND user_id = ${leaver.userId}`))
    await sleep(350)
    expect(await errorOf(inWorkspace(leaver.token))).toBe("account_inactive")
    expect(await h.call("auth.login", { email: "leaver@removal.test", password: "correct horse battery", team_id: owner.teamId }))
      .toEqual({ ok: false, error: "account_inactive" })
    // Still listed, as Slack lists deactivated users.
    expect((await h.call("users.info", { user: leaver.userId }, owner.token)).user).toMatchObject({ deleted: true })
    // Inviting again brings them back.
    expect(await h.call("admin.users.invite", { email: "leaver@removal.test" }, owner.token)).toEqual({ ok: true, user_id: leaver.userId })
    await sleep(350)
    expect(await errorOf(inWorkspace(leaver.token))).toBe("ok")
  })

  it("requireScope passes user tokens and checks bot scopes", async () => {
    const owner = await h.owner("owner@scopes.test", "scopes")
    const user = await h.runtime.runPromise(inWorkspace(owner.token))
    const check = (p: Principal, scope: string) => errorOf(Effect.flatMap(Auth, (auth) => auth.requireScope(p, scope)))
    expect(await check(user, "anything:write")).toBe("ok")
    const bot: Principal = { ...user, tokenKind: "bot", botId: "B1", appId: "A1", scopes: new Set(["chat:write"]) }
    expect(await check(bot, "chat:write")).toBe("ok")
    expect(await check(bot, "users:read")).toBe("missing_scope")
  })
})
