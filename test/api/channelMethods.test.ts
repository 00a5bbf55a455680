// conversations.create/.join/.leave/.invite/.kick/.archive/.unarchive/.rename/
// .setTopic/.setPurpose/.open through a real node with @slack/web-api (form-encoded,
// as Slack's SDK sends): Slack's answers and error codes, invariant 5 (outsiders get
// channel_not_found), bot scopes, and the channel's events on NATS in seq order.

import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Ids from "../../src/domain/Ids.ts"
import { postApi, startCluster, type ChorusCluster } from "../support/index.ts"
import { dropStreams, EventTap, slackError, workspace, type Member, type Workspace } from "./channelSupport.ts"

let cluster: ChorusCluster
let url: string
let w: Workspace
let other: Workspace
let bob: Member
let carol: Member
let guest: Member
let outsider: Member

beforeAll(async () => {
  cluster = await startCluster({ nodes: 1, env: { CHORUS_SHARDS: "8", CHORUS_RATE_LIMITS: "off" } })
  url = cluster.nodes[0]!.url
  w = await workspace(cluster, "chanmeth")
  other = await workspace(cluster, "chanother")
  bob = await w.member("bob")
  carol = await w.member("carol")
  guest = await w.member("guest", "guest")
  outsider = other.owner
})
afterAll(async () => {
  await cluster?.stopAll()
  if (cluster !== undefined) await dropStreams(cluster.name)
})

let n = 0
const uniqueName = (prefix: string) => `${prefix}-${Date.now().toString(36)}-${++n}`

describe("conversations.create", () => {
  it("creates public and private channels with Slack's channel object", async () => {
    const name = uniqueName("eng")
    const created = await w.owner.client.conversations.create({ name })
    expect(created.ok).toBe(true)
    expect(created.channel).toMatchObject({ name, is_channel: true, is_private: false, is_member: true, is_archived: false, creator: w.owner.userId })
    expect(created.channel?.id).toMatch(/^C[A-Z0-9]+$/)
    const secret = await w.owner.client.conversations.create({ name: uniqueName("secret"), is_private: true })
    expect(secret.channel).toMatchObject({ is_private: true, is_member: true })
  })

  it("applies Slack's name rules", async () => {
    expect(await slackError(w.owner.client.conversations.create({ name: "has space" }))).toBe("invalid_name_specials")
    expect(await slackError(w.owner.client.conversations.create({ name: "x".repeat(81) }))).toBe("invalid_name_maxlength")
    expect(await slackError(w.owner.client.conversations.create({ name: "---" }))).toBe("invalid_name_punctuation")
    expect(await slackError(w.owner.client.conversations.create({ name: "" }))).toBe("invalid_name_required")
    const upper = await w.owner.client.conversations.create({ name: `#Mixed-${++n}` })
    expect(upper.channel?.name).toBe(`mixed-${n}`)
    expect(await slackError(guest.client.conversations.create({ name: uniqueName("guest") }))).toBe("restricted_action")
  })

  it("answers a retried create with the same channel, and name_taken to anyone else", async () => {
    const name = uniqueName("retry")
    const first = await bob.client.conversations.create({ name })
    const again = await bob.client.conversations.create({ name })
    expect(again.channel?.id).toBe(first.channel?.id)
    expect(await slackError(carol.client.conversations.create({ name }))).toBe("name_taken")
    expect(await slackError(bob.client.conversations.create({ name, is_private: true }))).toBe("name_taken")
    // Another workspace may use the name.
    expect((await outsider.client.conversations.create({ name })).ok).toBe(true)
  })
})

describe("membership", () => {
  it("joins public channels only; a private one or another workspace's is channel_not_found", async () => {
    const open = (await w.owner.client.conversations.create({ name: uniqueName("open") })).channel!.id!
    const closed = (await w.owner.client.conversations.create({ name: uniqueName("closed"), is_private: true })).channel!.id!
    const joined = await bob.client.conversations.join({ channel: open })
    expect(joined.channel).toMatchObject({ id: open, is_member: true })
    const again = await bob.client.conversations.join({ channel: open })
    expect(again).toMatchObject({ warning: "already_in_channel", response_metadata: { warnings: ["already_in_channel"] } })
    expect(await slackError(bob.client.conversations.join({ channel: closed }))).toBe("channel_not_found")
    expect(await slackError(outsider.client.conversations.join({ channel: open }))).toBe("channel_not_found")
    expect(await slackError(guest.client.conversations.join({ channel: open }))).toBe("channel_not_found")
    expect(await slackError(bob.client.conversations.join({ channel: "not-an-id" }))).toBe("channel_not_found")
    expect(await slackError(bob.client.conversations.join({ channel: Ids.make("C") }))).toBe("channel_not_found")
  })

  it("invites, kicks and leaves with Slack's errors", async () => {
    const channel = (await w.owner.client.conversations.create({ name: uniqueName("team"), is_private: true })).channel!.id!
    const invited = await w.owner.client.conversations.invite({ channel, users: `${bob.userId},${guest.userId}` })
    expect(invited.channel).toMatchObject({ id: channel, num_members: 3 })
    expect(await slackError(w.owner.client.conversations.invite({ channel, users: bob.userId }))).toBe("already_in_channel")
    expect(await slackError(w.owner.client.conversations.invite({ channel, users: w.owner.userId }))).toBe("cant_invite_self")
    expect(await slackError(w.owner.client.conversations.invite({ channel, users: Ids.make("U") }))).toBe("user_not_found")
    expect(await slackError(w.owner.client.conversations.invite({ channel, users: outsider.userId }))).toBe("user_not_found")
    // Outsiders learn nothing about the private channel, whatever the users they name.
    expect(await slackError(carol.client.conversations.invite({ channel, users: Ids.make("U") }))).toBe("channel_not_found")
    expect(await slackError(outsider.client.conversations.invite({ channel, users: carol.userId }))).toBe("channel_not_found")
    // The guest is in: it may post, not invite.
    expect((await guest.client.chat.postMessage({ channel, text: "hello from a guest" })).ok).toBe(true)
    expect(await slackError(guest.client.conversations.invite({ channel, users: carol.userId }))).toBe("restricted_action")
    expect(await slackError(w.owner.client.conversations.kick({ channel, user: w.owner.userId }))).toBe("cant_kick_self")
    expect(await slackError(w.owner.client.conversations.kick({ channel, user: carol.userId }))).toBe("not_in_channel")
    expect((await w.owner.client.conversations.kick({ channel, user: guest.userId })).ok).toBe(true)
    expect(await slackError(guest.client.chat.postMessage({ channel, text: "still here?" }))).toBe("channel_not_found")
    expect((await bob.client.conversations.leave({ channel })).ok).toBe(true)
    expect(await slackError(bob.client.conversations.leave({ channel }))).toBe("channel_not_found")
    const publicChannel = (await w.owner.client.conversations.create({ name: uniqueName("pub") })).channel!.id!
    expect(await bob.client.conversations.leave({ channel: publicChannel })).toMatchObject({ ok: true, not_in_channel: true })
  })
})

describe("settings", () => {
  it("renames, sets topic and purpose, archives and unarchives", async () => {
    const channel = (await bob.client.conversations.create({ name: uniqueName("settings") })).channel!.id!
    await bob.client.conversations.invite({ channel, users: carol.userId })
    const taken = uniqueName("taken")
    await w.owner.client.conversations.create({ name: taken })
    expect(await slackError(bob.client.conversations.rename({ channel, name: taken }))).toBe("name_taken")
    expect(await slackError(bob.client.conversations.rename({ channel, name: "bad name" }))).toBe("invalid_name_specials")
    expect(await slackError(carol.client.conversations.rename({ channel, name: uniqueName("carol") }))).toBe("not_authorized")
    const newName = uniqueName("renamed")
    expect((await bob.client.conversations.rename({ channel, name: newName })).channel).toMatchObject({ id: channel, name: newName })
    const topic = await carol.client.conversations.setTopic({ channel, topic: "Weekly sync" })
    expect(topic.channel).toMatchObject({ topic: { value: "Weekly sync", creator: carol.userId } })
    const purpose = await carol.client.conversations.setPurpose({ channel, purpose: "Talk" })
    expect(purpose.channel).toMatchObject({ purpose: { value: "Talk", creator: carol.userId } })
    expect(await slackError(carol.client.conversations.setTopic({ channel, topic: "x".repeat(251) }))).toBe("too_long")
    expect(await slackError(outsider.client.conversations.setTopic({ channel, topic: "hi" }))).toBe("channel_not_found")
    expect((await carol.client.conversations.archive({ channel })).ok).toBe(true)
    expect(await slackError(bob.client.chat.postMessage({ channel, text: "archived?" }))).toBe("is_archived")
    expect(await slackError(bob.client.conversations.archive({ channel }))).toBe("already_archived")
    expect((await bob.client.conversations.unarchive({ channel })).ok).toBe(true)
    expect(await slackError(bob.client.conversations.unarchive({ channel }))).toBe("not_archived")
    expect((await bob.client.chat.postMessage({ channel, text: "back" })).ok).toBe(true)
  })
})

describe("conversations.open", () => {
  it("opens one DM per pair of users, from either side", async () => {
    const opened = await bob.client.conversations.open({ users: carol.userId })
    const id = opened.channel?.id as string
    expect(id).toMatch(/^D[A-Z0-9]+$/)
    expect(opened.already_open).toBeUndefined()
    const again = await carol.client.conversations.open({ users: bob.userId, return_im: true })
    expect(again).toMatchObject({ already_open: true, no_op: true, channel: { id, is_im: true, user: bob.userId } })
    expect((await bob.client.conversations.open({ channel: id })).channel?.id).toBe(id)
    expect(await slackError(w.owner.client.conversations.open({ channel: id }))).toBe("channel_not_found")
    // Concurrent opens of a new pair agree on one DM.
    const dave = await w.member("dave")
    const ids = await Promise.all([
      bob.client.conversations.open({ users: dave.userId }),
      dave.client.conversations.open({ users: bob.userId }),
      bob.client.conversations.open({ users: dave.userId })
    ])
    expect(new Set(ids.map((o) => o.channel?.id)).size).toBe(1)
  })

  it("opens group DMs for 2 to 8 others, and refuses strangers and crowds", async () => {
    const group = await bob.client.conversations.open({ users: `${carol.userId},${w.owner.userId}` })
    expect(group.channel?.id).toMatch(/^C[A-Z0-9]+$/)
    const same = await carol.client.conversations.open({ users: `${w.owner.userId},${bob.userId}`, return_im: true })
    expect(same.channel).toMatchObject({ id: group.channel?.id, is_mpim: true, is_private: true })
    expect(await slackError(bob.client.conversations.open({ users: outsider.userId }))).toBe("user_not_found")
    expect(await slackError(bob.client.conversations.open({ users: "nobody" }))).toBe("user_not_found")
    expect(await slackError(bob.client.apiCall("conversations.open", {}))).toBe("users_list_not_supplied")
    const crowd = Array.from({ length: 9 }, () => Ids.make("U")).join(",")
    expect(await slackError(bob.client.conversations.open({ users: crowd }))).toBe("too_many_users")
    // A DM with oneself.
    const self = await bob.client.conversations.open({ users: bob.userId, return_im: true })
    expect(self.channel).toMatchObject({ is_im: true, user: bob.userId })
  })
})

describe("bot tokens", () => {
  it("need Slack's scope for the conversation's type, checked after visibility", async () => {
    const manager = await w.bot(["channels:manage", "chat:write"])
    const poster = await w.bot(["chat:write"])
    expect(await slackError(poster.client.conversations.create({ name: uniqueName("bot") }))).toBe("missing_scope")
    const created = await manager.client.conversations.create({ name: uniqueName("bot") })
    expect(created.channel).toMatchObject({ creator: manager.userId })
    expect(await slackError(manager.client.conversations.create({ name: uniqueName("bot"), is_private: true }))).toBe("missing_scope")
    const closed = (await w.owner.client.conversations.create({ name: uniqueName("closed"), is_private: true })).channel!.id!
    // Not a member of the private channel: it does not exist for the bot, scope or not.
    expect(await slackError(manager.client.conversations.setTopic({ channel: closed, topic: "x" }))).toBe("channel_not_found")
    await w.owner.client.conversations.invite({ channel: closed, users: manager.userId })
    expect(await slackError(manager.client.conversations.setTopic({ channel: closed, topic: "x" }))).toBe("missing_scope")
    expect(await slackError(manager.client.conversations.join({ channel: created.channel!.id! }))).toBe("missing_scope")
  })
})

describe("events", () => {
  it("publishes a channel's events on NATS once, in seq order, gap-free", async () => {
    const channel = (await w.owner.client.conversations.create({ name: uniqueName("events") })).channel!.id!
    const tap = await EventTap.open(cluster.name, `evt.ch.${channel}`)
    const userTap = await EventTap.open(cluster.name, `evt.user.${bob.userId}`)
    try {
      await w.owner.client.conversations.invite({ channel, users: bob.userId })
      await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? bob : w.owner).client.chat.postMessage({ channel, text: `m${i}` })))
      await bob.client.conversations.setTopic({ channel, topic: "t" })
      await tap.waitFor((events) => events.some((e) => e["subtype"] === "channel_topic"))
      const seqs = tap.events.map((e) => e["seq"] as number)
      expect(seqs[0]).toBe(4) // after channel_created, the owner's join and its message
      expect(seqs).toEqual(seqs.map((_, i) => seqs[0]! + i))
      expect(tap.events.every((e) => e["channel"] === channel)).toBe(true)
      expect(tap.events.filter((e) => e["type"] === "message" && e["subtype"] === undefined)).toHaveLength(20)
      await userTap.waitFor((events) => events.some((e) => e["type"] === "channel_joined"))
      expect(userTap.events.find((e) => e["type"] === "channel_joined")).toMatchObject({ user: bob.userId, channel_id: channel, seq: 4, channel: { id: channel } })
    } finally {
      await tap.close()
      await userTap.close()
    }
  })
})

it("takes JSON bodies as well as forms", async () => {
  const answer = await postApi(url, "conversations.create", { name: uniqueName("json"), is_private: true }, bob.token)
  expect(answer).toMatchObject({ ok: true, channel: { is_private: true } })
})
