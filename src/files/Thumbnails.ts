/**
 * Image thumbnails, as Slack's file object carries them (`thumb_64` … `thumb_720`,
 * with `_w`/`_h`, and `original_w`/`original_h`), made with sharp (libvips) when a
 * file is completed. Each size is a bounding box: the image is scaled to fit inside
 * it, never enlarged; the boxes from 360 up are made only for images larger than the
 * box below them, as on Slack. JPEG stays JPEG; everything else becomes PNG.
 *
 * Bounded: only PNG, JPEG, GIF and WebP up to `maxInputBytes` and `maxPixels`; an
 * image libvips cannot decode simply gets no thumbnails (the file is still shared).
 */
import { Data, Effect, Option } from "effect"
import sharp from "sharp"

export const sizes = [64, 80, 160, 360, 480, 720] as const
/** Boxes made for every image, however small. */
const alwaysMade = 160

/** Images over this many bytes get no thumbnails (the bytes are held in memory to decode). */
export const maxInputBytes = 25 * 1024 * 1024
/** Nor do images with more pixels than this (a decompression bomb guard). */
export const maxPixels = 50_000_000

const thumbnailable = new Set(["image/png", "image/jpeg", "image/gif", "image/webp"])
export const isThumbnailable = (mimetype: string | null, size: number | null): boolean =>
  mimetype !== null && thumbnailable.has(mimetype) && size !== null && size <= maxInputBytes

export interface Thumb {
  readonly size: number
  readonly width: number
  readonly height: number
  readonly mimetype: string
}

export interface Made {
  readonly width: number
  readonly height: number
  readonly thumbs: ReadonlyArray<Thumb & { readonly bytes: Uint8Array }>
}

export class ThumbnailError extends Data.TaggedError("ThumbnailError")<{ readonly cause: unknown }> {}

/** The storage key of a thumbnail, next to the file's own object. */
export const keyOf = (storageKey: string, size: number) => `${storageKey}_thumb_${size}`

/** Thumbnails of an image's bytes; none when it cannot be decoded or is too large. */
export const make = (bytes: Uint8Array, mimetype: string): Effect.Effect<Option.Option<Made>> =>
  Effect.tryPromise({
    try: async () => {
      const image = sharp(bytes, { limitInputPixels: maxPixels, failOn: "error", animated: false })
      const meta = await image.metadata()
      // EXIF orientation 5–8 swaps the displayed width and height.
      const swapped = (meta.orientation ?? 1) >= 5
      const width = swapped ? meta.height : meta.width
      const height = swapped ? meta.width : meta.height
      if (width === undefined || height === undefined || width === 0 || height === 0) return Option.none<Made>()
      const longest = Math.max(width, height)
      const out = mimetype === "image/jpeg" ? "image/jpeg" : "image/png"
      const wanted = sizes.filter((size, i) => size <= alwaysMade || longest > (sizes[i - 1] ?? 0))
      const largest = Math.max(...wanted)
      // The original is decoded once: scaled to the largest box, then every thumbnail
      // comes from those pixels.
      const base = await image
        .rotate()
        .resize({ width: largest, height: largest, fit: "inside", withoutEnlargement: true })
        .raw()
        .toBuffer({ resolveWithObject: true })
      const raw = { width: base.info.width, height: base.info.height, channels: base.info.channels }
      const thumbs: Array<Thumb & { readonly bytes: Uint8Array }> = []
      for (const size of wanted) {
        const resized = sharp(base.data, { raw }).resize({ width: size, height: size, fit: "inside", withoutEnlargement: true })
        const { data, info } = await (out === "image/jpeg" ? resized.jpeg({ quality: 80 }) : resized.png()).toBuffer({ resolveWithObject: true })
        thumbs.push({ size, width: info.width, height: info.height, mimetype: out, bytes: data })
      }
      return Option.some<Made>({ width, height, thumbs })
    },
    catch: (cause) => new ThumbnailError({ cause })
  }).pipe(
    Effect.catchAll((error) =>
      Effect.logInfo("no thumbnails: the image could not be decoded", { error: String(error.cause) }).pipe(Effect.as(Option.none<Made>()))
    )
  )
