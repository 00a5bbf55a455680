// The content sniffer: types come from the bytes, never from the name.

import { describe, expect, it } from "vitest"
import * as ContentType from "../../src/files/ContentType.ts"

const bytes = (...parts: ReadonlyArray<string | ReadonlyArray<number>>) =>
  new Uint8Array(parts.flatMap((p) => (typeof p === "string" ? [...Buffer.from(p, "latin1")] : [...p])))

describe("ContentType.sniff", () => {
  const cases: ReadonlyArray<readonly [string, Uint8Array, string, string]> = [
    ["png", bytes([0x89], "PNG\r\n\x1a\n", [0, 0, 0, 13]), "image/png", "png"],
    ["jpeg", bytes([0xff, 0xd8, 0xff, 0xe0], "JFIF"), "image/jpeg", "jpg"],
    ["gif87", bytes("GIF87a", [1, 0, 1, 0]), "image/gif", "gif"],
    ["gif89", bytes("GIF89a"), "image/gif", "gif"],
    ["webp", bytes("RIFF", [0x24, 0, 0, 0], "WEBPVP8 "), "image/webp", "webp"],
    ["pdf", bytes("%PDF-1.7\n"), "application/pdf", "pdf"],
    ["zip", bytes("PK", [3, 4, 20, 0]), "application/zip", "zip"],
    ["empty zip", bytes("PK", [5, 6], [0, 0, 0, 0]), "application/zip", "zip"],
    ["gzip", bytes([0x1f, 0x8b, 8, 0]), "application/gzip", "gzip"],
    ["mp4", bytes([0, 0, 0, 0x20], "ftypisom", [0, 0, 2, 0]), "video/mp4", "mp4"],
    ["quicktime", bytes([0, 0, 0, 0x14], "ftypqt  "), "video/quicktime", "mov"],
    ["ascii text", bytes("hello, world\n\tindented\r\n"), "text/plain", "text"],
    ["utf-8 text", new TextEncoder().encode("héllo wörld — ✓ 🎉"), "text/plain", "text"],
    ["utf-8 with BOM", bytes([0xef, 0xbb, 0xbf], "text"), "text/plain", "text"],
    ["empty", new Uint8Array(0), "text/plain", "text"],
    ["NUL bytes", bytes("abc", [0], "def"), "application/octet-stream", "binary"],
    ["invalid utf-8", bytes("abc", [0xc3, 0x28]), "application/octet-stream", "binary"],
    ["lone continuation", bytes([0x80, 0x41]), "application/octet-stream", "binary"],
    ["random binary", bytes([0x00, 0x01, 0x02, 0xfe, 0xff]), "application/octet-stream", "binary"],
    ["html is just text", bytes("<html><script>alert(1)</script></html>"), "text/plain", "text"],
    ["svg is just text", bytes("<svg xmlns='http://www.w3.org/2000/svg'/>"), "text/plain", "text"]
  ]
  for (const [name, head, mimetype, filetype] of cases) {
    it(name, () => {
      const type = ContentType.sniff(head)
      expect(type.mimetype).toBe(mimetype)
      expect(type.filetype).toBe(filetype)
    })
  }

  it("accepts a multi-byte character cut by the end of the head", () => {
    const text = new TextEncoder().encode("a".repeat(10) + "✓")
    expect(ContentType.isText(text.subarray(0, text.length - 1))).toBe(true)
  })

  it("serves only safe types inline", () => {
    expect(ContentType.isInline("image/png")).toBe(true)
    expect(ContentType.isInline("text/plain")).toBe(true)
    expect(ContentType.isInline("application/octet-stream")).toBe(false)
    expect(ContentType.isInline("application/zip")).toBe(false)
  })
})
