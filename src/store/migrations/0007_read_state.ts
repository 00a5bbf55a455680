import { SqlClient } from "@effect/sql"
import { Effect } from "effect"

/**
 * Per-user live state: read markers and presence.
 *
 * - Read markers need no new column: `channel_members.last_read` (ts) and
 *   `last_read_seq` (the seq of the newest message at or before it) exist since 0004;
 *   the user-session actor (src/actors/UserSessionActor.ts) is their one writer.
 * - `user_presence`: what the presence actors (src/actors/PresenceActor.ts) persist
 *   when a user's presence changes — coming online or going offline, manual away — and
 *   never on the periodic edge reports. A presence actor that starts (after a failover,
 *   a rebalance) reads the rows of its shard that are online or manually away, so that
 *   a dead node's users still go offline by TTL and their subscribers hear of it.
 *   `shard` is the shard of `presence/<user>` (fixed for a cluster's life); `cluster`
 *   because several clusters may share one database. Times are ms since the epoch.
 */
export default Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`
    CREATE TABLE user_presence (
      cluster       text    NOT NULL,
      user_id       text    NOT NULL,
      shard         integer NOT NULL,
      online        boolean NOT NULL DEFAULT false,
      manual_away   boolean NOT NULL DEFAULT false,
      connections   integer NOT NULL DEFAULT 0,
      last_activity bigint  NOT NULL DEFAULT 0,
      updated_at    bigint  NOT NULL,
      PRIMARY KEY (cluster, user_id)
    )`
  yield* sql`CREATE INDEX user_presence_live ON user_presence (cluster, shard) WHERE online OR manual_away`
})
