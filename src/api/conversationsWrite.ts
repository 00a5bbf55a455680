/**
 * The conversation writes: `conversations.create`, `.join`, `.leave`, `.invite`,
 * `.kick`, `.archive`, `.unarchive`, `.rename`, `.setTopic`, `.setPurpose`, `.open`,
 * with Slack's arguments, answers and error codes. Each method authenticates, checks
 * its arguments, and asks the conversation's actor (src/actors/ChannelActor.ts), which
 * decides against the channel's state and answers once the change is committed.
 *
 * Invariant 5: whoever may not see a conversation gets `channel_not_found`, from the
 * actor or before asking it; for a bot token that check comes before the scope check
 * (Slack's scope for the conversation's type: `channels:manage`, `groups:write`,
 * `im:write`, `mpim:write`), so a missing scope never reveals a private channel.
 *
 * Also the helpers the `chat.*` and `reactions.*` groups share: asking an actor and
 * mapping its answer to the Web API, parsing `channel`, JSON-valued form arguments, and
 * opening DMs.
 */
import { Effect, Option } from "effect"
import * as ChannelActor from "../actors/ChannelActor.ts"
import * as P from "../actors/ChannelProtocol.ts"
import { EventPublisher } from "../actors/EventPublisher.ts"
import type { Role, WorkspacePrincipal } from "../auth/Principal.ts"
import { Auth } from "../auth/Principal.ts"
import * as Access from "../domain/ConversationAccess.ts"
import * as Ids from "../domain/Ids.ts"
import type { SuccessOf } from "../runtime/Entity.ts"
import type { DeliveryError } from "../runtime/RuntimeErrors.ts"
import { ShardingClient } from "../runtime/ShardingClient.ts"
import { Accounts } from "../store/Accounts.ts"
import { Channels } from "../store/Channels.ts"
import type { ApiHandler, ApiRequest } from "../transport/ApiMethod.ts"
import { ApiError, optionalString, requireString } from "../transport/ApiMethod.ts"
import { fail, isTruthy, orDieOnSql } from "./auth.ts"

// ---- shared with chat.ts and reactions.ts -----------------------------------------------

/** How long a repeated `conversations.create` of the same channel by its creator counts as a retry. */
export const createRetryWindowMs = 120_000

/** A conversation id (C: public and private channels, group DMs; D: DMs). */
export const isConversationId = (value: string): boolean => Ids.isId("C", value) || Ids.isId("D", value)

/** The `channel` argument as an id; anything else is `channel_not_found`. */
export const channelIdArg = (request: ApiRequest, name = "channel"): Effect.Effect<string, ApiError> =>
  Effect.flatMap(requireString(request, name), (value) => (isConversationId(value) ? Effect.succeed(value) : fail("channel_not_found")))

/**
 * A JSON-valued argument (`blocks`, `attachments`): as sent in a JSON body, or a JSON
 * string in a form; `code` when it is not JSON or not an array.
 */
export const jsonArrayArg = (request: ApiRequest, name: string, code: string): Effect.Effect<ReadonlyArray<unknown> | undefined, ApiError> => {
  const raw = request.args[name]
  if (raw === undefined || raw === null || raw === "") return Effect.succeed(undefined)
  let value: unknown = raw
  if (typeof raw === "string") {
    try {
      value = JSON.parse(raw)
    } catch {
      return fail(code, `${name} must be a JSON array`)
    }
  }
  return Array.isArray(value) ? Effect.succeed(value) : fail(code, `${name} must be a JSON array`)
}

/** The runtime's failures as the Web API shows them. */
export const deliveryFailure = (error: DeliveryError): ApiError => {
  switch (error._tag) {
    case "MailboxFull":
      return new ApiError({ code: "ratelimited", status: 429, retryAfterSeconds: 1 })
    case "MalformedMessage":
      return new ApiError({ code: "internal_error", status: 500 })
    default:
      return new ApiError({ code: "service_unavailable", status: 503 })
  }
}

export const make = Effect.gen(function*() {
  const writes = yield* makeWrites
  return writes.methods
}).pipe(Effect.provide(ChannelActor.services))

/** The write context the three groups share. */
export const makeWrites = Effect.gen(function*() {
  const auth = yield* Auth
  const accounts = yield* Accounts
  const channels = yield* Channels
  const client = yield* ShardingClient
  const publisher = yield* EventPublisher

  /**
   * Asks the actor of `channelId`; its refusal becomes Slack's error code, as the
   * caller's role lets them see it (to a guest, a channel they are not in is not found).
   */
  const ask = <Req extends P.ChannelRequest>(
    principal: WorkspacePrincipal,
    channelId: string,
    message: Req,
    commandId?: string
  ): Effect.Effect<SuccessOf<Req>, ApiError> =>
    (client.send(P.Channel, channelId, message, commandId === undefined ? undefined : { commandId }) as Effect.Effect<
      SuccessOf<Req>,
      P.ChannelError | DeliveryError
    >).pipe(
      Effect.catchAll((error) =>
        Effect.fail(error._tag === "ChannelError" ? new ApiError({ code: P.codeFor(principal.role, error.code) }) : deliveryFailure(error))
      )
    )

  /**
   * For bot tokens: the conversation must be visible (else `channel_not_found`), then
   * the token must hold Slack's scope for its type. User tokens hold every scope.
   */
  const requireScopeFor = (principal: WorkspacePrincipal, channelId: string, scopeOf: (type: Access.ConversationType) => string) =>
    Effect.gen(function*() {
      if (principal.scopes === "all") return
      const found = yield* orDieOnSql(channels.access(channelId, principal.userId))
      if (Option.isNone(found)) return yield* fail("channel_not_found")
      const c = found.value
      const flags = { team_id: c.teamId, is_private: c.isPrivate, is_im: c.isIm, is_mpim: c.isMpim }
      if (!Access.canSee(principal, flags, c.isMember)) return yield* fail("channel_not_found")
      yield* auth.requireScope(principal, scopeOf(Access.typeOf(flags)))
    })

  const requireManageScope = (principal: WorkspacePrincipal, channelId: string) => requireScopeFor(principal, channelId, manageScope)

  /** A workspace member by id, active; `user_not_found` otherwise. */
  const activeUser = (principal: WorkspacePrincipal, userId: string) =>
    Effect.gen(function*() {
      if (!Ids.isId("U", userId)) return yield* fail("user_not_found")
      const user = yield* orDieOnSql(accounts.user(principal.teamId, userId))
      if (Option.isNone(user) || user.value.deleted) return yield* fail("user_not_found")
      return user.value
    })

  /**
   * The DM (one other user, or none: a DM with oneself) or group DM (2–8 others) of the
   * caller with `others`, created unless it exists: `{ id, created }`. The same set of
   * users always gets the same conversation (keyed by their sorted ids). Bots need
   * `im:write`/`mpim:write`, except to post to a user (Slack's app DM: `chat:write`).
   */
  const openConversation = (principal: WorkspacePrincipal, others: ReadonlyArray<string>, options: { readonly forPost?: boolean } = {}) =>
    Effect.gen(function*() {
      const distinct = [...new Set(others)].filter((u) => u !== principal.userId)
      if (distinct.length > P.limits.groupDmOthers) return yield* fail("too_many_users")
      if (options.forPost !== true) yield* auth.requireScope(principal, distinct.length <= 1 ? "im:write" : "mpim:write")
      for (const user of distinct) yield* activeUser(principal, user)
      const members = [principal.userId, ...distinct]
      const key = P.dmKey(members)
      const existing = yield* orDieOnSql(channels.byDmKey(principal.teamId, key))
      if (Option.isSome(existing)) return { id: existing.value, created: false }
      const id = Ids.make(members.length <= 2 ? "D" : "C")
      return yield* ask(principal, id, new P.OpenConversation({ user: principal.userId, team: principal.teamId, members, dm_key: key }))
    })

  const sender = (principal: WorkspacePrincipal) => ({ user: principal.userId, team: principal.teamId })
  const withRole = (principal: WorkspacePrincipal) => ({ ...sender(principal), role: principal.role as Role })

  // ---- methods ---------------------------------------------------------------------------

  const create: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      const isPrivate = isTruthy(request.args["is_private"])
      yield* auth.requireScope(principal, isPrivate ? "groups:write" : "channels:manage")
      const team = optionalString(request, "team_id")
      if (team !== undefined && team !== principal.teamId) return yield* fail("team_not_found")
      const named = P.normaliseChannelName(typeof request.args["name"] === "string" ? request.args["name"] : "")
      if ("error" in named) return yield* fail(named.error)
      if (principal.role === "guest") return yield* fail("restricted_action")
      const name = named.name
      // The same create repeated by its creator soon after (a retry whose answer was
      // lost) answers the channel it made; anyone else gets name_taken.
      const retried = (taken: Option.Option<{ readonly id: string; readonly creator: string; readonly isPrivate: boolean; readonly createdAt: number }>) =>
        Effect.gen(function*() {
          if (Option.isNone(taken)) return undefined
          const c = taken.value
          if (c.creator !== principal.userId || c.isPrivate !== isPrivate || Date.now() - c.createdAt > createRetryWindowMs) return undefined
          const described = yield* ask(principal, c.id, new P.Describe(sender(principal))).pipe(Effect.option)
          return Option.getOrUndefined(described)
        })
      const before = yield* orDieOnSql(channels.byName(principal.teamId, name))
      if (Option.isSome(before)) {
        const again = yield* retried(before)
        if (again === undefined) return yield* fail("name_taken")
        return { channel: again.channel }
      }
      const id = Ids.make("C")
      const created = yield* ask(principal, id, new P.CreateChannel({ ...sender(principal), name, is_private: isPrivate })).pipe(
        Effect.catchIf((e) => e.code === "name_taken", (e) =>
          Effect.flatMap(orDieOnSql(channels.byName(principal.teamId, name)), (taken) =>
            Effect.flatMap(retried(taken), (again) => (again === undefined ? Effect.fail(e) : Effect.succeed({ channel: again.channel, seq: 0 })))))
      )
      return { channel: created.channel }
    })

  const join: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      const channelId = yield* channelIdArg(request)
      yield* requireScopeFor(principal, channelId, () => "channels:join")
      const joined = yield* ask(principal, channelId, new P.Join(withRole(principal)))
      return joined.already_in_channel
        ? { channel: joined.channel, warning: "already_in_channel", response_metadata: { warnings: ["already_in_channel"] } }
        : { channel: joined.channel }
    })

  const leave: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      const channelId = yield* channelIdArg(request)
      yield* requireManageScope(principal, channelId)
      const left = yield* ask(principal, channelId, new P.Leave(sender(principal)))
      return left.not_in_channel ? { not_in_channel: true } : {}
    })

  const invite: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      const channelId = yield* channelIdArg(request)
      const raw = yield* requireString(request, "users")
      yield* requireManageScope(principal, channelId)
      const users = [...new Set(raw.split(",").map((u) => u.trim()).filter((u) => u.length > 0))]
      if (users.length === 0) return yield* fail("no_user")
      if (users.length > P.limits.invite) return yield* fail("too_many_users")
      if (users.includes(principal.userId)) return yield* fail("cant_invite_self")
      // The channel first: an outsider learns nothing about it from the users' errors.
      yield* ask(principal, channelId, new P.Describe(sender(principal)))
      for (const user of users) yield* activeUser(principal, user)
      const invited = yield* ask(principal, channelId, new P.Invite({ ...withRole(principal), users }))
      return { channel: invited.channel }
    })

  const kick: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      const channelId = yield* channelIdArg(request)
      const target = yield* requireString(request, "user")
      yield* requireManageScope(principal, channelId)
      if (target === principal.userId) {
        yield* ask(principal, channelId, new P.Describe(sender(principal)))
        return yield* fail("cant_kick_self")
      }
      if (!Ids.isId("U", target)) return yield* fail("user_not_found")
      yield* ask(principal, channelId, new P.Kick({ ...withRole(principal), target }))
      return {}
    })

  const setArchived = (archived: boolean): ApiHandler => (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      const channelId = yield* channelIdArg(request)
      yield* requireManageScope(principal, channelId)
      yield* ask(principal, channelId, archived ? new P.Archive(withRole(principal)) : new P.Unarchive(withRole(principal)))
      return {}
    })

  const rename: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      const channelId = yield* channelIdArg(request)
      yield* requireManageScope(principal, channelId)
      const named = P.normaliseChannelName(typeof request.args["name"] === "string" ? request.args["name"] : "")
      if ("error" in named) return yield* fail(named.error)
      const renamed = yield* ask(principal, channelId, new P.Rename({ ...withRole(principal), name: named.name }))
      return { channel: renamed.channel }
    })

  const setText = (field: "topic" | "purpose"): ApiHandler => (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      const channelId = yield* channelIdArg(request)
      yield* requireManageScope(principal, channelId)
      const raw = request.args[field]
      const value = typeof raw === "string" ? raw : typeof raw === "number" ? String(raw) : ""
      if ([...value].length > P.limits.topic) return yield* fail("too_long")
      const answer = field === "topic"
        ? yield* ask(principal, channelId, new P.SetTopic({ ...sender(principal), topic: value }))
        : yield* ask(principal, channelId, new P.SetPurpose({ ...sender(principal), purpose: value }))
      return { channel: answer.channel }
    })

  const open: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      const returnIm = isTruthy(request.args["return_im"])
      const channelArg = optionalString(request, "channel")
      const usersArg = optionalString(request, "users")
      if (usersArg === undefined) {
        if (channelArg === undefined) return yield* fail("users_list_not_supplied")
        // Resuming a DM or group DM the caller is in.
        if (!isConversationId(channelArg)) return yield* fail("channel_not_found")
        const described = yield* ask(principal, channelArg, new P.Describe(sender(principal)))
        const c = described.channel as { readonly is_im?: unknown; readonly is_mpim?: unknown; readonly is_member?: unknown }
        if ((c.is_im !== true && c.is_mpim !== true) || c.is_member !== true) return yield* fail("channel_not_found")
        return { no_op: true, already_open: true, channel: returnIm ? described.channel : { id: channelArg } }
      }
      const users = usersArg.split(",").map((u) => u.trim()).filter((u) => u.length > 0)
      if (users.length === 0) return yield* fail("users_list_not_supplied")
      for (const user of users) if (!Ids.isId("U", user)) return yield* fail("user_not_found")
      const opened = yield* openConversation(principal, users)
      const channel = returnIm
        ? (yield* ask(principal, opened.id, new P.Describe(sender(principal)))).channel
        : { id: opened.id }
      return opened.created ? { channel } : { no_op: true, already_open: true, channel }
    })

  const methods = new Map<string, ApiHandler>([
    ["conversations.create", create],
    ["conversations.join", join],
    ["conversations.leave", leave],
    ["conversations.invite", invite],
    ["conversations.kick", kick],
    ["conversations.archive", setArchived(true)],
    ["conversations.unarchive", setArchived(false)],
    ["conversations.rename", rename],
    ["conversations.setTopic", setText("topic")],
    ["conversations.setPurpose", setText("purpose")],
    ["conversations.open", open]
  ])

  return { methods, auth, accounts, channels, publisher, ask, activeUser, openConversation, requireManageScope, sender, withRole }
})

/** Slack's scope to manage conversations of a type. */
export const manageScope = (type: Access.ConversationType): string => {
  switch (type) {
    case "public_channel":
      return "channels:manage"
    case "private_channel":
      return "groups:write"
    case "mpim":
      return "mpim:write"
    case "im":
      return "im:write"
  }
}

/** The services every write group needs besides Auth, Accounts and the ShardingClient. */
export const services = ChannelActor.services

export type Writes = Effect.Effect.Success<typeof makeWrites>
