// One responder process for bench:floor (plain JavaScript, so it costs what nats.js costs).
// argv: natsUrl subjectPrefix index burnMicros effect(0|1)
import { connect } from "@nats-io/transport-node"
import { Effect, Exit, Runtime } from "effect"

const [url, prefix, index, burnArg, effectArg] = process.argv.slice(2)
const burnMs = Number(burnArg) / 1000
const runCallback = Runtime.runCallback(Runtime.defaultRuntime)
// The least an actor's batch costs in Effect: one fiber, a generator, a log annotation.
const work = (data) =>
  Effect.gen(function*() {
    yield* Effect.void
    return data
  }).pipe(Effect.uninterruptible, Effect.annotateLogs("actor", "counter/floor"))

const nc = await connect({ servers: url })
const answer = (msg) => {
  const until = performance.now() + burnMs
  while (performance.now() < until);
  if (effectArg === "1") runCallback(work(msg.data), { onExit: (exit) => Exit.isSuccess(exit) && msg.respond(exit.value) })
  else msg.respond(msg.data)
}
for (let shard = Number(index); shard < 128; shard += 3) {
  nc.subscribe(`${prefix}.${shard}`, { callback: (error, msg) => error === null && answer(msg) })
}
await nc.flush()
console.log("ready")
