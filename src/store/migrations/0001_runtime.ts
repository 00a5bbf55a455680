import { SqlClient } from "@effect/sql"
import { Effect } from "effect"

/**
 * The runtime's fence: the epoch of each shard's current owner. An actor's write
 * transaction reads its shard's row FOR SHARE and aborts unless the epoch is its own;
 * a new owner raises the epoch before it serves. A zombie owner therefore cannot
 * commit once a successor has started.
 */
export default Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`
    CREATE TABLE runtime_shard_fences (
      cluster    text        NOT NULL,
      shard      integer     NOT NULL,
      epoch      bigint      NOT NULL,
      node_id    text        NOT NULL,
      updated_at timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (cluster, shard)
    )`
})
