// Events API delivery survives losing its node: on a 2-node cluster, kill -9 the node
// that delivers (the holder of shard 0) while messages flow; the other node takes
// shard 0, recreates the delivery consumer from the old one's ack floor, and every
// acknowledged message still reaches the app (at least once), in order per channel.

import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { workspace } from "../support/chat.ts"
import type { ChorusCluster } from "../support/index.ts"
import { postApi, sleep, startCluster } from "../support/index.ts"
import { ringOwners, waitConverged } from "../support/runtime.ts"
import type { AppEndpoint } from "./appEndpoint.ts"
import { startAppEndpoint } from "./appEndpoint.ts"

let cluster: ChorusCluster
let endpoint: AppEndpoint

beforeAll(async () => {
  cluster = await startCluster({ nodes: 2, env: { CHORUS_SHARDS: "8", CHORUS_RATE_LIMITS: "off", CHORUS_APPS_EGRESS: "any" } })
  await waitConverged(cluster.nodes[0]!.url, cluster.operatorToken, ["node-1", "node-2"])
  endpoint = await startAppEndpoint()
})

afterAll(async () => {
  await endpoint?.close()
  await cluster?.stopAll()
})

const ok = async (url: string, method: string, args: Record<string, unknown>, token: string) => {
  const answer = await postApi(url, method, args, token)
  if (!answer.ok) throw new Error(`${method}: ${JSON.stringify(answer)}`)
  return answer as Record<string, any>
}

describe("Events API delivery across a node failure", () => {
  it("delivers every acknowledged message at least once, in order per channel, after the delivering node is killed", async () => {
    const owners = await ringOwners(cluster.nodes[0]!.url, cluster.operatorToken)
    const victim = cluster.node(owners[0]!)
    const survivor = cluster.nodes.find((n) => n.id !== victim.id)!
    const url = survivor.url
    const { users } = await workspace(url, [])
    const token = users["owner"]!.token
    const app = await ok(url, "apps.create", { name: "Survivor", scopes: "channels:history" }, token)
    await ok(url, "apps.eventSubscriptions.set", { app_id: app["app"].id, request_url: endpoint.url, events: "message.channels" }, token)
    const channels: Array<string> = []
    for (let i = 0; i < 4; i++) channels.push((await ok(url, "conversations.create", { name: `fo-${i}-${Date.now().toString(36)}` }, token))["channel"].id)

    const acked: Array<{ channel: string; ts: string }> = []
    const post = async (channel: string, text: string) => {
      // Retried with the same client_msg_id while the cluster fails over: one message.
      const deadline = Date.now() + 30_000
      for (;;) {
        const answer = await postApi(url, "chat.postMessage", { channel, text, client_msg_id: text }, token).catch(() => undefined)
        if (answer?.ok === true) return acked.push({ channel, ts: answer["ts"] as string })
        if (Date.now() > deadline) throw new Error(`could not post ${text}: ${JSON.stringify(answer)}`)
        await sleep(100)
      }
    }
    for (let i = 0; i < 160; i++) {
      if (i === 60) await victim.kill("SIGKILL")
      await post(channels[i % channels.length]!, `fo-msg-${i}`)
      await sleep(10)
    }
    // One more per channel, so that a publish lost with the victim shows as a gap and is filled.
    for (const channel of channels) await post(channel, `fo-last-${channel}`)

    const key = (channel: string, ts: string) => `${channel} ${ts}`
    const delivered = () => new Set(endpoint.events().map((r) => key(r.json?.["event"]?.["channel"], r.json?.["event"]?.["ts"])))
    await endpoint.waitFor(() => acked.every((a) => delivered().has(key(a.channel, a.ts))), 60_000).catch((error: unknown) => {
      const missing = acked.filter((a) => !delivered().has(key(a.channel, a.ts)))
      throw new Error(`${missing.length} acknowledged messages never delivered: ${JSON.stringify(missing)}; ${String(error).slice(0, 300)}`)
    })

    for (const channel of channels) {
      const seen = new Set<string>()
      const firstArrivals = endpoint.events()
        .filter((r) => r.json?.["event"]?.["channel"] === channel && r.json?.["event"]?.["type"] === "message")
        .filter((r) => !seen.has(r.json?.["event_id"]) && seen.add(r.json?.["event_id"]) !== undefined)
        .map((r) => r.json?.["event"]?.["seq"] as number)
      expect(firstArrivals).toEqual([...firstArrivals].sort((a, b) => a - b))
    }
  })
})
