// WireFrame: the frames the gateway writes straight to sockets are the ones `ws`'s own
// receiver (what every Node client runs) reads back, at each header size.
import { describe, expect, it } from "vitest"
import { createRequire } from "node:module"
import { textFrame } from "../../src/transport/WireFrame.ts"

interface ReceiverLike {
  on(event: "message", listener: (data: Buffer, isBinary: boolean) => void): void
  on(event: "error", listener: (error: Error) => void): void
  write(chunk: Buffer): void
}
// The receiver is not part of ws's typed API; it is the parser its clients use.
const { Receiver } = createRequire(import.meta.url)("ws") as { readonly Receiver: new (options: { isServer: boolean }) => ReceiverLike }

const readBack = (wire: Buffer): Array<string> => {
  const receiver = new Receiver({ isServer: false })
  const messages: Array<string> = []
  const errors: Array<Error> = []
  receiver.on("message", (data, isBinary) => {
    expect(isBinary).toBe(false)
    messages.push(data.toString("utf8"))
  })
  receiver.on("error", (error) => errors.push(error))
  receiver.write(wire)
  expect(errors).toEqual([])
  return messages
}

describe("textFrame", () => {
  it.each([0, 1, 125, 126, 127, 65_535, 65_536, 200_000])("frames a %i-byte payload as ws reads it", (length) => {
    const text = "x".repeat(length)
    expect(readBack(textFrame(text))).toEqual([text])
  })

  it("frames UTF-8 by bytes, not characters, and bytes as given", () => {
    const text = `{"text":"héllo ✓ ${"ü".repeat(70)}"}` // over 125 bytes, under 126 characters
    expect(readBack(textFrame(text))).toEqual([text])
    expect(readBack(textFrame(new TextEncoder().encode(text)))).toEqual([text])
  })

  it("concatenated frames read back as separate messages, in order", () => {
    const texts = ["a", "b".repeat(300), "c".repeat(70_000)]
    expect(readBack(Buffer.concat(texts.map((t) => textFrame(t))))).toEqual(texts)
  })
})
