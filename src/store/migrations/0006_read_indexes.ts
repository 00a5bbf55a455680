import { SqlClient } from "@effect/sql"
import { Effect } from "effect"

/**
 * Indexes for the conversation reads (src/store/ConversationsRead.ts).
 *
 * - `messages_timeline`: a channel's top-level timeline (unthreaded messages, thread
 *   parents, broadcast replies) by ts. `conversations.history` reads a page of it
 *   without stepping over thread replies, however long the threads. Its predicate only
 *   involves columns fixed at insert, so it costs writes one index entry per top-level
 *   message and never an update.
 * - `channels_team_public`: a workspace's public channels by id, for `conversations.list`
 *   pages, without stepping over the workspace's DMs and private channels.
 */
export default Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`
    CREATE INDEX messages_timeline ON messages (channel_id, ts)
    WHERE (thread_ts IS NULL OR thread_ts = ts OR reply_broadcast)`
  yield* sql`
    CREATE INDEX channels_team_public ON channels (team_id, id)
    WHERE (NOT is_private AND NOT is_im AND NOT is_mpim)`
})
