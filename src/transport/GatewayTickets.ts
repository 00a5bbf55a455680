/**
 * Tickets for the WebSocket gateway: `rtm.connect` authenticates the caller's token
 * and issues a ticket, the client opens `ws://<node>/ws?ticket=…`, and the gateway
 * redeems it. A ticket is random (256 bits), single-use, short-lived (30 s by
 * default), and held in this node's memory only: the URL names the node that issued
 * it, so no other node needs to know it, and a restart forgets every one (the
 * client calls `rtm.connect` again).
 *
 * The token itself never appears in a URL (and so in no proxy log).
 */
import { Context, Duration, Effect, Layer } from "effect"
import type { WorkspacePrincipal } from "../auth/Principal.ts"
import { randomBytes } from "node:crypto"

/** Who a ticket lets in. */
export interface TicketClaims {
  readonly userId: string
  readonly teamId: string
  /** The token that asked for the ticket (its id, never the secret). */
  readonly tokenId: string
  /** Who asked, as `rtm.connect` authenticated them: what the socket acts as (e.g. to run slash commands). */
  readonly principal?: WorkspacePrincipal
}

export interface GatewayTicketsShape {
  /** A fresh ticket for `claims`, valid once within the ticket TTL. */
  readonly issue: (claims: TicketClaims) => Effect.Effect<string>
  /** The claims of a valid ticket, which is spent by this call; undefined for an unknown, spent or expired one. */
  readonly redeem: (ticket: string) => Effect.Effect<TicketClaims | undefined>
}

export class GatewayTickets extends Context.Tag("chorus/transport/GatewayTickets")<GatewayTickets, GatewayTicketsShape>() {}

export interface GatewayTicketsOptions {
  /** How long a ticket stays valid. Default 30 s. */
  readonly ttl: Duration.DurationInput
  /** Most outstanding tickets; past it the oldest are forgotten. Default 100,000. */
  readonly capacity: number
}

export const defaults: GatewayTicketsOptions = { ttl: "30 seconds", capacity: 100_000 }

interface Entry {
  readonly claims: TicketClaims
  readonly expiresAt: number
}

/** The in-memory ticket book; `now` is injectable for tests. */
export const makeUnsafe = (options: Partial<GatewayTicketsOptions> = {}, now: () => number = Date.now) => {
  const ttl = Duration.toMillis(options.ttl ?? defaults.ttl)
  const capacity = options.capacity ?? defaults.capacity
  // Insertion order is expiry order (one TTL for all), so expired entries are at the head.
  const tickets = new Map<string, Entry>()

  const sweep = (at: number) => {
    for (const [ticket, entry] of tickets) {
      if (entry.expiresAt > at && tickets.size < capacity) break
      tickets.delete(ticket)
    }
  }

  const issue = (claims: TicketClaims): string => {
    const at = now()
    sweep(at)
    const ticket = randomBytes(32).toString("base64url")
    tickets.set(ticket, { claims, expiresAt: at + ttl })
    return ticket
  }

  const redeem = (ticket: string): TicketClaims | undefined => {
    const entry = tickets.get(ticket)
    if (entry === undefined) return undefined
    tickets.delete(ticket)
    return entry.expiresAt > now() ? entry.claims : undefined
  }

  return { issue, redeem, size: () => tickets.size }
}

export const make = (options: Partial<GatewayTicketsOptions> = {}): GatewayTicketsShape => {
  const book = makeUnsafe(options)
  return {
    issue: (claims) => Effect.sync(() => book.issue(claims)),
    redeem: (ticket) => Effect.sync(() => book.redeem(ticket))
  }
}

export const layer = (options: Partial<GatewayTicketsOptions> = {}): Layer.Layer<GatewayTickets> =>
  Layer.sync(GatewayTickets, () => make(options))
