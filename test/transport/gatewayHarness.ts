// An in-process gateway "node" for tests: the real HTTP server (Web API + `/ws`), the
// real gateway over real NATS and PostgreSQL, and no actor host. Channel events are
// produced by the test itself, as the channel actor would: `commit` writes the next
// seq to channel_events (and channels.last_seq), `publish` puts the bytes on NATS —
// separately, so a test can lose, repeat or reorder publications. Message frames go
// to a stand-in ShardingClient that plays the channel actor's PostMessage.

import { NodeHttpServer } from "@effect/platform-node"
import { SqlClient } from "@effect/sql"
import { Duration, Effect, Exit, Layer, ManagedRuntime, Redacted } from "effect"
import WebSocket from "ws"
import { ChannelError } from "../../src/actors/ChannelProtocol.ts"
import * as AuthMethods from "../../src/api/auth.ts"
import * as RtmMethods from "../../src/api/rtm.ts"
import * as TeamMethods from "../../src/api/team.ts"
import * as AuthLive from "../../src/auth/AuthLive.ts"
import * as Passwords from "../../src/auth/Passwords.ts"
import * as ChorusConfig from "../../src/config/ChorusConfig.ts"
import * as ChannelEvents from "../../src/domain/ChannelEvents.ts"
import * as Ids from "../../src/domain/Ids.ts"
import * as RuntimeMetrics from "../../src/runtime/RuntimeMetrics.ts"
import { ShardingClient, type ShardingClientShape } from "../../src/runtime/ShardingClient.ts"
import * as Accounts from "../../src/store/Accounts.ts"
import * as Database from "../../src/store/Database.ts"
import { ApiMethods, type ApiHandler } from "../../src/transport/ApiMethod.ts"
import * as Gateway from "../../src/transport/Gateway.ts"
import * as GatewayTickets from "../../src/transport/GatewayTickets.ts"
import * as HttpApi from "../../src/transport/HttpApi.ts"
import * as Nats from "../../src/transport/Nats.ts"
import { deleteNatsFootprint, freePort, natsUrl, sleep } from "../support/index.ts"

export type Json = Record<string, any>

export interface GatewayNode {
  readonly url: string
  readonly port: number
  readonly cluster: string
  readonly runtime: ManagedRuntime.ManagedRuntime<any, unknown>
  /** A ticket for `user` in `team`, as `rtm.connect` would issue. */
  ticket(user: string, team: string): Promise<string>
  /** Opens a socket with a fresh ticket and waits for `hello`. */
  connect(user: string, team: string, opts?: { readonly resume?: boolean }): Promise<TestSocket>
  /** Runs SQL on the node's database. */
  sql<A extends object = Json>(f: (sql: SqlClient.SqlClient) => Effect.Effect<ReadonlyArray<A>, unknown>): Promise<ReadonlyArray<A>>
  /** A channel row (public unless `isPrivate`). */
  createChannel(team: string, opts?: { readonly isPrivate?: boolean; readonly id?: string }): Promise<string>
  /** Appends the channel's next event (as the actor commits it) and returns it with its seq. */
  commit(channel: string, fields: Json): Promise<Json>
  /** Publishes an event's JSON on the channel's subject (as the actor does after commit). */
  publish(event: Json): Promise<void>
  publishUser(user: string, event: Json): Promise<void>
  /** Commit and publish `member_joined_channel`, add the member row, notify the user (`channel_joined`). */
  join(channel: string, user: string, opts?: { readonly notify?: boolean; readonly publish?: boolean }): Promise<number>
  /** Commit and publish `member_left_channel`, drop the member row, notify the user (`channel_left`). */
  leave(channel: string, user: string, opts?: { readonly notify?: boolean; readonly publish?: boolean }): Promise<number>
  /** `n` message events, committed and published one by one. */
  say(channel: string, user: string, n: number, text?: string): Promise<ReadonlyArray<Json>>
  feeds(): Promise<number>
  feed(channel: string): Promise<{ readonly sockets: number; readonly lastSeq: number | undefined } | undefined>
  metrics(): Promise<string>
  close(): Promise<void>
}

/** The stand-in channel actor for `PostMessage` (and `PostMessages`, post by post): members only, idempotent on client_msg_id. */
const fakeActor = (commit: GatewayNode["commit"], publish: GatewayNode["publish"], sql: GatewayNode["sql"]): ShardingClientShape => {
  const postOne = async (channel: string, message: any): Promise<Exit.Exit<Json, ChannelError>> => {
    const member = await sql((s) => s`SELECT 1 AS one FROM channel_members WHERE channel_id = ${channel} AND user_id = ${message.user}`)
    if (member.length === 0) return Exit.fail(new ChannelError({ code: "channel_not_found" }))
    if (message.client_msg_id !== undefined) {
      const prior = await sql((s) => s`
        SELECT event FROM channel_events WHERE channel_id = ${channel} AND event->>'client_msg_id' = ${message.client_msg_id}`)
      if (prior[0] !== undefined) {
        const event = prior[0]["event"] as Json
        return Exit.succeed({ ts: event["ts"], seq: event["seq"], message: event })
      }
    }
    const ts = `${Math.floor(Date.now() / 1000)}.${String(Math.floor(Math.random() * 1e6)).padStart(6, "0")}`
    const event = await commit(channel, {
      type: "message",
      user: message.user,
      text: message.text,
      ts,
      ...(message.client_msg_id === undefined ? {} : { client_msg_id: message.client_msg_id })
    })
    await publish(event)
    return Exit.succeed({ ts, seq: event["seq"], message: event })
  }
  return {
    send: ((_entity: unknown, channel: string, message: any) =>
      Effect.promise(async () => {
        if (message._tag === "PostMessage") return postOne(channel, message)
        if (message._tag !== "PostMessages") throw new Error(`unexpected ${message._tag}`)
        const answers: Array<Json> = []
        for (const post of message.posts) {
          const exit = await postOne(channel, post)
          answers.push(Exit.isSuccess(exit) ? { ok: true, ts: exit.value["ts"], seq: exit.value["seq"] } : { ok: false, error: "channel_not_found" })
        }
        return Exit.succeed(answers)
      }).pipe(Effect.flatten)) as unknown as ShardingClientShape["send"],
    tell: (() => Effect.die("tell is not used by the gateway")) as ShardingClientShape["tell"],
    shardOf: () => 0
  }
}

export interface StartOptions {
  readonly databaseUrl: string
  /** Share a cluster namespace with another node (default: a fresh one). */
  readonly cluster: string
  readonly gateway?: Partial<Gateway.GatewayOptions>
  readonly ticketTtl?: Duration.DurationInput
  /** Default: the shared test NATS. */
  readonly natsUrl?: string
}

export async function startGatewayNode(options: StartOptions): Promise<GatewayNode> {
  const port = await freePort()
  const nats_ = options.natsUrl ?? natsUrl()
  const url = `http://127.0.0.1:${port}`
  const config = ChorusConfig.layer({
    cluster: options.cluster,
    natsUrl: nats_,
    databaseUrl: Redacted.make(options.databaseUrl),
    port,
    advertiseUrl: url,
    nodeId: `gw-${port}`
  })
  const infra = Layer.mergeAll(
    Nats.layer({ servers: nats_, cluster: options.cluster, name: `gateway-test-${port}`, provision: true }),
    Database.layer({ url: Redacted.make(options.databaseUrl), maxConnections: 4, applicationName: "gateway test" }),
    RuntimeMetrics.layer(`gw-${port}`)
  ).pipe(Layer.provideMerge(config))
  const base = ManagedRuntime.make(infra)
  await base.runPromise(Database.migrate)

  const sql: GatewayNode["sql"] = (f) =>
    base.runPromise(Effect.flatMap(SqlClient.SqlClient, (s) => f(s)) as Effect.Effect<ReadonlyArray<any>, unknown, SqlClient.SqlClient>)

  const commit: GatewayNode["commit"] = async (channel, fields) => {
    const rows = await base.runPromise(
      Effect.flatMap(SqlClient.SqlClient, (s) =>
        s.withTransaction(Effect.gen(function*() {
          const [row] = yield* s<{ last_seq: number }>`UPDATE channels SET last_seq = last_seq + 1 WHERE id = ${channel} RETURNING last_seq`
          if (row === undefined) return yield* Effect.die(new Error(`no channel ${channel}`))
          const seq = row.last_seq
          const event = { ...fields, channel, seq, event_ts: fields["ts"] ?? `${Math.floor(Date.now() / 1000)}.${String(seq).padStart(6, "0")}` }
          yield* s`INSERT INTO channel_events (channel_id, seq, type, event, created_at)
                   VALUES (${channel}, ${seq}, ${String(fields["type"])}, ${JSON.stringify(event)}::jsonb, ${Date.now()})`
          return [event]
        }))
      )
    )
    return rows[0] as Json
  }

  const nats = await base.runPromise(Nats.Nats)
  const publish: GatewayNode["publish"] = async (event) => {
    nats.nc.publish(ChannelEvents.channelSubject(nats.names, event["channel"]), JSON.stringify(event))
    await nats.nc.flush()
  }
  const publishUser: GatewayNode["publishUser"] = async (user, event) => {
    nats.nc.publish(ChannelEvents.userSubject(nats.names, user), JSON.stringify({ ...event, user }))
    await nats.nc.flush()
  }

  const server = Gateway.createHttpServer()
  const methods = Layer.effect(
    ApiMethods,
    Effect.map(Effect.all([AuthMethods.make, TeamMethods.make, RtmMethods.make]), (groups) => {
      const m = new Map<string, ApiHandler>()
      for (const group of groups) for (const [name, handler] of group) m.set(name, handler)
      return { methods: m }
    })
  ).pipe(Layer.provide(Layer.merge(AuthLive.layer({ cacheTtl: 0 }).pipe(Layer.provideMerge(Accounts.layer)), Passwords.layer({ logN: 8 }))))
  const tickets = GatewayTickets.layer(options.ticketTtl === undefined ? {} : { ttl: options.ticketTtl })
  const http = Layer.mergeAll(HttpApi.layer.pipe(Layer.provide(methods)), Gateway.layer(server, options.gateway ?? {})).pipe(
    Layer.provide(NodeHttpServer.layer(() => server, { port, host: "127.0.0.1" })),
    Layer.provideMerge(tickets),
    Layer.provideMerge(Layer.succeed(ShardingClient, fakeActor(commit, publish, sql))),
    Layer.provideMerge(Layer.succeed(Nats.Nats, nats)),
    Layer.provideMerge(Layer.succeed(SqlClient.SqlClient, await base.runPromise(SqlClient.SqlClient))),
    Layer.provideMerge(Layer.succeed(RuntimeMetrics.RuntimeMetrics, await base.runPromise(RuntimeMetrics.RuntimeMetrics))),
    Layer.provideMerge(config)
  )
  const runtime = ManagedRuntime.make(http)
  await runtime.runPromise(Effect.void)

  const ticket: GatewayNode["ticket"] = (user, team) =>
    runtime.runPromise(Effect.flatMap(GatewayTickets.GatewayTickets, (t) => t.issue({ userId: user, teamId: team, tokenId: "test" })))

  const createChannel: GatewayNode["createChannel"] = async (team, opts = {}) => {
    const id = opts.id ?? Ids.make("C")
    await sql((s) => s`
      INSERT INTO channels (id, team_id, name, is_private, creator, created_at)
      VALUES (${id}, ${team}, ${id.toLowerCase()}, ${opts.isPrivate ?? false}, ${"USYSTEM"}, ${Date.now()})`)
    return id
  }

  const join: GatewayNode["join"] = async (channel, user, opts = {}) => {
    const event = await commit(channel, { type: "member_joined_channel", user })
    await sql((s) => s`INSERT INTO channel_members (channel_id, user_id, joined_seq) VALUES (${channel}, ${user}, ${event["seq"]})
                       ON CONFLICT (channel_id, user_id) DO UPDATE SET joined_seq = EXCLUDED.joined_seq`)
    if (opts.publish ?? true) await publish(event)
    if (opts.notify ?? true) await publishUser(user, { type: "channel_joined", channel: { id: channel }, channel_id: channel, seq: event["seq"] })
    return event["seq"] as number
  }

  const leave: GatewayNode["leave"] = async (channel, user, opts = {}) => {
    const event = await commit(channel, { type: "member_left_channel", user })
    await sql((s) => s`DELETE FROM channel_members WHERE channel_id = ${channel} AND user_id = ${user}`)
    if (opts.publish ?? true) await publish(event)
    if (opts.notify ?? true) await publishUser(user, { type: "channel_left", channel, channel_id: channel, seq: event["seq"] })
    return event["seq"] as number
  }

  const say: GatewayNode["say"] = async (channel, user, n, text = "hello") => {
    const out: Json[] = []
    for (let i = 0; i < n; i++) {
      const event = await commit(channel, { type: "message", user, text: `${text} ${i}` })
      await publish(event)
      out.push(event)
    }
    return out
  }

  const node: GatewayNode = {
    url,
    port,
    cluster: options.cluster,
    runtime: runtime as ManagedRuntime.ManagedRuntime<any, unknown>,
    ticket,
    async connect(user, team, opts = {}) {
      const t = await ticket(user, team)
      const socket = await TestSocket.open(`ws://127.0.0.1:${port}/ws?ticket=${t}${opts.resume === true ? "&resume=1" : ""}`)
      await socket.next((f) => f.type === "hello")
      return socket
    },
    sql,
    createChannel,
    commit,
    publish,
    publishUser,
    join,
    leave,
    say,
    feeds: () => runtime.runPromise(Effect.flatMap(Gateway.Gateway, (g) => g.feeds)),
    feed: (channel) => runtime.runPromise(Effect.flatMap(Gateway.Gateway, (g) => g.feed(channel))),
    metrics: () => base.runPromise(RuntimeMetrics.render),
    async close() {
      await runtime.dispose()
      await base.dispose()
    }
  }
  return node
}

/** Deletes a test cluster's streams and KV buckets (JetStream reserves their max bytes). */
export const dropCluster = (cluster: string, url = natsUrl()): Promise<void> => deleteNatsFootprint(url, cluster)

/** Per-user events: they carry the channel's seq at that moment but are not channel events. */
const userEventTypes = new Set(["channel_joined", "channel_left", "group_joined", "group_left", "im_created"])

/** A plain `ws` client that records every frame. */
export class TestSocket {
  readonly frames: Json[] = []
  readonly raw: string[] = []
  closeInfo: { code: number; reason: string } | undefined
  private readonly waiters = new Set<() => void>()
  readonly closed: Promise<{ code: number; reason: string }>
  private nextId = 1

  private constructor(readonly ws: WebSocket) {
    ws.on("message", (data, isBinary) => {
      const text = data.toString()
      this.raw.push(isBinary ? `<binary>${text}` : text)
      this.frames.push(JSON.parse(text) as Json)
      this.wake()
    })
    this.closed = new Promise((resolve) => {
      ws.on("close", (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() }
        resolve(this.closeInfo)
        this.wake()
      })
    })
    ws.on("error", () => undefined)
  }

  static open(url: string): Promise<TestSocket> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url)
      const socket = new TestSocket(ws)
      ws.once("open", () => resolve(socket))
      ws.once("unexpected-response", (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)))
      ws.once("error", reject)
    })
  }

  private wake() {
    for (const w of [...this.waiters]) w()
  }

  /** Resolves when `check()` holds (re-checked on every frame and on close). */
  until<A>(check: () => A | undefined | false, timeoutMs = 5_000, what = "condition"): Promise<A> {
    return new Promise((resolve, reject) => {
      const attempt = () => {
        const value = check()
        if (value !== undefined && value !== false) {
          this.waiters.delete(attempt)
          clearTimeout(timer)
          resolve(value)
          return true
        }
        return false
      }
      const timer = setTimeout(() => {
        this.waiters.delete(attempt)
        reject(new Error(`timed out waiting for ${what}; frames: ${JSON.stringify(this.frames).slice(-2000)}`))
      }, timeoutMs)
      if (!attempt()) this.waiters.add(attempt)
    })
  }

  /** The first recorded frame matching `p`. */
  next(p: (f: Json) => boolean, timeoutMs?: number): Promise<Json> {
    return this.until(() => this.frames.find(p), timeoutMs, "a matching frame")
  }

  /** Channel events (frames with `seq`) of `channel`, in arrival order. */
  events(channel: string): Json[] {
    return this.frames.filter((f) =>
      f["channel"] === channel && typeof f["seq"] === "number" && f["reply_to"] === undefined && !userEventTypes.has(f["type"])
    )
  }

  seqs(channel: string): number[] {
    return this.events(channel).map((e) => e["seq"] as number)
  }

  /** Waits until the socket has seen `channel` up to `seq`. */
  waitSeq(channel: string, seq: number, timeoutMs?: number): Promise<true> {
    return this.until(() => this.seqs(channel).includes(seq), timeoutMs, `${channel} seq ${seq}`)
  }

  send(frame: Json) {
    this.ws.send(JSON.stringify(frame))
  }

  /** Sends a frame with a fresh id and waits for its reply. */
  async request(frame: Json, timeoutMs?: number): Promise<Json> {
    const id = this.nextId++
    this.send({ id, ...frame })
    return this.next((f) => f["reply_to"] === id && f["type"] !== "pong" || (f["type"] === "pong" && f["reply_to"] === id), timeoutMs)
  }

  close() {
    this.ws.close()
  }
}

export { sleep }
