// One NATS socket write per event-loop turn (decision 0026), against the real
// nats-server: publishes made from separate microtasks leave in one write, all arrive
// in order, a full buffer is still written at once, and `flush` still round-trips.
// If a nats.js upgrade changes the internals the module relies on, the first test
// fails (the node would only log a warning and run unpatched).

import { connect } from "@nats-io/transport-node"
import type { NatsConnection } from "@nats-io/transport-node"
import { randomUUID } from "node:crypto"
import { afterEach, expect, it } from "vitest"
import { coalesceWrites } from "../../src/transport/NatsWriteCoalescing.ts"
import { natsUrl } from "../support/services.ts"

const connections: Array<NatsConnection> = []
afterEach(async () => {
  for (const nc of connections.splice(0)) await nc.close()
})

const open = async () => {
  const nc = await connect({ servers: natsUrl() })
  connections.push(nc)
  return nc
}

/** Counts the writes the connection's transport makes. */
const countWrites = (nc: NatsConnection) => {
  const transport = (nc as unknown as { protocol: { transport: { send: (data: Uint8Array) => void } } }).protocol.transport
  const send = transport.send.bind(transport)
  const counter = { writes: 0 }
  transport.send = (data) => {
    counter.writes++
    send(data)
  }
  return counter
}

const received = async (nc: NatsConnection, subject: string, count: number) => {
  const sub = nc.subscribe(subject, { max: count })
  await nc.flush()
  return async () => {
    const texts: Array<string> = []
    for await (const msg of sub) texts.push(msg.string())
    return texts
  }
}

/** A patched publisher, a subscriber collecting `count` messages on a fresh subject, and the publisher's write count. */
const patchedPair = async (count: number) => {
  const subscriber = await open()
  const publisher = await open()
  expect(coalesceWrites(publisher)).toBe(true)
  const subject = `coalesce.${randomUUID()}`
  const collect = await received(subscriber, subject, count)
  return { publisher, subject, collect, counter: countWrites(publisher) }
}

it("recognises the nats.js connection it patches", async () => {
  expect(coalesceWrites(await open())).toBe(true)
})

it("sends the publishes of one turn in one write, in order", async () => {
  const { publisher, subject, collect, counter } = await patchedPair(20)
  // Twenty publishes, each from its own microtask (as fibers resume), in one turn.
  await new Promise<void>((resolve) => {
    let chain = Promise.resolve()
    for (let i = 0; i < 20; i++) chain = chain.then(() => publisher.publish(subject, `m${i}`))
    void chain.then(() => setImmediate(resolve))
  })
  expect(counter.writes).toBe(1)
  expect(await collect()).toEqual(Array.from({ length: 20 }, (_, i) => `m${i}`))
})

it("writes a buffer past the pending limit at once, and flush still round-trips", async () => {
  const { publisher, subject, collect, counter } = await patchedPair(3)
  const big = "x".repeat(64 * 1024) // the client's pending limit is 32 KiB
  publisher.publish(subject, big)
  expect(counter.writes).toBe(1) // synchronously, not at the end of the turn
  publisher.publish(subject, "small")
  publisher.publish(subject, "last")
  await publisher.flush()
  expect((await collect()).map((t) => t.length)).toEqual([big.length, 5, 4])
})
