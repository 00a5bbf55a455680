/**
 * Channel events: every state change of a channel is one event with the next gap-free
 * `seq` (ext). The event object is Slack's (RTM / Events API shape) plus `seq`; it is
 * stored in `channel_events.event`, published once on `<cluster>.evt.ch.<channel>` as
 * JSON (gateways forward those bytes to sockets unchanged), and captured by the
 * `<CLUSTER>_EVENTS` stream for durable consumers (search indexing, apps).
 *
 * Per-user notifications (`channel_joined`, `channel_left`, `im_created`, …) go on
 * `<cluster>.evt.user.<user>`; they carry the channel's `seq` at that moment so that a
 * gateway subscribing to a new channel knows where its timeline starts.
 */
import type { NatsNames } from "../transport/Nats.ts"

export interface ChannelEvent {
  /** Slack's event type: message, reaction_added, member_joined_channel, channel_rename, … */
  readonly type: string
  readonly channel: string
  /** Position in the channel's event log (ext). */
  readonly seq: number
  /** Slack's event timestamp (`"<seconds>.<6 digits>"`). */
  readonly event_ts: string
  readonly [field: string]: unknown
}

export interface UserEvent {
  readonly type: string
  readonly user: string
  readonly [field: string]: unknown
}

export const channelSubject = (names: NatsNames, channel: string): string => names.subject(`evt.ch.${channel}`)
export const channelSubjectWildcard = (names: NatsNames): string => names.subject("evt.ch.>")
export const userSubject = (names: NatsNames, user: string): string => names.subject(`evt.user.${user}`)

const encoder = new TextEncoder()
export const encode = (event: ChannelEvent | UserEvent): Uint8Array => encoder.encode(JSON.stringify(event))
