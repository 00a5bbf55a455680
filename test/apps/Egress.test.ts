// Where Chorus may send requests for apps (src/apps/Egress.ts): under the default
// `public` policy nothing goes to loopback, private, link-local or reserved addresses,
// whether the URL names the address or a host name that resolves to it.
import http from "node:http"
import type { AddressInfo } from "node:net"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { isPublicAddress } from "../../src/apps/Egress.ts"
import { postSigned } from "../../src/apps/EventDelivery.ts"

let server: http.Server
let port = 0
let received = 0

beforeAll(async () => {
  server = http.createServer((req, res) => {
    received++
    req.resume()
    req.on("end", () => res.end("ok"))
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  port = (server.address() as AddressInfo).port
})
afterAll(async () => {
  await new Promise((resolve) => server.close(resolve))
})

const post = (url: string, egress: "public" | "any") =>
  postSigned({ url, body: "{}", contentType: "application/json", signingSecret: "s", timeoutMs: 2_000, egress })

describe("egress", () => {
  it("tells public addresses from the others", () => {
    for (const address of ["127.0.0.1", "10.1.2.3", "172.20.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1", "::1", "::", "fe80::1", "fd00::1", "::ffff:127.0.0.1", "::ffff:7f00:1", "[::ffff:a9fe:a9fe]", "[::1]", "not-an-address"]) {
      expect([address, isPublicAddress(address)]).toEqual([address, false])
    }
    for (const address of ["8.8.8.8", "1.1.1.1", "151.101.1.69", "2606:4700:4700::1111", "::ffff:8.8.8.8"]) {
      expect([address, isPublicAddress(address)]).toEqual([address, true])
    }
  })

  it("refuses a loopback URL, by address or by a name resolving to it, before any byte is sent; `any` allows it", async () => {
    const before = received
    const byAddress = await post(`http://127.0.0.1:${port}/events`, "public")
    expect(byAddress.attempt).toMatchObject({ ok: false, reason: "connection_failed" })
    const byName = await post(`http://localhost:${port}/events`, "public")
    expect(byName.attempt).toMatchObject({ ok: false, reason: "connection_failed" })
    expect(received).toBe(before)
    expect((await post(`http://127.0.0.1:${port}/events`, "any")).attempt).toEqual({ ok: true })
    expect(received).toBe(before + 1)
  })
})
