/**
 * The WebSocket gateway (API.md, "WebSocket gateway"; ARCHITECTURE.md, "Transport"):
 * `ws` on the API's port at `/ws`, one socket per `rtm.connect` ticket.
 *
 * Fan-out. This node follows a channel (a "feed") while at least one local socket's
 * user is a member: one NATS subscription to `evt.ch.<channel>` per node, reference
 * counted by the sockets attached to it. An event is parsed once per node (for its
 * `seq`); its original bytes are written to every attached socket. Per feed the node
 * keeps the last seq it processed: a duplicate (seq ≤ last) is dropped, a gap
 * (seq > last + 1) is filled from `channel_events` before the event is delivered, so
 * the feed is gap-free and in order (invariant 2).
 *
 * Per socket and channel (an "attachment") the gateway keeps a cursor: the last seq
 * written to that socket. A live event goes to a socket only when it is exactly the
 * next one (`cursor + 1`); a socket that is behind (it attached mid-stream, resumed
 * from an older seq, or the feed jumped) is caught up from `channel_events`
 * ("replay") with flow control, then follows the feed again. Every path writes only
 * `cursor + 1`, so a socket never sees a duplicate, a gap or a reordering.
 *
 * Membership. A socket learns its channels at connect from `channel_members` (after
 * subscribing to its user's `evt.user.<user>` subject, whose events are held until
 * that read is done, so no change slips between the two). Changes follow at once from
 * two ordered sources: the channel's own `member_joined_channel` / `member_left_channel`
 * events (in seq order with everything else, so nothing after a leave reaches the
 * leaver: invariant 5), and the user's `channel_joined` / `channel_left` / `im_created`
 * events for channels this node does not follow yet. Membership starts at the join
 * event's seq (`channel_members.joined_seq`) and ends at the leave event's seq.
 *
 * Bounds (invariant 6): frames are at most `maxFrameBytes` (`ws` closes with 1009
 * beyond); a socket whose send buffer passes `maxBufferedBytes` is closed (4001, slow
 * consumer), never buffered without limit; at most `maxPendingMessages` message
 * frames wait per socket (`ratelimited` beyond); a feed holds at most
 * `maxFeedBacklog` events while it fills a gap; a socket silent for longer than
 * `idleTimeout` (the presence TTL) is closed (4000). On shutdown every socket gets
 * `{"type":"goodbye"}` and a close (1001) before the HTTP server closes.
 *
 * Limits (when the node has a `RateLimiter`): every frame draws from its socket's
 * bucket before it is even parsed; a refused frame gets a `ratelimited` error, and a
 * socket that keeps flooding is closed (4003). Message frames also draw from the
 * token's per-channel posting bucket, as `chat.postMessage` does, and a message frame
 * that begins with a registered `/command` runs the command (apps/SlashCommands.ts)
 * instead of posting, as `chat.postMessage` does; its reply is the dispatch's answer.
 *
 * Presence and typing (docs/decisions/0014-presence-and-limits.md). When the node has
 * an `EdgePresence`, sockets opening and closing and the user's activity (message,
 * typing, presence_sub, resume frames; not pings) are reported to it, and
 * `presence_sub` subscribes the socket to those users' `presence_change`. `typing`
 * becomes `user_typing` for the channel's other members' sockets (on
 * `<cluster>.eph.ch.<channel>`, never stored): at most one per user and channel per
 * `typingInterval` (this node sends at most that, and each node drops what another
 * node's sockets of the same user repeat within it), and none in channels of more than
 * `typingMaxMembers` members.
 *
 * Mounting. `createHttpServer()` makes the node's `http.Server` with `/ws` upgrades
 * routed to the gateway alone: NodeHttpServer adds an `upgrade` listener of its own,
 * which would answer 404 on a socket `ws` already took (STACK.md).
 */
import { SqlClient } from "@effect/sql"
import type { Subscription } from "@nats-io/transport-node"
import { Context, Duration, Effect, Either, Layer, LogLevel, Option, Runtime, Schedule } from "effect"
import { randomBytes } from "node:crypto"
import * as Http from "node:http"
import type { Duplex } from "node:stream"
import { WebSocketServer } from "ws"
import type { RawData, WebSocket } from "ws"
import type * as P from "../actors/ChannelProtocol.ts"
import { Channel, maxBatchedPosts, PostMessage, PostMessages } from "../actors/ChannelProtocol.ts"
import { SlashCommands } from "../apps/SlashCommands.ts"
import type { WorkspacePrincipal } from "../auth/Principal.ts"
import * as ChannelEvents from "../domain/ChannelEvents.ts"
import type { DeliveryError } from "../runtime/RuntimeErrors.ts"
import { RuntimeMetrics } from "../runtime/RuntimeMetrics.ts"
import { ShardingClient } from "../runtime/ShardingClient.ts"
import type { PresenceSubscriber } from "./EdgePresence.ts"
import { EdgePresence } from "./EdgePresence.ts"
import * as GatewayMetrics from "./GatewayMetrics.ts"
import * as Protocol from "./GatewayProtocol.ts"
import * as WireFrame from "./WireFrame.ts"
import type { TicketClaims } from "./GatewayTickets.ts"
import { GatewayTickets } from "./GatewayTickets.ts"
import { ApiError } from "./ApiMethod.ts"
import { Nats } from "./Nats.ts"
import type { NatsNames } from "./Nats.ts"
import type { SocketLimiter } from "./RateLimiter.ts"
import { RateLimiter } from "./RateLimiter.ts"

// ---- options ------------------------------------------------------------------------

export interface GatewayOptions {
  /** Largest client frame, bytes (`ws` `maxPayload`; a larger frame closes the socket with 1009). Default 64 KiB. */
  readonly maxFrameBytes: number
  /** A socket whose unsent bytes pass this is closed as a slow consumer (4001). Default 1 MiB. */
  readonly maxBufferedBytes: number
  /** A socket with no frame (nor pong) from its client for this long is closed (4000). The presence TTL; default 60 s. */
  readonly idleTimeout: Duration.DurationInput
  /** How long a socket opened with `resume=1` waits for its `resume` frame before streaming anyway. Default 10 s. */
  readonly resumeHoldTimeout: Duration.DurationInput
  /** Message frames of one socket waiting for their turn (they are sent in order); `ratelimited` beyond. Default 64. */
  readonly maxPendingMessages: number
  /** Events one channel feed holds while it fills a gap; past it the feed's sockets are told to resync (4002). Default 10,000. */
  readonly maxFeedBacklog: number
  /** Events read from `channel_events` per query when catching a socket up or filling a gap. Default 256. */
  readonly replayPageSize: number
  /** How long a catching-up socket may stay above half its buffer bound before it counts as a slow consumer. Default 10 s. */
  readonly slowConsumerGrace: Duration.DurationInput
  /** How long closing sockets get on shutdown before they are cut. Default 2 s. */
  readonly closeGrace: Duration.DurationInput
  /** Least time between two `user_typing` of one user for one channel. Default 3 s. */
  readonly typingInterval: Duration.DurationInput
  /** `user_typing` is not fanned out in channels with more members than this. Default 1,000. */
  readonly typingMaxMembers: number
  /**
   * Write coalescing: a socket written to less than this long ago holds its next event
   * frames (up to this long) and writes them together, one system call for several;
   * a quiet socket is written at once, and replies to the client's own frames are
   * never held. 0 writes every frame at once. Default 25 ms.
   */
  readonly coalesceWrites: Duration.DurationInput
  /**
   * The held-frame writes per second the gateway aims at: when more sockets are busy
   * than `coalesceWrites` allows within it, the window widens (up to 4 times
   * `coalesceWrites`), so a big channel's fan-out costs fewer system calls instead of
   * more. Default 10,000.
   */
  readonly flushWritesPerSecond: number
}

export const defaults: GatewayOptions = {
  maxFrameBytes: 64 * 1024,
  maxBufferedBytes: 1024 * 1024,
  idleTimeout: "60 seconds",
  resumeHoldTimeout: "10 seconds",
  maxPendingMessages: 64,
  maxFeedBacklog: 10_000,
  replayPageSize: 256,
  slowConsumerGrace: "10 seconds",
  closeGrace: "2 seconds",
  typingInterval: "3 seconds",
  typingMaxMembers: 1_000,
  coalesceWrites: "25 millis",
  flushWritesPerSecond: 10_000
}

/** The path the gateway serves on the API's port. */
export const path = Protocol.gatewayPath

/** Ephemeral, unsequenced channel traffic (`user_typing`): not `evt.ch.>`, so the EVENTS stream never stores it. */
export const ephemeralSubject = (names: NatsNames, channel: string): string => names.subject(`eph.ch.${channel}`)

// ---- the HTTP server ----------------------------------------------------------------

type UpgradeHandler = (request: Http.IncomingMessage, socket: Duplex, head: Buffer) => void

const upgradeRoutes = new WeakMap<Http.Server, UpgradeHandler>()

const isGatewayRequest = (request: Http.IncomingMessage): boolean => {
  const url = request.url ?? ""
  const q = url.indexOf("?")
  return (q === -1 ? url : url.slice(0, q)) === path
}

const rejectUpgrade = (socket: Duplex, status: number, error: string) => {
  const body = JSON.stringify({ ok: false, error })
  socket.end(
    `HTTP/1.1 ${status} ${Http.STATUS_CODES[status] ?? ""}\r\nConnection: close\r\n` +
      `Content-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
  )
}

/**
 * The node's `http.Server`, for `NodeHttpServer.layer(() => server, …)`: upgrades of
 * `/ws` go to the gateway mounted on it (`layer(server)`) and to no other `upgrade`
 * listener; everything else is the server's as usual. Until a gateway is mounted (and
 * after it is gone), `/ws` upgrades get 503.
 */
export const createHttpServer = (): Http.Server => {
  const server = Http.createServer()
  const emit = server.emit
  server.emit = function(this: Http.Server, event: string | symbol, ...args: Array<unknown>): boolean {
    if (event === "upgrade") {
      const [request, socket, head] = args as [Http.IncomingMessage, Duplex, Buffer]
      if (isGatewayRequest(request)) {
        socket.on("error", () => {
          // A reset before the handshake completes concerns nobody.
        })
        const route = upgradeRoutes.get(server)
        if (route === undefined) rejectUpgrade(socket, 503, "gateway_unavailable")
        else route(request, socket, head)
        return true
      }
    }
    return Reflect.apply(emit, this, [event, ...args]) as boolean
  } as Http.Server["emit"]
  // Node hands an upgrade to `emit` only while someone listens for it; `/ws` must work
  // even before NodeHttpServer adds its listener. Other paths with no other listener: refused.
  server.on("upgrade", (request: Http.IncomingMessage, socket: Duplex) => {
    if (server.listenerCount("upgrade") === 1 && !isGatewayRequest(request)) socket.destroy()
  })
  return server
}

// ---- the service --------------------------------------------------------------------

export interface GatewayShape {
  /** Sockets open on this node. */
  readonly sockets: Effect.Effect<number>
  /** Channels this node follows (one NATS subscription each). */
  readonly feeds: Effect.Effect<number>
  /** Whether this node follows `channel`: the sockets attached and the last seq it processed. */
  readonly feed: (channel: string) => Effect.Effect<{ readonly sockets: number; readonly lastSeq: number | undefined } | undefined>
}

export class Gateway extends Context.Tag("chorus/transport/Gateway")<Gateway, GatewayShape>() {}

type Bytes = Uint8Array | string
type EventObject = Readonly<Record<string, unknown>>

interface Conn {
  readonly id: string
  readonly user: string
  readonly team: string
  readonly ws: WebSocket
  readonly attachments: Map<string, Attachment>
  lastSeen: number
  /** `hello` sent and not holding for a resume: events flow to the socket. */
  live: boolean
  closed: boolean
  /** User events that arrived before the memberships were read; undefined once read. */
  userBacklog: Array<readonly [Bytes, EventObject]> | undefined
  /** Serialises the handling of user events (some need a lookup first). */
  userChain: Promise<void>
  /**
   * Message frames waiting behind the request in flight: a socket has at most one, so
   * its messages are posted in the order sent; what queued meanwhile goes as one batch.
   */
  postQueue: Array<Protocol.MessageFrame>
  posting: boolean
  /** Message frames accepted and not yet answered (queued or in flight). */
  pendingMessages: number
  holdTimer: NodeJS.Timeout | undefined
  /** The token the socket was opened with (its id): per-token limits. */
  readonly tokenId: string
  /** Who opened it, as `rtm.connect` authenticated them (for slash commands); undefined if unknown. */
  readonly principal: WorkspacePrincipal | undefined
  /** This socket's frame bucket. */
  readonly limiter: SocketLimiter | undefined
  /** This socket as a presence subscriber, once it sent `presence_sub`. */
  presence: PresenceSubscriber | undefined
  /** Settles when the connection is set up (memberships read, `hello` sent) or gave up. */
  setup: Promise<void>
  /** When frames were last written out (performance.now()), for write coalescing. */
  lastWrite: number
  /** Wire frames waiting for the next coalescing flush, and their size. */
  held: Array<Buffer>
  heldBytes: number
}

interface Attachment {
  readonly conn: Conn
  readonly feed: Feed
  /** Last seq written to the socket for this channel. */
  cursor: number
  /** The cursor when the live stream started (at attach, or rewound by a resume). */
  start: number
  /** The socket's user is a member from `floor + 1` on: nothing older is ever written. */
  floor: number
  /** The membership ends at this seq (its leave event), inclusive. */
  until: number | undefined
  /** The user joined again at this seq (after `until`): attach anew once this one ends. */
  rejoin: number | undefined
  /** The running catch-up, if any. */
  replay: Promise<void> | undefined
  detached: boolean
}

interface Feed {
  readonly channel: string
  /** The channel's workspace; known once ready. */
  team: string | undefined
  /** Last seq processed by this node for the channel; undefined until the baseline is read. */
  lastSeq: number | undefined
  readonly members: Set<Attachment>
  inbox: Array<Bytes | "sync">
  pumping: boolean
  closed: boolean
  subscriptions: ReadonlyArray<Subscription>
  /** When each user's last `user_typing` was delivered here (drops repeats from their other nodes). */
  readonly typingFrom: Map<string, number>
  readonly ready: Promise<void>
  readonly markReady: () => void
}

interface EventRow {
  readonly seq: number
  readonly event: unknown
}

interface MembershipRow {
  readonly channel_id: string
  readonly joined_seq: number
  readonly last_seq: number
}

const newId = () => randomBytes(6).toString("base64url")

const eventText = (row: EventRow): string => {
  const event: unknown = typeof row.event === "string" ? JSON.parse(row.event) : row.event
  if (typeof event === "object" && event !== null && (event as { seq?: unknown }).seq === row.seq) return JSON.stringify(event)
  return JSON.stringify({ ...(event as object), seq: row.seq })
}

const rawText = (data: RawData): string =>
  Buffer.isBuffer(data) ? data.toString("utf8") : Array.isArray(data) ? Buffer.concat(data).toString("utf8") : Buffer.from(data).toString("utf8")

const isRecord = (value: unknown): value is EventObject => typeof value === "object" && value !== null && !Array.isArray(value)

const joinTypes = new Set(["channel_joined", "group_joined", "im_created", "mpim_joined"])
const leaveTypes = new Set(["channel_left", "group_left"])

/**
 * The user whose membership a channel event ends (their leave or kick): the channel
 * actor emits `member_left_channel` last, with the seq its `channel_left` carries.
 */
const leaverOf = (event: EventObject): string | undefined =>
  event["type"] === "member_left_channel" && typeof event["user"] === "string" ? event["user"] : undefined

export const make = (server: Http.Server, options: Partial<GatewayOptions> = {}) =>
  Effect.gen(function*() {
    const o = { ...defaults, ...options }
    const idleMs = Duration.toMillis(o.idleTimeout)
    const holdMs = Duration.toMillis(o.resumeHoldTimeout)
    const graceMs = Duration.toMillis(o.slowConsumerGrace)
    const closeGraceMs = Duration.toMillis(o.closeGrace)
    const typingMs = Duration.toMillis(o.typingInterval)
    const coalesceMs = Duration.toMillis(o.coalesceWrites)

    const nats = yield* Nats
    const sql = yield* SqlClient.SqlClient
    const client = yield* ShardingClient
    // Apps: a member's message that begins with a registered `/command` is dispatched, not posted (as chat.postMessage).
    const slashCommands = yield* Effect.serviceOption(SlashCommands)
    const tickets = yield* GatewayTickets
    const edge = Option.getOrUndefined(yield* Effect.serviceOption(EdgePresence))
    const limiter = Option.getOrUndefined(yield* Effect.serviceOption(RateLimiter))
    const metrics = GatewayMetrics.make((yield* RuntimeMetrics).registry)
    const runtime = yield* Effect.runtime<never>()
    const runPromise = Runtime.runPromise(runtime)
    const runFork = Runtime.runFork(runtime)
    const nc = nats.nc
    const names = nats.names

    const log = (level: LogLevel.LogLevel, message: string, fields: Record<string, unknown>) => {
      runFork(Effect.logWithLevel(level, message).pipe(Effect.annotateLogs(fields)))
    }
    const connFields = (conn: Conn) => ({ connection: conn.id, user: conn.user, team: conn.team })

    const conns = new Map<string, Conn>()
    const connsByUser = new Map<string, Set<Conn>>()
    const feeds = new Map<string, Feed>()
    const userSubs = new Map<string, { readonly subscription: Subscription; readonly ready: Promise<void>; count: number }>()
    const channelTeams = new Map<string, string>()
    let closing = false

    // ---- PostgreSQL -------------------------------------------------------------------

    const retried = <A, E>(effect: Effect.Effect<A, E>) =>
      effect.pipe(Effect.retry({ times: 4, schedule: Schedule.jittered(Schedule.exponential("50 millis")) }))

    const fetchEvents = (channel: string, after: number, upTo: number, limit: number): Promise<ReadonlyArray<EventRow>> =>
      runPromise(retried(sql<EventRow>`
        SELECT seq, event FROM channel_events
        WHERE channel_id = ${channel} AND seq > ${after} AND seq <= ${upTo}
        ORDER BY seq LIMIT ${limit}`))

    const membershipsOf = (user: string, team: string): Promise<ReadonlyArray<MembershipRow>> =>
      runPromise(retried(sql<MembershipRow>`
        SELECT m.channel_id, m.joined_seq, c.last_seq
        FROM channel_members m JOIN channels c ON c.id = m.channel_id
        WHERE m.user_id = ${user} AND c.team_id = ${team}`))

    const membership = (channel: string, user: string, team: string): Promise<MembershipRow | undefined> =>
      runPromise(retried(sql<MembershipRow>`
        SELECT m.channel_id, m.joined_seq, c.last_seq
        FROM channel_members m JOIN channels c ON c.id = m.channel_id
        WHERE m.channel_id = ${channel} AND m.user_id = ${user} AND c.team_id = ${team}`)).then((rows) => rows[0])

    const teamOf = async (channel: string): Promise<string | undefined> => {
      const known = channelTeams.get(channel)
      if (known !== undefined) return known
      const rows = await runPromise(retried(sql<{ team_id: string }>`SELECT team_id FROM channels WHERE id = ${channel}`))
      const team = rows[0]?.team_id
      if (team !== undefined) {
        if (channelTeams.size >= 50_000) channelTeams.clear()
        channelTeams.set(channel, team)
      }
      return team
    }

    // ---- sockets ----------------------------------------------------------------------

    const closeConn = (conn: Conn, code: number, reason: string) => {
      if (conn.closed) return
      conn.closed = true
      // Held frames go before the close frame, unless the client is not reading.
      if (reason === "slow_consumer") {
        holding.delete(conn)
        conn.held = []
        conn.heldBytes = 0
      } else {
        writeHeld(conn, performance.now())
      }
      metrics.closes.inc({ reason })
      log(LogLevel.Info, "socket closing", { ...connFields(conn), code, reason })
      try {
        conn.ws.close(code, reason)
      } catch {
        conn.ws.terminate()
      }
      // A client that does not read does not read the close frame either.
      setTimeout(() => conn.ws.terminate(), closeGraceMs).unref()
      release(conn)
    }

    const slowConsumer = (conn: Conn) => {
      if (conn.closed) return
      metrics.slowConsumerCloses.inc()
      log(LogLevel.Warning, "slow consumer", { ...connFields(conn), buffered: backlog(conn) })
      closeConn(conn, Protocol.CloseCodes.slowConsumer, "slow_consumer")
    }

    const resync = (conn: Conn, why: string, fields: Record<string, unknown> = {}) => {
      log(LogLevel.Warning, "socket must resync", { ...connFields(conn), why, ...fields })
      closeConn(conn, Protocol.CloseCodes.resync, "resync")
    }

    // ---- write coalescing -----------------------------------------------------------
    //
    // Socket writes were most of a gateway's CPU under fan-out: a system call per frame
    // per socket. A socket written to within `coalesceWrites` holds further frames
    // (complete wire frames, WireFrame.ts) in a list instead, and one timer writes every
    // socket's list out as one buffer. Held frames go straight to the TCP socket, ahead
    // of anything `ws` writes next (replies, the close frame), so order is kept.

    const holding = new Set<Conn>()
    let flushTimer: ReturnType<typeof setTimeout> | undefined
    /** The connection's TCP socket (`ws` keeps it as `_socket`); undefined if it has none. */
    const socketOf = (conn: Conn): Duplex | undefined => (conn.ws as unknown as { readonly _socket?: Duplex })._socket
    /** Bytes written but not yet taken by the kernel, and held by us. */
    const backlog = (conn: Conn) => conn.ws.bufferedAmount + conn.heldBytes
    const writeHeld = (conn: Conn, now: number) => {
      if (conn.held.length === 0) return
      const frames = conn.held
      const bytes = conn.heldBytes
      conn.held = []
      conn.heldBytes = 0
      conn.lastWrite = now
      holding.delete(conn)
      if (conn.ws.readyState !== conn.ws.OPEN) return
      socketOf(conn)?.write(frames.length === 1 ? frames[0]! : Buffer.concat(frames, bytes))
    }
    /** The current coalescing window: `coalesceMs`, wider while many sockets are busy. */
    let windowMs = coalesceMs
    metrics.coalesceWindowMs.set(windowMs)
    const flushHeld = () => {
      flushTimer = undefined
      const now = performance.now()
      const busy = holding.size
      for (const conn of holding) writeHeld(conn, now)
      // Writing `busy` sockets every window must stay within the write budget.
      const next = Math.min(4 * coalesceMs, Math.max(coalesceMs, (busy * 1000) / o.flushWritesPerSecond))
      if (next !== windowMs) metrics.coalesceWindowMs.set(next)
      windowMs = next
    }

    /** Whether `conn` takes another frame; a slow consumer is closed instead. */
    const writable = (conn: Conn): boolean => {
      if (conn.closed) return false
      if (backlog(conn) > o.maxBufferedBytes) {
        slowConsumer(conn)
        return false
      }
      return true
    }

    /**
     * Writes a wire frame (WireFrame.ts; events share one across sockets), or holds it
     * for the next flush if the socket was written to within `coalesceMs`; false when
     * the socket is gone or closed as a slow consumer. The fan-out hot path: one call
     * per delivery, always with a Buffer.
     */
    const sendFrame = (conn: Conn, wire: Buffer): boolean => {
      if (!writable(conn)) return false
      const socket = socketOf(conn)
      if (socket === undefined || conn.ws.readyState !== conn.ws.OPEN) {
        // Its close frame is in (or it has no socket): release it now, or every event
        // until the close completes would send its attachments back to catch up.
        closedByClient(conn, undefined)
        return false
      }
      const now = performance.now()
      if (coalesceMs > 0 && (conn.held.length > 0 || now - conn.lastWrite < windowMs)) {
        conn.held.push(wire)
        conn.heldBytes += wire.byteLength
        holding.add(conn)
        flushTimer ??= setTimeout(flushHeld, windowMs)
      } else {
        socket.write(wire)
        conn.lastWrite = now
      }
      return true
    }
    /** A text frame to one socket. */
    const send = (conn: Conn, data: Bytes): boolean => sendFrame(conn, WireFrame.textFrame(data))
    /**
     * A reply to the client's own frame: never held back, and written in one system call
     * with what is held (it goes after it, so order is kept).
     */
    const reply = (conn: Conn, data: Bytes): boolean => {
      if (!writable(conn)) return false
      if (socketOf(conn) === undefined || conn.ws.readyState !== conn.ws.OPEN) {
        closedByClient(conn, undefined)
        return false
      }
      const frame = WireFrame.textFrame(data)
      conn.held.push(frame)
      conn.heldBytes += frame.byteLength
      writeHeld(conn, performance.now())
      return true
    }

    /** Waits until the socket's buffer is below a quarter of the bound; false if it does not drain in time. */
    const drained = async (conn: Conn): Promise<boolean> => {
      const deadline = Date.now() + graceMs
      while (!conn.closed && backlog(conn) > o.maxBufferedBytes / 4) {
        if (Date.now() > deadline) return false
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
      return !conn.closed
    }

    // ---- attachments ------------------------------------------------------------------

    const attach = (conn: Conn, feed: Feed, cursor: number, floor: number): Attachment => {
      const existing = conn.attachments.get(feed.channel)
      if (existing !== undefined) return existing
      const att: Attachment = { conn, feed, cursor, start: cursor, floor, until: undefined, rejoin: undefined, replay: undefined, detached: false }
      conn.attachments.set(feed.channel, att)
      feed.members.add(att)
      if (conn.live) ensureReplay(att)
      return att
    }

    const detach = (att: Attachment) => {
      if (att.detached) return
      att.detached = true
      const { conn, feed } = att
      if (conn.attachments.get(feed.channel) === att) conn.attachments.delete(feed.channel)
      feed.members.delete(att)
      if (att.rejoin !== undefined && !conn.closed && !feed.closed) attach(conn, feed, att.rejoin - 1, att.rejoin - 1)
      if (feed.members.size === 0) closeFeed(feed)
    }

    /** `conn` joined `feed`'s channel at `seq`: attach it from there (after its current membership, if one is ending). */
    const joined = (conn: Conn, feed: Feed, seq: number) => {
      const current = conn.attachments.get(feed.channel)
      if (current === undefined) attach(conn, feed, seq - 1, seq - 1)
      else if (current.until !== undefined && seq > current.until) current.rejoin = Math.max(current.rejoin ?? 0, seq)
    }

    /** The membership ends with event `seq`: the socket gets events up to it, then nothing more. */
    const endMembership = (att: Attachment, seq: number) => {
      att.until = att.until === undefined ? seq : Math.min(att.until, seq)
      if (att.cursor >= att.until) {
        if (att.cursor > att.until) {
          log(LogLevel.Error, "events past a membership's end were delivered", { ...connFields(att.conn), channel: att.feed.channel, cursor: att.cursor, until: att.until })
        }
        detach(att)
      }
    }

    /** Writes live event `seq` to an attachment if it is exactly the next one. */
    const deliverLive = (att: Attachment, seq: number, wire: Buffer): boolean => {
      const conn = att.conn
      if (!conn.live || att.detached || seq <= att.cursor) return false
      if (att.until !== undefined && seq > att.until) {
        detach(att)
        return false
      }
      if (seq !== att.cursor + 1) {
        ensureReplay(att)
        return false
      }
      if (!sendFrame(conn, wire)) return false
      att.cursor = seq
      if (att.until === seq) detach(att)
      return true
    }

    /** Catches an attachment up from `channel_events` to its feed's last seq, then lets live events through. */
    const ensureReplay = (att: Attachment) => {
      if (att.replay !== undefined || att.detached || att.feed.closed || att.conn.closed || !att.conn.live) return
      att.replay = replay(att).catch((error: unknown) => {
        resync(att.conn, "catch-up failed", { channel: att.feed.channel, error: String(error) })
      }).finally(() => {
        att.replay = undefined
        // A resume may have moved the cursor back just as this catch-up finished.
        if (att.feed.lastSeq !== undefined && att.cursor < att.feed.lastSeq) ensureReplay(att)
      })
    }

    /** Resolves once none of `atts` is catching up. */
    const caughtUp = async (atts: ReadonlyArray<Attachment>): Promise<void> => {
      while (atts.some((att) => att.replay !== undefined)) await Promise.all(atts.map((att) => att.replay))
    }

    const replay = async (att: Attachment): Promise<void> => {
      const { conn, feed } = att
      for (;;) {
        await feed.ready
        if (att.detached || conn.closed || feed.closed) return
        const target = feed.lastSeq ?? 0
        if (att.cursor >= target) return
        const after = att.cursor
        const rows = await fetchEvents(feed.channel, after, target, o.replayPageSize)
        if (att.detached || conn.closed) return
        if (att.cursor !== after) continue // a resume moved the cursor meanwhile
        if (rows.length === 0 || rows[0]?.seq !== after + 1) {
          resync(conn, "channel_events has a gap", { channel: feed.channel, after, target, first: rows[0]?.seq })
          return
        }
        for (const row of rows) {
          if (att.cursor !== row.seq - 1) break // moved: read again from the new cursor
          if (att.until !== undefined && row.seq > att.until) {
            detach(att)
            return
          }
          if (backlog(conn) > o.maxBufferedBytes / 2) {
            if (!(await drained(conn))) {
              slowConsumer(conn)
              return
            }
            if (att.detached || att.cursor !== row.seq - 1) break
          }
          if (!send(conn, eventText(row))) return
          att.cursor = row.seq
          metrics.eventsDelivered.inc({ source: "replay" })
          // The log knows of a leave this socket may not have heard of yet.
          if (isRecord(row.event) && leaverOf(row.event) === conn.user) endMembership(att, row.seq)
          if (att.until === row.seq) {
            detach(att)
            return
          }
        }
      }
    }

    const goLive = (conn: Conn) => {
      if (conn.live || conn.closed) return
      if (conn.holdTimer !== undefined) clearTimeout(conn.holdTimer)
      conn.holdTimer = undefined
      conn.live = true
      for (const att of conn.attachments.values()) ensureReplay(att)
    }

    // ---- feeds ------------------------------------------------------------------------

    let baselineBatch: Array<Feed> | undefined

    const feedFor = (channel: string): Feed => {
      const existing = feeds.get(channel)
      if (existing !== undefined) return existing
      let markReady = () => {}
      const ready = new Promise<void>((resolve) => {
        markReady = resolve
      })
      const feed: Feed = {
        channel,
        team: channelTeams.get(channel),
        lastSeq: undefined,
        members: new Set(),
        inbox: [],
        pumping: false,
        closed: false,
        subscriptions: [],
        typingFrom: new Map(),
        ready,
        markReady
      }
      feed.subscriptions = [
        nc.subscribe(ChannelEvents.channelSubject(names, channel), {
          callback: (error, msg) => {
            if (error === null) enqueue(feed, msg.data)
          }
        }),
        nc.subscribe(ephemeralSubject(names, channel), {
          callback: (error, msg) => {
            if (error === null) deliverEphemeral(feed, msg.data)
          }
        })
      ]
      feeds.set(channel, feed)
      metrics.channelSubscriptions.set(feeds.size)
      if (baselineBatch === undefined) {
        baselineBatch = []
        setImmediate(() => {
          const batch = baselineBatch ?? []
          baselineBatch = undefined
          void readBaselines(batch)
        })
      }
      baselineBatch.push(feed)
      return feed
    }

    /**
     * Where a new feed starts: the channel's `last_seq`, read after its subscription is
     * registered with the server (flush), so every later event arrives by NATS or is
     * found as a gap. One query for all the feeds created in one tick.
     */
    const readBaselines = async (batch: ReadonlyArray<Feed>): Promise<void> => {
      for (let attempt = 0;; attempt++) {
        const open = batch.filter((f) => !f.closed)
        if (open.length === 0 || closing) return
        try {
          await nc.flush()
          const rows = await runPromise(sql<{ id: string; team_id: string; last_seq: number }>`
            SELECT id, team_id, last_seq FROM channels WHERE id IN ${sql.in(open.map((f) => f.channel))}`)
          const byId = new Map(rows.map((r) => [r.id, r] as const))
          for (const feed of open) {
            const row = byId.get(feed.channel)
            feed.lastSeq = row?.last_seq ?? 0
            feed.team = row?.team_id
            if (row !== undefined) channelTeams.set(feed.channel, row.team_id)
            feed.markReady()
            void pump(feed)
          }
          return
        } catch (error) {
          log(LogLevel.Warning, "feed baseline read failed; retrying", { channels: open.length, attempt, error: String(error) })
          await new Promise((resolve) => setTimeout(resolve, Math.min(5_000, 100 * 2 ** attempt)))
        }
      }
    }

    const closeFeed = (feed: Feed) => {
      if (feed.closed) return
      feed.closed = true
      feed.inbox = []
      for (const subscription of feed.subscriptions) subscription.unsubscribe()
      if (feeds.get(feed.channel) === feed) feeds.delete(feed.channel)
      metrics.channelSubscriptions.set(feeds.size)
      feed.markReady() // wake catch-ups waiting on it; they see it closed
    }

    const enqueue = (feed: Feed, item: Bytes | "sync") => {
      if (feed.closed) return
      if (feed.inbox.length >= o.maxFeedBacklog) {
        log(LogLevel.Error, "feed backlog overflow; its sockets must resync", { channel: feed.channel, backlog: feed.inbox.length })
        for (const att of [...feed.members]) resync(att.conn, "feed backlog overflow", { channel: feed.channel })
        return
      }
      feed.inbox.push(item)
      if (feed.lastSeq !== undefined && !feed.pumping) void pump(feed)
    }

    /** Processes a feed's inbox in order; awaits only to fill gaps. */
    const pump = async (feed: Feed): Promise<void> => {
      if (feed.pumping || feed.lastSeq === undefined) return
      feed.pumping = true
      try {
        while (!feed.closed && feed.inbox.length > 0) {
          const item = feed.inbox.shift()
          if (item === undefined) break
          if (item === "sync") {
            await fill(feed, Number.MAX_SAFE_INTEGER)
            continue
          }
          const event = Protocol.parseEvent(item)
          const seq = event === undefined ? undefined : Protocol.seqOf(event)
          if (event === undefined || seq === undefined) {
            log(LogLevel.Warning, "unsequenced or malformed channel event dropped", { channel: feed.channel })
            continue
          }
          const last = feed.lastSeq ?? 0
          if (seq <= last) {
            metrics.duplicatesDropped.inc()
            continue
          }
          if (seq > last + 1) await fill(feed, seq - 1)
          if (feed.closed) return
          if (seq <= (feed.lastSeq ?? 0)) {
            metrics.duplicatesDropped.inc()
            continue
          }
          dispatch(feed, seq, item, event)
        }
      } catch (error) {
        log(LogLevel.Error, "feed pump failed", { channel: feed.channel, error: String(error) })
      } finally {
        feed.pumping = false
      }
      if (!feed.closed && feed.inbox.length > 0) void pump(feed)
    }

    /**
     * Delivers the events after the feed's last seq up to `upTo` from `channel_events`.
     * If they cannot be read, the feed moves on anyway: each socket that is then
     * behind catches up by itself, or is told to resync.
     */
    const fill = async (feed: Feed, upTo: number): Promise<void> => {
      while (!feed.closed && (feed.lastSeq ?? 0) < upTo) {
        const after = feed.lastSeq ?? 0
        let rows: ReadonlyArray<EventRow>
        try {
          rows = await fetchEvents(feed.channel, after, upTo, o.replayPageSize)
        } catch (error) {
          log(LogLevel.Warning, "gap fill failed", { channel: feed.channel, after, upTo, error: String(error) })
          return
        }
        if (feed.closed) return
        let progressed = false
        for (const row of rows) {
          if (row.seq !== (feed.lastSeq ?? 0) + 1) break
          metrics.gapFills.inc()
          const text = eventText(row)
          dispatch(feed, row.seq, text, JSON.parse(text) as EventObject)
          progressed = true
        }
        if (!progressed) {
          if (upTo !== Number.MAX_SAFE_INTEGER) log(LogLevel.Warning, "gap not found in channel_events", { channel: feed.channel, after, upTo })
          return
        }
        if (rows.length < o.replayPageSize) return
      }
    }

    /** Delivers event `seq` (the feed's next) to every attached socket, applying membership changes in order. */
    const dispatch = (feed: Feed, seq: number, data: Bytes, event: EventObject) => {
      feed.lastSeq = seq
      const type = event["type"]
      if (type === "member_joined_channel" && typeof event["user"] === "string") {
        for (const conn of connsByUser.get(event["user"]) ?? []) {
          if (!conn.closed && conn.team === feed.team) joined(conn, feed, seq)
        }
      }
      // Counted once per event, not per socket: a label lookup per delivery was measurable.
      let delivered = 0
      const wire = WireFrame.textFrame(data)
      for (const att of feed.members) if (deliverLive(att, seq, wire)) delivered++
      if (delivered > 0) metrics.eventsDelivered.inc({ source: "live" }, delivered)
      const leaver = leaverOf(event)
      if (leaver !== undefined) {
        for (const att of [...feed.members]) if (att.conn.user === leaver) endMembership(att, seq)
      }
    }

    const deliverEphemeral = (feed: Feed, data: Uint8Array) => {
      if (feed.closed || feed.members.size === 0) return
      const event = Protocol.parseEvent(data)
      const from = event?.["user"]
      if (event?.["type"] === "user_typing" && typeof from === "string") {
        // One per user per interval here too: their sockets on other nodes may repeat it.
        const now = Date.now()
        if (now - (feed.typingFrom.get(from) ?? 0) < typingMs * 0.8) return
        feed.typingFrom.set(from, now)
      }
      const wire = WireFrame.textFrame(data)
      for (const att of feed.members) {
        if (att.conn.live && att.until === undefined && att.conn.user !== from) sendFrame(att.conn, wire)
      }
    }

    // After a NATS reconnect, whatever was published meanwhile is only in PostgreSQL.
    const statusIterator = nc.status() as AsyncIterable<{ readonly type: string }> & { readonly stop: () => void }
    void (async () => {
      for await (const status of statusIterator) {
        if (status.type === "reconnect") for (const feed of feeds.values()) enqueue(feed, "sync")
      }
    })().catch(() => undefined)

    // ---- user subjects ----------------------------------------------------------------

    const acquireUser = (user: string): Promise<void> => {
      const existing = userSubs.get(user)
      if (existing !== undefined) {
        existing.count++
        return existing.ready
      }
      const subscription = nc.subscribe(ChannelEvents.userSubject(names, user), {
        callback: (error, msg) => {
          if (error === null) onUserEvent(user, msg.data)
        }
      })
      const ready = nc.flush()
      userSubs.set(user, { subscription, ready, count: 1 })
      metrics.userSubscriptions.set(userSubs.size)
      return ready
    }

    const releaseUser = (user: string) => {
      const entry = userSubs.get(user)
      if (entry === undefined) return
      entry.count--
      if (entry.count > 0) return
      entry.subscription.unsubscribe()
      userSubs.delete(user)
      metrics.userSubscriptions.set(userSubs.size)
    }

    const onUserEvent = (user: string, data: Uint8Array) => {
      const event = Protocol.parseEvent(data)
      if (event === undefined) return
      for (const conn of connsByUser.get(user) ?? []) {
        if (conn.closed) continue
        if (conn.userBacklog !== undefined) conn.userBacklog.push([data, event])
        else queueUserEvent(conn, data, event)
      }
    }

    const queueUserEvent = (conn: Conn, data: Bytes, event: EventObject) => {
      conn.userChain = conn.userChain.then(() => handleUserEvent(conn, data, event)).catch((error: unknown) => {
        resync(conn, "user event handling failed", { error: String(error) })
      })
    }

    /** A user event that ends a membership (`channel_left`): nothing after its seq reaches the socket. */
    const applyLeave = (conn: Conn, channel: string, event: EventObject) => {
      const att = conn.attachments.get(channel)
      if (att === undefined) return
      const seq = Protocol.seqOf(event)
      if (seq === undefined) detach(att)
      else endMembership(att, seq)
    }

    const handleUserEvent = async (conn: Conn, data: Bytes, event: EventObject): Promise<void> => {
      if (conn.closed) return
      const type = event["type"]
      const channel = Protocol.channelOf(event)
      if (channel !== undefined && (await teamOf(channel)) !== conn.team) return // another workspace's
      if (conn.closed) return
      if (channel !== undefined && typeof type === "string") {
        if (joinTypes.has(type)) {
          const current = conn.attachments.get(channel)
          if (current === undefined || current.until !== undefined) {
            const seq = Protocol.seqOf(event) ?? (await membership(channel, conn.user, conn.team))?.joined_seq
            if (conn.closed) return
            if (seq !== undefined) joined(conn, feedFor(channel), seq)
          }
        } else if (leaveTypes.has(type)) {
          applyLeave(conn, channel, event)
        }
      }
      if (conn.live || conn.holdTimer !== undefined) send(conn, data)
    }

    // ---- connections ------------------------------------------------------------------

    const open = (ws: WebSocket, claims: TicketClaims, hold: boolean) => {
      const conn: Conn = {
        id: newId(),
        user: claims.userId,
        team: claims.teamId,
        ws,
        attachments: new Map(),
        lastSeen: Date.now(),
        lastWrite: Number.NEGATIVE_INFINITY,
        held: [],
        heldBytes: 0,
        live: false,
        closed: false,
        userBacklog: [],
        userChain: Promise.resolve(),
        postQueue: [],
        posting: false,
        pendingMessages: 0,
        holdTimer: undefined,
        tokenId: claims.tokenId,
        principal: claims.principal,
        limiter: limiter?.socket(),
        presence: undefined,
        setup: Promise.resolve()
      }
      conns.set(conn.id, conn)
      let byUser = connsByUser.get(conn.user)
      if (byUser === undefined) connsByUser.set(conn.user, byUser = new Set())
      byUser.add(conn)
      metrics.socketsOpen.set(conns.size)
      log(LogLevel.Info, "socket opened", { ...connFields(conn), resume: hold })
      edge?.opened(conn.user)

      ws.on("message", (data, isBinary) => onFrame(conn, data, isBinary))
      ws.on("pong", () => {
        conn.lastSeen = Date.now()
      })
      ws.on("error", (error) => log(LogLevel.Debug, "socket error", { ...connFields(conn), error: error.message }))
      ws.on("close", (code) => {
        closedByClient(conn, code)
        conns.delete(conn.id)
        metrics.socketsOpen.set(conns.size)
      })

      const userReady = acquireUser(conn.user)
      conn.setup = setup(conn, userReady, hold).catch((error: unknown) => {
        log(LogLevel.Error, "socket setup failed", { ...connFields(conn), error: String(error) })
        closeConn(conn, Protocol.CloseCodes.internalError, "internal_error")
      })
    }

    const setup = async (conn: Conn, userReady: Promise<void>, hold: boolean) => {
      await userReady
      const rows = await membershipsOf(conn.user, conn.team)
      if (conn.closed) return
      for (const row of rows) {
        if (!conn.attachments.has(row.channel_id)) attach(conn, feedFor(row.channel_id), row.last_seq, row.joined_seq - 1)
      }
      await Promise.all([...conn.attachments.values()].map((att) => att.feed.ready))
      if (conn.closed) return
      const backlog = conn.userBacklog ?? []
      conn.userBacklog = undefined
      // Leaves that happened while the memberships were read end them before any catch-up
      // can run past them (the channel's own leave event may have gone by before this
      // socket was attached).
      for (const [, event] of backlog) {
        const channel = Protocol.channelOf(event)
        if (channel !== undefined && typeof event["type"] === "string" && leaveTypes.has(event["type"])) applyLeave(conn, channel, event)
      }
      if (!reply(conn, Protocol.hello)) return
      if (hold) conn.holdTimer = setTimeout(() => goLive(conn), holdMs)
      else goLive(conn)
      for (const [data, event] of backlog) queueUserEvent(conn, data, event)
    }

    /** The client closed (or is closing) its socket: nothing more goes to it. */
    const closedByClient = (conn: Conn, code: number | undefined) => {
      if (conn.closed) return
      conn.closed = true
      metrics.closes.inc({ reason: "client" })
      log(LogLevel.Info, "socket closed by client", { ...connFields(conn), code })
      release(conn)
    }

    /** Forgets a closing socket: its attachments (and feeds nobody else needs) and its user subscription. */
    const release = (conn: Conn) => {
      if (conn.holdTimer !== undefined) clearTimeout(conn.holdTimer)
      conn.holdTimer = undefined
      for (const att of [...conn.attachments.values()]) detach(att)
      const byUser = connsByUser.get(conn.user)
      if (byUser !== undefined && byUser.delete(conn) && byUser.size === 0) connsByUser.delete(conn.user)
      releaseUser(conn.user)
      if (conn.presence !== undefined) edge?.unsubscribe(conn.presence)
      edge?.closed(conn.user)
    }

    // ---- client frames ----------------------------------------------------------------

    const onFrame = (conn: Conn, data: RawData, isBinary: boolean) => {
      conn.lastSeen = Date.now()
      if (conn.closed) return
      // Flooding: refused before any work, then closed if it goes on.
      const allowed = conn.limiter?.frame() ?? "ok"
      if (allowed !== "ok") {
        metrics.framesReceived.inc({ type: "invalid", outcome: "ratelimited" })
        if (allowed === "close") {
          log(LogLevel.Warning, "socket flooding; closing it", connFields(conn))
          closeConn(conn, Protocol.CloseCodes.flood, "rate_limited")
        } else {
          reply(conn, Protocol.errorEvent("ratelimited", "too many frames; slow down"))
        }
        return
      }
      if (isBinary) {
        metrics.framesReceived.inc({ type: "invalid", outcome: "error" })
        reply(conn, Protocol.errorEvent("invalid_frame", "frames must be text (JSON)"))
        return
      }
      const parsed = Protocol.parseClientFrame(rawText(data))
      if (!parsed.ok) {
        metrics.framesReceived.inc({ type: "invalid", outcome: "error" })
        reply(conn, Protocol.frameError(parsed.error))
        return
      }
      const frame = parsed.frame
      metrics.framesReceived.inc({ type: GatewayMetrics.frameTypeLabel(frame.type), outcome: "accepted" })
      if (frame.type !== "ping") edge?.activity(conn.user)
      switch (frame.type) {
        case "ping":
          reply(conn, Protocol.pong(frame.id, frame.extra))
          return
        case "message":
          if (conn.pendingMessages >= o.maxPendingMessages) {
            reply(conn, Protocol.replyError(frame.id, "ratelimited", "too many messages waiting on this socket"))
            return
          }
          if (limiter !== undefined && !limiter.checkPost(conn.tokenId, frame.channel).ok) {
            reply(conn, Protocol.replyError(frame.id, "ratelimited", "posting too fast in this channel"))
            return
          }
          conn.pendingMessages++
          conn.postQueue.push(frame)
          if (!conn.posting) void drainPosts(conn)
          return
        case "typing":
          typing(conn, frame)
          return
        case "resume":
          void resume(conn, frame).catch((error: unknown) => {
            log(LogLevel.Error, "resume failed", { ...connFields(conn), error: String(error) })
            reply(conn, Protocol.replyError(frame.id, "internal_error", "resume failed; reconnect and resume again"))
          })
          return
        case "presence_sub": {
          if (edge === undefined) {
            if (frame.id !== undefined) reply(conn, Protocol.replyOk(frame.id))
            return
          }
          const subscriber = conn.presence ?? { send: (text: string) => void send(conn, text) }
          conn.presence = subscriber
          // The current presence of the users comes first (as presence_change), then the reply.
          void edge.subscribe(subscriber, frame.ids).then(() => {
            if (frame.id !== undefined) reply(conn, Protocol.replyOk(frame.id))
          }, (error: unknown) => {
            log(LogLevel.Warning, "presence subscription failed", { ...connFields(conn), error: String(error) })
            if (frame.id !== undefined) reply(conn, Protocol.replyError(frame.id, "internal_error", "presence is unavailable; subscribe again"))
          })
          return
        }
      }
    }

    /** Whether the frame may be a slash command, which goes to its app and is never batched. */
    const maybeCommand = (conn: Conn, frame: Protocol.MessageFrame) =>
      Option.isSome(slashCommands) && conn.principal?.tokenKind === "user" && frame.text.trimStart().startsWith("/")

    /**
     * Posts the socket's queued message frames, one request at a time and in order:
     * frames that queued while one was in flight go together, as one `PostMessages`,
     * when they are consecutive messages to the same channel (decision 0020).
     */
    const drainPosts = async (conn: Conn): Promise<void> => {
      conn.posting = true
      try {
        while (conn.postQueue.length > 0 && !conn.closed) {
          const first = conn.postQueue[0]!
          let count = 1
          if (!maybeCommand(conn, first)) {
            while (
              count < conn.postQueue.length && count < maxBatchedPosts &&
              conn.postQueue[count]!.channel === first.channel && !maybeCommand(conn, conn.postQueue[count]!)
            ) count++
          }
          const frames = conn.postQueue.splice(0, count)
          try {
            if (frames.length === 1) await postMessage(conn, first)
            else await postMessages(conn, frames)
          } catch (error) {
            log(LogLevel.Error, "message frame failed", { ...connFields(conn), error: String(error) })
          } finally {
            conn.pendingMessages -= frames.length
          }
        }
      } finally {
        conn.posting = false
      }
      if (conn.closed) {
        conn.pendingMessages -= conn.postQueue.length
        conn.postQueue = []
      }
    }

    // Not validated here: the channel actor decodes (and so validates) every request it takes.
    const toPost = (conn: Conn, frame: Protocol.MessageFrame) =>
      new PostMessage({
        user: conn.user,
        team: conn.team,
        text: frame.text,
        ...(frame.thread_ts === undefined ? {} : { thread_ts: frame.thread_ts }),
        ...(frame.reply_broadcast === undefined ? {} : { reply_broadcast: frame.reply_broadcast }),
        ...(frame.client_msg_id === undefined ? {} : { client_msg_id: frame.client_msg_id })
      }, true)

    type PostFailure = P.ChannelError | DeliveryError | { readonly _tag: "Defect"; readonly defect: unknown }

    /** Sends to the channel actor; every failure, defects included, as a value. */
    const sendToChannel = <Req extends PostMessage | PostMessages>(conn: Conn, channel: string, request: Req, commandId: string | undefined) =>
      runPromise(
        client.send(Channel, channel, request, commandId === undefined ? {} : { commandId }).pipe(
          Effect.either,
          Effect.catchAllDefect((defect) => Effect.succeed(Either.left({ _tag: "Defect" as const, defect })))
        )
      ).then((outcome) => {
        const error = Either.isLeft(outcome) ? outcome.left : undefined
        if (error !== undefined && error._tag !== "ChannelError" && error._tag !== "DeliveryTimeout" && error._tag !== "MailboxFull") {
          log(LogLevel.Error, "message post failed", { ...connFields(conn), channel, error: String("defect" in error ? error.defect : error) })
        }
        return outcome
      })

    /** The error reply to a message frame whose send failed. */
    const failureReply = (frame: Protocol.MessageFrame, error: PostFailure) => {
      switch (error._tag) {
        case "ChannelError":
          return Protocol.replyError(frame.id, error.code, error.code)
        case "DeliveryTimeout":
          return Protocol.replyError(frame.id, "timeout", "no answer in time; retry with the same client_msg_id")
        case "MailboxFull":
          return Protocol.replyError(frame.id, "ratelimited", "the channel is busy; retry")
        default:
          return Protocol.replyError(frame.id, "internal_error", "the message could not be posted")
      }
    }

    const postMessage = async (conn: Conn, frame: Protocol.MessageFrame): Promise<void> => {
      if (conn.closed) return
      const principal = conn.principal
      if (Option.isSome(slashCommands) && principal !== undefined && maybeCommand(conn, frame)) {
        const dispatched = await runPromise(slashCommands.value.dispatch(principal, frame.channel, frame.text).pipe(
          Effect.either,
          Effect.catchAllDefect((defect) => Effect.as(Effect.logError("slash command failed", { channel: frame.channel, defect: String(defect) }), Either.left(new ApiError({ code: "internal_error" }))))
        ))
        if (Either.isLeft(dispatched)) {
          reply(conn, Protocol.replyError(frame.id, dispatched.left.code, dispatched.left.code))
          return
        }
        if (Option.isSome(dispatched.right)) {
          reply(conn, Protocol.replyOk(frame.id, dispatched.right.value))
          return
        }
        // Not a registered command: an ordinary message.
      }
      const outcome = await sendToChannel(conn, frame.channel, toPost(conn, frame), frame.client_msg_id)
      reply(conn, Either.isRight(outcome)
        ? Protocol.replyOk(frame.id, { ts: outcome.right.ts, seq: outcome.right.seq, channel: frame.channel, text: frame.text })
        : failureReply(frame, outcome.left))
    }

    /** Consecutive messages of one socket to one channel, in one request; each frame gets its own reply. */
    const postMessages = async (conn: Conn, frames: ReadonlyArray<Protocol.MessageFrame>): Promise<void> => {
      if (conn.closed) return
      const channel = frames[0]!.channel
      metrics.postsBatched.inc(frames.length)
      const outcome = await sendToChannel(conn, channel, new PostMessages({ posts: frames.map((frame) => toPost(conn, frame)) }), undefined)
      frames.forEach((frame, index) => {
        const answer = Either.isRight(outcome) ? outcome.right[index] : undefined
        if (Either.isLeft(outcome)) reply(conn, failureReply(frame, outcome.left))
        else if (answer === undefined) reply(conn, Protocol.replyError(frame.id, "internal_error", "the message could not be posted"))
        else if (answer.ok) reply(conn, Protocol.replyOk(frame.id, { ts: answer.ts, seq: answer.seq, channel, text: frame.text }))
        else reply(conn, Protocol.replyError(frame.id, answer.error, answer.error))
      })
    }

    /** When each user last had `user_typing` sent for a channel from this node (key: channel, user). */
    const typingSent = new Map<string, number>()
    /** Member counts of channels, for the typing threshold (read at most every `memberCountTtlMs`). */
    const memberCounts = new Map<string, { readonly count: number; readonly at: number }>()
    const memberCountTtlMs = 10_000

    /** The channel's member count, up to `typingMaxMembers + 1` (enough to decide). */
    const membersUpToLimit = async (channel: string): Promise<number> => {
      const known = memberCounts.get(channel)
      if (known !== undefined && Date.now() - known.at < memberCountTtlMs) return known.count
      const rows = await runPromise(retried(sql<{ n: number }>`
        SELECT count(*)::int AS n FROM (SELECT 1 FROM channel_members WHERE channel_id = ${channel} LIMIT ${o.typingMaxMembers + 1}) m`))
      const count = rows[0]?.n ?? 0
      if (memberCounts.size >= 50_000) memberCounts.clear()
      memberCounts.set(channel, { count, at: Date.now() })
      return count
    }

    const typing = (conn: Conn, frame: Protocol.TypingFrame) => {
      const att = conn.attachments.get(frame.channel)
      if (att === undefined || att.until !== undefined) {
        if (frame.id !== undefined) reply(conn, Protocol.replyError(frame.id, "channel_not_found", "not a channel of yours"))
        return
      }
      if (frame.id !== undefined) reply(conn, Protocol.replyOk(frame.id))
      const key = `${frame.channel}\u0000${conn.user}`
      const now = Date.now()
      if (now - (typingSent.get(key) ?? 0) < typingMs) return
      typingSent.set(key, now)
      void membersUpToLimit(frame.channel).then((members) => {
        // Big channels get no typing indicators at all.
        if (members > o.typingMaxMembers) return
        nc.publish(ephemeralSubject(names, frame.channel), Protocol.userTyping(frame.channel, conn.user))
      }).catch(() => {
        // Best effort: typing is not worth an error.
      })
    }

    /**
     * `resume`: for each channel, the events after the client's last seq, then live
     * events. Answered once every listed channel's backlog has been written.
     */
    const resume = async (conn: Conn, frame: Protocol.ResumeFrame): Promise<void> => {
      await conn.setup
      const results: Record<string, unknown> = {}
      const resumed: Array<Attachment> = []
      for (const [channel, lastSeq] of frame.channels) {
        let att = conn.attachments.get(channel)
        if (att === undefined) {
          // Joined a moment ago, perhaps, and this node has not heard yet.
          const row = await membership(channel, conn.user, conn.team)
          if (conn.closed) return
          att = conn.attachments.get(channel) ??
            (row === undefined ? undefined : attach(conn, feedFor(channel), row.last_seq, row.joined_seq - 1))
        }
        if (att === undefined || att.until !== undefined) {
          results[channel] = { ok: false, error: "channel_not_found" }
          continue
        }
        const from = Math.max(lastSeq, att.floor)
        if (from < att.start) {
          att.start = from
          att.cursor = from
        } else if (from > att.cursor) {
          att.cursor = from
        }
        results[channel] = { ok: true }
        resumed.push(att)
      }
      if (conn.closed) return
      if (!conn.live) goLive(conn)
      else for (const att of resumed) ensureReplay(att)
      await caughtUp(resumed)
      if (conn.closed) return
      reply(conn, Protocol.replyOk(frame.id, { channels: results }))
    }

    // ---- upgrades ---------------------------------------------------------------------

    const wss = new WebSocketServer({ noServer: true, maxPayload: o.maxFrameBytes, clientTracking: false })

    const onUpgrade: UpgradeHandler = (request, socket, head) => {
      if (closing) return rejectUpgrade(socket, 503, "draining")
      const params = new URL(request.url ?? "/", "http://gateway").searchParams
      const ticket = params.get("ticket")
      const claims = ticket === null ? undefined : Effect.runSync(tickets.redeem(ticket))
      if (claims === undefined) {
        metrics.closes.inc({ reason: "invalid_ticket" })
        return rejectUpgrade(socket, 401, "invalid_ticket")
      }
      const hold = params.get("resume") === "1"
      wss.handleUpgrade(request, socket, head, (ws) => {
        if (closing) {
          ws.close(Protocol.CloseCodes.goingAway, "going_away")
          return
        }
        open(ws, claims, hold)
      })
    }

    // Idle sockets: silent for longer than the presence TTL.
    const sweep = setInterval(() => {
      const typingCutoff = Date.now() - typingMs
      for (const [key, at] of typingSent) if (at < typingCutoff) typingSent.delete(key)
      for (const feed of feeds.values()) for (const [user, at] of feed.typingFrom) if (at < typingCutoff) feed.typingFrom.delete(user)
      const cutoff = Date.now() - idleMs
      for (const conn of conns.values()) {
        if (!conn.closed && conn.lastSeen < cutoff) closeConn(conn, Protocol.CloseCodes.idle, "idle_timeout")
      }
    }, Math.max(50, Math.min(5_000, Math.floor(idleMs / 4))))
    sweep.unref()

    upgradeRoutes.set(server, onUpgrade)

    yield* Effect.addFinalizer(() =>
      Effect.promise(async () => {
        closing = true
        if (upgradeRoutes.get(server) === onUpgrade) upgradeRoutes.delete(server)
        clearInterval(sweep)
        if (flushTimer !== undefined) clearTimeout(flushTimer)
        flushHeld()
        const all = [...conns.values()]
        if (all.length > 0) log(LogLevel.Info, "gateway closing: goodbye to every socket", { sockets: all.length })
        const closed = all.map((conn) =>
          new Promise<void>((resolve) => {
            if (conn.ws.readyState === conn.ws.CLOSED) return resolve()
            conn.ws.once("close", () => resolve())
            if (!conn.closed) {
              // Past the buffer bound the goodbye could not go out anyway.
              if (backlog(conn) <= o.maxBufferedBytes) reply(conn, Protocol.goodbye)
              closeConn(conn, Protocol.CloseCodes.goingAway, "going_away")
            }
          })
        )
        await Promise.race([Promise.all(closed), new Promise((resolve) => setTimeout(resolve, closeGraceMs))])
        for (const conn of all) conn.ws.terminate()
        await new Promise<void>((resolve) => wss.close(() => resolve()))
        for (const feed of [...feeds.values()]) closeFeed(feed)
        for (const { subscription } of userSubs.values()) subscription.unsubscribe()
        userSubs.clear()
        statusIterator.stop()
      })
    )

    return {
      sockets: Effect.sync(() => conns.size),
      feeds: Effect.sync(() => feeds.size),
      feed: (channel) =>
        Effect.sync(() => {
          const feed = feeds.get(channel)
          return feed === undefined ? undefined : { sockets: feed.members.size, lastSeq: feed.lastSeq }
        })
    } satisfies GatewayShape
  })

/**
 * The gateway mounted on `server` (made by `createHttpServer`). Build it after the
 * server listens and close it before the server closes (provide the server's layer to
 * it), so that its finalizer says goodbye to every socket while the server waits.
 */
export const layer = (server: Http.Server, options: Partial<GatewayOptions> = {}) => Layer.scoped(Gateway, make(server, options))
