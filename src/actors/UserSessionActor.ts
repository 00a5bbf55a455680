/**
 * The user-session actor (`user/<user id>`; see UserSessionProtocol.ts). Placed by the
 * ring like every actor, so one node at a time serialises a user's per-user writes, from
 * whichever device and node they come: two devices marking the same conversation at once
 * end with one marker, and every socket hears the marks in the order they were applied.
 *
 *   Mark(channel, ts)
 *     1. the conversation as the user sees it (`channel_not_found` / `not_in_channel`);
 *     2. `last_read_seq`: the seq of the newest message at or before `ts` (so that
 *        `conversations.info` knows there is nothing unread without counting while no
 *        event came after it);
 *     3. the marker is written under the shard's fence, group-committed;
 *     4. the unread counts after it; Slack's `*_marked` event to the user's subject;
 *        the answer.
 *
 * The user's connections across gateways and devices are counted where they are
 * reported, by the presence actors (edge presence); the per-user events (joined, left,
 * DM opened, marked) reach every one of them through the gateways' `evt.user.<user>`
 * subscriptions, which also move each node's channel subscriptions at once.
 */
import { SqlClient } from "@effect/sql"
import { Clock, Effect, Layer, Option } from "effect"
import type { Nats } from "../transport/Nats.ts"
import * as Access from "../domain/ConversationAccess.ts"
import * as Behaviour from "../runtime/Behaviour.ts"
import * as GroupCommit from "../runtime/GroupCommit.ts"
import * as ConversationsReadStore from "../store/ConversationsRead.ts"
import { ConversationsRead } from "../store/ConversationsRead.ts"
import * as EventPublisher from "./EventPublisher.ts"
import * as MessageTs from "./MessageTs.ts"
import { markedEventType, UserSession, UserSessionError } from "./UserSessionProtocol.ts"
import type { Marked, UserSessionRequest } from "./UserSessionProtocol.ts"

/** No state between messages: markers live in `channel_members`. */
type State = Record<string, never>

const refuse = (code: string) => Effect.fail(new UserSessionError({ code }))

export const behaviour = Behaviour.sequential<UserSessionRequest, State, SqlClient.SqlClient | ConversationsRead | EventPublisher.EventPublisher>({
  entity: UserSession,
  init: () => Effect.succeed({}),
  handlers: {
    Mark: (ctx, state, m) =>
      Effect.gen(function*() {
        const user = ctx.address.id
        const reads = yield* ConversationsRead
        const sql = yield* SqlClient.SqlClient
        const publisher = yield* EventPublisher.EventPublisher
        const found = yield* reads.channel(m.channel, user)
        const viewer = { teamId: m.team, role: m.role }
        if (Option.isNone(found) || !Access.canSee(viewer, found.value, found.value.is_member)) return yield* refuse("channel_not_found")
        const view = found.value
        if (!view.is_member) return yield* refuse("not_in_channel")
        const rows = yield* sql<{ seq: number }>`
          SELECT seq FROM messages WHERE channel_id = ${m.channel} AND ts <= ${m.ts}
          ORDER BY ts DESC LIMIT 1`
        const seq = Number(rows[0]?.seq ?? 0)
        yield* ctx.commit([
          GroupCommit.update(
            "channel_members",
            ["channel_id", "user_id"],
            [{ channel_id: m.channel, user_id: user, last_read: m.ts, last_read_seq: seq }],
            { last_read_seq: "bigint" }
          )
        ])
        const unread = seq >= view.last_seq ? { unread_count: 0, unread_count_display: 0 } : yield* reads.unread(m.channel, user, m.ts)
        const eventTs = MessageTs.format(Number((yield* Clock.currentTimeNanos) / 1000n))
        yield* publisher.publish([
          EventPublisher.userEvent(user, {
            type: markedEventType(view),
            user,
            channel: m.channel,
            ts: m.ts,
            unread_count: unread.unread_count,
            unread_count_display: unread.unread_count_display,
            num_mentions: 0,
            num_mentions_display: 0,
            mention_count: 0,
            mention_count_display: 0,
            event_ts: eventTs
          })
        ])
        const marked: Marked = { channel: m.channel, ts: m.ts, ...unread }
        return [state, marked] as const
      })
  }
})

/** The services the user-session behaviour needs besides the runtime's SqlClient. */
export const services: Layer.Layer<ConversationsRead | EventPublisher.EventPublisher, never, SqlClient.SqlClient | Nats> = Layer.merge(
  ConversationsReadStore.layer,
  EventPublisher.layerNats
)
