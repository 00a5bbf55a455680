import { SqlClient } from "@effect/sql"
import { Effect } from "effect"

/**
 * Apps and their integrations (src/apps/Apps.ts).
 *
 * - An app belongs to one workspace and owns one bot user (an account without email or
 *   password, a member with `is_bot`) and one bot token (`tokens.kind = 'bot'`). Its
 *   signing secret is kept as given out: Chorus signs with it. `uninstalled_at` keeps
 *   the row (ids stay unique, figures stay readable) once everything it held is revoked.
 * - The Events API subscription is part of the app row (one request URL, the event
 *   types); `delivery_status` is `active` or `paused` (the delivery worker paused it
 *   because its endpoint kept failing), and the delivery figures are cumulative counts
 *   the worker adds to.
 * - An incoming webhook's URL ends in a secret; only its SHA-256 is stored.
 * - A slash command is unique per workspace.
 * - A response URL (handed to an app with each slash command) is a secret too, valid
 *   for 30 minutes and 5 uses as on Slack; it remembers the last message it posted, for
 *   `replace_original`.
 */
export default Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`
    CREATE TABLE apps (
      id                 text        PRIMARY KEY,
      team_id            text        NOT NULL REFERENCES workspaces (id),
      name               text        NOT NULL,
      bot_id             text        NOT NULL UNIQUE,
      bot_user_id        text        NOT NULL UNIQUE REFERENCES accounts (id),
      token_id           text        NOT NULL REFERENCES tokens (id),
      scopes             text[]      NOT NULL,
      signing_secret     text        NOT NULL,
      verification_token text        NOT NULL,
      created_by         text        NOT NULL REFERENCES accounts (id),
      created_at         timestamptz NOT NULL DEFAULT now(),
      uninstalled_at     timestamptz NULL,
      request_url        text        NULL,
      events             text[]      NOT NULL DEFAULT '{}',
      delivery_status    text        NOT NULL DEFAULT 'active' CHECK (delivery_status IN ('active', 'paused')),
      paused_reason      text        NULL,
      paused_at          timestamptz NULL,
      sent               bigint      NOT NULL DEFAULT 0,
      failed             bigint      NOT NULL DEFAULT 0,
      retried            bigint      NOT NULL DEFAULT 0,
      dropped            bigint      NOT NULL DEFAULT 0,
      lag_p50_ms         integer     NULL,
      lag_p99_ms         integer     NULL,
      last_delivery_at   timestamptz NULL
    )`
  yield* sql`CREATE INDEX apps_team_idx ON apps (team_id)`

  yield* sql`
    CREATE TABLE app_webhooks (
      id          text        PRIMARY KEY,
      app_id      text        NOT NULL REFERENCES apps (id),
      team_id     text        NOT NULL,
      channel_id  text        NOT NULL,
      secret_hash bytea       NOT NULL UNIQUE,
      created_by  text        NOT NULL,
      created_at  timestamptz NOT NULL DEFAULT now(),
      revoked_at  timestamptz NULL
    )`
  yield* sql`CREATE INDEX app_webhooks_app_idx ON app_webhooks (app_id)`

  yield* sql`
    CREATE TABLE app_commands (
      team_id     text        NOT NULL,
      command     text        NOT NULL,
      app_id      text        NOT NULL REFERENCES apps (id),
      request_url text        NOT NULL,
      description text        NOT NULL DEFAULT '',
      created_at  timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (team_id, command)
    )`
  yield* sql`CREATE INDEX app_commands_app_idx ON app_commands (app_id)`

  yield* sql`
    CREATE TABLE app_response_urls (
      id               text        PRIMARY KEY,
      secret_hash      bytea       NOT NULL UNIQUE,
      app_id           text        NOT NULL REFERENCES apps (id),
      team_id          text        NOT NULL,
      channel_id       text        NOT NULL,
      user_id          text        NOT NULL,
      command          text        NOT NULL,
      expires_at       timestamptz NOT NULL,
      uses             integer     NOT NULL DEFAULT 0,
      last_ts          text        NULL,
      last_ephemeral_ts text       NULL
    )`
  yield* sql`CREATE INDEX app_response_urls_expiry_idx ON app_response_urls (expires_at)`
})
