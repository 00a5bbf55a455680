import { SqlClient } from "@effect/sql"
import { Effect } from "effect"

/**
 * Files (src/files/Files.ts): one row per file, from `files.getUploadURLExternal` on.
 *
 * - `state`: `pending` (an upload URL was handed out) → `uploading` (bytes are arriving)
 *   → `uploaded` (stored, size and type known) → `complete` (`files.completeUploadExternal`)
 *   → `deleted`. `sweeping` marks rows a node's sweep claimed (abandoned uploads).
 * - `upload_secret`: SHA-256 of the secret in `upload_url` (the URL is the credential).
 * - `file_shares`: where a file was shared: the `file_share` message (`channel_id`, `ts`).
 *   `tombstoned` once the message shows the file as deleted.
 */
export default Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`
    CREATE TABLE files (
      id              text    PRIMARY KEY,
      team_id         text    NOT NULL,
      user_id         text    NOT NULL,
      name            text    NOT NULL,
      title           text    NOT NULL,
      alt_txt         text,
      snippet_type    text,
      declared_length bigint  NOT NULL,
      size            bigint,
      mimetype        text,
      filetype        text,
      pretty_type     text,
      state           text    NOT NULL,
      direct          boolean NOT NULL DEFAULT false,
      storage_key     text    NOT NULL,
      upload_secret   bytea   NOT NULL,
      created_at      bigint  NOT NULL,
      state_at        bigint  NOT NULL,
      completed_at    bigint,
      deleted_at      bigint
    )`
  yield* sql`CREATE INDEX files_listing ON files (team_id, created_at DESC, id DESC) WHERE state = 'complete'`
  yield* sql`CREATE INDEX files_unfinished ON files (created_at) WHERE state IN ('pending', 'uploading', 'uploaded', 'sweeping')`
  yield* sql`
    CREATE TABLE file_shares (
      file_id    text    NOT NULL REFERENCES files (id),
      channel_id text    NOT NULL,
      ts         text    NOT NULL,
      team_id    text    NOT NULL,
      user_id    text    NOT NULL,
      thread_ts  text,
      shared_at  bigint  NOT NULL,
      tombstoned boolean NOT NULL DEFAULT false,
      PRIMARY KEY (file_id, channel_id, ts)
    )`
  yield* sql`CREATE INDEX file_shares_channel ON file_shares (channel_id, file_id)`
})
