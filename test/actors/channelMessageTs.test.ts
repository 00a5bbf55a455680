// MessageTs: Slack's "<10-digit seconds>.<6 digits>" timestamps, and the per-channel
// clock next(last, now) = max(now, last + 1 µs).

import { describe, expect, it } from "vitest"
import * as MessageTs from "../../src/actors/MessageTs.ts"

describe("MessageTs.format / toMicros", () => {
  it("formats microseconds as Slack's fixed-width ts", () => {
    expect(MessageTs.format(1_700_000_000_123_456)).toBe("1700000000.123456")
    expect(MessageTs.format(0)).toBe("0000000000.000000")
    expect(MessageTs.format(5)).toBe("0000000000.000005")
    expect(MessageTs.format(MessageTs.maxMicros)).toBe("9007199254.740991")
  })

  it("refuses what is not a representable instant", () => {
    expect(() => MessageTs.format(-1)).toThrow(RangeError)
    expect(() => MessageTs.format(1.5)).toThrow(RangeError)
    expect(() => MessageTs.format(MessageTs.maxMicros + 1)).toThrow(RangeError)
  })

  it("round-trips, and reads the shorter forms clients send", () => {
    for (const micros of [0, 1, 999_999, 1_000_000, 1_700_000_000_000_001, MessageTs.maxMicros]) {
      expect(MessageTs.toMicros(MessageTs.format(micros))).toBe(micros)
    }
    expect(MessageTs.toMicros("1700000000")).toBe(1_700_000_000_000_000)
    expect(MessageTs.toMicros("1700000000.5")).toBe(1_700_000_000_500_000)
    expect(MessageTs.normalise(" 1700000000.000120 ")).toBe("1700000000.000120")
    expect(MessageTs.normalise("12.5")).toBe("0000000012.500000")
  })

  it("rejects malformed timestamps", () => {
    for (const bad of ["", "abc", "1.2.3", "-1.000000", "1700000000.1234567", "17000000000.000000", "9999999999.999999", "1e9", "0x10", ".5"]) {
      expect(MessageTs.toMicros(bad), bad).toBeUndefined()
      expect(MessageTs.normalise(bad), bad).toBeUndefined()
    }
  })

  it("isTs accepts the canonical form only", () => {
    expect(MessageTs.isTs("1700000000.000001")).toBe(true)
    expect(MessageTs.isTs("1700000000.1")).toBe(false)
    expect(MessageTs.isTs(1700000000)).toBe(false)
  })

  it("orders as strings exactly as it orders as instants", () => {
    const values = [0, 1, 999_999, 1_000_000, 1_699_999_999_999_999, 1_700_000_000_000_000, 9_000_000_000_000_000]
    const sorted = values.map(MessageTs.format).slice().sort()
    expect(sorted).toEqual(values.map(MessageTs.format))
  })
})

describe("MessageTs.next: the channel clock", () => {
  it("follows the wall clock when it moves forward", () => {
    expect(MessageTs.nextMicros(undefined, 1_700_000_000_000_000)).toBe(1_700_000_000_000_000)
    expect(MessageTs.nextMicros(1_700_000_000_000_000, 1_700_000_000_500_000)).toBe(1_700_000_000_500_000)
  })

  it("steps one microsecond past the last ts when the clock stalls or goes back", () => {
    expect(MessageTs.nextMicros(1_700_000_000_000_000, 1_700_000_000_000_000)).toBe(1_700_000_000_000_001)
    expect(MessageTs.nextMicros(1_700_000_000_000_000, 1_600_000_000_000_000)).toBe(1_700_000_000_000_001)
    expect(MessageTs.next("1700000000.999999", 1_600_000_000_000_000)).toBe("1700000001.000000")
  })

  it("is strictly increasing for any sequence of wall-clock readings", () => {
    // A deterministic pseudo-random walk of the wall clock: forward, stalls, steps back.
    let seed = 42
    const random = () => ((seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31)
    let now = 1_700_000_000_000_000
    let last: number | undefined
    let lastTs = ""
    for (let i = 0; i < 10_000; i++) {
      const r = random()
      now += r < 0.3 ? 0 : r < 0.4 ? -Math.floor(random() * 2_000_000) : Math.floor(random() * 1000)
      const next = MessageTs.nextMicros(last, now)
      if (last !== undefined) expect(next).toBeGreaterThan(last)
      expect(next).toBeGreaterThanOrEqual(now)
      const ts = MessageTs.format(next)
      expect(ts > lastTs).toBe(true)
      last = next
      lastTs = ts
    }
  })
})
