/**
 * A WebSocket text frame exactly as it goes on the wire (RFC 6455 §5.2: a server's
 * frames are unmasked), built once per event and written as is to every socket that
 * gets it. Under fan-out, framing per socket (`ws.send`: a header, two writes, a cork)
 * was a measurable part of a gateway's CPU; the bytes are the same for everyone.
 */

/** One final, unmasked text frame carrying `payload` (UTF-8). */
export const textFrame = (payload: Uint8Array | string): Buffer => {
  const body = typeof payload === "string" ? Buffer.from(payload, "utf8") : payload
  const length = body.byteLength
  const headerLength = length < 126 ? 2 : length < 65_536 ? 4 : 10
  const frame = Buffer.allocUnsafe(headerLength + length)
  frame[0] = 0x81 // FIN, opcode 1 (text)
  if (length < 126) {
    frame[1] = length
  } else if (length < 65_536) {
    frame[1] = 126
    frame.writeUInt16BE(length, 2)
  } else {
    frame[1] = 127
    frame.writeUInt32BE(Math.floor(length / 2 ** 32), 2)
    frame.writeUInt32BE(length >>> 0, 6)
  }
  frame.set(body, headerLength)
  return frame
}
