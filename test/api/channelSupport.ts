// Shared setup of the channel/chat/reactions method tests against a real node: a
// workspace with members of each role, bot tokens with chosen scopes (written straight
// to the node's database, as apps.create would), a @slack/web-api client per token,
// and a NATS subscription to a channel's events.

import { jetstreamManager } from "@nats-io/jetstream"
import { connect, type NatsConnection, type Subscription } from "@nats-io/transport-node"
import { WebClient } from "@slack/web-api"
import pg from "pg"
import * as Tokens from "../../src/auth/Tokens.ts"
import * as Ids from "../../src/domain/Ids.ts"
import { natsUrl, postApi, type ApiResponse, type ChorusCluster } from "../support/index.ts"

export const password = "correct horse battery"

export interface Member {
  readonly userId: string
  readonly token: string
  readonly client: WebClient
}

export interface Workspace {
  readonly teamId: string
  readonly owner: Member
  /** Signs up `name` and invites them with `role` (member by default): a token acting in the workspace. */
  member(name: string, role?: "member" | "guest" | "admin"): Promise<Member>
  /** A bot user with a bot token holding `scopes`. */
  bot(scopes: ReadonlyArray<string>): Promise<Member>
}

export const ok = async (url: string, method: string, args: Record<string, unknown>, token?: string): Promise<ApiResponse & Record<string, any>> => {
  const answer = await postApi(url, method, args, token)
  if (!answer.ok) throw new Error(`${method}: ${JSON.stringify(answer)}`)
  return answer as ApiResponse & Record<string, any>
}

/** A @slack/web-api client for `token` against the node at `url`, with no retries. */
export const slackClient = (url: string, token: string) => new WebClient(token, { slackApiUrl: `${url}/api/`, retryConfig: { retries: 0 } })

let counter = 0

export async function workspace(cluster: ChorusCluster, domain: string): Promise<Workspace> {
  const url = cluster.nodes[0]!.url
  const ownerSignup = await ok(url, "auth.signup", { email: `owner@${domain}.test`, password, name: "Owner" })
  const team = await ok(url, "team.create", { name: `Team ${domain}`, domain }, ownerSignup["token"])
  const owner: Member = { userId: ownerSignup["user_id"], token: team["token"], client: slackClient(url, team["token"]) }
  const teamId = team["team"]["id"] as string
  return {
    teamId,
    owner,
    async member(name, role = "member") {
      const email = `${name}-${++counter}@${domain}.test`
      const signup = await ok(url, "auth.signup", { email, password, name })
      await ok(url, "admin.users.invite", { email, role }, owner.token)
      const login = await ok(url, "auth.login", { email, password, team_id: teamId })
      return { userId: signup["user_id"], token: login["token"], client: slackClient(url, login["token"]) }
    },
    async bot(scopes) {
      const userId = Ids.make("U")
      const botId = Ids.make("B")
      const token = Tokens.generate("bot")
      const db = new pg.Client({ connectionString: cluster.databaseUrl })
      await db.connect()
      try {
        await db.query("INSERT INTO accounts (id, email, name, handle, password_hash) VALUES ($1, NULL, 'Test Bot', 'testbot', NULL)", [userId])
        await db.query("INSERT INTO workspace_members (team_id, user_id, role, is_bot, bot_id) VALUES ($1, $2, 'member', true, $3)", [teamId, userId, botId])
        await db.query(
          "INSERT INTO tokens (id, hash, user_id, team_id, kind, app_id, bot_id, scopes) VALUES ($1, $2, $3, $4, 'bot', $5, $6, $7::text[])",
          [token.id, token.hash, userId, teamId, Ids.make("A"), botId, [...scopes]]
        )
      } finally {
        await db.end()
      }
      return { userId, token: token.secret, client: slackClient(url, token.secret) }
    }
  }
}

/** The Slack error code a @slack/web-api call fails with. */
export async function slackError(call: Promise<unknown>): Promise<string> {
  try {
    const answer = await call
    throw new Error(`expected a Slack error, got ${JSON.stringify(answer)}`)
  } catch (error) {
    const data = (error as { data?: { error?: string } }).data
    if (data?.error === undefined) throw error
    return data.error
  }
}

/** Collects a channel's events from NATS (`<cluster>.evt.ch.<id>`), as gateways would. */
export class EventTap {
  readonly events: Array<Record<string, any>> = []
  private constructor(readonly nc: NatsConnection, readonly sub: Subscription) {}

  static async open(cluster: string, subject: string): Promise<EventTap> {
    const nc = await connect({ servers: natsUrl() })
    const sub = nc.subscribe(`${cluster}.${subject}`)
    const tap = new EventTap(nc, sub)
    void (async () => {
      for await (const m of sub) tap.events.push(JSON.parse(new TextDecoder().decode(m.data)))
    })()
    await nc.flush()
    return tap
  }

  async waitFor(predicate: (events: ReadonlyArray<Record<string, any>>) => boolean, timeoutMs = 5_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (!predicate(this.events)) {
      if (Date.now() > deadline) throw new Error(`timed out; events: ${JSON.stringify(this.events).slice(0, 2000)}`)
      await new Promise((r) => setTimeout(r, 20))
    }
  }

  async close(): Promise<void> {
    this.sub.unsubscribe()
    await this.nc.close()
  }
}

/** Deletes the cluster's JetStream streams and KV buckets (each test cluster has its own). */
export async function dropStreams(cluster: string): Promise<void> {
  const nc = await connect({ servers: natsUrl() })
  try {
    const jsm = await jetstreamManager(nc)
    const prefixes = [`${cluster.toUpperCase()}_`, `KV_${cluster}-`]
    const doomed: Array<string> = []
    for await (const stream of jsm.streams.list()) {
      if (prefixes.some((p) => stream.config.name.startsWith(p))) doomed.push(stream.config.name)
    }
    for (const name of doomed) await jsm.streams.delete(name).catch(() => false)
  } finally {
    await nc.close()
  }
}
