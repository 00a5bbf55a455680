/**
 * Slack's time windows over a timeline (`latest`, `oldest`, `inclusive` of
 * `conversations.history` and `.replies`) as bounds on the `ts` column.
 *
 * A message ts is the fixed-width string `##########.######`, so comparing ts strings
 * compares times, and a window is two string bounds that a B-tree on `(channel_id, ts)`
 * answers directly. Clients send looser forms (`"0"`, `"1700000000"`, a float with
 * fewer or more decimals); `parse` brings them to the canonical width, and the bounds
 * stay exact even when the client's value falls between two microseconds.
 *
 * Which end a page starts from follows Slack: from `latest` backwards (the newest
 * messages of the window first), except when only `oldest` is given, where the messages
 * closest to `oldest` come first and the pages run forward in time. Either way a page of
 * `conversations.history` lists its messages newest first.
 */

/** The canonical form of a ts; `exact` is false when precision below a microsecond was dropped. */
export interface ParsedTs {
  readonly ts: string
  readonly exact: boolean
}

/** The largest ts; also what a value too large for ten integer digits stands for. */
export const maxTs = "9999999999.999999"
export const minTs = "0000000000.000000"

const decimal = /^(\d+)(?:\.(\d*))?$/

/** `"1700000000.5"` → `1700000000.500000`; undefined unless a non-negative decimal number. */
export const parse = (raw: string): ParsedTs | undefined => {
  const m = decimal.exec(raw.trim())
  if (m === null) return undefined
  const integer = (m[1] ?? "").replace(/^0+(?=\d)/, "")
  const fraction = m[2] ?? ""
  if (integer.length > 10) return { ts: maxTs, exact: false }
  return {
    ts: `${integer.padStart(10, "0")}.${fraction.slice(0, 6).padEnd(6, "0")}`,
    exact: /^0*$/.test(fraction.slice(6))
  }
}

/** The canonical ts when `raw` names exactly one (message lookups); else undefined. */
export const exactTs = (raw: string): string | undefined => {
  const parsed = parse(raw)
  return parsed !== undefined && parsed.exact ? parsed.ts : undefined
}

/** One side of a window: `ts > bound` (or `>=` when inclusive) for a lower bound, `<`/`<=` for an upper. */
export interface Bound {
  readonly ts: string
  readonly inclusive: boolean
}

/**
 * `ts` at or after (inclusive) / after `raw`. A value between two microseconds, `t`
 * plus a fraction, bounds as "after `t`" whatever `inclusive` says.
 */
export const lowerBound = (parsed: ParsedTs, inclusive: boolean): Bound =>
  parsed.exact ? { ts: parsed.ts, inclusive } : { ts: parsed.ts, inclusive: false }

/** `ts` at or before / before `raw`; between two microseconds it is "at or before `t`". */
export const upperBound = (parsed: ParsedTs, inclusive: boolean): Bound =>
  parsed.exact ? { ts: parsed.ts, inclusive } : { ts: parsed.ts, inclusive: true }

export type Direction = "older" | "newer"

export interface Window {
  readonly lower: Bound | undefined
  readonly upper: Bound | undefined
  /** `older`: pages start at the newest message of the window and run back; `newer`: the reverse. */
  readonly direction: Direction
}

export type WindowError = "invalid_ts_latest" | "invalid_ts_oldest"

export interface WindowArgs {
  readonly latest: string | undefined
  readonly oldest: string | undefined
  readonly inclusive: boolean
}

/**
 * The window of `latest`/`oldest`/`inclusive`. An absent `latest` is "now", which for a
 * reader means "everything committed so far": no upper bound, so a message whose ts is
 * a little ahead of this node's clock (another node's clock, or the channel actor
 * keeping ts strictly increasing under a burst) is not hidden. An absent `oldest` is 0.
 */
export const window = (args: WindowArgs, defaultDirection: Direction): Window | WindowError => {
  const latest = args.latest === undefined ? undefined : parse(args.latest)
  if (args.latest !== undefined && latest === undefined) return "invalid_ts_latest"
  const oldest = args.oldest === undefined ? undefined : parse(args.oldest)
  if (args.oldest !== undefined && oldest === undefined) return "invalid_ts_oldest"
  return {
    lower: oldest === undefined ? undefined : lowerBound(oldest, args.inclusive),
    upper: latest === undefined ? undefined : upperBound(latest, args.inclusive),
    direction: oldest !== undefined && latest === undefined ? "newer" : defaultDirection
  }
}

/** The stricter of two lower bounds. */
export const maxLower = (a: Bound | undefined, b: Bound): Bound =>
  a === undefined || b.ts > a.ts || (b.ts === a.ts && !b.inclusive) ? b : a

/** The stricter of two upper bounds. */
export const minUpper = (a: Bound | undefined, b: Bound): Bound =>
  a === undefined || b.ts < a.ts || (b.ts === a.ts && !b.inclusive) ? b : a

/**
 * The rest of `w` after a page whose last message (in page order) was `ts`: pages
 * running back continue strictly before it, pages running forward strictly after it.
 */
export const after = (w: Window, direction: Direction, ts: string): Window =>
  direction === "older"
    ? { ...w, direction, upper: minUpper(w.upper, { ts, inclusive: false }) }
    : { ...w, direction, lower: maxLower(w.lower, { ts, inclusive: false }) }

/** Whether `ts` lies in `w` (the pure statement of what the store's query selects). */
export const contains = (w: Window, ts: string): boolean =>
  (w.lower === undefined || ts > w.lower.ts || (w.lower.inclusive && ts === w.lower.ts)) &&
  (w.upper === undefined || ts < w.upper.ts || (w.upper.inclusive && ts === w.upper.ts))
