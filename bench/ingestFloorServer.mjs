// The leanest chat node the design allows, for `bench:ingest-floor` (plain JavaScript: no
// Effect, no runtime, no actor, no auth, one process). Per posted message it does only
// what the issue and ARCHITECTURE.md require of a persisted, delivered message:
//   - a WebSocket frame in (`ws`), JSON-parsed and checked;
//   - the channel's next seq and a strictly increasing ts (state in a Map);
//   - group commit: while one transaction is in flight the next messages queue, then go
//     as ONE query text (messages rows, channel_events rows, channels.last_seq) — the
//     same rows, columns and indexes as Chorus's schema;
//   - the ack frame to the sender once committed;
//   - the event published once, core NATS and fire-and-forget as Chorus's EventPublisher
//     does, captured by the EVENTS stream (file storage), and delivered back through this node's one interest subscription to the member's
//     socket (the sender is the channel's member);
//   - with INDEX=1, a durable consumer feeding the PostgreSQL search index in batches
//     (ack-all), as the search indexer does.
// Everything a real node adds (auth, permissions, placement, leases, fencing, the
// command mailbox, retries, metrics, logs) is left out: this is a floor, not a design.
// With ECHO=1 it only parses each frame and answers it (no PostgreSQL, no NATS): what
// the WebSocket side alone costs.
// env: PORT DATABASE_URL NATS_URL PREFIX STREAM INDEX ECHO
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream"
import { connect } from "@nats-io/transport-node"
import pg from "pg"
import { WebSocketServer } from "ws"

const { PORT, DATABASE_URL, NATS_URL, PREFIX, STREAM } = process.env
const indexing = process.env.INDEX === "1"
const echo = process.env.ECHO === "1"

const db = new pg.Client({ connectionString: DATABASE_URL })
await db.connect()
const nc = await connect({ servers: NATS_URL })
const js = jetstream(nc)
const jsm = await jetstreamManager(nc)

const literal = (text) => {
  const quoted = text.includes("'") ? text.replace(/'/g, "''") : text
  return text.includes("\\") ? ` E'${quoted.replace(/\\/g, "\\\\")}'` : `'${quoted}'`
}

/** channel id → { seq, lastMicros, sockets } */
const channels = new Map()
let queued = []
let committing = false
let failures = 0

const nextTs = (channel) => {
  const micros = Math.max(Date.now() * 1000, channel.lastMicros + 1)
  channel.lastMicros = micros
  const s = String(micros)
  return `${s.slice(0, -6)}.${s.slice(-6)}`
}

const commit = async () => {
  committing = true
  while (queued.length > 0) {
    const group = queued
    queued = []
    const now = Date.now()
    const messages = []
    const events = []
    const last = new Map()
    for (const m of group) {
      messages.push(`(${literal(m.channel)},'${m.ts}',${m.seq},'T1',${literal(m.user)},${literal(m.text)},${literal(m.clientMsgId)})`)
      events.push(`(${literal(m.channel)},${m.seq},'message',${literal(m.event)}::jsonb,${now})`)
      last.set(m.channel, m.seq)
    }
    const lastRows = [...last].map(([id, seq]) => `(${literal(id)},${seq}::bigint)`)
    const text = `BEGIN;
INSERT INTO messages (channel_id, ts, seq, team_id, user_id, text, client_msg_id) VALUES ${messages.join(",")};
INSERT INTO channel_events (channel_id, seq, type, event, created_at) VALUES ${events.join(",")};
UPDATE channels SET last_seq = v.seq FROM (VALUES ${lastRows.join(",")}) AS v(id, seq) WHERE channels.id = v.id;
COMMIT`
    try {
      await db.query(text)
    } catch (error) {
      failures++
      await db.query("ROLLBACK").catch(() => undefined)
      for (const m of group) m.socket.send(`{"ok":false,"reply_to":${m.id},"error":"internal_error"}`)
      console.error("commit failed", String(error))
      continue
    }
    for (const m of group) {
      m.socket.send(`{"ok":true,"reply_to":${m.id},"channel":"${m.channel}","ts":"${m.ts}"}`)
      nc.publish(`${PREFIX}.evt.ch.${m.channel}`, m.event)
    }
  }
  committing = false
}

// The node's interest subscription: each event goes, as it came, to the channel's local sockets.
nc.subscribe(`${PREFIX}.evt.ch.>`, {
  callback: (error, msg) => {
    if (error !== null) return
    const channel = channels.get(msg.subject.slice(PREFIX.length + 8))
    if (channel === undefined) return
    const text = msg.string()
    for (const socket of channel.sockets) socket.send(text)
  }
})

if (indexing) {
  await jsm.consumers.add(STREAM, { durable_name: "indexer", ack_policy: AckPolicy.All, deliver_policy: DeliverPolicy.New, max_ack_pending: 20_000 })
  const consumer = await js.consumers.get(STREAM, "indexer")
  // A connection of its own, as the indexer has in a node's pool: its batches never queue behind commits.
  const indexDb = new pg.Client({ connectionString: DATABASE_URL })
  await indexDb.connect()
  let pending = []
  let writing = false
  const write = async () => {
    writing = true
    while (pending.length > 0) {
      const batch = pending
      pending = []
      const rows = batch.map((m) => m.json())
      await indexDb.query(
        `INSERT INTO search_documents (channel_id, ts, team_id, user_id, text, version)
         SELECT channel, ts, 'T1', "user", text, seq FROM jsonb_to_recordset($1::jsonb) AS r(channel text, ts text, "user" text, text text, seq bigint)
         ON CONFLICT (channel_id, ts) DO NOTHING`,
        [JSON.stringify(rows)]
      )
      batch[batch.length - 1].ack()
    }
    writing = false
  }
  void consumer.consume({
    max_messages: 1_000,
    callback: (m) => {
      pending.push(m)
      if (!writing) void write().catch((error) => {
        failures++
        writing = false
        console.error("index failed", String(error))
      })
    }
  })
}

const wss = new WebSocketServer({ port: Number(PORT), maxPayload: 64 * 1024 })
wss.on("connection", (socket, request) => {
  const user = new URL(request.url ?? "/", "http://x").searchParams.get("user") ?? "U0"
  socket.on("message", (data) => {
    let frame
    try {
      frame = JSON.parse(data.toString())
    } catch {
      return socket.send(`{"type":"error","error":"invalid_json"}`)
    }
    if (frame.type !== "message" || typeof frame.channel !== "string" || typeof frame.text !== "string" || frame.text.length > 40_000) {
      return socket.send(`{"ok":false,"reply_to":${Number(frame.id) || 0},"error":"invalid_arguments"}`)
    }
    let channel = channels.get(frame.channel)
    if (channel === undefined) {
      channel = { seq: 0, lastMicros: 0, sockets: new Set() }
      channels.set(frame.channel, channel)
    }
    channel.sockets.add(socket)
    const seq = ++channel.seq
    const ts = nextTs(channel)
    const clientMsgId = typeof frame.client_msg_id === "string" ? frame.client_msg_id : `${ts}`
    if (echo) return socket.send(`{"ok":true,"reply_to":${Number(frame.id)},"channel":"${frame.channel}","ts":"${ts}"}`)
    const event = JSON.stringify({ type: "message", channel: frame.channel, user, text: frame.text, ts, seq, client_msg_id: clientMsgId })
    queued.push({ socket, id: Number(frame.id), channel: frame.channel, seq, ts, user, text: frame.text, clientMsgId, event })
    if (!committing) void commit()
  })
})
setInterval(() => {
  if (failures > 0) console.error(`failures so far: ${failures}`)
}, 5_000).unref()
wss.on("listening", () => console.log("ready"))
