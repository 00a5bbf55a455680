/** Shared output of the benchmarks: a plain table, percentiles. */

export const percentile = (values: ReadonlyArray<number>, p: number): number => {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[index]!
}

const cell = (value: unknown): string =>
  typeof value === "number" ? (Number.isInteger(value) ? String(value) : value.toFixed(2)) : String(value)

export const printTable = (title: string, header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<unknown>>): void => {
  const cells = [header.map(cell), ...rows.map((r) => r.map(cell))]
  const widths = header.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? "").length)))
  console.log(`\n${title}\n`)
  cells.forEach((r, n) => {
    console.log(r.map((c, i) => c.padStart(widths[i]!)).join("  "))
    if (n === 0) console.log(widths.map((w) => "-".repeat(w)).join("  "))
  })
  console.log("")
}
