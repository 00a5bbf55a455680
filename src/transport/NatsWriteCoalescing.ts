/**
 * One socket write per event-loop turn for a NATS connection (decision 0026).
 *
 * nats.js writes its outbound buffer from a microtask queued by the first command
 * after a write. Effect resumes fibers from microtasks too, so a node whose fibers
 * publish one after another (replies, events, acks) wrote once per fiber. On this
 * kind of machine a write that wakes nats-server costs the writer far more than the
 * bytes (a virtual CPU woken per write), so the flush is moved to `setImmediate`:
 * every command of the turn goes in one write, a few microseconds later. A buffer
 * past the client's pending limit is still written at once, as before.
 *
 * It replaces one internal method of the connection's protocol handler, checked for
 * the shape it relies on; with an unexpected shape (another nats.js version) the
 * connection is left as it is and `false` is returned, so the caller can log it.
 */
import type { NatsConnection } from "@nats-io/transport-node"

interface OutboundBuffer {
  readonly size: () => number
  readonly fill: (data: Uint8Array, ...payloads: Array<Uint8Array>) => unknown
}

interface ProtocolHandler {
  sendCommand: (cmd: string | Uint8Array, ...payloads: Array<Uint8Array>) => void
  readonly flushPending: () => void
  readonly outbound: OutboundBuffer
  readonly pendingLimit: number
}

const isProtocolHandler = (value: unknown): value is ProtocolHandler => {
  if (typeof value !== "object" || value === null) return false
  const p = value as Record<string, unknown>
  const outbound = p["outbound"] as Record<string, unknown> | undefined
  return typeof p["sendCommand"] === "function" && typeof p["flushPending"] === "function" &&
    typeof p["pendingLimit"] === "number" && typeof outbound === "object" && outbound !== null &&
    typeof outbound["size"] === "function" && typeof outbound["fill"] === "function"
}

const encoder = new TextEncoder()

export const coalesceWrites = (nc: NatsConnection): boolean => {
  const protocol: unknown = (nc as unknown as { readonly protocol?: unknown }).protocol
  if (!isProtocolHandler(protocol)) return false
  let scheduled = false
  const flush = () => {
    scheduled = false
    protocol.flushPending()
  }
  protocol.sendCommand = (cmd, ...payloads) => {
    protocol.outbound.fill(typeof cmd === "string" ? encoder.encode(cmd) : cmd, ...payloads)
    if (protocol.outbound.size() >= protocol.pendingLimit) {
      protocol.flushPending()
    } else if (!scheduled) {
      scheduled = true
      setImmediate(flush)
    }
  }
  return true
}
