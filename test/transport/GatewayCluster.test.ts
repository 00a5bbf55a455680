// The gateway in real node processes (src/main.ts): how a client connects
// (rtm.connect → ws url → hello → frames), a message sent over one node's socket
// reaching a member's socket on another node through the channel actor, a private
// channel's events never reaching a non-member, and SIGTERM: goodbye, then close 1001,
// then the node exits.

import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { postApi, startCluster, type ChorusCluster } from "../support/index.ts"
import { TestSocket, type Json } from "./gatewayHarness.ts"

let cluster: ChorusCluster

beforeAll(async () => {
  cluster = await startCluster({ nodes: 2, env: { CHORUS_SHARDS: "8", CHORUS_RATE_LIMITS: "off" } })
})
afterAll(async () => {
  await cluster?.stopAll() // deletes the cluster's NATS streams too
})

const ok = async (url: string, method: string, args: Json, token?: string): Promise<Json> => {
  const answer = await postApi(url, method, args, token)
  if (!answer.ok) throw new Error(`${method}: ${JSON.stringify(answer)}`)
  return answer as Json
}

/** rtm.connect on `url`, open the socket it answers, wait for hello. */
async function connect(url: string, token: string, resume = false): Promise<TestSocket> {
  const answer = await ok(url, "rtm.connect", {}, token)
  expect(answer["url"]).toMatch(new RegExp(`^ws://127\\.0\\.0\\.1:${new URL(url).port}/ws\\?ticket=`))
  const socket = await TestSocket.open(`${answer["url"]}${resume ? "&resume=1" : ""}`)
  await socket.next((f) => f["type"] === "hello")
  return socket
}

describe("gateway across nodes", () => {
  it("delivers a message sent on one node's socket to a member's socket on another node; never to a non-member", async () => {
    const [n1, n2] = [cluster.nodes[0]!.url, cluster.nodes[1]!.url]
    const alice = await ok(n1, "auth.signup", { email: "alice@gc.test", password: "correct horse battery", name: "Alice" })
    const created = await ok(n1, "team.create", { name: "GC", domain: "gc-test" }, alice["token"])
    const aliceToken = created["token"] as string
    await ok(n1, "admin.users.invite", { email: "bob@gc.test" }, aliceToken)
    await ok(n1, "admin.users.invite", { email: "eve@gc.test" }, aliceToken)
    const bob = await ok(n2, "auth.signup", { email: "bob@gc.test", password: "correct horse battery", name: "Bob" })
    const eve = await ok(n2, "auth.signup", { email: "eve@gc.test", password: "correct horse battery", name: "Eve" })
    const bobToken = (await ok(n2, "auth.login", { email: "bob@gc.test", password: "correct horse battery" }))["token"] as string
    const eveToken = (await ok(n2, "auth.login", { email: "eve@gc.test", password: "correct horse battery" }))["token"] as string

    const channel = (await ok(n1, "conversations.create", { name: "secret-plans", is_private: true }, aliceToken))["channel"]["id"] as string
    await ok(n1, "conversations.invite", { channel, users: bob["user_id"] }, aliceToken)

    const sa = await connect(n1, aliceToken)
    const sb = await connect(n2, bobToken)
    const se = await connect(n2, eveToken)

    const reply = await sa.request({ type: "message", channel, text: "meet at noon", client_msg_id: "9b2f3c4d-0000-4000-8000-000000000001" }, 15_000)
    expect(reply).toMatchObject({ ok: true, channel, text: "meet at noon", ts: expect.any(String), seq: expect.any(Number) })
    const event = await sb.next((f) => f["type"] === "message" && f["text"] === "meet at noon", 15_000)
    expect(event).toMatchObject({ channel, seq: reply["seq"], ts: reply["ts"], user: alice["user_id"] })
    await sa.next((f) => f["type"] === "message" && f["seq"] === reply["seq"], 15_000)

    // Bob answers over HTTP; Alice's socket on the other node gets it.
    const posted = await ok(n2, "chat.postMessage", { channel, text: "ok" }, bobToken)
    await sa.next((f) => f["type"] === "message" && f["ts"] === posted["ts"], 15_000)

    // Eve is not a member: nothing of the channel reaches her socket, even if she asks.
    const resumed = await se.request({ type: "resume", channels: { [channel]: 0 } })
    expect(resumed).toMatchObject({ ok: true, channels: { [channel]: { ok: false, error: "channel_not_found" } } })
    expect(await se.request({ type: "message", channel, text: "let me in" }, 15_000)).toMatchObject({ ok: false })
    expect(se.frames.filter((f) => f["channel"] === channel)).toEqual([])
    expect(eve["user_id"]).toBeDefined()

    // Bob's stream is gap-free and ordered.
    const seqs = sb.events(channel).map((e) => e["seq"] as number)
    expect(seqs).toEqual([...seqs].sort((x, y) => x - y))
    for (let i = 1; i < seqs.length; i++) expect(seqs[i]).toBe(seqs[i - 1]! + 1)
    for (const s of [sa, sb, se]) s.close()
  })

  it("posts one socket's back-to-back messages in order, those that queued behind one in flight together", async () => {
    const [n1, n2] = [cluster.nodes[0]!.url, cluster.nodes[1]!.url]
    const carol = await ok(n1, "auth.signup", { email: "carol@gc.test", password: "correct horse battery", name: "Carol" })
    const token = (await ok(n1, "team.create", { name: "GC2", domain: "gc-test-2" }, carol["token"]))["token"] as string
    const channel = (await ok(n1, "conversations.create", { name: "firehose" }, token))["channel"]["id"] as string
    const other = (await ok(n1, "conversations.create", { name: "elsewhere" }, token))["channel"]["id"] as string
    const sender = await connect(n1, token)
    const watcher = await connect(n2, token)
    // Sent without waiting: the first goes alone, most of the rest queue behind it and
    // go as batches, split where the channel changes; a refusal in between takes no
    // seq; a resent client_msg_id answers its original.
    const frames = Array.from({ length: 40 }, (_, i) => ({
      id: 1000 + i,
      type: "message",
      channel: i === 20 ? other : channel,
      text: i === 10 ? "x".repeat(40_001) : `n${i}`,
      ...(i === 5 || i === 30 ? { client_msg_id: "5f0c1d2e-0000-4000-8000-000000000005" } : {})
    }))
    for (const frame of frames) sender.send(frame)
    const replies = () => sender.frames.filter((f) => typeof f["reply_to"] === "number" && f["reply_to"] >= 1000)
    await sender.until(() => replies().length === frames.length, 30_000)
    const byId = new Map(replies().map((r) => [r["reply_to"] as number, r]))
    expect(byId.get(1010)).toMatchObject({ ok: false, error: { code: "msg_too_long" } })
    expect(byId.get(1020)).toMatchObject({ ok: true, channel: other, text: "n20" })
    expect(byId.get(1030)).toMatchObject({ ok: true, ts: byId.get(1005)!["ts"], seq: byId.get(1005)!["seq"] })
    const sent = frames.filter((f) => f.channel === channel && f.id !== 1010 && f.id !== 1030)
    const seqs = sent.map((f) => byId.get(f.id)!["seq"] as number)
    expect(seqs).toEqual(seqs.map((_, i) => seqs[0]! + i))
    // History and another node's socket have them once each, in the order sent.
    const history = (await ok(n2, "conversations.history", { channel, limit: 100 }, token))["messages"] as Array<Json>
    expect(history.map((m) => m["text"]).filter((t) => /^n\d+$/.test(t)).reverse()).toEqual(sent.map((f) => f.text))
    await watcher.until(() => watcher.events(channel).some((e) => e["seq"] === seqs.at(-1)), 15_000)
    expect(watcher.events(channel).filter((e) => e["type"] === "message").map((e) => e["text"])).toEqual(sent.map((f) => f.text))
    const metrics = (await Promise.all(cluster.nodes.map(async (n) => (await fetch(`${n.url}/metrics`)).text()))).join("\n")
    expect(metrics).toMatch(/chorus_gateway_posts_batched_total(\{[^}]*\})? [1-9]/)
    for (const s of [sender, watcher]) s.close()
  })

  it("on SIGTERM: goodbye, then close 1001, then the node exits", async () => {
    const node = await cluster.addNode()
    const user = await ok(node.url, "auth.signup", { email: "drain@gc.test", password: "correct horse battery", name: "Drain" })
    const token = (await ok(node.url, "team.create", { name: "Drain", domain: "drain-gc" }, user["token"]))["token"] as string
    const sockets = [await connect(node.url, token), await connect(node.url, token)]
    const started = Date.now()
    await node.stop(30_000)
    expect(node.exitCode).toBe(0)
    for (const s of sockets) {
      expect(await s.closed).toEqual({ code: 1001, reason: "going_away" })
      expect(s.frames[s.frames.length - 1]).toEqual({ type: "goodbye" })
    }
    expect(Date.now() - started).toBeLessThan(25_000)
  })
})
