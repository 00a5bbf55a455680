/**
 * The presence actors' protocol (ARCHITECTURE.md, "Presence actor";
 * docs/decisions/0014-presence-and-limits.md).
 *
 * A user's presence lives at the address `presence/<user>`: like every address it
 * hashes to a shard, and the ring places the shard on a node. Every user of one shard is
 * served by that shard's presence actor, `presence/<shardActorId(shard)>` — an id chosen
 * to hash to the same shard — so that a gateway's report about all of its users of a
 * shard is one message, not one per user (edge presence). The shard actor is where
 * `presence/<user>` lives, on the same node and with the same lease.
 *
 * Requests (all volatile: gateways report again anyway, callers retry):
 * - `Report`: the users a gateway holds sockets of, in this shard (`full`), or the ones
 *   that changed since its last report (not `full`; `connections: 0` when gone);
 * - `Get`: the presence of some users of the shard;
 * - `SetManual`: `users.setPresence` (away, or auto).
 *
 * Changes go out on `<cluster>.eph.presence.<shard>` (core NATS, never stored) as Slack's
 * `presence_change`, batched (`users: […]`) when several users change to the same
 * presence at once; gateways forward them to the sockets that subscribed
 * (`presence_sub`).
 */
import { Schema } from "effect"
import * as Entity from "../runtime/Entity.ts"
import { shardOf } from "../runtime/Ring.ts"
import type { NatsNames } from "../transport/Nats.ts"

export const Presence = Schema.Literal("active", "away")
export type Presence = typeof Presence.Type

/** One user as a gateway reports them. */
export const UserReport = Schema.Struct({
  user: Schema.String,
  /** Sockets of the user on the gateway; 0: none any more. */
  connections: Schema.Int,
  /** The user's last activity seen by the gateway (ms since the epoch). */
  lastActivity: Schema.Number
})
export type UserReport = typeof UserReport.Type

/** A user's presence, as `users.getPresence` shows it to the user (Slack's fields). */
export const PresenceView = Schema.Struct({
  user: Schema.String,
  presence: Presence,
  online: Schema.Boolean,
  auto_away: Schema.Boolean,
  manual_away: Schema.Boolean,
  connection_count: Schema.Int,
  /** Unix seconds; absent when the user has no connected client. */
  last_activity: Schema.optional(Schema.Number)
})
export type PresenceView = typeof PresenceView.Type

export class Report extends Schema.TaggedRequest<Report>()("Report", {
  failure: Schema.Never,
  success: Schema.Struct({}),
  payload: {
    /** The reporting gateway (its node id). */
    gateway: Schema.String,
    /** The gateway's process start: a new boot forgets what the previous one reported. */
    boot: Schema.String,
    /** Increasing per gateway boot; an older report than the last applied is ignored. */
    seq: Schema.Number,
    /** Whether `users` is every user of the shard the gateway holds (else only changes). */
    full: Schema.Boolean,
    users: Schema.Array(UserReport)
  }
}) {}

export class Get extends Schema.TaggedRequest<Get>()("Get", {
  failure: Schema.Never,
  success: Schema.Array(PresenceView),
  payload: { users: Schema.Array(Schema.String) }
}) {}

export class SetManual extends Schema.TaggedRequest<SetManual>()("SetManual", {
  failure: Schema.Never,
  success: PresenceView,
  payload: { user: Schema.String, away: Schema.Boolean }
}) {}

export const PresenceEntity = Entity.make("presence", [Report, Get, SetManual], {
  Report: "volatile",
  Get: "volatile",
  SetManual: "volatile"
})

export type PresenceRequest = Entity.Requests<[typeof Report, typeof Get, typeof SetManual]>

// ---- placement (pure) -------------------------------------------------------------------

/** The shard of `presence/<user>`. */
export const shardOfUser = (user: string, shards: number): number => shardOf(`${PresenceEntity.type}/${user}`, shards)

const actorIds = new Map<number, ReadonlyArray<string>>()

/**
 * The id of the presence actor of each shard: the first `~<k>` (k = 0, 1, …) whose
 * address hashes to it. Deterministic, so every node and gateway computes the same.
 * `~` cannot start a user id, so these never collide with one.
 */
export const shardActorIds = (shards: number): ReadonlyArray<string> => {
  const known = actorIds.get(shards)
  if (known !== undefined) return known
  const ids: Array<string | undefined> = new Array(shards).fill(undefined)
  let found = 0
  for (let k = 0; found < shards; k++) {
    const id = `~${k}`
    const shard = shardOf(`${PresenceEntity.type}/${id}`, shards)
    if (ids[shard] === undefined) {
      ids[shard] = id
      found++
    }
  }
  const result = ids as ReadonlyArray<string>
  actorIds.set(shards, result)
  return result
}

export const shardActorId = (shard: number, shards: number): string => shardActorIds(shards)[shard] as string

/** The actor serving `user`'s presence. */
export const actorIdOfUser = (user: string, shards: number): string => shardActorId(shardOfUser(user, shards), shards)

/** Groups users by the shard of their presence. */
export const byShard = <A>(items: Iterable<A>, userOf: (a: A) => string, shards: number): Map<number, Array<A>> => {
  const groups = new Map<number, Array<A>>()
  for (const item of items) {
    const shard = shardOfUser(userOf(item), shards)
    const group = groups.get(shard)
    if (group === undefined) groups.set(shard, [item])
    else group.push(item)
  }
  return groups
}

// ---- events (pure) ----------------------------------------------------------------------

/** Where a shard's presence changes are published: core NATS only (not `evt.>`, never stored). */
export const changesSubject = (names: NatsNames, shard: number): string => names.subject(`eph.presence.${shard}`)

/** Slack's `presence_change`: `user` for one, `users` (batched form) for several. */
export const presenceChange = (users: ReadonlyArray<string>, presence: Presence): Record<string, unknown> =>
  users.length === 1 ? { type: "presence_change", user: users[0], presence } : { type: "presence_change", users, presence }

/** A published change: every user of `users` is now `presence`. */
export interface Change {
  readonly users: ReadonlyArray<string>
  readonly presence: Presence
}

/** Reads a published `presence_change` (either form); undefined if it is not one. */
export const parseChange = (value: unknown): Change | undefined => {
  if (typeof value !== "object" || value === null) return undefined
  const v = value as Record<string, unknown>
  if (v["type"] !== "presence_change" || (v["presence"] !== "active" && v["presence"] !== "away")) return undefined
  const users = Array.isArray(v["users"]) ? v["users"] : typeof v["user"] === "string" ? [v["user"]] : undefined
  if (users === undefined || !users.every((u): u is string => typeof u === "string")) return undefined
  return { users, presence: v["presence"] }
}
