/**
 * PostgreSQL as the last line of defence for single ownership. The lease in NATS KV
 * decides who should serve a shard; this fence makes sure a node that lost the lease
 * (paused, partitioned) cannot commit anything after its successor started:
 *
 * - a new owner raises the shard's fence epoch before it serves (`raise`);
 * - every actor write transaction, as its last statement before COMMIT, reads the
 *   fence row FOR SHARE and aborts with `FencedOut` unless the epoch is still its own
 *   (`guard`).
 *
 * The row lock orders the two: a successor's raise waits for an old owner's commit
 * that already passed the check, and any later check of the old owner sees the new
 * epoch. Checking last keeps the lock for the commit only; and the node's sessions
 * run with `idle_in_transaction_session_timeout` (Database.ts), so a node frozen in
 * mid-transaction (SIGSTOP, a long GC) cannot hold the row and stall its successor.
 */
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { Effect } from "effect"
import { FencedOut } from "./RuntimeErrors.ts"

/** Raises the fence to `epoch`; fails with FencedOut if a higher epoch is already there. */
export const raise = (cluster: string, shard: number, epoch: number, nodeId: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const rows = yield* sql<{ epoch: number }>`
      INSERT INTO runtime_shard_fences (cluster, shard, epoch, node_id)
      VALUES (${cluster}, ${shard}, ${epoch}, ${nodeId})
      ON CONFLICT (cluster, shard) DO UPDATE
        SET epoch = EXCLUDED.epoch, node_id = EXCLUDED.node_id, updated_at = now()
        WHERE runtime_shard_fences.epoch < EXCLUDED.epoch
      RETURNING epoch`
    if (rows.length === 0) {
      return yield* new FencedOut({ shard, epoch, reason: "a newer owner already raised the fence" })
    }
  })

/** Runs `effect` in a transaction that commits only while the fence is at `epoch`. */
export const guard = <A, E, R>(
  cluster: string,
  shard: number,
  epoch: number,
  effect: Effect.Effect<A, E, R>
): Effect.Effect<A, E | SqlError | FencedOut, R | SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    return yield* sql.withTransaction(
      Effect.gen(function*() {
        const result = yield* effect
        const rows = yield* sql<{ epoch: number }>`
          SELECT epoch FROM runtime_shard_fences WHERE cluster = ${cluster} AND shard = ${shard} FOR SHARE`
        const current = rows[0]?.epoch
        if (current !== epoch) {
          return yield* new FencedOut({ shard, epoch, reason: `fence is at epoch ${current ?? "none"}` })
        }
        return result
      })
    )
  })
