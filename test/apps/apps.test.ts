// Apps end to end on a real node (startCluster, 1 node), with Slack's own SDKs:
// - an unmodified @slack/bolt App (HTTP receiver on a loopback port, slackApiUrl at
//   Chorus) gets a `message` event and answers with say(): members see the answer as
//   the bot's (bot_id, bot_message); app.command() with respond() works (in-channel and
//   ephemeral), and the command itself is not posted;
// - incoming webhook posts appear in order, errors are Slack's, a revoked webhook 404s;
// - an endpoint that fails twice then succeeds gets the event three times, signed, with
//   X-Slack-Retry-Num/Reason, while chat sends keep succeeding; an endpoint that keeps
//   failing is paused and reported;
// - a bot without channels:history gets missing_scope (needed, provided);
// - apps.uninstall revokes the token, webhooks and subscription.

import { App, LogLevel } from "@slack/bolt"
import type { WebClient } from "@slack/web-api"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as SlackSignature from "../../src/apps/SlackSignature.ts"
import type { ChatSocket, ChatUser } from "../support/chat.ts"
import { connect, workspace } from "../support/chat.ts"
import type { ChorusCluster } from "../support/index.ts"
import { freePort, sleep, startCluster } from "../support/index.ts"
import { slackError } from "../api/channelSupport.ts"
import type { AppEndpoint } from "./appEndpoint.ts"
import { startAppEndpoint } from "./appEndpoint.ts"

let cluster: ChorusCluster
let url: string
let users: Record<string, ChatUser>
let owner: ChatUser
const cleanups: Array<() => Promise<unknown> | unknown> = []

beforeAll(async () => {
  cluster = await startCluster({
    nodes: 1,
    env: {
      CHORUS_SHARDS: "8",
      CHORUS_RATE_LIMITS: "off",
      CHORUS_APPS_RETRY_DELAYS_MS: "200,400,800",
      CHORUS_APPS_PAUSE_AFTER_MS: "1500",
      CHORUS_APPS_REQUEST_TIMEOUT_MS: "2000",
      // The test's app endpoints listen on loopback.
      CHORUS_APPS_EGRESS: "any"
    }
  })
  url = cluster.nodes[0]!.url
  users = (await workspace(url, ["alice", "bob"])).users
  owner = users["owner"]!
})

afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await Promise.resolve(cleanup()).catch(() => undefined)
  await cluster?.stopAll()
})

type Answer = Readonly<Record<string, any>>
const call = async (web: WebClient, method: string, args: Record<string, unknown>): Promise<Answer> => (await web.apiCall(method, args)) as Answer

interface CreatedApp {
  readonly id: string
  readonly botUserId: string
  readonly botId: string
  readonly token: string
  readonly signingSecret: string
}

const createApp = async (name: string, scopes: ReadonlyArray<string>): Promise<CreatedApp> => {
  const created = await call(owner.web, "apps.create", { name, scopes: scopes.join(",") })
  expect(created).toMatchObject({ ok: true, app: { id: expect.stringMatching(/^A/), name }, bot_user_id: expect.stringMatching(/^U/), bot_id: expect.stringMatching(/^B/) })
  expect(created["bot_token"]).toMatch(/^xoxb-/)
  return { id: created["app"].id, botUserId: created["bot_user_id"], botId: created["bot_id"], token: created["bot_token"], signingSecret: created["signing_secret"] }
}

const newChannel = async (name: string, members: ReadonlyArray<string>) => {
  const id = (await owner.web.conversations.create({ name: `${name}-${Date.now().toString(36)}` })).channel!.id!
  if (members.length > 0) await owner.web.conversations.invite({ channel: id, users: members.join(",") })
  return id
}

const socketOf = async (user: ChatUser): Promise<ChatSocket> => {
  const socket = await connect(url, user.token)
  cleanups.push(() => socket.close())
  return socket
}

const history = async (channel: string) => ((await owner.web.conversations.history({ channel, limit: 100 })).messages ?? []) as Array<Answer>

const endpoint = async (): Promise<AppEndpoint> => {
  const e = await startAppEndpoint()
  cleanups.push(() => e.close())
  return e
}

describe("a @slack/bolt app against Chorus", () => {
  it("gets a message event and answers with say(); runs a slash command with respond()", async () => {
    const created = await createApp("Echo Bot", ["chat:write", "channels:history", "channels:read", "app_mentions:read", "commands"])
    const port = await freePort()
    const bolt = new App({
      token: created.token,
      signingSecret: created.signingSecret,
      clientOptions: { slackApiUrl: `${url}/api/`, retryConfig: { retries: 0 } },
      logLevel: LogLevel.ERROR
    })
    const seen: Array<Answer> = []
    bolt.message(/^ping/, async ({ message, say }) => {
      seen.push(message as Answer)
      await say(`pong: ${(message as { text?: string }).text ?? ""}`)
    })
    bolt.event("app_mention", async ({ event, say }) => {
      await say(`at your service, <@${event.user ?? ""}>`)
    })
    bolt.command("/deploy", async ({ command, ack, respond }) => {
      await ack(`deploying ${command.text}…`) // the immediate answer: ephemeral
      await respond({ response_type: "in_channel", text: `deploy ${command.text}: started` })
      await respond({ response_type: "in_channel", replace_original: true, text: `deploy ${command.text}: done` })
    })
    bolt.command("/echo", async ({ command, ack, respond }) => {
      await ack()
      await respond({ response_type: "in_channel", text: `echo: ${command.text}` })
      await respond(`only you see: ${command.text}`)
    })
    await bolt.start(port)
    cleanups.push(() => bolt.stop())
    const requestUrl = `http://127.0.0.1:${port}/slack/events`

    // The subscription is verified with the challenge, which bolt answers.
    expect(await call(owner.web, "apps.eventSubscriptions.set", { app_id: created.id, request_url: requestUrl, events: "message.channels,app_mention" })).toMatchObject({
      ok: true,
      status: "active"
    })
    expect(await slackError(call(owner.web, "apps.eventSubscriptions.set", { app_id: created.id, request_url: "http://127.0.0.1:9/nothing", events: "message" }))).toBe(
      "url_verification_failed"
    )

    const alice = users["alice"]!
    const channel = await newChannel("bolt", [alice.id, created.botUserId])
    const aliceSocket = await socketOf(alice)
    await alice.web.chat.postMessage({ channel, text: "ping 1" })
    const pong = await aliceSocket.waitFor((e) => e["type"] === "message" && e["channel"] === channel && e["text"] === "pong: ping 1")
    expect(pong).toMatchObject({ user: created.botUserId, bot_id: created.botId, subtype: "bot_message" })
    expect(seen[0]).toMatchObject({ type: "message", channel, user: alice.id, text: "ping 1", channel_type: "channel" })
    // Members see it in the timeline too; bolt ignored its own message (no "pong: pong").
    await sleep(500)
    const texts = (await history(channel)).map((m) => m["text"])
    expect(texts).toContain("pong: ping 1")
    expect(texts.filter((t) => String(t).startsWith("pong: pong"))).toEqual([])

    // A mention of the bot is an app_mention too.
    await alice.web.chat.postMessage({ channel, text: `<@${created.botUserId}> status?` })
    await aliceSocket.waitFor((e) => e["channel"] === channel && e["text"] === `at your service, <@${alice.id}>`)

    // Slash command: the command is dispatched, not posted.
    expect(await call(owner.web, "apps.commands.create", { app_id: created.id, command: "/echo", request_url: requestUrl, description: "Echoes" })).toMatchObject({
      ok: true,
      command: { command: "/echo" }
    })
    const dispatched = await alice.web.chat.postMessage({ channel, text: "/echo hello there" })
    expect(dispatched).toMatchObject({ ok: true, dispatched: true, command: "/echo" })
    const inChannel = await aliceSocket.waitFor((e) => e["type"] === "message" && e["channel"] === channel && e["text"] === "echo: hello there")
    expect(inChannel).toMatchObject({ user: created.botUserId, bot_id: created.botId })
    const ephemeral = await aliceSocket.waitFor((e) => e["subtype"] === "ephemeral" && e["text"] === "only you see: hello there")
    expect(ephemeral).toMatchObject({ channel, user: created.botUserId, is_ephemeral: true })
    const after = (await history(channel)).map((m) => m["text"])
    expect(after).toContain("echo: hello there")
    expect(after).not.toContain("/echo hello there")
    expect(after).not.toContain("only you see: hello there")
    // The immediate answer is ephemeral; replace_original edits the in-channel answer.
    await call(owner.web, "apps.commands.create", { app_id: created.id, command: "/deploy", request_url: requestUrl })
    await alice.web.chat.postMessage({ channel, text: "/deploy prod" })
    await aliceSocket.waitFor((e) => e["subtype"] === "ephemeral" && e["text"] === "deploying prod…")
    const changed = await aliceSocket.waitFor((e) => e["subtype"] === "message_changed" && (e["message"] as Answer | undefined)?.["text"] === "deploy prod: done")
    expect((changed["previous_message"] as Answer)["text"]).toBe("deploy prod: started")
    const final = (await history(channel)).map((m) => m["text"])
    expect(final).toContain("deploy prod: done")
    expect(final).not.toContain("deploy prod: started")
    // An unregistered "/command" is just a message.
    await alice.web.chat.postMessage({ channel, text: "/shrug ok" })
    expect((await history(channel)).map((m) => m["text"])).toContain("/shrug ok")
    // Typed in a socket's message frame, a command runs the same way (and is not posted).
    const viaSocket = await aliceSocket.request({ type: "message", channel, text: "/echo from the socket" })
    expect(viaSocket).toMatchObject({ ok: true, dispatched: true, command: "/echo" })
    await aliceSocket.waitFor((e) => e["type"] === "message" && e["channel"] === channel && e["text"] === "echo: from the socket")
    const socketFinal = (await history(channel)).map((m) => m["text"])
    expect(socketFinal).toContain("echo: from the socket")
    expect(socketFinal).not.toContain("/echo from the socket")
    expect(await aliceSocket.request({ type: "message", channel, text: "/shrug from the socket" })).toMatchObject({ ok: true, text: "/shrug from the socket" })
  })
})

describe("incoming webhooks", () => {
  it("posts appear in order as the app's bot; errors as Slack answers them; a revoked webhook gets 404", async () => {
    const created = await createApp("Deployer", ["incoming-webhook"])
    const channel = await newChannel("hooks", [])
    const made = await call(owner.web, "apps.webhooks.create", { app_id: created.id, channel })
    expect(made).toMatchObject({ ok: true, webhook: { id: expect.stringMatching(/^W/), channel, url: expect.stringContaining(`${url}/services/`) } })
    const hook = made["webhook"].url as string
    const post = (body: string, contentType = "application/json") => fetch(hook, { method: "POST", headers: { "content-type": contentType }, body })

    for (let i = 1; i <= 5; i++) {
      const res = await post(JSON.stringify({ text: `deploy ${i}`, username: "ci", icon_emoji: ":rocket:" }))
      expect([res.status, await res.text()]).toEqual([200, "ok"])
    }
    const form = await post(new URLSearchParams({ payload: JSON.stringify({ text: "deploy 6" }) }).toString(), "application/x-www-form-urlencoded")
    expect(form.status).toBe(200)
    const posted = (await history(channel)).filter((m) => String(m["text"]).startsWith("deploy ")).reverse()
    expect(posted.map((m) => m["text"])).toEqual(["deploy 1", "deploy 2", "deploy 3", "deploy 4", "deploy 5", "deploy 6"])
    expect(posted[0]).toMatchObject({ user: created.botUserId, bot_id: created.botId, subtype: "bot_message", username: "ci", icons: { emoji: ":rocket:" } })

    const bad = await post("{not json")
    expect([bad.status, await bad.text()]).toEqual([400, "invalid_payload"])
    const empty = await post(JSON.stringify({ username: "ci" }))
    expect([empty.status, await empty.text()]).toEqual([400, "no_text"])

    // Archived channel.
    const other = await newChannel("hooks-archived", [])
    const otherHook = (await call(owner.web, "apps.webhooks.create", { app_id: created.id, channel: other }))["webhook"].url as string
    await owner.web.conversations.archive({ channel: other })
    const archived = await fetch(otherHook, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ text: "x" }) })
    expect([archived.status, await archived.text()]).toEqual([410, "channel_is_archived"])

    // Revoked: 404, and nothing more is posted.
    expect(await call(owner.web, "apps.webhooks.revoke", { app_id: created.id, webhook_id: made["webhook"].id })).toMatchObject({ ok: true })
    const revoked = await post(JSON.stringify({ text: "after revoke" }))
    expect([revoked.status, await revoked.text()]).toEqual([404, "no_service"])
    const guessed = await fetch(hook.replace(/[^/]+$/, "AAAAAAAAAAAAAAAAAAAAAAAA"), { method: "POST", body: "{}" })
    expect(guessed.status).toBe(404)
    expect((await history(channel)).map((m) => m["text"])).not.toContain("after revoke")
  })
})

describe("Events API delivery", () => {
  it("an endpoint failing twice then succeeding gets the event three times, signed, with retry headers; chat keeps working", async () => {
    const created = await createApp("Flaky", ["channels:history"])
    const app = await endpoint()
    const attemptsOf = new Map<string, number>()
    app.answer = (request) => {
      const id = request.json?.["event_id"] as string
      const n = (attemptsOf.get(id) ?? 0) + 1
      attemptsOf.set(id, n)
      return n <= 2 ? 500 : 200
    }
    await call(owner.web, "apps.eventSubscriptions.set", { app_id: created.id, request_url: app.url, events: "message.channels" })
    // A public channel: channels:history sees it without the bot being a member.
    const channel = await newChannel("flaky", [users["bob"]!.id])
    const bob = users["bob"]!
    const first = await bob.web.chat.postMessage({ channel, text: "flaky one" })
    // Chat does not wait for the app: sends made while the first event is retried all succeed.
    const sends = await Promise.all(Array.from({ length: 10 }, (_, i) => bob.web.chat.postMessage({ channel, text: `meanwhile ${i}` })))
    expect(sends.every((s) => s.ok === true)).toBe(true)

    await app.waitFor(() => app.events().filter((r) => r.json?.["event"]?.["ts"] === first.ts).length >= 3)
    const attempts = app.events().filter((r) => r.json?.["event"]?.["ts"] === first.ts)
    expect(attempts).toHaveLength(3)
    expect(attempts.map((a) => a.headers["x-slack-retry-num"])).toEqual([undefined, "1", "2"])
    expect(attempts.map((a) => a.headers["x-slack-retry-reason"])).toEqual([undefined, "http_error", "http_error"])
    expect(new Set(attempts.map((a) => a.json?.["event_id"])).size).toBe(1)
    for (const a of attempts) {
      const verified = SlackSignature.verify({
        secret: created.signingSecret,
        body: a.body,
        timestamp: a.headers["x-slack-request-timestamp"] as string,
        signature: a.headers["x-slack-signature"] as string,
        nowMs: Date.now()
      })
      expect(verified).toEqual({ ok: true })
    }
    expect(attempts[0]!.json).toMatchObject({ type: "event_callback", api_app_id: created.id, event: { type: "message", channel, text: "flaky one", user: bob.id } })

    // Every later event arrives too (each failing twice first), in the channel's order.
    await app.waitFor(() => new Set(app.events().filter((r) => r.json?.["event"]?.["channel"] === channel && attemptsOf.get(r.json?.["event_id"]) === 3).map((r) => r.json?.["event_id"])).size >= 11, 60_000)
    const delivered = app.events().filter((r, i, all) => r.json?.["event"]?.["channel"] === channel && all.findIndex((x) => x.json?.["event_id"] === r.json?.["event_id"]) === i)
    const seqs = delivered.map((r) => r.json?.["event"]?.["seq"] as number)
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b))

    await sleep(1_500) // figures are recorded every second
    const stats = await call(owner.web, "apps.deliveryStats", { app_id: created.id })
    expect(stats["apps"][0]).toMatchObject({ app_id: created.id, status: "active" })
    expect(stats["apps"][0].sent).toBeGreaterThanOrEqual(11)
    expect(stats["apps"][0].retried).toBeGreaterThanOrEqual(22)
    expect(stats["apps"][0].lag_p99_ms).toEqual(expect.any(Number))
  })

  it("an endpoint that keeps failing is paused and reported, not retried forever; chat keeps working", async () => {
    const created = await createApp("Broken", ["channels:history"])
    const app = await endpoint()
    app.answer = () => 503
    await call(owner.web, "apps.eventSubscriptions.set", { app_id: created.id, request_url: app.url, events: "message" })
    const channel = await newChannel("broken", [])
    for (let i = 0; i < 4; i++) {
      expect((await owner.web.chat.postMessage({ channel, text: `into the void ${i}` })).ok).toBe(true)
      await sleep(600)
    }
    const deadline = Date.now() + 20_000
    let info: Answer = {}
    while (Date.now() < deadline) {
      info = await call(owner.web, "apps.info", { app_id: created.id })
      if (info["app"].delivery.status === "paused") break
      await sleep(250)
    }
    expect(info["app"].delivery).toMatchObject({ status: "paused", paused_reason: expect.any(String) })
    // The gauge is refreshed with the figures (every second), so it may trail apps.info.
    let metrics = ""
    for (let tries = 0; tries < 40 && !/chorus_apps_paused\{[^}]*\} [1-9]/.test(metrics); tries++) {
      if (tries > 0) await sleep(250)
      metrics = await (await fetch(`${url}/metrics`)).text()
    }
    expect(metrics).toMatch(/chorus_apps_paused\{[^}]*\} [1-9]/)
    // No more attempts once paused.
    const count = app.events().length
    await owner.web.chat.postMessage({ channel, text: "still works" })
    await sleep(1_000)
    expect(app.events().length).toBe(count)
    // Setting the subscription again resumes it.
    app.answer = () => 200
    await call(owner.web, "apps.eventSubscriptions.set", { app_id: created.id, request_url: app.url, events: "message" })
    await owner.web.chat.postMessage({ channel, text: "back again" })
    await app.waitFor(() => app.events().some((r) => r.json?.["event"]?.["text"] === "back again"))
  })
})

describe("bot tokens", () => {
  it("a bot without channels:history gets missing_scope with needed and provided; uninstall revokes everything", async () => {
    const created = await createApp("Writer", ["chat:write", "incoming-webhook"])
    const channel = await newChannel("scopes", [])
    const bot = new (await import("@slack/web-api")).WebClient(created.token, { slackApiUrl: `${url}/api/`, retryConfig: { retries: 0 } })
    const auth = await bot.auth.test()
    expect(auth).toMatchObject({ ok: true, user_id: created.botUserId, bot_id: created.botId })
    const refused = await bot.conversations.history({ channel }).then(() => undefined, (e: { data?: Answer }) => e.data)
    expect(refused).toMatchObject({ ok: false, error: "missing_scope", needed: "channels:history", provided: "chat:write,incoming-webhook" })
    // Members only may use apps.*.
    expect(await slackError(call(users["bob"]!.web, "apps.create", { name: "Nope", scopes: "chat:write" }))).toBe("not_an_admin")
    expect(await slackError(call(bot, "apps.create", { name: "Nope", scopes: "chat:write" }))).toBe("not_allowed_token_type")
    // A command needs the app's `commands` scope.
    const noCommands = await call(owner.web, "apps.commands.create", { app_id: created.id, command: "/x", request_url: "http://127.0.0.1:9/" }).catch((e: { data?: Answer }) => e.data)
    expect(noCommands).toMatchObject({ error: "missing_scope", needed: "commands" })

    const hook = (await call(owner.web, "apps.webhooks.create", { app_id: created.id, channel }))["webhook"].url as string
    expect(await call(owner.web, "apps.uninstall", { app_id: created.id })).toMatchObject({ ok: true })
    expect(await slackError(bot.auth.test())).toBe("token_revoked")
    expect((await fetch(hook, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ text: "x" }) })).status).toBe(404)
    expect(await slackError(call(owner.web, "apps.info", { app_id: created.id }))).toBe("app_not_found")
  })
})
