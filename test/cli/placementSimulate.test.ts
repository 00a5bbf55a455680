import { Command } from "@effect/cli"
import { NodeContext } from "@effect/platform-node"
import { Effect, Option } from "effect"
import { afterEach, describe, expect, it, vi } from "vitest"
import {
  formatReport,
  formatSweep,
  parseEpsilon,
  parseWeights,
  placementCommand,
  PlacementTargets,
  seededNodeIds,
  simulate,
  sweep
} from "../../src/cli/placementSimulate.ts"
import { RingDefaults } from "../../src/runtime/Ring.ts"

const defaults = { ...RingDefaults, trials: 20, seed: 1 }

describe("simulate", () => {
  it("8 nodes × 256 shards with the defaults meets the targets", () => {
    const report = simulate({ ...defaults, nodes: 8, shards: 256 })
    expect(report.meetsTargets).toEqual({ balance: true, join: true, leave: true, all: true })
    expect(report.balance.worst).toBeLessThanOrEqual(PlacementTargets.balance)
    expect(report.join.ideal.mean).toBeCloseTo(1 / 9)
    expect(report.leave.ideal.mean).toBeCloseTo(1 / 8)
    expect(report.join.movedOverIdeal.mean).toBeLessThanOrEqual(PlacementTargets.movementOverIdeal)
    expect(report.leave.movedOverIdeal.mean).toBeLessThanOrEqual(PlacementTargets.movementOverIdeal)
    // The bound costs a few moves between old nodes; measured ≈ 1.5%.
    expect(report.join.stray.mean).toBeGreaterThan(0)
    expect(report.join.stray.mean).toBeLessThan(0.025)
  })

  it("is reproducible from its seed, and different seeds try different clusters", () => {
    const input = { ...defaults, nodes: 5, shards: 128, trials: 5 }
    expect(simulate(input)).toEqual(simulate(input))
    expect(simulate({ ...input, seed: 2 })).not.toEqual(simulate(input))
    expect(seededNodeIds(7, 10)).toEqual(seededNodeIds(7, 10))
    expect(new Set(seededNodeIds(7, 10)).size).toBe(10)
  })

  it("without the bound, balance misses the target and no shard strays", () => {
    const report = simulate({ ...defaults, nodes: 8, shards: 256, epsilon: undefined })
    expect(report.epsilon).toBeNull()
    expect(report.meetsTargets.balance).toBe(false)
    expect(report.join.stray.worst).toBe(0)
    expect(report.leave.stray.worst).toBe(0)
  })

  it("honours weights: the ideal of a leave is the leaver's weight share", () => {
    const report = simulate({ ...defaults, nodes: 3, shards: 128, weights: [1, 1, 2], trials: 3 })
    expect(report.weights).toEqual([1, 1, 2])
    // Trials remove members 0, 1, 2 in turn: shares 1/4, 1/4, 1/2.
    expect(report.leave.ideal.mean).toBeCloseTo((0.25 + 0.25 + 0.5) / 3)
    expect(report.leave.ideal.worst).toBeCloseTo(0.5)
    expect(report.balance.worst).toBeLessThanOrEqual(1.1)
    expect(() => simulate({ ...defaults, nodes: 3, shards: 128, weights: [1, 2] })).toThrow(RangeError)
  })

  it("survives one node (a leave empties the ring) and more nodes than shards", () => {
    const one = simulate({ ...defaults, nodes: 1, shards: 64, trials: 2 })
    expect(one.balance.worst).toBe(1)
    expect(one.leave.moved.mean).toBe(1)
    const crowded = simulate({ ...defaults, nodes: 40, shards: 16, trials: 2 })
    expect(crowded.balance.worst).toBeCloseTo(40 / 16)
  })
})

describe("sweep", () => {
  it("tries every size and reports which meet the targets", () => {
    const reports = sweep({ ...defaults, trials: 5 }, { nodes: [3, 8], shards: [128, 256] })
    expect(reports.map((r) => [r.nodes, r.shards])).toEqual([[3, 128], [3, 256], [8, 128], [8, 256]])
    const bySize = new Map(reports.map((r) => [`${r.nodes}×${r.shards}`, r.meetsTargets.all] as const))
    expect(bySize.get("3×128")).toBe(true)
    expect(bySize.get("8×256")).toBe(true)
    // 128 shards on 8 nodes (16 each) is too coarse: the cap forces extra moves.
    expect(bySize.get("8×128")).toBe(false)
    expect(formatSweep(reports)).toContain("no (join, leave)")
  })
})

describe("option parsing", () => {
  it("reads ε as a number ≥ 0 or off", () => {
    expect(parseEpsilon("0.1")).toEqual(Option.some(0.1))
    expect(parseEpsilon("0")).toEqual(Option.some(0))
    expect(parseEpsilon("off")).toEqual(Option.some(undefined))
    expect(parseEpsilon("-1")).toEqual(Option.none())
    expect(parseEpsilon("")).toEqual(Option.none())
    expect(parseEpsilon("abc")).toEqual(Option.none())
  })

  it("reads weights as positive numbers", () => {
    expect(parseWeights("1,1,2")).toEqual(Option.some([1, 1, 2]))
    expect(parseWeights("0.5, 1.5")).toEqual(Option.some([0.5, 1.5]))
    expect(parseWeights("1,,2")).toEqual(Option.none())
    expect(parseWeights("1,0")).toEqual(Option.none())
    expect(parseWeights("x")).toEqual(Option.none())
  })
})

describe("chorus placement simulate", () => {
  const cli = Command.run(Command.make("chorus").pipe(Command.withSubcommands([placementCommand])), {
    name: "chorus",
    version: "test"
  })
  const run = (...args: ReadonlyArray<string>) =>
    Effect.runPromise(cli(["node", "chorus", "placement", "simulate", ...args]).pipe(Effect.provide(NodeContext.layer)))

  const printed = () => {
    const log = vi.spyOn(console, "log").mockImplementation(() => {})
    return () => log.mock.calls.map((call) => call.map(String).join(" ")).join("\n")
  }

  afterEach(() => {
    vi.restoreAllMocks()
  })

  it("--json prints one JSON line: the report of the given size with the defaults", async () => {
    const output = printed()
    await run("--nodes", "8", "--shards", "256", "--json")
    const lines = output().trim().split("\n")
    expect(lines.length).toBe(1)
    const report: unknown = JSON.parse(lines[0]!)
    expect(report).toEqual(JSON.parse(JSON.stringify(simulate({ ...defaults, nodes: 8, shards: 256 }))))
    expect(report).toMatchObject({ vnodesPerWeight: RingDefaults.vnodesPerWeight, epsilon: RingDefaults.epsilon, meetsTargets: { all: true } })
  })

  it("prints a table by default, with --weights setting the member count", async () => {
    const output = printed()
    await run("--weights", "1,1,2", "--shards", "128", "--trials", "3", "--epsilon", "off")
    const text = output()
    expect(text).toBe(formatReport(simulate({ ...defaults, nodes: 3, shards: 128, trials: 3, epsilon: undefined, weights: [1, 1, 2] })))
    expect(text).toContain("ε off")
    expect(text).toContain("weights 1,1,2")
  })

  it("rejects --weights that disagree with --nodes", async () => {
    vi.spyOn(console, "error").mockImplementation(() => {})
    printed()
    await expect(run("--nodes", "3", "--weights", "1,2")).rejects.toThrow()
  })
})
