// A harness that runs the channel behaviour's init/receive directly against a real
// PostgreSQL database, with the runtime's real fence (ShardFence) and group commit
// (GroupCommit), and an EventPublisher that records what would go to NATS.

import { SqlClient } from "@effect/sql"
import { Cause, Effect, Exit, Layer, ManagedRuntime, Redacted } from "effect"
import * as ChannelActor from "../../src/actors/ChannelActor.ts"
import type { ChannelRequest } from "../../src/actors/ChannelProtocol.ts"
import * as EventPublisher from "../../src/actors/EventPublisher.ts"
import * as ActorAddress from "../../src/runtime/ActorAddress.ts"
import type { ActorContext, Incoming } from "../../src/runtime/Behaviour.ts"
import * as GroupCommit from "../../src/runtime/GroupCommit.ts"
import * as ShardFence from "../../src/runtime/ShardFence.ts"
import * as Channels from "../../src/store/Channels.ts"
import * as Database from "../../src/store/Database.ts"
import { freshDatabase, type FreshDatabase } from "../support/services.ts"

export const cluster = "chtest"
export const shard = 0

export type Services = SqlClient.SqlClient | GroupCommit.GroupCommit | Channels.Channels | EventPublisher.EventPublisher

/** One message for a batch: a request, with its command id and send time when it matters. */
export interface Send {
  readonly request: ChannelRequest
  readonly commandId?: string
  readonly sentAt?: number
}

export interface Counts {
  /** Row-write commits (group commit) and own transactions the actor asked for. */
  commits: number
  transactions: number
}

let commandCounter = 0
const nextCommandId = () => `cmd-${Date.now().toString(36)}-${++commandCounter}`

export class TestActor {
  state: ChannelActor.State | undefined
  epoch: number
  readonly counts: Counts = { commits: 0, transactions: 0 }

  constructor(readonly h: ChannelHarness, readonly id: string, epoch = 1) {
    this.epoch = epoch
  }

  context(): ActorContext {
    const epoch = this.epoch
    const counts = this.counts
    return {
      address: ActorAddress.make("channel", this.id),
      cluster,
      shard,
      epoch,
      nodeId: "test-node",
      // Both run inside `h.run`, whose runtime provides SqlClient and GroupCommit.
      transaction: (effect) => {
        counts.transactions++
        return ShardFence.guard(cluster, shard, epoch, effect) as never
      },
      commit: (writes) => {
        counts.commits++
        return Effect.flatMap(GroupCommit.GroupCommit, (gc) => gc.commit(cluster, shard, epoch, writes)) as never
      }
    }
  }

  /** (Re)activates the actor: a fresh init, as after a restart or on another node. */
  async start(): Promise<this> {
    this.state = await this.h.run(ChannelActor.init(this.context()))
    return this
  }

  /** Runs one batch; answers each message's exit. A failing batch rejects (state kept). */
  async batch(sends: ReadonlyArray<Send | ChannelRequest>): Promise<Array<Exit.Exit<any, any>>> {
    if (this.state === undefined) await this.start()
    const exits: Array<Exit.Exit<any, any> | undefined> = sends.map(() => undefined)
    const batch = sends.map((send, index) => {
      const s: Send = "request" in send ? send : { request: send }
      return {
        _tag: s.request._tag,
        message: s.request,
        commandId: s.commandId ?? nextCommandId(),
        delivery: "volatile",
        sentAt: s.sentAt ?? Date.now(),
        complete: (exit: Exit.Exit<unknown, unknown>) => {
          if (exits[index] === undefined) exits[index] = exit
        }
      } as unknown as Incoming<ChannelRequest>
    })
    this.state = await this.h.run(ChannelActor.receive(this.context(), this.state as ChannelActor.State, batch))
    return exits.map((e, i) => {
      if (e === undefined) throw new Error(`message ${i} was not completed`)
      return e
    })
  }

  /** Runs one batch and answers the exit of a failing batch instead of throwing. */
  async batchExit(sends: ReadonlyArray<Send | ChannelRequest>): Promise<Exit.Exit<Array<Exit.Exit<any, any>>, unknown>> {
    if (this.state === undefined) await this.start()
    const exits: Array<Exit.Exit<any, any>> = []
    const batch = sends.map((send) => {
      const s: Send = "request" in send ? send : { request: send }
      return {
        _tag: s.request._tag,
        message: s.request,
        commandId: s.commandId ?? nextCommandId(),
        delivery: "volatile",
        sentAt: s.sentAt ?? Date.now(),
        complete: (exit: Exit.Exit<unknown, unknown>) => void exits.push(exit)
      } as unknown as Incoming<ChannelRequest>
    })
    const outcome = await this.h.runtime.runPromiseExit(ChannelActor.receive(this.context(), this.state as ChannelActor.State, batch))
    return Exit.map(outcome, (state) => {
      this.state = state
      return exits
    })
  }

  /** One request alone: its success, or a thrown error carrying the failure's code. */
  async send(request: ChannelRequest, options: { readonly commandId?: string; readonly sentAt?: number } = {}): Promise<any> {
    const [exit] = await this.batch([{ request, ...options }])
    return unwrap(exit as Exit.Exit<unknown, unknown>)
  }

  /** The error code a request is refused with (throws if it succeeds). */
  async refused(request: ChannelRequest): Promise<string> {
    const [exit] = await this.batch([request])
    return codeOf(exit as Exit.Exit<unknown, unknown>)
  }
}

export class ChannelFailure extends Error {
  constructor(readonly code: string) {
    super(code)
  }
}

export const unwrap = (exit: Exit.Exit<unknown, unknown>): any => {
  if (Exit.isSuccess(exit)) return exit.value
  const failure = Cause.failureOption(exit.cause)
  if (failure._tag === "Some") throw new ChannelFailure((failure.value as { code: string }).code)
  throw new Error(Cause.pretty(exit.cause))
}

export const codeOf = (exit: Exit.Exit<unknown, unknown>): string => {
  if (Exit.isSuccess(exit)) throw new Error(`expected a refusal, got ${JSON.stringify(exit.value)}`)
  const failure = Cause.failureOption(exit.cause)
  if (failure._tag === "Some") return (failure.value as { code: string }).code
  throw new Error(Cause.pretty(exit.cause))
}

export interface ChannelHarness {
  readonly db: FreshDatabase
  readonly runtime: ManagedRuntime.ManagedRuntime<Services, unknown>
  readonly published: Array<EventPublisher.Outgoing>
  run<A, E>(effect: Effect.Effect<A, E, Services>): Promise<A>
  query<A extends object = any>(text: string, ...params: Array<unknown>): Promise<ReadonlyArray<A>>
  actor(id: string, epoch?: number): TestActor
  /** The fence epoch new actors act under (raised by `raiseFence`). */
  epoch: number
  /** Moves the shard's fence to `epoch` (another owner took over); new actors use it. */
  raiseFence(epoch: number): Promise<void>
  close(): Promise<void>
}

export async function startChannelHarness(): Promise<ChannelHarness> {
  const db = await freshDatabase({ prefix: "channel" })
  const recorder = EventPublisher.makeRecorder()
  const sql = Database.layer({ url: Redacted.make(db.url), maxConnections: 6, applicationName: "chorus channel test" })
  const base = Layer.mergeAll(GroupCommit.layer({ maxGroup: 64, committers: 1 }), Channels.layer, recorder.layer).pipe(Layer.provideMerge(sql))
  const runtime = ManagedRuntime.make(base)
  await runtime.runPromise(Database.migrate)
  await runtime.runPromise(ShardFence.raise(cluster, shard, 1, "test-node"))
  const run = <A, E>(effect: Effect.Effect<A, E, Services>) => runtime.runPromise(effect)
  const h: ChannelHarness = {
    db,
    runtime,
    published: recorder.published,
    run,
    query: (text, ...params) => run(Effect.flatMap(SqlClient.SqlClient, (s) => s.unsafe(text, params))) as never,
    actor: (id, epoch) => new TestActor(h, id, epoch ?? h.epoch),
    epoch: 1,
    raiseFence: async (epoch) => {
      await run(ShardFence.raise(cluster, shard, epoch, `test-node-${epoch}`))
      h.epoch = epoch
    },
    async close() {
      await runtime.dispose()
      await db.drop()
    }
  }
  return h
}
