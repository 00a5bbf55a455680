import { SqlClient } from "@effect/sql"
import { Effect } from "effect"

/**
 * Conversations and their timelines. A channel's actor is the only writer of its rows
 * here (except creation of DM rows, keyed by `dm_key`, which is idempotent).
 *
 * - `channels.last_seq`/`last_ts`: the channel's event sequence and newest message ts.
 * - `channel_events`: the gap-free log of every state change, by `seq`; what a
 *   reconnecting client's `resume` replays, and what gateways read to fill gaps.
 * - `messages`: unique `(channel_id, ts)` and `(channel_id, client_msg_id)` (the last
 *   line of defence of invariant 4: a retried send yields one message).
 */
export default Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`
    CREATE TABLE channels (
      id            text        PRIMARY KEY,
      team_id       text        NOT NULL,
      name          text,
      is_private    boolean     NOT NULL DEFAULT false,
      is_im         boolean     NOT NULL DEFAULT false,
      is_mpim       boolean     NOT NULL DEFAULT false,
      dm_key        text,
      creator       text        NOT NULL,
      topic         text        NOT NULL DEFAULT '',
      topic_set_by  text,
      topic_set_at  bigint,
      purpose       text        NOT NULL DEFAULT '',
      purpose_set_by text,
      purpose_set_at bigint,
      is_archived   boolean     NOT NULL DEFAULT false,
      last_seq      bigint      NOT NULL DEFAULT 0,
      last_ts       text,
      created_at    bigint      NOT NULL
    )`
  yield* sql`CREATE UNIQUE INDEX channels_team_name ON channels (team_id, name) WHERE name IS NOT NULL`
  yield* sql`CREATE UNIQUE INDEX channels_team_dm_key ON channels (team_id, dm_key) WHERE dm_key IS NOT NULL`
  yield* sql`
    CREATE TABLE channel_members (
      channel_id    text   NOT NULL REFERENCES channels (id),
      user_id       text   NOT NULL,
      joined_seq    bigint NOT NULL,
      last_read     text   NOT NULL DEFAULT '0000000000.000000',
      last_read_seq bigint NOT NULL DEFAULT 0,
      PRIMARY KEY (channel_id, user_id)
    )`
  yield* sql`CREATE INDEX channel_members_user ON channel_members (user_id)`
  yield* sql`
    CREATE TABLE messages (
      channel_id     text    NOT NULL,
      ts             text    NOT NULL,
      seq            bigint  NOT NULL,
      team_id        text    NOT NULL,
      user_id        text,
      bot_id         text,
      subtype        text,
      text           text    NOT NULL DEFAULT '',
      blocks         jsonb,
      attachments    jsonb,
      files          jsonb,
      thread_ts      text,
      reply_broadcast boolean NOT NULL DEFAULT false,
      reply_count    integer NOT NULL DEFAULT 0,
      reply_users    text[]  NOT NULL DEFAULT '{}',
      latest_reply   text,
      client_msg_id  text,
      edited_ts      text,
      edited_by      text,
      deleted        boolean NOT NULL DEFAULT false,
      extra          jsonb,
      PRIMARY KEY (channel_id, ts)
    )`
  yield* sql`CREATE UNIQUE INDEX messages_client_msg_id ON messages (channel_id, client_msg_id) WHERE client_msg_id IS NOT NULL`
  yield* sql`CREATE INDEX messages_thread ON messages (channel_id, thread_ts, ts) WHERE thread_ts IS NOT NULL`
  yield* sql`
    CREATE TABLE channel_events (
      channel_id text   NOT NULL,
      seq        bigint NOT NULL,
      type       text   NOT NULL,
      event      jsonb  NOT NULL,
      created_at bigint NOT NULL,
      PRIMARY KEY (channel_id, seq)
    )`
  yield* sql`
    CREATE TABLE reactions (
      channel_id text   NOT NULL,
      message_ts text   NOT NULL,
      name       text   NOT NULL,
      user_id    text   NOT NULL,
      created_at bigint NOT NULL,
      PRIMARY KEY (channel_id, message_ts, name, user_id)
    )`
})
