/**
 * The presence actor (`presence/<shard actor id>`, serving `presence/<user>` for every
 * user of its shard; see PresenceProtocol.ts): online / away / offline from the
 * gateways' reports, with a TTL, and manual away.
 *
 * State machine, per user:
 * - *online* while some gateway's last full report (younger than the TTL) lists them,
 *   or a later change report adds them; the connection count is the sum over gateways;
 * - *manual away* by `users.setPresence away`, until `auto`;
 * - *auto away* while online with no activity for `presenceAwayAfter`;
 * - Slack's `presence`: `active` when online and neither away, else `away`.
 *
 * A gateway that stops reporting (its node was killed) is forgotten once its last full
 * report is older than the TTL, and its users with it. Each live gateway reports each
 * `presenceReportInterval` to the shards where it has users, and the gateway of the
 * node serving this shard reports to it even with none (in process: decision 0027), so
 * the actor gets a message, and re-evaluates its users, at least that often: no timer
 * is needed. A gateway with no users here goes quiet and is forgotten by TTL, with
 * nothing to forget; its next report (a change or a full one) is taken as from a new
 * gateway.
 *
 * What subscribers see changes only when `presence` does; changes are published after
 * the batch, one `presence_change` per presence value (the batched `users` form when
 * several users changed alike). Coming online or going offline and manual away are
 * persisted (`user_presence`, group-committed); reports themselves never are. A new
 * activation (failover, rebalance) reads back its shard's online users as reported by an
 * unknown gateway at that moment: they stay online for one TTL unless a live gateway
 * reports them, then go offline, and their subscribers hear it.
 *
 * The pure core (`applyReport`, `setManual`, `expire`, `settle`, `viewOf`) is exported
 * for tests; `behaviour` is the shell.
 */
import { SqlClient } from "@effect/sql"
import { Context, Duration, Effect, Exit, Layer } from "effect"
import { ChorusConfig } from "../config/ChorusConfig.ts"
import * as Behaviour from "../runtime/Behaviour.ts"
import * as GroupCommit from "../runtime/GroupCommit.ts"
import { Nats } from "../transport/Nats.ts"
import type { Change, Presence, PresenceRequest, PresenceView, UserReport } from "./PresenceProtocol.ts"
import { changesSubject, PresenceEntity, presenceChange } from "./PresenceProtocol.ts"

// ---- state ------------------------------------------------------------------------------

/** What the actor knows of one gateway. */
export interface GatewaySeen {
  boot: string
  seq: number
  /** When its last full report arrived (ms): its users count until this is older than the TTL. */
  lastFull: number
  readonly users: Set<string>
}

export interface Connection {
  readonly connections: number
  readonly lastActivity: number
}

export interface UserState {
  readonly user: string
  /** Gateway → the user's sockets there. */
  readonly at: Map<string, Connection>
  manualAway: boolean
  /** Last activity seen by any gateway (ms). */
  lastActivity: number
  /** What subscribers last heard. */
  published: Presence
  /** What `user_presence` holds. */
  stored: { readonly online: boolean; readonly manualAway: boolean }
}

export interface State {
  readonly gateways: Map<string, GatewaySeen>
  readonly users: Map<string, UserState>
  /** Users whose presence may have changed and is not yet settled (kept across a failed attempt). */
  readonly dirty: Set<string>
  /** When every user was last re-evaluated (auto away is a matter of time). */
  lastScan: number
}

export interface Settings {
  readonly ttlMs: number
  readonly awayAfterMs: number
}

/** The pseudo-gateway of users read back from `user_presence` at activation. */
export const restoredGateway = "~restored"

/** Every user is re-evaluated at most this often (for auto away). */
const scanEveryMs = 1_000

export const emptyState = (): State => ({ gateways: new Map(), users: new Map(), dirty: new Set(), lastScan: 0 })

const userState = (state: State, user: string): UserState => {
  let entry = state.users.get(user)
  if (entry === undefined) {
    entry = { user, at: new Map(), manualAway: false, lastActivity: 0, published: "away", stored: { online: false, manualAway: false } }
    state.users.set(user, entry)
  }
  return entry
}

const connectionsOf = (entry: UserState): number => {
  let n = 0
  for (const c of entry.at.values()) n += c.connections
  return n
}

/** The user's presence now (Slack's fields); `undefined` entry: never seen, offline. */
export const viewOf = (user: string, entry: UserState | undefined, now: number, settings: Settings): PresenceView => {
  const connections = entry === undefined ? 0 : connectionsOf(entry)
  const online = connections > 0
  const manual = entry?.manualAway ?? false
  const idle = online && entry !== undefined && now - entry.lastActivity > settings.awayAfterMs
  return {
    user,
    presence: online && !manual && !idle ? "active" : "away",
    online,
    auto_away: idle,
    manual_away: manual,
    connection_count: connections,
    ...(online && entry !== undefined ? { last_activity: Math.floor(entry.lastActivity / 1000) } : {})
  }
}

// ---- transitions (pure but for the state they update) ------------------------------------

/** A row of `user_presence` read back at activation. */
export interface StoredRow {
  readonly user_id: string
  readonly online: boolean
  readonly manual_away: boolean
  readonly connections: number
  readonly last_activity: number
}

/** Reads back the shard's online and manually-away users, as an unknown gateway reporting them `now`. */
export const restore = (state: State, rows: ReadonlyArray<StoredRow>, now: number, settings: Settings) => {
  const restored: GatewaySeen = { boot: "", seq: 0, lastFull: now, users: new Set() }
  for (const row of rows) {
    const entry = userState(state, row.user_id)
    entry.manualAway = row.manual_away
    entry.lastActivity = Number(row.last_activity)
    entry.stored = { online: row.online, manualAway: row.manual_away }
    if (row.online) {
      entry.at.set(restoredGateway, { connections: Math.max(1, row.connections), lastActivity: entry.lastActivity })
      restored.users.add(row.user_id)
    }
    entry.published = viewOf(row.user_id, entry, now, settings).presence
  }
  if (restored.users.size > 0) state.gateways.set(restoredGateway, restored)
}

const leave = (state: State, user: string, gateway: string) => {
  const entry = state.users.get(user)
  if (entry !== undefined && entry.at.delete(gateway)) state.dirty.add(user)
  state.gateways.get(gateway)?.users.delete(user)
}

/** A gateway's report (the fields of `Report`). */
export interface ReportFields {
  readonly gateway: string
  readonly boot: string
  readonly seq: number
  readonly full: boolean
  readonly users: ReadonlyArray<UserReport>
}

/** Applies a gateway's report; a stale one (seq not above the last) changes nothing. */
export const applyReport = (state: State, report: ReportFields, now: number) => {
  let seen = state.gateways.get(report.gateway)
  if (seen !== undefined && seen.boot !== report.boot) {
    // The gateway restarted: what its previous life reported is void.
    for (const user of [...seen.users]) leave(state, user, report.gateway)
    state.gateways.delete(report.gateway)
    seen = undefined
  }
  if (seen !== undefined && report.seq <= seen.seq) return
  if (seen === undefined) {
    seen = { boot: report.boot, seq: report.seq, lastFull: now, users: new Set() }
    state.gateways.set(report.gateway, seen)
  }
  seen.seq = report.seq
  if (report.full) {
    seen.lastFull = now
    const listed = new Set<string>()
    for (const u of report.users) if (u.connections > 0) listed.add(u.user)
    for (const user of [...seen.users]) if (!listed.has(user)) leave(state, user, report.gateway)
  }
  for (const u of report.users) {
    if (u.connections <= 0) {
      leave(state, u.user, report.gateway)
      continue
    }
    const entry = userState(state, u.user)
    const before = entry.at.get(report.gateway)
    entry.at.set(report.gateway, { connections: u.connections, lastActivity: u.lastActivity })
    seen.users.add(u.user)
    if (entry.at.delete(restoredGateway)) state.gateways.get(restoredGateway)?.users.delete(u.user)
    if (u.lastActivity > entry.lastActivity) entry.lastActivity = u.lastActivity
    if (before === undefined || before.connections !== u.connections || before.lastActivity !== u.lastActivity) state.dirty.add(u.user)
  }
}

/** `users.setPresence`: `away` sets manual away, `auto` clears it. */
export const setManual = (state: State, user: string, away: boolean) => {
  const entry = userState(state, user)
  if (entry.manualAway !== away) {
    entry.manualAway = away
    state.dirty.add(user)
  }
}

/** Forgets gateways whose last full report is older than the TTL, and their users there. */
export const expire = (state: State, now: number, settings: Settings) => {
  for (const [gateway, seen] of [...state.gateways]) {
    if (now - seen.lastFull <= settings.ttlMs) continue
    for (const user of [...seen.users]) leave(state, user, gateway)
    state.gateways.delete(gateway)
  }
  if (now - state.lastScan >= scanEveryMs) {
    state.lastScan = now
    for (const user of state.users.keys()) state.dirty.add(user)
  }
}

/** A `user_presence` row to write. */
export type PresenceRow = Readonly<Record<string, GroupCommit.Cell>>

export interface Settled {
  /** Published presence changes, one per presence value. */
  readonly changes: ReadonlyArray<Change>
  /** Rows to persist (online or manual away changed). */
  readonly rows: ReadonlyArray<{
    readonly user: string
    readonly online: boolean
    readonly manualAway: boolean
    readonly connections: number
    readonly lastActivity: number
  }>
}

/** What the dirty users' changes are; nothing is marked done (see `commitSettled`). */
export const settle = (state: State, now: number, settings: Settings): Settled => {
  const became: Record<Presence, Array<string>> = { active: [], away: [] }
  const rows: Array<Settled["rows"][number]> = []
  for (const user of state.dirty) {
    const entry = state.users.get(user)
    if (entry === undefined) continue
    const view = viewOf(user, entry, now, settings)
    if (view.presence !== entry.published) became[view.presence].push(user)
    if (view.online !== entry.stored.online || view.manual_away !== entry.stored.manualAway) {
      rows.push({ user, online: view.online, manualAway: view.manual_away, connections: view.connection_count, lastActivity: entry.lastActivity })
    }
  }
  const changes: Array<Change> = []
  if (became.active.length > 0) changes.push({ users: became.active, presence: "active" })
  if (became.away.length > 0) changes.push({ users: became.away, presence: "away" })
  return { changes, rows }
}

/** Marks a settled batch as persisted and published; forgets users there is nothing left to know of. */
export const commitSettled = (state: State, settled: Settled) => {
  for (const change of settled.changes) {
    for (const user of change.users) {
      const entry = state.users.get(user)
      if (entry !== undefined) entry.published = change.presence
    }
  }
  for (const row of settled.rows) {
    const entry = state.users.get(row.user)
    if (entry !== undefined) entry.stored = { online: row.online, manualAway: row.manualAway }
  }
  for (const user of state.dirty) {
    const entry = state.users.get(user)
    if (entry !== undefined && entry.at.size === 0 && !entry.manualAway && !entry.stored.online && !entry.stored.manualAway && entry.published === "away") {
      state.users.delete(user)
    }
  }
  state.dirty.clear()
}

// ---- publishing -------------------------------------------------------------------------

export interface PresencePublisherShape {
  /** Publishes a shard's changes (core NATS, fire and forget; never fails). */
  readonly publish: (shard: number, changes: ReadonlyArray<Change>) => Effect.Effect<void>
}

export class PresencePublisher extends Context.Tag("chorus/actors/PresencePublisher")<PresencePublisher, PresencePublisherShape>() {}

const encoder = new TextEncoder()

export const layerNats: Layer.Layer<PresencePublisher, never, Nats> = Layer.effect(
  PresencePublisher,
  Effect.map(Nats, (nats) => ({
    publish: (shard, changes) =>
      Effect.sync(() => {
        for (const change of changes) {
          try {
            nats.nc.publish(changesSubject(nats.names, shard), encoder.encode(JSON.stringify(presenceChange(change.users, change.presence))))
          } catch {
            // The connection is closing: subscribers re-read presence when they subscribe again.
          }
        }
      })
  }))
)

/** For tests: records what would be published. */
export const makeRecorder = () => {
  const published: Array<{ readonly shard: number; readonly change: Change }> = []
  const service: PresencePublisherShape = {
    publish: (shard, changes) => Effect.sync(() => void published.push(...changes.map((change) => ({ shard, change }))))
  }
  return { published, service, layer: Layer.succeed(PresencePublisher, service) }
}

// ---- the behaviour ----------------------------------------------------------------------

const settingsOf = (config: { readonly presenceTtl: Duration.Duration; readonly presenceAwayAfter: Duration.Duration }): Settings => ({
  ttlMs: Duration.toMillis(config.presenceTtl),
  awayAfterMs: Duration.toMillis(config.presenceAwayAfter)
})

export const behaviour = Behaviour.make<PresenceRequest, State, SqlClient.SqlClient | ChorusConfig | PresencePublisher>({
  entity: PresenceEntity,
  init: (ctx) =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const settings = settingsOf(yield* ChorusConfig)
      const rows = yield* sql<StoredRow>`
        SELECT user_id, online, manual_away, connections, last_activity FROM user_presence
        WHERE cluster = ${ctx.cluster} AND shard = ${ctx.shard} AND (online OR manual_away)`
      const state = emptyState()
      restore(state, rows, Date.now(), settings)
      return state
    }),
  receive: (ctx, state, batch) =>
    Effect.gen(function*() {
      const settings = settingsOf(yield* ChorusConfig)
      const publisher = yield* PresencePublisher
      const now = Date.now()
      for (const incoming of batch) {
        if (incoming._tag === "Report") applyReport(state, incoming.message, now)
        else if (incoming._tag === "SetManual") setManual(state, incoming.message.user, incoming.message.away)
      }
      expire(state, now, settings)
      const settled = settle(state, now, settings)
      if (settled.rows.length > 0) {
        yield* ctx.commit([
          GroupCommit.insert(
            "user_presence",
            settled.rows.map((r) => ({
              cluster: ctx.cluster,
              user_id: r.user,
              shard: ctx.shard,
              online: r.online,
              manual_away: r.manualAway,
              connections: r.connections,
              last_activity: r.lastActivity,
              updated_at: now
            })),
            { target: ["cluster", "user_id"], update: ["shard", "online", "manual_away", "connections", "last_activity", "updated_at"] }
          )
        ])
      }
      yield* publisher.publish(ctx.shard, settled.changes)
      commitSettled(state, settled)
      for (const incoming of batch) {
        switch (incoming._tag) {
          case "Report":
            incoming.complete(Exit.succeed({}))
            break
          case "Get":
            incoming.complete(Exit.succeed(incoming.message.users.map((user) => viewOf(user, state.users.get(user), now, settings))))
            break
          case "SetManual":
            incoming.complete(Exit.succeed(viewOf(incoming.message.user, state.users.get(incoming.message.user), now, settings)))
            break
        }
      }
      return state
    })
})

/** The services the presence behaviour needs besides the runtime's (SqlClient, ChorusConfig). */
export const services: Layer.Layer<PresencePublisher, never, Nats> = layerNats
