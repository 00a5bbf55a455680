/**
 * Where Chorus may send requests on an app's behalf (event deliveries, slash commands,
 * URL challenges). App URLs are chosen by workspace admins, so without a rule an app
 * could make a node POST into its own network: the cloud metadata service, the
 * database's admin port, another tenant's service.
 *
 * `public` (the default) allows only globally routable addresses: not loopback, not
 * private (RFC 1918, unique-local), not link-local (where metadata services live), not
 * carrier-grade NAT, multicast or reserved. The check is made on the address actually
 * connected to — after DNS resolution, in the socket's lookup — so a name that
 * resolves to a private address (or is changed to, after registration) is refused
 * too. `any` turns the rule off (local development, apps on a private network).
 */
import dns from "node:dns"
import net from "node:net"

export type EgressPolicy = "public" | "any"

const notPublic = new net.BlockList()
for (const [network, prefix] of [
  ["0.0.0.0", 8],
  ["10.0.0.0", 8],
  ["100.64.0.0", 10],
  ["127.0.0.0", 8],
  ["169.254.0.0", 16],
  ["172.16.0.0", 12],
  ["192.0.0.0", 24],
  ["192.0.2.0", 24],
  ["192.168.0.0", 16],
  ["198.18.0.0", 15],
  ["198.51.100.0", 24],
  ["203.0.113.0", 24],
  ["224.0.0.0", 4],
  ["240.0.0.0", 4]
] as const) notPublic.addSubnet(network, prefix, "ipv4")
for (const [network, prefix] of [
  ["::", 128],
  ["::1", 128],
  ["64:ff9b::", 96],
  ["100::", 64],
  ["2001:db8::", 32],
  ["fc00::", 7],
  ["fe80::", 10],
  ["ff00::", 8]
] as const) notPublic.addSubnet(network, prefix, "ipv6")

/** Whether `address` (an IP literal) is globally routable. */
export const isPublicAddress = (address: string): boolean => {
  const bare = address.startsWith("[") && address.endsWith("]") ? address.slice(1, -1) : address
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(bare)
  if (mapped !== null) return isPublicAddress(mapped[1]!)
  const family = net.isIPv4(bare) ? "ipv4" : net.isIPv6(bare) ? "ipv6" : undefined
  return family !== undefined && !notPublic.check(bare, family)
}

export class EgressRefused extends Error implements NodeJS.ErrnoException {
  readonly code = "EGRESS_REFUSED"
  constructor(readonly host: string, readonly address: string) {
    super(`requests to ${host} (${address}) are not allowed: not a public address (CHORUS_APPS_EGRESS=public)`)
  }
}

/** A DNS lookup for sockets that fails when the name resolves to an address that is not public. */
export const publicLookup: net.LookupFunction = (hostname, options, callback) => {
  dns.lookup(hostname, { ...options, all: true }, (error, addresses) => {
    if (error !== null) return callback(error, "", 4)
    const refused = addresses.find((a) => !isPublicAddress(a.address))
    if (refused !== undefined) return callback(new EgressRefused(hostname, refused.address), "", 4)
    if (options.all === true) return callback(null, addresses)
    const first = addresses[0]
    if (first === undefined) return callback(new Error(`no address for ${hostname}`), "", 4)
    callback(null, first.address, first.family)
  })
}

/** Whether a URL's host may be connected to at all under `policy` (an IP literal is judged here; a name at lookup). */
export const hostAllowed = (url: URL, policy: EgressPolicy): boolean => {
  if (policy === "any") return true
  const host = url.hostname.startsWith("[") ? url.hostname.slice(1, -1) : url.hostname
  return net.isIP(host) === 0 || isPublicAddress(host)
}
