/**
 * Edge presence (ARCHITECTURE.md, "Presence actor"; docs/decisions/0014-presence-and-limits.md):
 * the gateway's side of presence, both ways.
 *
 * Up. The gateway tells this service when a user's socket opens or closes and when the
 * user does something (sends a message, types, subscribes); client heartbeats (pings,
 * pongs) stay in the gateway, which closes a socket silent for longer than the TTL.
 * This service keeps, per user, the number of local sockets and the last activity,
 * and reports them to the presence actors, one message per shard:
 * - every `presenceReportInterval`, a full report to each shard where it has users (or
 *   had, until one empty report says they are gone), which keeps them online at the
 *   actor, and to each shard this node serves even with none (a local call, no NATS),
 *   which gives the actor its clock (decision 0027);
 * - changes (first socket opened, last one closed, activity after a long idle) within
 *   `presenceFlushDelay`, as a change report of the shard's changed users.
 * Reports to one shard are sent one at a time, in order; a report that fails is
 * covered by the next full one. On shutdown, an empty full report to every shard takes
 * this gateway's users offline at once (a killed node's go offline by TTL).
 *
 * Down. Sockets subscribe to users (`presence_sub`, which replaces the socket's list).
 * The node follows `<cluster>.eph.presence.<shard>` for the shards of the users some
 * local socket subscribed to (one subscription per shard, reference counted), reads
 * the subscribed users' current presence from their actors (sent to the socket as
 * `presence_change`, batched), then forwards each change to the sockets that
 * subscribed to the user, in Slack's batched form when several changed at once. A
 * socket is told only what differs from what it was last told.
 */
import type { Subscription } from "@nats-io/transport-node"
import { Context, Duration, Effect, Either, Layer, Option, Runtime } from "effect"
import { randomUUID } from "node:crypto"
import type { Change, Presence, PresenceView } from "../actors/PresenceProtocol.ts"
import { byShard, changesSubject, Get, parseChange, PresenceEntity, presenceChange, Report, shardActorId, shardOfUser } from "../actors/PresenceProtocol.ts"
import { ChorusConfig } from "../config/ChorusConfig.ts"
import { LocalShards } from "../runtime/LocalShards.ts"
import { ShardingClient } from "../runtime/ShardingClient.ts"
import { Nats } from "./Nats.ts"

/** A socket that subscribed to presence: how to write a frame to it. */
export interface PresenceSubscriber {
  readonly send: (frame: string) => void
}

export interface EdgePresenceShape {
  /** A socket of `user` opened on this node. */
  readonly opened: (user: string) => void
  /** A socket of `user` closed. */
  readonly closed: (user: string) => void
  /** `user` did something (not a heartbeat). */
  readonly activity: (user: string) => void
  /**
   * Replaces `subscriber`'s subscription with `users`; resolves once their current
   * presence has been written to it.
   */
  readonly subscribe: (subscriber: PresenceSubscriber, users: ReadonlyArray<string>) => Promise<void>
  /** Ends `subscriber`'s subscription (its socket closed). */
  readonly unsubscribe: (subscriber: PresenceSubscriber) => void
  /** Users with a socket on this node. */
  readonly localUsers: () => number
}

export class EdgePresence extends Context.Tag("chorus/transport/EdgePresence")<EdgePresence, EdgePresenceShape>() {}

interface Local {
  connections: number
  lastActivity: number
  /** The activity time last sent to the presence actor. */
  reportedActivity: number
}

interface ShardOut {
  /** Users of the shard whose change is not reported yet. */
  readonly pending: Set<string>
  /** Local users of the shard. */
  readonly users: Set<string>
  fullDue: boolean
  /** When the last full report was sent (performance.now ms). */
  lastFull: number
  inflight: boolean
  /**
   * Whether the actor may count a user of this gateway here: some report listed one
   * since the last full report that listed none (so an empty report still matters).
   */
  reported: boolean
}

interface SubscriberState {
  users: ReadonlySet<string>
  /** What the socket was last told, per user. */
  readonly told: Map<string, Presence>
}

const decoder = new TextDecoder()

export const make = Effect.gen(function*() {
  const config = yield* ChorusConfig
  const nats = yield* Nats
  const client = yield* ShardingClient
  const localShards = Option.getOrUndefined(yield* Effect.serviceOption(LocalShards))
  const runtime = yield* Effect.runtime<never>()
  const runPromise = Runtime.runPromise(runtime)
  const runFork = Runtime.runFork(runtime)
  const shards = config.shards
  const gateway = config.nodeId
  const boot = randomUUID()
  const reportMs = Duration.toMillis(config.presenceReportInterval)
  const flushMs = Duration.toMillis(config.presenceFlushDelay)
  const awayAfterMs = Duration.toMillis(config.presenceAwayAfter)
  // A report that takes longer is abandoned: the next full one covers it.
  const reportTimeout = Duration.millis(Math.max(1_000, reportMs))
  let seq = 0
  let closing = false

  // ---- up: reports --------------------------------------------------------------------

  const local = new Map<string, Local>()
  const out: Array<ShardOut> = Array.from({ length: shards }, () => ({
    pending: new Set(),
    users: new Set(),
    fullDue: true,
    lastFull: 0,
    inflight: false,
    reported: false
  }))
  let flushTimer: NodeJS.Timeout | undefined

  const report = (shard: number, full: boolean, users: ReadonlyArray<string>) => {
    const entries = users.map((user) => {
      const l = local.get(user)
      if (l !== undefined) l.reportedActivity = l.lastActivity
      return { user, connections: l?.connections ?? 0, lastActivity: l?.lastActivity ?? 0 }
    })
    const listsSome = entries.some((e) => e.connections > 0)
    // A full report replaces what the actor knew of this gateway: one that lists nobody
    // leaves nothing there to keep online.
    if (listsSome || full) out[shard]!.reported = listsSome
    return new Report({ gateway, boot, seq: ++seq, full, users: entries })
  }

  const pump = (shard: number) => {
    const s = out[shard]!
    if (s.inflight || closing) return
    let message: Report
    // A shard that went quiet (skipped by a tick) gets a full report, not a change: the
    // actor may be about to forget this gateway, and a change alone would not renew it.
    if (s.fullDue || (s.pending.size > 0 && performance.now() - s.lastFull > reportMs)) {
      s.fullDue = false
      s.lastFull = performance.now()
      s.pending.clear()
      message = report(shard, true, [...s.users])
    } else if (s.pending.size > 0) {
      const users = [...s.pending]
      s.pending.clear()
      message = report(shard, false, users)
    } else {
      return
    }
    s.inflight = true
    let failed = false
    void runPromise(
      client.send(PresenceEntity, shardActorId(shard, shards), message).pipe(Effect.timeout(reportTimeout), Effect.either)
    ).then((result) => {
      if (Either.isLeft(result)) {
        failed = true
        runFork(Effect.logDebug("presence report failed", { shard, error: String(result.left) }))
      }
    }, () => {
      failed = true
    }).finally(() => {
      s.inflight = false
      // After a failure the next tick sends the whole set again; meanwhile changes still go.
      if (failed) s.fullDue = true
      if (s.pending.size > 0 || (s.fullDue && !failed)) pump(shard)
    })
  }

  const changed = (user: string) => {
    const shard = shardOfUser(user, shards)
    out[shard]!.pending.add(user)
    if (flushTimer === undefined && !closing) {
      flushTimer = setTimeout(() => {
        flushTimer = undefined
        for (let shard = 0; shard < shards; shard++) if (out[shard]!.pending.size > 0) pump(shard)
      }, flushMs)
    }
  }

  // A full report each interval to the shards where this gateway has (or just had)
  // users, and to those this node serves even with none: that one is a local call, and
  // it is the actor's clock (decision 0027). An empty report over NATS to every other
  // shard from every gateway was most of an idle cluster's traffic.
  const tick = setInterval(() => {
    for (let shard = 0; shard < shards; shard++) {
      const s = out[shard]!
      // `fullDue` still set: the last full report failed and is owed.
      if (s.fullDue || s.users.size > 0 || s.reported || localShards === undefined || localShards.serves(shard)) {
        s.fullDue = true
        pump(shard)
      }
    }
  }, reportMs)
  tick.unref()
  // The first full reports go soon after start (a restarted node's users were forgotten).
  const firstTick = setTimeout(() => {
    for (let shard = 0; shard < shards; shard++) pump(shard)
  }, Math.min(reportMs, 500))
  firstTick.unref()

  const opened = (user: string) => {
    const now = Date.now()
    const l = local.get(user)
    if (l === undefined) {
      local.set(user, { connections: 1, lastActivity: now, reportedActivity: 0 })
      out[shardOfUser(user, shards)]!.users.add(user)
    } else {
      l.connections++
      l.lastActivity = now
    }
    changed(user)
  }

  const closed = (user: string) => {
    const l = local.get(user)
    if (l === undefined) return
    l.connections--
    if (l.connections <= 0) {
      local.delete(user)
      out[shardOfUser(user, shards)]!.users.delete(user)
    }
    changed(user)
  }

  const activity = (user: string) => {
    const l = local.get(user)
    if (l === undefined) return
    const now = Date.now()
    l.lastActivity = now
    // The actor may take the user for idle before the next full report: tell it now.
    if (now - l.reportedActivity >= awayAfterMs - reportMs) changed(user)
  }

  // ---- down: subscriptions ------------------------------------------------------------

  const subscribers = new WeakMap<PresenceSubscriber, SubscriberState>()
  const watchers = new Map<string, Set<PresenceSubscriber>>()
  const shardSubs = new Map<number, { readonly subscription: Subscription; refs: number }>()
  /** Per watched user, how many changes this node has seen (to discard stale reads). */
  const versions = new Map<string, number>()

  /** Tells each subscriber of `users` that they are now `presence`, if it differs from what it was told. */
  const deliver = (users: ReadonlyArray<string>, presence: Presence, only?: PresenceSubscriber) => {
    const batches = new Map<PresenceSubscriber, Array<string>>()
    for (const user of users) {
      for (const subscriber of watchers.get(user) ?? []) {
        if (only !== undefined && subscriber !== only) continue
        const st = subscribers.get(subscriber)
        if (st === undefined || st.told.get(user) === presence) continue
        st.told.set(user, presence)
        const batch = batches.get(subscriber)
        if (batch === undefined) batches.set(subscriber, [user])
        else batch.push(user)
      }
    }
    for (const [subscriber, batch] of batches) subscriber.send(JSON.stringify(presenceChange(batch, presence)))
  }

  const onChange = (data: Uint8Array) => {
    let change: Change | undefined
    try {
      change = parseChange(JSON.parse(decoder.decode(data)))
    } catch {
      change = undefined
    }
    if (change === undefined) return
    const watched = change.users.filter((u) => watchers.has(u))
    for (const user of watched) versions.set(user, (versions.get(user) ?? 0) + 1)
    if (watched.length > 0) deliver(watched, change.presence)
  }

  const watch = (user: string, subscriber: PresenceSubscriber): boolean => {
    let set = watchers.get(user)
    if (set === undefined) {
      watchers.set(user, set = new Set())
      versions.set(user, 0)
      const shard = shardOfUser(user, shards)
      const sub = shardSubs.get(shard)
      if (sub !== undefined) sub.refs++
      else {
        const subscription = nats.nc.subscribe(changesSubject(nats.names, shard), {
          callback: (error, msg) => {
            if (error === null) onChange(msg.data)
          }
        })
        shardSubs.set(shard, { subscription, refs: 1 })
        set.add(subscriber)
        return true
      }
    }
    set.add(subscriber)
    return false
  }

  const unwatch = (user: string, subscriber: PresenceSubscriber) => {
    const set = watchers.get(user)
    if (set === undefined || !set.delete(subscriber) || set.size > 0) return
    watchers.delete(user)
    versions.delete(user)
    const shard = shardOfUser(user, shards)
    const sub = shardSubs.get(shard)
    if (sub !== undefined && --sub.refs <= 0) {
      sub.subscription.unsubscribe()
      shardSubs.delete(shard)
    }
  }

  /** The current presence of `users` from their actors (one request per shard); failures leave users out. */
  const query = async (users: ReadonlyArray<string>): Promise<ReadonlyArray<PresenceView>> => {
    const groups = byShard(users, (u) => u, shards)
    const answers = await Promise.all([...groups].map(([shard, group]) =>
      runPromise(
        client.send(PresenceEntity, shardActorId(shard, shards), new Get({ users: group })).pipe(
          Effect.timeout(Duration.seconds(5)),
          Effect.orElseSucceed(() => [] as ReadonlyArray<PresenceView>)
        )
      ).catch(() => [] as ReadonlyArray<PresenceView>)
    ))
    return answers.flat()
  }

  /** Reads `users`' presence and tells `subscriber` (or every subscriber) what changed, unless a newer change arrived meanwhile. */
  const refresh = async (users: ReadonlyArray<string>, subscriber?: PresenceSubscriber) => {
    if (users.length === 0) return
    const before = new Map(users.map((u) => [u, versions.get(u) ?? 0] as const))
    const views = await query(users)
    const fresh: Record<Presence, Array<string>> = { active: [], away: [] }
    for (const view of views) {
      if (!watchers.has(view.user) || (versions.get(view.user) ?? 0) !== before.get(view.user)) continue
      fresh[view.presence].push(view.user)
    }
    deliver(fresh.active, "active", subscriber)
    deliver(fresh.away, "away", subscriber)
  }

  const subscribe = async (subscriber: PresenceSubscriber, users: ReadonlyArray<string>): Promise<void> => {
    const wanted = new Set(users)
    let st = subscribers.get(subscriber)
    if (st === undefined) subscribers.set(subscriber, st = { users: new Set(), told: new Map() })
    const added: Array<string> = []
    let newSubjects = false
    for (const user of st.users) {
      if (!wanted.has(user)) {
        unwatch(user, subscriber)
        st.told.delete(user)
      }
    }
    for (const user of wanted) {
      if (!st.users.has(user)) {
        added.push(user)
        if (watch(user, subscriber)) newSubjects = true
      }
    }
    st.users = wanted
    if (newSubjects) await nats.nc.flush().catch(() => undefined)
    await refresh(added, subscriber)
  }

  const unsubscribe = (subscriber: PresenceSubscriber) => {
    const st = subscribers.get(subscriber)
    if (st === undefined) return
    for (const user of st.users) unwatch(user, subscriber)
    subscribers.delete(subscriber)
  }

  // After a NATS reconnect, changes published meanwhile were lost: read them again.
  const statusIterator = nats.nc.status() as AsyncIterable<{ readonly type: string }> & { readonly stop: () => void }
  void (async () => {
    for await (const status of statusIterator) {
      if (status.type === "reconnect") {
        void refresh([...watchers.keys()])
        for (let shard = 0; shard < shards; shard++) out[shard]!.fullDue = true
      }
    }
  })().catch(() => undefined)

  yield* Effect.addFinalizer(() =>
    Effect.promise(async () => {
      closing = true
      clearInterval(tick)
      clearTimeout(firstTick)
      if (flushTimer !== undefined) clearTimeout(flushTimer)
      statusIterator.stop()
      for (const { subscription } of shardSubs.values()) subscription.unsubscribe()
      shardSubs.clear()
      // Goodbye: this gateway holds nobody any more.
      const goodbyes = out.flatMap((s, shard) => (s.reported ? [shard] : [])).map((shard) =>
        runPromise(
          client.send(PresenceEntity, shardActorId(shard, shards), new Report({ gateway, boot, seq: ++seq, full: true, users: [] })).pipe(
            Effect.timeout(Duration.seconds(2)),
            Effect.ignore
          )
        ).catch(() => undefined)
      )
      await Promise.all(goodbyes)
    })
  )

  return {
    opened,
    closed,
    activity,
    subscribe,
    unsubscribe,
    localUsers: () => local.size
  } satisfies EdgePresenceShape
})

export const layer: Layer.Layer<EdgePresence, never, ChorusConfig | Nats | ShardingClient> = Layer.scoped(EdgePresence, make)
