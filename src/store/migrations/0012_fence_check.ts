import { SqlClient } from "@effect/sql"
import { Effect } from "effect"

/**
 * The group commit's fence check as one function (src/runtime/GroupCommit.ts), so that
 * a whole group can go to PostgreSQL as a single multi-statement query: it locks the
 * fence rows of the given shards that are still at the given epochs (FOR SHARE, in
 * shard order) and raises SQLSTATE CH001 unless every one is, which aborts the
 * statements after it with it.
 */
export default Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql.unsafe(`
    CREATE FUNCTION chorus_fence_check(p_cluster text, p_shards integer[], p_epochs bigint[]) RETURNS void
    LANGUAGE plpgsql AS $$
    DECLARE
      held integer;
    BEGIN
      SELECT count(*) INTO held FROM (
        SELECT 1 FROM runtime_shard_fences f
        JOIN unnest(p_shards, p_epochs) AS w(shard, epoch) ON f.shard = w.shard AND f.epoch = w.epoch
        WHERE f.cluster = p_cluster
        ORDER BY f.shard
        FOR SHARE OF f
      ) AS locked;
      IF held <> cardinality(p_shards) THEN
        RAISE EXCEPTION 'a shard''s fence moved' USING ERRCODE = 'CH001';
      END IF;
    END
    $$`)
})
