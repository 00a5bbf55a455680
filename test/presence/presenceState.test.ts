// The presence actor's pure core: reports from gateways, TTL expiry, manual and auto
// away, what is published and what is persisted, and read-back after a failover.
import { describe, expect, it } from "vitest"
import type { State } from "../../src/actors/PresenceActor.ts"
import { applyReport, commitSettled, emptyState, expire, restore, setManual, settle, viewOf } from "../../src/actors/PresenceActor.ts"
import { parseChange, presenceChange, shardActorIds, shardOfUser } from "../../src/actors/PresenceProtocol.ts"
import { shardOf } from "../../src/runtime/Ring.ts"

const settings = { ttlMs: 3_000, awayAfterMs: 60_000 }
const at = (user: string, connections = 1, lastActivity = 0) => ({ user, connections, lastActivity })

/** Settles and commits like the actor does; answers the changes. */
const step = (state: State, now: number) => {
  expire(state, now, settings)
  const settled = settle(state, now, settings)
  commitSettled(state, settled)
  return settled
}

describe("presence state", () => {
  it("a user is active while any gateway reports them, and away once every gateway dropped them", () => {
    const s = emptyState()
    applyReport(s, { gateway: "n1", boot: "b1", seq: 1, full: true, users: [at("U1", 1, 1_000)] }, 1_000)
    applyReport(s, { gateway: "n2", boot: "b2", seq: 1, full: true, users: [at("U1", 2, 1_000)] }, 1_000)
    expect(step(s, 1_000).changes).toEqual([{ users: ["U1"], presence: "active" }])
    expect(viewOf("U1", s.users.get("U1"), 1_000, settings)).toMatchObject({ presence: "active", online: true, connection_count: 3 })

    applyReport(s, { gateway: "n1", boot: "b1", seq: 2, full: false, users: [at("U1", 0)] }, 1_500)
    expect(step(s, 1_500).changes).toEqual([])
    applyReport(s, { gateway: "n2", boot: "b2", seq: 2, full: true, users: [] }, 2_000)
    const last = step(s, 2_000)
    expect(last.changes).toEqual([{ users: ["U1"], presence: "away" }])
    expect(last.rows).toEqual([expect.objectContaining({ user: "U1", online: false })])
    expect(s.users.has("U1")).toBe(false) // nothing left to know
  })

  it("a gateway that stops reporting is forgotten after the TTL, with its users", () => {
    const s = emptyState()
    applyReport(s, { gateway: "dead", boot: "b", seq: 1, full: true, users: [at("U1", 1, 0), at("U2", 1, 0)] }, 0)
    applyReport(s, { gateway: "live", boot: "c", seq: 1, full: true, users: [at("U2", 1, 0)] }, 0)
    expect(step(s, 0).changes).toEqual([{ users: ["U1", "U2"], presence: "active" }])
    applyReport(s, { gateway: "live", boot: "c", seq: 2, full: true, users: [at("U2", 1, 0)] }, 2_900)
    expect(step(s, 2_900).changes).toEqual([])
    applyReport(s, { gateway: "live", boot: "c", seq: 3, full: true, users: [at("U2", 1, 0)] }, 3_100)
    expect(step(s, 3_100).changes).toEqual([{ users: ["U1"], presence: "away" }])
    expect(viewOf("U2", s.users.get("U2"), 3_100, settings).online).toBe(true)
  })

  it("stale and restarted gateways: an old seq changes nothing, a new boot voids the old life", () => {
    const s = emptyState()
    applyReport(s, { gateway: "n1", boot: "a", seq: 5, full: true, users: [at("U1")] }, 0)
    applyReport(s, { gateway: "n1", boot: "a", seq: 4, full: true, users: [] }, 10)
    expect(viewOf("U1", s.users.get("U1"), 10, settings).online).toBe(true)
    applyReport(s, { gateway: "n1", boot: "b", seq: 1, full: false, users: [at("U2")] }, 20)
    expect(viewOf("U1", s.users.get("U1"), 20, settings).online).toBe(false)
    expect(viewOf("U2", s.users.get("U2"), 20, settings).online).toBe(true)
  })

  it("manual away holds while connected and across offline; auto away after the idle time", () => {
    const s = emptyState()
    applyReport(s, { gateway: "n1", boot: "a", seq: 1, full: true, users: [at("U1", 1, 0)] }, 0)
    step(s, 0)
    setManual(s, "U1", true)
    const away = step(s, 10)
    expect(away.changes).toEqual([{ users: ["U1"], presence: "away" }])
    expect(away.rows).toEqual([expect.objectContaining({ user: "U1", online: true, manualAway: true })])
    expect(viewOf("U1", s.users.get("U1"), 10, settings)).toMatchObject({ presence: "away", manual_away: true, online: true, auto_away: false })
    setManual(s, "U1", false)
    expect(step(s, 20).changes).toEqual([{ users: ["U1"], presence: "active" }])
    // Idle past awayAfter: auto away, found by the periodic re-evaluation.
    applyReport(s, { gateway: "n1", boot: "a", seq: 2, full: true, users: [at("U1", 1, 0)] }, 60_500)
    expect(step(s, 60_500).changes).toEqual([{ users: ["U1"], presence: "away" }])
    expect(viewOf("U1", s.users.get("U1"), 60_500, settings)).toMatchObject({ auto_away: true, online: true })
    applyReport(s, { gateway: "n1", boot: "a", seq: 3, full: false, users: [at("U1", 1, 61_000)] }, 61_000)
    expect(step(s, 61_000).changes).toEqual([{ users: ["U1"], presence: "active" }])
  })

  it("after a failover, the shard's online users are read back and go offline by TTL unless a live gateway reports them", () => {
    const s = emptyState()
    restore(s, [
      { user_id: "U1", online: true, manual_away: false, connections: 2, last_activity: 0 },
      { user_id: "U2", online: true, manual_away: false, connections: 1, last_activity: 0 },
      { user_id: "U3", online: false, manual_away: true, connections: 0, last_activity: 0 }
    ], 1_000, settings)
    expect(step(s, 1_000).changes).toEqual([])
    applyReport(s, { gateway: "live", boot: "x", seq: 1, full: true, users: [at("U2", 1, 1_000)] }, 1_500)
    expect(step(s, 1_500).changes).toEqual([])
    applyReport(s, { gateway: "live", boot: "x", seq: 2, full: true, users: [at("U2", 1, 1_000), at("U3", 1, 1_000)] }, 4_100)
    const later = step(s, 4_100)
    expect(later.changes).toEqual([{ users: ["U1"], presence: "away" }]) // U3 came online but is manually away
    expect(viewOf("U2", s.users.get("U2"), 4_100, settings)).toMatchObject({ online: true, connection_count: 1 })
    expect(viewOf("U3", s.users.get("U3"), 4_100, settings)).toMatchObject({ online: true, presence: "away", manual_away: true })
  })
})

describe("presence placement and events", () => {
  it("every shard has a presence actor id that hashes to it", () => {
    for (const shards of [1, 8, 128]) {
      const ids = shardActorIds(shards)
      expect(ids).toHaveLength(shards)
      ids.forEach((id, shard) => expect(shardOf(`presence/${id}`, shards)).toBe(shard))
      expect(shardOfUser("U123", shards)).toBe(shardOf("presence/U123", shards))
    }
  })

  it("presence_change in Slack's single and batched forms, both readable", () => {
    expect(presenceChange(["U1"], "away")).toEqual({ type: "presence_change", user: "U1", presence: "away" })
    expect(presenceChange(["U1", "U2"], "active")).toEqual({ type: "presence_change", users: ["U1", "U2"], presence: "active" })
    expect(parseChange(presenceChange(["U1"], "away"))).toEqual({ users: ["U1"], presence: "away" })
    expect(parseChange({ type: "presence_change", users: ["U1", 3], presence: "away" })).toBeUndefined()
  })
})
