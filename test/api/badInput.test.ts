// Bad input never takes a node down (DEVELOPERS.md, Standards): random arguments of
// every type to every Web API method, in both body encodings and with good, foreign and
// bogus tokens; malformed bodies; random gateway frames. Every answer must be a clear
// error (HTTP < 500, JSON, `ok: false` with an error code that is not `internal_error`)
// or a success, and the node must go on serving ordinary requests afterwards.
//
// The inputs come from a fixed seed, so a failure is reproducible; set
// CHORUS_FUZZ_SEED (and CHORUS_FUZZ_RUNS) to explore further.

import { FastCheck as fc } from "effect"
import WebSocket from "ws"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { connect, workspace, type ChatUser } from "../support/chat.ts"
import { postApi, startCluster, type ChorusCluster } from "../support/index.ts"

const seed = Number(process.env.CHORUS_FUZZ_SEED ?? 20261123)
const runs = Number(process.env.CHORUS_FUZZ_RUNS ?? 600)

let cluster: ChorusCluster
let url: string
let member: ChatUser
let owner: ChatUser
let stranger: ChatUser
let channel: string
let ts: string

beforeAll(async () => {
  cluster = await startCluster({ nodes: 1, env: { CHORUS_SHARDS: "8", CHORUS_RATE_LIMITS: "off" } })
  url = cluster.nodes[0]!.url
  const w = await workspace(url, ["member"])
  member = w.users["member"]!
  owner = w.users["owner"]!
  stranger = (await workspace(url, [])).users["owner"]!
  channel = ((await postApi(url, "conversations.create", { name: `fuzz-${Date.now().toString(36)}` }, member.token))["channel"] as { id: string }).id
  ts = (await postApi(url, "chat.postMessage", { channel, text: "before" }, member.token))["ts"] as string
})
afterAll(async () => {
  await cluster?.stopAll()
})

// `auth.revoke` and `cluster.drain` are left out: with a good token they do what they
// should (end the token, drain the only node), which would end the run, not test it.
const methods = [
  "admin.users.invite", "apps.commands.create", "apps.create", "apps.deliveryStats", "apps.eventSubscriptions.set", "apps.info",
  "apps.list", "apps.uninstall", "apps.webhooks.create", "apps.webhooks.revoke", "auth.login", "auth.signup", "auth.teams.list",
  "auth.test", "chat.command", "chat.delete", "chat.getPermalink", "chat.postEphemeral", "chat.postMessage", "chat.update",
  "conversations.archive", "conversations.create", "conversations.history", "conversations.info", "conversations.invite",
  "conversations.join", "conversations.kick", "conversations.leave", "conversations.list", "conversations.mark",
  "conversations.members", "conversations.open", "conversations.rename", "conversations.replies", "conversations.setPurpose",
  "conversations.setTopic", "conversations.unarchive", "files.completeUploadExternal", "files.delete",
  "files.getUploadURLExternal", "files.info", "files.list", "reactions.add", "reactions.get", "reactions.remove", "rtm.connect",
  "search.messages", "team.create", "team.info", "users.conversations", "users.getPresence", "users.info", "users.lookupByEmail",
  "users.setPresence", "cluster.status", "cluster.ring", "cluster.placement", "cluster.setWeight", "no.such.method"
]
const keys = [
  "channel", "channels", "ts", "text", "name", "user", "users", "email", "password", "team_id", "thread_ts", "latest", "oldest",
  "inclusive", "limit", "cursor", "timestamp", "client_msg_id", "is_private", "return_im", "topic", "purpose", "query", "count",
  "page", "sort", "files", "file", "blocks", "attachments", "presence", "types", "exclude_archived", "reply_broadcast", "full",
  "node", "weight", "address", "url", "events", "command", "app_id", "webhook_id", "filename", "length", "file_id", "id", "domain",
  "role", "as_user"
]

/** Values of every JSON type, and strings that tend to matter: ids that exist, near-misses, injections, long ones. */
const value = (): fc.Arbitrary<unknown> =>
  fc.oneof(
    fc.constant(null),
    fc.integer(),
    fc.double(),
    fc.boolean(),
    fc.string(),
    fc.fullUnicodeString({ maxLength: 40 }),
    fc.jsonValue({ maxDepth: 3 }),
    fc.constantFrom(
      () => channel, () => ts, () => member.id, () => owner.id, () => "' OR 1=1 --", () => "\u0000\ud800\uffff", () => "[1,2",
      () => "{\"a\":", () => "9".repeat(400), () => "x".repeat(41_000), () => "../../etc/passwd", () => "NaN", () => "-1",
      () => JSON.stringify([{ type: "section", text: { type: "mrkdwn", text: "hi" } }]), () => `${ts}0`, () => "C00000000"
    ).map((f) => f())
  )

const call = fc.record({
  method: fc.constantFrom(...methods),
  args: fc.dictionary(fc.constantFrom(...keys), value(), { maxKeys: 6 }),
  // Mostly good tokens: a call refused at the door tests little past it.
  token: fc.oneof(
    { weight: 6, arbitrary: fc.constant("member") },
    { weight: 2, arbitrary: fc.constant("owner") },
    fc.constantFrom("stranger", "operator", "bogus", "none")
  ),
  form: fc.boolean()
})

const tokenOf = (who: string): string | undefined =>
  ({ member: member.token, owner: owner.token, stranger: stranger.token, operator: cluster.operatorToken, bogus: "xoxp-0-bogus" } as Record<string, string>)[who]

/** What a client must be able to rely on, whatever it sent. */
const expectClearAnswer = (status: number, text: string, what: unknown) => {
  let body: Record<string, unknown> | undefined
  try {
    body = JSON.parse(text) as Record<string, unknown>
  } catch {
    body = undefined
  }
  expect({ status: status < 500, json: body !== undefined, what }).toEqual({ status: true, json: true, what })
  expect(typeof body!["ok"], JSON.stringify(what)).toBe("boolean")
  if (body!["ok"] === false) {
    expect(body!["error"], JSON.stringify(what)).toEqual(expect.any(String))
    expect(body!["error"], JSON.stringify(what)).not.toBe("internal_error")
  }
}

/** The node still does ordinary work: a post, and it in history. */
const expectServing = async () => {
  expect((await fetch(`${url}/healthz`)).status).toBe(200)
  const posted = await postApi(url, "chat.postMessage", { channel, text: "still here" }, member.token)
  const history = await postApi(url, "conversations.history", { channel, limit: 1 }, member.token)
  expect((history["messages"] as Array<{ ts: string }>)[0]!.ts).toBe(posted["ts"])
}

describe("bad input", () => {
  it("random arguments to every Web API method get a clear answer, never a 5xx or internal_error", async () => {
    await fc.assert(
      fc.asyncProperty(call, async ({ method, args, token, form }) => {
        const bearer = tokenOf(token)
        const headers: Record<string, string> = bearer === undefined ? {} : { authorization: `Bearer ${bearer}` }
        const init: RequestInit = form
          ? {
            method: "POST",
            headers: { ...headers, "content-type": "application/x-www-form-urlencoded" },
            body: new URLSearchParams(Object.entries(args).map(([k, v]): [string, string] => [k, typeof v === "string" ? v : JSON.stringify(v) ?? ""])).toString()
          }
          : { method: "POST", headers: { ...headers, "content-type": "application/json" }, body: JSON.stringify(args) }
        const res = await fetch(`${url}/api/${method}`, init)
        expectClearAnswer(res.status, await res.text(), { method, args, token, form })
      }),
      { seed, numRuns: runs }
    )
    await expectServing()
  })

  it("malformed and oversized bodies get 4xx answers", async () => {
    const bodies: ReadonlyArray<readonly [string, string]> = [
      ["application/json", "{"],
      ["application/json", "[]"],
      ["application/json", "null"],
      ["application/json", "123"],
      ["application/json", "\"text\""],
      ["application/x-www-form-urlencoded", "%%%=%zz&&=="],
      ["text/plain", "hello"],
      ["multipart/form-data; boundary=x", "--x\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\nhi\r\n--x--"],
      ["application/json", JSON.stringify({ channel, text: "x".repeat(2_000_000) })]
    ]
    for (const [contentType, body] of bodies) {
      const res = await fetch(`${url}/api/chat.postMessage`, { method: "POST", headers: { "content-type": contentType, authorization: `Bearer ${member.token}` }, body })
      expectClearAnswer(res.status, await res.text(), { contentType, body: body.slice(0, 80) })
    }
    await expectServing()
  })

  it("random gateway frames get error replies or a close with a reason; the node serves on", async () => {
    const frame = fc.oneof(
      fc.uint8Array({ maxLength: 200 }).map((bytes) => Buffer.from(bytes)),
      fc.string({ maxLength: 200 }),
      fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)),
      fc.record({
        id: value(),
        type: fc.oneof(fc.constantFrom("message", "ping", "typing", "presence_sub", "mark", "resume", "nope"), value()),
        channel: fc.oneof(fc.constant(channel), value()),
        text: value(),
        thread_ts: value(),
        client_msg_id: value(),
        ids: value(),
        channels: value(),
        ts: value()
      }, { requiredKeys: ["type"] }).map((v) => JSON.stringify(v))
    )
    await fc.assert(
      fc.asyncProperty(fc.array(frame, { minLength: 1, maxLength: 20 }), async (frames) => {
        const { url: wsUrl } = (await postApi(url, "rtm.connect", {}, member.token)) as unknown as { url: string }
        const ws = new WebSocket(wsUrl)
        const received: Array<string> = []
        const closed = new Promise<number>((resolve) => ws.on("close", (code) => resolve(code)))
        ws.on("message", (data) => received.push(String(data)))
        ws.on("error", () => undefined)
        await new Promise<void>((resolve, reject) => {
          ws.once("open", () => resolve())
          ws.once("error", reject)
        })
        for (const f of frames) ws.send(f)
        // A last ping: its pong says every frame before it was handled (or the socket closes).
        ws.send(JSON.stringify({ id: "last", type: "ping" }))
        let check: NodeJS.Timeout | undefined
        const outcome = await Promise.race([
          closed.then((code) => ({ closed: code })),
          new Promise<{ pong: true }>((resolve) => {
            check = setInterval(() => {
              if (received.some((r) => r.includes("\"reply_to\":\"last\""))) resolve({ pong: true })
            }, 10)
          })
        ])
        clearInterval(check)
        ws.terminate()
        for (const r of received) expect(r, JSON.stringify(frames).slice(0, 500)).not.toContain("internal_error")
        // Closed only with a code that says why: a protocol error (1002, 1003, 1007, 1008, 1009) or Chorus's own (4000+).
        if ("closed" in outcome) expect([1002, 1003, 1007, 1008, 1009].includes(outcome.closed) || outcome.closed >= 4000, `close ${outcome.closed}`).toBe(true)
      }),
      { seed, numRuns: Math.max(10, Math.round(runs / 15)) }
    )
    // And a well-behaved socket still works.
    const socket = await connect(url, member.token)
    const reply = await socket.request({ type: "message", channel, text: "after the noise" })
    expect(reply["ok"]).toBe(true)
    socket.close()
    await expectServing()
  })
})
