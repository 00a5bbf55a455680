/**
 * The messaging core end to end, on a 3-node cluster of real processes, driven by
 * Slack's own WebClient and plain WebSocket clients:
 * - three users on three nodes see every message, edit, delete, thread reply and
 *   reaction, in the same seq order (invariant 2);
 * - a socket dropped mid-stream resumes with exactly the events it missed;
 * - a retried send with the same client_msg_id yields one message (invariant 4);
 * - a private channel's events never reach a non-member's socket (invariant 5);
 * - a kill -9 of the node that owns a busy channel loses no acknowledged send and
 *   keeps the order (invariant 1).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { ChorusCluster } from "../support/cluster.ts"
import { startCluster } from "../support/cluster.ts"
import type { ChatSocket, ChatUser, Frame } from "../support/chat.ts"
import { channelEvents, connect, on, workspace } from "../support/chat.ts"
import { postApi } from "../support/http.ts"
import { sleep } from "../support/processes.ts"
import { waitConverged } from "../support/runtime.ts"

let cluster: ChorusCluster
let users: Record<string, ChatUser>
const sockets: Array<ChatSocket> = []

beforeAll(async () => {
  cluster = await startCluster({ nodes: 3, env: { CHORUS_SHARDS: "32" } })
  await waitConverged(cluster.nodes[0]!.url, cluster.operatorToken, ["node-1", "node-2", "node-3"])
  users = (await workspace(cluster.nodes[0]!.url, ["alice", "bob", "carol", "dave"])).users
})

afterAll(async () => {
  for (const s of sockets) s.close()
  await cluster?.stopAll()
})

const url = (i: number) => cluster.nodes[i]!.url
const socketOf = async (user: ChatUser, node: number) => {
  const socket = await connect(url(node), user.token)
  sockets.push(socket)
  return socket
}
const seqs = (events: ReadonlyArray<Frame>) => events.map((e) => e["seq"] as number)
const lastSeq = (socket: ChatSocket, channel: string) => Math.max(0, ...seqs(channelEvents(socket, channel)))

describe("messaging across nodes", () => {
  it("every member's socket on every node sees every event of a channel, in the same seq order", async () => {
    const alice = on(users["alice"]!, url(0))
    const bob = on(users["bob"]!, url(1))
    const carol = on(users["carol"]!, url(2))
    const created = await alice.web.conversations.create({ name: "general-e2e" })
    const channel = created.channel!.id!
    await alice.web.conversations.invite({ channel, users: `${bob.id},${carol.id}` })
    const socks = [await socketOf(alice, 0), await socketOf(bob, 1), await socketOf(carol, 2)]

    const first = await alice.web.chat.postMessage({ channel, text: "hello from node-1" })
    const second = await bob.web.chat.postMessage({ channel, text: "hello from node-2" })
    const viaSocket = await socks[2]!.request({ type: "message", channel, text: "hello over the socket", client_msg_id: "sock-1" })
    expect(viaSocket).toMatchObject({ ok: true })
    await carol.web.chat.postMessage({ channel, text: "a thread reply", thread_ts: first.ts! })
    await bob.web.chat.update({ channel, ts: second.ts!, text: "edited on node-2" })
    await alice.web.reactions.add({ channel, timestamp: second.ts!, name: "tada" })
    await bob.web.reactions.add({ channel, timestamp: first.ts!, name: "eyes" })
    await bob.web.reactions.remove({ channel, timestamp: first.ts!, name: "eyes" })
    await alice.web.chat.delete({ channel, ts: first.ts! })
    const info = await alice.web.conversations.info({ channel })
    const final = (info.channel as { seq?: number }).seq
    expect(typeof final).toBe("number")

    for (const s of socks) await s.waitFor((e) => e["channel"] === channel && e["seq"] === final)
    const streams = socks.map((s) => channelEvents(s, channel))
    // Gap-free, duplicate-free, ascending, and identical on every socket.
    for (const stream of streams) {
      const list = seqs(stream)
      expect(list).toEqual(Array.from({ length: list.length }, (_, i) => list[0]! + i))
    }
    const fromCarolsJoin = (stream: ReadonlyArray<Frame>) => stream.filter((e) => (e["seq"] as number) >= seqs(streams[2]!)[0]!)
    expect(fromCarolsJoin(streams[0]!)).toEqual(streams[2])
    expect(fromCarolsJoin(streams[1]!)).toEqual(streams[2])
    const types = streams[2]!.map((e) => `${e["type"]}${e["subtype"] === undefined ? "" : `/${e["subtype"]}`}`)
    expect(types).toEqual(expect.arrayContaining(["message", "message/message_changed", "message/message_deleted", "reaction_added", "reaction_removed"]))
    expect(streams[2]!.some((e) => e["thread_ts"] === first.ts && e["text"] === "a thread reply")).toBe(true)
  })

  it("a socket dropped mid-stream resumes with exactly the events it missed", async () => {
    const alice = on(users["alice"]!, url(0))
    const dave = users["dave"]!
    const created = await alice.web.conversations.create({ name: "resume-e2e" })
    const channel = created.channel!.id!
    await alice.web.conversations.invite({ channel, users: dave.id })
    const before = await socketOf(dave, 1)
    const sent = await alice.web.chat.postMessage({ channel, text: "before the drop" })
    await before.waitFor((e) => e["channel"] === channel && e["ts"] === sent.ts)
    const seen = lastSeq(before, channel)
    before.drop()
    for (let i = 0; i < 5; i++) await alice.web.chat.postMessage({ channel, text: `missed ${i}` })
    const final = ((await alice.web.conversations.info({ channel })).channel as { seq: number }).seq

    const after = await socketOf(dave, 2)
    const resumed = await after.request({ type: "resume", channels: { [channel]: seen } })
    expect(resumed).toMatchObject({ ok: true })
    await after.waitFor((e) => e["channel"] === channel && e["seq"] === final)
    const replay = channelEvents(after, channel)
    expect(seqs(replay)).toEqual(Array.from({ length: final - seen }, (_, i) => seen + 1 + i))
    expect(replay.filter((e) => e["type"] === "message").map((e) => e["text"])).toEqual(["missed 0", "missed 1", "missed 2", "missed 3", "missed 4"])
    // And live events follow.
    const live = await alice.web.chat.postMessage({ channel, text: "after the resume" })
    await after.waitFor((e) => e["channel"] === channel && e["ts"] === live.ts)
    expect(seqs(channelEvents(after, channel)).at(-1)).toBe(final + 1)
  })

  it("a retried send with the same client_msg_id yields one message", async () => {
    const bob = on(users["bob"]!, url(1))
    const channel = (await bob.web.conversations.create({ name: "retry-e2e" })).channel!.id!
    const first = await bob.web.chat.postMessage({ channel, text: "only once", client_msg_id: "retry-abc" } as never)
    const again = await on(users["bob"]!, url(2)).web.chat.postMessage({ channel, text: "only once", client_msg_id: "retry-abc" } as never)
    expect(again.ts).toBe(first.ts)
    const history = await bob.web.conversations.history({ channel })
    expect(history.messages!.filter((m) => m.text === "only once")).toHaveLength(1)
  })

  it("a private channel's events never reach a non-member's socket", async () => {
    const alice = on(users["alice"]!, url(0))
    const outsider = await socketOf(users["carol"]!, 1)
    const secret = (await alice.web.conversations.create({ name: "secret-e2e", is_private: true })).channel!.id!
    await alice.web.conversations.invite({ channel: secret, users: users["bob"]!.id })
    const bobs = await socketOf(users["bob"]!, 2)
    const posted = await alice.web.chat.postMessage({ channel: secret, text: "for members only" })
    await bobs.waitFor((e) => e["channel"] === secret && e["ts"] === posted.ts)
    const resumed = await outsider.request({ type: "resume", channels: { [secret]: 0 } })
    await sleep(500)
    expect(outsider.events.filter((e) => e["channel"] === secret)).toEqual([])
    expect(JSON.stringify(resumed)).not.toContain("for members only")
    await expect(on(users["carol"]!, url(1)).web.conversations.history({ channel: secret })).rejects.toThrow(/channel_not_found/)
  })

  it("kill -9 of the node that owns a busy channel: every acknowledged send is in history once, in order", async () => {
    const alice = on(users["alice"]!, url(0))
    const channel = (await alice.web.conversations.create({ name: "busy-e2e" })).channel!.id!
    const placement = await postApi(url(0), "cluster.placement", { address: `channel/${channel}` }, cluster.operatorToken)
    const owner = placement["node"] as string
    const survivors = cluster.nodes.filter((n) => n.id !== owner)
    const acked: Array<{ text: string; ts: string }> = []
    let running = true
    let failures = 0
    const sender = (async () => {
      for (let i = 0; running; i++) {
        const text = `busy ${i}`
        const web = on(users["alice"]!, survivors[i % survivors.length]!.url).web
        // A client retries its send with the same client_msg_id until it is acknowledged.
        for (let attempt = 0; attempt < 20; attempt++) {
          const answer = await web.chat.postMessage({ channel, text, client_msg_id: `busy-${i}` } as never).catch(() => undefined)
          if (answer?.ok === true) {
            acked.push({ text, ts: answer.ts! })
            break
          }
          failures++
          await sleep(200)
        }
      }
    })()
    await sleep(1_500)
    await cluster.node(owner).kill("SIGKILL")
    await sleep(3_000)
    running = false
    await sender
    expect(acked.length).toBeGreaterThan(10)

    const history: Array<{ text?: string; ts?: string }> = []
    let cursor: string | undefined
    do {
      const page = await on(users["alice"]!, survivors[0]!.url).web.conversations.history({ channel, limit: 200, ...(cursor ? { cursor } : {}) })
      history.push(...page.messages!)
      cursor = page.response_metadata?.next_cursor || undefined
    } while (cursor)
    const busy = history.filter((m) => m.text?.startsWith("busy ")).reverse()
    // Every acknowledged send is there exactly once, in the order it was sent.
    expect(busy.map((m) => m.text)).toEqual(acked.map((a) => a.text))
    expect(busy.map((m) => m.ts)).toEqual(acked.map((a) => a.ts))
  })
})
