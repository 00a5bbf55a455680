// The channel actor's behaviour against a real PostgreSQL: creation, gap-free seq over
// mixed commands, group commit of a batch, idempotency (client_msg_id and command ids),
// permissions (invariant 5), threads, reactions, edits and deletes, archive, membership,
// and what a second writer (a zombie owner) or a lost fence does.

import { afterAll, beforeAll, describe, expect, it } from "vitest"
import {
  AddReaction,
  Archive,
  CreateChannel,
  DeleteMessage,
  Describe,
  Invite,
  Join,
  Kick,
  Leave,
  OpenConversation,
  PostMessage,
  PostMessages,
  RemoveReaction,
  Rename,
  SetPurpose,
  SetTopic,
  Unarchive,
  UpdateMessage,
  dmKey
} from "../../src/actors/ChannelProtocol.ts"
import * as ChannelActor from "../../src/actors/ChannelActor.ts"
import * as MessageTs from "../../src/actors/MessageTs.ts"
import * as Ids from "../../src/domain/Ids.ts"
import { codeOf, startChannelHarness, unwrap, type ChannelHarness, type TestActor } from "./channelHarness.ts"

let h: ChannelHarness
const team = "TTEAM00001"
const otherTeam = "TOTHER0001"
const alice = "UALICE0001"
const bob = "UBOB000001"
const carol = "UCAROL0001"
const guest = "UGUEST0001"
const admin = "UADMIN0001"

beforeAll(async () => {
  h = await startChannelHarness()
})
afterAll(async () => {
  await h?.close()
})

const me = (user: string, t = team) => ({ user, team: t })
const post = (user: string, text: string, extra: Partial<ConstructorParameters<typeof PostMessage>[0]> = {}) =>
  new PostMessage({ ...me(user), text, ...extra })

let names = 0
/** A fresh public (or private) channel created by `creator`, with `members` invited. */
async function channel(options: { readonly isPrivate?: boolean; readonly creator?: string; readonly members?: ReadonlyArray<string> } = {}) {
  const creator = options.creator ?? alice
  const actor = h.actor(Ids.make("C"))
  await actor.start()
  await actor.send(new CreateChannel({ ...me(creator), name: `chan-${Date.now().toString(36)}-${++names}`, is_private: options.isPrivate ?? false }))
  if (options.members !== undefined && options.members.length > 0) {
    await actor.send(new Invite({ ...me(creator), role: "member", users: [...options.members] }))
  }
  return actor
}

const events = (channelId: string) =>
  h.query<{ seq: number; type: string; event: any }>("SELECT seq, type, event FROM channel_events WHERE channel_id = $1 ORDER BY seq", channelId)

const messageRow = async (channelId: string, ts: string) =>
  (await h.query<any>("SELECT * FROM messages WHERE channel_id = $1 AND ts = $2", channelId, ts))[0]

/** The channel's events as published, in order. */
const publishedFor = (channelId: string) =>
  h.published.flatMap((o) => (o._tag === "channel" && o.event.channel === channelId ? [o.event] : []))

/** Checks the log is 1..last_seq with no gap, ts strictly increasing, and published the same. */
async function expectGapFree(actor: TestActor) {
  const rows = await events(actor.id)
  const channelRow = (await h.query<{ last_seq: number; last_ts: string | null }>("SELECT last_seq, last_ts FROM channels WHERE id = $1", actor.id))[0]
  expect(rows.map((r) => r.seq)).toEqual(rows.map((_, i) => i + 1))
  expect(channelRow?.last_seq).toBe(rows.length)
  const eventTs = rows.map((r) => r.event.event_ts as string)
  for (let i = 1; i < eventTs.length; i++) expect(eventTs[i]! > eventTs[i - 1]!).toBe(true)
  for (const r of rows) {
    expect(r.event.seq).toBe(r.seq)
    expect(r.event.channel).toBe(actor.id)
    expect(r.event.type).toBe(r.type)
  }
  const published = publishedFor(actor.id)
  expect(published.map((e) => e.seq)).toEqual(rows.map((r) => r.seq))
  expect(JSON.parse(JSON.stringify(published))).toEqual(rows.map((r) => r.event))
  const messages = await h.query<{ ts: string }>("SELECT ts FROM messages WHERE channel_id = $1 ORDER BY ts DESC LIMIT 1", actor.id)
  expect(channelRow?.last_ts ?? null).toBe(messages[0]?.ts ?? null)
}

describe("creation", () => {
  it("creates a channel with channel_created, the creator's join and a channel_join message as seq 1..3", async () => {
    const actor = h.actor(Ids.make("C"))
    const created = await actor.send(new CreateChannel({ ...me(alice), name: "general-test", is_private: false }))
    expect(created.channel).toMatchObject({ id: actor.id, name: "general-test", is_channel: true, is_private: false, is_member: true, creator: alice, num_members: 1 })
    const rows = await events(actor.id)
    expect(rows.map((r) => [r.seq, r.type, r.event.subtype ?? null])).toEqual([
      [1, "channel_created", null],
      [2, "member_joined_channel", null],
      [3, "message", "channel_join"]
    ])
    expect(rows[1]?.event).toMatchObject({ user: alice, channel_type: "C", team })
    expect(await h.query("SELECT user_id, joined_seq FROM channel_members WHERE channel_id = $1", actor.id)).toEqual([{ user_id: alice, joined_seq: 2 }])
    const joined = h.published.find((o) => o._tag === "user" && o.to === alice && o.event.type === "channel_joined" && o.event["channel_id"] === actor.id)
    expect(joined?.event).toMatchObject({ seq: 2, channel: { id: actor.id, name: "general-test" } })
    await expectGapFree(actor)
  })

  it("refuses a taken name, and answers a retried create from its first answer", async () => {
    const first = h.actor(Ids.make("C"))
    const createdReply = await first.send(new CreateChannel({ ...me(alice), name: "taken-name", is_private: false }), { commandId: "create-1" })
    const second = h.actor(Ids.make("C"))
    expect(await second.refused(new CreateChannel({ ...me(bob), name: "taken-name", is_private: true }))).toBe("name_taken")
    expect(await h.query("SELECT id FROM channels WHERE id = $1", second.id)).toEqual([])
    // The same command again, after a restart (the reply was lost): the same answer, nothing new.
    await first.start()
    const again = await first.send(new CreateChannel({ ...me(alice), name: "taken-name", is_private: false }), { commandId: "create-1", sentAt: Date.now() - 60_000 })
    expect(again).toEqual(JSON.parse(JSON.stringify(createdReply)))
    expect((await events(first.id)).length).toBe(3)
    // A name taken in the same workspace is free in another.
    const elsewhere = h.actor(Ids.make("C"))
    await elsewhere.send(new CreateChannel({ ...me(carol, otherTeam), name: "taken-name", is_private: false }))
  })

  it("opens a DM once per member set, with im_created for both members", async () => {
    const key = dmKey([alice, bob])
    const dm = h.actor(Ids.make("D"))
    const opened = await dm.send(new OpenConversation({ ...me(alice), members: [alice, bob], dm_key: key }))
    expect(opened).toEqual({ id: dm.id, created: true })
    const rows = await events(dm.id)
    expect(rows.map((r) => r.type)).toEqual(["channel_created", "member_joined_channel", "member_joined_channel"])
    for (const user of [alice, bob]) {
      const created = h.published.find((o) => o._tag === "user" && o.to === user && o.event.type === "im_created" && o.event["channel_id"] === dm.id)
      expect(created?.event).toMatchObject({ channel: { id: dm.id, is_im: true, user: user === alice ? bob : alice } })
    }
    // Another actor racing to create the same DM finds the first.
    const racer = h.actor(Ids.make("D"))
    expect(await racer.send(new OpenConversation({ ...me(bob), members: [bob, alice], dm_key: key }))).toEqual({ id: dm.id, created: false })
    expect(await h.query("SELECT id FROM channels WHERE id = $1", racer.id)).toEqual([])
    // A DM is private: outsiders do not see it.
    expect(await dm.refused(post(carol, "hi"))).toBe("channel_not_found")
    expect(unwrap((await dm.batch([post(bob, "hi alice")]))[0]!).ts).toMatch(/^\d{10}\.\d{6}$/)
    await expectGapFree(dm)
  })

  it("opens a group DM (C id, is_mpim) and refuses a malformed open", async () => {
    const members = [alice, bob, carol]
    const mpim = h.actor(Ids.make("C"))
    expect(await mpim.send(new OpenConversation({ ...me(alice), members, dm_key: dmKey(members) }))).toEqual({ id: mpim.id, created: true })
    const described = await mpim.send(new Describe(me(carol)))
    expect(described.channel).toMatchObject({ is_mpim: true, is_private: true, num_members: 3 })
    const wrongPrefix = h.actor(Ids.make("D"))
    expect(await wrongPrefix.refused(new OpenConversation({ ...me(alice), members, dm_key: dmKey(members) }))).toBe("invalid_arguments")
  })
})

describe("seq and ts", () => {
  it("numbers a batch of mixed commands gap-free, refusals taking no seq", async () => {
    const actor = await channel({ members: [bob] })
    const parent = await actor.send(post(alice, "parent"))
    const exits = await actor.batch([
      post(alice, "one"),
      post(carol, "not a member"), // refused
      new AddReaction({ ...me(bob), ts: parent.ts, name: "thumbsup" }),
      new AddReaction({ ...me(bob), ts: parent.ts, name: "thumbsup" }), // already_reacted
      new Join({ ...me(carol), role: "member" }),
      post(carol, "now a member"),
      post(bob, "reply", { thread_ts: parent.ts }),
      new SetTopic({ ...me(alice), topic: "the topic" }),
      new UpdateMessage({ ...me(alice), ts: parent.ts, text: "parent (edited)" }),
      new UpdateMessage({ ...me(bob), ts: parent.ts, text: "not mine" }), // cant_update_message
      new RemoveReaction({ ...me(bob), ts: parent.ts, name: "thumbsup" }),
      new Leave(me(carol)),
      post(alice, "two")
    ])
    expect(codeOf(exits[1]!)).toBe("not_in_channel")
    expect(codeOf(exits[3]!)).toBe("already_reacted")
    expect(codeOf(exits[9]!)).toBe("cant_update_message")
    const okSeqs = exits.flatMap((e) => ("value" in e && typeof (e as any).value?.seq === "number" ? [(e as any).value.seq as number] : []))
    for (let i = 1; i < okSeqs.length; i++) expect(okSeqs[i]!).toBeGreaterThan(okSeqs[i - 1]!)
    // That batch went out as one commit: it removes a reaction and a member, so it is
    // the actor's own transaction.
    await expectGapFree(actor)
    const state = actor.state as ChannelActor.State
    expect(state.members.has(carol)).toBe(false)
    expect(state.channel?.topic).toBe("the topic")
  })

  it("keeps ts strictly increasing across batches, restarts and a wall clock that stalls", async () => {
    const actor = await channel()
    const seen: Array<string> = []
    for (let i = 0; i < 5; i++) {
      const exits = await actor.batch(Array.from({ length: 20 }, (_, j) => post(alice, `m${i}-${j}`)))
      seen.push(...exits.map((e) => unwrap(e).ts as string))
      if (i === 2) await actor.start()
    }
    for (let i = 1; i < seen.length; i++) expect(seen[i]! > seen[i - 1]!).toBe(true)
    // A reloaded actor continues after the last ts even if it is in the future.
    await h.query("UPDATE channels SET last_ts = '9000000000.000000' WHERE id = $1", actor.id)
    await actor.start()
    const next = await actor.send(post(alice, "after a clock jump"))
    expect(next.ts).toBe("9000000000.000001")
    await h.query("UPDATE channels SET last_ts = $2 WHERE id = $1", actor.id, next.ts)
  })
})

describe("group commit", () => {
  it("commits a batch of 200 posts with one row-write commit and no transaction", async () => {
    const actor = await channel({ members: [bob] })
    actor.counts.commits = 0
    actor.counts.transactions = 0
    const exits = await actor.batch(Array.from({ length: 200 }, (_, i) => post(i % 2 === 0 ? alice : bob, `message ${i}`, { client_msg_id: `bulk-${actor.id}-${i}` })))
    expect(actor.counts).toEqual({ commits: 1, transactions: 0 })
    const replies = exits.map((e) => unwrap(e))
    expect(replies.map((r) => r.seq)).toEqual(replies.map((_, i) => replies[0].seq + i))
    const count = await h.query<{ n: number }>("SELECT count(*)::int AS n FROM messages WHERE channel_id = $1 AND client_msg_id LIKE 'bulk-%'", actor.id)
    expect(count[0]?.n).toBe(200)
    expect(replies[5].message).toMatchObject({ type: "message", text: "message 5", user: bob, client_msg_id: `bulk-${actor.id}-5`, ts: replies[5].ts })
    await expectGapFree(actor)
  })

  it("decides a PostMessages batch as its posts: in order, one commit, own refusals, idempotent per post", async () => {
    const actor = await channel({ members: [bob] })
    actor.counts.commits = 0
    const cmid = `batched-${actor.id}`
    const batchOf = (...posts: Array<PostMessage>) => ({ request: new PostMessages({ posts }), commandId: `batch-${actor.id}` })
    const [exit] = await actor.batch([batchOf(
      post(alice, "one", { client_msg_id: cmid }),
      post(carol, "an outsider's"),
      post(alice, "x".repeat(40_001)),
      post(bob, "two")
    )])
    const answers = unwrap(exit!) as Array<{ ok: boolean; ts?: string; seq?: number; error?: string }>
    expect(answers.map((a) => a.ok ? "ok" : a.error)).toEqual(["ok", "not_in_channel", "msg_too_long", "ok"])
    expect(answers[3]!.seq).toBe(answers[0]!.seq! + 1)
    expect(actor.counts.commits).toBe(1)
    const rows = await h.query<{ text: string; seq: number }>("SELECT text, seq FROM messages WHERE channel_id = $1 AND text IN ('one', 'two') ORDER BY seq", actor.id)
    expect(rows.map((r) => r.text)).toEqual(["one", "two"])
    // A batched post's client_msg_id answers a later single post, and a retried batch
    // (same command id, after a restart) answers as the first time without posting again.
    expect(await actor.send(post(alice, "one", { client_msg_id: cmid }))).toMatchObject({ ts: answers[0]!.ts, seq: answers[0]!.seq })
    await actor.start()
    const [again] = await actor.batch([{ ...batchOf(post(alice, "one", { client_msg_id: cmid }), post(carol, "an outsider's"), post(alice, "x".repeat(40_001)), post(bob, "two")), sentAt: Date.now() - 60_000 }])
    expect(unwrap(again!)).toEqual(answers)
    expect(await h.query("SELECT count(*)::int AS n FROM messages WHERE channel_id = $1 AND text IN ('one', 'two')", actor.id)).toEqual([{ n: 2 }])
    await expectGapFree(actor)
  })

  it("answers reads without writing: a batch of refusals commits nothing", async () => {
    const actor = await channel()
    actor.counts.commits = 0
    actor.counts.transactions = 0
    await actor.batch([post(carol, "no"), new Describe(me(alice)), new Leave(me(bob))])
    expect(actor.counts).toEqual({ commits: 0, transactions: 0 })
  })
})

describe("idempotency (invariant 4)", () => {
  it("answers a retried client_msg_id with the original ts and seq, never a second message", async () => {
    const actor = await channel({ members: [bob] })
    const cmid = `cmid-${actor.id}`
    const first = await actor.send(post(alice, "hello", { client_msg_id: cmid }))
    // In the same batch as a new one, twice in one batch, after a restart.
    const [again, other, twice] = await actor.batch([
      post(alice, "hello", { client_msg_id: cmid }),
      post(alice, "other", { client_msg_id: `${cmid}-2` }),
      post(alice, "other", { client_msg_id: `${cmid}-2` })
    ])
    expect(unwrap(again!)).toMatchObject({ ts: first.ts, seq: first.seq })
    expect(unwrap(twice!)).toMatchObject({ ts: unwrap(other!).ts, seq: unwrap(other!).seq })
    await actor.start()
    expect(await actor.send(post(alice, "hello", { client_msg_id: cmid }))).toMatchObject({ ts: first.ts, seq: first.seq, message: { text: "hello" } })
    // Long after: beyond the messages loaded at start, found in PostgreSQL.
    await actor.batch(Array.from({ length: 150 }, (_, i) => post(bob, `filler ${i}`)))
    await actor.start()
    expect(actor.state?.window.has(`m:${cmid}`)).toBe(false)
    expect(await actor.send(post(alice, "hello", { client_msg_id: cmid }))).toMatchObject({ ts: first.ts, seq: first.seq })
    // Between new posts in one batch: the commit finds it taken, and the batch is
    // decided again, the new posts keeping consecutive seqs.
    await actor.start()
    const [before, resent, after] = await actor.batch([
      post(bob, "new before", { client_msg_id: `${cmid}-3` }),
      post(alice, "hello", { client_msg_id: cmid }),
      post(bob, "new after")
    ])
    expect(unwrap(resent!)).toMatchObject({ ts: first.ts, seq: first.seq })
    expect(unwrap(after!).seq).toBe(unwrap(before!).seq + 1)
    const rows = await h.query("SELECT ts FROM messages WHERE channel_id = $1 AND client_msg_id = $2", actor.id, cmid)
    expect(rows).toHaveLength(1)
    // Someone else cannot take over a client_msg_id.
    expect(await actor.refused(post(bob, "hijack", { client_msg_id: cmid }))).toBe("invalid_client_msg_id")
    await expectGapFree(actor)
  })

  it("answers a retried command id (no client_msg_id) from channel_commands after a restart", async () => {
    const actor = await channel({ members: [bob] })
    const sentAt = Date.now()
    const posted = await actor.send(post(alice, "no cmid"), { commandId: "post-cmd-1", sentAt })
    const reacted = await actor.send(new AddReaction({ ...me(bob), ts: posted.ts, name: "tada" }), { commandId: "react-cmd-1", sentAt })
    await actor.start() // a new owner: the window is empty
    // Retries keep their first send time, before this activation began.
    expect(await actor.send(post(alice, "no cmid"), { commandId: "post-cmd-1", sentAt })).toMatchObject({ ts: posted.ts, seq: posted.seq })
    expect(await actor.send(new AddReaction({ ...me(bob), ts: posted.ts, name: "tada" }), { commandId: "react-cmd-1", sentAt })).toEqual(reacted)
    expect(await h.query("SELECT count(*)::int AS n FROM messages WHERE channel_id = $1 AND text = 'no cmid'", actor.id)).toEqual([{ n: 1 }])
    // A fresh command with the same content is a new command.
    expect(await actor.refused(new AddReaction({ ...me(bob), ts: posted.ts, name: "tada" }))).toBe("already_reacted")
    await expectGapFree(actor)
  })
})

describe("permissions (invariant 5)", () => {
  it("refuses outsiders: not_in_channel for a public channel, channel_not_found for a private one or another workspace", async () => {
    const open = await channel()
    const closed = await channel({ isPrivate: true })
    expect(await open.refused(post(bob, "hi"))).toBe("not_in_channel")
    expect(await closed.refused(post(bob, "hi"))).toBe("channel_not_found")
    expect(await open.refused(post(alice, "hi", { team: otherTeam }))).toBe("channel_not_found")
    expect(await closed.refused(new Join({ ...me(bob), role: "member" }))).toBe("channel_not_found")
    expect(await closed.refused(new Describe(me(bob)))).toBe("channel_not_found")
    expect(await closed.refused(new Leave(me(bob)))).toBe("channel_not_found")
    expect(await closed.refused(new SetTopic({ ...me(bob), topic: "x" }))).toBe("channel_not_found")
    expect(await open.refused(new Join({ ...me(bob, otherTeam), role: "member" }))).toBe("channel_not_found")
    // Guests: a public channel they are not in does not exist for them.
    expect(await open.refused(new Join({ ...me(guest), role: "guest" }))).toBe("channel_not_found")
    // A channel that does not exist.
    expect(await h.actor(Ids.make("C")).refused(post(alice, "hi"))).toBe("channel_not_found")
  })

  it("checks message length, emptiness, authorship and roles", async () => {
    const actor = await channel({ members: [bob, guest] })
    expect(await actor.refused(post(alice, "x".repeat(40_001)))).toBe("msg_too_long")
    expect((await actor.send(post(alice, "x".repeat(40_000)))).ts).toBeDefined()
    expect(await actor.refused(post(alice, "   "))).toBe("no_text")
    expect((await actor.send(post(alice, "", { blocks: [{ type: "divider" }] }))).message.blocks).toEqual([{ type: "divider" }])
    const mine = await actor.send(post(alice, "mine"))
    expect(await actor.refused(new UpdateMessage({ ...me(bob), ts: mine.ts, text: "yours?" }))).toBe("cant_update_message")
    expect(await actor.refused(new DeleteMessage({ ...me(bob), role: "member", ts: mine.ts }))).toBe("cant_delete_message")
    expect(await actor.refused(new Invite({ ...me(guest), role: "guest", users: [carol] }))).toBe("restricted_action")
    expect(await actor.refused(new Kick({ ...me(bob), role: "member", target: guest }))).toBe("restricted_action")
    expect(await actor.refused(new Rename({ ...me(bob), role: "member", name: "renamed" }))).toBe("not_authorized")
    expect(await actor.refused(new Archive({ ...me(guest), role: "guest" }))).toBe("restricted_action")
    expect(await actor.refused(new Invite({ ...me(alice), role: "member", users: [alice] }))).toBe("cant_invite_self")
    expect(await actor.refused(new Invite({ ...me(alice), role: "member", users: [carol, bob] }))).toBe("already_in_channel")
    expect(await actor.refused(new Kick({ ...me(alice), role: "member", target: alice }))).toBe("cant_kick_self")
    expect(await actor.refused(new Kick({ ...me(alice), role: "member", target: carol }))).toBe("not_in_channel")
    expect(await actor.refused(new SetTopic({ ...me(alice), topic: "t".repeat(251) }))).toBe("too_long")
    // Admins may delete anyone's message.
    await actor.send(new Invite({ ...me(alice), role: "member", users: [admin] }))
    expect((await actor.send(new DeleteMessage({ ...me(admin), role: "admin", ts: mine.ts }))).ts).toBe(mine.ts)
  })

  it("removes NUL characters and lone surrogates before they reach PostgreSQL", async () => {
    const actor = await channel()
    const posted = await actor.send(post(alice, "a\u0000b\ud800c", { blocks: [{ type: "section", text: { type: "mrkdwn", text: "x\u0000y" } }] }))
    const row = await messageRow(actor.id, posted.ts)
    expect(row.text).toBe("ab\ufffdc")
    expect(row.blocks).toEqual([{ type: "section", text: { type: "mrkdwn", text: "xy" } }])
  })
})

describe("threads", () => {
  it("keeps the parent's reply_count, reply_users and latest_reply", async () => {
    const actor = await channel({ members: [bob, carol] })
    const parent = await actor.send(post(alice, "parent"))
    const [r1, r2, r3] = (await actor.batch([
      post(bob, "r1", { thread_ts: parent.ts }),
      post(carol, "r2", { thread_ts: parent.ts, reply_broadcast: true }),
      post(bob, "r3", { thread_ts: parent.ts })
    ])).map((e) => unwrap(e))
    const row = await messageRow(actor.id, parent.ts)
    expect(row).toMatchObject({ thread_ts: parent.ts, reply_count: 3, reply_users: [bob, carol], latest_reply: r3.ts })
    expect(r1.message).toMatchObject({ thread_ts: parent.ts, parent_user_id: alice })
    expect(r2.message).toMatchObject({ subtype: "thread_broadcast", thread_ts: parent.ts })
    // A reply's ts stands for its thread.
    const r4 = await actor.send(post(alice, "r4", { thread_ts: r1.ts }))
    expect(r4.message.thread_ts).toBe(parent.ts)
    expect(await messageRow(actor.id, parent.ts)).toMatchObject({ reply_count: 4, reply_users: [bob, carol, alice], latest_reply: r4.ts })
    // Deleting the latest reply recounts the thread.
    await actor.send(new DeleteMessage({ ...me(alice), role: "member", ts: r4.ts }))
    expect(await messageRow(actor.id, parent.ts)).toMatchObject({ reply_count: 3, reply_users: [bob, carol], latest_reply: r3.ts })
    await actor.start()
    const cached = actor.state?.cache.get(parent.ts)?.row
    expect(cached).toMatchObject({ reply_count: 3, latest_reply: r3.ts })
    // thread_not_found: unknown ts, malformed ts, a deleted parent, a join message.
    expect(await actor.refused(post(alice, "x", { thread_ts: "1000000000.000000" }))).toBe("thread_not_found")
    expect(await actor.refused(post(alice, "x", { thread_ts: "garbage" }))).toBe("thread_not_found")
    const doomed = await actor.send(post(alice, "doomed"))
    await actor.send(new DeleteMessage({ ...me(alice), role: "member", ts: doomed.ts }))
    expect(await actor.refused(post(alice, "x", { thread_ts: doomed.ts }))).toBe("thread_not_found")
    const join = (await events(actor.id)).find((e) => e.event.subtype === "channel_join")
    expect(await actor.refused(post(alice, "x", { thread_ts: join?.event.ts }))).toBe("thread_not_found")
    await expectGapFree(actor)
  })

  it("threads onto a parent that is no longer in the actor's cache", async () => {
    const actor = await channel()
    const parent = await actor.send(post(alice, "old parent"))
    await actor.batch(Array.from({ length: ChannelActor.cacheSize + 10 }, (_, i) => post(alice, `filler ${i}`)))
    expect(actor.state?.cache.has(parent.ts)).toBe(false)
    const reply = await actor.send(post(alice, "late reply", { thread_ts: parent.ts }))
    expect(await messageRow(actor.id, parent.ts)).toMatchObject({ reply_count: 1, latest_reply: reply.ts })
  })
})

describe("reactions, edits, deletes", () => {
  it("adds and removes reactions with Slack's events and rows", async () => {
    const actor = await channel({ members: [bob] })
    const msg = await actor.send(post(alice, "react to me"))
    await actor.send(new AddReaction({ ...me(bob), ts: msg.ts, name: ":thumbsup:" }))
    await actor.send(new AddReaction({ ...me(alice), ts: msg.ts, name: "thumbsup" }))
    expect(await actor.refused(new AddReaction({ ...me(bob), ts: msg.ts, name: "thumbsup" }))).toBe("already_reacted")
    expect(await actor.refused(new AddReaction({ ...me(bob), ts: msg.ts, name: "not a name!" }))).toBe("invalid_name")
    expect(await actor.refused(new AddReaction({ ...me(bob), ts: "1000000000.000001", name: "tada" }))).toBe("message_not_found")
    expect(await h.query("SELECT name, user_id FROM reactions WHERE channel_id = $1 ORDER BY created_at, user_id", actor.id)).toHaveLength(2)
    await actor.send(new RemoveReaction({ ...me(bob), ts: msg.ts, name: "thumbsup" }))
    expect(await actor.refused(new RemoveReaction({ ...me(bob), ts: msg.ts, name: "thumbsup" }))).toBe("no_reaction")
    expect(await h.query("SELECT user_id FROM reactions WHERE channel_id = $1", actor.id)).toEqual([{ user_id: alice }])
    // Added and removed in one batch: nothing stays.
    await actor.batch([new AddReaction({ ...me(bob), ts: msg.ts, name: "wave" }), new RemoveReaction({ ...me(bob), ts: msg.ts, name: "wave" })])
    expect(await h.query("SELECT count(*)::int AS n FROM reactions WHERE channel_id = $1 AND name = 'wave'", actor.id)).toEqual([{ n: 0 }])
    const added = (await events(actor.id)).find((e) => e.type === "reaction_added")
    expect(added?.event).toMatchObject({ user: bob, reaction: "thumbsup", item_user: alice, item: { type: "message", channel: actor.id, ts: msg.ts } })
    await expectGapFree(actor)
  })

  it("edits and deletes with message_changed / message_deleted", async () => {
    const actor = await channel({ members: [bob] })
    const msg = await actor.send(post(alice, "first draft"))
    const edited = await actor.send(new UpdateMessage({ ...me(alice), ts: msg.ts, text: "second draft" }))
    expect(edited.message).toMatchObject({ ts: msg.ts, text: "second draft", edited: { user: alice } })
    const change = (await events(actor.id)).find((e) => e.event.subtype === "message_changed")
    expect(change?.event).toMatchObject({ type: "message", hidden: true, message: { text: "second draft" }, previous_message: { text: "first draft" } })
    expect(await messageRow(actor.id, msg.ts)).toMatchObject({ text: "second draft", edited_by: alice })
    expect(await actor.refused(new UpdateMessage({ ...me(alice), ts: msg.ts, text: "" }))).toBe("no_text")
    await actor.send(new DeleteMessage({ ...me(alice), role: "member", ts: msg.ts }))
    const deletion = (await events(actor.id)).find((e) => e.event.subtype === "message_deleted")
    expect(deletion?.event).toMatchObject({ deleted_ts: msg.ts, previous_message: { text: "second draft" } })
    expect(await messageRow(actor.id, msg.ts)).toMatchObject({ deleted: true, text: "" })
    expect(await actor.refused(new UpdateMessage({ ...me(alice), ts: msg.ts, text: "back?" }))).toBe("message_not_found")
    expect(await actor.refused(new DeleteMessage({ ...me(alice), role: "member", ts: msg.ts }))).toBe("message_not_found")
    await expectGapFree(actor)
  })
})

describe("membership and settings", () => {
  it("joins, invites, kicks and leaves with member events, channel_join/leave messages and user events", async () => {
    const actor = await channel()
    const joined = await actor.send(new Join({ ...me(bob), role: "member" }))
    expect(joined.already_in_channel).toBe(false)
    expect((await actor.send(new Join({ ...me(bob), role: "member" }))).already_in_channel).toBe(true)
    await actor.send(new Invite({ ...me(bob), role: "member", users: [carol] }))
    await actor.send(new Kick({ ...me(alice), role: "member", target: carol })) // alice created it
    await actor.send(new Leave(me(bob)))
    expect((await actor.send(new Leave(me(bob)))).not_in_channel).toBe(true)
    const types = (await events(actor.id)).map((e) => (e.type === "message" ? `message/${e.event.subtype}` : e.type))
    expect(types).toEqual([
      "channel_created", "member_joined_channel", "message/channel_join",
      "member_joined_channel", "message/channel_join",
      "member_joined_channel", "message/channel_join",
      "member_left_channel",
      "message/channel_leave", "member_left_channel"
    ])
    expect(await h.query("SELECT user_id FROM channel_members WHERE channel_id = $1", actor.id)).toEqual([{ user_id: alice }])
    const userEvents = h.published.flatMap((o) => (o._tag === "user" && o.event["channel_id"] === actor.id ? [[o.to, o.event.type, o.event["seq"]]] : []))
    expect(userEvents).toEqual([[alice, "channel_joined", 2], [bob, "channel_joined", 4], [carol, "channel_joined", 6], [carol, "channel_left", 8], [bob, "channel_left", 10]])
    const kicked = h.published.find((o) => o._tag === "user" && o.to === carol && o.event.type === "channel_left" && o.event["channel_id"] === actor.id)
    expect(kicked?.event).toMatchObject({ actor_id: alice, channel: actor.id })
    await expectGapFree(actor)
  })

  it("renames, sets topic and purpose, archives and unarchives", async () => {
    const actor = await channel({ members: [bob] })
    const other = await channel()
    const otherName = (other.state?.channel?.name) as string
    expect(await actor.refused(new Rename({ ...me(alice), role: "member", name: otherName }))).toBe("name_taken")
    const renamed = await actor.send(new Rename({ ...me(alice), role: "member", name: `renamed-${actor.id.toLowerCase()}` }))
    expect(renamed.channel.name).toBe(`renamed-${actor.id.toLowerCase()}`)
    await actor.send(new SetTopic({ ...me(bob), topic: "Topic!" }))
    const purpose = await actor.send(new SetPurpose({ ...me(bob), purpose: "Purpose!" }))
    expect(purpose.channel).toMatchObject({ topic: { value: "Topic!", creator: bob }, purpose: { value: "Purpose!", creator: bob } })
    await actor.send(new Archive({ ...me(bob), role: "member" }))
    expect(await actor.refused(post(alice, "anyone?"))).toBe("is_archived")
    expect(await actor.refused(new Archive({ ...me(alice), role: "member" }))).toBe("already_archived")
    expect(await actor.refused(new Join({ ...me(carol), role: "member" }))).toBe("is_archived")
    await actor.send(new Unarchive({ ...me(alice), role: "member" }))
    expect(await actor.refused(new Unarchive({ ...me(alice), role: "member" }))).toBe("not_archived")
    await actor.send(post(alice, "back"))
    const row = (await h.query<any>("SELECT name, topic, topic_set_by, purpose, is_archived FROM channels WHERE id = $1", actor.id))[0]
    expect(row).toMatchObject({ topic: "Topic!", topic_set_by: bob, purpose: "Purpose!", is_archived: false })
    const types = (await events(actor.id)).slice(5).map((e) => (e.type === "message" ? `message/${e.event.subtype}` : e.type))
    expect(types).toEqual([
      "channel_rename", "message/channel_name", "message/channel_topic", "message/channel_purpose",
      "message/channel_archive", "channel_archive", "channel_unarchive", "message/channel_unarchive", "message/undefined"
    ])
    // The reloaded state matches.
    await actor.start()
    expect(actor.state?.channel).toMatchObject({ topic: "Topic!", purpose: "Purpose!", is_archived: false })
    await expectGapFree(actor)
  })
})

describe("a second writer and a lost fence", () => {
  it("dies on a zombie's conflicting write, and a restart reloads and continues", async () => {
    const actor = await channel()
    const zombie = h.actor(actor.id)
    await zombie.start()
    await actor.send(post(alice, "from the owner"))
    // The zombie still believes the previous seq is the last: its seq collides.
    const outcome = await zombie.batchExit([post(alice, "from the zombie")])
    expect(outcome._tag).toBe("Failure")
    expect(String((outcome as any).cause)).toMatch(/TimelineConflict|unique/i)
    expect(await h.query("SELECT count(*)::int AS n FROM messages WHERE channel_id = $1 AND text = 'from the zombie'", actor.id)).toEqual([{ n: 0 }])
    await zombie.start()
    expect((await zombie.send(post(alice, "after reload"))).seq).toBe((actor.state?.channel?.last_seq ?? 0) + 1)
    await expectGapFree(zombie)
  })

  it("fails with FencedOut, writing nothing, once another owner raised the fence", async () => {
    const actor = await channel()
    const before = (await events(actor.id)).length
    await h.raiseFence(2)
    try {
      const outcome = await actor.batchExit([post(alice, "too late")])
      expect(outcome._tag).toBe("Failure")
      expect(String((outcome as any).cause)).toMatch(/FencedOut/)
      expect((await events(actor.id)).length).toBe(before)
      // The state is untouched: the batch can be retried by the new owner.
      expect(actor.state?.channel?.last_seq).toBe(before)
      const successor = h.actor(actor.id)
      expect(successor.epoch).toBe(2)
      expect((await successor.send(post(alice, "new owner"))).seq).toBe(before + 1)
    } finally {
      if (h.epoch < 2) await h.raiseFence(2)
    }
  })
})

it("keeps MessageTs format for every ts it hands out", async () => {
  const rows = await h.query<{ ts: string }>("SELECT ts FROM messages")
  for (const r of rows) expect(MessageTs.isTs(r.ts)).toBe(true)
})
