/**
 * Slack's `conversations.mark {channel, ts}`: moves the caller's read marker, through
 * their user-session actor (src/actors/UserSessionActor.ts), which writes it and tells
 * every socket of theirs (`channel_marked`, `group_marked`, `im_marked`). The unread
 * counts it changes are read back by `conversations.info` and `users.conversations`
 * (`unread_count`, `unread_count_display`, `last_read`; src/api/conversationsRead.ts).
 *
 * A conversation the caller may not see is `channel_not_found` (invariant 5), one they
 * may see but are not in `not_in_channel`; a bot needs `<type>:write`, as on Slack.
 */
import { Effect, Option } from "effect"
import { Mark, UserSession } from "../actors/UserSessionProtocol.ts"
import { Auth } from "../auth/Principal.ts"
import * as Access from "../domain/ConversationAccess.ts"
import * as Range from "../domain/HistoryRange.ts"
import * as Ids from "../domain/Ids.ts"
import { ShardingClient } from "../runtime/ShardingClient.ts"
import { ConversationsRead } from "../store/ConversationsRead.ts"
import type { ApiHandler } from "../transport/ApiMethod.ts"
import { ApiError, requireString } from "../transport/ApiMethod.ts"
import { fail, orDieOnSql } from "./auth.ts"

const writeScope: Record<Access.ConversationType, string> = {
  public_channel: "channels:write",
  private_channel: "groups:write",
  mpim: "mpim:write",
  im: "im:write"
}

export const make = Effect.gen(function*() {
  const auth = yield* Auth
  const reads = yield* ConversationsRead
  const client = yield* ShardingClient

  const mark: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      const channel = yield* requireString(request, "channel")
      if (!Ids.isId("C", channel) && !Ids.isId("D", channel)) return yield* fail("channel_not_found")
      const found = yield* orDieOnSql(reads.channel(channel, principal.userId))
      if (Option.isNone(found) || !Access.canSee(principal, found.value, found.value.is_member)) return yield* fail("channel_not_found")
      yield* auth.requireScope(principal, writeScope[Access.typeOf(found.value)])
      if (!found.value.is_member) return yield* fail("not_in_channel")
      const ts = Range.parse(yield* requireString(request, "ts"))
      if (ts === undefined) return yield* fail("invalid_timestamp")
      yield* client.send(UserSession, principal.userId, new Mark({ team: principal.teamId, role: principal.role, channel, ts: ts.ts })).pipe(
        Effect.catchAll((error) =>
          Effect.fail(
            error._tag === "UserSessionError"
              ? new ApiError({ code: error.code })
              : error._tag === "MailboxFull"
              ? new ApiError({ code: "ratelimited", status: 429, retryAfterSeconds: 1 })
              : new ApiError({ code: "service_unavailable", status: 503 })
          )
        )
      )
      return {}
    })

  return new Map<string, ApiHandler>([["conversations.mark", mark]])
})
