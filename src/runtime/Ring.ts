/**
 * Shard placement: which node owns each shard, for one membership view.
 *
 * A pure module — no I/O, no clock, no randomness — so every node that sees the same
 * view computes the same owners. Build a `Ring` once per view with `make`; lookups
 * (`ownerOf`, `shardsOf`) are reads of prebuilt tables and never rebuild anything.
 *
 * Scheme (docs/decisions/0002-placement-scheme.md): rendezvous (highest-random-weight)
 * hashing with bounded loads.
 * - Each node scores each shard; a node of weight `w` has `round(w · vnodesPerWeight)`
 *   virtual nodes and its score is the best of theirs, so it wins a shard with
 *   probability proportional to its weight.
 * - With `epsilon` set, node `i` holds at most `cap_i = max(⌈f_i⌉, ⌊(1+ε)·f_i⌋)` shards,
 *   `f_i = S·w_i/W` being its fair share, and the assignment is the unique stable
 *   matching between shards and capacity-limited nodes under those scores: walking
 *   every (shard, node) pair from the highest score down, a shard goes to the node if
 *   it is still unplaced and the node has room. No shard would rather be on a node
 *   that would rather have it.
 * - With `epsilon` undefined, each shard simply goes to its highest-scoring node.
 *
 * Everything hashed is specified byte for byte (xxHash32, UTF-8, little-endian), and
 * scores are compared as integers, so the result does not depend on the engine, the
 * platform or the order of the node list.
 */

// ---------------------------------------------------------------------------------
// xxHash32 (https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md)
// ---------------------------------------------------------------------------------

const PRIME1 = 0x9e3779b1
const PRIME2 = 0x85ebca77
const PRIME3 = 0xc2b2ae3d
const PRIME4 = 0x27d4eb2f
const PRIME5 = 0x165667b1

const rotl = (x: number, r: number): number => (x << r) | (x >>> (32 - r))

const readU32 = (b: Uint8Array, i: number): number =>
  (b[i]! | (b[i + 1]! << 8) | (b[i + 2]! << 16) | (b[i + 3]! << 24)) >>> 0

const avalanche = (h: number): number => {
  h ^= h >>> 15
  h = Math.imul(h, PRIME2)
  h ^= h >>> 13
  h = Math.imul(h, PRIME3)
  h ^= h >>> 16
  return h >>> 0
}

/** xxHash32 of `bytes[0, length)` with `seed`, as an unsigned 32-bit integer. */
export const xxhash32 = (bytes: Uint8Array, seed = 0, length = bytes.length): number => {
  let i = 0
  let h: number
  if (length >= 16) {
    let v1 = (seed + PRIME1 + PRIME2) | 0
    let v2 = (seed + PRIME2) | 0
    let v3 = seed | 0
    let v4 = (seed - PRIME1) | 0
    while (i + 16 <= length) {
      v1 = Math.imul(rotl((v1 + Math.imul(readU32(bytes, i), PRIME2)) | 0, 13), PRIME1)
      v2 = Math.imul(rotl((v2 + Math.imul(readU32(bytes, i + 4), PRIME2)) | 0, 13), PRIME1)
      v3 = Math.imul(rotl((v3 + Math.imul(readU32(bytes, i + 8), PRIME2)) | 0, 13), PRIME1)
      v4 = Math.imul(rotl((v4 + Math.imul(readU32(bytes, i + 12), PRIME2)) | 0, 13), PRIME1)
      i += 16
    }
    h = (rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18)) | 0
  } else {
    h = (seed + PRIME5) | 0
  }
  h = (h + length) | 0
  for (; i + 4 <= length; i += 4) h = Math.imul(rotl((h + Math.imul(readU32(bytes, i), PRIME3)) | 0, 17), PRIME4)
  for (; i < length; i++) h = Math.imul(rotl((h + Math.imul(bytes[i]!, PRIME5)) | 0, 11), PRIME1)
  return avalanche(h)
}

/**
 * xxHash32 (seed 0) of the 8 bytes `u32le(a) ‖ u32le(b)`, without allocating: the
 * rendezvous score of virtual node `a` for shard `b`. Split in two so that `make` can
 * hoist the half that depends on `a` out of its loop over shards.
 */
export const xxhash32Pair = (a: number, b: number): number => pairFinish(pairStart(a), b)

const pairStart = (a: number): number => Math.imul(rotl((((PRIME5 + 8) | 0) + Math.imul(a, PRIME3)) | 0, 17), PRIME4)

const pairFinish = (start: number, b: number): number =>
  avalanche(Math.imul(rotl((start + Math.imul(b, PRIME3)) | 0, 17), PRIME4))

// UTF-8 scratch space for hashing strings; JavaScript runs one call at a time, so one
// buffer serves every call and the hot path allocates nothing.
const encoder = new TextEncoder()
let scratch = new Uint8Array(256)

const hashString = (text: string, seed: number): number => {
  // UTF-8 needs at most 3 bytes per UTF-16 code unit.
  if (text.length * 3 > scratch.length) scratch = new Uint8Array(text.length * 3)
  const { written } = encoder.encodeInto(text, scratch)
  return xxhash32(scratch, seed, written)
}

/**
 * The shard of a key (an actor address such as `channel/C0ABC`):
 * `xxHash32(UTF-8(key), seed 0) mod shards`. Lone surrogates encode as U+FFFD, as
 * WHATWG `TextEncoder` does.
 *
 * This function is part of the cluster's persistent state: changing the hash, its
 * seed, the encoding or `shards` re-homes every actor. Tests pin it with golden values.
 */
export const shardOf = (key: string, shards: number): number => {
  if (!Number.isSafeInteger(shards) || shards < 1) throw new RangeError(`shards must be a positive integer, got ${shards}`)
  return hashString(key, 0) % shards
}

// ---------------------------------------------------------------------------------
// The ring
// ---------------------------------------------------------------------------------

/** A member of the view as the ring sees it. */
export interface RingNode {
  readonly id: string
  /** Relative capacity; default 1. Nodes with weight 0 (or not a finite positive number) own nothing. */
  readonly weight?: number | undefined
}

export interface RingConfig {
  /** Number of shards `S`; shards are `0 .. S-1`. Fixed for a cluster's life. */
  readonly shards: number
  /**
   * Virtual nodes per unit of weight. A node of weight `w` scores each shard with
   * `max(1, round(w · vnodesPerWeight))` virtual nodes, so this is the resolution of
   * weights (4 ⇒ quarters). It does not change balance or movement: with rendezvous
   * hashing every shard's draw is already independent. The cost of `make` grows with it.
   */
  readonly vnodesPerWeight: number
  /**
   * Bounded-load factor ε: a node holds at most `⌊(1+ε)·fair share⌋` shards, never
   * fewer than `⌈fair share⌉`. `undefined` turns the bound off (plain rendezvous
   * hashing: max/mean ≈ 1.25–1.35 at 256 shards on 8 nodes). Smaller ε balances
   * better and moves more shards on each membership change.
   */
  readonly epsilon: number | undefined
}

/**
 * Defaults, chosen by `chorus placement simulate` (docs/decisions/0002): ε = 0.1 is the
 * largest bound that keeps max/mean ≤ 1.10, so it is also the one that moves least;
 * 4 virtual nodes per unit of weight express weights to a quarter.
 */
export const RingDefaults = {
  vnodesPerWeight: 4,
  epsilon: 0.1
} as const satisfies Omit<RingConfig, "shards">

/** A node that takes part in the placement. */
export interface RingMember {
  readonly id: string
  readonly weight: number
  /** Most shards this node may hold (`shards` when the bound is off). */
  readonly capacity: number
}

export interface Ring {
  readonly config: RingConfig
  /** The members that take part (weight > 0), sorted by id. */
  readonly members: ReadonlyArray<RingMember>
  /** `owners[shard]`: the owning node id; `undefined` only when there are no members. */
  readonly owners: ReadonlyArray<string | undefined>
  /** Each member's shards in ascending order. */
  readonly shardsByNode: ReadonlyMap<string, ReadonlyArray<number>>
}

/** Shards are numbered below this (2^21), so a (score, shard) pair packs exactly into a double. */
const SHARD_SPAN = 2 ** 21

const validateConfig = (config: RingConfig): void => {
  const { epsilon, shards, vnodesPerWeight } = config
  if (!Number.isSafeInteger(shards) || shards < 1) throw new RangeError(`shards must be a positive integer, got ${shards}`)
  if (shards > SHARD_SPAN) throw new RangeError(`shards must be at most ${SHARD_SPAN}, got ${shards}`)
  if (!Number.isSafeInteger(vnodesPerWeight) || vnodesPerWeight < 1) {
    throw new RangeError(`vnodesPerWeight must be a positive integer, got ${vnodesPerWeight}`)
  }
  if (epsilon !== undefined && !(epsilon >= 0 && Number.isFinite(epsilon))) {
    throw new RangeError(`epsilon must be a finite number ≥ 0 or undefined, got ${epsilon}`)
  }
}

const byId = (a: { readonly id: string }, b: { readonly id: string }): number => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)

/** Members sorted by id; invalid weights dropped; a repeated id keeps its largest weight, whatever the order. */
const normalize = (nodes: Iterable<RingNode>): Array<{ readonly id: string; readonly weight: number }> => {
  const weights = new Map<string, number>()
  for (const node of nodes) {
    const weight = node.weight ?? 1
    if (!(weight > 0 && Number.isFinite(weight))) continue
    weights.set(node.id, Math.max(weight, weights.get(node.id) ?? 0))
  }
  return [...weights].map(([id, weight]) => ({ id, weight })).sort(byId)
}

// Float tolerance so that e.g. a fair share of 32 is not read as 32.000000001 → 33.
const TOLERANCE = 1e-9

const capacityOf = (fairShare: number, config: RingConfig): number =>
  config.epsilon === undefined
    ? config.shards
    : Math.min(
      config.shards,
      Math.max(Math.ceil(fairShare - TOLERANCE), Math.floor(fairShare * (1 + config.epsilon) + TOLERANCE))
    )

/** Virtual-node hashes of a member: `xxHash32(UTF-8(id), seed k)` for k = 0 .. count-1. */
const vnodeHashes = (id: string, weight: number, vnodesPerWeight: number): Uint32Array => {
  const count = Math.max(1, Math.round(weight * vnodesPerWeight))
  const hashes = new Uint32Array(count)
  for (let k = 0; k < count; k++) hashes[k] = hashString(id, k)
  return hashes
}

/**
 * A node's rendezvous score for a shard: the best `xxhash32Pair(vnode, shard)` over its
 * virtual nodes. Higher wins; equal scores go to the smaller id.
 */
export const score = (node: { readonly id: string; readonly weight: number }, shard: number, vnodesPerWeight: number): number => {
  const vnodes = vnodeHashes(node.id, node.weight, vnodesPerWeight)
  let best = 0
  for (const v of vnodes) best = Math.max(best, xxhash32Pair(v, shard))
  return best
}

/** Builds the placement for one view. Same view (in any order) ⇒ same result, everywhere. */
export const make = (nodes: Iterable<RingNode>, config: RingConfig): Ring => {
  validateConfig(config)
  const S = config.shards
  const normalized = normalize(nodes)
  const n = normalized.length
  const totalWeight = normalized.reduce((sum, node) => sum + node.weight, 0)
  const members: ReadonlyArray<RingMember> = normalized.map((node) =>
    Object.freeze({ ...node, capacity: capacityOf((S * node.weight) / totalWeight, config) })
  )

  // owner[s] = member index, -1 = unplaced.
  const owner = new Int32Array(S).fill(-1)
  if (n > 0) {
    // scores[i * S + s]: member i's score for shard s (the best of its virtual nodes).
    const scores = new Uint32Array(n * S)
    for (let i = 0; i < n; i++) {
      const row = i * S
      for (const vnode of vnodeHashes(normalized[i]!.id, normalized[i]!.weight, config.vnodesPerWeight)) {
        const start = pairStart(vnode)
        for (let s = 0; s < S; s++) {
          // pairFinish(start, s), inlined: this loop runs n·S·V times, and a cold
          // (not yet optimised) first build pays for every call.
          let h = (start + Math.imul(s, PRIME3)) | 0
          h = Math.imul((h << 17) | (h >>> 15), PRIME4)
          h ^= h >>> 15
          h = Math.imul(h, PRIME2)
          h ^= h >>> 13
          h = Math.imul(h, PRIME3)
          h = (h ^ (h >>> 16)) >>> 0
          if (h > scores[row + s]!) scores[row + s] = h
        }
      }
    }
    if (config.epsilon === undefined) placeUnbounded(scores, n, S, owner)
    else placeBounded(scores, members, S, owner)
  }

  const owners: Array<string | undefined> = Array.from(owner, (i) => (i < 0 ? undefined : members[i]!.id))
  const shardLists = members.map((): Array<number> => [])
  owner.forEach((i, s) => shardLists[i]?.push(s))
  const shardsByNode = new Map(members.map((m, i) => [m.id, Object.freeze(shardLists[i]!)] as const))
  return Object.freeze({
    config: Object.freeze({ ...config }),
    members: Object.freeze(members),
    owners: Object.freeze(owners),
    shardsByNode
  })
}

/** Plain rendezvous: each shard to its highest score (ties to the smaller id). */
const placeUnbounded = (scores: Uint32Array, n: number, S: number, owner: Int32Array): void => {
  for (let s = 0; s < S; s++) {
    let best = 0
    for (let i = 1; i < n; i++) if (scores[i * S + s]! > scores[best * S + s]!) best = i
    owner[s] = best
  }
}

/**
 * Bounded loads: the stable matching between shards and capacity-limited nodes.
 *
 * Every (node, shard) pair is ranked by one order — score descending, then smaller id,
 * then smaller shard — which both sides share, so the stable matching is unique and
 * equals the greedy walk over all pairs in that order. Computed here by node-proposing
 * deferred acceptance: each node offers itself to its shards from its best score down
 * while it has room; a shard keeps its best offer and a displaced node offers again.
 * Per-node sorts are cheaper than sorting all `n·S` pairs. Capacities add up to at least
 * `S`, so every shard is placed.
 */
const placeBounded = (scores: Uint32Array, members: ReadonlyArray<RingMember>, S: number, owner: Int32Array): void => {
  const n = members.length
  // Row i of `ranked`, ascending, is member i's shards from worst to best: each entry
  // packs (score, 2^21-1-shard) into one exact double (score < 2^32, shard < 2^21), so a
  // native numeric sort orders by score and then by the smaller shard.
  const ranked = new Float64Array(n * S)
  for (let i = 0; i < n; i++) {
    const row = i * S
    for (let s = 0; s < S; s++) ranked[row + s] = scores[row + s]! * SHARD_SPAN + (SHARD_SPAN - 1 - s)
    ranked.subarray(row, row + S).sort()
  }
  // Member i's k-th best shard; nodes rarely get far down their list, so decode lazily.
  const preference = (i: number, k: number): number => SHARD_SPAN - 1 - (ranked[i * S + S - 1 - k]! % SHARD_SPAN)
  const load = new Int32Array(n)
  const next = new Int32Array(n) // how far down its preference list each member has offered
  const pending: Array<number> = members.map((_, i) => i)
  while (pending.length > 0) {
    const i = pending.pop()!
    const capacity = members[i]!.capacity
    while (load[i]! < capacity && next[i]! < S) {
      const s = preference(i, next[i]!)
      next[i]!++
      const held = owner[s]!
      // Higher score wins; on a tie, the smaller id (smaller index).
      if (held >= 0 && (scores[held * S + s]! > scores[i * S + s]! || (scores[held * S + s] === scores[i * S + s] && held < i))) continue
      owner[s] = i
      load[i]!++
      if (held >= 0) {
        load[held]!--
        pending.push(held)
      }
    }
  }
  // Unreachable while capacities add up to S; kept so that no float surprise can ever leave a shard unowned.
  if (owner.includes(-1)) {
    const unbounded = new Int32Array(S)
    placeUnbounded(scores, n, S, unbounded)
    for (let s = 0; s < S; s++) if (owner[s]! < 0) owner[s] = unbounded[s]!
  }
}

/** The node that owns `shard`, or `undefined` when the ring is empty or `shard` is out of range. */
export const ownerOf = (ring: Ring, shard: number): string | undefined => ring.owners[shard]

/** The shards `nodeId` owns, ascending; empty when it is not a member. */
export const shardsOf = (ring: Ring, nodeId: string): ReadonlyArray<number> => ring.shardsByNode.get(nodeId) ?? []

/** Number of shards each member owns (members with none included). */
export const loads = (ring: Ring): ReadonlyMap<string, number> =>
  new Map(ring.members.map((m) => [m.id, shardsOf(ring, m.id).length] as const))

/**
 * Balance: the largest ratio of a member's load to its fair share `S·w/W` (for equal
 * weights, max/mean). 1 is perfect; 0 for an empty ring.
 */
export const balance = (ring: Ring): number => {
  const totalWeight = ring.members.reduce((sum, m) => sum + m.weight, 0)
  let worst = 0
  for (const m of ring.members) {
    worst = Math.max(worst, shardsOf(ring, m.id).length / ((ring.config.shards * m.weight) / totalWeight))
  }
  return worst
}

const sameShardCount = (from: Ring, to: Ring): number => {
  if (from.config.shards !== to.config.shards) {
    throw new RangeError(`cannot compare rings of ${from.config.shards} and ${to.config.shards} shards`)
  }
  return from.config.shards
}

/** Fraction of shards whose owner differs between two placements of the same shards. */
export const movedFraction = (from: Ring, to: Ring): number => {
  const S = sameShardCount(from, to)
  let moved = 0
  for (let s = 0; s < S; s++) if (from.owners[s] !== to.owners[s]) moved++
  return moved / S
}

/**
 * Fraction of shards that moved between two nodes that are members of both views —
 * moves that a membership change did not call for: on a join, shards that did not go
 * to the joiner; on a leave, shards that were not on the leaver.
 */
export const strayFraction = (from: Ring, to: Ring): number => {
  const S = sameShardCount(from, to)
  const inFrom = new Set(from.members.map((m) => m.id))
  const inTo = new Set(to.members.map((m) => m.id))
  let stray = 0
  for (let s = 0; s < S; s++) {
    const a = from.owners[s]
    const b = to.owners[s]
    if (a !== undefined && b !== undefined && a !== b && inTo.has(a) && inFrom.has(b)) stray++
  }
  return stray / S
}

/**
 * The least fraction of shards any placement must move between two views that is fair
 * in both: the total variation distance between the members' weight shares. 1/(n+1)
 * for a join of equal weights, 1/n for a leave; 1 if exactly one view is empty.
 */
export const idealMovedFraction = (from: Ring, to: Ring): number => {
  if (from.members.length === 0 || to.members.length === 0) return from.members.length === to.members.length ? 0 : 1
  const shares = (ring: Ring) => {
    const total = ring.members.reduce((sum, m) => sum + m.weight, 0)
    return new Map(ring.members.map((m) => [m.id, m.weight / total] as const))
  }
  const a = shares(from)
  const b = shares(to)
  let distance = 0
  for (const id of new Set([...a.keys(), ...b.keys()])) distance += Math.abs((a.get(id) ?? 0) - (b.get(id) ?? 0))
  return distance / 2
}
