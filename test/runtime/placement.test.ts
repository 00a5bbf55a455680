/**
 * Placement through a real 3-node cluster (separate processes, shared NATS and a
 * fresh PostgreSQL database): an actor is reachable through any node and answered by
 * its shard's owner; a fourth node takes about a quarter of the shards, and the
 * shards that move, move to it.
 */
import { connect } from "@nats-io/transport-node"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { wireClient } from "../../bench/wireClient.ts"
import { Counter, Get, Increment } from "../../src/actors/Counter.ts"
import type { ChorusCluster } from "../support/cluster.ts"
import * as Ring from "../../src/runtime/Ring.ts"
import { startCluster } from "../support/cluster.ts"
import { postApi } from "../support/http.ts"
import { ringOwners, waitConverged } from "../support/runtime.ts"
import { natsUrl } from "../support/services.ts"

let cluster: ChorusCluster

beforeAll(async () => {
  cluster = await startCluster({ nodes: 3, env: {} })
  await waitConverged(cluster.nodes[0]!.url, cluster.operatorToken, ["node-1", "node-2", "node-3"])
})

afterAll(async () => {
  await cluster?.stopAll()
})

describe("placement", () => {
  it("addresses an actor through any node and gets the answer from its shard's owner", async () => {
    const token = cluster.operatorToken
    for (const counter of ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]) {
      const placement = await postApi(cluster.nodes[0]!.url, "cluster.placement", { address: `counter/${counter}` }, token)
      expect(placement.ok).toBe(true)
      let expected = 0
      for (const node of cluster.nodes) {
        const answer = await postApi(node.url, "cluster.probe", { counter, amount: 1 }, token)
        expected += 1
        expect(answer).toMatchObject({ ok: true, via: node.id, owner: placement["node"], shard: placement["shard"], value: expected, fresh: true })
        expect((placement["lease"] as { node: string }).node).toBe(placement["node"])
      }
    }
  })

  it("a retried command id is applied once", async () => {
    const token = cluster.operatorToken
    const first = await postApi(cluster.nodes[1]!.url, "cluster.probe", { counter: "idem", amount: 5, command_id: "same-1" }, token)
    const again = await postApi(cluster.nodes[2]!.url, "cluster.probe", { counter: "idem", amount: 5, command_id: "same-1" }, token)
    expect(first).toMatchObject({ ok: true, value: 5, fresh: true })
    expect(again).toMatchObject({ ok: true, value: 5, fresh: false })
  })

  it("bench:runtime's wire client speaks the protocol the nodes answer, volatile and durable (decision 0024)", async () => {
    const nc = await connect({ servers: natsUrl() })
    const wire = wireClient(nc, { cluster: cluster.name, shards: 128 })
    try {
      const token = cluster.operatorToken
      await wire.send(Counter, "wire", new Increment({ amount: 2 }), "durable")
      await wire.send(Counter, "wire", new Increment({ amount: 3 }), "volatile")
      await wire.send(Counter, "wire", new Get(), "durable")
      await wire.send(Counter, "wire", new Get(), "volatile")
      // Both increments were applied: the next one through a node sees 2 + 3 + 1.
      expect(await postApi(cluster.nodes[0]!.url, "cluster.probe", { counter: "wire", amount: 1 }, token)).toMatchObject({ ok: true, value: 6, fresh: true })
      // An actor type no node serves is an error, not a hang.
      await expect(wire.send({ ...Counter, type: "nobody" }, "x", new Get(), "volatile")).rejects.toThrow(/runtime error/)
    } finally {
      wire.close()
      await nc.close()
    }
  })

  it("refuses the operator methods without the operator token", async () => {
    expect(await postApi(cluster.nodes[0]!.url, "cluster.status", {})).toMatchObject({ ok: false, error: "not_authed" })
    expect(await postApi(cluster.nodes[0]!.url, "cluster.status", {}, "wrong")).toMatchObject({ ok: false, error: "invalid_auth" })
  })

  it("a fourth node takes about a quarter of the shards, and the shards that move go to it", async () => {
    const url = cluster.nodes[0]!.url
    const token = cluster.operatorToken
    const before = await ringOwners(url, token)
    await cluster.addNode()
    const status = await waitConverged(url, token, ["node-1", "node-2", "node-3", "node-4"])
    const after = await ringOwners(url, token)
    const shards = before.length
    const moved = after.map((owner, shard) => ({ shard, from: before[shard], to: owner })).filter((m) => m.from !== m.to)
    const toNewcomer = moved.filter((m) => m.to === "node-4")
    const onNew = status.nodes.find((n) => n.id === "node-4")!
    // The live placement is the pure ring's placement for this membership.
    const expected = Ring.make(["node-1", "node-2", "node-3", "node-4"].map((id) => ({ id, weight: 1 })), { shards, ...Ring.RingDefaults })
    expect(after).toEqual(Array.from({ length: shards }, (_, s) => Ring.ownerOf(expected, s)))
    expect(onNew.shards_held).toBe(toNewcomer.length)
    expect(onNew.shards_held / shards).toBeGreaterThan(0.2)
    expect(onNew.shards_held / shards).toBeLessThan(0.3)
    // Bounded loads make a few old nodes pass a shard along (docs/decisions/0002: zero
    // such moves is only possible without a load bound); they stay a small minority.
    expect(moved.length - toNewcomer.length).toBeLessThanOrEqual(Math.ceil(0.05 * shards))
    expect(moved.length).toBeLessThanOrEqual(Math.ceil(1.2 * 0.25 * shards))
    // And the cluster serves every shard after the move.
    const answer = await postApi(cluster.nodes[3]!.url, "cluster.probe", { counter: "after-join", amount: 1 }, token)
    expect(answer).toMatchObject({ ok: true, value: 1 })
  })
})
