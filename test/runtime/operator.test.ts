/**
 * The operator's levers on a real 3-node cluster (separate processes): `cluster.setWeight`
 * moves shards to match the weights, `cluster.drain` empties a node that stays up, and
 * SIGTERM hands a node's shards over before it exits — all while commands stream, with
 * every acknowledged command applied exactly once.
 */
import { Kvm } from "@nats-io/kv"
import { connect } from "@nats-io/transport-node"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Ring from "../../src/runtime/Ring.ts"
import * as ShardLeases from "../../src/runtime/ShardLeases.ts"
import { makeNames } from "../../src/transport/Nats.ts"
import type { ChorusCluster } from "../support/cluster.ts"
import { postApi } from "../support/http.ts"
import type { RuntimeClient } from "../support/runtime.ts"
import type { ClusterStatus } from "../support/runtime.ts"
import { clusterStatus, counterPerShard, ringOwners, waitConverged } from "../support/runtime.ts"
import { natsUrl } from "../support/services.ts"
import type { ProbeCluster } from "./commandStream.ts"
import { expectAppliedExactlyOnce, startCommandStream, startProbeCluster } from "./commandStream.ts"

const SHARDS = 64
let probe: ProbeCluster
let cluster: ChorusCluster
let client: RuntimeClient
let db: pg.Client

beforeAll(async () => {
  probe = await startProbeCluster({ shards: SHARDS })
  ;({ cluster, client, db } = probe)
})

afterAll(async () => {
  await probe?.stop()
})

/** Lease holders by shard, read straight from the leases bucket. */
const leaseHolders = async (): Promise<ReadonlyArray<string | null>> => {
  const nc = await connect({ servers: natsUrl() })
  try {
    const kv = await new Kvm(nc).open(makeNames(cluster.name).leasesBucket)
    return await Promise.all(Array.from({ length: SHARDS }, async (_, shard) => {
      const entry = await kv.get(ShardLeases.key(shard))
      return entry === null || entry.operation !== "PUT" ? null : ShardLeases.decode(shard, entry.value, entry.revision).holder?.node ?? null
    }))
  } finally {
    await nc.close()
  }
}

/** `cluster.status` from `url` once it shows node-1 with `weight` and the cluster converged. */
const convergedWithWeight = async (url: string, weight: number): Promise<ClusterStatus> => {
  const deadline = Date.now() + 30_000
  let status = await clusterStatus(url, cluster.operatorToken)
  while (!(status.converged && status.nodes.find((n) => n.id === "node-1")?.weight === weight && status.nodes.every((n) => n.state === "up")) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 100))
    status = await clusterStatus(url, cluster.operatorToken)
  }
  expect(status).toMatchObject({ converged: true, shards_unheld: 0 })
  expect(status.nodes.find((n) => n.id === "node-1")!.weight).toBe(weight)
  return status
}

describe("operator", () => {
  it("cluster.setWeight, asked of any node, gives the node the share of shards its weight says", async () => {
    const token = cluster.operatorToken
    const answer = await postApi(cluster.nodes[2]!.url, "cluster.setWeight", { node: "node-1", weight: 2 }, token)
    expect(answer).toMatchObject({ ok: true, node: "node-1", weight: 2 })
    const expected = Ring.make([{ id: "node-1", weight: 2 }, { id: "node-2", weight: 1 }, { id: "node-3", weight: 1 }], { shards: SHARDS, ...Ring.RingDefaults })
    const placement = Array.from({ length: SHARDS }, (_, s) => Ring.ownerOf(expected, s))
    const deadline = Date.now() + 30_000
    while (JSON.stringify(await ringOwners(cluster.nodes[0]!.url, token)) !== JSON.stringify(placement) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    expect(await ringOwners(cluster.nodes[0]!.url, token)).toEqual(placement)
    // Each node learns the weight from node-1's heartbeat: ask one until it has.
    const status = await convergedWithWeight(cluster.nodes[1]!.url, 2)
    const node1 = status.nodes.find((n) => n.id === "node-1")!
    expect(node1).toMatchObject({ weight: 2, shards_assigned: Ring.shardsOf(expected, "node-1").length })
    expect(node1.shards_held / SHARDS).toBeGreaterThan(0.4)
    expect(node1.shards_held / SHARDS).toBeLessThan(0.6)
    // Bad weights are refused, not applied.
    expect(await postApi(cluster.nodes[0]!.url, "cluster.setWeight", { node: "node-1", weight: 0 }, token)).toMatchObject({ ok: false, error: "invalid_arguments" })
    expect(await postApi(cluster.nodes[0]!.url, "cluster.setWeight", { node: "node-9", weight: 1 }, token)).toMatchObject({ ok: false, error: "node_not_found" })
    expect(await postApi(cluster.nodes[0]!.url, "cluster.setWeight", { node: "node-1", weight: 1 }, token)).toMatchObject({ ok: true })
    const back = await convergedWithWeight(cluster.nodes[2]!.url, 1)
    expect(back.nodes.find((n) => n.id === "node-1")!.shards_held).toBe(back.nodes.find((n) => n.id === "node-1")!.shards_assigned)
  })

  it("cluster.drain hands every shard of the node over while commands stream; the node stays up and still routes", async () => {
    const token = cluster.operatorToken
    const counters = counterPerShard(SHARDS, "drain")
    expect((await leaseHolders()).filter((holder) => holder === "node-3").length).toBeGreaterThan(0)
    const stream = startCommandStream(client, counters, { prefix: "drain", senders: 12, delivery: (n) => (n % 2 === 0 ? "durable" : "volatile") })
    await new Promise((resolve) => setTimeout(resolve, 1_000))
    expect(await postApi(cluster.nodes[0]!.url, "cluster.drain", { node: "node-3" }, token)).toMatchObject({ ok: true, node: "node-3", state: "draining" })
    const status = await waitConverged(cluster.nodes[0]!.url, token, ["node-1", "node-2"])
    await new Promise((resolve) => setTimeout(resolve, 1_000))
    await stream.stop()
    expect(status.nodes.find((n) => n.id === "node-3")).toMatchObject({ state: "draining", shards_held: 0, shards_assigned: 0 })
    expect((await leaseHolders()).filter((holder) => holder === "node-3")).toEqual([])
    expect(stream.failed).toEqual([])
    expect(stream.acked.size).toBeGreaterThan(0)
    await expectAppliedExactlyOnce(db, cluster.name, stream.acked)
    // Drained is not dead: it answers, and routes to the shards' new owners.
    expect(cluster.node("node-3").running).toBe(true)
    const probe = await postApi(cluster.node("node-3").url, "cluster.probe", { counter: "after-drain", amount: 1 }, token)
    expect(probe).toMatchObject({ ok: true, via: "node-3", value: 1 })
    expect(["node-1", "node-2"]).toContain(probe["owner"])
    // A drain names the incarnation: the restarted node takes its share again.
    await cluster.node("node-3").restart()
    await waitConverged(cluster.nodes[0]!.url, token, ["node-1", "node-2", "node-3"])
  })

  it("SIGTERM: the node hands its shards over, then exits; nothing acknowledged is lost", async () => {
    const token = cluster.operatorToken
    const counters = counterPerShard(SHARDS, "term")
    const owners = await ringOwners(cluster.nodes[0]!.url, token)
    expect((await leaseHolders()).filter((holder) => holder === "node-2").length).toBe(owners.filter((o) => o === "node-2").length)
    const stream = startCommandStream(client, counters, { prefix: "term", senders: 12, delivery: (n) => (n % 2 === 0 ? "durable" : "volatile") })
    await new Promise((resolve) => setTimeout(resolve, 1_000))
    await cluster.node("node-2").kill("SIGTERM")
    // At exit no lease names it any more: it gave them up (a crashed node's leases still
    // name it until the others see its heartbeat go stale and take them).
    const holders = await leaseHolders()
    await new Promise((resolve) => setTimeout(resolve, 1_000))
    await stream.stop()
    expect(holders.filter((holder) => holder === "node-2")).toEqual([])
    expect(cluster.node("node-2").exitCode).toBe(0)
    const logs = cluster.node("node-2").logs()
    expect(logs).toContain("drained")
    expect(logs).not.toContain("drain timed out")
    await waitConverged(cluster.nodes[0]!.url, token, ["node-1", "node-3"])
    expect(stream.failed).toEqual([])
    await expectAppliedExactlyOnce(db, cluster.name, stream.acked)
  })
})
