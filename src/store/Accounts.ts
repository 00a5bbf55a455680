/**
 * The accounts repository: accounts, workspaces, memberships, pending invites and
 * tokens (schema: migrations/0003_accounts.ts). Each operation that must agree with
 * itself (an account and the invites it consumes, a workspace and its owner, and the
 * token handed back with either) is one transaction; uniqueness is decided by the
 * database (`ON CONFLICT`), never by a read-then-write.
 */
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { Context, Effect, Layer, Option, Schema } from "effect"
import type { Role } from "../auth/Principal.ts"
import type { TokenKind } from "../auth/Tokens.ts"

/** Roles an invite may grant; ownership is only ever given by creating a workspace. */
export type InvitedRole = Exclude<Role, "owner">

export interface Account {
  readonly id: string
  /** Undefined for bot users. */
  readonly email: string | undefined
  /** Full name as given at signup (Slack's `real_name`). */
  readonly name: string
  /** Username derived at signup (Slack's `name`); not unique. */
  readonly handle: string
  /** Undefined for bot users, who cannot log in. */
  readonly passwordHash: string | undefined
  readonly createdAt: Date
}

export interface Workspace {
  readonly id: string
  readonly name: string
  readonly domain: string
  /** The primary owner. */
  readonly createdBy: string | undefined
  readonly createdAt: Date
}

export interface Membership {
  readonly teamId: string
  readonly userId: string
  readonly role: Role
  readonly isBot: boolean
  readonly botId: string | undefined
  /** Removed from the workspace: still listed (Slack's `deleted: true`), cannot act. */
  readonly deleted: boolean
}

/** A member as other members see it: membership and account together. */
export interface WorkspaceUser extends Membership {
  readonly email: string | undefined
  readonly name: string
  readonly handle: string
  readonly isPrimaryOwner: boolean
  readonly createdAt: Date
}

export interface NewAccount {
  readonly id: string
  readonly email: string
  readonly name: string
  readonly handle: string
  readonly passwordHash: string
}

export interface NewToken {
  readonly id: string
  /** SHA-256 of the secret (src/auth/Tokens.ts). */
  readonly hash: Uint8Array
  readonly userId: string
  /** The workspace it acts in; undefined for a token that acts in none yet. */
  readonly teamId: string | undefined
  readonly kind: TokenKind
  readonly appId: string | undefined
  readonly botId: string | undefined
  /** Granted scopes; undefined means every scope (user tokens). */
  readonly scopes: ReadonlyArray<string> | undefined
}

/** A token row joined with its holder's membership in the token's workspace. */
export interface StoredToken {
  readonly id: string
  readonly userId: string
  readonly teamId: string | undefined
  readonly kind: TokenKind
  readonly appId: string | undefined
  readonly botId: string | undefined
  readonly scopes: ReadonlyArray<string> | undefined
  readonly revoked: boolean
  /** Role in `teamId`; undefined when the token has no workspace or the membership is gone. */
  readonly role: Role | undefined
  readonly memberDeleted: boolean
}

export type InviteOutcome =
  | { readonly _tag: "Added"; readonly userId: string }
  | { readonly _tag: "Invited" }

export class EmailTaken extends Schema.TaggedError<EmailTaken>()("EmailTaken", { email: Schema.String }) {}
export class DomainTaken extends Schema.TaggedError<DomainTaken>()("DomainTaken", { domain: Schema.String }) {}
export class AlreadyInTeam extends Schema.TaggedError<AlreadyInTeam>()("AlreadyInTeam", {
  teamId: Schema.String,
  userId: Schema.String
}) {}

export interface AccountsShape {
  /**
   * Creates an account, makes it a member of every workspace that invited its email
   * (with the invited role; the invites are consumed) and stores `token`, atomically.
   */
  readonly signup: (input: { readonly account: NewAccount; readonly token: NewToken }) => Effect.Effect<
    { readonly account: Account; readonly joined: ReadonlyArray<{ readonly teamId: string; readonly role: Role }> },
    EmailTaken | SqlError
  >
  /** Case-insensitive. */
  readonly accountByEmail: (email: string) => Effect.Effect<Option.Option<Account>, SqlError>
  readonly accountById: (userId: string) => Effect.Effect<Option.Option<Account>, SqlError>
  readonly workspace: (teamId: string) => Effect.Effect<Option.Option<Workspace>, SqlError>
  /** The workspaces the account is an active member of, oldest membership first. */
  readonly workspacesOf: (userId: string) => Effect.Effect<ReadonlyArray<Workspace>, SqlError>
  readonly membership: (teamId: string, userId: string) => Effect.Effect<Option.Option<Membership>, SqlError>
  /** Creates a workspace owned by `ownerId` and stores `token` (acting in it), atomically. */
  readonly createWorkspace: (input: {
    readonly workspace: { readonly id: string; readonly name: string; readonly domain: string }
    readonly ownerId: string
    readonly token: NewToken
  }) => Effect.Effect<Workspace, DomainTaken | SqlError>
  /**
   * Adds the account with `email` to the workspace (a removed member comes back with the
   * new role), or records an invite that its signup will honour when no account has it.
   */
  readonly invite: (input: {
    readonly teamId: string
    readonly email: string
    readonly role: InvitedRole
    readonly invitedBy: string
  }) => Effect.Effect<InviteOutcome, AlreadyInTeam | SqlError>
  /** A page of the workspace's members (removed ones included) by user id, after `after`. */
  readonly users: (
    teamId: string,
    page: { readonly after: string | undefined; readonly limit: number }
  ) => Effect.Effect<ReadonlyArray<WorkspaceUser>, SqlError>
  readonly user: (teamId: string, userId: string) => Effect.Effect<Option.Option<WorkspaceUser>, SqlError>
  /** Case-insensitive; bots have no email. */
  readonly userByEmail: (teamId: string, email: string) => Effect.Effect<Option.Option<WorkspaceUser>, SqlError>
  /** A bot user (an account without email or password) as a member of `teamId`; for apps. */
  readonly addBotUser: (input: {
    readonly teamId: string
    readonly userId: string
    readonly botId: string
    readonly name: string
    readonly handle: string
  }) => Effect.Effect<void, SqlError>
  readonly issueToken: (token: NewToken) => Effect.Effect<void, SqlError>
  /** One indexed lookup: the token and its holder's membership. */
  readonly tokenByHash: (hash: Uint8Array) => Effect.Effect<Option.Option<StoredToken>, SqlError>
  /** Idempotent. */
  readonly revokeToken: (tokenId: string) => Effect.Effect<void, SqlError>
}

export class Accounts extends Context.Tag("chorus/store/Accounts")<Accounts, AccountsShape>() {}

interface AccountRow {
  readonly id: string
  readonly email: string | null
  readonly name: string
  readonly handle: string
  readonly password_hash: string | null
  readonly created_at: Date
}

interface WorkspaceRow {
  readonly id: string
  readonly name: string
  readonly domain: string
  readonly created_by: string | null
  readonly created_at: Date
}

interface MemberRow {
  readonly team_id: string
  readonly user_id: string
  readonly role: Role
  readonly is_bot: boolean
  readonly bot_id: string | null
  readonly deleted: boolean
}

interface UserRow extends MemberRow {
  readonly email: string | null
  readonly name: string
  readonly handle: string
  readonly is_primary_owner: boolean
  readonly created_at: Date
}

interface TokenRow {
  readonly id: string
  readonly user_id: string
  readonly team_id: string | null
  readonly kind: TokenKind
  readonly app_id: string | null
  readonly bot_id: string | null
  readonly scopes: ReadonlyArray<string> | null
  readonly revoked: boolean
  readonly role: Role | null
  readonly deleted: boolean | null
}

const orUndefined = <A>(value: A | null): A | undefined => value ?? undefined

const toAccount = (row: AccountRow): Account => ({
  id: row.id,
  email: orUndefined(row.email),
  name: row.name,
  handle: row.handle,
  passwordHash: orUndefined(row.password_hash),
  createdAt: row.created_at
})

const toWorkspace = (row: WorkspaceRow): Workspace => ({
  id: row.id,
  name: row.name,
  domain: row.domain,
  createdBy: orUndefined(row.created_by),
  createdAt: row.created_at
})

const toMembership = (row: MemberRow): Membership => ({
  teamId: row.team_id,
  userId: row.user_id,
  role: row.role,
  isBot: row.is_bot,
  botId: orUndefined(row.bot_id),
  deleted: row.deleted
})

const toUser = (row: UserRow): WorkspaceUser => ({
  ...toMembership(row),
  email: orUndefined(row.email),
  name: row.name,
  handle: row.handle,
  isPrimaryOwner: row.is_primary_owner,
  createdAt: row.created_at
})

const toToken = (row: TokenRow): StoredToken => ({
  id: row.id,
  userId: row.user_id,
  teamId: orUndefined(row.team_id),
  kind: row.kind,
  appId: orUndefined(row.app_id),
  botId: orUndefined(row.bot_id),
  scopes: orUndefined(row.scopes),
  revoked: row.revoked,
  role: orUndefined(row.role),
  memberDeleted: row.deleted === true
})

const first = <A, B>(rows: ReadonlyArray<A>, f: (a: A) => B): Option.Option<B> =>
  rows.length === 0 ? Option.none() : Option.some(f(rows[0] as A))

/**
 * Advisory-lock key space of the email lock (the two-integer form, apart from the
 * single-key migration lock).
 */
const emailLockSpace = 3003

export const make: Effect.Effect<AccountsShape, never, SqlClient.SqlClient> = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient

  /**
   * Serialises the transactions that decide an email's fate (signup, invite), so an
   * invite recorded while the same email signs up is never left dangling.
   */
  const lockEmail = (email: string) => sql`SELECT pg_advisory_xact_lock(${emailLockSpace}, hashtext(${email.toLowerCase()}))`

  const issueToken = (token: NewToken) =>
    Effect.asVoid(sql`
      INSERT INTO tokens (id, hash, user_id, team_id, kind, app_id, bot_id, scopes)
      VALUES (${token.id}, ${Buffer.from(token.hash)}, ${token.userId}, ${token.teamId ?? null}, ${token.kind},
              ${token.appId ?? null}, ${token.botId ?? null}, ${token.scopes === undefined ? null : [...token.scopes]}::text[])`)

  const signup: AccountsShape["signup"] = ({ account, token }) =>
    sql.withTransaction(Effect.gen(function*() {
      const email = account.email.toLowerCase()
      yield* lockEmail(email)
      const inserted = yield* sql<AccountRow>`
        INSERT INTO accounts (id, email, name, handle, password_hash)
        VALUES (${account.id}, ${account.email}, ${account.name}, ${account.handle}, ${account.passwordHash})
        ON CONFLICT ((lower(email))) DO NOTHING
        RETURNING id, email, name, handle, password_hash, created_at`
      const row = inserted[0]
      if (row === undefined) return yield* new EmailTaken({ email: account.email })
      const joined = yield* sql<{ team_id: string; role: Role }>`
        WITH invited AS (DELETE FROM invites WHERE email = ${email} RETURNING team_id, role)
        INSERT INTO workspace_members (team_id, user_id, role)
        SELECT team_id, ${account.id}, role FROM invited
        ON CONFLICT (team_id, user_id) DO NOTHING
        RETURNING team_id, role`
      yield* issueToken(token)
      return { account: toAccount(row), joined: joined.map((j) => ({ teamId: j.team_id, role: j.role })) }
    }))

  const accountByEmail: AccountsShape["accountByEmail"] = (email) =>
    Effect.map(
      sql<AccountRow>`SELECT id, email, name, handle, password_hash, created_at FROM accounts WHERE lower(email) = lower(${email})`,
      (rows) => first(rows, toAccount)
    )

  const accountById: AccountsShape["accountById"] = (userId) =>
    Effect.map(
      sql<AccountRow>`SELECT id, email, name, handle, password_hash, created_at FROM accounts WHERE id = ${userId}`,
      (rows) => first(rows, toAccount)
    )

  const workspace: AccountsShape["workspace"] = (teamId) =>
    Effect.map(
      sql<WorkspaceRow>`SELECT id, name, domain, created_by, created_at FROM workspaces WHERE id = ${teamId}`,
      (rows) => first(rows, toWorkspace)
    )

  const workspacesOf: AccountsShape["workspacesOf"] = (userId) =>
    Effect.map(
      sql<WorkspaceRow>`
        SELECT w.id, w.name, w.domain, w.created_by, w.created_at
        FROM workspace_members m JOIN workspaces w ON w.id = m.team_id
        WHERE m.user_id = ${userId} AND NOT m.deleted
        ORDER BY m.joined_at, w.id`,
      (rows) => rows.map(toWorkspace)
    )

  const membership: AccountsShape["membership"] = (teamId, userId) =>
    Effect.map(
      sql<MemberRow>`
        SELECT team_id, user_id, role, is_bot, bot_id, deleted
        FROM workspace_members WHERE team_id = ${teamId} AND user_id = ${userId}`,
      (rows) => first(rows, toMembership)
    )

  const createWorkspace: AccountsShape["createWorkspace"] = ({ ownerId, token, workspace: ws }) =>
    sql.withTransaction(Effect.gen(function*() {
      const inserted = yield* sql<WorkspaceRow>`
        INSERT INTO workspaces (id, name, domain, created_by)
        VALUES (${ws.id}, ${ws.name}, ${ws.domain}, ${ownerId})
        ON CONFLICT (domain) DO NOTHING
        RETURNING id, name, domain, created_by, created_at`
      const row = inserted[0]
      if (row === undefined) return yield* new DomainTaken({ domain: ws.domain })
      yield* sql`INSERT INTO workspace_members (team_id, user_id, role) VALUES (${ws.id}, ${ownerId}, 'owner')`
      yield* issueToken(token)
      return toWorkspace(row)
    }))

  const invite: AccountsShape["invite"] = ({ email, invitedBy, role, teamId }) =>
    sql.withTransaction(Effect.gen(function*() {
      const normalised = email.toLowerCase()
      yield* lockEmail(normalised)
      const account = yield* sql<{ id: string }>`SELECT id FROM accounts WHERE lower(email) = ${normalised}`
      const userId = account[0]?.id
      if (userId === undefined) {
        yield* sql`
          INSERT INTO invites (team_id, email, role, invited_by) VALUES (${teamId}, ${normalised}, ${role}, ${invitedBy})
          ON CONFLICT (team_id, email) DO UPDATE
          SET role = EXCLUDED.role, invited_by = EXCLUDED.invited_by, created_at = now()`
        return { _tag: "Invited" } as const
      }
      const added = yield* sql<{ user_id: string }>`
        INSERT INTO workspace_members (team_id, user_id, role) VALUES (${teamId}, ${userId}, ${role})
        ON CONFLICT (team_id, user_id) DO UPDATE
        SET role = EXCLUDED.role, deleted = false, joined_at = clock_timestamp()
        WHERE workspace_members.deleted
        RETURNING user_id`
      if (added.length === 0) return yield* new AlreadyInTeam({ teamId, userId })
      return { _tag: "Added", userId } as const
    }))

  const userColumns = sql.literal(`
    m.team_id, m.user_id, m.role, m.is_bot, m.bot_id, m.deleted,
    a.email, a.name, a.handle, a.created_at,
    (m.role = 'owner' AND w.created_by IS NOT DISTINCT FROM m.user_id) AS is_primary_owner
    FROM workspace_members m
    JOIN accounts a ON a.id = m.user_id
    JOIN workspaces w ON w.id = m.team_id`)

  const users: AccountsShape["users"] = (teamId, { after, limit }) =>
    Effect.map(
      sql<UserRow>`
        SELECT ${userColumns}
        WHERE m.team_id = ${teamId} AND m.user_id > ${after ?? ""}
        ORDER BY m.user_id
        LIMIT ${limit}`,
      (rows) => rows.map(toUser)
    )

  const user: AccountsShape["user"] = (teamId, userId) =>
    Effect.map(
      sql<UserRow>`SELECT ${userColumns} WHERE m.team_id = ${teamId} AND m.user_id = ${userId}`,
      (rows) => first(rows, toUser)
    )

  const userByEmail: AccountsShape["userByEmail"] = (teamId, email) =>
    Effect.map(
      sql<UserRow>`SELECT ${userColumns} WHERE m.team_id = ${teamId} AND lower(a.email) = lower(${email})`,
      (rows) => first(rows, toUser)
    )

  const addBotUser: AccountsShape["addBotUser"] = ({ botId, handle, name, teamId, userId }) =>
    sql.withTransaction(Effect.gen(function*() {
      yield* sql`INSERT INTO accounts (id, email, name, handle, password_hash) VALUES (${userId}, NULL, ${name}, ${handle}, NULL)`
      yield* sql`
        INSERT INTO workspace_members (team_id, user_id, role, is_bot, bot_id)
        VALUES (${teamId}, ${userId}, 'member', true, ${botId})`
    }))

  const tokenByHash: AccountsShape["tokenByHash"] = (hash) =>
    Effect.map(
      sql<TokenRow>`
        SELECT t.id, t.user_id, t.team_id, t.kind, t.app_id, t.bot_id, t.scopes,
               t.revoked_at IS NOT NULL AS revoked, m.role, m.deleted
        FROM tokens t
        LEFT JOIN workspace_members m ON m.team_id = t.team_id AND m.user_id = t.user_id
        WHERE t.hash = ${Buffer.from(hash)}`,
      (rows) => first(rows, toToken)
    )

  const revokeToken: AccountsShape["revokeToken"] = (tokenId) =>
    Effect.asVoid(sql`UPDATE tokens SET revoked_at = now() WHERE id = ${tokenId} AND revoked_at IS NULL`)

  return {
    signup,
    accountByEmail,
    accountById,
    workspace,
    workspacesOf,
    membership,
    createWorkspace,
    invite,
    users,
    user,
    userByEmail,
    addBotUser,
    issueToken,
    tokenByHash,
    revokeToken
  }
})

/** The PostgreSQL repository (the schema comes from `Database.migrate`). */
export const layer: Layer.Layer<Accounts, never, SqlClient.SqlClient> = Layer.effect(Accounts, make)
