/**
 * bench:search — search.messages over 1,000,000 messages, and indexing lag under
 * sustained posting, on one real node (NATS, PostgreSQL; the configured backend:
 * PostgreSQL full-text unless TYPESENSE_URL is set).
 *
 * 1. A workspace (5 users, 100 public channels, 10 private ones) through the Web API.
 * 2. `--messages` messages bulk-loaded into `messages` with one generate_series INSERT:
 *    8–15 words each from a 5,000-word vocabulary with a Zipf-like skew, some threads,
 *    1 % with a link, spread over 110 channels, 5 authors and a year.
 * 3. `chorus search reindex` (the real CLI, progress bar on stderr) indexes them.
 * 4. Typical queries (one or two words of middling frequency, a phrase, in:, from:,
 *    after:, has:link, sort by score and by timestamp, highlights) through
 *    search.messages, one at a time, as a user who reads 105 of the 110 channels.
 * 5. Sustained posting (`--rate` messages/s for `--seconds`) through chat.postMessage;
 *    the lag of each message is the time from its acknowledgment to the moment it is
 *    in the index (polled every 20 ms; directly in search_documents for PostgreSQL,
 *    through search.messages for Typesense).
 *
 * Usage: npm run bench:search [-- --messages 1000000 --queries 300 --rate 100 --seconds 20 --database URL]
 * Prints a table, then one JSON line.
 */
import { spawn } from "node:child_process"
import { performance } from "node:perf_hooks"
import { parseArgs } from "node:util"
import pg from "pg"
import { startCluster } from "../test/support/cluster.ts"
import { on, workspace } from "../test/support/chat.ts"
import { REPO_ROOT, sleep } from "../test/support/processes.ts"
import { percentile, printTable } from "./report.ts"

const { values } = parseArgs({
  options: {
    messages: { type: "string", default: "1000000" },
    queries: { type: "string", default: "300" },
    rate: { type: "string", default: "100" },
    seconds: { type: "string", default: "20" },
    // Keep the data for a look afterwards: this database (created beforehand) is used and not dropped.
    database: { type: "string" }
  }
})
const messageCount = Number(values.messages)
const queryCount = Number(values.queries)
const rate = Number(values.rate)
const seconds = Number(values.seconds)
const typesense = process.env.TYPESENSE_URL !== undefined

// ---- a vocabulary with a skew ----------------------------------------------------------

// mulberry32: a seeded generator in 32-bit integer arithmetic.
let seed = 12345
const random = () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}
const syllables = ["ka", "lo", "mi", "ne", "su", "ta", "ro", "vi", "da", "pe", "zu", "ho", "ga", "ri", "fo", "be", "ny", "wa", "chi", "mo"]
const vocabulary: Array<string> = []
const taken = new Set<string>()
while (vocabulary.length < 5_000) {
  const length = 2 + Math.floor(random() * 3)
  let w = ""
  for (let i = 0; i < length; i++) w += syllables[Math.floor(random() * syllables.length)]
  if (!taken.has(w)) {
    taken.add(w)
    vocabulary.push(w)
  }
}
/** Word rank r (0-based) is drawn with probability ∝ the slope of (r/n)^(1/skew): a few very common words, a long tail. */
const skew = 2.5
const middling = (lo: number, hi: number) => vocabulary[lo + Math.floor(random() * (hi - lo))]!

const started = performance.now()
const phase = (name: string) => console.error(`[bench:search] ${name} (${((performance.now() - started) / 1000).toFixed(1)} s)`)

const cluster = await startCluster({
  nodes: 1,
  env: {
    CHORUS_SHARDS: "32",
    CHORUS_RATE_LIMITS: "off",
    CHORUS_LOG_LEVEL: "WARN",
    CHORUS_DB_POOL: "12",
    ...(values.database === undefined ? {} : { DATABASE_URL: values.database })
  }
})
const db = new pg.Client({ connectionString: cluster.databaseUrl })
await db.connect()
try {
  const url = cluster.nodes[0]!.url
  phase("workspace")
  const { team, users } = await workspace(url, ["alice", "bob", "carol", "dave"])
  const alice = on(users["alice"]!, url)
  // Alice first: she creates the channels (and is in them); the others join some to post.
  const people = [users["alice"]!, ...Object.values(users).filter((u) => u.id !== users["alice"]!.id)]
  const channels: Array<string> = []
  for (let i = 0; i < 100; i++) channels.push((await alice.web.conversations.create({ name: `bench-${i}` })).channel!.id!)
  const privateChannels: Array<string> = []
  for (let i = 0; i < 10; i++) {
    const owner = on(i < 5 ? users["alice"]! : users["bob"]!, url)
    privateChannels.push((await owner.web.conversations.create({ name: `bench-private-${i}`, is_private: true })).channel!.id!)
  }
  const all = [...channels, ...privateChannels]

  phase(`bulk load of ${messageCount} messages`)
  const yearStart = Date.UTC(2023, 0, 1) / 1000
  const spacing = Math.max(1, Math.floor((365 * 86_400) / messageCount))
  await db.query("SET synchronous_commit = off")
  const loadStart = performance.now()
  const chunk = 250_000
  for (let from = 1; from <= messageCount; from += chunk) {
    const to = Math.min(messageCount, from + chunk - 1)
    await db.query(
      `INSERT INTO messages (channel_id, ts, seq, team_id, user_id, text, thread_ts)
       SELECT ch, ts, 1000000 + i, $3, u, body, CASE WHEN i % 50 = 7 THEN thread END
       FROM (
         SELECT i,
           ($1::text[])[1 + i % array_length($1::text[], 1)] AS ch,
           lpad((${yearStart} + i * ${spacing})::text, 10, '0') || '.' || lpad((i % 1000000)::text, 6, '0') AS ts,
           lpad((${yearStart} + (i - 110 * 3) * ${spacing})::text, 10, '0') || '.' || lpad(((i - 110 * 3) % 1000000)::text, 6, '0') AS thread,
           ($2::text[])[1 + (i * 7) % array_length($2::text[], 1)] AS u,
           (SELECT string_agg(($4::text[])[1 + floor(power(random(), ${skew}) * array_length($4::text[], 1))::int], ' ')
              FROM generate_series(1, 8 + (i % 8))) ||
             CASE WHEN i % 100 = 3 THEN ' https://example.com/page/' || i ELSE '' END AS body
         FROM generate_series($5::int, $6::int) AS i
       ) g`,
      [all, people.map((p) => p.id), team.id, vocabulary, from, to]
    )
    console.error(`[bench:search]   ${to.toLocaleString("en-US")} messages`)
  }
  await db.query("ANALYZE messages")
  const loadSeconds = (performance.now() - loadStart) / 1000

  phase("chorus search reindex")
  const reindexStart = performance.now()
  await new Promise<void>((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", "src/cli/main.ts", "search", "reindex", "--batch", "20000"], {
      cwd: REPO_ROOT,
      env: { ...process.env, DATABASE_URL: cluster.databaseUrl, CHORUS_CLUSTER: cluster.name },
      stdio: ["ignore", "inherit", "inherit"]
    })
    child.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`reindex exited with ${code}`))))
  })
  const reindexSeconds = (performance.now() - reindexStart) / 1000
  if (!typesense) await db.query("ANALYZE search_documents")
  const indexed = typesense
    ? messageCount
    : Number((await db.query("SELECT count(*) AS n FROM search_documents WHERE NOT deleted")).rows[0].n)

  // ---- query latency ----------------------------------------------------------------
  phase(`${queryCount} queries`)
  const sampleText = (await db.query("SELECT text FROM messages WHERE channel_id = $1 ORDER BY ts DESC LIMIT 50", [channels[3]])).rows.map((r) => r.text as string)
  const kinds: ReadonlyArray<readonly [string, () => Record<string, unknown>]> = [
    ["one word", () => ({ query: middling(30, 1_000) })],
    ["two words", () => ({ query: `${middling(20, 300)} ${middling(20, 300)}` })],
    ["phrase", () => {
      const words = sampleText[Math.floor(random() * sampleText.length)]!.split(" ")
      const at = Math.floor(random() * (words.length - 2))
      return { query: `"${words[at]} ${words[at + 1]}"` }
    }],
    ["word in:#channel", () => ({ query: `${middling(30, 1_000)} in:#bench-${Math.floor(random() * 100)}` })],
    ["word from:@user", () => ({ query: `${middling(30, 1_000)} from:@${["alice", "bob", "carol", "dave"][Math.floor(random() * 4)]}` })],
    ["word after:date", () => ({ query: `${middling(30, 1_000)} after:2023-${String(1 + Math.floor(random() * 11)).padStart(2, "0")}-15` })],
    ["word has:link", () => ({ query: `${middling(30, 1_000)} has:link` })],
    ["word, by time", () => ({ query: middling(30, 1_000), sort: "timestamp" })],
    ["word, highlighted", () => ({ query: middling(30, 1_000), highlight: true })],
    ["rare word", () => ({ query: middling(2_000, 5_000) })]
  ]
  const searchOnce = async (args: Record<string, unknown>) => {
    const t0 = performance.now()
    const answer = (await alice.web.apiCall("search.messages", args)) as unknown as { messages: { total: number } }
    return { ms: performance.now() - t0, total: answer.messages.total }
  }
  for (let i = 0; i < 20; i++) await searchOnce(kinds[i % kinds.length]![1]())
  const latencies: Array<number> = []
  const byKind = new Map<string, { ms: Array<number>; totals: Array<number> }>()
  for (let i = 0; i < queryCount; i++) {
    const [kind, make] = kinds[i % kinds.length]!
    const { ms, total } = await searchOnce(make())
    latencies.push(ms)
    const entry = byKind.get(kind) ?? { ms: [], totals: [] }
    entry.ms.push(ms)
    entry.totals.push(total)
    byKind.set(kind, entry)
  }

  // ---- indexing lag under sustained posting -------------------------------------------
  phase(`posting ${rate}/s for ${seconds} s`)
  // Everyone posts, in the first ten public channels (which they join).
  const posters = people.map((p) => on(p, url))
  const busy = channels.slice(0, 10)
  for (const poster of posters.slice(1)) for (const channel of busy) await poster.web.conversations.join({ channel })
  const pending = new Map<string, number>() // "channel ts" -> acked at
  const lags: Array<number> = []
  let postErrors = 0
  let posting = true
  let postEnd = Number.POSITIVE_INFINITY
  const poller = (async () => {
    while (posting || pending.size > 0) {
      await sleep(20)
      if (pending.size === 0) continue
      const keys = [...pending.keys()]
      let seen: Array<string>
      if (!typesense) {
        const rows = await db.query(
          "SELECT channel_id || ' ' || ts AS k FROM search_documents WHERE (channel_id, ts) IN (SELECT split_part(k, ' ', 1), split_part(k, ' ', 2) FROM unnest($1::text[]) k)",
          [keys]
        )
        seen = rows.rows.map((r) => r.k as string)
      } else {
        const answer = (await alice.web.apiCall("search.messages", { query: "lagprobe", sort: "timestamp", count: 100 })) as unknown as {
          messages: { matches: ReadonlyArray<{ ts: string; channel: { id: string } }> }
        }
        seen = answer.messages.matches.map((m) => `${m.channel.id} ${m.ts}`)
      }
      const now = performance.now()
      for (const k of seen) {
        const acked = pending.get(k)
        if (acked !== undefined) {
          lags.push(now - acked)
          pending.delete(k)
        }
      }
      if (!posting && performance.now() - postEnd > 30_000) break
    }
  })()
  const total = Math.round(rate * seconds)
  const inflight: Array<Promise<void>> = []
  const postStart = performance.now()
  for (let sent = 0; sent < total;) {
    const due = Math.min(total, Math.floor(((performance.now() - postStart) / 1000) * rate))
    for (; sent < due; sent++) {
      const i = sent
      const poster = posters[i % posters.length]!
      const channel = busy[i % busy.length]!
      inflight.push(
        poster.web.chat.postMessage({ channel, text: `lagprobe ${middling(30, 1_000)} ${middling(30, 1_000)} number ${i}` }).then(
          (r) => void pending.set(`${channel} ${r.ts}`, performance.now()),
          () => void postErrors++
        )
      )
    }
    await sleep(2)
  }
  await Promise.all(inflight)
  postEnd = performance.now()
  posting = false
  await poller
  const postedPerSecond = (total - postErrors) / ((postEnd - postStart) / 1000)

  // ---- report -------------------------------------------------------------------------
  printTable(
    `bench:search — ${indexed.toLocaleString("en-US")} messages indexed (${typesense ? "Typesense" : "PostgreSQL full-text"}), one node; a reader of ${channels.length + 5} of ${all.length} channels`,
    ["query", "n", "p50 ms", "p99 ms", "median matches"],
    [
      ...[...byKind].map(([kind, { ms, totals }]) => [kind, ms.length, percentile(ms, 50), percentile(ms, 99), percentile(totals, 50)]),
      ["all", latencies.length, percentile(latencies, 50), percentile(latencies, 99), "-"]
    ]
  )
  printTable("indexing", ["phase", "value"], [
    ["bulk load (s)", loadSeconds],
    ["chorus search reindex (s)", reindexSeconds],
    ["posted / s (offered)", `${postedPerSecond.toFixed(1)} (${rate})`],
    ["post errors", postErrors],
    ["indexed within 30 s", `${lags.length} / ${total - postErrors}`],
    ["lag p50 (ms)", percentile(lags, 50)],
    ["lag p99 (ms)", percentile(lags, 99)],
    ["lag max (ms)", Math.max(...lags)]
  ])
  console.log(JSON.stringify({
    bench: "search",
    backend: typesense ? "typesense" : "postgres",
    messages_indexed: indexed,
    search_p50_ms: round(percentile(latencies, 50)),
    search_p99_ms: round(percentile(latencies, 99)),
    index_lag_p50_ms: round(percentile(lags, 50)),
    index_lag_p99_ms: round(percentile(lags, 99)),
    posted_per_s: round(postedPerSecond),
    not_indexed: total - postErrors - lags.length,
    reindex_s: round(reindexSeconds)
  }))
} finally {
  await db.end().catch(() => undefined)
  await cluster.stopAll()
}

function round(n: number) {
  return Math.round(n * 100) / 100
}
