// The gateway across a NATS outage (a private nats-server): events committed while the
// node was cut off from NATS were never published, and reach the sockets from
// channel_events as soon as the connection is back, without waiting for a next event.

import { afterAll, beforeAll, expect, it } from "vitest"
import * as Ids from "../../src/domain/Ids.ts"
import { freshDatabase, startNatsServer, uniqueCluster, type FreshDatabase, type NatsServer } from "../support/index.ts"
import { sleep, startGatewayNode, type GatewayNode } from "./gatewayHarness.ts"

let db: FreshDatabase
let nats: NatsServer
let node: GatewayNode

beforeAll(async () => {
  db = await freshDatabase({ prefix: "gateway_nats" })
  nats = await startNatsServer()
  node = await startGatewayNode({ databaseUrl: db.url, cluster: uniqueCluster(), natsUrl: nats.url })
})
afterAll(async () => {
  await node?.close()
  await nats?.stop()
  await db?.drop()
})

it("catches up from channel_events after a NATS reconnect", async () => {
  const team = Ids.make("T")
  const a = Ids.make("U")
  const channel = await node.createChannel(team)
  await node.join(channel, a, { notify: false })
  const socket = await node.connect(a, team)
  const before = await node.say(channel, a, 2, "before")
  await socket.waitSeq(channel, before[1]!["seq"])

  await nats.stop()
  const during = []
  for (let i = 0; i < 3; i++) during.push(await node.commit(channel, { type: "message", user: a, text: `during ${i}` }))
  await sleep(300)
  await nats.restart()

  const last = during[2]!["seq"] as number
  await socket.waitSeq(channel, last, 15_000)
  expect(socket.seqs(channel)).toEqual([before[0]!["seq"], before[1]!["seq"], ...during.map((e) => e["seq"])])
  // And live again afterwards.
  const after = await node.say(channel, a, 1, "after")
  await socket.waitSeq(channel, after[0]!["seq"], 10_000)
  socket.close()
})
