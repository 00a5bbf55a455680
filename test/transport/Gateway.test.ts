// The WebSocket gateway over real NATS and PostgreSQL, in process: tickets and
// `rtm.connect`, the frame protocol, fan-out with dedupe and gap filling, membership
// changes (invariant 5), resume (invariant 2), and the bounds (invariant 6).

import { afterAll, beforeAll, describe, expect, it } from "vitest"
import WebSocket from "ws"
import * as Ids from "../../src/domain/Ids.ts"
import { freshDatabase, postApi, uniqueCluster, type FreshDatabase } from "../support/index.ts"
import { dropCluster, sleep, startGatewayNode, TestSocket, type GatewayNode } from "./gatewayHarness.ts"

let db: FreshDatabase
let node: GatewayNode
const team = Ids.make("T")
// One NATS namespace for every node of this file (each provisions the cluster's streams).
const cluster = uniqueCluster()

beforeAll(async () => {
  db = await freshDatabase({ prefix: "gateway" })
  node = await startGatewayNode({ databaseUrl: db.url, cluster })
})
afterAll(async () => {
  await node?.close()
  await db?.drop()
  await dropCluster(cluster)
})

const user = () => Ids.make("U")

/** A channel with `members`, all joined (their join events committed and published). */
async function channelWith(members: ReadonlyArray<string>, opts: { readonly isPrivate?: boolean } = {}): Promise<string> {
  const channel = await node.createChannel(team, opts)
  for (const m of members) await node.join(channel, m, { notify: false })
  return channel
}

/** Every event `seq` from `from` to `to`, once each, in order. */
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i)

describe("connecting", () => {
  it("rtm.connect answers a single-use ticket URL on this node, self and team; hello comes first", async () => {
    const signup = await postApi(node.url, "auth.signup", { email: "rtm@gw.test", password: "correct horse battery", name: "Rita Mae" })
    expect(signup.ok).toBe(true)
    const created = await postApi(node.url, "team.create", { name: "Gateway", domain: "gateway" }, signup["token"] as string)
    expect(created.ok).toBe(true)
    const token = created["token"] as string
    const answer = await postApi(node.url, "rtm.connect", {}, token)
    expect(answer).toMatchObject({
      ok: true,
      self: { id: signup["user_id"], name: expect.any(String) },
      team: { id: (created["team"] as { id: string }).id, name: "Gateway", domain: "gateway" }
    })
    const url = answer["url"] as string
    expect(url).toMatch(new RegExp(`^ws://127\\.0\\.0\\.1:${node.port}/ws\\?ticket=[A-Za-z0-9_-]{40,}$`))

    const socket = await TestSocket.open(url)
    await socket.next((f) => f["type"] === "hello")
    expect(socket.frames[0]).toEqual({ type: "hello" })
    expect(socket.raw[0]).toBe(`{"type":"hello"}`)
    // Single use.
    await expect(TestSocket.open(url)).rejects.toThrow(/HTTP 401/)
    socket.close()

    expect(await postApi(node.url, "rtm.connect", {})).toMatchObject({ ok: false, error: "not_authed" })
    expect(await postApi(node.url, "rtm.connect", {}, signup["token"] as string)).toMatchObject({ ok: false, error: "not_allowed_token_type" })
  })

  it("refuses a missing or unknown ticket with 401, and the HTTP API still answers on the same port", async () => {
    await expect(TestSocket.open(`ws://127.0.0.1:${node.port}/ws`)).rejects.toThrow(/HTTP 401/)
    await expect(TestSocket.open(`ws://127.0.0.1:${node.port}/ws?ticket=nope`)).rejects.toThrow(/HTTP 401/)
    // Upgrades elsewhere are not the gateway's.
    await expect(TestSocket.open(`ws://127.0.0.1:${node.port}/api/rtm.connect`)).rejects.toThrow()
    const health = await fetch(`${node.url}/healthz`)
    expect(health.status).toBe(200)
  })

  it("answers ping with pong echoing the ping's fields", async () => {
    const socket = await node.connect(user(), team)
    socket.send({ id: 7, type: "ping", time: 1234 })
    expect(await socket.next((f) => f["type"] === "pong")).toEqual({ type: "pong", reply_to: 7, time: 1234 })
    socket.close()
  })
})

describe("fan-out", () => {
  it("delivers a channel's events to every member's socket in order, with the published bytes, one subscription per node", async () => {
    const [a, b, c] = [user(), user(), user()]
    const channel = await channelWith([a, b])
    const other = await channelWith([c])
    const sa = await node.connect(a, team)
    const sb1 = await node.connect(b, team)
    const sb2 = await node.connect(b, team) // a second device
    const sc = await node.connect(c, team)
    const feedsBefore = await node.feeds()

    const said = await node.say(channel, a, 20)
    const last = said[said.length - 1]!["seq"] as number
    for (const s of [sa, sb1, sb2]) {
      await s.waitSeq(channel, last)
      expect(s.seqs(channel)).toEqual(range(said[0]!["seq"] as number, last))
    }
    // Byte-for-byte what was published.
    expect(sa.raw.filter((r) => r.includes(`"seq":${last},`) || r.endsWith(`"seq":${last}}`))).toContain(JSON.stringify(said[said.length - 1]))
    expect(sc.events(channel)).toEqual([])
    expect(sc.seqs(other)).toEqual([])
    expect(feedsBefore).toBeGreaterThanOrEqual(2)
    // One feed (one subscription) for the channel, counting its three sockets.
    expect(await node.feed(channel)).toEqual({ sockets: 3, lastSeq: last })
    for (const s of [sa, sb1, sb2, sc]) s.close()
    await Promise.all([sa, sb1, sb2, sc].map((s) => s.closed))
    await sleep(50)
    expect(await node.feed(channel)).toBeUndefined()
    expect(await node.feed(other)).toBeUndefined()
  })

  it("drops duplicates and fills gaps from channel_events, so every socket sees every seq once and in order", async () => {
    const [a, b] = [user(), user()]
    const channel = await channelWith([a, b])
    const sa = await node.connect(a, team)
    const sb = await node.connect(b, team)
    const e1 = await node.commit(channel, { type: "message", user: a, text: "one" })
    await node.publish(e1)
    await node.publish(e1) // duplicate
    const e2 = await node.commit(channel, { type: "message", user: a, text: "two (lost)" })
    const e3 = await node.commit(channel, { type: "message", user: a, text: "three (lost)" })
    const e4 = await node.commit(channel, { type: "message", user: a, text: "four" })
    await node.publish(e4) // gap: 2 and 3 never published
    await node.publish(e2) // late duplicate
    const e5 = await node.commit(channel, { type: "message", user: a, text: "five" })
    await node.publish(e5)
    for (const s of [sa, sb]) {
      await s.waitSeq(channel, e5["seq"])
      expect(s.seqs(channel)).toEqual(range(e1["seq"], e5["seq"]))
      expect(s.events(channel).map((e) => e["text"])).toEqual(["one", "two (lost)", "three (lost)", "four", "five"])
    }
    expect(e3["seq"]).toBe(e2["seq"] + 1)
    expect(await node.metrics()).toMatch(/chorus_gateway_gap_fill_events_total\{[^}]*\} [1-9]/)
    sa.close()
    sb.close()
  })

  it("delivers the events after a silent gap once the next event arrives, even published out of order", async () => {
    const a = user()
    const channel = await channelWith([a])
    const sa = await node.connect(a, team)
    const events = []
    for (let i = 0; i < 10; i++) events.push(await node.commit(channel, { type: "message", user: a, text: `m${i}` }))
    for (const e of [...events].reverse()) await node.publish(e)
    await sa.waitSeq(channel, events[9]!["seq"])
    expect(sa.seqs(channel)).toEqual(range(events[0]!["seq"], events[9]!["seq"]))
    sa.close()
  })
})

describe("membership (invariant 5)", () => {
  it("never sends a private channel's events to a non-member", async () => {
    const [a, outsider] = [user(), user()]
    const secret = await channelWith([a], { isPrivate: true })
    const sa = await node.connect(a, team)
    const so = await node.connect(outsider, team)
    const said = await node.say(secret, a, 5, "secret")
    await sa.waitSeq(secret, said[4]!["seq"])
    // The outsider asks for them, too.
    const answer = await so.request({ type: "resume", channels: { [secret]: 0 } })
    expect(answer).toMatchObject({ ok: true, channels: { [secret]: { ok: false, error: "channel_not_found" } } })
    const typed = await so.request({ type: "typing", channel: secret })
    expect(typed).toMatchObject({ ok: false, error: { code: "channel_not_found" } })
    await sleep(200)
    expect(so.frames.filter((f) => JSON.stringify(f).includes("secret"))).toEqual([])
    sa.close()
    so.close()
  })

  it("stops at the leave event: the leaver gets it and nothing after", async () => {
    const [a, b] = [user(), user()]
    const channel = await channelWith([a, b], { isPrivate: true })
    const sa = await node.connect(a, team)
    const sb = await node.connect(b, team)
    await node.say(channel, a, 3)
    const left = await node.leave(channel, b)
    const after = await node.say(channel, a, 3, "after")
    await sa.waitSeq(channel, after[2]!["seq"])
    await sb.next((f) => f["type"] === "channel_left")
    await sleep(100)
    expect(Math.max(...sb.seqs(channel))).toBe(left)
    expect(sb.events(channel).filter((e) => String(e["text"]).startsWith("after"))).toEqual([])
    sa.close()
    sb.close()
  })

  it("stops at the leave event even when only the user event says so (no other local member)", async () => {
    const [a, b] = [user(), user()]
    const channel = await channelWith([a, b], { isPrivate: true })
    const sb = await node.connect(b, team) // a is not connected: b is the feed's only member
    const left = await node.leave(channel, b, { publish: false }) // the channel event is lost
    await sb.next((f) => f["type"] === "channel_left")
    const after = await node.say(channel, a, 2, "after")
    await sleep(200)
    expect(sb.events(channel).filter((e) => (e["seq"] as number) > left)).toEqual([])
    expect(after).toHaveLength(2)
    sb.close()
  })

  it("follows a join at once: from the join event on, through the channel's stream or the user's", async () => {
    const [a, b, c] = [user(), user(), user()]
    const channel = await channelWith([a], { isPrivate: true })
    const sa = await node.connect(a, team)
    const sb = await node.connect(b, team)
    const sc = await node.connect(c, team)
    const before = await node.say(channel, a, 3, "before")
    // b joins: a is local, so the node follows the channel already.
    const joinedB = await node.join(channel, b)
    // c joins, and only the user event is published.
    const joinedC = await node.join(channel, c, { publish: false })
    const after = await node.say(channel, a, 3, "after")
    const last = after[2]!["seq"] as number
    await sb.waitSeq(channel, last)
    await sc.waitSeq(channel, last)
    expect(sb.seqs(channel)).toEqual(range(joinedB, last))
    expect(sc.seqs(channel)).toEqual(range(joinedC, last))
    expect(await sb.next((f) => f["type"] === "channel_joined")).toMatchObject({ channel_id: channel, seq: joinedB })
    expect(before).toHaveLength(3)
    sa.close()
    sb.close()
    sc.close()
  })

  it("a leave and a rejoin: up to the leave, nothing while away, again from the rejoin", async () => {
    const [a, b] = [user(), user()]
    const channel = await channelWith([a, b], { isPrivate: true })
    const sa = await node.connect(a, team)
    const sb = await node.connect(b, team)
    await node.say(channel, a, 2)
    const left = await node.leave(channel, b)
    const away = await node.say(channel, a, 3, "away")
    const rejoined = await node.join(channel, b)
    const back = await node.say(channel, a, 2, "back")
    const last = back[1]!["seq"] as number
    await sb.waitSeq(channel, last)
    await sa.waitSeq(channel, last)
    const seqs = sb.seqs(channel)
    expect(seqs.filter((q) => q > left && q < rejoined)).toEqual([])
    expect(seqs).toEqual([...range(seqs[0]!, left), ...range(rejoined, last)])
    expect(away).toHaveLength(3)
    sa.close()
    sb.close()
  })

  it("a quick leave and rejoin that the node hears of late", async () => {
    const [a, b] = [user(), user()]
    const channel = await channelWith([a, b], { isPrivate: true })
    const sa = await node.connect(a, team)
    const sb = await node.connect(b, team)
    // Committed, not published: the node learns of them from the log on the next event.
    const left = await node.leave(channel, b, { publish: false, notify: false })
    const away = await node.commit(channel, { type: "message", user: a, text: "away" })
    const rejoined = await node.join(channel, b, { publish: false, notify: false })
    const back = await node.say(channel, a, 1, "back")
    const last = back[0]!["seq"] as number
    await sa.waitSeq(channel, last)
    await sb.waitSeq(channel, last)
    expect(sb.seqs(channel)).not.toContain(away["seq"])
    expect(sb.seqs(channel)).toEqual([left, rejoined, last])
    sa.close()
    sb.close()
  })

  it("follows a join for a channel this node did not follow", async () => {
    const [a, b] = [user(), user()]
    const channel = await channelWith([a])
    const sb = await node.connect(b, team)
    await node.say(channel, a, 2)
    const joined = await node.join(channel, b)
    const after = await node.say(channel, a, 2, "after")
    await sb.waitSeq(channel, after[1]!["seq"])
    expect(sb.seqs(channel)).toEqual(range(joined, after[1]!["seq"]))
    sb.close()
  })

  it("ignores another workspace's channels", async () => {
    const a = user()
    const foreign = await node.createChannel(Ids.make("T"))
    await node.join(foreign, a, { notify: true })
    const sa = await node.connect(a, team)
    await node.say(foreign, a, 2)
    await node.publishUser(a, { type: "channel_joined", channel_id: foreign, seq: 1 })
    await sleep(200)
    expect(sa.events(foreign)).toEqual([])
    expect(sa.frames.filter((f) => f["type"] === "channel_joined")).toEqual([])
    sa.close()
  })
})

describe("resume (invariant 2)", () => {
  it("with resume=1: the missed events after the client's last seq, in order, then the reply, then live events", async () => {
    const a = user()
    const channel = await channelWith([a])
    const early = await node.say(channel, a, 10, "early")
    const socket = await node.connect(a, team, { resume: true })
    const during = await node.say(channel, a, 3, "during") // before the resume frame: held
    const lastSeen = early[4]!["seq"] as number
    const id = 99
    socket.send({ id, type: "resume", channels: { [channel]: lastSeen } })
    const reply = await socket.next((f) => f["reply_to"] === id)
    expect(reply).toEqual({ ok: true, reply_to: id, channels: { [channel]: { ok: true } } })
    const replyIndex = socket.frames.indexOf(reply)
    const last = during[2]!["seq"] as number
    expect(socket.frames.slice(0, replyIndex).filter((f) => f["seq"] !== undefined).map((f) => f["seq"])).toEqual(range(lastSeen + 1, last))
    const live = await node.say(channel, a, 2, "live")
    await socket.waitSeq(channel, live[1]!["seq"])
    expect(socket.seqs(channel)).toEqual(range(lastSeen + 1, live[1]!["seq"]))
    socket.close()
  })

  it("under a stream: no duplicates and no gaps across a reconnect", async () => {
    const a = user()
    const channel = await channelWith([a])
    const first = await node.connect(a, team)
    let stop = false
    let sent = 0
    const stream = (async () => {
      while (!stop) {
        await node.say(channel, a, 1, "stream")
        sent++
      }
    })()
    await first.until(() => first.seqs(channel).length >= 20, 10_000, "20 events")
    first.ws.terminate()
    await first.closed
    const have = first.seqs(channel)
    const lastSeen = have[have.length - 1]!
    await sleep(50) // events keep coming while the client is away
    const second = await node.connect(a, team, { resume: true })
    const reply = await second.request({ type: "resume", channels: { [channel]: lastSeen } })
    expect(reply["ok"]).toBe(true)
    await sleep(100)
    stop = true
    await stream
    const [{ last_seq: finalSeq }] = (await node.sql((s) => s`SELECT last_seq FROM channels WHERE id = ${channel}`)) as [{ last_seq: number }]
    await second.waitSeq(channel, finalSeq, 10_000)
    const all = [...have, ...second.seqs(channel)]
    expect(all).toEqual(range(have[0]!, finalSeq))
    expect(sent).toBeGreaterThan(20)
    second.close()
  })

  it("without resume=1: a resume from before the connection rewinds (re-sending in order); one from after it changes nothing", async () => {
    const a = user()
    const channel = await channelWith([a])
    const before = await node.say(channel, a, 3, "before")
    const socket = await node.connect(a, team)
    const live = await node.say(channel, a, 2, "live")
    await socket.waitSeq(channel, live[1]!["seq"])
    expect(socket.seqs(channel)).toEqual([live[0]!["seq"], live[1]!["seq"]])
    // The client has everything up to the first live event: nothing to send.
    expect(await socket.request({ type: "resume", channels: { [channel]: live[0]!["seq"] } })).toMatchObject({ ok: true })
    expect(socket.seqs(channel)).toEqual([live[0]!["seq"], live[1]!["seq"]])
    // The client had only the first event before connecting: the stream restarts after it.
    expect(await socket.request({ type: "resume", channels: { [channel]: before[0]!["seq"] } })).toMatchObject({ ok: true })
    expect(socket.seqs(channel)).toEqual([live[0]!["seq"], live[1]!["seq"], ...range(before[1]!["seq"], live[1]!["seq"])])
    socket.close()
  })

  it("resuming from a seq before the user joined starts at the join", async () => {
    const [a, b] = [user(), user()]
    const channel = await channelWith([a], { isPrivate: true })
    await node.say(channel, a, 5, "before b")
    const joined = await node.join(channel, b, { notify: false })
    const after = await node.say(channel, a, 2, "after")
    const socket = await node.connect(b, team, { resume: true })
    const reply = await socket.request({ type: "resume", channels: { [channel]: 0 } })
    expect(reply).toMatchObject({ ok: true })
    expect(socket.seqs(channel)).toEqual(range(joined, after[1]!["seq"]))
    socket.close()
  })
})

describe("messages", () => {
  it("posts through the channel actor and answers ts, seq, channel, text; a retry with the same client_msg_id is one message", async () => {
    const [a, b] = [user(), user()]
    const channel = await channelWith([a, b])
    const sa = await node.connect(a, team)
    const sb = await node.connect(b, team)
    const reply = await sa.request({ type: "message", channel, text: "hi there", client_msg_id: "c-1" })
    expect(reply).toMatchObject({ ok: true, channel, text: "hi there", ts: expect.stringMatching(/^\d+\.\d{6}$/), seq: expect.any(Number) })
    const again = await sa.request({ type: "message", channel, text: "hi there", client_msg_id: "c-1" })
    expect(again).toMatchObject({ ok: true, ts: reply["ts"], seq: reply["seq"] })
    await sb.waitSeq(channel, reply["seq"])
    expect(sb.events(channel).filter((e) => e["type"] === "message" && e["text"] === "hi there")).toHaveLength(1)

    const outsider = await node.connect(user(), team)
    expect(await outsider.request({ type: "message", channel, text: "no" })).toMatchObject({ ok: false, error: { code: "channel_not_found" } })
    for (const s of [sa, sb, outsider]) s.close()
  })

  it("keeps one socket's messages in order", async () => {
    const a = user()
    const channel = await channelWith([a])
    const sa = await node.connect(a, team)
    for (let i = 0; i < 20; i++) sa.send({ id: 1000 + i, type: "message", channel, text: `n${i}` })
    await sa.until(() => sa.frames.filter((f) => typeof f["reply_to"] === "number" && f["reply_to"] >= 1000).length === 20, 10_000)
    const replies = sa.frames.filter((f) => typeof f["reply_to"] === "number" && f["reply_to"] >= 1000)
    expect(replies.map((r) => r["text"])).toEqual(range(0, 19).map((i) => `n${i}`))
    const seqs = replies.map((r) => r["seq"] as number)
    expect(seqs).toEqual([...seqs].sort((x, y) => x - y))
    sa.close()
  })

  it("sends user_typing to the channel's other members only", async () => {
    const [a, b] = [user(), user()]
    const channel = await channelWith([a, b])
    const sa = await node.connect(a, team)
    const sb = await node.connect(b, team)
    expect(await sa.request({ type: "typing", channel })).toMatchObject({ ok: true })
    expect(await sb.next((f) => f["type"] === "user_typing")).toEqual({ type: "user_typing", channel, user: a })
    await sleep(100)
    expect(sa.frames.filter((f) => f["type"] === "user_typing")).toEqual([])
    sa.close()
    sb.close()
  })
})

describe("bad input (invariant 6)", () => {
  it("answers malformed, unknown and binary frames with errors and keeps the socket", async () => {
    const socket = await node.connect(user(), team)
    socket.ws.send("{not json")
    expect(await socket.next((f) => f["type"] === "error")).toMatchObject({ type: "error", error: { code: "invalid_json" } })
    expect(await socket.request({ type: "dance" })).toMatchObject({ ok: false, error: { code: "unknown_type" } })
    expect(await socket.request({ type: "message", channel: "C123", text: "" })).toMatchObject({ ok: false, error: { code: "no_text" } })
    expect(await socket.request({ type: "message", channel: "nope", text: "x" })).toMatchObject({ ok: false, error: { code: "channel_not_found" } })
    expect(await socket.request({ type: "resume", channels: { C1: -1 } })).toMatchObject({ ok: false, error: { code: "invalid_arguments" } })
    socket.ws.send(Buffer.from([1, 2, 3]), { binary: true })
    expect(await socket.next((f) => f["error"]?.code === "invalid_frame")).toMatchObject({ type: "error" })
    socket.send({ id: 1, type: "ping" })
    await socket.next((f) => f["type"] === "pong")
    socket.close()
  })

  it("closes a socket that sends a frame over the size bound (1009), and the node carries on", async () => {
    const socket = await node.connect(user(), team)
    socket.ws.send(JSON.stringify({ id: 1, type: "message", channel: "C1", text: "x".repeat(70 * 1024) }))
    const closed = await socket.closed
    expect(closed.code).toBe(1009)
    const other = await node.connect(user(), team)
    expect(await other.request({ type: "ping" })).toMatchObject({ type: "pong" })
    other.close()
  })
})

describe("bounds", () => {
  let small: GatewayNode
  beforeAll(async () => {
    small = await startGatewayNode({
      databaseUrl: db.url,
      cluster,
      gateway: { maxBufferedBytes: 256 * 1024, idleTimeout: "600 millis", slowConsumerGrace: "500 millis" }
    })
  })
  afterAll(async () => {
    await small?.close()
  })

  it("closes a socket silent for longer than the idle timeout (4000); one that pings stays", async () => {
    const [quiet, chatty] = [await small.connect(user(), team), await small.connect(user(), team)]
    const pinger = setInterval(() => chatty.send({ type: "ping" }), 150)
    const closed = await quiet.closed
    expect(closed).toEqual({ code: 4000, reason: "idle_timeout" })
    await sleep(300)
    expect(chatty.closeInfo).toBeUndefined()
    clearInterval(pinger)
    chatty.close()
  })

  it("closes a slow consumer (4001) instead of buffering without limit", async () => {
    const [a, b] = [user(), user()]
    const channel = await small.createChannel(team)
    await small.join(channel, a, { notify: false })
    await small.join(channel, b, { notify: false })
    const slow = await small.connect(a, team)
    const fast = await small.connect(b, team)
    const keepAlive = setInterval(() => {
      fast.send({ type: "ping" })
      slow.send({ type: "ping" })
    }, 150)
    // The slow client stops reading.
    ;(slow.ws as unknown as { _socket: { pause(): void } })._socket.pause()
    const big = "y".repeat(16 * 1024)
    let last = 0
    const slowClosed = async () => /chorus_gateway_slow_consumer_closes_total\{[^}]*\} [1-9]/.test(await small.metrics())
    for (let i = 0; i < 2000; i++) {
      const e = await small.commit(channel, { type: "message", user: b, text: big })
      await small.publish(e)
      last = e["seq"]
      // The fast client reads in this process: let it keep up, or on a busy machine it
      // falls behind the publishing loop and is (rightly) closed as slow too.
      if (i % 10 === 9) await fast.waitSeq(channel, last, 20_000)
      if (i % 50 === 49 && await slowClosed()) break
    }
    expect(await slowClosed()).toBe(true)
    ;(slow.ws as unknown as { _socket: { resume(): void } })._socket.resume()
    // What was buffered, then the close frame (within the close grace).
    expect(await slow.closed).toEqual({ code: 4001, reason: "slow_consumer" })
    await fast.waitSeq(channel, last, 20_000)
    expect(fast.closeInfo).toBeUndefined()
    clearInterval(keepAlive)
    fast.close()
  })
})

describe("shutdown", () => {
  it("says goodbye to every socket and closes it (1001) before the HTTP server closes", async () => {
    const other = await startGatewayNode({ databaseUrl: db.url, cluster })
    const sockets = [await other.connect(user(), team), await other.connect(user(), team)]
    const started = Date.now()
    await other.close()
    expect(Date.now() - started).toBeLessThan(5_000)
    for (const s of sockets) {
      const closed = await s.closed
      expect(closed).toEqual({ code: 1001, reason: "going_away" })
      expect(s.frames[s.frames.length - 1]).toEqual({ type: "goodbye" })
    }
    await expect(new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${other.port}/ws?ticket=x`)
      ws.on("open", resolve)
      ws.on("error", reject)
    })).rejects.toThrow()
  })
})

describe("write coalescing", () => {
  it("holds a busy socket's event frames and writes them, in order, with the next reply to the client", async () => {
    // A window long enough that only the reply can have flushed the held frames.
    const held = await startGatewayNode({ databaseUrl: db.url, cluster, gateway: { coalesceWrites: "60 seconds" } })
    try {
      const a = user()
      const channel = await channelWith([a])
      const socket = await held.connect(a, team) // `hello` was just written: the socket is busy
      const said = await node.say(channel, a, 3)
      const last = said[said.length - 1]!["seq"] as number
      // The node has the events (its feed is at the last seq); the socket has none yet.
      for (let i = 0; i < 100 && (await held.feed(channel))?.lastSeq !== last; i++) await sleep(20)
      expect((await held.feed(channel))?.lastSeq).toBe(last)
      expect(socket.seqs(channel)).toEqual([])
      // A reply is never held, and the frames held before it go out first.
      socket.send({ id: 9, type: "ping" })
      await socket.next((f) => f["type"] === "pong")
      expect(socket.seqs(channel)).toEqual(said.map((e) => e["seq"]))
      const pongAt = socket.frames.findIndex((f) => f["type"] === "pong")
      const lastEventAt = socket.frames.findIndex((f) => f["seq"] === last)
      expect(lastEventAt).toBeLessThan(pongAt)
      socket.close()
    } finally {
      await held.close()
    }
  })
  it("widens the window while many sockets are busy, within the write budget, and narrows it when they quiet down", async () => {
    // 20 ms, and a budget of 100 held-frame writes a second: 3 busy sockets need 30 ms,
    // 10 would need 100 ms, capped at 4 × 20 ms.
    const wide = await startGatewayNode({ databaseUrl: db.url, cluster, gateway: { coalesceWrites: "20 millis", flushWritesPerSecond: 100 } })
    const windowMs = async () => Number(/^chorus_gateway_coalesce_window_ms(?:\{[^}]*\})? (\S+)/m.exec(await wide.metrics())?.[1])
    try {
      expect(await windowMs()).toBe(20)
      const busyWindow = async (n: number) => {
        const members = Array.from({ length: n }, () => user())
        const channel = await channelWith(members)
        const sockets = await Promise.all(members.map((m) => wide.connect(m, team)))
        // Back-to-back events: every socket holds some, and each flush writes them all.
        const said = await node.say(channel, members[0]!, 12)
        const last = said.at(-1)!["seq"] as number
        await Promise.all(sockets.map((s) => s.waitSeq(channel, last, 5_000)))
        for (const s of sockets) expect(s.seqs(channel)).toEqual(said.map((e) => e["seq"]))
        const seen = await windowMs()
        for (const s of sockets) s.close()
        return seen
      }
      expect(await busyWindow(3)).toBe(30)
      expect(await busyWindow(10)).toBe(80)
      // One busy socket again: back to the configured window.
      expect(await busyWindow(1)).toBe(20)
    } finally {
      await wide.close()
    }
  })
})
