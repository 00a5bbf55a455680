// A stand-in for an app's HTTP endpoint in tests and the events benchmark: answers
// Slack's url_verification challenge, records every request (headers, raw body, when),
// and answers events as the test decides (status per attempt).

import http from "node:http"
import type { AddressInfo } from "node:net"

export interface Received {
  readonly at: number
  readonly headers: http.IncomingHttpHeaders
  readonly body: string
  /** The JSON body, when it was JSON. */
  readonly json: Readonly<Record<string, any>> | undefined
}

export interface AppEndpoint {
  readonly url: string
  readonly received: Array<Received>
  /** Event callbacks received (url_verification excluded). */
  readonly events: () => Array<Received>
  /** Decides the status of each event callback (default 200). */
  answer: (request: Received) => number
  /** Resolves when `predicate` holds of what was received (checked on each request and every 50 ms). */
  readonly waitFor: (predicate: (received: ReadonlyArray<Received>) => boolean, timeoutMs?: number) => Promise<void>
  readonly close: () => Promise<void>
}

export async function startAppEndpoint(options: { readonly record?: boolean } = {}): Promise<AppEndpoint> {
  const received: Array<Received> = []
  const record = options.record ?? true
  const endpoint: { answer: (request: Received) => number } = { answer: () => 200 }
  const server = http.createServer((req, res) => {
    const chunks: Array<Buffer> = []
    req.on("data", (c: Buffer) => chunks.push(c))
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8")
      let json: Record<string, any> | undefined
      try {
        json = JSON.parse(body) as Record<string, any>
      } catch {
        json = undefined
      }
      const entry: Received = { at: Date.now(), headers: req.headers, body, json }
      if (record || json?.["type"] !== "event_callback") received.push(entry)
      else received.push({ at: entry.at, headers: {}, body: "", json: { type: "event_callback", event_id: json["event_id"], event: { event_ts: json["event"]?.["event_ts"], text: json["event"]?.["text"], channel: json["event"]?.["channel"], seq: json["event"]?.["seq"] } } })
      if (json?.["type"] === "url_verification") {
        res.writeHead(200, { "content-type": "application/json" })
        res.end(JSON.stringify({ challenge: json["challenge"] }))
        return
      }
      const status = endpoint.answer(entry)
      res.writeHead(status, { "content-type": "text/plain" })
      res.end(status < 300 ? "" : "nope")
    })
  })
  server.keepAliveTimeout = 30_000
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as AddressInfo).port
  return {
    url: `http://127.0.0.1:${port}/slack/events`,
    received,
    events: () => received.filter((r) => r.json?.["type"] === "event_callback"),
    get answer() {
      return endpoint.answer
    },
    set answer(f) {
      endpoint.answer = f
    },
    waitFor: async (predicate, timeoutMs = 20_000) => {
      const deadline = Date.now() + timeoutMs
      while (!predicate(received)) {
        if (Date.now() > deadline) throw new Error(`app endpoint: timed out; received ${received.length}: ${JSON.stringify(received.slice(-3).map((r) => r.json))}`)
        await new Promise((r) => setTimeout(r, 50))
      }
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      })
  }
}
