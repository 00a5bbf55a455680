/**
 * The probe counter: a tiny actor persisted in PostgreSQL that every node hosts, so
 * operators and tests can check the runtime end to end (placement, durability,
 * exactly-once application, fencing) without any chat state. `bench:runtime` and the
 * failover tests drive it.
 *
 * Batches are group-committed (with every other actor's writes on the node), and a
 * command id already applied is answered from its stored row, not applied again.
 */
import { SqlClient } from "@effect/sql"
import { Effect, Exit, Schema } from "effect"
import type { NonEmptyReadonlyArray } from "effect/Array"
import * as Behaviour from "../runtime/Behaviour.ts"
import type { ActorContext, Incoming } from "../runtime/Behaviour.ts"
import * as GroupCommit from "../runtime/GroupCommit.ts"
import * as Entity from "../runtime/Entity.ts"

export const Applied = Schema.Struct({
  /** The counter's value after this command. */
  value: Schema.Number,
  /** False when the command id had been applied before (a redelivery or retry). */
  fresh: Schema.Boolean,
  node: Schema.String,
  shard: Schema.Number,
  epoch: Schema.Number
})
export type Applied = typeof Applied.Type

export class Increment extends Schema.TaggedRequest<Increment>()("Increment", {
  failure: Schema.Never,
  success: Applied,
  payload: { amount: Schema.Int }
}) {}

export class Get extends Schema.TaggedRequest<Get>()("Get", {
  failure: Schema.Never,
  success: Schema.Struct({ value: Schema.Number, node: Schema.String, shard: Schema.Number, epoch: Schema.Number }),
  payload: {}
}) {}

export const Counter = Entity.make("counter", [Increment, Get], { Increment: "durable", Get: "volatile" })

interface State {
  readonly value: number
  /** When this activation started (ms since epoch): see `mayBeApplied`. */
  readonly activatedAt: number
  /** Command ids applied by this activation, newest last (bounded), with their values. */
  readonly recent: Map<string, number>
}

const recentLimit = 4_096

/**
 * Only a command first sent before this activation began can have been applied by an
 * earlier one (a previous owner, or before a restart): only those are looked up in
 * PostgreSQL; the rest are known fresh. The margin covers clock skew between nodes.
 */
const skewMarginMs = 5_000
const mayBeApplied = (state: State, sentAt: number) => sentAt < state.activatedAt + skewMarginMs

export const behaviour = Behaviour.make({
  entity: Counter,
  init: (ctx) =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const rows = yield* sql<{ value: number }>`
        SELECT value FROM probe_counters WHERE cluster = ${ctx.cluster} AND counter_id = ${ctx.address.id}`
      return { value: rows[0]?.value ?? 0, activatedAt: Date.now(), recent: new Map() } satisfies State
    }),
  receive: Effect.fnUntraced(function*(ctx: ActorContext, state: State, batch: NonEmptyReadonlyArray<Incoming<Increment | Get>>) {
    const increments = batch.filter((i) => i._tag === "Increment")
    const about = { node: ctx.nodeId, shard: ctx.shard, epoch: ctx.epoch }
    let value = state.value
    if (increments.length > 0) {
      const cluster = ctx.cluster
      const sql = yield* SqlClient.SqlClient
      // A redelivered or retried command id is answered from its stored row.
      const seen = new Map<string, number>()
      for (const i of increments) {
        const v = state.recent.get(i.commandId)
        if (v !== undefined) seen.set(i.commandId, v)
      }
      const unsure = increments.filter((i) => !seen.has(i.commandId) && mayBeApplied(state, i.sentAt)).map((i) => i.commandId)
      if (unsure.length > 0) {
        const applied = yield* sql<{ command_id: string; value: number }>`
          SELECT command_id, value FROM probe_counter_commands
          WHERE cluster = ${cluster} AND command_id IN ${sql.in(unsure)}`
        for (const r of applied) seen.set(r.command_id, r.value)
      }
      const rows: Array<Record<string, string | number>> = []
      const replies = new Map<string, { value: number; fresh: boolean }>()
      for (const incoming of increments) {
        const prior = seen.get(incoming.commandId)
        if (prior !== undefined) {
          replies.set(incoming.commandId, { value: prior, fresh: false })
          continue
        }
        value += incoming.message.amount
        seen.set(incoming.commandId, value)
        replies.set(incoming.commandId, { value, fresh: true })
        rows.push({
          cluster,
          command_id: incoming.commandId,
          counter_id: ctx.address.id,
          amount: incoming.message.amount,
          value,
          node_id: ctx.nodeId,
          shard: ctx.shard,
          epoch: ctx.epoch
        })
      }
      if (rows.length > 0) {
        yield* ctx.commit([
          GroupCommit.insert("probe_counter_commands", rows),
          GroupCommit.insert("probe_counters", [{ cluster, counter_id: ctx.address.id, value }], {
            target: ["cluster", "counter_id"],
            update: ["value"]
          })
        ])
      }
      for (const [id, r] of replies) {
        if (r.fresh) state.recent.set(id, r.value)
      }
      for (const id of state.recent.keys()) {
        if (state.recent.size <= recentLimit) break
        state.recent.delete(id)
      }
      for (const incoming of increments) {
        const r = replies.get(incoming.commandId) ?? { value, fresh: false }
        incoming.complete(Exit.succeed({ ...r, ...about }))
      }
    }
    for (const incoming of batch) {
      if (incoming._tag === "Get") incoming.complete(Exit.succeed({ value, ...about }))
    }
    return { ...state, value } satisfies State
  })
})
