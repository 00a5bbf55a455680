import { describe, expect, it } from "vitest"
import * as Ring from "../../src/runtime/Ring.ts"

// Reproducible node names: mulberry32 from a seed, so every run sees the same clusters.
const seededIds = (seed: number, count: number): Array<string> => {
  let state = seed >>> 0
  const next = () => {
    state = (state + 0x6d2b79f5) | 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return (t ^ (t >>> 14)) >>> 0
  }
  const ids = new Set<string>()
  while (ids.size < count) ids.add(`node-${next().toString(16).padStart(8, "0")}`)
  return [...ids]
}

const cluster = (seed: number, count: number): Array<Ring.RingNode> => seededIds(seed, count).map((id) => ({ id }))

const config = (shards: number, overrides: Partial<Ring.RingConfig> = {}): Ring.RingConfig => ({
  shards,
  ...Ring.RingDefaults,
  ...overrides
})

const mean = (values: ReadonlyArray<number>): number => values.reduce((a, b) => a + b, 0) / values.length

const utf8 = (text: string) => new TextEncoder().encode(text)

/** The definition the ring implements: walk all pairs by (score desc, id, shard), place while there is room. */
const referenceGreedy = (ring: Ring.Ring): Array<string> => {
  const { shards, vnodesPerWeight } = ring.config
  const pairs = ring.members.flatMap((m, i) =>
    Array.from({ length: shards }, (_, s) => ({ i, s, score: Ring.score(m, s, vnodesPerWeight) }))
  )
  pairs.sort((a, b) => b.score - a.score || a.i - b.i || a.s - b.s)
  const owners: Array<string> = []
  const load = ring.members.map(() => 0)
  for (const { i, s } of pairs) {
    if (owners[s] !== undefined || load[i]! >= ring.members[i]!.capacity) continue
    owners[s] = ring.members[i]!.id
    load[i]!++
  }
  return owners
}

describe("xxhash32", () => {
  it("matches the published test vectors", () => {
    const vectors: ReadonlyArray<readonly [string, number, number]> = [
      ["", 0, 0x02cc5d05],
      ["a", 0, 0x550d7456],
      ["abc", 0, 0x32d153ff],
      ["Hello World!", 0, 0x0bd69788],
      ["The quick brown fox jumps over the lazy dog", 0, 0xe85ea4de],
      ["Nobody inspects the spammish repetition", 0, 0xe2293b2f],
      ["", 1, 0x0b2cb792],
      ["", 0x7fffffff, 0xc89b854f],
      ["", 0x9e3779b1, 0x36b78ae7],
      ["1", 0, 0xb6ecc8b2],
      ["1", 1, 0x642684c5]
    ]
    for (const [text, seed, expected] of vectors) expect(Ring.xxhash32(utf8(text), seed)).toBe(expected)
  })

  it("xxhash32Pair is xxHash32 of u32le(a) ‖ u32le(b)", () => {
    for (const [a, b] of [[0, 0], [1, 2], [0xffffffff, 1023], [0x9e3779b1, 7], [12345678, 0x80000000]] as const) {
      const bytes = new Uint8Array(8)
      new DataView(bytes.buffer).setUint32(0, a, true)
      new DataView(bytes.buffer).setUint32(4, b, true)
      expect(Ring.xxhash32Pair(a, b)).toBe(Ring.xxhash32(bytes))
    }
  })
})

describe("shardOf", () => {
  it("is pinned: changing these values re-homes every actor", () => {
    expect(Ring.shardOf("channel/C0ABC", 128)).toBe(111)
    expect(Ring.shardOf("user/U0XYZ", 128)).toBe(95)
    expect(Ring.shardOf("presence/U0XYZ", 256)).toBe(172)
    expect(Ring.shardOf("channel/général", 1024)).toBe(768)
    expect(Ring.shardOf("", 1024)).toBe(261)
  })

  it("is xxHash32 (seed 0) of the UTF-8 key, mod the shard count", () => {
    for (const key of ["channel/C0ABC", "channel/général", "user/😀", "x".repeat(5000)]) {
      expect(Ring.shardOf(key, 1000)).toBe(Ring.xxhash32(utf8(key)) % 1000)
    }
  })

  it("spreads keys evenly", () => {
    const counts = new Array<number>(128).fill(0)
    for (let k = 0; k < 128_000; k++) counts[Ring.shardOf(`channel/C${k.toString(36)}`, 128)]!++
    // 1,000 expected per shard, binomial sd ≈ 31.5: ±15% is beyond 4.5 sd.
    expect(Math.max(...counts)).toBeLessThan(1150)
    expect(Math.min(...counts)).toBeGreaterThan(850)
  })

  it("rejects a shard count that is not a positive integer", () => {
    expect(() => Ring.shardOf("a", 0)).toThrow(RangeError)
    expect(() => Ring.shardOf("a", 1.5)).toThrow(RangeError)
  })
})

describe("Ring.make", () => {
  it("is deterministic: any order of the same view gives the same owners", () => {
    const nodes = cluster(1, 8).map((n, i) => ({ ...n, weight: 1 + (i % 3) }))
    const ring = Ring.make(nodes, config(256))
    for (const order of [[...nodes].reverse(), [...nodes].sort((a, b) => (a.id > b.id ? -1 : 1)), [nodes[3]!, ...nodes.filter((_, i) => i !== 3)]]) {
      expect(Ring.make(order, config(256)).owners).toEqual(ring.owners)
    }
    expect(Ring.make(nodes, config(256))).toEqual(ring)
  })

  it("is immutable", () => {
    const ring = Ring.make(cluster(2, 4), config(64))
    expect(Object.isFrozen(ring)).toBe(true)
    expect(Object.isFrozen(ring.owners)).toBe(true)
    expect(Object.isFrozen(Ring.shardsOf(ring, ring.members[0]!.id))).toBe(true)
  })

  it("places every shard exactly once, and shardsOf agrees with ownerOf", () => {
    const ring = Ring.make(cluster(3, 5), config(128))
    const seen = ring.members.flatMap((m) => Ring.shardsOf(ring, m.id).map((s) => [s, m.id] as const))
    expect(seen.length).toBe(128)
    for (const [s, id] of seen) expect(Ring.ownerOf(ring, s)).toBe(id)
    expect([...Ring.loads(ring).values()].reduce((a, b) => a + b, 0)).toBe(128)
  })

  it("is the stable matching under capacities (equals the greedy walk over all pairs)", () => {
    const views: ReadonlyArray<readonly [Array<Ring.RingNode>, Ring.RingConfig]> = [
      [cluster(4, 8), config(256)],
      [cluster(5, 3), config(64)],
      [cluster(6, 6).map((n, i) => ({ ...n, weight: [1, 2, 0.5, 1.5, 1, 3][i]! })), config(128)],
      [cluster(7, 5), config(100, { epsilon: 0 })],
      [cluster(8, 20), config(16)]
    ]
    for (const [nodes, cfg] of views) {
      const ring = Ring.make(nodes, cfg)
      expect(ring.owners).toEqual(referenceGreedy(ring))
    }
  })

  it("has no blocking pair: a shard on a lower-scoring node means every better node is full of shards it prefers", () => {
    const ring = Ring.make(cluster(9, 6), config(128))
    const { vnodesPerWeight } = ring.config
    const score = (i: number, s: number) => Ring.score(ring.members[i]!, s, vnodesPerWeight)
    const index = new Map(ring.members.map((m, i) => [m.id, i] as const))
    for (let s = 0; s < 128; s++) {
      const holder = index.get(Ring.ownerOf(ring, s)!)!
      ring.members.forEach((better, i) => {
        if (score(i, s) <= score(holder, s)) return
        const held = Ring.shardsOf(ring, better.id)
        expect(held.length).toBe(better.capacity)
        for (const t of held) expect(score(i, t)).toBeGreaterThan(score(i, s))
      })
    }
  })

  it("without a bound is plain rendezvous hashing: every shard on its best-scoring node", () => {
    const ring = Ring.make(cluster(10, 7), config(256, { epsilon: undefined }))
    for (let s = 0; s < 256; s++) {
      const best = ring.members.reduce((a, b) => (Ring.score(b, s, 4) > Ring.score(a, s, 4) ? b : a))
      expect(Ring.ownerOf(ring, s)).toBe(best.id)
    }
  })

  it("keeps every load within its capacity: ⌊(1+ε)·fair⌋, never below ⌈fair⌉", () => {
    const ring = Ring.make(cluster(11, 3), config(128))
    // fair 42.67: cap max(43, ⌊46.93⌋) = 46
    expect(ring.members.map((m) => m.capacity)).toEqual([46, 46, 46])
    const tight = Ring.make(cluster(11, 16), config(64))
    // fair 4: ⌊4.4⌋ = 4
    expect(tight.members.every((m) => m.capacity === 4 && Ring.shardsOf(tight, m.id).length === 4)).toBe(true)
  })

  it("with ε = 0 caps every node at ⌈fair share⌉", () => {
    const ring = Ring.make(cluster(12, 7), config(100, { epsilon: 0 }))
    // fair 100/7 = 14.3
    expect(Math.max(...Ring.loads(ring).values())).toBe(15)
  })

  it("rejects invalid configuration", () => {
    const nodes = cluster(13, 2)
    expect(() => Ring.make(nodes, config(0))).toThrow(RangeError)
    expect(() => Ring.make(nodes, config(64, { vnodesPerWeight: 0 }))).toThrow(RangeError)
    expect(() => Ring.make(nodes, config(64, { epsilon: -0.1 }))).toThrow(RangeError)
    expect(() => Ring.make(nodes, config(2 ** 21 + 1))).toThrow(RangeError)
  })
})

describe("edge cases", () => {
  it("no nodes: every lookup is undefined", () => {
    const ring = Ring.make([], config(64))
    expect(Ring.ownerOf(ring, 0)).toBeUndefined()
    expect(ring.owners.every((o) => o === undefined)).toBe(true)
    expect(Ring.shardsOf(ring, "anyone")).toEqual([])
    expect(Ring.loads(ring).size).toBe(0)
    expect(Ring.balance(ring)).toBe(0)
  })

  it("one node owns every shard", () => {
    const ring = Ring.make([{ id: "solo" }], config(128))
    expect(Ring.shardsOf(ring, "solo")).toEqual(Array.from({ length: 128 }, (_, s) => s))
    expect(Ring.balance(ring)).toBe(1)
  })

  it("nodes with weight 0 (or not a positive finite number) own nothing", () => {
    const nodes = [{ id: "a" }, { id: "b", weight: 0 }, { id: "c", weight: -1 }, { id: "d", weight: Number.NaN }, { id: "e", weight: Infinity }]
    const ring = Ring.make(nodes, config(64))
    expect(ring.members.map((m) => m.id)).toEqual(["a"])
    expect(Ring.shardsOf(ring, "a").length).toBe(64)
    expect(Ring.shardsOf(ring, "b")).toEqual([])
    expect(Ring.make([{ id: "b", weight: 0 }], config(64)).owners.every((o) => o === undefined)).toBe(true)
  })

  it("a repeated id counts once, with its largest weight, whatever the order", () => {
    const a = Ring.make([{ id: "x", weight: 1 }, { id: "y" }, { id: "x", weight: 2 }], config(64))
    const b = Ring.make([{ id: "x", weight: 2 }, { id: "x", weight: 1 }, { id: "y" }], config(64))
    expect(a.members).toEqual([{ id: "x", weight: 2, capacity: 46 }, { id: "y", weight: 1, capacity: 23 }])
    expect(a.owners).toEqual(b.owners)
  })

  it("more nodes than shards: every shard owned, no node owns two", () => {
    const ring = Ring.make(cluster(14, 40), config(16))
    expect(ring.owners.every((o) => o !== undefined)).toBe(true)
    expect(new Set(ring.owners).size).toBe(16)
    expect(Math.max(...Ring.loads(ring).values())).toBe(1)
  })

  it("a shard out of range has no owner", () => {
    const ring = Ring.make(cluster(15, 3), config(64))
    expect(Ring.ownerOf(ring, 64)).toBeUndefined()
    expect(Ring.ownerOf(ring, -1)).toBeUndefined()
    expect(Ring.ownerOf(ring, 1.5)).toBeUndefined()
  })
})

describe("balance", () => {
  it.each([
    [3, 64],
    [3, 128],
    [4, 256],
    [5, 128],
    [8, 256],
    [16, 1024]
  ])("with the defaults, %i nodes × %i shards: max load ≤ 1.10 × fair share", (nodes, shards) => {
    for (let seed = 0; seed < 10; seed++) {
      expect(Ring.balance(Ring.make(cluster(100 + seed, nodes), config(shards)))).toBeLessThanOrEqual(1.1)
    }
  })

  it("without the bound, 256 shards on 8 nodes are unbalanced (why the bound exists)", () => {
    const balances = Array.from({ length: 20 }, (_, seed) => Ring.balance(Ring.make(cluster(200 + seed, 8), config(256, { epsilon: undefined }))))
    expect(mean(balances)).toBeGreaterThan(1.15)
  })

  it("shares follow weights: a weight-2 node gets about twice a weight-1 node's shards, within the bound", () => {
    const ratios: Array<number> = []
    for (let seed = 0; seed < 20; seed++) {
      const nodes = cluster(300 + seed, 8).map((n, i) => ({ ...n, weight: i === 0 ? 2 : 1 }))
      const ring = Ring.make(nodes, config(256))
      const heavy = Ring.shardsOf(ring, nodes[0]!.id).length
      const light = mean(nodes.slice(1).map((n) => Ring.shardsOf(ring, n.id).length))
      // fair share 256·2/9 = 56.9, capacity ⌊62.6⌋ = 62
      expect(heavy).toBeLessThanOrEqual(62)
      expect(heavy).toBeGreaterThanOrEqual(48)
      expect(Ring.balance(ring)).toBeLessThanOrEqual(1.1)
      ratios.push(heavy / light)
    }
    expect(mean(ratios)).toBeGreaterThan(1.85)
    expect(mean(ratios)).toBeLessThan(2.15)
  })
})

describe("movement", () => {
  const joinAndLeave = (nodes: number, shards: number, trials: number, cfg: Ring.RingConfig = config(shards)) =>
    Array.from({ length: trials }, (_, t) => {
      const ids = cluster(1000 + t, nodes + 1)
      const members = ids.slice(0, nodes)
      const joiner = ids[nodes]!
      const base = Ring.make(members, cfg)
      const joined = Ring.make(ids, cfg)
      const leaver = members[t % nodes]!
      const left = Ring.make(members.filter((m) => m !== leaver), cfg)
      return { base, joined, left, joiner: joiner.id, leaver: leaver.id }
    })

  it("the ideal is the weight share that changes hands", () => {
    const base = Ring.make([{ id: "a" }, { id: "b" }, { id: "c" }], config(64))
    expect(Ring.idealMovedFraction(base, Ring.make([{ id: "a" }, { id: "b" }, { id: "c" }, { id: "d" }], config(64)))).toBeCloseTo(1 / 4)
    expect(Ring.idealMovedFraction(base, Ring.make([{ id: "a" }, { id: "b" }], config(64)))).toBeCloseTo(1 / 3)
    expect(Ring.idealMovedFraction(base, Ring.make([{ id: "a" }, { id: "b" }, { id: "c" }, { id: "d", weight: 3 }], config(64)))).toBeCloseTo(1 / 2)
    expect(Ring.idealMovedFraction(base, Ring.make([], config(64)))).toBe(1)
    expect(() => Ring.movedFraction(base, Ring.make([{ id: "a" }], config(128)))).toThrow(RangeError)
  })

  it("8 nodes × 256 shards: a join or a leave moves ≤ 1.2 × the ideal on average", () => {
    const runs = joinAndLeave(8, 256, 20)
    const join = runs.map((r) => Ring.movedFraction(r.base, r.joined) / Ring.idealMovedFraction(r.base, r.joined))
    const leave = runs.map((r) => Ring.movedFraction(r.base, r.left) / Ring.idealMovedFraction(r.base, r.left))
    expect(mean(join)).toBeLessThanOrEqual(1.2)
    expect(mean(leave)).toBeLessThanOrEqual(1.2)
    // Single trials vary with how many shards the joiner's scores win; bounded all the same.
    expect(Math.max(...join, ...leave)).toBeLessThan(1.5)
  })

  it("a leaver's shards all move; the others' mostly stay (stray moves measured)", () => {
    const runs = joinAndLeave(8, 256, 20)
    for (const r of runs) {
      for (const s of Ring.shardsOf(r.base, r.leaver)) expect(Ring.ownerOf(r.left, s)).not.toBe(r.leaver)
    }
    // Measured ≈ 1.4% of shards (≈ 3.5 of 256) per leave over 100 clusters.
    expect(mean(runs.map((r) => Ring.strayFraction(r.base, r.left)))).toBeLessThan(0.025)
  })

  it("8 nodes × 256 shards: on a join, moves mostly go to the joiner (stray moves measured)", () => {
    const runs = joinAndLeave(8, 256, 20)
    // Measured ≈ 1.6% of shards (≈ 4 of 256) per join over 100 clusters: old nodes shedding down to their
    // new, smaller capacity, mostly to another old node.
    expect(mean(runs.map((r) => Ring.strayFraction(r.base, r.joined)))).toBeLessThan(0.025)
    for (const r of runs) expect(Ring.strayFraction(r.base, r.joined)).toBeLessThan(0.05)
  })

  it.each([
    // Measured over 500 clusters: 128 shards, 1.3 stray shards per join on average, none in 39% of joins,
    // at most 10; 64 shards, 1.5 on average, none in 21%, at most 6.
    [128, 0.02, 0.07, 0.93],
    [64, 0.035, 0.125, 0.85]
  ])("3 → 4 nodes at %i shards: the joiner takes about a quarter, and moves go to it", (shards, meanStray, worstStray, toJoinerShare) => {
    const runs = joinAndLeave(3, shards, 20)
    const capacity = Math.floor((1.1 * shards) / 4)
    for (const r of runs) {
      const taken = Ring.shardsOf(r.joined, r.joiner).length
      // At least what 3 nodes at capacity cannot hold, at most its own capacity.
      expect(taken).toBeGreaterThanOrEqual(shards - 3 * capacity)
      expect(taken).toBeLessThanOrEqual(capacity)
      expect(Ring.strayFraction(r.base, r.joined)).toBeLessThanOrEqual(worstStray)
    }
    const moved = runs.reduce((sum, r) => sum + Ring.movedFraction(r.base, r.joined), 0)
    const toJoiner = runs.reduce((sum, r) => sum + Ring.shardsOf(r.joined, r.joiner).length / shards, 0)
    expect(toJoiner / moved).toBeGreaterThan(toJoinerShare)
    expect(mean(runs.map((r) => Ring.strayFraction(r.base, r.joined)))).toBeLessThanOrEqual(meanStray)
  })

  it("without the bound, a join or a leave never moves a shard between two remaining nodes", () => {
    for (const r of joinAndLeave(5, 256, 10, config(256, { epsilon: undefined }))) {
      expect(Ring.strayFraction(r.base, r.joined)).toBe(0)
      expect(Ring.strayFraction(r.base, r.left)).toBe(0)
    }
  })
})
