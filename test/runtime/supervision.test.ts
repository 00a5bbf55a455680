/**
 * Supervision, on a real (in-process) runtime node with real NATS and PostgreSQL: a
 * defect restarts the actor with backoff and the message is retried; past the restart
 * limit the message goes to the dead-letter stream and its sender gets ActorFailed;
 * an idle actor is passivated and comes back on its next message; a bad message is
 * answered with an error and takes nothing down; a full mailbox refuses volatile
 * messages at once and holds durable ones back without losing any.
 */
import { Duration, Effect, Exit, HashMap, Layer, Logger, LogLevel, ManagedRuntime, Redacted, Schema } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as ChorusConfig from "../../src/config/ChorusConfig.ts"
import * as Behaviour from "../../src/runtime/Behaviour.ts"
import * as Entity from "../../src/runtime/Entity.ts"
import * as Envelope from "../../src/runtime/Envelope.ts"
import * as GroupCommit from "../../src/runtime/GroupCommit.ts"
import * as Membership from "../../src/runtime/Membership.ts"
import * as RuntimeMetrics from "../../src/runtime/RuntimeMetrics.ts"
import * as Sharding from "../../src/runtime/Sharding.ts"
import { ShardingClient } from "../../src/runtime/ShardingClient.ts"
import * as ShardingClientModule from "../../src/runtime/ShardingClient.ts"
import * as Database from "../../src/store/Database.ts"
import * as Nats from "../../src/transport/Nats.ts"
import { deleteNatsFootprint } from "../support/cluster.ts"
import { freshDatabase, natsUrl, uniqueCluster } from "../support/services.ts"

class Flaky extends Schema.TaggedRequest<Flaky>()("Flaky", {
  failure: Schema.Never,
  success: Schema.Struct({ attempts: Schema.Number }),
  payload: { key: Schema.String, failTimes: Schema.Int }
}) {}
class Touch extends Schema.TaggedRequest<Touch>()("Touch", {
  failure: Schema.Never,
  success: Schema.Struct({ activations: Schema.Number }),
  payload: {}
}) {}

class Hold extends Schema.TaggedRequest<Hold>()("Hold", {
  failure: Schema.Never,
  success: Schema.Struct({ n: Schema.Number }),
  payload: { n: Schema.Int }
}) {}

const Faulty = Entity.make("faulty", [Flaky, Touch, Hold], { Flaky: "volatile", Touch: "volatile", Hold: "volatile" })

/** A promise and its resolve (Node 20 has no Promise.withResolvers). */
const latch = () => {
  let resolve: () => void = () => {}
  const promise = new Promise<void>((r) => (resolve = r))
  return { promise, resolve: () => resolve() }
}
/** Hold handlers wait for the gate; `held` is the order in which they started. */
let gate = latch()
const held: Array<string> = []

// What the actor went through, seen from outside it (it is restarted in between).
const attempts = new Map<string, number>()
const activations = new Map<string, number>()

const faulty = Behaviour.sequential({
  entity: Faulty,
  init: (ctx) =>
    Effect.sync(() => {
      activations.set(ctx.address.id, (activations.get(ctx.address.id) ?? 0) + 1)
      return {}
    }),
  handlers: {
    Flaky: (_ctx, state, message) =>
      Effect.suspend(() => {
        const n = (attempts.get(message.key) ?? 0) + 1
        attempts.set(message.key, n)
        return n <= message.failTimes
          ? Effect.die(new Error(`deliberate defect ${n} of ${message.failTimes}`))
          : Effect.succeed([state, { attempts: n }] as const)
      }),
    Touch: (ctx, state) => Effect.succeed([state, { activations: activations.get(ctx.address.id) ?? 0 }] as const),
    Hold: (ctx, state, message) =>
      Effect.sync(() => held.push(`${ctx.address.id}:${message.n}`)).pipe(
        Effect.zipRight(Effect.promise(() => gate.promise)),
        Effect.as([state, { n: message.n }] as const)
      )
  }
})

/** What the node logged (warnings and up), with each line's annotations. */
const logged: Array<{ readonly message: string; readonly annotations: Readonly<Record<string, unknown>> }> = []
const capturingLogger = Logger.make(({ annotations, message }) => {
  logged.push({ message: [message].flat().map(String).join(" "), annotations: Object.fromEntries(HashMap.toEntries(annotations)) })
})

type SoloRuntime = ManagedRuntime.ManagedRuntime<ShardingClient | Nats.Nats | RuntimeMetrics.RuntimeMetrics | Sharding.Sharding, unknown>

/** One in-process node with its own database and NATS namespace, serving `faulty`. */
const startSolo = async (bounds: { readonly mailboxCapacity: number; readonly maxBatch: number; readonly requestTimeout?: Duration.Duration; readonly failureTimeout?: Duration.Duration; readonly requestDeadline?: Duration.Duration }) => {
  const db = await freshDatabase()
  const cluster = uniqueCluster()
  const config = ChorusConfig.layer({
    nodeId: "solo",
    cluster,
    natsUrl: natsUrl(),
    databaseUrl: Redacted.make(db.url),
    shards: 8,
    maxRestarts: 2,
    restartWindow: Duration.seconds(30),
    passivateAfter: Duration.millis(300),
    requestDeadline: Duration.seconds(20),
    ...bounds
  })
  const infra = Layer.mergeAll(
    Nats.layer({ servers: natsUrl(), cluster, name: "solo", provision: true }),
    Database.layer({ url: Redacted.make(db.url), maxConnections: 4, applicationName: "supervision test" }),
    RuntimeMetrics.layer("solo")
  )
  const node = Layer.unwrapEffect(
    Effect.gen(function*() {
      yield* Database.migrate
      return Sharding.layer([yield* Behaviour.toRunnable(faulty)])
    })
  ).pipe(Layer.provideMerge(Membership.layer), Layer.provideMerge(GroupCommit.layer()))
  const layer = ShardingClientModule.layer().pipe(
    Layer.provideMerge(node),
    Layer.provideMerge(infra),
    Layer.provideMerge(config),
    // The deliberate defects log errors by design: kept for assertions, not printed.
    Layer.provide(Logger.replace(Logger.defaultLogger, capturingLogger)),
    Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
  )
  const runtime: SoloRuntime = ManagedRuntime.make(layer)
  await runtime.runPromise(Sharding.waitUntilServing(8, "20 seconds"))
  return {
    runtime,
    send: <A>(effect: (client: ShardingClient["Type"]) => Effect.Effect<A, unknown>) => runtime.runPromiseExit(Effect.flatMap(ShardingClient, effect)),
    stop: async () => {
      try {
        await runtime.dispose()
      } finally {
        await deleteNatsFootprint(natsUrl(), cluster)
        await db.drop()
      }
    }
  }
}

// Small bounds, so the mailbox test can fill a mailbox.
let solo: Awaited<ReturnType<typeof startSolo>>
let runtime: SoloRuntime
beforeAll(async () => {
  solo = await startSolo({ mailboxCapacity: 3, maxBatch: 1 })
  runtime = solo.runtime
})
afterAll(async () => {
  await solo?.stop()
})

const send = <A>(effect: (client: ShardingClient["Type"]) => Effect.Effect<A, unknown>) => solo.send(effect)

describe("supervision", () => {
  it("restarts an actor after a defect and retries the message", async () => {
    const exit = await send((c) => c.send(Faulty, "a", new Flaky({ key: "twice", failTimes: 2 })))
    expect(exit).toEqual(Exit.succeed({ attempts: 3 }))
    // Each restart re-ran init: one activation plus two restarts.
    expect(activations.get("a")).toBe(3)
    const metrics = await runtime.runPromise(RuntimeMetrics.render)
    expect(metrics).toMatch(/chorus_actor_restarts_total\{type="faulty",node="solo"\} 2/)
    // What the runtime logs about an actor says which actor.
    const restarts = logged.filter((l) => l.message.includes("actor restarting"))
    expect(restarts.length).toBe(2)
    for (const line of restarts) expect(line.annotations["actor"]).toBe("faulty/a")
  })

  it("past the restart limit, dead-letters the message, answers ActorFailed, and keeps serving", async () => {
    const exit = await send((c) => c.send(Faulty, "b", new Flaky({ key: "always", failTimes: 1_000 })))
    expect(Exit.isFailure(exit)).toBe(true)
    expect(JSON.stringify(exit)).toContain("ActorFailed")
    const dead = await runtime.runPromise(Effect.flatMap(Nats.Nats, (nats) =>
      nats.call("dead letters", () => nats.jsm.streams.getMessage(nats.names.deadLettersStream, { last_by_subj: nats.names.deadLetterSubject("faulty") }))
    ))
    const envelope = Envelope.decodeRequest(dead!.data)
    expect(envelope._tag === "Right" ? envelope.right.to : undefined).toBe("faulty/b")
    expect(dead!.header.get("Chorus-Reason")).toContain("deliberate defect")
    // The same actor answers the next message.
    expect(await send((c) => c.send(Faulty, "b", new Touch()))).toMatchObject({ _tag: "Success" })
  })

  it("passivates an idle actor and activates it again on its next message", async () => {
    const first = await send((c) => c.send(Faulty, "c", new Touch()))
    expect(first).toEqual(Exit.succeed({ activations: 1 }))
    await new Promise((resolve) => setTimeout(resolve, 1_000))
    const second = await send((c) => c.send(Faulty, "c", new Touch()))
    expect(second).toEqual(Exit.succeed({ activations: 2 }))
  })

  it("answers a malformed message with an error and stays up", async () => {
    const reply = await runtime.runPromise(Effect.flatMap(Nats.Nats, (nats) =>
      nats.call("raw request", () =>
        nats.nc.request(nats.names.requestSubject(0), new TextEncoder().encode(JSON.stringify({ id: "x", to: "faulty/zz", msg: { _tag: "Nope" }, t: Date.now() })), { timeout: 5_000 })
      )
    ))
    expect(new TextDecoder().decode(reply.data)).toContain("MalformedMessage")
    expect(await send((c) => c.send(Faulty, "d", new Touch()))).toMatchObject({ _tag: "Success" })
  })

  it("a malformed record in the membership bucket is ignored: the node's view stays fresh and it keeps serving", async () => {
    const put = (key: string, value: string) =>
      runtime.runPromise(Effect.flatMap(Nats.Nats, (nats) => nats.call("put", () => nats.nodes.put(key, value))))
    // Live-looking but without an id (it once broke every later view: sorting by id), and not JSON at all.
    await put("no-id", JSON.stringify({ incarnation: "x", url: "http://x", weight: 1, state: "up", heartbeatAt: Date.now(), startedAt: 0, stats: {} }))
    await put("not-json", "{")
    try {
      // A heartbeat the node wrote after the bad records…
      const stored = async () =>
        JSON.parse((await runtime.runPromise(Effect.flatMap(Nats.Nats, (nats) => nats.call("get", () => nats.nodes.get("solo")))))!.string()) as { heartbeatAt: number }
      const after = Date.now()
      const deadline = Date.now() + 10_000
      let beat = await stored()
      while (beat.heartbeatAt <= after && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 50))
        beat = await stored()
      }
      expect(beat.heartbeatAt).toBeGreaterThan(after)
      // …reaches its view (a view frozen at the put never shows it).
      const view = () => runtime.runPromise(Effect.flatMap(Sharding.Sharding, (sharding) => sharding.view))
      while ((await view()).nodes.get("solo")!.heartbeatAt < beat.heartbeatAt && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
      expect((await view()).nodes.get("solo")!.heartbeatAt).toBeGreaterThanOrEqual(beat.heartbeatAt)
      expect((await view()).live.map((n) => n.id)).toEqual(["solo"])
      expect(logged.filter((l) => l.message.includes("bad membership record")).length).toBeGreaterThanOrEqual(2)
      expect(await send((c) => c.send(Faulty, "m", new Touch()))).toMatchObject({ _tag: "Success" })
    } finally {
      await runtime.runPromise(Effect.flatMap(Nats.Nats, (nats) => nats.call("delete", () => Promise.all([nats.nodes.delete("no-id"), nats.nodes.delete("not-json")]))))
    }
  })

  it("a membership watch that stops delivering is recreated: the node's view stays fresh", async () => {
    const nats = await runtime.runPromise(Nats.Nats)
    const view = () => runtime.runPromise(Effect.flatMap(Sharding.Sharding, (sharding) => sharding.view))
    // The watch is an ordered consumer on the bucket's stream. Deleted under it, it goes
    // silent: nats.js notices only after two missed idle heartbeats (60 s).
    const stream = `KV_${nats.names.nodesBucket}`
    const consumers = await nats.jsm.consumers.list(stream).next()
    expect(consumers.length).toBeGreaterThan(0)
    const deletedAt = Date.now()
    for (const consumer of consumers) await nats.jsm.consumers.delete(stream, consumer.name)
    const deadline = deletedAt + 15_000
    while ((await view()).nodes.get("solo")!.heartbeatAt < deletedAt + 2_000 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    expect((await view()).nodes.get("solo")!.heartbeatAt).toBeGreaterThanOrEqual(deletedAt + 2_000)
    expect(logged.some((l) => l.message.includes("membership watch restarting"))).toBe(true)
    expect((await view()).live.map((n) => n.id)).toEqual(["solo"])
  })

  it("a request to a shard this process serves is answered in process, not through NATS", async () => {
    const published = () => runtime.runPromise(Effect.map(Nats.Nats, (nats) => nats.nc.stats().outMsgs))
    const before = await published()
    for (let i = 0; i < 100; i++) expect(await send((c) => c.send(Faulty, `local-${i % 10}`, new Touch()))).toMatchObject({ _tag: "Success" })
    // Over NATS each would publish a request and a reply (200 at least); what remains
    // is the node's own heartbeats and lease renewals meanwhile.
    expect(await published() - before).toBeLessThan(60)
  })

  it("a sender's retries of a request queued or in flight behind a slow batch wait for its answer, instead of queueing copies", async () => {
    const queued = () => runtime.runPromise(Effect.map(Effect.flatMap(Sharding.Sharding, (s) => s.held), (h) => h.reduce((n, s) => n + s.queued, 0)))
    gate = latch()
    const first = send((c) => c.send(Faulty, "retried", new Hold({ n: 0 })))
    for (let i = 0; i < 200 && !held.includes("retried:0"); i++) await new Promise((r) => setTimeout(r, 25))
    // Queued behind the held one; both senders time out (requestTimeout) and retry.
    const joined = () => runtime.runPromise(Effect.flatMap(RuntimeMetrics.RuntimeMetrics, (m) => Effect.promise(() => m.retriesJoined.get()))).then((v) => v.values.reduce((n, x) => n + x.value, 0))
    const joinedBefore = await joined()
    const second = send((c) => c.send(Faulty, "retried", new Hold({ n: 1 }), { commandId: "retried-1" }))
    for (let i = 0; i < 400 && (await joined()) - joinedBefore < 4; i++) await new Promise((r) => setTimeout(r, 50))
    expect((await joined()) - joinedBefore).toBeGreaterThanOrEqual(4)
    expect(await queued()).toBe(1)
    gate.resolve()
    expect(await first).toEqual(Exit.succeed({ n: 0 }))
    expect(await second).toEqual(Exit.succeed({ n: 1 }))
    expect(held.filter((h) => h.startsWith("retried:"))).toEqual(["retried:0", "retried:1"])
  }, 30_000)

  it("a full mailbox answers MailboxFull to volatile senders at once, and holds durable ones back without losing any", async () => {
    const until = async (what: () => boolean) => {
      for (let i = 0; i < 200 && !what(); i++) await new Promise((r) => setTimeout(r, 25))
      expect(what()).toBe(true)
    }
    const hold = (actor: string, n: number, delivery: "volatile" | "durable") => send((c) => c.send(Faulty, actor, new Hold({ n }), { delivery }))

    // Volatile: one message in the handler, three waiting (the bound), the rest refused.
    gate = latch()
    const first = hold("full", 0, "volatile")
    await until(() => held.includes("full:0"))
    const rest = [1, 2, 3, 4, 5].map((n) => hold("full", n, "volatile"))
    const refused = await Promise.all(rest.slice(3))
    for (const exit of refused) expect(JSON.stringify(exit)).toContain("MailboxFull")
    gate.resolve()
    const served = await Promise.all([first, ...rest.slice(0, 3)])
    expect(served).toEqual([0, 1, 2, 3].map((n) => Exit.succeed({ n })))
    expect(held.filter((h) => h.startsWith("full:"))).toEqual(["full:0", "full:1", "full:2", "full:3"])

    // Durable: the shard's intake waits for room instead; every command is applied, in order.
    gate = latch()
    const firstDurable = hold("backed", 0, "durable")
    await until(() => held.includes("backed:0"))
    const more = [1, 2, 3, 4, 5, 6].map((n) => hold("backed", n, "durable"))
    gate.resolve()
    expect(await Promise.all([firstDurable, ...more])).toEqual([0, 1, 2, 3, 4, 5, 6].map((n) => Exit.succeed({ n })))
    expect(held.filter((h) => h.startsWith("backed:"))).toEqual([0, 1, 2, 3, 4, 5, 6].map((n) => `backed:${n}`))
  })
})

describe("long mailboxes", () => {
  let big: Awaited<ReturnType<typeof startSolo>>
  beforeAll(async () => {
    // Senders wait out the held message without retrying (a retry would queue a copy).
    // Generous: on a loaded machine queueing 3,000 messages can take many seconds, and
    // sending them all from this process can stall its event loop past the default
    // 1 s failure timeout, which would make the node give up its own shards.
    big = await startSolo({ mailboxCapacity: 5_000, maxBatch: 1, requestTimeout: Duration.seconds(90), requestDeadline: Duration.seconds(120), failureTimeout: Duration.seconds(10) })
  })
  afterAll(async () => {
    await big?.stop()
  })

  it("thousands of queued messages handled one batch at a time, synchronously, without growing the stack", async () => {
    gate = latch()
    const first = big.send((c) => c.send(Faulty, "deep", new Hold({ n: 0 })))
    for (let i = 0; i < 800 && !held.includes("deep:0"); i++) await new Promise((r) => setTimeout(r, 25))
    expect(held).toContain("deep:0")
    // Queued behind the held message; once it is released they run back to back.
    const rest = Array.from({ length: 3_000 }, () => big.send((c) => c.send(Faulty, "deep", new Touch())))
    // Every one of them is in the mailbox before the gate opens.
    const queued = () => big.runtime.runPromise(Effect.map(Effect.flatMap(Sharding.Sharding, (s) => s.held), (held) => held.reduce((n, h) => n + h.queued, 0)))
    for (let i = 0; i < 2_400 && (await queued()) < 3_000; i++) await new Promise((r) => setTimeout(r, 25))
    expect(await queued()).toBe(3_000)
    gate.resolve()
    const all = await Promise.all([first, ...rest])
    expect(all.filter(Exit.isSuccess)).toHaveLength(3_001)
  }, 150_000)
})
