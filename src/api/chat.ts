/**
 * Messages: `chat.postMessage`, `chat.update`, `chat.delete` (through the channel's
 * actor, which assigns `seq`/`ts` and commits before answering) and
 * `chat.postEphemeral` (not persisted: an `ephemeral` message event on the recipient's
 * user subject only).
 *
 * `chat.postMessage` takes Slack's `channel` forms: a conversation id, a user id (the
 * DM with that user, opened if needed) or a channel name. With a `client_msg_id` (ext)
 * a retried post yields the original message, never a second one (invariant 4): the
 * id is the actor command's id, and the actor remembers it.
 */
import { Clock, Effect, Option } from "effect"
import * as ChannelActor from "../actors/ChannelActor.ts"
import * as P from "../actors/ChannelProtocol.ts"
import * as EventPublisher from "../actors/EventPublisher.ts"
import * as MessageTs from "../actors/MessageTs.ts"
import { SlashCommands } from "../apps/SlashCommands.ts"
import type { WorkspacePrincipal } from "../auth/Principal.ts"
import * as Access from "../domain/ConversationAccess.ts"
import * as Ids from "../domain/Ids.ts"
import type { ApiHandler, ApiRequest } from "../transport/ApiMethod.ts"
import { optionalString, requireString } from "../transport/ApiMethod.ts"
import { fail, isTruthy, orDieOnSql } from "./auth.ts"
import { channelIdArg, isConversationId, jsonArrayArg, makeWrites } from "./conversationsWrite.ts"

/** Slack's limits on rich content. */
export const maxBlocks = 50
export const maxAttachments = 100

/** `text`, `blocks` and `attachments` as given (undefined when absent). */
const contentArgs = (request: ApiRequest) =>
  Effect.gen(function*() {
    const rawText = request.args["text"]
    const text = typeof rawText === "string" ? rawText : typeof rawText === "number" ? String(rawText) : undefined
    const blocks = yield* jsonArrayArg(request, "blocks", "invalid_blocks")
    if (blocks !== undefined && blocks.length > maxBlocks) return yield* fail("invalid_blocks", `at most ${maxBlocks} blocks`)
    const attachments = yield* jsonArrayArg(request, "attachments", "invalid_attachments")
    if (attachments !== undefined && attachments.length > maxAttachments) return yield* fail("too_many_attachments")
    if (text !== undefined && text.length > P.limits.text) return yield* fail("msg_too_long")
    return { text, blocks, attachments }
  })

export const make = Effect.gen(function*() {
  const w = yield* makeWrites
  const { auth, channels, ask, sender } = w
  // Apps: a member's message that begins with a registered `/command` is dispatched, not posted.
  const slashCommands = yield* Effect.serviceOption(SlashCommands)

  /** Slack's `channel` of chat.postMessage: an id, a user id (their DM) or a channel name. */
  const resolveChannel = (principal: WorkspacePrincipal, target: string) =>
    Effect.gen(function*() {
      if (isConversationId(target)) return target
      if (Ids.isId("U", target)) return (yield* w.openConversation(principal, [target], { forPost: true })).id
      const named = P.normaliseChannelName(target)
      if ("error" in named) return yield* fail("channel_not_found")
      const found = yield* orDieOnSql(channels.byName(principal.teamId, named.name))
      // A private channel found by name is still refused by its actor to non-members.
      return Option.isSome(found) ? found.value.id : yield* fail("channel_not_found")
    })

  const postMessage: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      yield* auth.requireScope(principal, "chat:write")
      const channelId = yield* resolveChannel(principal, yield* requireString(request, "channel"))
      const { attachments, blocks, text } = yield* contentArgs(request)
      if ((text === undefined || text.trim().length === 0) && blocks === undefined && attachments === undefined) return yield* fail("no_text")
      if (Option.isSome(slashCommands) && principal.tokenKind === "user" && text !== undefined && text.trimStart().startsWith("/")) {
        const dispatched = yield* slashCommands.value.dispatch(principal, channelId, text)
        if (Option.isSome(dispatched)) return dispatched.value
      }
      const threadTs = optionalString(request, "thread_ts")
      if (threadTs !== undefined && MessageTs.toMicros(threadTs) === undefined) return yield* fail("invalid_thread_ts")
      const clientMsgId = optionalString(request, "client_msg_id")
      if (clientMsgId !== undefined && clientMsgId.length > P.limits.clientMsgId) {
        return yield* fail("invalid_arguments", `client_msg_id must be at most ${P.limits.clientMsgId} characters`)
      }
      const bot = principal.tokenKind === "bot"
      const custom = (name: string) => (bot ? optionalString(request, name) : undefined)
      const posted = yield* ask(
        principal,
        channelId,
        new P.PostMessage({
          ...sender(principal),
          text: text ?? "",
          ...(threadTs === undefined ? {} : { thread_ts: threadTs, reply_broadcast: isTruthy(request.args["reply_broadcast"]) }),
          ...(clientMsgId === undefined ? {} : { client_msg_id: clientMsgId }),
          ...(blocks === undefined ? {} : { blocks }),
          ...(attachments === undefined ? {} : { attachments }),
          ...(principal.botId === undefined ? {} : { bot_id: principal.botId }),
          ...(principal.appId === undefined ? {} : { app_id: principal.appId }),
          ...(custom("username") === undefined ? {} : { username: custom("username") as string }),
          ...(custom("icon_emoji") === undefined ? {} : { icon_emoji: custom("icon_emoji") as string }),
          ...(custom("icon_url") === undefined ? {} : { icon_url: custom("icon_url") as string })
        }),
        clientMsgId
      )
      return { channel: channelId, ts: posted.ts, message: posted.message }
    })

  const update: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      yield* auth.requireScope(principal, "chat:write")
      const channelId = yield* channelIdArg(request)
      const ts = yield* requireString(request, "ts")
      const { attachments, blocks, text } = yield* contentArgs(request)
      const updated = yield* ask(
        principal,
        channelId,
        new P.UpdateMessage({
          ...sender(principal),
          ts,
          ...(text === undefined ? {} : { text }),
          ...(blocks === undefined ? {} : { blocks }),
          ...(attachments === undefined ? {} : { attachments })
        })
      )
      const message = updated.message as { readonly text?: unknown }
      return { channel: channelId, ts: updated.ts, text: message.text ?? "", message: updated.message }
    })

  const del: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      yield* auth.requireScope(principal, "chat:write")
      const channelId = yield* channelIdArg(request)
      const ts = yield* requireString(request, "ts")
      const deleted = yield* ask(principal, channelId, new P.DeleteMessage({ ...w.withRole(principal), ts }))
      return { channel: channelId, ts: deleted.ts }
    })

  const postEphemeral: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      yield* auth.requireScope(principal, "chat:write")
      const channelId = yield* channelIdArg(request)
      const recipient = yield* requireString(request, "user")
      const found = yield* orDieOnSql(channels.access(channelId, principal.userId))
      if (Option.isNone(found)) return yield* fail("channel_not_found")
      const c = found.value
      const flags = { team_id: c.teamId, is_private: c.isPrivate, is_im: c.isIm, is_mpim: c.isMpim }
      if (!Access.canSee(principal, flags, c.isMember)) return yield* fail("channel_not_found")
      if (!c.isMember) return yield* fail("not_in_channel")
      if (c.isArchived) return yield* fail("is_archived")
      const { attachments, blocks, text } = yield* contentArgs(request)
      if ((text === undefined || text.trim().length === 0) && blocks === undefined && attachments === undefined) return yield* fail("no_text")
      if (!Ids.isId("U", recipient) || !(yield* orDieOnSql(channels.isMember(channelId, recipient)))) return yield* fail("user_not_in_channel")
      const threadTs = optionalString(request, "thread_ts")
      const ts = MessageTs.format(Number((yield* Clock.currentTimeNanos) / 1000n))
      yield* w.publisher.publish([
        EventPublisher.userEvent(recipient, {
          type: "message",
          subtype: "ephemeral",
          is_ephemeral: true,
          channel: channelId,
          user: principal.userId,
          text: ChannelActor.cleanText(text ?? ""),
          ts,
          event_ts: ts,
          ...(blocks === undefined ? {} : { blocks }),
          ...(attachments === undefined ? {} : { attachments }),
          ...(threadTs === undefined ? {} : { thread_ts: threadTs }),
          ...(principal.botId === undefined ? {} : { bot_id: principal.botId })
        })
      ])
      return { message_ts: ts }
    })

  return new Map<string, ApiHandler>([
    ["chat.postMessage", postMessage],
    ["chat.update", update],
    ["chat.delete", del],
    ["chat.postEphemeral", postEphemeral]
  ])
}).pipe(Effect.provide(ChannelActor.services))
