/**
 * The shards this process serves, as seen by its own ShardingClient: a volatile request
 * to an actor whose shard is held here goes straight to the shard's runner instead of
 * out to NATS and back (two publishes, four socket hops, the server's routing). It is
 * the same request (same envelope bytes, same answer, same timeout and retries): only
 * the wire is skipped. Absent (processes that serve no shards), every request goes over
 * NATS.
 */
import { Context } from "effect"

export interface LocalShardsShape {
  /**
   * Hands a volatile request to the local runner of `shard`; `respond` is called once
   * with its answer (perhaps at once: a full mailbox, a stopping shard). False when the
   * shard is not served here, and nothing was done.
   */
  readonly request: (shard: number, data: Uint8Array, respond: (reply: Uint8Array) => void) => boolean
  /** Whether this process serves `shard` now (a request to it would not go over NATS). */
  readonly serves: (shard: number) => boolean
}

export class LocalShards extends Context.Tag("chorus/runtime/LocalShards")<LocalShards, LocalShardsShape>() {}
