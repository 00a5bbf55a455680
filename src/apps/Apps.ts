/**
 * The apps repository (schema: migrations/0010_apps.ts): apps with their bot users,
 * scopes and signing secrets, Events API subscriptions and delivery figures, incoming
 * webhooks, slash commands and response URLs.
 *
 * An app is made in one transaction with its bot user (an account and a bot member of
 * the workspace, through the accounts repository) and its bot token, so there is never
 * an app without its bot or a bot without its app. Uninstalling is one transaction too:
 * the subscription, webhooks, commands and response URLs go, and the bot member is
 * marked removed (its token answers `account_inactive`); the caller revokes the token
 * itself through `Revocation`, which also forgets it from the node's cache at once.
 */
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { Context, Effect, Layer, Option, Schema } from "effect"
import type { WorkspacePrincipal } from "../auth/Principal.ts"
import { Accounts } from "../store/Accounts.ts"
import type { NewToken } from "../store/Accounts.ts"

export type DeliveryStatus = "active" | "paused"

/** Cumulative delivery figures of an app's Events API subscription. */
export interface DeliveryFigures {
  /** Event callbacks the app answered with 2xx. */
  readonly sent: number
  /** Event callbacks given up after every retry failed. */
  readonly failed: number
  /** Retry attempts made (each failed attempt that was tried again). */
  readonly retried: number
  /** Events not delivered because the subscription was paused. */
  readonly dropped: number
  /** Delivery lag (event time to the app's 2xx) over the worker's recent deliveries. */
  readonly lagP50Ms: number | undefined
  readonly lagP99Ms: number | undefined
  readonly lastDeliveryAt: Date | undefined
}

export interface App {
  readonly id: string
  readonly teamId: string
  readonly name: string
  readonly botId: string
  readonly botUserId: string
  readonly tokenId: string
  readonly scopes: ReadonlyArray<string>
  readonly signingSecret: string
  /** Slack's legacy verification token, sent as `token` with slash commands. */
  readonly verificationToken: string
  readonly createdBy: string
  readonly createdAt: Date
  readonly uninstalledAt: Date | undefined
  /** The Events API request URL; undefined when the app has no subscription. */
  readonly requestUrl: string | undefined
  readonly events: ReadonlyArray<string>
  readonly deliveryStatus: DeliveryStatus
  readonly pausedReason: string | undefined
  readonly pausedAt: Date | undefined
  readonly figures: DeliveryFigures
}

/** The app's bot as a caller, for what Chorus does on the app's behalf (webhook posts, command answers). */
export const botPrincipal = (app: App): WorkspacePrincipal => ({
  userId: app.botUserId,
  teamId: app.teamId,
  role: "member",
  tokenKind: "bot",
  botId: app.botId,
  appId: app.id,
  scopes: new Set(app.scopes),
  tokenId: app.tokenId
})

export interface Webhook {
  readonly id: string
  readonly appId: string
  readonly teamId: string
  readonly channelId: string
  readonly createdBy: string
  readonly createdAt: Date
  readonly revokedAt: Date | undefined
}

export interface Command {
  readonly teamId: string
  /** With its slash, lower case: `/deploy`. */
  readonly command: string
  readonly appId: string
  readonly requestUrl: string
  readonly description: string
}

export interface ResponseUrl {
  readonly id: string
  readonly appId: string
  readonly teamId: string
  readonly channelId: string
  /** Who ran the command. */
  readonly userId: string
  readonly command: string
  readonly expiresAt: Date
  readonly uses: number
  /** The last in-channel message posted through this URL (for `replace_original`). */
  readonly lastTs: string | undefined
  /** The last ephemeral message sent through it. */
  readonly lastEphemeralTs: string | undefined
}

export interface NewApp {
  readonly id: string
  readonly teamId: string
  readonly name: string
  readonly botId: string
  readonly botUserId: string
  /** The bot user's handle (Slack's `name`). */
  readonly handle: string
  readonly scopes: ReadonlyArray<string>
  readonly signingSecret: string
  readonly verificationToken: string
  readonly createdBy: string
}

export interface FiguresDelta {
  readonly sent: number
  readonly failed: number
  readonly retried: number
  readonly dropped: number
  readonly lagP50Ms: number | undefined
  readonly lagP99Ms: number | undefined
  readonly lastDeliveryAt: Date | undefined
}

/** Another app of the workspace holds that slash command. */
export class CommandTaken extends Schema.TaggedError<CommandTaken>()("CommandTaken", { command: Schema.String }) {}

export type ResponseUrlUse =
  | { readonly _tag: "Ok"; readonly url: ResponseUrl }
  | { readonly _tag: "NotFound" }
  | { readonly _tag: "Expired" }
  | { readonly _tag: "Used" }

export interface AppsShape {
  /** The app with its bot user and bot token, atomically. */
  readonly create: (input: { readonly app: NewApp; readonly token: NewToken }) => Effect.Effect<App, SqlError>
  /** Uninstalled apps included (`uninstalledAt`). */
  readonly byId: (appId: string) => Effect.Effect<Option.Option<App>, SqlError>
  /** The workspace's installed apps, oldest first. */
  readonly list: (teamId: string) => Effect.Effect<ReadonlyArray<App>, SqlError>
  /** Installed apps with an Events API request URL (paused ones included). */
  readonly subscribed: Effect.Effect<ReadonlyArray<App>, SqlError>
  /** Sets the subscription and makes it active (a paused one resumes). */
  readonly setSubscription: (appId: string, requestUrl: string, events: ReadonlyArray<string>) => Effect.Effect<void, SqlError>
  readonly pause: (appId: string, reason: string) => Effect.Effect<void, SqlError>
  readonly addFigures: (appId: string, delta: FiguresDelta) => Effect.Effect<void, SqlError>
  /** Revokes everything the app holds except its token (see the module note); false when already uninstalled. */
  readonly uninstall: (appId: string) => Effect.Effect<boolean, SqlError>

  readonly createWebhook: (input: {
    readonly id: string
    readonly appId: string
    readonly teamId: string
    readonly channelId: string
    readonly secretHash: Uint8Array
    readonly createdBy: string
  }) => Effect.Effect<void, SqlError>
  /** A live webhook (not revoked, its app installed) with its app, by its secret's hash. */
  readonly webhookBySecret: (hash: Uint8Array) => Effect.Effect<Option.Option<{ readonly webhook: Webhook; readonly app: App }>, SqlError>
  readonly webhooks: (appId: string) => Effect.Effect<ReadonlyArray<Webhook>, SqlError>
  /** False when no live webhook of that app has this id. */
  readonly revokeWebhook: (appId: string, webhookId: string) => Effect.Effect<boolean, SqlError>

  /** Registers or updates the app's command; `CommandTaken` when another app holds it. */
  readonly putCommand: (command: Command) => Effect.Effect<void, CommandTaken | SqlError>
  /** A command of an installed app. */
  readonly command: (teamId: string, command: string) => Effect.Effect<Option.Option<{ readonly command: Command; readonly app: App }>, SqlError>
  readonly commands: (appId: string) => Effect.Effect<ReadonlyArray<Command>, SqlError>

  readonly createResponseUrl: (input: {
    readonly id: string
    readonly secretHash: Uint8Array
    readonly appId: string
    readonly teamId: string
    readonly channelId: string
    readonly userId: string
    readonly command: string
    readonly expiresAt: Date
  }) => Effect.Effect<void, SqlError>
  /** Counts one use of a response URL, unless it is unknown, expired or used `maxUses` times. */
  readonly useResponseUrl: (hash: Uint8Array, maxUses: number) => Effect.Effect<ResponseUrlUse, SqlError>
  readonly setResponseUrlLast: (id: string, last: { readonly ts?: string | null; readonly ephemeralTs?: string }) => Effect.Effect<void, SqlError>

  /**
   * What the delivery worker needs of a channel: its workspace and type, and which of
   * `botUserIds` were members at event `atSeq` (joined at or before it, still in).
   */
  readonly channelAudience: (
    channelId: string,
    botUserIds: ReadonlyArray<string>,
    atSeq: number
  ) => Effect.Effect<Option.Option<ChannelAudience>, SqlError>
  /** A channel's events with `afterSeq < seq < beforeSeq`, in order, at most `limit` (gap filling). */
  readonly channelEvents: (channelId: string, afterSeq: number, beforeSeq: number, limit: number) => Effect.Effect<ReadonlyArray<unknown>, SqlError>
}

export interface ChannelAudience {
  readonly teamId: string
  readonly isPrivate: boolean
  readonly isIm: boolean
  readonly isMpim: boolean
  readonly bots: ReadonlyArray<string>
}

export class Apps extends Context.Tag("chorus/apps/Apps")<Apps, AppsShape>() {}

interface AppRow {
  readonly id: string
  readonly team_id: string
  readonly name: string
  readonly bot_id: string
  readonly bot_user_id: string
  readonly token_id: string
  readonly scopes: ReadonlyArray<string>
  readonly signing_secret: string
  readonly verification_token: string
  readonly created_by: string
  readonly created_at: Date
  readonly uninstalled_at: Date | null
  readonly request_url: string | null
  readonly events: ReadonlyArray<string>
  readonly delivery_status: DeliveryStatus
  readonly paused_reason: string | null
  readonly paused_at: Date | null
  readonly sent: number
  readonly failed: number
  readonly retried: number
  readonly dropped: number
  readonly lag_p50_ms: number | null
  readonly lag_p99_ms: number | null
  readonly last_delivery_at: Date | null
}

interface WebhookRow {
  readonly id: string
  readonly app_id: string
  readonly team_id: string
  readonly channel_id: string
  readonly created_by: string
  readonly created_at: Date
  readonly revoked_at: Date | null
}

interface CommandRow {
  readonly team_id: string
  readonly command: string
  readonly app_id: string
  readonly request_url: string
  readonly description: string
}

interface ResponseUrlRow {
  readonly id: string
  readonly app_id: string
  readonly team_id: string
  readonly channel_id: string
  readonly user_id: string
  readonly command: string
  readonly expires_at: Date
  readonly uses: number
  readonly last_ts: string | null
  readonly last_ephemeral_ts: string | null
}

const orUndefined = <A>(value: A | null): A | undefined => value ?? undefined

const toApp = (row: AppRow): App => ({
  id: row.id,
  teamId: row.team_id,
  name: row.name,
  botId: row.bot_id,
  botUserId: row.bot_user_id,
  tokenId: row.token_id,
  scopes: row.scopes,
  signingSecret: row.signing_secret,
  verificationToken: row.verification_token,
  createdBy: row.created_by,
  createdAt: row.created_at,
  uninstalledAt: orUndefined(row.uninstalled_at),
  requestUrl: orUndefined(row.request_url),
  events: row.events,
  deliveryStatus: row.delivery_status,
  pausedReason: orUndefined(row.paused_reason),
  pausedAt: orUndefined(row.paused_at),
  figures: {
    sent: Number(row.sent),
    failed: Number(row.failed),
    retried: Number(row.retried),
    dropped: Number(row.dropped),
    lagP50Ms: orUndefined(row.lag_p50_ms),
    lagP99Ms: orUndefined(row.lag_p99_ms),
    lastDeliveryAt: orUndefined(row.last_delivery_at)
  }
})

const toWebhook = (row: WebhookRow): Webhook => ({
  id: row.id,
  appId: row.app_id,
  teamId: row.team_id,
  channelId: row.channel_id,
  createdBy: row.created_by,
  createdAt: row.created_at,
  revokedAt: orUndefined(row.revoked_at)
})

const toCommand = (row: CommandRow): Command => ({
  teamId: row.team_id,
  command: row.command,
  appId: row.app_id,
  requestUrl: row.request_url,
  description: row.description
})

const toResponseUrl = (row: ResponseUrlRow): ResponseUrl => ({
  id: row.id,
  appId: row.app_id,
  teamId: row.team_id,
  channelId: row.channel_id,
  userId: row.user_id,
  command: row.command,
  expiresAt: row.expires_at,
  uses: row.uses,
  lastTs: orUndefined(row.last_ts),
  lastEphemeralTs: orUndefined(row.last_ephemeral_ts)
})

const appColumns = `id, team_id, name, bot_id, bot_user_id, token_id, scopes, signing_secret, verification_token,
  created_by, created_at, uninstalled_at, request_url, events, delivery_status, paused_reason, paused_at,
  sent, failed, retried, dropped, lag_p50_ms, lag_p99_ms, last_delivery_at`

const prefixed = (alias: string) => appColumns.split(",").map((c) => `${alias}.${c.trim()}`).join(", ")

export const make: Effect.Effect<AppsShape, never, SqlClient.SqlClient | Accounts> = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const accounts = yield* Accounts
  const columns = sql.literal(appColumns)
  const first = <A, B>(rows: ReadonlyArray<A>, f: (a: A) => B): Option.Option<B> =>
    rows.length === 0 ? Option.none() : Option.some(f(rows[0] as A))

  const byId: AppsShape["byId"] = (appId) =>
    Effect.map(sql<AppRow>`SELECT ${columns} FROM apps WHERE id = ${appId}`, (rows) => first(rows, toApp))

  const create: AppsShape["create"] = ({ app, token }) =>
    sql.withTransaction(Effect.gen(function*() {
      yield* accounts.addBotUser({ teamId: app.teamId, userId: app.botUserId, botId: app.botId, name: app.name, handle: app.handle })
      yield* accounts.issueToken(token)
      const rows = yield* sql<AppRow>`
        INSERT INTO apps (id, team_id, name, bot_id, bot_user_id, token_id, scopes, signing_secret, verification_token, created_by)
        VALUES (${app.id}, ${app.teamId}, ${app.name}, ${app.botId}, ${app.botUserId}, ${token.id}, ${[...app.scopes]}::text[],
                ${app.signingSecret}, ${app.verificationToken}, ${app.createdBy})
        RETURNING ${columns}`
      return toApp(rows[0] as AppRow)
    }))

  const list: AppsShape["list"] = (teamId) =>
    Effect.map(
      sql<AppRow>`SELECT ${columns} FROM apps WHERE team_id = ${teamId} AND uninstalled_at IS NULL ORDER BY created_at, id`,
      (rows) => rows.map(toApp)
    )

  const subscribed: AppsShape["subscribed"] = Effect.map(
    sql<AppRow>`SELECT ${columns} FROM apps WHERE uninstalled_at IS NULL AND request_url IS NOT NULL`,
    (rows) => rows.map(toApp)
  )

  const setSubscription: AppsShape["setSubscription"] = (appId, requestUrl, events) =>
    Effect.asVoid(sql`
      UPDATE apps SET request_url = ${requestUrl}, events = ${[...events]}::text[],
                      delivery_status = 'active', paused_reason = NULL, paused_at = NULL
      WHERE id = ${appId} AND uninstalled_at IS NULL`)

  const pause: AppsShape["pause"] = (appId, reason) =>
    Effect.asVoid(sql`
      UPDATE apps SET delivery_status = 'paused', paused_reason = ${reason}, paused_at = now()
      WHERE id = ${appId} AND delivery_status = 'active'`)

  const addFigures: AppsShape["addFigures"] = (appId, d) =>
    Effect.asVoid(sql`
      UPDATE apps SET sent = sent + ${d.sent}, failed = failed + ${d.failed}, retried = retried + ${d.retried},
                      dropped = dropped + ${d.dropped},
                      lag_p50_ms = COALESCE(${d.lagP50Ms ?? null}::integer, lag_p50_ms),
                      lag_p99_ms = COALESCE(${d.lagP99Ms ?? null}::integer, lag_p99_ms),
                      last_delivery_at = COALESCE(${d.lastDeliveryAt ?? null}::timestamptz, last_delivery_at)
      WHERE id = ${appId}`)

  const uninstall: AppsShape["uninstall"] = (appId) =>
    sql.withTransaction(Effect.gen(function*() {
      const rows = yield* sql<{ team_id: string; bot_user_id: string }>`
        UPDATE apps SET uninstalled_at = now(), request_url = NULL, events = '{}'
        WHERE id = ${appId} AND uninstalled_at IS NULL
        RETURNING team_id, bot_user_id`
      const app = rows[0]
      if (app === undefined) return false
      yield* sql`UPDATE app_webhooks SET revoked_at = now() WHERE app_id = ${appId} AND revoked_at IS NULL`
      yield* sql`DELETE FROM app_commands WHERE app_id = ${appId}`
      yield* sql`DELETE FROM app_response_urls WHERE app_id = ${appId}`
      // The bot user leaves the workspace as Slack deactivates an uninstalled app's bot.
      yield* sql`UPDATE workspace_members SET deleted = true WHERE team_id = ${app.team_id} AND user_id = ${app.bot_user_id}`
      return true
    }))

  const createWebhook: AppsShape["createWebhook"] = (w) =>
    Effect.asVoid(sql`
      INSERT INTO app_webhooks (id, app_id, team_id, channel_id, secret_hash, created_by)
      VALUES (${w.id}, ${w.appId}, ${w.teamId}, ${w.channelId}, ${Buffer.from(w.secretHash)}, ${w.createdBy})`)

  const webhookBySecret: AppsShape["webhookBySecret"] = (hash) =>
    Effect.map(
      sql<AppRow & { readonly w_id: string; readonly w_channel_id: string; readonly w_created_by: string; readonly w_created_at: Date }>`
        SELECT ${sql.literal(prefixed("a"))}, w.id AS w_id, w.channel_id AS w_channel_id,
               w.created_by AS w_created_by, w.created_at AS w_created_at
        FROM app_webhooks w JOIN apps a ON a.id = w.app_id
        WHERE w.secret_hash = ${Buffer.from(hash)} AND w.revoked_at IS NULL AND a.uninstalled_at IS NULL`,
      (rows) =>
        first(rows, (row) => ({
          app: toApp(row),
          webhook: {
            id: row.w_id,
            appId: row.id,
            teamId: row.team_id,
            channelId: row.w_channel_id,
            createdBy: row.w_created_by,
            createdAt: row.w_created_at,
            revokedAt: undefined
          }
        }))
    )

  const webhooks: AppsShape["webhooks"] = (appId) =>
    Effect.map(
      sql<WebhookRow>`
        SELECT id, app_id, team_id, channel_id, created_by, created_at, revoked_at
        FROM app_webhooks WHERE app_id = ${appId} ORDER BY created_at, id`,
      (rows) => rows.map(toWebhook)
    )

  const revokeWebhook: AppsShape["revokeWebhook"] = (appId, webhookId) =>
    Effect.map(
      sql<{ id: string }>`
        UPDATE app_webhooks SET revoked_at = now()
        WHERE id = ${webhookId} AND app_id = ${appId} AND revoked_at IS NULL
        RETURNING id`,
      (rows) => rows.length > 0
    )

  const putCommand: AppsShape["putCommand"] = (c) =>
    Effect.gen(function*() {
      const rows = yield* sql<{ app_id: string }>`
        INSERT INTO app_commands (team_id, command, app_id, request_url, description)
        VALUES (${c.teamId}, ${c.command}, ${c.appId}, ${c.requestUrl}, ${c.description})
        ON CONFLICT (team_id, command) DO UPDATE
        SET request_url = EXCLUDED.request_url, description = EXCLUDED.description
        WHERE app_commands.app_id = EXCLUDED.app_id
        RETURNING app_id`
      if (rows.length === 0) return yield* new CommandTaken({ command: c.command })
    })

  const command: AppsShape["command"] = (teamId, name) =>
    Effect.map(
      sql<AppRow & { readonly c_command: string; readonly c_request_url: string; readonly c_description: string }>`
        SELECT ${sql.literal(prefixed("a"))}, c.command AS c_command, c.request_url AS c_request_url,
               c.description AS c_description
        FROM app_commands c JOIN apps a ON a.id = c.app_id
        WHERE c.team_id = ${teamId} AND c.command = ${name} AND a.uninstalled_at IS NULL`,
      (rows) =>
        first(rows, (row) => ({
          app: toApp(row),
          command: { teamId: row.team_id, command: row.c_command, appId: row.id, requestUrl: row.c_request_url, description: row.c_description }
        }))
    )

  const commands: AppsShape["commands"] = (appId) =>
    Effect.map(
      sql<CommandRow>`SELECT team_id, command, app_id, request_url, description FROM app_commands WHERE app_id = ${appId} ORDER BY command`,
      (rows) => rows.map(toCommand)
    )

  const createResponseUrl: AppsShape["createResponseUrl"] = (r) =>
    Effect.asVoid(sql`
      INSERT INTO app_response_urls (id, secret_hash, app_id, team_id, channel_id, user_id, command, expires_at)
      VALUES (${r.id}, ${Buffer.from(r.secretHash)}, ${r.appId}, ${r.teamId}, ${r.channelId}, ${r.userId}, ${r.command}, ${r.expiresAt})`)

  const responseColumns = sql.literal("id, app_id, team_id, channel_id, user_id, command, expires_at, uses, last_ts, last_ephemeral_ts")

  const useResponseUrl: AppsShape["useResponseUrl"] = (hash, maxUses) =>
    Effect.gen(function*() {
      const key = Buffer.from(hash)
      const used = yield* sql<ResponseUrlRow>`
        UPDATE app_response_urls SET uses = uses + 1
        WHERE secret_hash = ${key} AND expires_at > now() AND uses < ${maxUses}
        RETURNING ${responseColumns}`
      if (used[0] !== undefined) return { _tag: "Ok", url: toResponseUrl(used[0]) } as const
      const found = yield* sql<ResponseUrlRow>`SELECT ${responseColumns} FROM app_response_urls WHERE secret_hash = ${key}`
      const row = found[0]
      if (row === undefined) return { _tag: "NotFound" } as const
      return row.expires_at.getTime() <= Date.now() ? { _tag: "Expired" } as const : { _tag: "Used" } as const
    })

  const setResponseUrlLast: AppsShape["setResponseUrlLast"] = (id, last) =>
    Effect.asVoid(sql`
      UPDATE app_response_urls
      SET last_ts = ${last.ts === undefined ? sql.literal("last_ts") : last.ts},
          last_ephemeral_ts = ${last.ephemeralTs === undefined ? sql.literal("last_ephemeral_ts") : last.ephemeralTs}
      WHERE id = ${id}`)

  const channelAudience: AppsShape["channelAudience"] = (channelId, botUserIds, atSeq) =>
    Effect.map(
      sql<{ team_id: string; is_private: boolean; is_im: boolean; is_mpim: boolean; bots: ReadonlyArray<string> }>`
        SELECT c.team_id, c.is_private, c.is_im, c.is_mpim,
               ARRAY(SELECT m.user_id FROM channel_members m
                     WHERE m.channel_id = c.id AND m.user_id = ANY(${[...botUserIds]}::text[]) AND m.joined_seq <= ${atSeq}) AS bots
        FROM channels c WHERE c.id = ${channelId}`,
      (rows) =>
        first(rows, (row) => ({ teamId: row.team_id, isPrivate: row.is_private, isIm: row.is_im, isMpim: row.is_mpim, bots: row.bots }))
    )

  const channelEvents: AppsShape["channelEvents"] = (channelId, afterSeq, beforeSeq, limit) =>
    Effect.map(
      sql<{ event: unknown }>`
        SELECT event FROM channel_events
        WHERE channel_id = ${channelId} AND seq > ${afterSeq} AND seq < ${beforeSeq}
        ORDER BY seq LIMIT ${limit}`,
      (rows) => rows.map((r) => r.event)
    )

  return {
    channelAudience,
    channelEvents,
    create,
    byId,
    list,
    subscribed,
    setSubscription,
    pause,
    addFigures,
    uninstall,
    createWebhook,
    webhookBySecret,
    webhooks,
    revokeWebhook,
    putCommand,
    command,
    commands,
    createResponseUrl,
    useResponseUrl,
    setResponseUrlLast
  } satisfies AppsShape
})

/** The PostgreSQL repository (the schema comes from `Database.migrate`). */
export const layer: Layer.Layer<Apps, never, SqlClient.SqlClient | Accounts> = Layer.effect(Apps, make)
