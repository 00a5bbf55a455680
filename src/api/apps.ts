/**
 * Apps (API.md, Apps; ext): a workspace owner's or admin's methods to make and manage
 * apps — `apps.create`, `apps.eventSubscriptions.set`, `apps.webhooks.create`,
 * `apps.webhooks.revoke`, `apps.commands.create`, `apps.uninstall`, `apps.info`,
 * `apps.list`, `apps.deliveryStats` — and Slack's `chat.command` (a member runs a slash
 * command without posting it).
 *
 * An app's bot token acts as its bot with the app's scopes (src/auth: `missing_scope`);
 * its signing secret signs what Chorus sends the app (src/apps/SlackSignature.ts).
 */
import { Duration, Effect, Option } from "effect"
import { randomBytes } from "node:crypto"
import type { App, Command, Webhook } from "../apps/Apps.ts"
import { Apps } from "../apps/Apps.ts"
import * as Egress from "../apps/Egress.ts"
import * as EventDelivery from "../apps/EventDelivery.ts"
import { postSigned } from "../apps/EventDelivery.ts"
import { commandPattern, SlashCommands } from "../apps/SlashCommands.ts"
import { Webhooks } from "../apps/Webhooks.ts"
import { Revocation } from "../auth/AuthLive.ts"
import type { WorkspacePrincipal } from "../auth/Principal.ts"
import { Auth } from "../auth/Principal.ts"
import * as Tokens from "../auth/Tokens.ts"
import { ChorusConfig } from "../config/ChorusConfig.ts"
import * as Ids from "../domain/Ids.ts"
import type { ApiHandler, ApiRequest } from "../transport/ApiMethod.ts"
import { ApiError, optionalString, requireString } from "../transport/ApiMethod.ts"
import { Nats } from "../transport/Nats.ts"
import { fail, handleFor, normaliseName, orDieOnSql } from "./auth.ts"
import { channelIdArg } from "./conversationsWrite.ts"

/** A Slack scope name: `chat:write`, `users:read.email`, `commands`, `incoming-webhook`. */
export const scopePattern = /^[a-z][a-z_.-]*(:[a-z][a-z_.-]*)*$/

/** A list argument: comma-separated, or an array in a JSON body. Trimmed, deduplicated, in order. */
export const listArg = (request: ApiRequest, name: string): ReadonlyArray<string> | undefined => {
  const raw = request.args[name]
  const items = Array.isArray(raw)
    ? raw.filter((x): x is string => typeof x === "string")
    : typeof raw === "string"
    ? raw.startsWith("[") ? parseJsonList(raw) : raw.split(",")
    : undefined
  if (items === undefined) return undefined
  return [...new Set(items.map((s) => s.trim()).filter((s) => s.length > 0))]
}

const parseJsonList = (raw: string): Array<string> => {
  try {
    const value: unknown = JSON.parse(raw)
    return Array.isArray(value) ? value.filter((x): x is string => typeof x === "string") : []
  } catch {
    return []
  }
}

/** An http(s) URL, or undefined. */
export const httpUrl = (raw: string): string | undefined => {
  try {
    const url = new URL(raw)
    return url.protocol === "http:" || url.protocol === "https:" ? url.toString() : undefined
  } catch {
    return undefined
  }
}

/** An app's request URL: http(s), and not an address the egress policy forbids (a name is judged when it is resolved). */
const requestUrlArg = (request: ApiRequest, policy: Egress.EgressPolicy) =>
  Effect.gen(function*() {
    const url = httpUrl(yield* requireString(request, "request_url"))
    if (url === undefined) return yield* fail("invalid_url", "request_url must be an http(s) URL")
    if (!Egress.hostAllowed(new URL(url), policy)) return yield* fail("invalid_url", "request_url must be a public address (CHORUS_APPS_EGRESS=public)")
    return url
  })

const isoSeconds = (d: Date | undefined) => (d === undefined ? null : Math.floor(d.getTime() / 1000))

/** An app's delivery figures and status, as `apps.info` and `apps.deliveryStats` show them. */
export const deliveryJson = (app: App) => ({
  status: app.requestUrl === undefined ? "none" : app.deliveryStatus,
  ...(app.pausedReason === undefined ? {} : { paused_reason: app.pausedReason, paused_at: isoSeconds(app.pausedAt) }),
  sent: app.figures.sent,
  failed: app.figures.failed,
  retried: app.figures.retried,
  dropped: app.figures.dropped,
  lag_p50_ms: app.figures.lagP50Ms ?? null,
  lag_p99_ms: app.figures.lagP99Ms ?? null,
  last_delivery_at: isoSeconds(app.figures.lastDeliveryAt)
})

const webhookJson = (w: Webhook) => ({ id: w.id, channel: w.channelId, created: isoSeconds(w.createdAt), revoked: w.revokedAt !== undefined })
const commandJson = (c: Command) => ({ command: c.command, request_url: c.requestUrl, description: c.description })

export const appJson = (app: App, extra: { readonly webhooks?: ReadonlyArray<Webhook>; readonly commands?: ReadonlyArray<Command> } = {}) => ({
  id: app.id,
  name: app.name,
  team_id: app.teamId,
  bot_user_id: app.botUserId,
  bot_id: app.botId,
  scopes: app.scopes,
  created: isoSeconds(app.createdAt),
  is_uninstalled: app.uninstalledAt !== undefined,
  event_subscriptions: app.requestUrl === undefined ? null : { request_url: app.requestUrl, events: app.events, status: app.deliveryStatus },
  delivery: deliveryJson(app),
  ...(extra.webhooks === undefined ? {} : { webhooks: extra.webhooks.map(webhookJson) }),
  ...(extra.commands === undefined ? {} : { commands: extra.commands.map(commandJson) })
})

export const make = Effect.gen(function*() {
  const auth = yield* Auth
  const revocation = yield* Revocation
  const store = yield* Apps
  const webhooks = yield* Webhooks
  const commands = yield* SlashCommands
  const config = yield* ChorusConfig
  const nats = yield* Nats

  /** Tells every node's delivery worker that subscriptions changed. */
  const notifyChanged = Effect.sync(() => {
    try {
      nats.nc.publish(EventDelivery.changedSubject(nats.names))
    } catch {
      // The worker reloads every 15 s anyway.
    }
  })

  /** A workspace owner's or admin's user token. */
  const admin = (request: ApiRequest) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      if (principal.tokenKind !== "user") return yield* fail("not_allowed_token_type")
      if (principal.role !== "owner" && principal.role !== "admin") return yield* fail("not_an_admin")
      return principal
    })

  /** The installed app named by `app_id`, of the caller's workspace. */
  const appArg = (principal: WorkspacePrincipal, request: ApiRequest) =>
    Effect.gen(function*() {
      const appId = yield* requireString(request, "app_id")
      if (!Ids.isId("A", appId)) return yield* fail("app_not_found")
      const found = yield* orDieOnSql(store.byId(appId))
      if (Option.isNone(found) || found.value.teamId !== principal.teamId || found.value.uninstalledAt !== undefined) return yield* fail("app_not_found")
      return found.value
    })

  /** The app itself must hold `scope` for the integration (Slack's app configuration rule). */
  const requireAppScope = (app: App, scope: string) =>
    app.scopes.includes(scope)
      ? Effect.void
      : Effect.fail(new ApiError({ code: "missing_scope", detail: { needed: scope, provided: app.scopes.join(",") } }))

  const create: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* admin(request)
      const name = normaliseName(yield* requireString(request, "name"))
      if (name === undefined) return yield* fail("invalid_name", "name must be 1 to 80 characters")
      const scopes = listArg(request, "scopes") ?? []
      for (const scope of scopes) if (!scopePattern.test(scope) || scope.length > 64) return yield* fail("invalid_scope", `not a scope: ${scope}`)
      const token = Tokens.generate("bot")
      const ids = { app: Ids.make("A"), bot: Ids.make("B"), botUser: Ids.make("U") }
      const app = yield* orDieOnSql(store.create({
        app: {
          id: ids.app,
          teamId: principal.teamId,
          name,
          botId: ids.bot,
          botUserId: ids.botUser,
          handle: handleFor(name, "bot@bot"),
          scopes,
          signingSecret: randomBytes(16).toString("hex"),
          verificationToken: randomBytes(12).toString("base64url"),
          createdBy: principal.userId
        },
        token: { id: token.id, hash: token.hash, userId: ids.botUser, teamId: principal.teamId, kind: "bot", appId: ids.app, botId: ids.bot, scopes }
      }))
      return {
        app: { id: app.id, name: app.name },
        bot_user_id: app.botUserId,
        bot_id: app.botId,
        bot_token: token.secret,
        signing_secret: app.signingSecret,
        scopes: app.scopes
      }
    })

  const info: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* admin(request)
      const app = yield* appArg(principal, request)
      const [hooks, cmds] = yield* orDieOnSql(Effect.all([store.webhooks(app.id), store.commands(app.id)]))
      return { app: appJson(app, { webhooks: hooks, commands: cmds }) }
    })

  const list: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* admin(request)
      const apps = yield* orDieOnSql(store.list(principal.teamId))
      return { apps: apps.map((a) => appJson(a)), response_metadata: { next_cursor: "" } }
    })

  const deliveryStats: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* admin(request)
      const one = optionalString(request, "app_id")
      const apps = one === undefined ? yield* orDieOnSql(store.list(principal.teamId)) : [yield* appArg(principal, request)]
      return { apps: apps.filter((a) => a.requestUrl !== undefined || one !== undefined).map((a) => ({ app_id: a.id, name: a.name, ...deliveryJson(a) })) }
    })

  const setSubscriptions: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* admin(request)
      const app = yield* appArg(principal, request)
      const requestUrl = yield* requestUrlArg(request, config.appsEgress)
      const events = listArg(request, "events") ?? []
      if (events.length === 0) return yield* fail("invalid_events", "events must name at least one event type")
      const unknown = events.filter((e) => !EventDelivery.eventTypes.has(e))
      if (unknown.length > 0) return yield* fail("invalid_events", `unknown event types: ${unknown.join(", ")}`)
      // Slack's handshake: the URL must echo the challenge, signed like any event.
      const challenge = randomBytes(24).toString("base64url")
      const body = JSON.stringify({ token: app.verificationToken, challenge, type: "url_verification" })
      const answer = yield* Effect.promise(() =>
        postSigned({
          url: requestUrl,
          body,
          contentType: "application/json",
          signingSecret: app.signingSecret,
          timeoutMs: Duration.toMillis(config.appsRequestTimeout),
          egress: config.appsEgress
        })
      )
      if (!answer.attempt.ok || !echoes(answer.text, challenge)) {
        const why = answer.attempt.ok ? "the answer did not contain the challenge" : `${answer.attempt.reason}${answer.status === undefined ? "" : ` (HTTP ${answer.status})`}`
        return yield* fail("url_verification_failed", `${requestUrl}: ${why}`)
      }
      yield* orDieOnSql(store.setSubscription(app.id, requestUrl, events))
      yield* notifyChanged
      return { app_id: app.id, request_url: requestUrl, events, status: "active" }
    })

  const createWebhook: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* admin(request)
      const app = yield* appArg(principal, request)
      const channel = yield* channelIdArg(request)
      yield* requireAppScope(app, "incoming-webhook")
      const webhook = yield* webhooks.create(principal, app, channel)
      return { webhook }
    })

  const revokeWebhook: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* admin(request)
      const app = yield* appArg(principal, request)
      const id = yield* requireString(request, "webhook_id")
      if (!(yield* orDieOnSql(store.revokeWebhook(app.id, id)))) return yield* fail("webhook_not_found")
      return {}
    })

  const createCommand: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* admin(request)
      const app = yield* appArg(principal, request)
      const command = (yield* requireString(request, "command")).trim().toLowerCase()
      if (!commandPattern.test(command)) return yield* fail("invalid_command", "command must be a slash and 1 to 31 of a-z, 0-9, _ and -")
      const requestUrl = yield* requestUrlArg(request, config.appsEgress)
      const description = (optionalString(request, "description") ?? "").slice(0, 200)
      yield* requireAppScope(app, "commands")
      yield* store.putCommand({ teamId: app.teamId, command, appId: app.id, requestUrl, description }).pipe(
        Effect.catchTag("CommandTaken", () => fail("command_taken")),
        orDieOnSql
      )
      return { command: { command, request_url: requestUrl, description, app_id: app.id } }
    })

  const uninstall: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* admin(request)
      const app = yield* appArg(principal, request)
      yield* orDieOnSql(store.uninstall(app.id))
      yield* revocation.revoke(app.tokenId)
      yield* notifyChanged
      return {}
    })

  /** Slack's client method: runs a command in a channel. */
  const chatCommand: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      if (principal.tokenKind !== "user") return yield* fail("not_allowed_token_type")
      const channel = yield* channelIdArg(request)
      const command = yield* requireString(request, "command")
      const text = optionalString(request, "text") ?? ""
      const dispatched = yield* commands.dispatch(principal, channel, `${command} ${text}`)
      return Option.isSome(dispatched) ? dispatched.value : yield* fail("invalid_command", `${command} is not a command of this workspace`)
    })

  return new Map<string, ApiHandler>([
    ["apps.create", create],
    ["apps.info", info],
    ["apps.list", list],
    ["apps.deliveryStats", deliveryStats],
    ["apps.eventSubscriptions.set", setSubscriptions],
    ["apps.webhooks.create", createWebhook],
    ["apps.webhooks.revoke", revokeWebhook],
    ["apps.commands.create", createCommand],
    ["apps.uninstall", uninstall],
    ["chat.command", chatCommand]
  ])
})

/** Whether an app's answer to `url_verification` carries the challenge (plain text, or JSON `challenge`). */
export const echoes = (body: string, challenge: string): boolean => {
  const text = body.trim()
  if (text === challenge) return true
  try {
    const value: unknown = JSON.parse(text)
    return typeof value === "object" && value !== null && (value as { challenge?: unknown }).challenge === challenge
  } catch {
    return new URLSearchParams(text).get("challenge") === challenge
  }
}
