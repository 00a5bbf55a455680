// One durable responder process for `bench:floor -- --durable` (plain JavaScript, so it
// costs what nats.js and JetStream cost): for each of its shards a pull consumer on the
// work-queue stream, as a node runs one; each command is acked and answered.
// argv: natsUrl streamName subjectPrefix index burnMicros
import { jetstream } from "@nats-io/jetstream"
import { connect } from "@nats-io/transport-node"

const [url, stream, prefix, index, burnArg] = process.argv.slice(2)
const burnMs = Number(burnArg) / 1000
const nc = await connect({ servers: url })
const js = jetstream(nc)
const decoder = new TextDecoder()
for (let shard = Number(index); shard < 128; shard += 3) {
  const consumer = await js.consumers.get(stream, `shard-${shard}`)
  await consumer.consume({
    max_messages: 256,
    callback: (m) => {
      const until = performance.now() + burnMs
      while (performance.now() < until);
      const { reply } = JSON.parse(decoder.decode(m.data))
      nc.publish(reply, m.data)
      m.ack()
    }
  })
}
await nc.flush()
console.log("ready")
