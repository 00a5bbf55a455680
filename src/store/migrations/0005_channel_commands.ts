import { SqlClient } from "@effect/sql"
import { Effect } from "effect"

/**
 * Applied channel commands, for idempotency (src/actors/ChannelActor.ts): a command the
 * sender retries with the same command id (its reply was lost, the shard moved) is
 * answered from here instead of being applied twice. Written in the same transaction
 * as the command's events. Messages posted with a `client_msg_id` need no row here:
 * the unique `(channel_id, client_msg_id)` of `messages` answers for them.
 *
 * `seq` is the channel event the command ended with (null when it changed nothing);
 * `reply` the success it answered. Rows are only needed for as long as a sender may
 * retry (`requestDeadline`, 30 s by default); `created_at` (ms) lets a janitor prune.
 */
export default Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`
    CREATE TABLE channel_commands (
      channel_id text   NOT NULL,
      command_id text   NOT NULL,
      seq        bigint,
      reply      jsonb  NOT NULL,
      created_at bigint NOT NULL,
      PRIMARY KEY (channel_id, command_id)
    )`
  yield* sql`CREATE INDEX channel_commands_created ON channel_commands (created_at)`
})
