/**
 * The operator methods (`cluster.*`, API.md), behind the operator token from
 * configuration (`CHORUS_OPERATOR_TOKEN`; unset disables them). Any node answers for
 * the whole cluster: status and leases come from NATS KV, not from local memory.
 */
import { Effect, Either, Option, Redacted } from "effect"
import { timingSafeEqual } from "node:crypto"
import * as Counter from "../actors/Counter.ts"
import { ChorusConfig } from "../config/ChorusConfig.ts"
import * as ActorAddress from "../runtime/ActorAddress.ts"
import * as OperatorControl from "../runtime/OperatorControl.ts"
import * as Ring from "../runtime/Ring.ts"
import { Sharding } from "../runtime/Sharding.ts"
import { ShardingClient } from "../runtime/ShardingClient.ts"
import * as ShardLeases from "../runtime/ShardLeases.ts"
import type { ApiHandler, ApiRequest } from "./ApiMethod.ts"
import { ApiError, optionalNumber, requireString } from "./ApiMethod.ts"
import { Nats } from "./Nats.ts"

export const make = Effect.gen(function*() {
  const config = yield* ChorusConfig
  const sharding = yield* Sharding
  const nats = yield* Nats
  const client = yield* ShardingClient

  const authorize = (request: ApiRequest) => {
    const expected = config.operatorToken
    if (expected === undefined) return Effect.fail(new ApiError({ code: "not_allowed_token_type" }))
    const given = Buffer.from(request.token ?? "")
    const wanted = Buffer.from(Redacted.value(expected))
    if (given.length === wanted.length && timingSafeEqual(given, wanted)) return Effect.void
    return Effect.fail(new ApiError({ code: request.token === undefined ? "not_authed" : "invalid_auth" }))
  }

  const operator = (handler: ApiHandler): ApiHandler => (request) => Effect.zipRight(authorize(request), handler(request))

  const natsFailure = (e: { message: string }) =>
    Effect.logError("cluster method: NATS failed", { error: e.message }).pipe(Effect.zipRight(Effect.fail(new ApiError({ code: "service_unavailable", status: 503 }))))

  const leases = ShardLeases.readAll(config.shards).pipe(Effect.provideService(Nats, nats), Effect.catchAll(natsFailure))

  const status: ApiHandler = () =>
    Effect.gen(function*() {
      const view = yield* sharding.view
      const ring = yield* sharding.ring
      const all = yield* leases
      const now = Date.now()
      const heldBy = new Map<string, number>()
      let unheld = 0
      for (let shard = 0; shard < config.shards; shard++) {
        const lease = all.get(shard)
        const holder = lease?.holder
        const live = holder !== undefined && view.live.some((n) => n.id === holder.node && n.incarnation === holder.incarnation)
        if (live && holder !== undefined) heldBy.set(holder.node, (heldBy.get(holder.node) ?? 0) + 1)
        else unheld++
      }
      const liveIds = new Set(view.live.map((n) => n.id))
      return {
        cluster: config.cluster,
        shards: config.shards,
        shards_unheld: unheld,
        converged: unheld === 0 && [...view.placeable].every((n) => (heldBy.get(n.id) ?? 0) === Ring.shardsOf(ring, n.id).length),
        nodes: [...view.nodes.values()].sort((a, b) => a.id.localeCompare(b.id)).map((n) => ({
          id: n.id,
          url: n.url,
          state: liveIds.has(n.id) ? n.state : "dead",
          weight: n.weight,
          incarnation: n.incarnation,
          heartbeat_age_ms: now - n.heartbeatAt,
          started_at: n.startedAt,
          shards_assigned: Ring.shardsOf(ring, n.id).length,
          shards_held: heldBy.get(n.id) ?? 0,
          actors: n.stats.actors,
          messages_per_s: n.stats.messagesPerSecond
        }))
      }
    })

  const ringMethod: ApiHandler = () =>
    Effect.gen(function*() {
      const ring = yield* sharding.ring
      const owners = Array.from({ length: config.shards }, (_, shard) => Ring.ownerOf(ring, shard) ?? null)
      const counts = new Map<string, number>()
      for (const o of owners) if (o !== null) counts.set(o, (counts.get(o) ?? 0) + 1)
      return {
        shards: config.shards,
        vnodes_per_weight: config.vnodesPerWeight,
        epsilon: config.balanceEpsilon,
        balance_max_over_mean: Ring.balance(ring),
        nodes: [...counts.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([id, shards]) => ({ id, shards })),
        owners
      }
    })

  const placement: ApiHandler = (request) =>
    Effect.gen(function*() {
      const input = yield* requireString(request, "address")
      const address = ActorAddress.parse(input)
      if (Either.isLeft(address)) return yield* new ApiError({ code: "invalid_arguments", messages: [`[ERROR] ${address.left.message}`] })
      const shard = Ring.shardOf(String(address.right), config.shards)
      const ring = yield* sharding.ring
      const lease = yield* ShardLeases.read(shard).pipe(Effect.provideService(Nats, nats), Effect.catchAll(natsFailure))
      return {
        address: String(address.right),
        shard,
        node: Ring.ownerOf(ring, shard) ?? null,
        lease: Option.match(lease, {
          onNone: () => null,
          onSome: (l) => ({ node: l.holder?.node ?? null, epoch: l.epoch })
        })
      }
    })

  const nodeArg = (request: ApiRequest) =>
    Effect.gen(function*() {
      const node = yield* requireString(request, "node")
      const view = yield* sharding.view
      const record = view.live.find((n) => n.id === node)
      if (record === undefined) return yield* new ApiError({ code: "node_not_found" })
      return record
    })

  const drain: ApiHandler = (request) =>
    Effect.gen(function*() {
      const node = yield* nodeArg(request)
      yield* OperatorControl.requestDrain(node.id, node.incarnation).pipe(Effect.provideService(Nats, nats), Effect.catchAll(natsFailure))
      return { node: node.id, state: "draining" }
    })

  const setWeight: ApiHandler = (request) =>
    Effect.gen(function*() {
      const node = yield* nodeArg(request)
      const weight = yield* optionalNumber(request, "weight")
      if (weight === undefined || weight <= 0 || weight > 1000) {
        return yield* new ApiError({ code: "invalid_arguments", messages: ["[ERROR] weight must be a number in (0, 1000]"] })
      }
      yield* OperatorControl.requestWeight(node.id, weight).pipe(Effect.provideService(Nats, nats), Effect.catchAll(natsFailure))
      return { node: node.id, weight }
    })

  // Routes a probe-counter increment through this node to the counter's owner: an
  // end-to-end check of placement, mailboxes and persistence without chat state.
  const probe: ApiHandler = (request) =>
    Effect.gen(function*() {
      const counter = yield* requireString(request, "counter")
      const amount = (yield* optionalNumber(request, "amount")) ?? 1
      if (!Number.isInteger(amount) || Math.abs(amount) > 1_000_000) {
        return yield* new ApiError({ code: "invalid_arguments", messages: ["[ERROR] amount must be an integer"] })
      }
      const commandId = typeof request.args["command_id"] === "string" ? request.args["command_id"] : undefined
      const applied = yield* client.send(Counter.Counter, counter, new Counter.Increment({ amount }), commandId === undefined ? {} : { commandId }).pipe(
        Effect.catchAll((error) => Effect.fail(new ApiError({ code: "probe_failed", detail: { reason: error._tag } })))
      )
      return { via: config.nodeId, shard: applied.shard, owner: applied.node, epoch: applied.epoch, value: applied.value, fresh: applied.fresh }
    })

  return new Map<string, ApiHandler>([
    ["cluster.probe", operator(probe)],
    ["cluster.status", operator(status)],
    ["cluster.ring", operator(ringMethod)],
    ["cluster.placement", operator(placement)],
    ["cluster.drain", operator(drain)],
    ["cluster.setWeight", operator(setWeight)]
  ])
})
