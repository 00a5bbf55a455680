/**
 * A minimal receive-mostly WebSocket client for the benchmarks' many listening
 * sockets: the RFC 6455 handshake, unmasked server frames read in place (no copy, no
 * decoding, no event per frame), an unsolicited pong now and then (RFC 6455's
 * one-way heartbeat, which the gateway counts as activity) so its idle timeout never
 * closes it, and a pong for the server's pings. The load generator shares the machine's two cores with the
 * servers it measures; `ws`'s general-purpose receiver cost it most of a core at
 * 300,000 frames/s, which showed up as latency in the figures.
 *
 * Not a general client: no fragmentation (the gateway sends whole frames), no
 * extensions, text and control frames only.
 */
import { randomBytes } from "node:crypto"
import http from "node:http"
import type { Socket } from "node:net"

/** A client control frame (`0x89` ping, `0x8a` pong): FIN, opcode, masked payload of at most 125 bytes. */
const masked = (first: number, payload: Buffer): Buffer => {
  const key = randomBytes(4)
  const frame = Buffer.alloc(6 + payload.length)
  frame[0] = first
  frame[1] = 0x80 | payload.length
  key.copy(frame, 2)
  for (let i = 0; i < payload.length; i++) frame[6 + i] = payload[i]! ^ key[i % 4]!
  return frame
}

export interface RawSocket {
  readonly close: () => void
  /** Stops reading (the kernel keeps what arrives; the server's writes wake nobody). */
  readonly pause: () => void
  readonly resume: () => void
}

/**
 * Opens `url` (ws://) and calls `onText(buf, start, end)` with each text frame's
 * payload in place; the buffer is only valid during the call. Resolves once the
 * handshake is done.
 */
export const openRaw = (url: string, onText: (buf: Buffer, start: number, end: number) => void, heartbeatMs = 20_000): Promise<RawSocket> =>
  new Promise((resolve, reject) => {
    const target = new URL(url.replace(/^ws/, "http"))
    const request = http.get({
      host: target.hostname,
      port: target.port,
      path: `${target.pathname}${target.search}`,
      headers: {
        Connection: "Upgrade",
        Upgrade: "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": randomBytes(16).toString("base64")
      }
    })
    request.once("error", reject)
    request.once("response", (response) => reject(new Error(`no upgrade: HTTP ${response.statusCode}`)))
    request.once("upgrade", (_response, socket: Socket, head: Buffer) => {
      socket.setNoDelay(true)
      let pending: Buffer | undefined
      const read = (chunk: Buffer) => {
        const buf = pending === undefined ? chunk : Buffer.concat([pending, chunk])
        pending = undefined
        let at = 0
        while (buf.length - at >= 2) {
          const opcode = buf[at]! & 0x0f
          let length = buf[at + 1]! & 0x7f
          let header = 2
          if (length === 126) {
            if (buf.length - at < 4) break
            length = buf.readUInt16BE(at + 2)
            header = 4
          } else if (length === 127) {
            if (buf.length - at < 10) break
            length = Number(buf.readBigUInt64BE(at + 2))
            header = 10
          }
          if (buf.length - at < header + length) break
          const start = at + header
          if (opcode === 1) onText(buf, start, start + length)
          else if (opcode === 9) socket.write(masked(0x8a, buf.subarray(start, start + length)))
          else if (opcode === 8) socket.end()
          at = start + length
        }
        if (at < buf.length) pending = buf.subarray(at)
      }
      if (head.length > 0) read(head)
      socket.on("data", read)
      socket.on("error", () => socket.destroy())
      const ping = setInterval(() => socket.write(masked(0x8a, Buffer.alloc(0))), heartbeatMs)
      ping.unref()
      socket.once("close", () => clearInterval(ping))
      resolve({
        close: () => {
          clearInterval(ping)
          socket.destroy()
        },
        pause: () => socket.pause(),
        resume: () => socket.resume()
      })
    })
  })
