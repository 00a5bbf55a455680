/**
 * Presence, typing, read state and rate limits end to end, on a 2-node cluster of real
 * processes (NATS, PostgreSQL), with Slack's WebClient and plain WebSocket clients:
 * - a user with sockets on both nodes stays active while either lives, goes away on
 *   `users.setPresence away`, and offline once both are gone;
 * - subscribers (presence_sub) see presence_change, non-subscribers do not;
 * - typing reaches the channel's other members, at most once per interval, and not at
 *   all past the member threshold;
 * - unread counts after messages, marks, edits and deletes, on both devices, with
 *   channel_marked / im_marked on every socket of the user;
 * - a flood from one token gets 429s (and a flooding socket an error, then a close)
 *   while another user's calls keep succeeding;
 * - a node killed -9: its users go offline by TTL.
 *
 * A short presence TTL (3 s, reports every 500 ms) keeps it quick; sockets ping every
 * second, as clients must (a socket silent for the TTL is closed).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { ChatSocket, ChatUser, Frame } from "../support/chat.ts"
import { connect, on, workspace } from "../support/chat.ts"
import type { ChorusCluster } from "../support/cluster.ts"
import { startCluster } from "../support/cluster.ts"
import { sleep } from "../support/processes.ts"
import { ringOwners, waitConverged } from "../support/runtime.ts"
import { postApi } from "../support/http.ts"
import { connect as natsConnect } from "@nats-io/transport-node"
import { actorIdOfUser, shardOfUser } from "../../src/actors/PresenceProtocol.ts"
import { natsUrl } from "../support/services.ts"

const TTL_MS = 3_000
const REPORT_MS = 500
/** Offline must be seen within TTL + a report interval, plus a failover and slack for a loaded machine. */
const OFFLINE_BOUND_MS = TTL_MS + REPORT_MS + 8_000

let cluster: ChorusCluster
let users: Record<string, ChatUser>
const sockets: Array<ChatSocket> = []
let pinger: NodeJS.Timeout | undefined

beforeAll(async () => {
  cluster = await startCluster({
    nodes: 2,
    env: {
      CHORUS_SHARDS: "8",
      CHORUS_PRESENCE_TTL_MS: String(TTL_MS),
      CHORUS_PRESENCE_REPORT_MS: String(REPORT_MS),
      CHORUS_TYPING_MAX_MEMBERS: "3",
      CHORUS_TYPING_INTERVAL_MS: "1500",
      CHORUS_POST_BURST: "5"
    }
  })
  await waitConverged(cluster.nodes[0]!.url, cluster.operatorToken, ["node-1", "node-2"])
  users = (await workspace(url(0), ["alice", "bob", "carol", "dave", "dana", "erin", "flood", "calm", "frank", "k1", "k2", "k3", "k4", "k5", "k6", "idle1", "quiet1"])).users
  // Clients ping: a socket silent for the TTL is closed.
  pinger = setInterval(() => {
    for (const s of sockets) {
      try {
        s.sendRaw(JSON.stringify({ type: "ping" }))
      } catch {
        // closed
      }
    }
  }, 1_000)
})

afterAll(async () => {
  if (pinger !== undefined) clearInterval(pinger)
  for (const s of sockets) s.close()
  await cluster?.stopAll()
})

const url = (i: number) => cluster.nodes[i]!.url
const user = (name: string, node = 0) => on(users[name]!, url(node))
const socketOf = async (name: string, node: number) => {
  const socket = await connect(url(node), users[name]!.token)
  sockets.push(socket)
  return socket
}
const presence = async (name: string, node = 0) =>
  (await user(name, node).web.users.getPresence({})) as unknown as Record<string, unknown>
const changesFor = (socket: ChatSocket, id: string): Array<string> =>
  socket.events
    .filter((e) => e["type"] === "presence_change" && (e["user"] === id || (Array.isArray(e["users"]) && (e["users"] as Array<string>).includes(id))))
    .map((e) => e["presence"] as string)
const isChange = (id: string, value: string) => (e: Frame) =>
  e["type"] === "presence_change" && e["presence"] === value && (e["user"] === id || (Array.isArray(e["users"]) && (e["users"] as Array<string>).includes(id)))

/** Polls `probe` until it holds. */
const eventually = async (probe: () => Promise<boolean>, timeoutMs: number, what: string) => {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (await probe()) return
    await sleep(100)
  }
  throw new Error(`not within ${timeoutMs} ms: ${what}`)
}

/** A raw Web API call: status, Retry-After and the answer. */
const raw = async (node: number, method: string, token: string, args: Record<string, unknown>) => {
  const res = await fetch(`${url(node)}/api/${method}`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify(args)
  })
  return { status: res.status, retryAfter: res.headers.get("retry-after"), body: (await res.json()) as Record<string, unknown> }
}

interface SniffedReport {
  readonly to: string
  readonly full: boolean
  readonly users: ReadonlyArray<{ readonly user: string; readonly connections: number }>
}

/** Records the presence reports sent over NATS (decision 0027), in order, until `stop`. */
const sniffReports = async () => {
  const nc = await natsConnect({ servers: natsUrl() })
  const seen: Array<SniffedReport> = []
  nc.subscribe(`${cluster.name}.req.>`, {
    callback: (error, msg) => {
      if (error !== null) return
      const envelope = JSON.parse(msg.string()) as { to: string; msg: { _tag?: string; full?: boolean; users?: SniffedReport["users"] } }
      if (envelope.to.startsWith("presence/") && envelope.msg._tag === "Report") {
        seen.push({ to: envelope.to, full: envelope.msg.full === true, users: envelope.msg.users ?? [] })
      }
    }
  })
  await nc.flush()
  return { seen, stop: () => nc.close() }
}

/** Presence reports sent over NATS during `ms`, by shard actor id. */
const reportsOverNats = async (ms: number): Promise<Map<string, number>> => {
  const sniffer = await sniffReports()
  try {
    await sleep(ms)
  } finally {
    await sniffer.stop()
  }
  const counts = new Map<string, number>()
  for (const report of sniffer.seen) counts.set(report.to, (counts.get(report.to) ?? 0) + 1)
  return counts
}

describe("presence", () => {
  // Runs first, before any socket of this file connects.
  it("an idle gateway reports over NATS only to the shards where it has users; the serving node keeps each actor's clock in process", async () => {
    // Four report intervals with no socket anywhere: every report is a local call. (A
    // report that failed during start-up is retried over NATS until it lands, so allow
    // a few windows for that to settle; the old behaviour never has a quiet one.)
    let quiet = await reportsOverNats(4 * REPORT_MS)
    for (let attempt = 0; attempt < 4 && quiet.size > 0; attempt++) quiet = await reportsOverNats(4 * REPORT_MS)
    expect([...quiet]).toEqual([])
    // A user with a socket on each node: the node not serving the user's shard reports
    // to it over NATS every interval, and to no other shard.
    const a = await socketOf("idle1", 0)
    const b = await socketOf("idle1", 1)
    const reports = await reportsOverNats(4 * REPORT_MS)
    expect([...reports.keys()]).toEqual([`presence/${actorIdOfUser(users["idle1"]!.id, 8)}`])
    expect([...reports.values()][0]).toBeGreaterThanOrEqual(2)
    // And the user is online, from either node.
    await eventually(async () => (await presence("idle1", 1))["presence"] === "active", OFFLINE_BOUND_MS, "idle1 active")
    a.close()
    b.close()
    await eventually(async () => (await presence("idle1", 0))["online"] === false, OFFLINE_BOUND_MS, "idle1 offline")
  })

  it("a user arriving at a gateway that was quiet toward their shard is reported in full, so the actor renews that gateway", async () => {
    const quiet = users["quiet1"]!
    const shard = shardOfUser(quiet.id, 8)
    const actor = `presence/${actorIdOfUser(quiet.id, 8)}`
    // The node not serving the user's shard: its reports go over NATS, where they are seen.
    const owners = await ringOwners(url(0), cluster.operatorToken)
    const remote = owners[shard] === cluster.nodes[0]!.id ? 1 : 0
    const sniffer = await sniffReports()
    try {
      const heardSoFar = () => sniffer.seen.filter((r) => r.to === actor).length
      // First the user is there, and leaves: the gateway has reported to the shard (so
      // no full report is owed from start-up), then sends it one empty report and goes
      // quiet: nothing for two intervals.
      const before = await socketOf("quiet1", remote)
      await eventually(async () => sniffer.seen.some((r) => r.to === actor && r.users.some((u) => u.user === quiet.id && u.connections === 1)), OFFLINE_BOUND_MS, "quiet1 reported")
      before.close()
      const deadline = Date.now() + OFFLINE_BOUND_MS
      let heard = heardSoFar()
      for (;;) {
        await sleep(2 * REPORT_MS)
        if (heardSoFar() === heard) break
        heard = heardSoFar()
        if (Date.now() > deadline) throw new Error(`the gateway kept reporting to ${actor} with nobody there`)
      }
      // The user comes back to the quiet gateway.
      await socketOf("quiet1", remote)
      await eventually(async () => heardSoFar() > heard, OFFLINE_BOUND_MS, "a report of quiet1")
      // A change alone would leave the actor counting the gateway from its last full
      // report, long ago: it could forget it, and the user, before the next interval.
      const first = sniffer.seen.filter((r) => r.to === actor)[heard]!
      expect(first.full).toBe(true)
      expect(first.users).toEqual([expect.objectContaining({ user: quiet.id, connections: 1 })])
    } finally {
      await sniffer.stop()
    }
    await eventually(async () => (await presence("quiet1", 0))["presence"] === "active", OFFLINE_BOUND_MS, "quiet1 active")
  })

  it("a user with sockets on two nodes: active while either lives, away on setPresence away, offline once both are gone; only subscribers hear of it", async () => {
    const alice = users["alice"]!.id
    const watcher = await socketOf("bob", 0)
    const bystander = await socketOf("carol", 1)
    // Subscribing answers the current presence first (alice is offline), then the reply.
    expect(await watcher.request({ type: "presence_sub", ids: [alice] })).toMatchObject({ ok: true })
    expect(changesFor(watcher, alice)).toEqual(["away"])

    const a1 = await socketOf("alice", 0)
    await watcher.waitFor(isChange(alice, "active"))
    const a2 = await socketOf("alice", 1)
    await eventually(async () => (await presence("alice", 1))["connection_count"] === 2, 5_000, "two connections")
    expect(await presence("alice")).toMatchObject({ ok: true, presence: "active", online: true, auto_away: false, manual_away: false, connection_count: 2 })
    expect(typeof (await presence("alice"))["last_activity"]).toBe("number")
    // Another user sees the presence only, as on Slack.
    const seen = (await user("bob").web.users.getPresence({ user: alice })) as unknown as Record<string, unknown>
    expect(seen).toMatchObject({ ok: true, presence: "active" })
    expect(seen["online"]).toBeUndefined()

    // One socket gone: still active, across several TTLs.
    a1.close()
    await eventually(async () => (await presence("alice", 1))["connection_count"] === 1, 5_000, "one connection left")
    await sleep(TTL_MS + REPORT_MS)
    expect(await presence("alice", 1)).toMatchObject({ presence: "active", online: true, connection_count: 1 })
    expect(changesFor(watcher, alice)).toEqual(["away", "active"])

    // Manual away, and back.
    await user("alice", 1).web.users.setPresence({ presence: "away" })
    await watcher.waitFor((e) => isChange(alice, "away")(e) && watcher.events.indexOf(e) > 0)
    expect(await presence("alice")).toMatchObject({ presence: "away", online: true, manual_away: true })
    await user("alice").web.users.setPresence({ presence: "auto" })
    await eventually(async () => changesFor(watcher, alice).length === 4, 10_000, "back to active")
    expect(changesFor(watcher, alice)).toEqual(["away", "active", "away", "active"])
    await expect(user("alice").web.users.setPresence({ presence: "busy" as never })).rejects.toThrow(/invalid_presence/)

    // Both gone: offline.
    a2.close()
    await eventually(async () => changesFor(watcher, alice).length === 5, OFFLINE_BOUND_MS, "offline after both sockets closed")
    expect(changesFor(watcher, alice).at(-1)).toBe("away")
    expect(await presence("alice")).toMatchObject({ presence: "away", online: false, connection_count: 0 })
    expect((await presence("alice"))["last_activity"]).toBeUndefined()

    // Never subscribed: never told.
    expect(bystander.events.filter((e) => e["type"] === "presence_change")).toEqual([])
    await expect(user("bob").web.users.getPresence({ user: "U0NOBODY00" })).rejects.toThrow(/user_not_found/)
  })

  it("presence_sub replaces the list, in the batched form when several users change at once", async () => {
    const [dave, erin, frank] = [users["dave"]!.id, users["erin"]!.id, users["frank"]!.id]
    const watcher = await socketOf("carol", 0)
    await watcher.request({ type: "presence_sub", ids: [dave, erin] })
    // Both offline: one batched presence_change.
    expect(watcher.events.filter((e) => e["type"] === "presence_change")).toEqual([{ type: "presence_change", users: [dave, erin], presence: "away" }])
    await watcher.request({ type: "presence_sub", ids: [frank] })
    const d = await socketOf("dave", 1)
    const f = await socketOf("frank", 1)
    await watcher.waitFor(isChange(frank, "active"))
    await sleep(1_000)
    expect(changesFor(watcher, dave)).toEqual(["away"]) // no longer subscribed
    d.close()
    f.close()
    await watcher.waitFor((e) => isChange(frank, "away")(e) && changesFor(watcher, frank).length === 2, OFFLINE_BOUND_MS)
  })
})

describe("typing", () => {
  it("reaches the other members once per interval; not past the member threshold (3)", async () => {
    const [alice, bob, carol] = [user("alice"), user("bob"), user("carol")]
    const small = (await alice.web.conversations.create({ name: "typing-small" })).channel!.id!
    await alice.web.conversations.invite({ channel: small, users: `${bob.id},${carol.id}` })
    const big = (await alice.web.conversations.create({ name: "typing-big" })).channel!.id!
    await alice.web.conversations.invite({ channel: big, users: `${bob.id},${carol.id},${users["dave"]!.id}` })
    const sa = await socketOf("alice", 0)
    const sb = await socketOf("bob", 1)
    const sc = await socketOf("carol", 0)
    const sa2 = await socketOf("alice", 1) // alice's second device

    expect(await sa.request({ type: "typing", channel: small })).toMatchObject({ ok: true })
    expect(await sa2.request({ type: "typing", channel: small })).toMatchObject({ ok: true }) // same user, other node: dropped
    expect(await sa.request({ type: "typing", channel: small })).toMatchObject({ ok: true }) // within the interval: dropped
    await sb.waitFor((e) => e["type"] === "user_typing" && e["channel"] === small)
    await sc.waitFor((e) => e["type"] === "user_typing" && e["channel"] === small)
    expect(await sa.request({ type: "typing", channel: big })).toMatchObject({ ok: true })
    await sleep(1_000)
    const typed = (s: ChatSocket, channel: string) => s.events.filter((e) => e["type"] === "user_typing" && e["channel"] === channel)
    expect(typed(sb, small)).toEqual([{ type: "user_typing", channel: small, user: alice.id }])
    expect(typed(sc, small)).toHaveLength(1)
    expect(typed(sa, small)).toEqual([]) // not to the typist
    expect(typed(sb, big)).toEqual([]) // four members: over the threshold
    expect(typed(sc, big)).toEqual([])
    // After the interval, again.
    await sleep(600)
    await sb.request({ type: "typing", channel: small })
    await sa.waitFor((e) => e["type"] === "user_typing" && e["user"] === bob.id)
  })
})

describe("read state", () => {
  it("unread counts after messages, marks, edits and deletes, on both devices", async () => {
    const dana = user("dana")
    const danaOn2 = user("dana", 1)
    const erin = user("erin", 1)
    const channel = (await erin.web.conversations.create({ name: "unread-e2e" })).channel!.id!
    await erin.web.conversations.invite({ channel, users: dana.id })
    const d1 = await socketOf("dana", 0)
    const d2 = await socketOf("dana", 1)
    const info = async (node = 0) => (await user("dana", node).web.conversations.info({ channel })).channel as Record<string, unknown>
    const mine = async () => {
      const list = await dana.web.users.conversations({ types: "public_channel,private_channel,im" })
      return (list.channels as Array<Record<string, unknown>>).find((c) => c["id"] === channel)!
    }
    // Caught up with the channel so far (its join messages).
    const latest = (await dana.web.conversations.history({ channel, limit: 1 })).messages![0]!.ts!
    await dana.web.conversations.mark({ channel, ts: latest })
    expect(await info()).toMatchObject({ last_read: latest, unread_count: 0, unread_count_display: 0 })

    const m1 = await erin.web.chat.postMessage({ channel, text: "one" })
    const m2 = await erin.web.chat.postMessage({ channel, text: "two" })
    const m3 = await erin.web.chat.postMessage({ channel, text: "three" })
    await erin.web.chat.postMessage({ channel, text: "a reply", thread_ts: m1.ts! }) // replies are not unread
    expect(await info()).toMatchObject({ unread_count: 3, unread_count_display: 3 })
    expect(await info(1)).toMatchObject({ unread_count: 3, unread_count_display: 3 })
    expect(await mine()).toMatchObject({ unread_count: 3, unread_count_display: 3 })

    // A mark on one device reaches both.
    await danaOn2.web.conversations.mark({ channel, ts: m2.ts! })
    for (const s of [d1, d2]) {
      const marked = await s.waitFor((e) => e["type"] === "channel_marked" && e["channel"] === channel && e["ts"] === m2.ts)
      expect(marked).toMatchObject({ unread_count: 1, unread_count_display: 1 })
    }
    expect(await info()).toMatchObject({ last_read: m2.ts, unread_count: 1, unread_count_display: 1 })
    expect(await mine()).toMatchObject({ last_read: m2.ts, unread_count: 1 })

    // An edit changes nothing; a delete counts down; a new message counts up; one's own is not displayed.
    await erin.web.chat.update({ channel, ts: m3.ts!, text: "three, edited" })
    expect(await info(1)).toMatchObject({ unread_count: 1, unread_count_display: 1 })
    await erin.web.chat.delete({ channel, ts: m3.ts! })
    expect(await info(1)).toMatchObject({ unread_count: 0, unread_count_display: 0 })
    await erin.web.chat.postMessage({ channel, text: "four" })
    await dana.web.chat.postMessage({ channel, text: "mine" })
    expect(await info()).toMatchObject({ unread_count: 2, unread_count_display: 1 })
    expect(await mine()).toMatchObject({ unread_count: 2, unread_count_display: 1 })

    // Marking back (as unread) works too.
    await dana.web.conversations.mark({ channel, ts: m1.ts! })
    expect(await info(1)).toMatchObject({ last_read: m1.ts, unread_count: 3, unread_count_display: 2 })

    // A DM: im_marked.
    const dm = (await erin.web.conversations.open({ users: dana.id })).channel!.id!
    const hi = await erin.web.chat.postMessage({ channel: dm, text: "hi" })
    await dana.web.conversations.mark({ channel: dm, ts: hi.ts! })
    await d2.waitFor((e) => e["type"] === "im_marked" && e["channel"] === dm)

    // Not a member, not visible, not a ts.
    const other = (await erin.web.conversations.create({ name: "unread-other" })).channel!.id!
    await expect(dana.web.conversations.mark({ channel: other, ts: m1.ts! })).rejects.toThrow(/not_in_channel/)
    const secret = (await erin.web.conversations.create({ name: "unread-secret", is_private: true })).channel!.id!
    await expect(dana.web.conversations.mark({ channel: secret, ts: m1.ts! })).rejects.toThrow(/channel_not_found/)
    await expect(dana.web.conversations.mark({ channel, ts: "yesterday" })).rejects.toThrow(/invalid_timestamp/)
  })

  it("being added to a channel reaches every device of the user, and its messages follow at once", async () => {
    const erin = user("erin")
    const d1 = await socketOf("dana", 0)
    const d2 = await socketOf("dana", 1)
    const channel = (await erin.web.conversations.create({ name: "joined-e2e" })).channel!.id!
    await erin.web.conversations.invite({ channel, users: users["dana"]!.id })
    for (const s of [d1, d2]) await s.waitFor((e) => e["type"] === "channel_joined" && (e["channel"] as { id?: string })?.id === channel)
    const posted = await erin.web.chat.postMessage({ channel, text: "welcome" })
    for (const s of [d1, d2]) await s.waitFor((e) => e["type"] === "message" && e["ts"] === posted.ts)
  })
})

describe("rate limits", () => {
  it("a flood from one token gets 429s with Retry-After while another user's calls keep succeeding", async () => {
    const flood = users["flood"]!
    const calm = users["calm"]!
    const channel = (await user("flood").web.conversations.create({ name: "flood-e2e" })).channel!.id!
    await user("flood").web.conversations.invite({ channel, users: calm.id })

    const floodPosts = Array.from({ length: 40 }, (_, i) => raw(0, "chat.postMessage", flood.token, { channel, text: `flood ${i}` }))
    const floodInfos = Array.from({ length: 80 }, () => raw(0, "conversations.info", flood.token, { channel }))
    const calmPosts: Array<Awaited<ReturnType<typeof raw>>> = []
    const calmInfos: Array<Awaited<ReturnType<typeof raw>>> = []
    for (let i = 0; i < 5; i++) {
      calmPosts.push(await raw(0, "chat.postMessage", calm.token, { channel, text: `calm ${i}` }))
      calmInfos.push(await raw(0, "conversations.info", calm.token, { channel }))
    }
    const posts = await Promise.all(floodPosts)
    const infos = await Promise.all(floodInfos)

    const limited = [...posts, ...infos].filter((r) => r.status === 429)
    expect(posts.filter((r) => r.status === 429).length).toBeGreaterThan(0)
    expect(infos.filter((r) => r.status === 429).length).toBeGreaterThan(0)
    for (const r of limited) {
      expect(r.body).toEqual({ ok: false, error: "ratelimited" })
      expect(Number(r.retryAfter)).toBeGreaterThanOrEqual(1)
    }
    // The burst went through.
    expect(posts.filter((r) => r.status === 200 && r.body["ok"] === true).length).toBe(5)
    expect(calmPosts.map((r) => [r.status, r.body["ok"]])).toEqual(Array.from({ length: 5 }, () => [200, true]))
    expect(calmInfos.every((r) => r.status === 200 && r.body["ok"] === true)).toBe(true)
  })

  it("a flooding socket gets ratelimited errors, then a close; other sockets carry on", async () => {
    const flooder = await socketOf("flood", 1)
    const calm = await socketOf("calm", 1)
    for (let i = 0; i < 400; i++) flooder.sendRaw(JSON.stringify({ type: "ping", id: `f${i}` }))
    const closed = await flooder.closed
    expect(closed.code).toBe(4003)
    expect(flooder.events.some((e) => e["type"] === "error" && (e["error"] as { code?: string })?.code === "ratelimited")).toBe(true)
    expect(await calm.request({ type: "ping" })).toMatchObject({ type: "pong" })
  })
})

describe("a node killed -9", () => {
  it("its users go offline by TTL, whether their presence actor lived on it (failover) or on the survivor", async () => {
    // Users whose presence actor is on node-2 (it moves to node-1) and on node-1 (it stays).
    const ownerOf = async (name: string) =>
      (await postApi(url(0), "cluster.placement", { address: `presence/${actorIdOfUser(users[name]!.id, 8)}` }, cluster.operatorToken))["node"]
    const candidates = ["k1", "k2", "k3", "k4", "k5", "k6"]
    const owners = await Promise.all(candidates.map(ownerOf))
    const picked = [candidates[owners.indexOf("node-2")], candidates[owners.indexOf("node-1")]].filter((n): n is string => n !== undefined)
    expect(picked.length).toBeGreaterThan(0)
    const ids = picked.map((n) => users[n]!.id)
    const watcher = await socketOf("bob", 0)
    await watcher.request({ type: "presence_sub", ids })
    for (const name of picked) await socketOf(name, 1)
    for (const id of ids) await watcher.waitFor(isChange(id, "active"))
    await cluster.nodes[1]!.kill("SIGKILL")
    const killedAt = Date.now()
    for (const id of ids) {
      await watcher.waitFor((e) => isChange(id, "away")(e) && changesFor(watcher, id).at(-1) === "away", OFFLINE_BOUND_MS)
    }
    expect(Date.now() - killedAt).toBeLessThan(OFFLINE_BOUND_MS)
    for (const name of picked) await eventually(async () => (await presence(name))["online"] === false, 5_000, `${name} offline`)
  })
})
