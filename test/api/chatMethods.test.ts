// chat.postMessage/.update/.delete/.postEphemeral and reactions.add/.remove through a
// real node with @slack/web-api: Slack's answers and error codes, JSON-string blocks in
// forms, idempotent client_msg_id (invariant 4), threads, DMs by user id, channel names,
// invariant 5, bot scopes, and what the database and NATS see.

import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Ids from "../../src/domain/Ids.ts"
import { postApi, startCluster, type ChorusCluster } from "../support/index.ts"
import { dropStreams, EventTap, slackError, workspace, type Member, type Workspace } from "./channelSupport.ts"

let cluster: ChorusCluster
let url: string
let db: pg.Client
let w: Workspace
let bob: Member
let carol: Member
let outsider: Member
/** A public channel with the owner and bob. */
let general: string
let generalName: string
/** A private channel with the owner only. */
let secret: string

beforeAll(async () => {
  cluster = await startCluster({ nodes: 1, env: { CHORUS_SHARDS: "8", CHORUS_RATE_LIMITS: "off" } })
  url = cluster.nodes[0]!.url
  db = new pg.Client({ connectionString: cluster.databaseUrl })
  await db.connect()
  w = await workspace(cluster, "chatmeth")
  bob = await w.member("bob")
  carol = await w.member("carol")
  outsider = (await workspace(cluster, "chatother")).owner
  generalName = `general-${Date.now().toString(36)}`
  general = (await w.owner.client.conversations.create({ name: generalName })).channel!.id!
  await w.owner.client.conversations.invite({ channel: general, users: bob.userId })
  secret = (await w.owner.client.conversations.create({ name: `secret-${Date.now().toString(36)}`, is_private: true })).channel!.id!
})
afterAll(async () => {
  await db?.end()
  await cluster?.stopAll()
  if (cluster !== undefined) await dropStreams(cluster.name)
})

const row = async (channel: string, ts: string) =>
  (await db.query("SELECT * FROM messages WHERE channel_id = $1 AND ts = $2", [channel, ts])).rows[0]

describe("chat.postMessage", () => {
  it("posts with Slack's answer; blocks and attachments arrive as JSON strings in forms", async () => {
    const blocks = [{ type: "section", text: { type: "mrkdwn", text: "*hello*" } }]
    const attachments = [{ fallback: "f", text: "attached" }]
    const posted = await bob.client.chat.postMessage({ channel: general, text: "hello", blocks, attachments })
    expect(posted).toMatchObject({ ok: true, channel: general, message: { type: "message", text: "hello", user: bob.userId, blocks, attachments } })
    expect(posted.ts).toMatch(/^\d{10}\.\d{6}$/)
    expect(posted.message?.ts).toBe(posted.ts)
    expect(await row(general, posted.ts!)).toMatchObject({ text: "hello", user_id: bob.userId, blocks, attachments })
    // Blocks alone are enough; nothing at all is no_text.
    expect((await bob.client.chat.postMessage({ channel: general, blocks, text: "" })).ok).toBe(true)
    expect(await slackError(bob.client.chat.postMessage({ channel: general, text: "" }))).toBe("no_text")
    expect(await slackError(bob.client.apiCall("chat.postMessage", { channel: general, text: "x", blocks: "{not json" }))).toBe("invalid_blocks")
    expect(await slackError(bob.client.chat.postMessage({ channel: general, text: "x".repeat(40_001) }))).toBe("msg_too_long")
  })

  it("accepts a channel name or a user id (the DM with that user)", async () => {
    const byName = await bob.client.chat.postMessage({ channel: `#${generalName}`, text: "by name" })
    expect(byName.channel).toBe(general)
    const toCarol = await bob.client.chat.postMessage({ channel: carol.userId, text: "psst" })
    expect(toCarol.channel).toMatch(/^D/)
    const again = await bob.client.chat.postMessage({ channel: carol.userId, text: "again" })
    expect(again.channel).toBe(toCarol.channel)
    expect((await carol.client.conversations.open({ users: bob.userId })).channel?.id).toBe(toCarol.channel)
    expect(await slackError(bob.client.chat.postMessage({ channel: "no-such-channel", text: "?" }))).toBe("channel_not_found")
    expect(await slackError(bob.client.chat.postMessage({ channel: outsider.userId, text: "?" }))).toBe("user_not_found")
  })

  it("never reveals a private channel, a DM or another workspace's channel (invariant 5)", async () => {
    expect(await slackError(bob.client.chat.postMessage({ channel: secret, text: "let me in" }))).toBe("channel_not_found")
    expect(await slackError(outsider.client.chat.postMessage({ channel: general, text: "hi" }))).toBe("channel_not_found")
    expect(await slackError(carol.client.chat.postMessage({ channel: general, text: "hi" }))).toBe("not_in_channel")
    const dm = (await bob.client.conversations.open({ users: w.owner.userId })).channel!.id!
    expect(await slackError(carol.client.chat.postMessage({ channel: dm, text: "hi" }))).toBe("channel_not_found")
    expect(await slackError(carol.client.chat.postMessage({ channel: Ids.make("C"), text: "hi" }))).toBe("channel_not_found")
  })

  it("yields one message for a retried client_msg_id (invariant 4)", async () => {
    const clientMsgId = `cm-${Date.now().toString(36)}`
    const first = await postApi(url, "chat.postMessage", { channel: general, text: "once", client_msg_id: clientMsgId }, bob.token)
    const retries = await Promise.all(Array.from({ length: 5 }, () => postApi(url, "chat.postMessage", { channel: general, text: "once", client_msg_id: clientMsgId }, bob.token)))
    for (const r of retries) expect(r).toMatchObject({ ok: true, ts: first["ts"], message: { client_msg_id: clientMsgId } })
    const rows = await db.query("SELECT ts FROM messages WHERE channel_id = $1 AND client_msg_id = $2", [general, clientMsgId])
    expect(rows.rows).toHaveLength(1)
  })

  it("threads replies, with reply_broadcast as thread_broadcast", async () => {
    const parent = await w.owner.client.chat.postMessage({ channel: general, text: "parent" })
    const reply = await bob.client.chat.postMessage({ channel: general, text: "reply", thread_ts: parent.ts! })
    expect(reply.message).toMatchObject({ thread_ts: parent.ts, parent_user_id: w.owner.userId })
    const broadcast = await bob.client.chat.postMessage({ channel: general, text: "for all", thread_ts: parent.ts!, reply_broadcast: true })
    expect(broadcast.message).toMatchObject({ subtype: "thread_broadcast", thread_ts: parent.ts })
    expect(await row(general, parent.ts!)).toMatchObject({ reply_count: 2, reply_users: [bob.userId], latest_reply: broadcast.ts })
    expect(await slackError(bob.client.chat.postMessage({ channel: general, text: "?", thread_ts: "1000000000.000001" }))).toBe("thread_not_found")
    expect(await slackError(bob.client.chat.postMessage({ channel: general, text: "?", thread_ts: "yesterday" }))).toBe("invalid_thread_ts")
  })
})

describe("chat.update and chat.delete", () => {
  it("lets the author edit and delete; others get cant_update_message / cant_delete_message", async () => {
    const posted = await bob.client.chat.postMessage({ channel: general, text: "draft" })
    const updated = await bob.client.chat.update({ channel: general, ts: posted.ts!, text: "final" })
    expect(updated).toMatchObject({ ok: true, channel: general, ts: posted.ts, text: "final", message: { text: "final", edited: { user: bob.userId } } })
    expect(await slackError(w.owner.client.chat.update({ channel: general, ts: posted.ts!, text: "mine now" }))).toBe("cant_update_message")
    expect(await slackError(carol.client.chat.delete({ channel: general, ts: posted.ts! }))).toBe("not_in_channel")
    const mine = await w.owner.client.chat.postMessage({ channel: general, text: "owner's" })
    expect(await slackError(bob.client.chat.delete({ channel: general, ts: mine.ts! }))).toBe("cant_delete_message")
    // The workspace owner may delete anyone's message.
    expect(await w.owner.client.chat.delete({ channel: general, ts: posted.ts! })).toMatchObject({ ok: true, channel: general, ts: posted.ts })
    expect(await slackError(bob.client.chat.update({ channel: general, ts: posted.ts!, text: "back" }))).toBe("message_not_found")
    expect(await slackError(bob.client.chat.delete({ channel: general, ts: "1000000000.000001" }))).toBe("message_not_found")
    expect(await row(general, posted.ts!)).toMatchObject({ deleted: true, text: "" })
  })
})

describe("chat.postEphemeral", () => {
  it("publishes to the recipient only, persists nothing, and answers message_ts", async () => {
    const tap = await EventTap.open(cluster.name, `evt.user.${bob.userId}`)
    try {
      const answer = await w.owner.client.chat.postEphemeral({ channel: general, user: bob.userId, text: "only you" })
      expect(answer.message_ts).toMatch(/^\d{10}\.\d{6}$/)
      await tap.waitFor((events) => events.some((e) => e["is_ephemeral"] === true))
      expect(tap.events.find((e) => e["is_ephemeral"] === true)).toMatchObject({ type: "message", channel: general, user: w.owner.userId, text: "only you", ts: answer.message_ts })
      expect((await db.query("SELECT 1 FROM messages WHERE channel_id = $1 AND ts = $2", [general, answer.message_ts])).rows).toHaveLength(0)
      expect(await slackError(w.owner.client.chat.postEphemeral({ channel: general, user: carol.userId, text: "x" }))).toBe("user_not_in_channel")
      expect(await slackError(carol.client.chat.postEphemeral({ channel: secret, user: w.owner.userId, text: "x" }))).toBe("channel_not_found")
    } finally {
      await tap.close()
    }
  })
})

describe("reactions.add and reactions.remove", () => {
  it("adds and removes with Slack's errors", async () => {
    const posted = await w.owner.client.chat.postMessage({ channel: general, text: "react" })
    expect((await bob.client.reactions.add({ channel: general, timestamp: posted.ts!, name: "thumbsup" })).ok).toBe(true)
    expect(await slackError(bob.client.reactions.add({ channel: general, timestamp: posted.ts!, name: "thumbsup" }))).toBe("already_reacted")
    expect(await slackError(bob.client.reactions.add({ channel: general, timestamp: posted.ts!, name: "no spaces" }))).toBe("invalid_name")
    expect(await slackError(bob.client.reactions.add({ channel: general, timestamp: "1000000000.000001", name: "tada" }))).toBe("message_not_found")
    expect(await slackError(bob.client.apiCall("reactions.add", { name: "tada" }))).toBe("no_item_specified")
    expect(await slackError(carol.client.reactions.add({ channel: secret, timestamp: posted.ts!, name: "tada" }))).toBe("channel_not_found")
    const rows = await db.query("SELECT name, user_id FROM reactions WHERE channel_id = $1 AND message_ts = $2", [general, posted.ts])
    expect(rows.rows).toEqual([{ name: "thumbsup", user_id: bob.userId }])
    expect((await bob.client.reactions.remove({ channel: general, timestamp: posted.ts!, name: "thumbsup" })).ok).toBe(true)
    expect(await slackError(bob.client.reactions.remove({ channel: general, timestamp: posted.ts!, name: "thumbsup" }))).toBe("no_reaction")
  })
})

describe("bot tokens", () => {
  it("post with chat:write as themselves (bot_id), in channels they are in", async () => {
    const bot = await w.bot(["chat:write"])
    const mute = await w.bot(["channels:read"])
    expect(await slackError(mute.client.chat.postMessage({ channel: general, text: "hi" }))).toBe("missing_scope")
    expect(await slackError(bot.client.chat.postMessage({ channel: general, text: "hi" }))).toBe("not_in_channel")
    await w.owner.client.conversations.invite({ channel: general, users: bot.userId })
    const posted = await bot.client.chat.postMessage({ channel: general, text: "beep", username: "Robo", icon_emoji: ":robot_face:" })
    expect(posted.message).toMatchObject({ user: bot.userId, bot_id: expect.stringMatching(/^B/), username: "Robo", icons: { emoji: ":robot_face:" } })
    expect(await slackError(bot.client.reactions.add({ channel: general, timestamp: posted.ts!, name: "robot_face" }))).toBe("missing_scope")
    // To a user: the app's DM with them, with chat:write alone (as on Slack).
    const dm = await bot.client.chat.postMessage({ channel: bob.userId, text: "hello from the app" })
    expect(dm.channel).toMatch(/^D/)
    expect(await slackError(bot.client.conversations.open({ users: bob.userId }))).toBe("missing_scope")
  })
})

describe("events", () => {
  it("publishes message, edit, reaction and delete events in seq order", async () => {
    const tap = await EventTap.open(cluster.name, `evt.ch.${general}`)
    try {
      const posted = await bob.client.chat.postMessage({ channel: general, text: "watch me" })
      await bob.client.chat.update({ channel: general, ts: posted.ts!, text: "watched" })
      await w.owner.client.reactions.add({ channel: general, timestamp: posted.ts!, name: "eyes" })
      await bob.client.chat.delete({ channel: general, ts: posted.ts! })
      await tap.waitFor((events) => events.some((e) => e["subtype"] === "message_deleted"))
      const kinds = tap.events.map((e) => (e["type"] === "message" ? `message/${e["subtype"] ?? ""}` : e["type"]))
      expect(kinds).toEqual(["message/", "message/message_changed", "reaction_added", "message/message_deleted"])
      const seqs = tap.events.map((e) => e["seq"] as number)
      expect(seqs).toEqual([seqs[0], seqs[0]! + 1, seqs[0]! + 2, seqs[0]! + 3])
      const stored = await db.query("SELECT seq, event FROM channel_events WHERE channel_id = $1 AND seq >= $2 ORDER BY seq", [general, seqs[0]])
      expect(stored.rows.map((r) => r.event)).toEqual(tap.events)
    } finally {
      await tap.close()
    }
  })
})
