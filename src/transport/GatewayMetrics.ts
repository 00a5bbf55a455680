/**
 * The WebSocket gateway's Prometheus metrics, registered on the node's registry
 * (`RuntimeMetrics.registry`, exposed at `/metrics`). Labels are low-cardinality:
 * frame types from a fixed set, close reasons, delivery sources.
 */
import type * as Prom from "prom-client"
import { Counter, Gauge } from "prom-client"

export interface GatewayMetrics {
  readonly socketsOpen: Prom.Gauge
  readonly channelSubscriptions: Prom.Gauge
  readonly userSubscriptions: Prom.Gauge
  /** Event frames written to sockets: `live` (from NATS) or `replay` (from channel_events). */
  readonly eventsDelivered: Prom.Counter<"source">
  /** Events fetched from channel_events because the node saw a gap in a channel's seq. */
  readonly gapFills: Prom.Counter
  /** Channel events from NATS that this node had already processed (seq ≤ last). */
  readonly duplicatesDropped: Prom.Counter
  readonly framesReceived: Prom.Counter<"type" | "outcome">
  readonly closes: Prom.Counter<"reason">
  readonly slowConsumerCloses: Prom.Counter
  /** The write-coalescing window now (it widens while many sockets are busy). */
  readonly coalesceWindowMs: Prom.Gauge
  /** Message frames posted together with others (one `PostMessages` request per batch). */
  readonly postsBatched: Prom.Counter
}

const frameTypes = new Set(["message", "ping", "typing", "resume", "presence_sub"])

/** Bounded label for a frame type. */
export const frameTypeLabel = (type: string | undefined): string => (type !== undefined && frameTypes.has(type) ? type : "invalid")

export const make = (registry: Prom.Registry): GatewayMetrics => {
  const registers = [registry]
  return {
    socketsOpen: new Gauge({ name: "chorus_gateway_sockets", help: "WebSocket connections open on this node", registers }),
    channelSubscriptions: new Gauge({
      name: "chorus_gateway_channel_subscriptions",
      help: "Channels this node follows because a local socket's user is a member",
      registers
    }),
    userSubscriptions: new Gauge({ name: "chorus_gateway_user_subscriptions", help: "Users with a socket on this node", registers }),
    eventsDelivered: new Counter({
      name: "chorus_gateway_events_delivered_total",
      help: "Channel event frames written to sockets",
      labelNames: ["source"],
      registers
    }),
    gapFills: new Counter({ name: "chorus_gateway_gap_fill_events_total", help: "Events read from channel_events to fill a gap in a channel's stream", registers }),
    duplicatesDropped: new Counter({ name: "chorus_gateway_duplicate_events_total", help: "Channel events received again (seq already processed) and dropped", registers }),
    framesReceived: new Counter({
      name: "chorus_gateway_frames_total",
      help: "Client frames received, by type and outcome",
      labelNames: ["type", "outcome"],
      registers
    }),
    closes: new Counter({ name: "chorus_gateway_closes_total", help: "Sockets closed, by reason", labelNames: ["reason"], registers }),
    slowConsumerCloses: new Counter({
      name: "chorus_gateway_slow_consumer_closes_total",
      help: "Sockets closed because their send buffer passed the bound",
      registers
    }),
    coalesceWindowMs: new Gauge({
      name: "chorus_gateway_coalesce_window_ms",
      help: "How long a busy socket's event frames are held now: the configured window, wider while many sockets are busy",
      registers
    }),
    postsBatched: new Counter({
      name: "chorus_gateway_posts_batched_total",
      help: "Message frames posted in one request with others that queued behind a post in flight on the same socket",
      registers
    })
  }
}
