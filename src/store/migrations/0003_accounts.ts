import { SqlClient } from "@effect/sql"
import { Effect } from "effect"

/**
 * Accounts, workspaces, membership, pending invites and API tokens (src/store/Accounts.ts).
 *
 * - An account is global: one `U` id, an email unique case-insensitively. Bot users are
 *   accounts too (no email, no password), so every `U` id resolves the same way.
 * - A member row says which role an account has in a workspace; removal sets `deleted`
 *   (Slack keeps deactivated users visible with `deleted: true`).
 * - An invite waits for an email that has no account yet; signup turns it into a member.
 * - Tokens are stored as the SHA-256 of the secret, never the secret; `revoked_at` keeps
 *   the row so a revoked token answers `token_revoked` rather than `invalid_auth`.
 */
export default Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`
    CREATE TABLE accounts (
      id            text        PRIMARY KEY,
      email         text        NULL,
      name          text        NOT NULL,
      handle        text        NOT NULL,
      password_hash text        NULL,
      created_at    timestamptz NOT NULL DEFAULT now()
    )`
  yield* sql`CREATE UNIQUE INDEX accounts_email_key ON accounts (lower(email))`

  yield* sql`
    CREATE TABLE workspaces (
      id         text        PRIMARY KEY,
      name       text        NOT NULL,
      domain     text        NOT NULL UNIQUE,
      created_by text        NULL REFERENCES accounts (id),
      created_at timestamptz NOT NULL DEFAULT now()
    )`

  yield* sql`
    CREATE TABLE workspace_members (
      team_id   text        NOT NULL REFERENCES workspaces (id),
      user_id   text        NOT NULL REFERENCES accounts (id),
      role      text        NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'guest')),
      is_bot    boolean     NOT NULL DEFAULT false,
      bot_id    text        NULL,
      deleted   boolean     NOT NULL DEFAULT false,
      joined_at timestamptz NOT NULL DEFAULT clock_timestamp(),
      PRIMARY KEY (team_id, user_id)
    )`
  yield* sql`CREATE INDEX workspace_members_user_idx ON workspace_members (user_id)`

  yield* sql`
    CREATE TABLE invites (
      team_id    text        NOT NULL REFERENCES workspaces (id),
      email      text        NOT NULL CHECK (email = lower(email)),
      role       text        NOT NULL CHECK (role IN ('admin', 'member', 'guest')),
      invited_by text        NOT NULL REFERENCES accounts (id),
      created_at timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (team_id, email)
    )`
  yield* sql`CREATE INDEX invites_email_idx ON invites (email)`

  yield* sql`
    CREATE TABLE tokens (
      id         text        PRIMARY KEY,
      hash       bytea       NOT NULL UNIQUE,
      user_id    text        NOT NULL REFERENCES accounts (id),
      team_id    text        NULL REFERENCES workspaces (id),
      kind       text        NOT NULL CHECK (kind IN ('user', 'bot')),
      app_id     text        NULL,
      bot_id     text        NULL,
      scopes     text[]      NULL,
      created_at timestamptz NOT NULL DEFAULT now(),
      revoked_at timestamptz NULL,
      CHECK (kind = 'user' OR (team_id IS NOT NULL AND bot_id IS NOT NULL))
    )`
  yield* sql`CREATE INDEX tokens_user_idx ON tokens (user_id)`
})
