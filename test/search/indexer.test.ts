// Search end to end through a real node (one process, NATS, PostgreSQL), driven by
// Slack's WebClient: posts, edits and deletions reach search.messages through the
// durable indexer; the query syntax through the API; private conversations, DMs and
// other workspaces never answer to outsiders, and leaving hides a channel at once; a
// node whose indexer was off catches up when it comes back. Every wait is a bounded
// poll for eventual visibility, never a timing assertion.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { ChorusCluster } from "../support/cluster.ts"
import { startCluster } from "../support/cluster.ts"
import type { ChatUser } from "../support/chat.ts"
import { on, workspace } from "../support/chat.ts"
import { sleep } from "../support/processes.ts"

interface Match {
  readonly type: string
  readonly iid: string
  readonly ts: string
  readonly text: string
  readonly user?: string
  readonly username?: string
  readonly team: string
  readonly permalink: string
  readonly channel: { readonly id: string; readonly name: string; readonly is_private: boolean; readonly is_im: boolean }
}

interface Answer {
  readonly query: string
  readonly messages: {
    readonly total: number
    readonly pagination: Readonly<Record<string, number>>
    readonly paging: Readonly<Record<string, number>>
    readonly matches: ReadonlyArray<Match>
  }
}

let cluster: ChorusCluster
let users: Record<string, ChatUser>
let team: { id: string }
let outsider: ChatUser

const url = () => cluster.nodes[0]!.url
const search = async (user: ChatUser, query: string, args: Record<string, unknown> = {}): Promise<Answer> =>
  (await on(user, url()).web.apiCall("search.messages", { query, sort: "timestamp", ...args })) as unknown as Answer

/** Polls `search` until `done` holds (or fails after `timeoutMs` with the last answer). */
const eventually = async (user: ChatUser, query: string, done: (a: Answer) => boolean, args: Record<string, unknown> = {}, timeoutMs = 20_000) => {
  const deadline = Date.now() + timeoutMs
  let last: Answer | undefined
  while (Date.now() < deadline) {
    last = await search(user, query, args)
    if (done(last)) return last
    await sleep(150)
  }
  throw new Error(`search ${JSON.stringify(query)} did not reach the expected state within ${timeoutMs} ms; last: ${JSON.stringify(last?.messages)}`)
}
const texts = (a: Answer) => a.messages.matches.map((m) => m.text)

beforeAll(async () => {
  cluster = await startCluster({ nodes: 1, env: { CHORUS_SHARDS: "8", CHORUS_RATE_LIMITS: "off" } })
  const acme = await workspace(url(), ["alice", "bob", "gus"], { gus: "guest" })
  users = acme.users
  team = acme.team
  outsider = (await workspace(url(), ["mallory"])).users["mallory"]!
})

afterAll(async () => {
  await cluster?.stopAll()
})

describe("search.messages through the indexer", () => {
  it("finds a post within seconds, in Slack's shape, then its edit, then nothing once deleted", async () => {
    const alice = on(users["alice"]!, url())
    const channel = (await alice.web.conversations.create({ name: "search-e2e" })).channel!.id!
    const posted = await alice.web.chat.postMessage({ channel, text: "the aardvark report is ready" })

    const found = await eventually(users["bob"]!, "aardvark", (a) => a.messages.total === 1, { highlight: true })
    expect(found.query).toBe("aardvark")
    const [match] = found.messages.matches
    expect(match).toMatchObject({
      type: "message",
      ts: posted.ts,
      text: "the \ue000aardvark\ue001 report is ready",
      user: users["alice"]!.id,
      username: "alice",
      team: team.id,
      channel: { id: channel, name: "search-e2e", is_private: false, is_im: false }
    })
    expect(match!.permalink).toMatch(new RegExp(`/archives/${channel}/p${posted.ts!.replace(".", "")}$`))
    expect(match!.iid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/)
    expect(found.messages.pagination).toEqual({ total_count: 1, page: 1, per_page: 20, page_count: 1, first: 1, last: 1 })
    expect(found.messages.paging).toEqual({ count: 20, total: 1, page: 1, pages: 1 })

    await alice.web.chat.update({ channel, ts: posted.ts!, text: "the anteater report is ready" })
    await eventually(users["bob"]!, "anteater", (a) => a.messages.total === 1)
    expect((await search(users["bob"]!, "aardvark")).messages.total).toBe(0)

    await alice.web.chat.delete({ channel, ts: posted.ts! })
    await eventually(users["bob"]!, "anteater", (a) => a.messages.total === 0)
  })

  it("applies the query syntax: in:, from:, phrases, is:thread, has:link, sort and pages", async () => {
    const alice = on(users["alice"]!, url())
    const bob = on(users["bob"]!, url())
    const ops = (await alice.web.conversations.create({ name: "search-ops" })).channel!.id!
    const dev = (await alice.web.conversations.create({ name: "search-dev" })).channel!.id!
    await bob.web.conversations.join({ channel: ops })
    const root = await alice.web.chat.postMessage({ channel: ops, text: "capybara rollout plan" })
    await bob.web.chat.postMessage({ channel: ops, text: "capybara rollout looks good", thread_ts: root.ts! })
    await alice.web.chat.postMessage({ channel: dev, text: "capybara docs at https://docs.example.com" })
    await alice.web.chat.postMessage({ channel: dev, text: "plan the capybara" })
    await eventually(users["alice"]!, "capybara", (a) => a.messages.total === 4)

    expect(texts(await search(users["alice"]!, "capybara in:#search-dev"))).toEqual(["plan the capybara", "capybara docs at https://docs.example.com"])
    expect(texts(await search(users["alice"]!, `capybara in:<#${ops}>`))).toHaveLength(2)
    expect(texts(await search(users["alice"]!, "capybara from:@bob"))).toEqual(["capybara rollout looks good"])
    expect(texts(await search(users["alice"]!, `capybara from:<@${users["bob"]!.id}>`))).toEqual(["capybara rollout looks good"])
    expect(texts(await search(users["alice"]!, "\"capybara rollout\" -good"))).toEqual(["capybara rollout plan"])
    expect(texts(await search(users["alice"]!, "capybara is:thread"))).toEqual(["capybara rollout looks good", "capybara rollout plan"])
    expect(texts(await search(users["alice"]!, "capybara has:link"))).toEqual(["capybara docs at https://docs.example.com"])
    expect((await search(users["alice"]!, "capybara before:2001-01-01")).messages.total).toBe(0)
    expect((await search(users["alice"]!, "capybara during:today")).messages.total).toBe(4)

    const oldest = await search(users["alice"]!, "capybara", { sort: "timestamp", sort_dir: "asc", count: 3 })
    expect(texts(oldest)).toEqual(["capybara rollout plan", "capybara rollout looks good", "capybara docs at https://docs.example.com"])
    expect(oldest.messages.pagination).toEqual({ total_count: 4, page: 1, per_page: 3, page_count: 2, first: 1, last: 3 })
    const second = await search(users["alice"]!, "capybara", { sort: "timestamp", sort_dir: "asc", count: 3, page: 2 })
    expect(texts(second)).toEqual(["plan the capybara"])
    expect(second.messages.pagination).toMatchObject({ page: 2, first: 4, last: 4 })
  })

  it("answers arguments as Slack does", async () => {
    const alice = on(users["alice"]!, url())
    await expect(alice.web.apiCall("search.messages", {})).rejects.toThrow(/no_query/)
    const capped = await search(users["alice"]!, "nothingmatchesthis", { count: 1000, page: 0 })
    expect(capped.messages.pagination).toMatchObject({ per_page: 100, page: 1, total_count: 0 })
  })
})

describe("visibility (invariant 5)", () => {
  it("shows a private channel to its members only, and hides it at once from one who leaves", async () => {
    const alice = on(users["alice"]!, url())
    const bob = on(users["bob"]!, url())
    const channel = (await alice.web.conversations.create({ name: "search-private", is_private: true })).channel!.id!
    await alice.web.conversations.invite({ channel, users: users["bob"]!.id })
    await alice.web.chat.postMessage({ channel, text: "the pangolin secret" })
    await alice.web.chat.postMessage({ channel: (await alice.web.conversations.create({ name: "search-public" })).channel!.id!, text: "the pangolin rumour" })
    await on(outsider, url()).web.chat.postMessage({
      channel: (await on(outsider, url()).web.conversations.create({ name: "search-foreign" })).channel!.id!,
      text: "the pangolin abroad"
    })

    // Once a member sees it, it is indexed: the others must not.
    const member = await eventually(users["bob"]!, "pangolin", (a) => a.messages.total === 2)
    expect(texts(member)).toEqual(["the pangolin rumour", "the pangolin secret"])
    expect(member.messages.matches.find((m) => m.channel.id === channel)?.channel).toMatchObject({ is_private: true, name: "search-private" })
    await eventually(outsider, "pangolin", (a) => a.messages.total === 1)
    expect(texts(await search(outsider, "pangolin"))).toEqual(["the pangolin abroad"])
    // A guest sees public channels only when in them.
    expect((await search(users["gus"]!, "pangolin")).messages.total).toBe(0)
    expect((await search(users["gus"]!, "pangolin in:#search-private")).messages.total).toBe(0)
    expect(texts(await search(users["alice"]!, `pangolin in:<#${channel}>`))).toEqual(["the pangolin secret"])
    // Naming a channel one cannot read finds nothing, by name or by id.
    expect((await search(outsider, `pangolin in:<#${channel}>`)).messages.total).toBe(0)
    expect((await search(outsider, "pangolin in:#search-private")).messages.total).toBe(0)

    await bob.web.conversations.leave({ channel })
    expect(texts(await search(users["bob"]!, "pangolin"))).toEqual(["the pangolin rumour"])
  })

  it("shows a DM to its two members only, found with in:@user", async () => {
    const alice = on(users["alice"]!, url())
    const dm = (await alice.web.conversations.open({ users: users["bob"]!.id })).channel!.id!
    await alice.web.chat.postMessage({ channel: dm, text: "the axolotl question" })
    const seen = await eventually(users["bob"]!, "axolotl", (a) => a.messages.total === 1)
    expect(seen.messages.matches[0]!.channel).toMatchObject({ id: dm, is_im: true, is_private: true, name: users["alice"]!.id })
    expect(texts(await search(users["alice"]!, "axolotl in:@bob"))).toEqual(["the axolotl question"])
    expect((await search(users["alice"]!, "axolotl in:@gus")).messages.total).toBe(0)
    expect((await search(users["gus"]!, "axolotl")).messages.total).toBe(0)
    expect((await search(outsider, "axolotl")).messages.total).toBe(0)
  })
})

describe("a dead indexer", () => {
  it("catches up on restart with what was posted while it was down", async () => {
    const node = cluster.nodes[0]!
    await node.restart({ env: { CHORUS_SEARCH_INDEXER: "false" } })
    const alice = on(users["alice"]!, url())
    const channel = (await alice.web.conversations.create({ name: "search-catchup" })).channel!.id!
    for (let i = 0; i < 20; i++) await alice.web.chat.postMessage({ channel, text: `the wallaby update ${i}` })
    const before = await search(users["alice"]!, "wallaby")
    expect(before.messages.total).toBe(0)

    await node.restart({ env: { CHORUS_SEARCH_INDEXER: "true" } })
    const after = await eventually(users["alice"]!, "wallaby", (a) => a.messages.total === 20, { count: 100 })
    expect(new Set(texts(after))).toEqual(new Set(Array.from({ length: 20 }, (_, i) => `the wallaby update ${i}`)))
  })
})
