// In-process harness for the account, workspace and user method groups: a fresh
// database with the migrations applied, the repository, Auth and cheap password
// hashing, and a `call` that runs a handler and answers the JSON the HTTP layer would.

import { SqlClient } from "@effect/sql"
import { Effect, Exit, Layer, ManagedRuntime, Redacted } from "effect"
import * as Cause from "effect/Cause"
import * as Admin from "../../src/api/admin.ts"
import * as AuthMethods from "../../src/api/auth.ts"
import * as Team from "../../src/api/team.ts"
import * as Users from "../../src/api/users.ts"
import * as AuthLive from "../../src/auth/AuthLive.ts"
import * as Passwords from "../../src/auth/Passwords.ts"
import type { Auth } from "../../src/auth/Principal.ts"
import * as ChorusConfig from "../../src/config/ChorusConfig.ts"
import * as Accounts from "../../src/store/Accounts.ts"
import * as Database from "../../src/store/Database.ts"
import type { ApiHandler } from "../../src/transport/ApiMethod.ts"
import { freshDatabase } from "../support/services.ts"

export type Answer = { readonly ok: boolean; readonly error?: string; readonly [field: string]: any }

export interface Harness {
  readonly runtime: ManagedRuntime.ManagedRuntime<
    Accounts.Accounts | AuthLive.Revocation | Auth | Passwords.Passwords | ChorusConfig.ChorusConfig | SqlClient.SqlClient,
    unknown
  >
  readonly databaseUrl: string
  /** Runs `method` as the HTTP layer would and answers its JSON body. */
  call(method: string, args?: Record<string, unknown>, token?: string): Promise<Answer>
  /** Signs up and answers `{ userId, token }` (a token acting in no workspace). */
  signup(email: string, name?: string, password?: string): Promise<{ userId: string; token: string }>
  /** Signs up and creates a workspace: the owner's workspace token. */
  owner(email: string, domain: string): Promise<{ userId: string; teamId: string; token: string }>
  /** Logs in to `teamId`: a token acting there. */
  login(email: string, teamId?: string, password?: string): Promise<{ userId: string; teamId: string | null; token: string }>
  close(): Promise<void>
}

export const defaultPassword = "correct horse battery"

export async function startHarness(options: { readonly cacheTtl?: number } = {}): Promise<Harness> {
  const db = await freshDatabase({ prefix: "accounts" })
  const sql = Database.layer({ url: Redacted.make(db.url), maxConnections: 4, applicationName: "chorus accounts test" })
  const layer = Layer.mergeAll(
    AuthLive.layer({ cacheTtl: options.cacheTtl ?? 0 }),
    Passwords.layer({ logN: 8 }),
    ChorusConfig.layer({ advertiseUrl: "http://chorus.test" })
  ).pipe(Layer.provideMerge(Accounts.layer), Layer.provideMerge(sql))
  const runtime = ManagedRuntime.make(layer)
  await runtime.runPromise(Database.migrate)
  const groups = await runtime.runPromise(Effect.all([AuthMethods.make, Team.make, Users.make, Admin.make]))
  const methods = new Map<string, ApiHandler>()
  for (const group of groups) for (const [name, handler] of group) methods.set(name, handler)

  const call = async (method: string, args: Record<string, unknown> = {}, token?: string): Promise<Answer> => {
    const handler = methods.get(method)
    if (handler === undefined) return { ok: false, error: "unknown_method" }
    const exit = await Effect.runPromiseExit(handler({ method, requestId: "test", args, token, headers: {} }))
    if (Exit.isSuccess(exit)) return { ok: true, ...exit.value }
    const failure = Cause.failureOption(exit.cause)
    if (failure._tag === "Some") return { ok: false, error: failure.value.code, ...(failure.value.detail ?? {}) }
    throw new Error(`${method} died: ${Cause.pretty(exit.cause)}`)
  }

  const expectOk = (method: string, answer: Answer): Answer => {
    if (!answer.ok) throw new Error(`${method} failed: ${answer.error}`)
    return answer
  }

  const signup: Harness["signup"] = async (email, name = email.split("@")[0] ?? "someone", password = defaultPassword) => {
    const a = expectOk("auth.signup", await call("auth.signup", { email, password, name }))
    return { userId: a.user_id, token: a.token }
  }

  const owner: Harness["owner"] = async (email, domain) => {
    const { userId, token } = await signup(email)
    const a = expectOk("team.create", await call("team.create", { name: `Team ${domain}`, domain }, token))
    return { userId, teamId: a.team.id, token: a.token }
  }

  const login: Harness["login"] = async (email, teamId, password = defaultPassword) => {
    const a = expectOk("auth.login", await call("auth.login", { email, password, ...(teamId === undefined ? {} : { team_id: teamId }) }))
    return { userId: a.user_id, teamId: a.team_id, token: a.token }
  }

  return {
    runtime,
    databaseUrl: db.url,
    call,
    signup,
    owner,
    login,
    async close() {
      await runtime.dispose()
      await db.drop()
    }
  }
}
