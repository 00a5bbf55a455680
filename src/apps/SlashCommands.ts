/**
 * Slash commands, as Slack runs them. A member's message that begins with a command
 * registered in the workspace (`apps.commands.create`) is not posted: it is POSTed,
 * form-encoded and signed (v0), to the command's request URL with Slack's fields
 * (`token`, `team_id`, `channel_id`, `user_id`, `command`, `text`, `response_url`,
 * `trigger_id`, …), and the app's answer is shown where Slack shows it:
 *
 * - its immediate answer (the HTTP response, within `appsRequestTimeout`): an empty
 *   body shows nothing; plain text, or a message object without `response_type`, is
 *   ephemeral (only the member sees it, on their user subject); `in_channel` is posted
 *   in the channel as the app's bot;
 * - later answers POSTed (JSON) to `response_url` (30 minutes, 5 uses), likewise, and
 *   `replace_original` / `delete_original` act on the last message sent through the
 *   same URL.
 *
 * In-channel answers are posted by the app's bot on the invoking member's standing
 * (`on_behalf_of`): the bot need not be in the channel, as on Slack.
 */
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Clock, Context, Duration, Effect, Layer, Option } from "effect"
import { createHash, randomBytes } from "node:crypto"
import * as ChannelActor from "../actors/ChannelActor.ts"
import * as P from "../actors/ChannelProtocol.ts"
import * as EventPublisher from "../actors/EventPublisher.ts"
import * as MessageTs from "../actors/MessageTs.ts"
import { fail, orDieOnSql } from "../api/auth.ts"
import { makeWrites } from "../api/conversationsWrite.ts"
import type { WorkspacePrincipal } from "../auth/Principal.ts"
import { ChorusConfig } from "../config/ChorusConfig.ts"
import * as Access from "../domain/ConversationAccess.ts"
import * as Ids from "../domain/Ids.ts"
import type { ApiError, ApiResult } from "../transport/ApiMethod.ts"
import type { App, ResponseUrl } from "./Apps.ts"
import { Apps, botPrincipal } from "./Apps.ts"
import { postSigned } from "./EventDelivery.ts"

/** Slack's response URL limits. */
export const responseUrlTtlMs = 30 * 60_000
export const responseUrlMaxUses = 5

/** A command name as registered: a slash, then 1–31 lower-case letters, digits, `_` or `-`. */
export const commandPattern = /^\/[a-z0-9_-]{1,31}$/

/** The command and its text when `message` begins with something shaped like a command. */
export const parseCommand = (message: string): { readonly command: string; readonly text: string } | undefined => {
  const m = /^\s*(\/[A-Za-z0-9_-]{1,31})(?:\s+([\s\S]*))?$/.exec(message)
  if (m === null) return undefined
  return { command: (m[1] as string).toLowerCase(), text: (m[2] ?? "").trim() }
}

/** What an app answered, as a message to show (undefined: nothing to show). */
export interface AppMessage {
  readonly response_type: "in_channel" | "ephemeral"
  readonly text: string | undefined
  readonly blocks: ReadonlyArray<unknown> | undefined
  readonly attachments: ReadonlyArray<unknown> | undefined
  readonly thread_ts: string | undefined
  readonly replace_original: boolean
  readonly delete_original: boolean
}

/**
 * An app's answer (the command's HTTP response, or a body POSTed to a response URL) as
 * a message: JSON objects as Slack reads them, anything else as plain text. Undefined
 * for an empty body; `invalid` when JSON was promised and is not an object.
 */
export const parseAppMessage = (body: string, contentType: string): AppMessage | undefined | "invalid" => {
  const trimmed = body.trim()
  if (trimmed.length === 0) return undefined
  const looksJson = contentType.includes("json") || trimmed.startsWith("{")
  if (!looksJson) return { response_type: "ephemeral", text: body, blocks: undefined, attachments: undefined, thread_ts: undefined, replace_original: false, delete_original: false }
  let value: unknown
  try {
    value = JSON.parse(trimmed)
  } catch {
    return "invalid"
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return "invalid"
  const o = value as Record<string, unknown>
  const array = (v: unknown) => (Array.isArray(v) ? v : undefined)
  const flag = (v: unknown) => v === true || v === "true"
  return {
    response_type: o["response_type"] === "in_channel" ? "in_channel" : "ephemeral",
    text: typeof o["text"] === "string" ? o["text"] : undefined,
    blocks: array(o["blocks"]),
    attachments: array(o["attachments"]),
    thread_ts: typeof o["thread_ts"] === "string" ? o["thread_ts"] : undefined,
    replace_original: flag(o["replace_original"]),
    delete_original: flag(o["delete_original"])
  }
}

const hasContent = (m: AppMessage) =>
  (m.text !== undefined && m.text.trim().length > 0) || (m.blocks !== undefined && m.blocks.length > 0) || (m.attachments !== undefined && m.attachments.length > 0)

const hashSecret = (secret: string): Buffer => createHash("sha256").update(secret, "utf8").digest()

export interface SlashCommandsShape {
  /**
   * When `text` begins with a command registered in the caller's workspace: dispatches
   * it to its app from `channelId`, shows the app's immediate answer, and gives the Web
   * API's answer. None when it is no registered command (the text is a message).
   */
  readonly dispatch: (principal: WorkspacePrincipal, channelId: string, text: string) => Effect.Effect<Option.Option<ApiResult>, ApiError>
  /** A POST to a response URL (`/commands/<team>/<id>/<secret>`): HTTP status and plain-text or JSON body. */
  readonly respond: (
    path: { readonly team: string; readonly id: string; readonly secret: string },
    body: string,
    contentType: string
  ) => Effect.Effect<{ readonly status: number; readonly body: Readonly<Record<string, unknown>> }>
}

export class SlashCommands extends Context.Tag("chorus/apps/SlashCommands")<SlashCommands, SlashCommandsShape>() {}

export const make = Effect.gen(function*() {
  const store = yield* Apps
  const config = yield* ChorusConfig
  const w = yield* makeWrites
  const { accounts, ask, channels, publisher } = w
  const timeoutMs = () => Duration.toMillis(config.appsRequestTimeout)

  /**
   * Shows `message` from `app` for the command run by `context.userId` in
   * `context.channelId`; answers the ts shown (in-channel or ephemeral).
   */
  const show = (
    app: App,
    context: { readonly channelId: string; readonly userId: string; readonly lastTs: string | undefined; readonly lastEphemeralTs: string | undefined },
    message: AppMessage
  ) =>
    Effect.gen(function*() {
      const bot = botPrincipal(app)
      const base = { user: app.botUserId, team: app.teamId, on_behalf_of: context.userId }
      if (message.delete_original) {
        if (context.lastTs !== undefined) yield* ask(bot, context.channelId, new P.DeleteMessage({ ...base, role: "member", ts: context.lastTs }))
        return { deleted: true as const }
      }
      if (!hasContent(message)) return yield* fail("no_text")
      const content = {
        ...(message.blocks === undefined ? {} : { blocks: message.blocks }),
        ...(message.attachments === undefined ? {} : { attachments: message.attachments })
      }
      if (message.response_type === "in_channel") {
        if (message.replace_original && context.lastTs !== undefined) {
          const updated = yield* ask(bot, context.channelId, new P.UpdateMessage({ ...base, ts: context.lastTs, text: message.text ?? "", ...content }))
          return { in_channel: updated.ts }
        }
        const posted = yield* ask(
          bot,
          context.channelId,
          new P.PostMessage({
            ...base,
            text: message.text ?? "",
            ...content,
            ...(message.thread_ts === undefined ? {} : { thread_ts: message.thread_ts }),
            bot_id: app.botId,
            app_id: app.id
          })
        )
        return { in_channel: posted.ts }
      }
      const ts = message.replace_original && context.lastEphemeralTs !== undefined
        ? context.lastEphemeralTs
        : MessageTs.format(Number((yield* Clock.currentTimeNanos) / 1000n))
      yield* publisher.publish([
        EventPublisher.userEvent(context.userId, {
          type: "message",
          subtype: "ephemeral",
          is_ephemeral: true,
          channel: context.channelId,
          user: app.botUserId,
          bot_id: app.botId,
          app_id: app.id,
          text: ChannelActor.cleanText(message.text ?? ""),
          ts,
          event_ts: ts,
          ...content,
          ...(message.thread_ts === undefined ? {} : { thread_ts: message.thread_ts }),
          ...(message.replace_original ? { replace_original: true } : {})
        })
      ])
      return { ephemeral: ts }
    })

  const dispatch: SlashCommandsShape["dispatch"] = (principal, channelId, text) =>
    Effect.gen(function*() {
      const parsed = parseCommand(text)
      if (parsed === undefined) return Option.none()
      const found = yield* orDieOnSql(store.command(principal.teamId, parsed.command))
      if (Option.isNone(found)) return Option.none()
      const { app, command } = found.value
      // Commands run where the member may post.
      const access = yield* orDieOnSql(channels.access(channelId, principal.userId))
      if (Option.isNone(access)) return yield* fail("channel_not_found")
      const c = access.value
      if (!Access.canSee(principal, { team_id: c.teamId, is_private: c.isPrivate, is_im: c.isIm, is_mpim: c.isMpim }, c.isMember)) {
        return yield* fail("channel_not_found")
      }
      if (!c.isMember) return yield* fail("not_in_channel")
      if (c.isArchived) return yield* fail("is_archived")

      const [workspace, account, channel] = yield* orDieOnSql(Effect.all([
        accounts.workspace(principal.teamId),
        accounts.accountById(principal.userId),
        channels.channel(channelId)
      ]))
      const id = Ids.make("S", 12)
      const secret = randomBytes(18).toString("base64url")
      yield* orDieOnSql(store.createResponseUrl({
        id,
        secretHash: hashSecret(secret),
        appId: app.id,
        teamId: app.teamId,
        channelId,
        userId: principal.userId,
        command: command.command,
        expiresAt: new Date(Date.now() + responseUrlTtlMs)
      }))
      const responseUrl = `${config.advertiseUrl}/commands/${app.teamId}/${id}/${secret}`
      const triggerId = `${Math.floor(Date.now() / 1000)}.${randomBytes(6).readUIntBE(0, 6)}.${randomBytes(16).toString("hex")}`
      const channelName = Option.match(channel, {
        onNone: () => "",
        onSome: (row) => (row.is_im ? "directmessage" : row.is_mpim ? "mpdm" : (row.name ?? ""))
      })
      const form = new URLSearchParams({
        token: app.verificationToken,
        team_id: app.teamId,
        team_domain: Option.match(workspace, { onNone: () => "", onSome: (ws) => ws.domain }),
        channel_id: channelId,
        channel_name: c.isPrivate && !c.isIm && !c.isMpim ? "privategroup" : channelName,
        user_id: principal.userId,
        user_name: Option.match(account, { onNone: () => "", onSome: (a) => a.handle }),
        command: command.command,
        text: parsed.text,
        api_app_id: app.id,
        is_enterprise_install: "false",
        response_url: responseUrl,
        trigger_id: triggerId
      }).toString()
      const answer = yield* Effect.promise(() =>
        postSigned({ url: command.requestUrl, body: form, contentType: "application/x-www-form-urlencoded", signingSecret: app.signingSecret, timeoutMs: timeoutMs(), egress: config.appsEgress })
      )
      const result = { command: command.command, channel: channelId, dispatched: true, trigger_id: triggerId }
      if (!answer.attempt.ok) {
        const reason = answer.attempt.reason === "http_timeout" ? "operation_timeout" : "dispatch_failed"
        yield* show(app, { channelId, userId: principal.userId, lastTs: undefined, lastEphemeralTs: undefined }, {
          response_type: "ephemeral",
          text: `${command.command} failed with the error "${reason}"`,
          blocks: undefined,
          attachments: undefined,
          thread_ts: undefined,
          replace_original: false,
          delete_original: false
        }).pipe(Effect.ignore)
        return yield* fail(reason)
      }
      const message = parseAppMessage(answer.text, answer.contentType)
      if (message === undefined || message === "invalid") return Option.some(result)
      const shown = yield* show(app, { channelId, userId: principal.userId, lastTs: undefined, lastEphemeralTs: undefined }, message).pipe(
        Effect.catchAll(() => Effect.succeed(undefined))
      )
      if (shown !== undefined) {
        yield* orDieOnSql(store.setResponseUrlLast(id, {
          ...("in_channel" in shown ? { ts: shown.in_channel } : {}),
          ...("ephemeral" in shown ? { ephemeralTs: shown.ephemeral } : {})
        }))
      }
      return Option.some({ ...result, response_type: message.response_type })
    })

  const respond: SlashCommandsShape["respond"] = (path, body, contentType) =>
    Effect.gen(function*() {
      const answer = (status: number, fields: Record<string, unknown>) => ({ status, body: fields })
      const used = yield* orDieOnSql(store.useResponseUrl(hashSecret(path.secret), responseUrlMaxUses))
      if (used._tag === "NotFound") return answer(404, { ok: false, error: "invalid_url" })
      if (used._tag === "Expired") return answer(404, { ok: false, error: "expired_url" })
      if (used._tag === "Used") return answer(410, { ok: false, error: "used_url" })
      const url: ResponseUrl = used.url
      if (url.id !== path.id || url.teamId !== path.team) return answer(404, { ok: false, error: "invalid_url" })
      const app = yield* orDieOnSql(store.byId(url.appId))
      if (Option.isNone(app) || app.value.uninstalledAt !== undefined) return answer(404, { ok: false, error: "invalid_url" })
      let text = body
      if (contentType.includes("application/x-www-form-urlencoded")) text = new URLSearchParams(body).get("payload") ?? ""
      const message = parseAppMessage(text, contentType.includes("form") ? "application/json" : contentType)
      if (message === undefined || message === "invalid") return answer(400, { ok: false, error: "invalid_payload" })
      const shown = yield* show(app.value, { channelId: url.channelId, userId: url.userId, lastTs: url.lastTs, lastEphemeralTs: url.lastEphemeralTs }, message).pipe(
        Effect.either
      )
      if (shown._tag === "Left") {
        const code = shown.left.code
        const status = code === "no_text" || code === "msg_too_long" ? 400 : code === "is_archived" ? 410 : code === "channel_not_found" ? 404 : code === "ratelimited" ? 429 : 403
        return answer(status, { ok: false, error: code === "is_archived" ? "channel_is_archived" : code })
      }
      const value = shown.right
      if ("deleted" in value) yield* orDieOnSql(store.setResponseUrlLast(url.id, { ts: null }))
      else yield* orDieOnSql(store.setResponseUrlLast(url.id, "in_channel" in value ? { ts: value.in_channel } : { ephemeralTs: value.ephemeral }))
      return answer(200, { ok: true })
    }).pipe(
      Effect.catchAllDefect((defect) =>
        Effect.logError("response URL failed", { defect: String(defect) }).pipe(Effect.as({ status: 500, body: { ok: false, error: "internal_error" } }))
      )
    )

  return { dispatch, respond } satisfies SlashCommandsShape
}).pipe(Effect.provide(ChannelActor.services))

export const layer = Layer.effect(SlashCommands, make)

/** `POST /commands/<team>/<id>/<secret>`: an app's answers to a command, later. */
export const router = HttpRouter.empty.pipe(
  HttpRouter.post(
    "/commands/:team/:id/:secret",
    Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      const params = yield* HttpRouter.params
      const config = yield* ChorusConfig
      const commands = yield* SlashCommands
      if (Number(request.headers["content-length"] ?? "0") > config.maxBodyBytes) {
        return HttpServerResponse.unsafeJson({ ok: false, error: "request_too_large" }, { status: 413 })
      }
      const body = yield* request.text.pipe(Effect.orElseSucceed(() => ""))
      const answer = yield* commands.respond(
        { team: params["team"] ?? "", id: params["id"] ?? "", secret: params["secret"] ?? "" },
        body,
        (request.headers["content-type"] ?? "").toLowerCase()
      )
      return HttpServerResponse.unsafeJson(answer.body, { status: answer.status })
    })
  )
)
