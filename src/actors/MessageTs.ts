/**
 * Slack message timestamps: `"<10-digit seconds>.<6 digits>"`, a message's id within
 * its channel. The channel actor draws every event's `ts` from one per-channel clock,
 * `next(last, now) = max(now, last + 1 µs)`, so timestamps are unique and strictly
 * increasing per channel even when the wall clock stalls or steps back (after a
 * failover to a node whose clock is behind, the channel keeps counting from its last
 * `ts` until real time catches up).
 *
 * Internally a `ts` is a whole number of microseconds since the epoch: about 1.8e15
 * today, below 2^53 until the year 2255, so a JavaScript number holds it exactly.
 */

/** Largest instant held exactly: 9007199254.740991 (2^53 - 1 µs, the year 2255). */
export const maxMicros = Number.MAX_SAFE_INTEGER

const strict = /^(\d{10})\.(\d{6})$/
const loose = /^(\d{1,10})(?:\.(\d{1,6}))?$/

/** `micros` as a Slack ts. */
export const format = (micros: number): string => {
  if (!Number.isSafeInteger(micros) || micros < 0 || micros > maxMicros) throw new RangeError(`not a ts instant: ${micros}`)
  const seconds = Math.floor(micros / 1_000_000)
  const fraction = micros - seconds * 1_000_000
  return `${String(seconds).padStart(10, "0")}.${String(fraction).padStart(6, "0")}`
}

/** Whether `value` is a ts exactly as Chorus writes them. */
export const isTs = (value: unknown): value is string => typeof value === "string" && strict.test(value)

/**
 * A ts in microseconds, from Slack's canonical form or a shorter one that clients send
 * (`"1700000000"`, `"1700000000.5"`: missing digits are zeros); undefined otherwise.
 */
export const toMicros = (ts: string): number | undefined => {
  const m = loose.exec(ts.trim())
  if (m === null) return undefined
  const seconds = Number(m[1])
  const fraction = Number((m[2] ?? "").padEnd(6, "0"))
  const micros = seconds * 1_000_000 + fraction
  return micros <= maxMicros ? micros : undefined
}

/** The canonical form of a ts a client sent, so that it matches stored ones; undefined when malformed. */
export const normalise = (ts: string): string | undefined => {
  const micros = toMicros(ts)
  return micros === undefined ? undefined : format(micros)
}

/** The next instant of a channel's clock: strictly after `last`, and not before `now`. */
export const nextMicros = (last: number | undefined, now: number): number =>
  Math.max(Math.floor(now), last === undefined ? 0 : last + 1)

/** The next ts after `last` (a ts string or undefined for a fresh channel) at wall-clock `nowMicros`. */
export const next = (last: string | undefined, nowMicros: number): string =>
  format(nextMicros(last === undefined ? undefined : toMicros(last), nowMicros))

/** Slack's `ts` → whole seconds (as used in `created`, `last_set`). */
export const seconds = (micros: number): number => Math.floor(micros / 1_000_000)
