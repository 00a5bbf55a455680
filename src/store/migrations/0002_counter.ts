import { SqlClient } from "@effect/sql"
import { Effect } from "effect"

/**
 * The probe counter actor (src/actors/Counter.ts): a value per counter, and one row
 * per applied command so that a redelivered command is applied once and the tests can
 * check who applied what, under which lease epoch.
 */
export default Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`
    CREATE TABLE probe_counters (
      cluster    text   NOT NULL,
      counter_id text   NOT NULL,
      value      bigint NOT NULL,
      PRIMARY KEY (cluster, counter_id)
    )`
  yield* sql`
    CREATE TABLE probe_counter_commands (
      cluster    text        NOT NULL,
      command_id text        NOT NULL,
      counter_id text        NOT NULL,
      amount     bigint      NOT NULL,
      value      bigint      NOT NULL,
      node_id    text        NOT NULL,
      shard      integer     NOT NULL,
      epoch      bigint      NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
      PRIMARY KEY (cluster, command_id)
    )`
})
