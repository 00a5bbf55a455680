/**
 * bench:events — Events API delivery while chat runs at load, on one node (a real
 * process, NATS, PostgreSQL) with one app subscribed to `message.channels` and its
 * endpoint in this process. Two sources of channel events at once, for SECONDS seconds
 * after a short warm-up:
 *
 * - chat: messages sent over gateway sockets (one per channel) at CHAT_RATE/s in all,
 *   across CHAT_CHANNELS public channels — the real path (actor, PostgreSQL, publish);
 * - injected: RATE/s more channel events published straight on the channels' event
 *   subjects (`<cluster>.evt.ch.<id>`, as a channel actor publishes them, gap-free seqs)
 *   across CHANNELS other public channels — so the delivery worker is driven at the
 *   target rate whatever the chat path of this machine sustains.
 *
 * Every event must reach the app. Reported: events delivered per second, delivery lag
 * (an event's `event_ts` — its commit, or its injection — to its arrival at the
 * endpoint) p50/p99 overall and per source, chat send→ack latency, events never
 * delivered within DRAIN seconds after the load (lost), and deliveries received more
 * than once (at least once allows them).
 *
 * Usage: npm run bench:events [-- --rate 1000 --chat-rate 200 --seconds 20 --channels 50 --chat-channels 20 --drain 15]
 * Prints a table, then one JSON line.
 */
import { connect as natsConnect } from "@nats-io/transport-node"
import { execFileSync } from "node:child_process"
import fs from "node:fs"
import { performance } from "node:perf_hooks"
import { parseArgs } from "node:util"
import { startAppEndpoint } from "../test/apps/appEndpoint.ts"
import type { ChatSocket } from "../test/support/chat.ts"
import { connect, workspace } from "../test/support/chat.ts"
import { startCluster } from "../test/support/cluster.ts"
import { postApi } from "../test/support/http.ts"
import { sleep } from "../test/support/processes.ts"
import { natsUrl } from "../test/support/services.ts"
import { percentile, printTable } from "./report.ts"

const { values } = parseArgs({
  options: {
    rate: { type: "string", default: "1000" },
    "chat-rate": { type: "string", default: "200" },
    seconds: { type: "string", default: "20" },
    channels: { type: "string", default: "50" },
    "chat-channels": { type: "string", default: "20" },
    drain: { type: "string", default: "15" },
    warmup: { type: "string", default: "3" }
  }
})
const RATE = Number(values.rate)
const CHAT_RATE = Number(values["chat-rate"])
const SECONDS = Number(values.seconds)
const CHANNELS = Number(values.channels)
const CHAT_CHANNELS = Number(values["chat-channels"])
const DRAIN = Number(values.drain)
const WARMUP = Number(values.warmup)
const MAX_IN_FLIGHT = 2_000

const ok = async (url: string, method: string, args: Record<string, unknown>, token: string) => {
  const answer = await postApi(url, method, args, token)
  if (!answer.ok) throw new Error(`${method}: ${JSON.stringify(answer)}`)
  return answer as Record<string, any>
}

const ticksPerSecond = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100
/** CPU seconds (user + system) a process has used, from /proc. */
const cpuSecondsOf = (pid: number | undefined): number => {
  if (pid === undefined) return 0
  try {
    const fields = fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")
    return (Number(fields[11]) + Number(fields[12])) / ticksPerSecond
  } catch {
    return 0
  }
}

/** Slack's ts of a moment (ms, with µs from the performance clock). */
const tsOf = (ms: number): string => (ms / 1000).toFixed(6)

const cluster = await startCluster({
  nodes: 1,
  env: {
    CHORUS_LOG_LEVEL: "WARN",
    CHORUS_RATE_LIMITS: "off",
    CHORUS_APPS_EGRESS: "any", // the app endpoint listens on loopback
    CHORUS_WS_FRAME_RATE: "1000000",
    CHORUS_WS_FRAME_BURST: "1000000",
    CHORUS_SHARDS: "32",
    CHORUS_DB_POOL: "16",
    // Search indexing reads the same stream; it is not part of what this measures.
    CHORUS_SEARCH_INDEXER: "false"
  }
})
const endpoint = await startAppEndpoint({ record: false })
const nc = await natsConnect({ servers: natsUrl() })
const sockets: Array<ChatSocket> = []
try {
  const url = cluster.nodes[0]!.url
  const { team, users } = await workspace(url, ["injector"])
  const owner = users["owner"]!
  const injector = users["injector"]!
  const app = await ok(url, "apps.create", { name: "Bench", scopes: "channels:history" }, owner.token)
  const appId = app["app"].id as string
  await ok(url, "apps.eventSubscriptions.set", { app_id: appId, request_url: endpoint.url, events: "message.channels" }, owner.token)

  const suffix = Date.now().toString(36)
  const chatChannels: Array<string> = []
  for (let i = 0; i < CHAT_CHANNELS; i++) chatChannels.push((await ok(url, "conversations.create", { name: `chat-${i}-${suffix}` }, owner.token))["channel"].id)
  for (let i = 0; i < CHAT_CHANNELS; i++) sockets.push(await connect(url, owner.token))
  // Injected channels belong to a user without sockets, so no gateway forwards their events.
  const injected: Array<{ id: string; seq: number }> = []
  for (let i = 0; i < CHANNELS; i++) {
    const id = (await ok(url, "conversations.create", { name: `inj-${i}-${suffix}` }, injector.token))["channel"].id as string
    const info = await ok(url, "conversations.info", { channel: id }, injector.token)
    injected.push({ id, seq: Number(info["channel"].seq ?? 3) })
  }

  const sent = new Map<string, { readonly source: "chat" | "injected"; readonly measured: boolean }>()
  const ackLatencies: Array<number> = []
  let failed = 0
  let inFlight = 0
  const encoder = new TextEncoder()

  const sendChat = (i: number, measured: boolean) => {
    const channel = chatChannels[i % CHAT_CHANNELS]!
    const socket = sockets[i % CHAT_CHANNELS]!
    const began = performance.now()
    inFlight++
    socket.request({ type: "message", channel, text: `chat ${i}` }).then(
      (reply) => {
        inFlight--
        if (reply["ok"] === true) {
          sent.set(`${channel} ${reply["ts"] as string}`, { source: "chat", measured })
          if (measured) ackLatencies.push(performance.now() - began)
        } else failed++
      },
      () => {
        inFlight--
        failed++
      }
    )
  }

  const inject = (i: number, measured: boolean) => {
    const channel = injected[i % CHANNELS]!
    channel.seq++
    const ts = tsOf(performance.timeOrigin + performance.now())
    const event = { type: "message", channel: channel.id, seq: channel.seq, event_ts: ts, ts, user: injector.id, team: team.id, text: `injected ${i}`, channel_type: "channel" }
    nc.publish(`${cluster.name}.evt.ch.${channel.id}`, encoder.encode(JSON.stringify(event)))
    sent.set(`${channel.id} ${ts}`, { source: "injected", measured })
  }

  /** Both sources at their rates for `seconds`. */
  const load = async (scale: number, seconds: number, measured: boolean) => {
    const start = performance.now()
    let chat = 0
    let inj = 0
    const chatTotal = Math.round(CHAT_RATE * scale * seconds)
    const injTotal = Math.round(RATE * scale * seconds)
    while (chat < chatTotal || inj < injTotal) {
      const elapsed = (performance.now() - start) / 1000
      const chatDue = Math.min(chatTotal, Math.floor(elapsed * CHAT_RATE * scale))
      while (chat < chatDue && inFlight < MAX_IN_FLIGHT) sendChat(chat++, measured)
      const injDue = Math.min(injTotal, Math.floor(elapsed * RATE * scale))
      while (inj < injDue) inject(inj++, measured)
      await sleep(2)
    }
    while (inFlight > 0) await sleep(10)
  }

  await load(0.1, WARMUP, false)
  const nodePid = cluster.nodes[0]!.pid
  const cpuBefore = cpuSecondsOf(nodePid)
  const loadStart = Date.now()
  await load(1, SECONDS, true)
  const loadEnd = Date.now()

  const arrivals = () => {
    const first = new Map<string, number>()
    let duplicates = 0
    for (const r of endpoint.received) {
      const event = r.json?.["event"]
      if (r.json?.["type"] !== "event_callback" || event === undefined) continue
      const key = `${event.channel} ${event.event_ts}`
      if (first.has(key)) duplicates++
      else first.set(key, r.at)
    }
    return { first, duplicates }
  }
  const drainUntil = Date.now() + DRAIN * 1000
  while (Date.now() < drainUntil) {
    const { first } = arrivals()
    if ([...sent.keys()].every((k) => first.has(k))) break
    await sleep(200)
  }
  const nodeCpu = cpuSecondsOf(nodePid) - cpuBefore
  const { first, duplicates } = arrivals()

  const lags = { chat: [] as Array<number>, injected: [] as Array<number> }
  let lastArrival = loadStart
  for (const [key, { measured, source }] of sent) {
    const at = first.get(key)
    if (!measured || at === undefined) continue
    lags[source].push(at - Number(key.split(" ")[1]) * 1000)
    lastArrival = Math.max(lastArrival, at)
  }
  const all = [...lags.chat, ...lags.injected]
  const lost = [...sent.keys()].filter((k) => !first.has(k)).length
  const eventsPerSecond = all.length / ((lastArrival - loadStart) / 1000)
  const chatPerSecond = lags.chat.length / ((loadEnd - loadStart) / 1000)
  const stats = await ok(url, "apps.deliveryStats", { app_id: appId }, owner.token)

  const row = (name: string, values: ReadonlyArray<number>) => [
    name,
    values.length,
    Math.round(percentile(values, 50)),
    Math.round(percentile(values, 99)),
    Math.round(Math.max(...values))
  ]
  printTable(
    `bench:events — 1 node, one app (message.channels); ${RATE}/s injected over ${CHANNELS} channels + ${CHAT_RATE}/s chat over ${CHAT_CHANNELS} channels, ${SECONDS} s`,
    ["events", "delivered", "lag p50 ms", "lag p99 ms", "lag max ms"],
    [row("injected", lags.injected), row("chat", lags.chat), row("all", all)]
  )
  printTable("totals", ["events/s delivered", "node CPU ms/event", "chat msgs/s", "chat ack p50 ms", "chat ack p99 ms", "chat send failed", "lost", "duplicates"], [[
    Math.round(eventsPerSecond),
    (nodeCpu * 1000) / Math.max(1, all.length),
    Math.round(chatPerSecond),
    percentile(ackLatencies, 50),
    percentile(ackLatencies, 99),
    failed,
    lost,
    duplicates
  ]])
  console.log(`node-side figures: ${JSON.stringify(stats["apps"][0])}`)
  console.log(JSON.stringify({
    bench: "events",
    offered_injected_per_s: RATE,
    offered_chat_per_s: CHAT_RATE,
    events_per_s: Math.round(eventsPerSecond),
    delivery_lag_p50_ms: Math.round(percentile(all, 50)),
    delivery_lag_p99_ms: Math.round(percentile(all, 99)),
    chat_delivery_lag_p99_ms: Math.round(percentile(lags.chat, 99)),
    node_cpu_ms_per_event: Number(((nodeCpu * 1000) / Math.max(1, all.length)).toFixed(3)),
    chat_per_s: Math.round(chatPerSecond),
    chat_ack_p99_ms: Math.round(percentile(ackLatencies, 99)),
    lost,
    duplicates,
    chat_send_failed: failed
  }))
} finally {
  for (const s of sockets) s.close()
  await nc.close()
  await endpoint.close()
  await cluster.stopAll()
}
