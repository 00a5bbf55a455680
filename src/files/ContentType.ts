/**
 * What a file is, from its first bytes, never from its name (a `.png` that holds a
 * script is served as what it is). A small magic-number sniffer for the types chat
 * clients render specially; everything else is `application/octet-stream` ("binary"),
 * or `text/plain` when the bytes read as UTF-8 text.
 *
 * Pure: `sniff(head)` looks at most at the first `headBytes` bytes of the file.
 */

/** How many leading bytes `sniff` wants (more are ignored). */
export const headBytes = 4096

export interface ContentType {
  /** The MIME type served with the file (`image/png`). */
  readonly mimetype: string
  /** Slack's `filetype` (`png`, `jpg`, `pdf`, `text`, `binary`, …). */
  readonly filetype: string
  /** Slack's `pretty_type` (`PNG`, `Plain Text`, …). */
  readonly prettyType: string
}

const types = {
  png: { mimetype: "image/png", filetype: "png", prettyType: "PNG" },
  jpeg: { mimetype: "image/jpeg", filetype: "jpg", prettyType: "JPEG" },
  gif: { mimetype: "image/gif", filetype: "gif", prettyType: "GIF" },
  webp: { mimetype: "image/webp", filetype: "webp", prettyType: "WebP" },
  pdf: { mimetype: "application/pdf", filetype: "pdf", prettyType: "PDF" },
  zip: { mimetype: "application/zip", filetype: "zip", prettyType: "Zip" },
  gzip: { mimetype: "application/gzip", filetype: "gzip", prettyType: "GZip" },
  mp4: { mimetype: "video/mp4", filetype: "mp4", prettyType: "MPEG 4 Video" },
  mov: { mimetype: "video/quicktime", filetype: "mov", prettyType: "QuickTime Movie" },
  text: { mimetype: "text/plain", filetype: "text", prettyType: "Plain Text" },
  binary: { mimetype: "application/octet-stream", filetype: "binary", prettyType: "Binary" }
} as const satisfies Record<string, ContentType>

export const binary: ContentType = types.binary

const startsWith = (head: Uint8Array, signature: ReadonlyArray<number>, offset = 0): boolean => {
  if (head.length < offset + signature.length) return false
  for (let i = 0; i < signature.length; i++) if (head[offset + i] !== signature[i]) return false
  return true
}

const ascii = (head: Uint8Array, offset: number, length: number): string =>
  head.length < offset + length ? "" : String.fromCharCode(...head.subarray(offset, offset + length))

/**
 * Whether `head` reads as text: valid UTF-8 (a sequence cut at the end of the head is
 * allowed) without control characters other than tab, line feed, form feed, carriage
 * return and escape.
 */
export const isText = (head: Uint8Array): boolean => {
  let i = 0
  while (i < head.length) {
    const b = head[i] as number
    if (b < 0x80) {
      if (b < 0x20 && b !== 0x09 && b !== 0x0a && b !== 0x0c && b !== 0x0d && b !== 0x1b) return false
      if (b === 0x7f) return false
      i++
      continue
    }
    const extra = b >= 0xf0 && b <= 0xf4 ? 3 : b >= 0xe0 ? 2 : b >= 0xc2 && b < 0xe0 ? 1 : -1
    if (extra < 0 || b > 0xf4) return false
    for (let k = 1; k <= extra; k++) {
      if (i + k >= head.length) return true // cut by the end of the head
      const c = head[i + k] as number
      if ((c & 0xc0) !== 0x80) return false
    }
    i += extra + 1
  }
  return true
}

/** The type of a file whose first bytes are `head` (empty files are text). */
export const sniff = (head: Uint8Array): ContentType => {
  if (startsWith(head, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return types.png
  if (startsWith(head, [0xff, 0xd8, 0xff])) return types.jpeg
  if (ascii(head, 0, 6) === "GIF87a" || ascii(head, 0, 6) === "GIF89a") return types.gif
  if (ascii(head, 0, 4) === "RIFF" && ascii(head, 8, 4) === "WEBP") return types.webp
  if (ascii(head, 0, 5) === "%PDF-") return types.pdf
  if (startsWith(head, [0x50, 0x4b, 0x03, 0x04]) || startsWith(head, [0x50, 0x4b, 0x05, 0x06])) return types.zip
  if (startsWith(head, [0x1f, 0x8b])) return types.gzip
  if (ascii(head, 4, 4) === "ftyp") return ascii(head, 8, 4) === "qt  " ? types.mov : types.mp4
  // A UTF-8 byte order mark, or text without one.
  if (isText(startsWith(head, [0xef, 0xbb, 0xbf]) ? head.subarray(3) : head)) return types.text
  return types.binary
}

/** Whether clients may show the file inline (`url_private` answers `inline`, else `attachment`). */
export const isInline = (mimetype: string): boolean =>
  mimetype.startsWith("image/") || mimetype.startsWith("video/") || mimetype === "application/pdf" || mimetype === "text/plain"
