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
