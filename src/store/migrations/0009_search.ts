import { SqlClient } from "@effect/sql"
import { Effect } from "effect"

/**
 * The PostgreSQL search index (src/search/PgSearch.ts; docs/decisions/0012-search.md).
 *
 * A table of its own rather than a column of `messages`: the index is written by the
 * asynchronous indexer (never inside the channel actor's group commit, so chat does not
 * pay for GIN maintenance), it holds tombstones and versions of its own, and it can be
 * rebuilt from `messages` at any time.
 *
 * - `version`: the channel seq the row is as of; a write lands only over an older one.
 * - `deleted`: a tombstone (text emptied); searches skip it.
 * - `tsv`: the English text-search vector of `text` (stemmed, like Slack's matching),
 *   under a GIN index; `has_link` and `in_thread` serve `has:link` and `is:thread`.
 * - `(team_id, ts)` lets a broad query (a common word) walk its newest matches and
 *   stop at the page; `(channel_id, ts)` (the key) serves `in:`; `(user_id, ts)`
 *   serves `from:` without words.
 */
export default Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`
    CREATE TABLE search_documents (
      channel_id text    NOT NULL,
      ts         text    NOT NULL,
      team_id    text    NOT NULL,
      user_id    text,
      thread_ts  text,
      text       text    NOT NULL DEFAULT '',
      has_link   boolean NOT NULL DEFAULT false,
      in_thread  boolean NOT NULL DEFAULT false,
      deleted    boolean NOT NULL DEFAULT false,
      version    bigint  NOT NULL,
      tsv        tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, text)) STORED,
      PRIMARY KEY (channel_id, ts)
    )`
  yield* sql`CREATE INDEX search_documents_tsv ON search_documents USING GIN (tsv)`
  yield* sql`CREATE INDEX search_documents_team_ts ON search_documents (team_id, ts) WHERE NOT deleted`
  yield* sql`CREATE INDEX search_documents_user ON search_documents (user_id, ts) WHERE NOT deleted`
})
