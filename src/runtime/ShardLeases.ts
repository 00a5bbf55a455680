/**
 * Per-shard leases in NATS KV (`<cluster>-leases`, key `shard.<n>`), changed only by
 * compare-and-set on the entry's revision. Each change of owner increments the epoch.
 *
 * A lease has no expiry of its own: it is valid while its holder's membership
 * heartbeat is fresh (as in epoch-based leases tied to node liveness), so renewing
 * every shard costs nothing beyond the heartbeat. A holder stops serving once its own
 * heartbeat is older than the failure timeout minus a safety margin; others take the
 * lease only once that heartbeat is older than the full failure timeout.
 */
import { Data, Effect, Option } from "effect"
import type { NatsError } from "../transport/Nats.ts"
import { Nats } from "../transport/Nats.ts"

export interface LeaseHolder {
  readonly node: string
  readonly incarnation: string
}

export interface Lease {
  readonly shard: number
  readonly holder: LeaseHolder | undefined
  readonly epoch: number
  readonly revision: number
}

export class LeaseTaken extends Data.TaggedError("LeaseTaken")<{
  readonly shard: number
  readonly by: LeaseHolder | undefined
}> {}

/** The KV key of a shard's lease. */
export const key = (shard: number) => `shard.${shard}`

interface LeaseRecord {
  readonly node: string | null
  readonly incarnation: string | null
  readonly epoch: number
  readonly at: number
}

export const decode = (shard: number, value: Uint8Array, revision: number): Lease => {
  const record = JSON.parse(new TextDecoder().decode(value)) as LeaseRecord
  return {
    shard,
    holder: record.node !== null && record.incarnation !== null ? { node: record.node, incarnation: record.incarnation } : undefined,
    epoch: record.epoch,
    revision
  }
}

const encode = (holder: LeaseHolder | undefined, epoch: number) =>
  JSON.stringify({ node: holder?.node ?? null, incarnation: holder?.incarnation ?? null, epoch, at: Date.now() } satisfies LeaseRecord)

export const shardOfKey = (k: string): Option.Option<number> => {
  const m = /^shard\.(\d+)$/.exec(k)
  return m?.[1] === undefined ? Option.none() : Option.some(Number(m[1]))
}

export const read = (shard: number): Effect.Effect<Option.Option<Lease>, NatsError, Nats> =>
  Effect.gen(function*() {
    const nats = yield* Nats
    const entry = yield* nats.call("lease get", () => nats.leases.get(key(shard)))
    if (entry === null || entry.operation !== "PUT") return Option.none()
    return Option.some(decode(shard, entry.value, entry.revision))
  })

/**
 * Every shard's lease, read key by key. Not through `kv.keys()`: its listing ends on the
 * last pending entry, and while leases change under it (a rebalance) it can miss that
 * and wait for the next idle heartbeat — 30 s for an operator's `cluster.status`.
 */
export const readAll = (shards: number) =>
  Effect.forEach(Array.from({ length: shards }, (_, shard) => shard), (shard) => read(shard), { concurrency: 32 }).pipe(
    Effect.map((all) => {
      const leases = new Map<number, Lease>()
      for (const lease of all) if (Option.isSome(lease)) leases.set(lease.value.shard, lease.value)
      return leases
    })
  )

/**
 * Takes the lease for `holder` if `canTake(current)` allows (free, released, or held by
 * a dead node); the compare-and-set fails if anyone changed it meanwhile.
 */
export const acquire = (
  shard: number,
  holder: LeaseHolder,
  canTake: (current: Lease) => Effect.Effect<boolean>
): Effect.Effect<Lease, LeaseTaken | NatsError, Nats> =>
  Effect.gen(function*() {
    const nats = yield* Nats
    const current = yield* read(shard)
    if (Option.isNone(current)) {
      const revision = yield* nats.call("lease create", () => nats.leases.create(key(shard), encode(holder, 1))).pipe(
        Effect.catchAll(() => new LeaseTaken({ shard, by: undefined }))
      )
      return { shard, holder, epoch: 1, revision }
    }
    const lease = current.value
    if (!(yield* canTake(lease))) return yield* new LeaseTaken({ shard, by: lease.holder })
    const epoch = lease.epoch + 1
    const revision = yield* nats.call("lease update", () => nats.leases.update(key(shard), encode(holder, epoch), lease.revision)).pipe(
      Effect.catchAll(() => new LeaseTaken({ shard, by: lease.holder }))
    )
    return { shard, holder, epoch, revision }
  })

/** Gives the lease up (keeping its epoch) so a successor can take it at once. */
export const release = (lease: Lease): Effect.Effect<void, NatsError, Nats> =>
  Effect.gen(function*() {
    const nats = yield* Nats
    yield* nats.call("lease release", () => nats.leases.update(key(lease.shard), encode(undefined, lease.epoch), lease.revision)).pipe(
      // Someone took it already (we were presumed dead): nothing left to give up.
      Effect.catchIf((e) => /wrong last sequence/i.test(e.message), () => Effect.void)
    )
  })
