/**
 * Incoming webhooks, as Slack runs them. `apps.webhooks.create` gives an app a URL for
 * one channel, `<advertise url>/services/<team>/<webhook id>/<secret>`, and adds the
 * app's bot to the channel (as installing a webhook does on Slack). The URL is the
 * credential: only its secret's SHA-256 is stored, and revoking it (or uninstalling
 * the app) makes it answer 404 `no_service`.
 *
 * A POST of Slack's payload (JSON, or a form with a `payload` field: `text`, `blocks`,
 * `attachments`, `username`, `icon_emoji`, `icon_url`, `thread_ts`) posts to the
 * channel as the app's bot (`bot_id`, subtype `bot_message`) through the channel's
 * actor, and answers `ok` once the message is committed; so posts made one after the
 * other appear in that order. Errors are plain text with Slack's codes and statuses:
 * 400 `invalid_payload`/`no_text`/`invalid_blocks`/`too_many_attachments`/
 * `msg_too_long`, 403 `action_prohibited`, 404 `channel_not_found`/`no_service`, 410
 * `channel_is_archived`, 429 `rate_limited`.
 */
import type { HttpApp } from "@effect/platform"
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Context, Effect, Layer, Option } from "effect"
import { createHash, randomBytes } from "node:crypto"
import * as ChannelActor from "../actors/ChannelActor.ts"
import * as P from "../actors/ChannelProtocol.ts"
import { fail, orDieOnSql } from "../api/auth.ts"
import { maxAttachments, maxBlocks } from "../api/chat.ts"
import { makeWrites } from "../api/conversationsWrite.ts"
import type { WorkspacePrincipal } from "../auth/Principal.ts"
import { ChorusConfig } from "../config/ChorusConfig.ts"
import * as Access from "../domain/ConversationAccess.ts"
import * as Ids from "../domain/Ids.ts"
import type { ApiError } from "../transport/ApiMethod.ts"
import type { App } from "./Apps.ts"
import { Apps, botPrincipal } from "./Apps.ts"
import { router as SlashCommandsRouter } from "./SlashCommands.ts"

const hashSecret = (secret: string): Buffer => createHash("sha256").update(secret, "utf8").digest()

/** A webhook post's outcome: HTTP status and Slack's plain-text answer. */
export interface WebhookAnswer {
  readonly status: number
  readonly text: string
}

/** Slack's payload, checked; or the error it answers. */
export type Payload =
  | {
    readonly ok: true
    readonly text: string | undefined
    readonly blocks: ReadonlyArray<unknown> | undefined
    readonly attachments: ReadonlyArray<unknown> | undefined
    readonly username: string | undefined
    readonly icon_emoji: string | undefined
    readonly icon_url: string | undefined
    readonly thread_ts: string | undefined
  }
  | { readonly ok: false; readonly answer: WebhookAnswer }

const refuse = (status: number, text: string) => ({ ok: false as const, answer: { status, text } })

/** Parses and checks a webhook body (pure). */
export const parsePayload = (body: string, contentType: string): Payload => {
  let raw = body
  if (contentType.includes("application/x-www-form-urlencoded")) raw = new URLSearchParams(body).get("payload") ?? ""
  let value: unknown
  try {
    value = JSON.parse(raw)
  } catch {
    return refuse(400, "invalid_payload")
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return refuse(400, "invalid_payload")
  const o = value as Record<string, unknown>
  const str = (k: string) => (typeof o[k] === "string" && (o[k] as string).length > 0 ? (o[k] as string) : undefined)
  const list = (k: string): ReadonlyArray<unknown> | undefined | "bad" => {
    const v = o[k]
    if (v === undefined || v === null) return undefined
    if (typeof v === "string") {
      try {
        const parsed: unknown = JSON.parse(v)
        return Array.isArray(parsed) ? parsed : "bad"
      } catch {
        return "bad"
      }
    }
    return Array.isArray(v) ? v : "bad"
  }
  const text = typeof o["text"] === "string" ? o["text"] : typeof o["text"] === "number" ? String(o["text"]) : undefined
  const blocks = list("blocks")
  const attachments = list("attachments")
  if (blocks === "bad" || (blocks !== undefined && blocks.length > maxBlocks)) return refuse(400, "invalid_blocks")
  if (attachments === "bad") return refuse(400, "invalid_attachments")
  if (attachments !== undefined && attachments.length > maxAttachments) return refuse(400, "too_many_attachments")
  if ((text === undefined || text.trim().length === 0) && (blocks === undefined || blocks.length === 0) && (attachments === undefined || attachments.length === 0)) {
    return refuse(400, "no_text")
  }
  if (text !== undefined && text.length > P.limits.text) return refuse(400, "msg_too_long")
  return {
    ok: true,
    text,
    blocks: blocks?.length === 0 ? undefined : blocks,
    attachments: attachments?.length === 0 ? undefined : attachments,
    username: str("username"),
    icon_emoji: str("icon_emoji"),
    icon_url: str("icon_url"),
    thread_ts: str("thread_ts")
  }
}

/** How a channel actor's refusal reads to a webhook sender. */
export const answerFor = (code: string): WebhookAnswer => {
  switch (code) {
    case "channel_not_found":
      return { status: 404, text: "channel_not_found" }
    case "is_archived":
      return { status: 410, text: "channel_is_archived" }
    case "not_in_channel":
      return { status: 403, text: "action_prohibited" }
    case "msg_too_long":
    case "no_text":
      return { status: 400, text: code }
    case "thread_not_found":
      return { status: 404, text: "thread_not_found" }
    case "ratelimited":
      return { status: 429, text: "rate_limited" }
    case "service_unavailable":
      return { status: 503, text: "service_unavailable" }
    default:
      return { status: 500, text: "rollup_error" }
  }
}

export interface WebhooksShape {
  /**
   * A webhook of `app` for `channelId`, made by `principal` (who must see the channel;
   * for a private one, be in it): the app's bot joins the channel if it is not in it.
   */
  readonly create: (
    principal: WorkspacePrincipal,
    app: App,
    channelId: string
  ) => Effect.Effect<{ readonly id: string; readonly url: string; readonly channel: string }, ApiError>
  /** A POST to `/services/<team>/<id>/<secret>`. */
  readonly post: (path: { readonly team: string; readonly id: string; readonly secret: string }, body: string, contentType: string) => Effect.Effect<WebhookAnswer>
}

export class Webhooks extends Context.Tag("chorus/apps/Webhooks")<Webhooks, WebhooksShape>() {}

export const make = Effect.gen(function*() {
  const store = yield* Apps
  const config = yield* ChorusConfig
  const w = yield* makeWrites
  const { ask, channels } = w

  const create: WebhooksShape["create"] = (principal, app, channelId) =>
    Effect.gen(function*() {
      const found = yield* orDieOnSql(channels.access(channelId, principal.userId))
      if (Option.isNone(found)) return yield* fail("channel_not_found")
      const c = found.value
      const flags = { team_id: c.teamId, is_private: c.isPrivate, is_im: c.isIm, is_mpim: c.isMpim }
      if (!Access.canSee(principal, flags, c.isMember)) return yield* fail("channel_not_found")
      if (c.isArchived) return yield* fail("is_archived")
      if (c.isIm) return yield* fail("method_not_supported_for_channel_type")
      if (!(yield* orDieOnSql(channels.isMember(channelId, app.botUserId)))) {
        if (Access.typeOf(flags) === "public_channel") {
          yield* ask(botPrincipal(app), channelId, new P.Join({ user: app.botUserId, team: app.teamId, role: "member" }))
        } else {
          yield* ask(principal, channelId, new P.Invite({ user: principal.userId, team: principal.teamId, role: principal.role, users: [app.botUserId] }))
        }
      }
      const id = Ids.make("W", 10)
      const secret = randomBytes(18).toString("base64url")
      yield* orDieOnSql(store.createWebhook({ id, appId: app.id, teamId: app.teamId, channelId, secretHash: hashSecret(secret), createdBy: principal.userId }))
      return { id, url: `${config.advertiseUrl}/services/${app.teamId}/${id}/${secret}`, channel: channelId }
    })

  const post: WebhooksShape["post"] = (path, body, contentType) =>
    Effect.gen(function*() {
      const found = yield* orDieOnSql(store.webhookBySecret(hashSecret(path.secret)))
      if (Option.isNone(found)) return { status: 404, text: "no_service" }
      const { app, webhook } = found.value
      if (webhook.id !== path.id || webhook.teamId !== path.team) return { status: 404, text: "no_service" }
      const payload = parsePayload(body, contentType)
      if (!payload.ok) return payload.answer
      const posted = yield* ask(
        botPrincipal(app),
        webhook.channelId,
        new P.PostMessage({
          user: app.botUserId,
          team: app.teamId,
          text: payload.text ?? "",
          bot_id: app.botId,
          app_id: app.id,
          ...(payload.blocks === undefined ? {} : { blocks: payload.blocks }),
          ...(payload.attachments === undefined ? {} : { attachments: payload.attachments }),
          ...(payload.username === undefined ? {} : { username: payload.username }),
          ...(payload.icon_emoji === undefined ? {} : { icon_emoji: payload.icon_emoji }),
          ...(payload.icon_url === undefined ? {} : { icon_url: payload.icon_url }),
          ...(payload.thread_ts === undefined ? {} : { thread_ts: payload.thread_ts })
        })
      ).pipe(Effect.either)
      return posted._tag === "Right" ? { status: 200, text: "ok" } : answerFor(posted.left.code)
    }).pipe(
      Effect.catchAllDefect((defect) =>
        Effect.logError("webhook post failed", { defect: String(defect) }).pipe(Effect.as({ status: 500, text: "rollup_error" }))
      )
    )

  return { create, post } satisfies WebhooksShape
}).pipe(Effect.provide(ChannelActor.services))

export const layer = Layer.effect(Webhooks, make)

/** `POST /services/<team>/<id>/<secret>`. */
export const router = HttpRouter.empty.pipe(
  HttpRouter.post(
    "/services/:team/:id/:secret",
    Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      const params = yield* HttpRouter.params
      const config = yield* ChorusConfig
      const webhooks = yield* Webhooks
      if (Number(request.headers["content-length"] ?? "0") > config.maxBodyBytes) return HttpServerResponse.text("request_too_large", { status: 413 })
      const body = yield* request.text.pipe(Effect.orElseSucceed(() => ""))
      if (body.length > config.maxBodyBytes) return HttpServerResponse.text("request_too_large", { status: 413 })
      const answer = yield* webhooks.post(
        { team: params["team"] ?? "", id: params["id"] ?? "", secret: params["secret"] ?? "" },
        body,
        (request.headers["content-type"] ?? "").toLowerCase()
      )
      return HttpServerResponse.text(answer.text, { status: answer.status })
    })
  )
)

/** The apps' routes (incoming webhooks, response URLs) in front of `app`, which answers every other request. */
export const withAppRoutes = <E, R>(app: HttpApp.Default<E, R>) =>
  HttpRouter.concat(router, SlashCommandsRouter).pipe(Effect.catchTag("RouteNotFound", () => app))
