/**
 * The Events API: channel events, as captured by the `<CLUSTER>_EVENTS` stream, POSTed
 * to every subscribed app that may see them as Slack's `event_callback`, signed (v0),
 * at least once, in order per channel and app, retried with backoff, and never on the
 * chat path: channel actors publish and forget; this worker reads the stream behind
 * them.
 *
 * Three parts, from pure to effectful:
 *
 * 1. Routing (pure): which apps get an event. An app gets it when it subscribed to its
 *    type (`message` or `message.channels|groups|im|mpim` for messages), holds the
 *    scope the type needs (`channels:history` for messages in public channels,
 *    `reactions:read`, `channels:read`, …), and may see it: its bot is a member of the
 *    channel, or the channel is public and the app holds `channels:history` (Slack's
 *    rule; `channels:read` is enough for a public channel's created/renamed/archived
 *    events). A new message that mentions `<@bot user>` also makes an `app_mention`
 *    for that app, when its bot is in the channel.
 * 2. `Deliveries` (plain state machine with timers): per app, one FIFO lane per channel;
 *    a lane sends its head, and only then the next one, so each app sees a channel's
 *    events in order, while different channels (up to `maxInFlight` requests per app)
 *    go in parallel. A failed attempt (non-2xx, timeout, connection error) is retried
 *    after each of `retryDelays` with `X-Slack-Retry-Num`/`X-Slack-Retry-Reason`
 *    (none when the app answers `X-Slack-No-Retry: 1`), then given up (`failed`). An
 *    app that has been failing for `pauseAfter` without a success, or whose backlog
 *    passes `maxPending`, is paused: its backlog is dropped, and nothing is queued for
 *    it until `apps.eventSubscriptions.set` resumes it.
 * 3. The worker (Effect shell): one durable pull consumer of the EVENTS stream per
 *    cluster, run by the node that holds shard 0 (the shard leases already elect
 *    exactly one live holder). A JetStream message is acked once every delivery it
 *    made has succeeded, failed for good or been dropped; a new holder recreates the
 *    consumer from the old one's ack floor, so what was in flight is delivered again
 *    (at least once) and in order, without waiting out an AckWait. The consumer is
 *    made when the cluster's first node starts, before it serves, so what is posted
 *    before any node first takes shard 0 is not skipped. A gap in a
 *    channel's `seq` (a publish lost while NATS was away) is filled from PostgreSQL's
 *    `channel_events`. Figures per app (sent, failed, retried, dropped, lag) are added
 *    to the app's row every second and exported as metrics.
 */
import { AckPolicy, DeliverPolicy } from "@nats-io/jetstream"
import type { JsMsg } from "@nats-io/jetstream"
import type { Subscription } from "@nats-io/transport-node"
import http from "node:http"
import https from "node:https"
import { Duration, Effect, Fiber, Layer, Option, Runtime, Schedule } from "effect"
import * as Prom from "prom-client"
import { ChorusConfig } from "../config/ChorusConfig.ts"
import type { ChannelEvent } from "../domain/ChannelEvents.ts"
import * as Access from "../domain/ConversationAccess.ts"
import { RuntimeMetrics } from "../runtime/RuntimeMetrics.ts"
import { Sharding } from "../runtime/Sharding.ts"
import type { NatsError, NatsNames, NatsShape } from "../transport/Nats.ts"
import { Nats } from "../transport/Nats.ts"
import type { App, ChannelAudience } from "./Apps.ts"
import { Apps } from "./Apps.ts"
import * as Egress from "./Egress.ts"
import * as SlackSignature from "./SlackSignature.ts"

// ---- routing (pure) --------------------------------------------------------------------

/** What routing needs of an app with a subscription. */
export interface Subscriber {
  readonly id: string
  readonly teamId: string
  readonly botUserId: string
  readonly scopes: ReadonlySet<string>
  readonly events: ReadonlySet<string>
}

/** What routing needs of a channel. */
export interface ChannelView {
  readonly teamId: string
  readonly type: Access.ConversationType
  /** Bot users (of subscribed apps) in the channel. */
  readonly bots: ReadonlySet<string>
}

/** The event types an app may subscribe to. */
export const eventTypes: ReadonlySet<string> = new Set([
  "message",
  "message.channels",
  "message.groups",
  "message.im",
  "message.mpim",
  "app_mention",
  "reaction_added",
  "reaction_removed",
  "member_joined_channel",
  "member_left_channel",
  "channel_created",
  "channel_rename",
  "channel_archive",
  "channel_unarchive",
  "file_shared"
])

/** Slack's `channel_type` of message events. */
export const messageChannelType = (type: Access.ConversationType): string =>
  type === "public_channel" ? "channel" : type === "private_channel" ? "group" : type

const messageSubscription: Record<Access.ConversationType, string> = {
  public_channel: "message.channels",
  private_channel: "message.groups",
  im: "message.im",
  mpim: "message.mpim"
}

/** Events about a public channel itself, which `channels:read` may see without membership. */
const lifecycle = new Set(["channel_created", "channel_rename", "channel_archive", "channel_unarchive"])

export const isSubscribed = (app: Subscriber, eventType: string, channel: ChannelView): boolean =>
  eventType === "message"
    ? app.events.has("message") || app.events.has(messageSubscription[channel.type])
    : app.events.has(eventType)

/** Slack's scope for an event type in a channel of `type`. */
export const scopeFor = (eventType: string, type: Access.ConversationType): string => {
  if (eventType === "message") return Access.scopeFor(type, "history")
  if (eventType === "app_mention") return "app_mentions:read"
  if (eventType === "reaction_added" || eventType === "reaction_removed") return "reactions:read"
  if (eventType === "file_shared") return "files:read"
  return Access.scopeFor(type, "read")
}

/** Whether `app` may see `eventType` in `channel` (membership or, for public channels, scope). */
export const maySee = (app: Subscriber, eventType: string, channel: ChannelView): boolean => {
  if (channel.teamId !== app.teamId) return false
  if (channel.bots.has(app.botUserId)) return true
  if (channel.type !== "public_channel") return false
  return app.scopes.has("channels:history") || (lifecycle.has(eventType) && app.scopes.has("channels:read"))
}

const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")

/** Whether `text` mentions `userId` (`<@U…>` or `<@U…|name>`). */
export const mentions = (text: unknown, userId: string): boolean =>
  typeof text === "string" && new RegExp(`<@${escapeRegExp(userId)}(\\|[^>]*)?>`).test(text)

/** Message subtypes that are new messages someone wrote (an `app_mention` may come of them). */
const authored = new Set([undefined, "bot_message", "thread_broadcast", "file_share", "me_message"])

/** An event as an app receives it: Slack's shape where ours differs. */
export const forApps = (event: ChannelEvent, channel: ChannelView): Readonly<Record<string, unknown>> => {
  if (event.type === "message" && event["channel_type"] === undefined) return { ...event, channel_type: messageChannelType(channel.type) }
  if (event.type === "channel_created" || event.type === "channel_rename") {
    // Slack's channel events carry the channel as an object.
    const channelObject: Record<string, unknown> = { id: event.channel }
    for (const key of ["name", "created", "creator", "is_private"]) if (event[key] !== undefined) channelObject[key] = event[key]
    return { type: event.type, channel: channelObject, event_ts: event.event_ts, seq: event.seq }
  }
  return event
}

export interface Callback {
  /** Stable across redeliveries: the same channel event always has the same id. */
  readonly eventId: string
  readonly event: Readonly<Record<string, unknown>>
}

/** The callbacks `app` gets for `event` (none, the event, an `app_mention`, or both). */
export const callbacksFor = (app: Subscriber, event: ChannelEvent, channel: ChannelView): ReadonlyArray<Callback> => {
  const out: Array<Callback> = []
  const base = `Ev${event.channel}S${event.seq}`
  if (isSubscribed(app, event.type, channel) && app.scopes.has(scopeFor(event.type, channel.type)) && maySee(app, event.type, channel)) {
    out.push({ eventId: base, event: forApps(event, channel) })
  }
  const subtype = event["subtype"] as string | undefined
  if (
    event.type === "message" && authored.has(subtype) && app.events.has("app_mention") && app.scopes.has("app_mentions:read") &&
    channel.teamId === app.teamId && channel.bots.has(app.botUserId) && event["user"] !== app.botUserId && mentions(event["text"], app.botUserId)
  ) {
    const mention: Record<string, unknown> = { type: "app_mention", channel: event.channel, event_ts: event.event_ts, seq: event.seq }
    for (const key of ["user", "text", "ts", "team", "blocks", "thread_ts", "client_msg_id", "bot_id"]) if (event[key] !== undefined) mention[key] = event[key]
    out.push({ eventId: `${base}M`, event: mention })
  }
  return out
}

/** Seconds.micros to milliseconds. */
export const tsMillis = (ts: unknown): number => {
  const n = typeof ts === "string" ? Number(ts) : typeof ts === "number" ? ts : Number.NaN
  return Number.isFinite(n) ? Math.round(n * 1000) : Date.now()
}

/** The JSON body Slack POSTs for an event. */
export const envelope = (app: Pick<App, "id" | "teamId" | "botUserId" | "verificationToken">, callback: Callback): string =>
  JSON.stringify({
    token: app.verificationToken,
    team_id: app.teamId,
    api_app_id: app.id,
    event: callback.event,
    type: "event_callback",
    event_id: callback.eventId,
    event_time: Math.floor(tsMillis(callback.event["event_ts"]) / 1000),
    authorizations: [{ enterprise_id: null, team_id: app.teamId, user_id: app.botUserId, is_bot: true, is_enterprise_install: false }],
    is_ext_shared_channel: false,
    event_context: `${app.teamId}-${callback.event["channel"] as string}`
  })

// ---- sending one request ---------------------------------------------------------------

/** Slack's `X-Slack-Retry-Reason` values. */
export type FailureReason = "http_timeout" | "connection_failed" | "http_error" | "too_many_redirects" | "unknown_error"

export type Attempt =
  | { readonly ok: true }
  | { readonly ok: false; readonly reason: FailureReason; readonly status: number | undefined; readonly noRetry: boolean }

/**
 * Keep-alive connections to apps (node:http costs a fraction of fetch's CPU per
 * request), per egress policy: `public` ones resolve names through Egress.publicLookup.
 */
const agents = {
  any: {
    http: new http.Agent({ keepAlive: true, maxSockets: 256 }),
    https: new https.Agent({ keepAlive: true, maxSockets: 256 })
  },
  public: {
    http: new http.Agent({ keepAlive: true, maxSockets: 256, lookup: Egress.publicLookup }),
    https: new https.Agent({ keepAlive: true, maxSockets: 256, lookup: Egress.publicLookup })
  }
} satisfies Record<Egress.EgressPolicy, unknown>

/** Most bytes of an app's answer read (a command's immediate answer is a message). */
const maxAnswerBytes = 1_048_576

export interface PostResult {
  readonly attempt: Attempt
  readonly status: number | undefined
  readonly text: string
  readonly contentType: string
}

/**
 * POSTs a signed body to an app (`contentType` JSON for events, a form for commands) and
 * says how it went; never rejects. Redirects are not followed (Slack's are failures).
 */
export const postSigned = (input: {
  readonly url: string
  readonly body: string
  readonly contentType: string
  readonly signingSecret: string
  readonly timeoutMs: number
  /** Which addresses may be connected to (Egress.ts). */
  readonly egress: Egress.EgressPolicy
  readonly retry?: { readonly num: number; readonly reason: string }
  readonly signal?: AbortSignal
}): Promise<PostResult> =>
  new Promise<PostResult>((resolve) => {
    const failure = (reason: FailureReason, status?: number, noRetry = false, text = "", contentType = ""): PostResult => ({
      attempt: { ok: false, reason, status, noRetry },
      status,
      text,
      contentType
    })
    let url: URL
    try {
      url = new URL(input.url)
    } catch {
      return resolve(failure("unknown_error"))
    }
    // An IP literal is judged here; a name when its socket resolves it (publicLookup).
    if (!Egress.hostAllowed(url, input.egress)) return resolve(failure("connection_failed"))
    const body = Buffer.from(input.body, "utf8")
    const headers: Record<string, string | number> = {
      "content-type": input.contentType,
      "content-length": body.length,
      "user-agent": "Chorus (+Slack-compatible Events API)",
      ...SlackSignature.headers(input.signingSecret, input.body, Date.now()),
      ...(input.retry === undefined ? {} : { "x-slack-retry-num": String(input.retry.num), "x-slack-retry-reason": input.retry.reason })
    }
    let settled = false
    const finish = (result: PostResult) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      input.signal?.removeEventListener("abort", onAbort)
      resolve(result)
    }
    const https_ = url.protocol === "https:"
    const agent = agents[input.egress]
    const request = (https_ ? https : http).request(url, { method: "POST", headers, agent: https_ ? agent.https : agent.http })
    const timer = setTimeout(() => {
      finish(failure("http_timeout"))
      request.destroy()
    }, input.timeoutMs)
    const onAbort = () => {
      finish(failure("http_timeout"))
      request.destroy()
    }
    input.signal?.addEventListener("abort", onAbort, { once: true })
    request.on("error", () => finish(failure("connection_failed")))
    request.on("response", (res) => {
      const chunks: Array<Buffer> = []
      let size = 0
      res.on("data", (chunk: Buffer) => {
        if (size < maxAnswerBytes) chunks.push(chunk)
        size += chunk.length
      })
      res.on("error", () => finish(failure("connection_failed")))
      res.on("end", () => {
        const status = res.statusCode ?? 0
        const text = Buffer.concat(chunks).toString("utf8")
        const contentType = String(res.headers["content-type"] ?? "")
        if (status >= 200 && status < 300) return finish({ attempt: { ok: true }, status, text, contentType })
        finish(failure(status >= 300 && status < 400 ? "too_many_redirects" : "http_error", status, res.headers["x-slack-no-retry"] === "1", text, contentType))
      })
    })
    request.end(body)
  })

// ---- the delivery state machine --------------------------------------------------------

/** Settles a JetStream message once every delivery made of it has settled. */
export class Ticket {
  private remaining = 0
  private sealed = false
  private done = false
  constructor(private readonly onSettled: () => void) {}
  /** One more delivery depends on this message. */
  hold(): void {
    this.remaining++
  }
  release(): void {
    this.remaining--
    this.maybeSettle()
  }
  /** No more deliveries will be added. */
  seal(): void {
    this.sealed = true
    this.maybeSettle()
  }
  private maybeSettle() {
    if (this.sealed && this.remaining <= 0 && !this.done) {
      this.done = true
      this.onSettled()
    }
  }
}

export interface DeliveryOptions {
  /** Waits before each retry; its length is the number of retries. */
  readonly retryDelaysMs: ReadonlyArray<number>
  /** Requests in flight per app. */
  readonly maxInFlight: number
  /** An app failing for this long without a success is paused. */
  readonly pauseAfterMs: number
  /** An app with more deliveries queued than this is paused. */
  readonly maxPending: number
  /** Per-request timeout. */
  readonly requestTimeoutMs: number
}

/** The app as the state machine needs it. */
export interface Target {
  readonly id: string
  readonly requestUrl: string
  readonly signingSecret: string
}

interface Delivery {
  readonly ticket: Ticket
  readonly body: string
  readonly eventMs: number
  /** Whether an attempt was made. */
  attempted: boolean
  /** Retries made so far. */
  retries: number
  lastReason: FailureReason | undefined
  settled: boolean
}

export interface Figures {
  sent: number
  failed: number
  retried: number
  dropped: number
  lags: Array<number>
  lastDeliveryAt: number | undefined
}

const emptyFigures = (): Figures => ({ sent: 0, failed: 0, retried: 0, dropped: 0, lags: [], lastDeliveryAt: undefined })

/** Most lag samples kept between two flushes. */
const maxLagSamples = 4096

class Lane {
  target: Target
  paused = false
  /** The app no longer has a subscription: forgotten once its last attempt ends and its figures are taken. */
  removed = false
  /** Channel → its deliveries, oldest first; the head is in flight or waiting to retry. */
  readonly queues = new Map<string, Array<Delivery>>()
  /** Channels whose head may be sent now, in turn. */
  readonly ready: Array<string> = []
  readonly inFlight = new Set<string>()
  readonly timers = new Map<string, ReturnType<typeof setTimeout>>()
  pending = 0
  consecutiveFailures = 0
  failingSince: number | undefined
  figures = emptyFigures()
  abort = new AbortController()
  constructor(target: Target) {
    this.target = target
  }
}

export type Send = (target: Target, body: string, retry: { readonly num: number; readonly reason: string } | undefined, signal: AbortSignal) => Promise<Attempt>

/**
 * Per-app, per-channel ordered delivery with retries and pausing. Not an Effect: it is
 * driven by the consumer loop and its own timers, and every callback it makes is
 * synchronous except `send`.
 */
export class Deliveries {
  private readonly lanes = new Map<string, Lane>()
  private stopped = false

  constructor(
    private readonly options: DeliveryOptions,
    private readonly send: Send,
    private readonly onPause: (appId: string, reason: string) => void,
    private readonly now: () => number = Date.now
  ) {}

  /** Adds, updates, resumes or pauses lanes to match the subscriptions; removed apps lose their backlog. */
  setTargets(targets: ReadonlyArray<Target & { readonly paused: boolean }>): void {
    const seen = new Set<string>()
    for (const t of targets) {
      seen.add(t.id)
      const lane = this.lanes.get(t.id)
      if (lane === undefined) {
        const fresh = new Lane(t)
        fresh.paused = t.paused
        this.lanes.set(t.id, fresh)
        continue
      }
      lane.target = { id: t.id, requestUrl: t.requestUrl, signingSecret: t.signingSecret }
      lane.removed = false
      if (t.paused && !lane.paused) this.dropAll(lane)
      if (!t.paused && lane.paused) {
        lane.paused = false
        lane.consecutiveFailures = 0
        lane.failingSince = undefined
        lane.abort = new AbortController()
      }
    }
    for (const [id, lane] of this.lanes) {
      if (seen.has(id)) continue
      this.dropAll(lane)
      lane.removed = true
    }
  }

  /** Whether the app's events should be queued (false: paused or unknown). */
  accepts(appId: string): boolean {
    const lane = this.lanes.get(appId)
    return lane !== undefined && !lane.paused
  }

  /** Counts an event not queued because the app is paused. */
  countDropped(appId: string): void {
    const lane = this.lanes.get(appId)
    if (lane !== undefined) lane.figures.dropped++
  }

  enqueue(appId: string, channel: string, ticket: Ticket, body: string, eventMs: number): void {
    const lane = this.lanes.get(appId)
    if (lane === undefined || lane.paused || this.stopped) return
    ticket.hold()
    const delivery: Delivery = { ticket, body, eventMs, attempted: false, retries: 0, lastReason: undefined, settled: false }
    let queue = lane.queues.get(channel)
    if (queue === undefined) {
      queue = []
      lane.queues.set(channel, queue)
    }
    queue.push(delivery)
    lane.pending++
    if (queue.length === 1) lane.ready.push(channel)
    if (lane.pending > this.options.maxPending) {
      this.pause(lane, `backlog of ${lane.pending} events`)
      return
    }
    this.pump(lane)
  }

  /** Takes the figures gathered since the last call, per app. */
  takeFigures(): Map<string, Figures> {
    const out = new Map<string, Figures>()
    for (const [id, lane] of this.lanes) {
      const f = lane.figures
      if (f.sent + f.failed + f.retried + f.dropped > 0) out.set(id, f)
      lane.figures = emptyFigures()
    }
    for (const [id, lane] of [...this.lanes]) if (lane.removed && lane.inFlight.size === 0) this.lanes.delete(id)
    return out
  }

  /** Periodic check: pauses apps failing for too long even when no attempt ends. */
  tick(): void {
    for (const lane of this.lanes.values()) this.checkPause(lane)
  }

  pendingTotal(): number {
    let n = 0
    for (const lane of this.lanes.values()) n += lane.pending
    return n
  }

  pausedCount(): number {
    let n = 0
    for (const lane of this.lanes.values()) if (lane.paused) n++
    return n
  }

  /** Stops every timer and request; nothing more settles (unacked messages go to the next holder). */
  stop(): void {
    this.stopped = true
    for (const lane of this.lanes.values()) {
      for (const timer of lane.timers.values()) clearTimeout(timer)
      lane.timers.clear()
      lane.abort.abort()
    }
  }

  private pump(lane: Lane): void {
    while (!this.stopped && !lane.paused && lane.inFlight.size < this.options.maxInFlight && lane.ready.length > 0) {
      const channel = lane.ready.shift() as string
      const head = lane.queues.get(channel)?.[0]
      if (head === undefined || lane.inFlight.has(channel)) continue
      lane.inFlight.add(channel)
      head.attempted = true
      const retry = head.retries === 0 ? undefined : { num: head.retries, reason: head.lastReason ?? "unknown_error" }
      const signal = lane.abort.signal
      void this.send(lane.target, head.body, retry, signal).then(
        (attempt) => this.settleAttempt(lane, channel, head, attempt),
        () => this.settleAttempt(lane, channel, head, { ok: false, reason: "unknown_error", status: undefined, noRetry: false })
      )
    }
  }

  private settle(lane: Lane, delivery: Delivery): void {
    if (delivery.settled) return
    delivery.settled = true
    lane.pending--
    delivery.ticket.release()
  }

  /** Removes the head of `channel`'s queue and lets the next one go. */
  private advance(lane: Lane, channel: string): void {
    const queue = lane.queues.get(channel)
    if (queue === undefined) return
    queue.shift()
    if (queue.length === 0) lane.queues.delete(channel)
    else lane.ready.push(channel)
  }

  private settleAttempt(lane: Lane, channel: string, head: Delivery, attempt: Attempt): void {
    lane.inFlight.delete(channel)
    if (this.stopped) return
    const now = this.now()
    if (head.settled) {
      // Dropped while in flight (paused or removed); count what the attempt did.
      if (attempt.ok) lane.figures.sent++
      else lane.figures.failed++
      return
    }
    if (attempt.ok) {
      lane.figures.sent++
      if (lane.figures.lags.length < maxLagSamples) lane.figures.lags.push(Math.max(0, now - head.eventMs))
      lane.figures.lastDeliveryAt = now
      lane.consecutiveFailures = 0
      lane.failingSince = undefined
      this.settle(lane, head)
      this.advance(lane, channel)
      this.pump(lane)
      return
    }
    lane.consecutiveFailures++
    lane.failingSince ??= now
    if (this.checkPause(lane)) return
    if (!attempt.noRetry && head.retries < this.options.retryDelaysMs.length) {
      const delay = this.options.retryDelaysMs[head.retries] ?? 0
      head.retries++
      head.lastReason = attempt.reason
      lane.figures.retried++
      lane.inFlight.add(channel) // the channel waits for its head
      const timer = setTimeout(() => {
        lane.timers.delete(channel)
        lane.inFlight.delete(channel)
        if (this.stopped || lane.paused || head.settled) return
        lane.ready.unshift(channel)
        this.pump(lane)
      }, delay)
      lane.timers.set(channel, timer)
      this.pump(lane)
      return
    }
    lane.figures.failed++
    this.settle(lane, head)
    this.advance(lane, channel)
    this.pump(lane)
  }

  private checkPause(lane: Lane): boolean {
    if (lane.paused || lane.failingSince === undefined) return lane.paused
    if (lane.consecutiveFailures >= 2 && this.now() - lane.failingSince >= this.options.pauseAfterMs) {
      this.pause(lane, `no successful delivery for ${Math.round((this.now() - lane.failingSince) / 1000)} s (${lane.consecutiveFailures} failed attempts in a row)`)
      return true
    }
    return false
  }

  private pause(lane: Lane, reason: string): void {
    this.dropAll(lane)
    this.onPause(lane.target.id, reason)
  }

  /** Pauses the lane and settles its backlog: heads in flight count when they end, the rest are dropped. */
  private dropAll(lane: Lane): void {
    lane.paused = true
    for (const timer of lane.timers.values()) clearTimeout(timer)
    for (const channel of lane.timers.keys()) lane.inFlight.delete(channel)
    lane.timers.clear()
    for (const [channel, queue] of lane.queues) {
      for (const [i, delivery] of queue.entries()) {
        if (delivery.settled) continue
        if (i === 0 && lane.inFlight.has(channel)) {
          // Its attempt is still running: settle now, count when it ends.
          this.settle(lane, delivery)
          continue
        }
        if (delivery.attempted) lane.figures.failed++
        else lane.figures.dropped++
        this.settle(lane, delivery)
      }
    }
    lane.queues.clear()
    lane.ready.length = 0
  }
}

// ---- the worker --------------------------------------------------------------------------

/** Durable consumer of the EVENTS stream that delivers to apps. */
export const consumerName = "apps-delivery"

/** Core-NATS subject on which the apps methods say that subscriptions changed. */
export const changedSubject = (names: NatsNames): string => names.subject("apps.changed")

/** Channels whose audience is kept in memory. */
const channelCacheSize = 50_000
/** Events read from PostgreSQL at most per gap. */
const gapFillLimit = 1_000

export interface DeliveryMetrics {
  readonly deliveries: Prom.Counter<"outcome">
  readonly lag: Prom.Histogram
  readonly paused: Prom.Gauge
  readonly pending: Prom.Gauge
}

const makeMetrics = (registry: Prom.Registry): DeliveryMetrics => ({
  deliveries: new Prom.Counter({
    name: "chorus_app_event_deliveries_total",
    help: "Events API deliveries to apps, by outcome (sent, failed, retried, dropped)",
    labelNames: ["outcome"],
    registers: [registry]
  }),
  lag: new Prom.Histogram({
    name: "chorus_app_event_delivery_lag_seconds",
    help: "Time from a channel event to the app's 2xx answer",
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [registry]
  }),
  paused: new Prom.Gauge({ name: "chorus_apps_paused", help: "Apps whose event subscription is paused because their endpoint kept failing", registers: [registry] }),
  pending: new Prom.Gauge({ name: "chorus_app_event_deliveries_pending", help: "Event deliveries queued or in flight to apps", registers: [registry] })
})

const subscriberOf = (app: App): Subscriber => ({
  id: app.id,
  teamId: app.teamId,
  botUserId: app.botUserId,
  scopes: new Set(app.scopes),
  events: new Set(app.events)
})

const typeOfAudience = (a: ChannelAudience): Access.ConversationType =>
  Access.typeOf({ is_private: a.isPrivate, is_im: a.isIm, is_mpim: a.isMpim })

interface CachedChannel {
  readonly teamId: string
  readonly type: Access.ConversationType
  readonly bots: Set<string>
  /** Last seq routed (0: none yet). */
  lastSeq: number
}

const percentileOf = (sorted: ReadonlyArray<number>, p: number): number | undefined =>
  sorted.length === 0 ? undefined : sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]

/**
 * Runs delivery while this node holds shard 0, until the scope closes. One instance
 * of the returned effect per node.
 */
const run = Effect.gen(function*() {
  const config = yield* ChorusConfig
  const nats = yield* Nats
  const store = yield* Apps
  const sharding = yield* Sharding
  const metrics = makeMetrics((yield* RuntimeMetrics).registry)
  const runtime = yield* Effect.runtime<never>()
  const runFork = Runtime.runFork(runtime)
  const runPromise = Runtime.runPromise(runtime)

  const options: DeliveryOptions = {
    retryDelaysMs: config.appsRetryDelaysMs,
    maxInFlight: config.appsMaxInFlight,
    pauseAfterMs: Duration.toMillis(config.appsPauseAfter),
    maxPending: config.appsMaxPending,
    requestTimeoutMs: Duration.toMillis(config.appsRequestTimeout)
  }

  /** One term as the delivery worker: from taking shard 0 to losing it. */
  const term = Effect.gen(function*() {
    let byTeam = new Map<string, ReadonlyArray<{ readonly app: App; readonly subscriber: Subscriber }>>()
    let botIds: ReadonlyArray<string> = []
    let stale = true
    let reloading = false
    const channels = new Map<string, CachedChannel>()

    const deliveries = new Deliveries(
      options,
      async (target, body, retry, signal) =>
        (await postSigned({
          url: target.requestUrl,
          body,
          contentType: "application/json",
          signingSecret: target.signingSecret,
          timeoutMs: options.requestTimeoutMs,
          egress: config.appsEgress,
          ...(retry === undefined ? {} : { retry }),
          signal
        })).attempt,
      (appId, reason) => {
        metrics.paused.set(deliveries.pausedCount())
        runFork(
          store.pause(appId, reason).pipe(
            Effect.zipRight(Effect.logWarning("app paused: its endpoint keeps failing", { app: appId, reason })),
            Effect.catchAll((error) => Effect.logError("could not record an app's pause", { app: appId, error: String(error) }))
          )
        )
      }
    )

    // Reloads are serialised, and routing waits for one in progress, so an event that
    // follows a subscription change is routed with the change.
    const permit = yield* Effect.makeSemaphore(1)
    const reloadIfStale = permit.withPermits(1)(Effect.suspend(() => {
      if (!stale) return Effect.void
      stale = false
      reloading = true
      return Effect.gen(function*() {
        const list = yield* store.subscribed
        const teams = new Map<string, Array<{ readonly app: App; readonly subscriber: Subscriber }>>()
        for (const app of list) {
          const entry = { app, subscriber: subscriberOf(app) }
          const team = teams.get(app.teamId)
          if (team === undefined) teams.set(app.teamId, [entry])
          else team.push(entry)
        }
        byTeam = teams
        const bots = list.map((a) => a.botUserId).sort()
        if (bots.join(",") !== botIds.join(",")) channels.clear() // audiences were computed for other bots
        botIds = bots
        deliveries.setTargets(list.map((a) => ({ id: a.id, requestUrl: a.requestUrl ?? "", signingSecret: a.signingSecret, paused: a.deliveryStatus === "paused" })))
      }).pipe(
        Effect.catchAll((error) =>
          Effect.sync(() => (stale = true)).pipe(Effect.zipRight(Effect.logWarning("could not load app subscriptions", { error: String(error) })))
        ),
        Effect.ensuring(Effect.sync(() => (reloading = false)))
      )
    }))

    const notices: Subscription = nats.nc.subscribe(changedSubject(nats.names), {
      callback: () => {
        stale = true
        runFork(reloadIfStale)
      }
    })
    yield* Effect.addFinalizer(() => Effect.sync(() => notices.unsubscribe()))
    yield* reloadIfStale

    const audience = (channelId: string, atSeq: number) =>
      Effect.gen(function*() {
        const cached = channels.get(channelId)
        if (cached !== undefined) {
          channels.delete(channelId)
          channels.set(channelId, cached)
          return cached
        }
        const found = yield* store.channelAudience(channelId, botIds, atSeq)
        if (Option.isNone(found)) return undefined
        const entry: CachedChannel = { teamId: found.value.teamId, type: typeOfAudience(found.value), bots: new Set(found.value.bots), lastSeq: 0 }
        channels.set(channelId, entry)
        if (channels.size > channelCacheSize) {
          const oldest = channels.keys().next()
          if (oldest.done !== true) channels.delete(oldest.value)
        }
        return entry
      })

    /** Queues the callbacks of one event (its seq already checked). */
    const route = (event: ChannelEvent, channel: CachedChannel, ticket: Ticket) => {
      const user = event["user"]
      // A bot sees its own joining, and its own leaving.
      if (event.type === "member_joined_channel" && typeof user === "string" && botIds.includes(user)) channel.bots.add(user)
      const eventMs = tsMillis(event.event_ts)
      for (const { app, subscriber } of byTeam.get(channel.teamId) ?? []) {
        const callbacks = callbacksFor(subscriber, event, channel)
        if (callbacks.length === 0) continue
        if (!deliveries.accepts(app.id)) {
          deliveries.countDropped(app.id)
          continue
        }
        for (const callback of callbacks) deliveries.enqueue(app.id, event.channel, ticket, envelope(app, callback), eventMs)
      }
      if (event.type === "member_left_channel" && typeof user === "string") channel.bots.delete(user)
      channel.lastSeq = Math.max(channel.lastSeq, event.seq)
    }

    /**
     * The hot path, synchronous: an event of a channel already known, next in its seq,
     * with the subscriptions current. Anything else (a reload, a channel to look up, a
     * gap) takes `onMessage`. True when handled.
     */
    const fast = (m: JsMsg): boolean => {
      if (stale || reloading) return false
      let event: ChannelEvent
      try {
        event = m.json<ChannelEvent>()
      } catch {
        m.ack()
        return true
      }
      const skip = () => {
        m.ack()
        return true
      }
      if (typeof event.channel !== "string" || typeof event.seq !== "number" || byTeam.size === 0) return skip()
      const channel = channels.get(event.channel)
      if (channel === undefined) {
        if (typeof event["team"] === "string" && !byTeam.has(event["team"])) return skip()
        return false
      }
      if (!byTeam.has(channel.teamId)) return skip()
      if (channel.lastSeq > 0 && event.seq <= channel.lastSeq) return skip()
      if (channel.lastSeq > 0 && event.seq > channel.lastSeq + 1) return false
      const ticket = new Ticket(() => m.ack())
      route(event, channel, ticket)
      ticket.seal()
      return true
    }

    const onMessage = (m: JsMsg) =>
      Effect.gen(function*() {
        const ticket = new Ticket(() => m.ack())
        let event: ChannelEvent
        try {
          event = m.json<ChannelEvent>()
        } catch {
          return ticket.seal()
        }
        yield* reloadIfStale
        if (typeof event.channel !== "string" || typeof event.seq !== "number" || byTeam.size === 0) return ticket.seal()
        // Most events belong to workspaces without apps: no lookup for those.
        if (typeof event["team"] === "string" && !byTeam.has(event["team"]) && !channels.has(event.channel)) return ticket.seal()
        const channel = yield* audience(event.channel, event.seq)
        if (channel === undefined || !byTeam.has(channel.teamId)) return ticket.seal()
        // Seen already (a redelivery): at least once means once is enough here.
        if (channel.lastSeq > 0 && event.seq <= channel.lastSeq) return ticket.seal()
        if (channel.lastSeq > 0 && event.seq > channel.lastSeq + 1) {
          // A publish that never reached the stream: the record is channel_events.
          const missing = yield* store.channelEvents(event.channel, channel.lastSeq, event.seq, gapFillLimit)
          for (const e of missing) route(e as ChannelEvent, channel, ticket)
        }
        route(event, channel, ticket)
        ticket.seal()
      }).pipe(
        Effect.catchAll((error) =>
          // PostgreSQL is away: the message stays unacked, and the next term delivers it.
          Effect.logWarning("could not route a channel event to apps", { error: String(error) })
        )
      )

    // A fresh consumer from the previous one's ack floor (ensureConsumer made the first).
    const stream = nats.names.stream("EVENTS")
    yield* nats.call("apps consumer reset", async () => {
      // Only a consumer that does not exist means "from now" (someone deleted it); any
      // other failure (a timeout while the cluster fails over) must be retried, or a new
      // consumer from now would skip every event since the previous one's ack floor.
      const previous = await consumerInfo(nats, stream)
      if (previous !== undefined) await nats.jsm.consumers.delete(stream, consumerName)
      await nats.jsm.consumers.add(stream, consumerConfig(nats.names, options.maxPending, previous?.ack_floor.stream_seq))
    }).pipe(Effect.retry(Schedule.exponential("100 millis").pipe(Schedule.upTo("5 seconds"))))

    let consuming = true
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        consuming = false
        deliveries.stop()
      })
    )

    const consumer = yield* nats.call("apps consumer get", () => nats.js.consumers.get(stream, consumerName))
    const messages = yield* nats.call("apps consume", () => consumer.consume({ max_messages: 512 }))
    yield* Effect.addFinalizer(() => Effect.promise(() => messages.close()).pipe(Effect.ignore))

    const flush = Effect.gen(function*() {
      deliveries.tick()
      metrics.pending.set(deliveries.pendingTotal())
      metrics.paused.set(deliveries.pausedCount())
      for (const [appId, f] of deliveries.takeFigures()) {
        metrics.deliveries.inc({ outcome: "sent" }, f.sent)
        metrics.deliveries.inc({ outcome: "failed" }, f.failed)
        metrics.deliveries.inc({ outcome: "retried" }, f.retried)
        metrics.deliveries.inc({ outcome: "dropped" }, f.dropped)
        for (const lag of f.lags) metrics.lag.observe(lag / 1000)
        const sorted = [...f.lags].sort((a, b) => a - b)
        yield* store.addFigures(appId, {
          sent: f.sent,
          failed: f.failed,
          retried: f.retried,
          dropped: f.dropped,
          lagP50Ms: percentileOf(sorted, 50),
          lagP99Ms: percentileOf(sorted, 99),
          lastDeliveryAt: f.lastDeliveryAt === undefined ? undefined : new Date(f.lastDeliveryAt)
        }).pipe(Effect.catchAll((error) => Effect.logWarning("could not record delivery figures", { app: appId, error: String(error) })))
      }
    })
    yield* Effect.addFinalizer(() => flush)
    yield* Effect.forkScoped(Effect.repeat(flush, Schedule.spaced("1 second")))
    // A backstop for a lost notice.
    yield* Effect.forkScoped(Effect.repeat(Effect.sync(() => (stale = true)).pipe(Effect.zipRight(reloadIfStale)), Schedule.spaced("15 seconds")))

    yield* Effect.logInfo("delivering channel events to apps")
    yield* nats.call("apps consume loop", async () => {
      for await (const m of messages) {
        if (!consuming) break
        if (!fast(m)) await runPromise(onMessage(m))
      }
    })
  })

  // Lead while holding shard 0; stop at once when it goes (drain, lost lease).
  let current: Fiber.RuntimeFiber<void> | undefined
  const stopTerm = Effect.suspend(() => {
    const fiber = current
    current = undefined
    return fiber === undefined ? Effect.void : Fiber.interrupt(fiber)
  })
  yield* Effect.addFinalizer(() => stopTerm)
  yield* Effect.gen(function*() {
    const leads = (yield* sharding.held).some((s) => s.shard === 0) && !(yield* sharding.draining)
    // A term that ended by itself (its consumer went away) is started again.
    if (current !== undefined && current.unsafePoll() !== null) current = undefined
    if (leads && current === undefined) {
      current = yield* Effect.forkDaemon(
        term.pipe(Effect.scoped, Effect.catchAll((error) => Effect.logWarning("apps delivery term ended", { error: String(error) })))
      )
    } else if (!leads && current !== undefined) {
      yield* stopTerm
    }
  }).pipe(Effect.repeat(Schedule.spaced("500 millis")))
})

/** The delivery consumer's info, or undefined when it does not exist (any other error throws). */
const consumerInfo = (nats: NatsShape, stream: string) =>
  nats.jsm.consumers.info(stream, consumerName).catch((error: unknown) => {
    if (error instanceof Error && /not found/i.test(error.message)) return undefined
    throw error
  })

/** From just after `ackFloor`, or, with none, from the next event published. */
const consumerConfig = (names: NatsNames, maxPending: number, ackFloor: number | undefined) => ({
  durable_name: consumerName,
  ack_policy: AckPolicy.Explicit,
  ...(ackFloor === undefined
    ? { deliver_policy: DeliverPolicy.New }
    : { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: ackFloor + 1 }),
  filter_subject: `${names.cluster}.evt.ch.>`,
  max_ack_pending: Math.max(1_000, maxPending * 4),
  // Deliveries hold their message while they retry; a new term resets the consumer anyway.
  ack_wait: 10 * 60 * 1_000_000_000,
  max_deliver: -1
})

/** Runtime-config key recording that the cluster's delivery consumer was made (one token: no node's watch matches it). */
const consumerMadeKey = "apps-delivery-consumer-made"

/**
 * Makes the delivery consumer exist before the node serves. Its position is what keeps
 * events for apps: were it made only when a node first takes shard 0, everything
 * published before (a cluster's first seconds, the whole time no node held shard 0 on
 * a first start) would be skipped by a consumer "from now". Made once per cluster,
 * as recorded in the runtime-config bucket, and left to the terms afterwards: a node
 * starting while a term recreates it (between its delete and its add) must not make
 * one "from now" in between.
 */
const ensureConsumer = Effect.gen(function*() {
  const config = yield* ChorusConfig
  const nats = yield* Nats
  const stream = nats.names.stream("EVENTS")
  yield* nats.call("apps consumer ensure", async () => {
    if (await nats.runtimeConfig.get(consumerMadeKey) !== null) return
    if (await consumerInfo(nats, stream) === undefined) {
      // Two nodes starting together both try: the loser finds the winner's consumer.
      await nats.jsm.consumers.add(stream, consumerConfig(nats.names, config.appsMaxPending, undefined)).catch(async (error: unknown) => {
        if (await consumerInfo(nats, stream) === undefined) throw error
      })
    }
    await nats.runtimeConfig.put(consumerMadeKey, JSON.stringify({ at: Date.now() }))
  }).pipe(Effect.retry(Schedule.exponential("100 millis").pipe(Schedule.upTo("10 seconds"))))
})

/** The delivery consumer, made if missing; what serves requests is built after it. */
export const consumerLayer: Layer.Layer<never, NatsError, ChorusConfig | Nats> = Layer.effectDiscard(ensureConsumer)

/** The delivery worker of a node (it delivers only while the node holds shard 0). */
export const layer: Layer.Layer<never, never, ChorusConfig | Nats | Apps | Sharding | RuntimeMetrics> = Layer.scopedDiscard(
  Effect.forkScoped(Effect.scoped(run))
)
