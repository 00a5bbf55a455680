// The conversation read methods end to end over PostgreSQL: conversations.list, .info,
// .members, .history, .replies, users.conversations, chat.getPermalink, reactions.get.
// Users, workspaces and tokens come from the accounts methods (accountsHarness.ts);
// conversations are seeded in SQL as the channel actor leaves them.
//
// Covers cursor pagination (no duplicates, no gaps, empty next_cursor at the end),
// Slack's latest/oldest/inclusive, thread and deleted exclusion, invariant 5 for every
// method (another workspace, a private channel or DM one is not in, a guest on a public
// channel, a revoked token), and bot scopes.

import { Effect, Exit } from "effect"
import * as Cause from "effect/Cause"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as ConversationsReadMethods from "../../src/api/conversationsRead.ts"
import * as Tokens from "../../src/auth/Tokens.ts"
import * as Ids from "../../src/domain/Ids.ts"
import { Accounts } from "../../src/store/Accounts.ts"
import * as ConversationsRead from "../../src/store/ConversationsRead.ts"
import type { ApiHandler } from "../../src/transport/ApiMethod.ts"
import { insertChannel, insertMembers, insertMessages, insertReaction, markRead, tsOf } from "../store/conversationsSeed.ts"
import { startHarness, type Answer, type Harness } from "./accountsHarness.ts"

interface Who {
  readonly userId: string
  readonly token: string
}

let h: Harness
let methods: ReadonlyMap<string, ApiHandler>
let teamN: string
let owner: Who, alice: Who, bob: Who, carol: Who, gus: Who, southOwner: Who
let botMember: Who, botReadOnly: Who, botOutside: Who

const general = Ids.make("C")
const random = Ids.make("C")
const secret = Ids.make("C")
const lounge = Ids.make("C")
const old = Ids.make("C")
const mpim = Ids.make("C")
const dmAB = Ids.make("D")
const dmBC = Ids.make("D")
const southChannel = Ids.make("C")
const allTypes = "public_channel,private_channel,mpim,im"

/**
 * `general`'s top-level timeline, newest first: 1..25 without the deleted 13 and 20,
 * with the broadcast reply 5.000004, and the join message 0.000001 last.
 */
const generalTimeline = (() => {
  const out: Array<string> = []
  for (let s = 25; s >= 1; s--) {
    if (s === 13 || s === 20) continue
    out.push(tsOf(s))
    if (s === 5) out.splice(out.length - 1, 0, tsOf(5, 4))
  }
  out.push(tsOf(0, 1))
  return out
})()
const thread = [tsOf(5), tsOf(5, 1), tsOf(5, 2), tsOf(5, 3), tsOf(5, 4), tsOf(5, 5), tsOf(5, 7)]

async function call(method: string, args: Record<string, unknown> = {}, token?: string): Promise<Answer> {
  const handler = methods.get(method)
  if (handler === undefined) throw new Error(`no method ${method}`)
  const exit = await Effect.runPromiseExit(handler({ method, requestId: "test", args, token, headers: {} }))
  if (Exit.isSuccess(exit)) return { ok: true, ...exit.value }
  const failure = Cause.failureOption(exit.cause)
  if (failure._tag === "Some") return { ok: false, error: failure.value.code, ...(failure.value.detail ?? {}) }
  throw new Error(`${method} died: ${Cause.pretty(exit.cause)}`)
}

async function ok(method: string, args: Record<string, unknown>, who: Who): Promise<Answer> {
  const answer = await call(method, args, who.token)
  if (!answer.ok) throw new Error(`${method} ${JSON.stringify(args)} failed: ${answer.error}`)
  return answer
}

async function member(email: string, role: "member" | "guest"): Promise<Who> {
  await h.signup(email)
  expect(await h.call("admin.users.invite", { email, role }, owner.token)).toMatchObject({ ok: true })
  const { token, userId } = await h.login(email, teamN)
  return { userId, token }
}

async function bot(scopes: Array<string>): Promise<Who> {
  const userId = Ids.make("U")
  const botId = Ids.make("B")
  const token = Tokens.generate("bot")
  await h.runtime.runPromise(Effect.gen(function*() {
    const accounts = yield* Accounts
    yield* accounts.addBotUser({ teamId: teamN, userId, botId, name: "Reader Bot", handle: "reader" })
    yield* accounts.issueToken({ id: token.id, hash: token.hash, userId, teamId: teamN, kind: "bot", appId: Ids.make("A"), botId, scopes })
  }))
  return { userId, token: token.secret }
}

/** Every page of a cursor-paginated method, with the answers themselves. */
async function allPages(method: string, args: Record<string, unknown>, who: Who, field: string) {
  const items: Array<any> = []
  const pages: Array<Answer> = []
  let cursor: string | undefined
  do {
    const page = await ok(method, { ...args, ...(cursor === undefined ? {} : { cursor }) }, who)
    pages.push(page)
    items.push(...page[field])
    cursor = page.response_metadata.next_cursor || undefined
    if (pages.length > 100) throw new Error("does not end")
  } while (cursor !== undefined)
  return { items, pages }
}

const idsOf = (channels: ReadonlyArray<{ id: string }>) => channels.map((c) => c.id).sort()
const tsOfAll = (messages: ReadonlyArray<{ ts: string }>) => messages.map((m) => m.ts)

beforeAll(async () => {
  h = await startHarness()
  const o = await h.owner("owner@north.test", "north")
  teamN = o.teamId
  owner = o
  const s = await h.owner("owner@south.test", "south")
  southOwner = s
  alice = await member("alice@north.test", "member")
  bob = await member("bob@north.test", "member")
  carol = await member("carol@north.test", "member")
  gus = await member("gus@north.test", "guest")
  botMember = await bot(["channels:read", "channels:history", "reactions:read"])
  botReadOnly = await bot(["channels:read"])
  botOutside = await bot(["channels:read", "channels:history", "groups:read", "groups:history", "reactions:read"])
  methods = await h.runtime.runPromise(ConversationsReadMethods.make.pipe(Effect.provide(ConversationsRead.layer)))

  await h.runtime.runPromise(Effect.gen(function*() {
    const N = teamN
    yield* insertChannel({ id: general, team_id: N, creator: owner.userId, name: "general", topic: "Company-wide", created_at: 1_700_000_000_000 })
    yield* insertChannel({ id: random, team_id: N, creator: alice.userId, name: "random" })
    yield* insertChannel({ id: secret, team_id: N, creator: alice.userId, name: "secret", is_private: true })
    yield* insertChannel({ id: lounge, team_id: N, creator: alice.userId, name: "lounge" })
    yield* insertChannel({ id: old, team_id: N, creator: bob.userId, name: "old", is_archived: true })
    yield* insertChannel({ id: mpim, team_id: N, creator: alice.userId, name: "mpdm-alice--bob--carol-1", is_mpim: true, is_private: true })
    yield* insertChannel({ id: dmAB, team_id: N, creator: alice.userId, name: null, is_im: true, is_private: true })
    yield* insertChannel({ id: dmBC, team_id: N, creator: bob.userId, name: null, is_im: true, is_private: true })
    yield* insertChannel({ id: southChannel, team_id: s.teamId, creator: s.userId, name: "general" })

    yield* insertMembers(general, [owner.userId, alice.userId, bob.userId, botMember.userId, botReadOnly.userId])
    yield* insertMembers(random, [alice.userId])
    yield* insertMembers(secret, [alice.userId, bob.userId])
    yield* insertMembers(lounge, [alice.userId, gus.userId])
    yield* insertMembers(old, [bob.userId])
    yield* insertMembers(mpim, [alice.userId, bob.userId, carol.userId])
    yield* insertMembers(dmAB, [alice.userId, bob.userId])
    yield* insertMembers(dmBC, [bob.userId, carol.userId])
    yield* insertMembers(southChannel, [s.userId])

    const g = (ts: string, extra: Record<string, unknown> = {}) => ({ channel_id: general, team_id: N, ts, user_id: bob.userId, ...extra })
    const messages = []
    for (let sec = 1; sec <= 25; sec++) {
      messages.push(g(tsOf(sec), { deleted: sec === 13 || sec === 20, ...(sec === 24 ? { user_id: alice.userId } : {}) }))
      if (sec === 5) {
        for (let r = 1; r <= 7; r++) {
          messages.push(g(tsOf(5, r), { thread_ts: tsOf(5), reply_broadcast: r === 4, deleted: r === 6, user_id: r % 2 === 0 ? alice.userId : bob.userId }))
        }
      }
    }
    // A deleted thread parent whose reply remains: a tombstone in replies, nothing in history.
    messages.push(g(tsOf(30), { deleted: true }), g(tsOf(30, 1), { thread_ts: tsOf(30) }))
    // A join message, the oldest: in the timeline, but it cannot be threaded.
    messages.push(g(tsOf(0, 1), { subtype: "channel_join" }))
    yield* insertMessages(messages)
    yield* insertMessages([1, 2, 3].map((sec) => ({ channel_id: secret, team_id: N, ts: tsOf(sec), user_id: alice.userId })))
    yield* insertMessages([1, 2].map((sec) => ({ channel_id: dmAB, team_id: N, ts: tsOf(sec), user_id: bob.userId })))
    yield* insertMessages([1, 2].map((sec) => ({ channel_id: dmBC, team_id: N, ts: tsOf(sec), user_id: carol.userId })))
    yield* insertMessages([1].map((sec) => ({ channel_id: lounge, team_id: N, ts: tsOf(sec), user_id: gus.userId })))
    yield* insertMessages([1, 2].map((sec) => ({ channel_id: southChannel, team_id: s.teamId, ts: tsOf(sec), user_id: s.userId })))
    yield* insertReaction(general, tsOf(10), "tada", alice.userId, 1)
    yield* insertReaction(general, tsOf(10), "tada", bob.userId, 2)
    yield* insertReaction(general, tsOf(10), "eyes", carol.userId, 3)
    yield* insertReaction(secret, tsOf(1), "lock", alice.userId, 4)
    yield* markRead(general, alice.userId, tsOf(22), 0)
  }))
})
afterAll(async () => {
  await h?.close()
})

describe("conversations.history", () => {
  it("pages the top-level timeline newest first with cursors: no duplicates, no gaps, an empty cursor at the end", async () => {
    const { items, pages } = await allPages("conversations.history", { channel: general, limit: 5 }, alice, "messages")
    expect(tsOfAll(items)).toEqual(generalTimeline)
    expect(pages.map((p) => p.messages.length)).toEqual([5, 5, 5, 5, 5])
    expect(pages.map((p) => p.has_more)).toEqual([true, true, true, true, false])
    expect(pages[4]?.response_metadata).toEqual({ next_cursor: "" })
    expect(pages[0]).toMatchObject({ pin_count: 0 })
  })

  it("answers 100 by default, everything here in one page", async () => {
    const page = await ok("conversations.history", { channel: general }, alice)
    expect(tsOfAll(page.messages)).toEqual(generalTimeline)
    expect(page.has_more).toBe(false)
    expect(page.response_metadata.next_cursor).toBe("")
    const exact = await ok("conversations.history", { channel: general, limit: generalTimeline.length }, alice)
    expect(exact.has_more).toBe(false)
    expect(exact.response_metadata.next_cursor).toBe("")
  })

  it("shows thread parents and broadcast replies, never other replies or deleted messages", async () => {
    const { messages } = await ok("conversations.history", { channel: general }, alice)
    const parent = messages.find((m: any) => m.ts === tsOf(5))
    expect(parent).toMatchObject({ thread_ts: tsOf(5), reply_count: 7, type: "message", user: bob.userId })
    expect(messages.find((m: any) => m.ts === tsOf(5, 4))).toMatchObject({ subtype: "thread_broadcast", thread_ts: tsOf(5) })
    for (const hidden of [tsOf(5, 1), tsOf(5, 6), tsOf(13), tsOf(20), tsOf(30), tsOf(30, 1)]) {
      expect(messages.some((m: any) => m.ts === hidden)).toBe(false)
    }
    expect(messages.find((m: any) => m.ts === tsOf(10)).reactions).toEqual([
      { name: "tada", users: [alice.userId, bob.userId], count: 2 },
      { name: "eyes", users: [carol.userId], count: 1 }
    ])
    expect(typeof parent.seq).toBe("number")
  })

  it("follows Slack's latest, oldest and inclusive", async () => {
    const window = async (args: Record<string, unknown>) =>
      tsOfAll((await ok("conversations.history", { channel: general, ...args }, alice)).messages)
    expect(await window({ latest: tsOf(10), oldest: tsOf(5) })).toEqual([tsOf(9), tsOf(8), tsOf(7), tsOf(6), tsOf(5, 4)])
    expect(await window({ latest: tsOf(10), oldest: tsOf(5), inclusive: true })).toEqual([tsOf(10), tsOf(9), tsOf(8), tsOf(7), tsOf(6), tsOf(5, 4), tsOf(5)])
    expect(await window({ latest: tsOf(10), oldest: tsOf(5), inclusive: "1" })).toHaveLength(7)
    expect(await window({ latest: tsOf(10), oldest: tsOf(5), inclusive: "0" })).toHaveLength(5)
    expect(await window({ latest: tsOf(3) })).toEqual([tsOf(2), tsOf(1), tsOf(0, 1)])
    expect(await window({ latest: tsOf(3), inclusive: "true" })).toEqual([tsOf(3), tsOf(2), tsOf(1), tsOf(0, 1)])
    // Loose forms: whole seconds, fewer decimals, JSON numbers.
    expect(await window({ latest: "1700000003", oldest: "1700000001" })).toEqual([tsOf(2)])
    expect(await window({ latest: 1700000003.5, oldest: "1700000001.0" })).toEqual([tsOf(3), tsOf(2)])
    // A bound on a deleted message, an empty window, a window in the future.
    expect(await window({ latest: tsOf(13), oldest: tsOf(11), inclusive: true })).toEqual([tsOf(12), tsOf(11)])
    expect(await window({ latest: tsOf(5), oldest: tsOf(10) })).toEqual([])
    expect(await window({ oldest: tsOf(100) })).toEqual([])
    expect(await window({ latest: "0" })).toEqual([])
    expect(await window({ latest: "", oldest: "" })).toEqual(generalTimeline)
  })

  it("starts from `oldest` when only `oldest` is given, pages forward, each page newest first", async () => {
    const first = await ok("conversations.history", { channel: general, oldest: tsOf(20), limit: 2 }, alice)
    expect(tsOfAll(first.messages)).toEqual([tsOf(22), tsOf(21)])
    expect(first.has_more).toBe(true)
    const { items, pages } = await allPages("conversations.history", { channel: general, oldest: tsOf(20), limit: 2 }, alice, "messages")
    expect(pages.map((p) => tsOfAll(p.messages))).toEqual([[tsOf(22), tsOf(21)], [tsOf(24), tsOf(23)], [tsOf(25)]])
    expect(items).toHaveLength(5)
    const inclusive = await ok("conversations.history", { channel: general, oldest: tsOf(19), inclusive: 1, limit: 2 }, alice)
    expect(tsOfAll(inclusive.messages)).toEqual([tsOf(21), tsOf(19)])
  })

  it("pages inside a window without leaving it", async () => {
    const { items } = await allPages("conversations.history", { channel: general, latest: tsOf(12), oldest: tsOf(3), inclusive: true, limit: 3 }, alice, "messages")
    expect(tsOfAll(items)).toEqual(generalTimeline.filter((ts) => ts >= tsOf(3) && ts <= tsOf(12)))
  })

  it("refuses bad timestamps and cursors", async () => {
    expect(await call("conversations.history", { channel: general, latest: "yesterday" }, alice.token)).toMatchObject({ error: "invalid_ts_latest" })
    expect(await call("conversations.history", { channel: general, oldest: "-5" }, alice.token)).toMatchObject({ error: "invalid_ts_oldest" })
    expect(await call("conversations.history", { channel: general, cursor: "bm9wZQ" }, alice.token)).toMatchObject({ error: "invalid_cursor" })
    const secretPage = await ok("conversations.history", { channel: secret, limit: 1 }, alice)
    expect(secretPage.response_metadata.next_cursor).not.toBe("")
    // A cursor of one channel is not one of another.
    expect(await call("conversations.history", { channel: general, cursor: secretPage.response_metadata.next_cursor }, alice.token))
      .toMatchObject({ error: "invalid_cursor" })
    const list = await ok("conversations.list", { limit: 1 }, alice)
    expect(await call("conversations.history", { channel: general, cursor: list.response_metadata.next_cursor }, alice.token))
      .toMatchObject({ error: "invalid_cursor" })
  })

  it("lets a member of the workspace read a public channel they are not in", async () => {
    const page = await ok("conversations.history", { channel: random }, carol)
    expect(page.messages).toEqual([])
    expect(tsOfAll((await ok("conversations.history", { channel: general }, carol)).messages)).toEqual(generalTimeline)
  })
})

describe("conversations.replies", () => {
  it("answers the parent first, then the replies oldest first, without deleted ones", async () => {
    const page = await ok("conversations.replies", { channel: general, ts: tsOf(5) }, alice)
    expect(tsOfAll(page.messages)).toEqual(thread)
    expect(page.has_more).toBe(false)
    expect(page.response_metadata.next_cursor).toBe("")
    expect(page.messages[0]).toMatchObject({ reply_count: 7, thread_ts: tsOf(5) })
    expect(page.messages[1]).toMatchObject({ thread_ts: tsOf(5), user: bob.userId })
  })

  it("pages with cursors, the parent once", async () => {
    const { items, pages } = await allPages("conversations.replies", { channel: general, ts: tsOf(5), limit: 3 }, alice, "messages")
    expect(tsOfAll(items)).toEqual(thread)
    expect(pages.map((p) => p.has_more)).toEqual([true, true, false])
    const single = await allPages("conversations.replies", { channel: general, ts: tsOf(5), limit: 1 }, alice, "messages")
    expect(tsOfAll(single.items)).toEqual(thread)
  })

  it("takes the ts of any message of the thread, and of an unthreaded message", async () => {
    expect(tsOfAll((await ok("conversations.replies", { channel: general, ts: tsOf(5, 2) }, alice)).messages)).toEqual(thread)
    const lone = await ok("conversations.replies", { channel: general, ts: tsOf(7) }, alice)
    expect(tsOfAll(lone.messages)).toEqual([tsOf(7)])
  })

  it("applies latest, oldest and inclusive to the replies", async () => {
    const page = await ok("conversations.replies", { channel: general, ts: tsOf(5), oldest: tsOf(5, 2), latest: tsOf(5, 5) }, alice)
    expect(tsOfAll(page.messages)).toEqual([tsOf(5), tsOf(5, 3), tsOf(5, 4)])
    const inclusive = await ok("conversations.replies", { channel: general, ts: tsOf(5), oldest: tsOf(5, 2), latest: tsOf(5, 5), inclusive: true }, alice)
    expect(tsOfAll(inclusive.messages)).toEqual([tsOf(5), tsOf(5, 2), tsOf(5, 3), tsOf(5, 4), tsOf(5, 5)])
  })

  it("shows a deleted parent with replies as Slack's tombstone", async () => {
    const page = await ok("conversations.replies", { channel: general, ts: tsOf(30) }, alice)
    expect(page.messages[0]).toMatchObject({ ts: tsOf(30), subtype: "tombstone", text: "This message was deleted." })
    expect(tsOfAll(page.messages)).toEqual([tsOf(30), tsOf(30, 1)])
  })

  it("answers thread_not_found when ts is not a message (or a deleted one, or an unthreadable one)", async () => {
    for (const ts of [tsOf(99), tsOf(13), tsOf(5, 6), tsOf(0, 1), "not-a-ts", "1700000005.0000001"]) {
      expect(await call("conversations.replies", { channel: general, ts }, alice.token)).toMatchObject({ ok: false, error: "thread_not_found" })
    }
    // The thread's ts in another channel is not this channel's thread.
    expect(await call("conversations.replies", { channel: random, ts: tsOf(5) }, alice.token)).toMatchObject({ error: "thread_not_found" })
  })
})

describe("conversations.list", () => {
  it("lists the workspace's public channels to a member, joined or not", async () => {
    const answer = await ok("conversations.list", {}, owner)
    expect(idsOf(answer.channels)).toEqual([general, lounge, old, random].sort())
    const byId = new Map<string, any>(answer.channels.map((c: any) => [c.id, c]))
    expect(byId.get(general)).toMatchObject({
      name: "general", is_channel: true, is_private: false, is_im: false, is_mpim: false, is_member: true, is_archived: false,
      is_general: false, created: 1_700_000_000, creator: owner.userId, num_members: 5,
      topic: { value: "Company-wide", creator: "", last_set: 0 }
    })
    expect(typeof byId.get(general).seq).toBe("number")
    expect(byId.get(random)).toMatchObject({ is_member: false, num_members: 1 })
    expect(byId.get(old)).toMatchObject({ is_archived: true })
    expect(answer.response_metadata).toEqual({ next_cursor: "" })
  })

  it("adds private channels, group DMs and DMs the caller is in, by type", async () => {
    expect(idsOf((await ok("conversations.list", { types: allTypes }, alice)).channels)).toEqual(
      [general, random, lounge, old, secret, mpim, dmAB].sort()
    )
    expect(idsOf((await ok("conversations.list", { types: "private_channel,im" }, carol)).channels)).toEqual([dmBC])
    const ims = (await ok("conversations.list", { types: "im" }, alice)).channels
    expect(ims).toHaveLength(1)
    expect(ims[0]).toMatchObject({ id: dmAB, is_im: true, user: bob.userId, is_private: true })
    expect((await ok("conversations.list", { types: "mpim" }, carol)).channels[0]).toMatchObject({ id: mpim, is_mpim: true })
    expect(idsOf((await ok("conversations.list", { exclude_archived: true }, alice)).channels)).toEqual([general, random, lounge].sort())
  })

  it("shows a guest only the channels they are in", async () => {
    expect(idsOf((await ok("conversations.list", { types: allTypes }, gus)).channels)).toEqual([lounge])
  })

  it("pages with cursors: no duplicates, no gaps, an empty cursor at the end", async () => {
    const { items, pages } = await allPages("conversations.list", { types: allTypes, limit: 2 }, alice, "channels")
    expect(items.map((c: any) => c.id)).toEqual([general, random, lounge, old, secret, mpim, dmAB].sort())
    expect(pages).toHaveLength(4)
    expect(pages.slice(0, 3).every((p) => p.response_metadata.next_cursor !== "")).toBe(true)
  })

  it("refuses unknown types and bad cursors", async () => {
    expect(await call("conversations.list", { types: "public_channel,dm" }, alice.token)).toMatchObject({ error: "invalid_types" })
    expect(await call("conversations.list", { cursor: "%%%" }, alice.token)).toMatchObject({ error: "invalid_cursor" })
  })
})

describe("conversations.info", () => {
  it("describes a public channel to a non-member, without their read state", async () => {
    const { channel } = await ok("conversations.info", { channel: random }, owner)
    expect(channel).toMatchObject({ id: random, name: "random", is_member: false })
    expect(channel).not.toHaveProperty("last_read")
    expect(channel).not.toHaveProperty("num_members")
    expect((await ok("conversations.info", { channel: random, include_num_members: true }, owner)).channel.num_members).toBe(1)
  })

  it("gives a member their read marker and unread counts (others' messages for display)", async () => {
    const { channel } = await ok("conversations.info", { channel: general }, alice)
    // After 22: 23, 24 (alice's own), 25.
    expect(channel).toMatchObject({ last_read: tsOf(22), unread_count: 3, unread_count_display: 2, is_member: true })
  })

  it("describes a DM with the other user", async () => {
    expect((await ok("conversations.info", { channel: dmAB }, bob)).channel).toMatchObject({ id: dmAB, is_im: true, user: alice.userId })
  })

  it("answers channel_not_found for an unknown or malformed id", async () => {
    for (const channel of [Ids.make("C"), "general", "U123", "#general"]) {
      expect(await call("conversations.info", { channel }, alice.token)).toMatchObject({ error: "channel_not_found" })
    }
  })
})

describe("conversations.members", () => {
  it("pages members by id with cursors", async () => {
    const { items, pages } = await allPages("conversations.members", { channel: general, limit: 2 }, carol, "members")
    expect(items).toEqual([owner.userId, alice.userId, bob.userId, botMember.userId, botReadOnly.userId].sort())
    expect(pages).toHaveLength(3)
    expect(pages[2]?.response_metadata.next_cursor).toBe("")
    expect((await ok("conversations.members", { channel: dmAB }, alice)).members).toEqual([alice.userId, bob.userId].sort())
  })
})

describe("users.conversations", () => {
  it("lists the caller's own conversations by default", async () => {
    expect(idsOf((await ok("users.conversations", {}, alice)).channels)).toEqual([general, random, lounge].sort())
    const { items } = await allPages("users.conversations", { types: allTypes, limit: 3 }, alice, "channels")
    expect(items.map((c: any) => c.id)).toEqual([general, random, lounge, secret, mpim, dmAB].sort())
  })

  it("shows another user's conversations only as far as the caller may see them", async () => {
    // bob is in general, secret, old, mpim, dmAB, dmBC.
    expect(idsOf((await ok("users.conversations", { user: bob.userId, types: allTypes }, alice)).channels)).toEqual(
      [general, secret, old, mpim, dmAB].sort()
    )
    expect(idsOf((await ok("users.conversations", { user: bob.userId, types: allTypes }, carol)).channels)).toEqual(
      [general, old, mpim, dmBC].sort()
    )
    expect(idsOf((await ok("users.conversations", { user: alice.userId, types: allTypes }, gus)).channels)).toEqual([lounge])
    const dm = (await ok("users.conversations", { user: bob.userId, types: "im" }, carol)).channels[0]
    expect(dm).toMatchObject({ id: dmBC, user: bob.userId })
  })

  it("answers user_not_found for a user outside the workspace", async () => {
    expect(await call("users.conversations", { user: southOwner.userId }, alice.token)).toMatchObject({ error: "user_not_found" })
    expect(await call("users.conversations", { user: "nobody" }, alice.token)).toMatchObject({ error: "user_not_found" })
  })
})

describe("chat.getPermalink and reactions.get", () => {
  it("links a message, and a reply with its thread", async () => {
    expect(await ok("chat.getPermalink", { channel: general, message_ts: tsOf(10) }, carol)).toMatchObject({
      channel: general,
      permalink: `http://chorus.test/archives/${general}/p1700000010000000`
    })
    expect((await ok("chat.getPermalink", { channel: general, message_ts: tsOf(5, 2) }, carol)).permalink).toBe(
      `http://chorus.test/archives/${general}/p1700000005000002?thread_ts=${tsOf(5)}&cid=${general}`
    )
    for (const message_ts of [tsOf(13), tsOf(99), "x"]) {
      expect(await call("chat.getPermalink", { channel: general, message_ts }, carol.token)).toMatchObject({ error: "message_not_found" })
    }
  })

  it("answers a message's reactions", async () => {
    const answer = await ok("reactions.get", { channel: general, timestamp: tsOf(10), full: true }, carol)
    expect(answer).toMatchObject({ type: "message", channel: general })
    expect(answer.message).toMatchObject({ ts: tsOf(10), type: "message", permalink: expect.stringContaining("/archives/") })
    expect(answer.message.reactions).toEqual([
      { name: "tada", users: [alice.userId, bob.userId], count: 2 },
      { name: "eyes", users: [carol.userId], count: 1 }
    ])
    expect((await ok("reactions.get", { channel: general, timestamp: tsOf(11) }, carol)).message).not.toHaveProperty("reactions")
    expect(await call("reactions.get", { channel: general, timestamp: tsOf(13) }, carol.token)).toMatchObject({ error: "message_not_found" })
    expect(await call("reactions.get", { channel: general, timestamp: "soon" }, carol.token)).toMatchObject({ error: "bad_timestamp" })
    expect(await call("reactions.get", {}, carol.token)).toMatchObject({ error: "no_item_specified" })
  })
})

describe("invariant 5: nobody reads what they are not a member of", () => {
  /** Every method that names a conversation, with arguments that would succeed for a member. */
  const channelMethods = (channel: string): Array<[string, Record<string, unknown>]> => [
    ["conversations.info", { channel, include_num_members: true }],
    ["conversations.members", { channel }],
    ["conversations.history", { channel }],
    ["conversations.replies", { channel, ts: tsOf(1) }],
    ["chat.getPermalink", { channel, message_ts: tsOf(1) }],
    ["reactions.get", { channel, timestamp: tsOf(1) }]
  ]

  const forbidden: Array<[string, () => Who, string]> = [
    ["an outsider from another workspace, on a public channel", () => southOwner, general],
    ["an outsider from another workspace, on a private channel", () => southOwner, secret],
    ["a member of the workspace, on another workspace's channel", () => alice, southChannel],
    ["a non-member, on a private channel", () => carol, secret],
    ["the workspace owner, on a private channel they are not in", () => owner, secret],
    ["a third person, on a DM of two others", () => carol, dmAB],
    ["the workspace owner, on a DM of two others", () => owner, dmBC],
    ["a guest, on a public channel they are not in", () => gus, general],
    ["a guest, on a private channel", () => gus, secret],
    ["a bot, on a private channel it is not in", () => botOutside, secret]
  ]

  for (const [label, who, channel] of forbidden) {
    it(`answers channel_not_found to ${label}, from every method`, async () => {
      for (const [method, args] of channelMethods(channel)) {
        const answer = await call(method, args, who().token)
        expect({ method, answer }).toEqual({ method, answer: { ok: false, error: "channel_not_found" } })
      }
    })
  }

  it("never lists what the caller may not see", async () => {
    const cases: Array<[Who, ReadonlyArray<string>]> = [
      [southOwner, [general, random, secret, lounge, old, mpim, dmAB, dmBC]],
      [carol, [secret, dmAB]],
      [owner, [secret, mpim, dmAB, dmBC]],
      [gus, [general, random, secret, old, mpim, dmAB, dmBC]]
    ]
    for (const [who, hidden] of cases) {
      const listed = (await ok("conversations.list", { types: allTypes }, who)).channels.map((c: any) => c.id)
      const ofBob = (await call("users.conversations", { user: bob.userId, types: allTypes }, who.token))
      const ofAlice = (await call("users.conversations", { user: alice.userId, types: allTypes }, who.token))
      const seen = [...listed, ...(ofBob.channels ?? []).map((c: any) => c.id), ...(ofAlice.channels ?? []).map((c: any) => c.id)]
      for (const id of hidden) expect(seen).not.toContain(id)
    }
    // The outsider cannot even name the workspace's users.
    expect(await call("users.conversations", { user: bob.userId }, southOwner.token)).toMatchObject({ error: "user_not_found" })
  })

  it("answers token_revoked to a revoked token, not_authed without one, and refuses a token outside any workspace", async () => {
    const { token } = await h.login("alice@north.test", teamN)
    expect((await ok("conversations.history", { channel: secret }, { userId: alice.userId, token })).messages).toHaveLength(3)
    expect(await h.call("auth.revoke", {}, token)).toMatchObject({ ok: true, revoked: true })
    const fresh = await h.signup("nobody@else.test")
    const all: Array<[string, Record<string, unknown>]> = [
      ["conversations.list", { types: allTypes }],
      ["users.conversations", {}],
      ...channelMethods(secret)
    ]
    for (const [method, args] of all) {
      expect({ method, answer: await call(method, args, token) }).toEqual({ method, answer: { ok: false, error: "token_revoked" } })
      expect(await call(method, args, undefined)).toEqual({ ok: false, error: "not_authed" })
      expect(await call(method, args, fresh.token)).toEqual({ ok: false, error: "not_allowed_token_type" })
    }
  })
})

describe("bot scopes", () => {
  it("needs the history scope of the conversation's type to read messages", async () => {
    expect(await call("conversations.history", { channel: general }, botReadOnly.token)).toMatchObject({
      ok: false,
      error: "missing_scope",
      needed: "channels:history"
    })
    expect(await call("conversations.replies", { channel: general, ts: tsOf(5) }, botReadOnly.token)).toMatchObject({ error: "missing_scope" })
    expect(tsOfAll((await ok("conversations.history", { channel: general, limit: 3 }, botMember)).messages)).toEqual(generalTimeline.slice(0, 3))
    expect(tsOfAll((await ok("conversations.replies", { channel: general, ts: tsOf(5) }, botMember)).messages)).toEqual(thread)
  })

  it("reads metadata with the read scope of each requested type", async () => {
    expect(idsOf((await ok("conversations.list", {}, botReadOnly)).channels)).toEqual([general, lounge, old, random].sort())
    expect(await call("conversations.list", { types: "public_channel,private_channel" }, botReadOnly.token)).toMatchObject({
      error: "missing_scope",
      needed: "groups:read"
    })
    expect(await call("users.conversations", { types: "im" }, botReadOnly.token)).toMatchObject({ error: "missing_scope", needed: "im:read" })
    expect((await ok("conversations.info", { channel: general }, botReadOnly)).channel).toMatchObject({ id: general, is_member: true })
    expect((await ok("conversations.members", { channel: general }, botReadOnly)).members).toContain(botReadOnly.userId)
  })

  it("reads only the messages of conversations it is in, as on Slack", async () => {
    expect(await call("conversations.history", { channel: general }, botOutside.token)).toMatchObject({ error: "not_in_channel" })
    expect((await ok("conversations.info", { channel: general }, botOutside)).channel).toMatchObject({ is_member: false })
  })

  it("needs reactions:read for reactions.get", async () => {
    expect(await call("reactions.get", { channel: general, timestamp: tsOf(10) }, botReadOnly.token)).toMatchObject({
      error: "missing_scope",
      needed: "reactions:read"
    })
    expect((await ok("reactions.get", { channel: general, timestamp: tsOf(10) }, botMember)).message.reactions).toHaveLength(2)
  })
})
