/**
 * A load generator's runtime client: the runtime's wire protocol (Envelope.ts, the
 * subjects of Nats.ts, JetStream's publish protocol) spoken straight through nats.js,
 * with no Effect fiber, Schema encode or retry loop per send. What reaches the cluster
 * is byte-for-byte what ShardingClient sends; only the sender's own cost differs.
 *
 * Why a second client: on two shared cores the generator's CPU and GC pauses are taken
 * from the cluster it measures (decision 0024). ShardingClient is what nodes and tests
 * use, and `bench:runtime -- --client effect` still measures through it.
 *
 * It does not retry: a "Retry" answer, a missing responder, a refused publish or no
 * answer within `timeoutMs` settles the send as failed, and the benchmark counts it.
 */
import { createInbox, headers as natsHeaders } from "@nats-io/transport-node"
import type { NatsConnection } from "@nats-io/transport-node"
import { Either } from "effect"
import type { Schema } from "effect"
import { randomUUID } from "node:crypto"
import type { Entity } from "../src/runtime/Entity.ts"
import * as Envelope from "../src/runtime/Envelope.ts"
import { makeNames } from "../src/transport/Nats.ts"
import { shardOf } from "../src/runtime/Ring.ts"

export interface WireClient {
  /** Resolves when the owner's successful reply (and, durable, the stream's ack) has come. */
  readonly send: <Req extends Schema.TaggedRequest.All>(
    entity: Entity<Req>,
    id: string,
    message: Req,
    delivery: "durable" | "volatile"
  ) => Promise<void>
  readonly close: () => void
}

interface Pending {
  readonly sentAt: number
  /** Answers still awaited: the reply, and for a durable send the publish ack. */
  awaiting: number
  readonly resolve: () => void
  readonly reject: (error: Error) => void
}

export const wireClient = (nc: NatsConnection, options: { readonly cluster: string; readonly shards: number; readonly timeoutMs?: number }): WireClient => {
  const names = makeNames(options.cluster)
  const timeoutMs = options.timeoutMs ?? 5_000
  const inbox = createInbox()
  const pending = new Map<string, Pending>()
  let nextToken = 0
  const fail = (token: string, entry: Pending, reason: string) => {
    pending.delete(token)
    entry.reject(new Error(reason))
  }
  const answered = (token: string, entry: Pending) => {
    if (--entry.awaiting === 0) {
      pending.delete(token)
      entry.resolve()
    }
  }
  const decoder = new TextDecoder()
  nc.subscribe(`${inbox}.*`, {
    callback: (error, msg) => {
      if (error !== null) return
      const suffix = msg.subject.slice(inbox.length + 1)
      // Durable sends get two answers: `<token>` (the owner's reply) and `<token>a` (the publish ack).
      const isAck = suffix.endsWith("a")
      const token = isAck ? suffix.slice(0, -1) : suffix
      const entry = pending.get(token)
      if (entry === undefined) return
      if (msg.data.length === 0) return fail(token, entry, `no responder (status ${msg.headers?.code ?? "?"})`)
      if (isAck) {
        let ack: unknown
        try {
          ack = JSON.parse(decoder.decode(msg.data))
        } catch (error) {
          return fail(token, entry, `publish answer is not JSON: ${String(error)}`)
        }
        if (typeof ack === "object" && ack !== null && "error" in ack) return fail(token, entry, `publish refused: ${JSON.stringify(ack.error)}`)
        return answered(token, entry)
      }
      const reply = Envelope.decodeReply(msg.data)
      if (Either.isLeft(reply)) return fail(token, entry, reply.left)
      if (!("exit" in reply.right)) return fail(token, entry, `runtime error: ${JSON.stringify(reply.right.error)}`)
      const exit = reply.right.exit as { readonly _tag?: unknown }
      if (exit._tag !== "Success") return fail(token, entry, `failed: ${JSON.stringify(exit)}`)
      answered(token, entry)
    }
  })
  // One sweep a second, not a timer per send.
  const sweep = setInterval(() => {
    const now = performance.now()
    for (const [token, entry] of pending) {
      if (now - entry.sentAt > timeoutMs) fail(token, entry, `no answer within ${timeoutMs} ms`)
    }
  }, 1_000)
  // Headers are encoded when published, so one object serves every durable publish.
  const headers = natsHeaders()
  const encoded = new WeakMap<object, unknown>()

  const send: WireClient["send"] = (entity, id, message, delivery) =>
    new Promise<void>((resolve, reject) => {
      let msg = encoded.get(message)
      if (msg === undefined) {
        const result = entity.encode(message)
        if (Either.isLeft(result)) return reject(new Error(result.left))
        msg = result.right
        encoded.set(message, msg)
      }
      const to = `${entity.type}/${id}`
      const shard = shardOf(to, options.shards)
      const token = String(nextToken++)
      const commandId = randomUUID()
      pending.set(token, { sentAt: performance.now(), awaiting: delivery === "durable" ? 2 : 1, resolve, reject })
      if (delivery === "volatile") {
        const data = Envelope.encodeRequest({ id: commandId, to, msg, t: Date.now() })
        nc.publish(names.requestSubject(shard), data, { reply: `${inbox}.${token}` })
      } else {
        const data = Envelope.encodeRequest({ id: commandId, to, msg, reply: `${inbox}.${token}`, t: Date.now() })
        headers.set("Nats-Msg-Id", commandId)
        nc.publish(names.commandSubject(shard), data, { reply: `${inbox}.${token}a`, headers })
      }
    })

  return { send, close: () => clearInterval(sweep) }
}
