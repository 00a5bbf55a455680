/**
 * `chorus placement simulate`: measures the placement ring (src/runtime/Ring.ts) on
 * random clusters — balance, and how many shards move when a node joins or leaves —
 * so that its defaults are chosen by measurement (docs/decisions/0002).
 *
 * `simulate` and `sweep` are pure and seeded: the same input prints the same figures
 * on every machine. The `placementCommand` below only parses options and prints.
 */
import { Command, HelpDoc, Options, ValidationError } from "@effect/cli"
import { Console, Effect, Option } from "effect"
import * as Ring from "../runtime/Ring.ts"

/** What the ring must achieve with its defaults. */
export const PlacementTargets = {
  /** Largest member load over its fair share. */
  balance: 1.1,
  /** Shards moved on a join or a leave, as a multiple of the ideal, on average over trials. */
  movementOverIdeal: 1.2
} as const

export interface SimulationInput {
  /** Members before a join or a leave. */
  readonly nodes: number
  readonly shards: number
  readonly vnodesPerWeight: number
  readonly epsilon: number | undefined
  /** Weights of the `nodes` members (default all 1). A joiner weighs 1. */
  readonly weights?: ReadonlyArray<number> | undefined
  /** Independent clusters to try, each with fresh node names. */
  readonly trials: number
  /** Seed of the node names. */
  readonly seed: number
}

export interface Spread {
  readonly mean: number
  readonly worst: number
}

export interface ChangeFigures {
  /** Fraction of shards any fair placement must move (1/(n+1) for a join of equal weights, 1/n for a leave). */
  readonly ideal: Spread
  /** Fraction of shards whose owner changed. */
  readonly moved: Spread
  /** `moved / ideal` per trial. */
  readonly movedOverIdeal: Spread
  /** Fraction of shards that moved between two nodes present before and after. */
  readonly stray: Spread
}

export interface SimulationReport {
  readonly nodes: number
  readonly shards: number
  readonly vnodesPerWeight: number
  /** `null` when bounded loads are off. */
  readonly epsilon: number | null
  readonly weights: ReadonlyArray<number>
  readonly trials: number
  readonly seed: number
  /** Member load over fair share, of the `nodes`-member ring. */
  readonly balance: Spread
  /** One node (weight 1) joins. */
  readonly join: ChangeFigures
  /** One member leaves (trial t removes member t mod nodes, so every weight gets its turn). */
  readonly leave: ChangeFigures
  readonly meetsTargets: {
    readonly balance: boolean
    readonly join: boolean
    readonly leave: boolean
    readonly all: boolean
  }
}

/** Node and shard counts that `sweep` tries by default. */
export const SweepSizes = {
  nodes: [3, 4, 5, 8, 16],
  shards: [64, 128, 256, 1024]
} as const

/** Seeded 32-bit generator (mulberry32): enough for reproducible node names. */
const generator = (seed: number) => {
  let state = seed >>> 0
  return (): number => {
    state = (state + 0x6d2b79f5) | 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return (t ^ (t >>> 14)) >>> 0
  }
}

/** `count` distinct node ids like `node-3fa2c91b`, the same for the same seed. */
export const seededNodeIds = (seed: number, count: number): ReadonlyArray<string> => {
  const next = generator(seed)
  const ids = new Set<string>()
  while (ids.size < count) ids.add(`node-${next().toString(16).padStart(8, "0")}`)
  return [...ids]
}

interface Accumulator {
  sum: number
  worst: number
  count: number
}

const accumulator = (): Accumulator => ({ sum: 0, worst: 0, count: 0 })

const add = (acc: Accumulator, value: number): void => {
  acc.sum += value
  acc.worst = Math.max(acc.worst, value)
  acc.count++
}

// Six decimals: the figures are fractions of a few hundred shards; more digits are float noise.
const round = (value: number): number => Math.round(value * 1e6) / 1e6

const spread = (acc: Accumulator): Spread => ({ mean: round(acc.count === 0 ? 0 : acc.sum / acc.count), worst: round(acc.worst) })

const changeAccumulators = () => ({ ideal: accumulator(), moved: accumulator(), movedOverIdeal: accumulator(), stray: accumulator() })

const recordChange = (accs: ReturnType<typeof changeAccumulators>, from: Ring.Ring, to: Ring.Ring): void => {
  const ideal = Ring.idealMovedFraction(from, to)
  const moved = Ring.movedFraction(from, to)
  add(accs.ideal, ideal)
  add(accs.moved, moved)
  add(accs.movedOverIdeal, ideal === 0 ? 0 : moved / ideal)
  add(accs.stray, Ring.strayFraction(from, to))
}

const changeFigures = (accs: ReturnType<typeof changeAccumulators>): ChangeFigures => ({
  ideal: spread(accs.ideal),
  moved: spread(accs.moved),
  movedOverIdeal: spread(accs.movedOverIdeal),
  stray: spread(accs.stray)
})

// Float slack: a load of exactly 1.1 × fair share, computed in floating point, is not a miss.
const within = (value: number, bound: number): boolean => value <= bound + 1e-9

/** Balance and join/leave movement of the ring on `trials` random clusters. */
export const simulate = (input: SimulationInput): SimulationReport => {
  const { epsilon, nodes, seed, shards, trials, vnodesPerWeight } = input
  if (!Number.isSafeInteger(nodes) || nodes < 1) throw new RangeError(`nodes must be a positive integer, got ${nodes}`)
  if (!Number.isSafeInteger(trials) || trials < 1) throw new RangeError(`trials must be a positive integer, got ${trials}`)
  const weights = input.weights ?? Array.from({ length: nodes }, () => 1)
  if (weights.length !== nodes) throw new RangeError(`expected ${nodes} weights, got ${weights.length}`)
  const config: Ring.RingConfig = { shards, vnodesPerWeight, epsilon }

  const balance = accumulator()
  const join = changeAccumulators()
  const leave = changeAccumulators()
  for (let trial = 0; trial < trials; trial++) {
    // One name stream per trial, so a trial's cluster does not depend on the others.
    const ids = seededNodeIds((Math.imul(seed, 0x9e3779b1) + trial) >>> 0, nodes + 1)
    const members = weights.map((weight, i) => ({ id: ids[i]!, weight }))
    const base = Ring.make(members, config)
    add(balance, Ring.balance(base))
    recordChange(join, base, Ring.make([...members, { id: ids[nodes]!, weight: 1 }], config))
    const leaver = trial % nodes
    recordChange(leave, base, Ring.make(members.filter((_, i) => i !== leaver), config))
  }

  const report = {
    balance: spread(balance),
    join: changeFigures(join),
    leave: changeFigures(leave)
  }
  const meets = {
    balance: within(report.balance.worst, PlacementTargets.balance),
    join: within(report.join.movedOverIdeal.mean, PlacementTargets.movementOverIdeal),
    leave: within(report.leave.movedOverIdeal.mean, PlacementTargets.movementOverIdeal)
  }
  return {
    nodes,
    shards,
    vnodesPerWeight,
    epsilon: epsilon ?? null,
    weights,
    trials,
    seed,
    ...report,
    meetsTargets: { ...meets, all: meets.balance && meets.join && meets.leave }
  }
}

/** `simulate` for every combination of node and shard counts (equal weights). */
export const sweep = (
  input: Omit<SimulationInput, "nodes" | "shards" | "weights">,
  sizes: { readonly nodes: ReadonlyArray<number>; readonly shards: ReadonlyArray<number> } = SweepSizes
): ReadonlyArray<SimulationReport> =>
  sizes.nodes.flatMap((nodes) => sizes.shards.map((shards) => simulate({ ...input, nodes, shards })))

// ---------------------------------------------------------------------------------
// Printing
// ---------------------------------------------------------------------------------

const fixed = (value: number, digits: number): string => value.toFixed(digits)
const pct = (value: number): string => `${(value * 100).toFixed(2)}%`
const verdict = (ok: boolean): string => (ok ? "ok" : "MISSED")

const describeInput = (r: SimulationReport): string =>
  `${r.nodes} nodes, ${r.shards} shards, ${r.vnodesPerWeight} vnodes per weight, ε ${r.epsilon ?? "off"}, ` +
  `${r.trials} trials (seed ${r.seed})` + (r.weights.every((w) => w === 1) ? "" : `, weights ${r.weights.join(",")}`)

/** A human-readable table of one report. */
export const formatReport = (r: SimulationReport): string => {
  const rows: Array<ReadonlyArray<string>> = [
    ["", "mean", "worst", "target"],
    ["balance (load / fair share)", fixed(r.balance.mean, 3), fixed(r.balance.worst, 3), `≤ ${PlacementTargets.balance} worst: ${verdict(r.meetsTargets.balance)}`]
  ]
  for (const [name, figures, ok] of [["join", r.join, r.meetsTargets.join], ["leave", r.leave, r.meetsTargets.leave]] as const) {
    rows.push(
      [`${name}: ideal moved`, pct(figures.ideal.mean), pct(figures.ideal.worst), ""],
      [`${name}: moved`, pct(figures.moved.mean), pct(figures.moved.worst), ""],
      [`${name}: moved / ideal`, fixed(figures.movedOverIdeal.mean, 3), fixed(figures.movedOverIdeal.worst, 3), `≤ ${PlacementTargets.movementOverIdeal} mean: ${verdict(ok)}`],
      [`${name}: stray (old → old)`, pct(figures.stray.mean), pct(figures.stray.worst), ""]
    )
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)))
  const lines = rows.map((row) => row.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join("  ").trimEnd())
  return [`placement: ${describeInput(r)}`, ...lines].join("\n")
}

/** A table of a sweep: one line per size. */
export const formatSweep = (reports: ReadonlyArray<SimulationReport>): string => {
  const header = ["nodes", "shards", "balance", "join ×ideal", "(worst)", "join stray", "leave ×ideal", "(worst)", "leave stray", "meets"]
  const rows = reports.map((r) => [
    String(r.nodes),
    String(r.shards),
    fixed(r.balance.worst, 3),
    fixed(r.join.movedOverIdeal.mean, 3),
    fixed(r.join.movedOverIdeal.worst, 3),
    pct(r.join.stray.mean),
    fixed(r.leave.movedOverIdeal.mean, 3),
    fixed(r.leave.movedOverIdeal.worst, 3),
    pct(r.leave.stray.mean),
    r.meetsTargets.all
      ? "yes"
      : `no (${[!r.meetsTargets.balance && "balance", !r.meetsTargets.join && "join", !r.meetsTargets.leave && "leave"].filter(Boolean).join(", ")})`
  ])
  const all = [header, ...rows]
  const widths = header.map((_, c) => Math.max(...all.map((row) => row[c]!.length)))
  const first = reports[0]
  const title = first === undefined
    ? "placement sweep"
    : `placement sweep: ${first.vnodesPerWeight} vnodes per weight, ε ${first.epsilon ?? "off"}, ${first.trials} trials (seed ${first.seed})`
  return [title, ...all.map((row) => row.map((cell, c) => (c === row.length - 1 ? cell : cell.padStart(widths[c]!))).join("  "))].join("\n")
}

// ---------------------------------------------------------------------------------
// Command
// ---------------------------------------------------------------------------------

const positiveInteger = (name: string, fallback: number, description: string) =>
  Options.integer(name).pipe(
    Options.withDefault(fallback),
    Options.filterMap((n) => (n >= 1 ? Option.some(n) : Option.none()), `--${name} must be a positive integer`),
    Options.withDescription(description)
  )

/** `off` (or `none`) turns bounded loads off; otherwise a number ≥ 0. */
export const parseEpsilon = (text: string): Option.Option<number | undefined> => {
  const trimmed = text.trim().toLowerCase()
  if (trimmed === "off" || trimmed === "none") return Option.some(undefined)
  const value = Number(trimmed)
  return trimmed !== "" && Number.isFinite(value) && value >= 0 ? Option.some(value) : Option.none()
}

/** `1,1,2` → [1, 1, 2]; every weight a finite number > 0. */
export const parseWeights = (text: string): Option.Option<ReadonlyArray<number>> => {
  const weights = text.split(",").map((part) => (part.trim() === "" ? Number.NaN : Number(part)))
  return weights.every((w) => Number.isFinite(w) && w > 0) ? Option.some(weights) : Option.none()
}

const simulateOptions = {
  // --nodes and --weights together: the members' weights (the count alone means all 1).
  members: Options.all({
    nodes: Options.integer("nodes").pipe(
      Options.filterMap((n) => (n >= 1 ? Option.some(n) : Option.none()), "--nodes must be a positive integer"),
      Options.optional,
      Options.withDescription("Members before the join / leave; default 8, or the number of --weights.")
    ),
    weights: Options.text("weights").pipe(
      Options.filterMap(parseWeights, "--weights must be comma-separated numbers > 0, e.g. 1,1,2"),
      Options.optional,
      Options.withDescription("Weights of the members, comma-separated; their count must equal --nodes.")
    )
  }).pipe(
    Options.mapEffect(({ nodes, weights }) => {
      const count = Option.getOrElse(nodes, () => Option.match(weights, { onNone: () => 8, onSome: (w) => w.length }))
      const resolved = Option.getOrElse(weights, () => Array.from({ length: count }, () => 1))
      return resolved.length === count
        ? Effect.succeed(resolved)
        : Effect.fail(ValidationError.invalidValue(HelpDoc.p(`--weights lists ${resolved.length} weights but --nodes is ${count}`)))
    })
  ),
  shards: positiveInteger("shards", 128, "Number of shards."),
  vnodes: positiveInteger("vnodes", Ring.RingDefaults.vnodesPerWeight, "Virtual nodes per unit of weight."),
  epsilon: Options.text("epsilon").pipe(
    Options.withDefault(String(Ring.RingDefaults.epsilon)),
    Options.filterMap(parseEpsilon, "--epsilon must be a number ≥ 0, or off"),
    Options.withDescription("Bounded-load factor ε (cap = (1+ε)·fair share), or off.")
  ),
  trials: positiveInteger("trials", 20, "Random clusters to try, each with fresh node names."),
  seed: Options.integer("seed").pipe(Options.withDefault(1), Options.withDescription("Seed of the node names.")),
  json: Options.boolean("json").pipe(Options.withDescription("Print one JSON line instead of a table.")),
  sweep: Options.boolean("sweep").pipe(
    Options.withDescription(`Also try ${SweepSizes.nodes.join("/")} nodes × ${SweepSizes.shards.join("/")} shards and report which meet the targets.`)
  )
} as const

const simulateCommand = Command.make("simulate", simulateOptions, (options) =>
  Effect.gen(function*() {
    const common = {
      vnodesPerWeight: options.vnodes,
      epsilon: options.epsilon,
      trials: options.trials,
      seed: options.seed
    }
    const report = simulate({ ...common, nodes: options.members.length, shards: options.shards, weights: options.members })
    const sizes = options.sweep ? sweep(common) : undefined
    if (options.json) {
      yield* Console.log(JSON.stringify(sizes === undefined ? report : { ...report, sweep: sizes }))
    } else {
      yield* Console.log(formatReport(report))
      if (sizes !== undefined) yield* Console.log(`\n${formatSweep(sizes)}`)
    }
  })).pipe(Command.withDescription("Measure shard balance and movement on join / leave for random clusters."))

/** `chorus placement …`; mount with `Command.withSubcommands([placementCommand])`. */
export const placementCommand = Command.make("placement").pipe(
  Command.withDescription("Shard placement tools."),
  Command.withSubcommands([simulateCommand])
)
