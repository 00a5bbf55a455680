// What channel events do to the index (pure): posts, replies, edits, deletions, the
// events and subtypes that change nothing searchable, malformed stream data, and how a
// batch keeps only the newest version of each message.
import { describe, expect, it } from "vitest"
import type { ChannelEvent } from "../../src/domain/ChannelEvents.ts"
import { opsOfMessage } from "../../src/search/Indexer.ts"
import { coalesce, hasLink, opsOfEvent } from "../../src/search/Search.ts"

const event = (seq: number, fields: Record<string, unknown>): ChannelEvent =>
  ({ type: "message", channel: "C1", seq, event_ts: "1700000000.000100", ...fields }) as ChannelEvent
const post = (seq: number, fields: Record<string, unknown> = {}) =>
  event(seq, { ts: `1700000000.00000${seq}`, text: "hello", user: "U1", team: "T1", ...fields })

describe("events to index writes", () => {
  it("indexes a post with its author, workspace and version (the event's seq)", () => {
    expect(opsOfEvent(post(3))).toEqual([{
      _tag: "Upsert",
      doc: { teamId: "T1", channelId: "C1", ts: "1700000000.000003", userId: "U1", text: "hello", threadTs: null, version: 3 }
    }])
  })

  it("marks the parent of a reply (and of a broadcast reply) as a thread", () => {
    const ops = opsOfEvent(post(5, { thread_ts: "1700000000.000001", subtype: "thread_broadcast" }))
    expect(ops.map((o) => o._tag)).toEqual(["Upsert", "MarkThread"])
    expect(ops[1]).toEqual({ _tag: "MarkThread", channelId: "C1", ts: "1700000000.000001" })
    // A thread parent's own ts as thread_ts marks nothing more.
    expect(opsOfEvent(post(6, { thread_ts: "1700000000.000006" })).map((o) => o._tag)).toEqual(["Upsert"])
  })

  it("indexes bot and file messages, not system messages", () => {
    expect(opsOfEvent(post(7, { subtype: "bot_message" }))).toHaveLength(1)
    expect(opsOfEvent(post(8, { subtype: "file_share" }))).toHaveLength(1)
    for (const subtype of ["channel_join", "channel_leave", "channel_topic", "channel_name", "channel_archive"]) {
      expect(opsOfEvent(post(9, { subtype })), subtype).toEqual([])
    }
  })

  it("re-indexes an edit's new text at the edit's seq", () => {
    const edit = event(12, {
      subtype: "message_changed",
      message: { type: "message", ts: "1700000000.000003", text: "hello again", user: "U1", team: "T1" },
      previous_message: { ts: "1700000000.000003", text: "hello" }
    })
    expect(opsOfEvent(edit)).toEqual([{
      _tag: "Upsert",
      doc: { teamId: "T1", channelId: "C1", ts: "1700000000.000003", userId: "U1", text: "hello again", threadTs: null, version: 12 }
    }])
  })

  it("removes a deleted message at the deletion's seq", () => {
    const deletion = event(13, { subtype: "message_deleted", deleted_ts: "1700000000.000003", previous_message: { team: "T1" } })
    expect(opsOfEvent(deletion)).toEqual([{ _tag: "Remove", teamId: "T1", channelId: "C1", ts: "1700000000.000003", version: 13 }])
  })

  it("ignores everything else", () => {
    expect(opsOfEvent({ type: "reaction_added", channel: "C1", seq: 4, event_ts: "1" })).toEqual([])
    expect(opsOfEvent({ type: "member_joined_channel", channel: "C1", seq: 4, event_ts: "1" })).toEqual([])
    expect(opsOfEvent(event(4, { subtype: "message_changed" }))).toEqual([])
    expect(opsOfEvent(event(4, {}))).toEqual([])
  })

  it("skips stream data that is not a channel event", () => {
    const bytes = (s: string) => new TextEncoder().encode(s)
    expect(opsOfMessage(bytes("{not json"))).toBeUndefined()
    expect(opsOfMessage(bytes("null"))).toBeUndefined()
    expect(opsOfMessage(bytes(JSON.stringify({ type: "message", text: "no channel" })))).toBeUndefined()
    expect(opsOfMessage(bytes(JSON.stringify(post(2))))).toHaveLength(1)
  })
})

describe("batches", () => {
  it("keeps the newest version of each message, a deletion included", () => {
    const doc = { teamId: "T1", channelId: "C1", ts: "1700000000.000001", userId: "U1", text: "hello", threadTs: null, version: 1 }
    const { threads, writes } = coalesce([
      { _tag: "Upsert", doc: { ...doc, text: "edited", version: 4 } },
      { _tag: "Remove", teamId: "T1", channelId: "C1", ts: doc.ts, version: 9 },
      { _tag: "Upsert", doc },
      { _tag: "Upsert", doc: { ...doc, ts: "1700000000.000002", version: 2 } },
      { _tag: "MarkThread", channelId: "C1", ts: "1700000000.000002" },
      { _tag: "MarkThread", channelId: "C1", ts: "1700000000.000002" }
    ])
    expect(writes).toEqual([
      { deleted: true, doc: { teamId: "T1", channelId: "C1", ts: doc.ts, userId: null, text: "", threadTs: null, version: 9 } },
      { deleted: false, doc: { ...doc, ts: "1700000000.000002", version: 2 } }
    ])
    expect(threads).toEqual([{ channelId: "C1", ts: "1700000000.000002" }])
  })

  it("detects links as has:link means them", () => {
    expect(hasLink("see <https://example.com|example>")).toBe(true)
    expect(hasLink("HTTP://EXAMPLE.COM")).toBe(true)
    expect(hasLink("no link here, just https")).toBe(false)
  })
})
