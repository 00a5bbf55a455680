/**
 * How channel actors (and the ephemeral-message method) hand events to the world:
 * channel events on `<cluster>.evt.ch.<channel>`, per-user events on
 * `<cluster>.evt.user.<user>` (src/domain/ChannelEvents.ts).
 *
 * Publishing happens only after the events are committed to PostgreSQL, in the order
 * given (seq order for a channel). It is core NATS, fire and forget: a publish that
 * fails (the connection is closed) is logged and dropped, never retried and never
 * failing the actor, because `channel_events` is the record and gateways fill any gap
 * in `seq` from it.
 */
import { Context, Effect, Layer } from "effect"
import type { ChannelEvent, UserEvent } from "../domain/ChannelEvents.ts"
import * as ChannelEvents from "../domain/ChannelEvents.ts"
import { Nats } from "../transport/Nats.ts"

export type Outgoing =
  | { readonly _tag: "channel"; readonly event: ChannelEvent }
  /** To one user's subject; `to` is the recipient (a Slack event's `user` may be someone else). */
  | { readonly _tag: "user"; readonly to: string; readonly event: UserEvent }

export interface EventPublisherShape {
  /** Publishes each event in order; never fails. */
  readonly publish: (events: ReadonlyArray<Outgoing>) => Effect.Effect<void>
}

export class EventPublisher extends Context.Tag("chorus/actors/EventPublisher")<EventPublisher, EventPublisherShape>() {}

export const channelEvent = (event: ChannelEvent): Outgoing => ({ _tag: "channel", event })
export const userEvent = (to: string, event: UserEvent): Outgoing => ({ _tag: "user", to, event })

/** Over the node's NATS connection. */
export const makeNats = Effect.gen(function*() {
  const nats = yield* Nats
  const publish: EventPublisherShape["publish"] = (events) =>
    Effect.suspend(() => {
      let failed = 0
      let lastError: unknown
      for (const outgoing of events) {
        const subject = outgoing._tag === "channel"
          ? ChannelEvents.channelSubject(nats.names, outgoing.event.channel)
          : ChannelEvents.userSubject(nats.names, outgoing.to)
        try {
          nats.nc.publish(subject, ChannelEvents.encode(outgoing.event))
        } catch (error) {
          failed++
          lastError = error
        }
      }
      return failed === 0
        ? Effect.void
        : Effect.logWarning("event publish failed; gateways will fill the gap from channel_events", {
          failed,
          error: lastError instanceof Error ? lastError.message : String(lastError)
        })
    })
  return { publish } satisfies EventPublisherShape
})

/** `EventPublisher` over the `Nats` service. */
export const layerNats: Layer.Layer<EventPublisher, never, Nats> = Layer.effect(EventPublisher, makeNats)

/** For tests: records what would be published, in order. */
export const makeRecorder = () => {
  const published: Array<Outgoing> = []
  const service: EventPublisherShape = {
    publish: (events) => Effect.sync(() => void published.push(...events))
  }
  return { published, service, layer: Layer.succeed(EventPublisher, service) }
}
