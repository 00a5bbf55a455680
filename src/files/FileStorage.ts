/**
 * Where file bytes live: one service, two drivers.
 *
 * - `local`: a directory on this node's disk (the embedded default). An upload is
 *   written to a temporary file and renamed into place once every byte arrived, so a
 *   key holds either nothing or a whole file. Downloads stream from disk. Several nodes
 *   must share the directory (a network file system) for every node to serve every file.
 * - `s3`: a bucket through `@aws-sdk/client-s3`. An upload smaller than one part is a
 *   single PutObject; a larger one is a multipart upload (one part buffered at a time,
 *   so memory per upload is bounded by the part size), aborted on any failure.
 *   Downloads are presigned GET URLs (the node answers with a redirect), and large
 *   uploads may go straight to the bucket through a presigned PUT URL.
 *
 * `put` consumes a stream and stores it under a key; if the stream fails (too large,
 * the client went away, a length mismatch the caller detects at its end) nothing is
 * left under the key. Keys are made by `Files` (`<team>/<file id>`), never by users.
 */
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  PutObjectCommand,
  S3Client,
  UploadPartCommand
} from "@aws-sdk/client-s3"
import { getSignedUrl } from "@aws-sdk/s3-request-presigner"
import { NodeStream } from "@effect/platform-node"
import { Context, Data, Duration, Effect, Layer, Option, Redacted, Stream } from "effect"
import { randomBytes } from "node:crypto"
import * as Fs from "node:fs"
import * as FsP from "node:fs/promises"
import * as Path from "node:path"
import type { Readable } from "node:stream"
import { ChorusConfig } from "../config/ChorusConfig.ts"

/** The storage backend failed (disk, network, credentials). */
export class StorageError extends Data.TaggedError("StorageError")<{ readonly operation: string; readonly cause: unknown }> {
  override get message(): string {
    return `${this.operation}: ${this.cause instanceof Error ? this.cause.message : String(this.cause)}`
  }
}

export interface StoredObject {
  readonly size: number
}

export interface ReadObject extends StoredObject {
  readonly body: Stream.Stream<Uint8Array, StorageError>
}

export interface PresignGetOptions {
  readonly expiresIn: Duration.Duration
  readonly contentType: string
  /** The whole Content-Disposition header value to answer with. */
  readonly contentDisposition: string
}

export interface FileStorageShape {
  readonly driver: "local" | "s3"
  /** Stores `body` under `key`, replacing whatever was there; on failure nothing is left. */
  readonly put: <E>(key: string, body: Stream.Stream<Uint8Array, E>) => Effect.Effect<StoredObject, E | StorageError>
  /** The object's size, if it exists. */
  readonly stat: (key: string) => Effect.Effect<Option.Option<StoredObject>, StorageError>
  /** Up to `bytes` leading bytes (for content sniffing), if the object exists. */
  readonly head: (key: string, bytes: number) => Effect.Effect<Option.Option<Uint8Array>, StorageError>
  /** The object's bytes as a stream, if it exists. */
  readonly read: (key: string) => Effect.Effect<Option.Option<ReadObject>, StorageError>
  /** Deletes the object; nothing to delete is not an error (idempotent). */
  readonly remove: (key: string) => Effect.Effect<void, StorageError>
  /** A short-lived URL to GET the object directly; none when the driver cannot (local). */
  readonly presignGet: (key: string, options: PresignGetOptions) => Effect.Effect<Option.Option<string>, StorageError>
  /** A URL to PUT exactly `contentLength` bytes to `key` directly; none when the driver cannot (local). */
  readonly presignPut: (key: string, contentLength: number, expiresIn: Duration.Duration) => Effect.Effect<Option.Option<string>, StorageError>
}

export class FileStorage extends Context.Tag("chorus/files/FileStorage")<FileStorage, FileStorageShape>() {}

const validKey = /^[A-Za-z0-9][A-Za-z0-9_-]*(\/[A-Za-z0-9][A-Za-z0-9_-]*)*$/

const checkKey = (key: string): Effect.Effect<string, StorageError> =>
  validKey.test(key) ? Effect.succeed(key) : Effect.fail(new StorageError({ operation: "key", cause: new Error(`invalid key ${JSON.stringify(key)}`) }))

// ---- local disk -----------------------------------------------------------------------

export const makeLocal = (root: string): Effect.Effect<FileStorageShape, StorageError> =>
  Effect.gen(function*() {
    const dir = Path.resolve(root)
    const tmp = Path.join(dir, ".tmp")
    yield* Effect.tryPromise({
      try: () => FsP.mkdir(tmp, { recursive: true }),
      catch: (cause) => new StorageError({ operation: `create ${tmp}`, cause })
    })
    const pathOf = (key: string) => Path.join(dir, ...key.split("/"))
    const io = <A>(operation: string, f: () => Promise<A>) => Effect.tryPromise({ try: f, catch: (cause) => new StorageError({ operation, cause }) })
    const notFound = (error: StorageError) => (error.cause as { readonly code?: unknown } | undefined)?.code === "ENOENT"

    const put: FileStorageShape["put"] = (key, body) =>
      Effect.gen(function*() {
        const target = pathOf(yield* checkKey(key))
        const temp = Path.join(tmp, `${randomBytes(12).toString("hex")}.part`)
        return yield* Effect.acquireUseRelease(
          io("open", () => FsP.open(temp, "wx")),
          (handle) =>
            Effect.gen(function*() {
              let size = 0
              yield* Stream.runForEach(body, (chunk) => {
                size += chunk.length
                return io("write", () => handle.write(chunk))
              })
              yield* io("close", () => handle.close())
              yield* io("mkdir", () => FsP.mkdir(Path.dirname(target), { recursive: true }))
              yield* io("rename", () => FsP.rename(temp, target))
              return { size }
            }),
          (handle, exit) =>
            Effect.promise(() => handle.close().catch(() => undefined)).pipe(
              Effect.zipRight(exit._tag === "Failure" ? Effect.promise(() => FsP.rm(temp, { force: true }).catch(() => undefined)) : Effect.void)
            )
        )
      })

    const stat: FileStorageShape["stat"] = (key) =>
      Effect.flatMap(checkKey(key), (k) =>
        io("stat", () => FsP.stat(pathOf(k))).pipe(
          Effect.map((s) => Option.some({ size: s.size })),
          Effect.catchIf(notFound, () => Effect.succeed(Option.none()))
        ))

    const head: FileStorageShape["head"] = (key, bytes) =>
      Effect.flatMap(checkKey(key), (k) =>
        Effect.acquireUseRelease(
          io("open", () => FsP.open(pathOf(k), "r")),
          (handle) =>
            Effect.map(io("read", () => handle.read(Buffer.alloc(bytes), 0, bytes, 0)), (r) => Option.some(new Uint8Array(r.buffer.subarray(0, r.bytesRead)))),
          (handle) => Effect.promise(() => handle.close().catch(() => undefined))
        ).pipe(Effect.catchIf(notFound, () => Effect.succeed(Option.none()))))

    const read: FileStorageShape["read"] = (key) =>
      Effect.flatMap(stat(key), Option.match({
        onNone: () => Effect.succeed(Option.none()),
        onSome: ({ size }) =>
          Effect.succeed(Option.some({
            size,
            body: NodeStream.fromReadable<StorageError>(() => Fs.createReadStream(pathOf(key)), (cause) => new StorageError({ operation: "read", cause }))
          }))
      }))

    const remove: FileStorageShape["remove"] = (key) =>
      Effect.flatMap(checkKey(key), (k) => io("remove", () => FsP.rm(pathOf(k), { force: true })))

    return {
      driver: "local",
      put,
      stat,
      head,
      read,
      remove,
      presignGet: () => Effect.succeed(Option.none()),
      presignPut: () => Effect.succeed(Option.none())
    } satisfies FileStorageShape
  })

// ---- S3 -------------------------------------------------------------------------------

export interface S3Options {
  readonly bucket: string
  readonly region: string
  /** An S3-compatible endpoint (MinIO, s3rver, …); the AWS endpoint when absent. */
  readonly endpoint: string | undefined
  /** Path-style URLs (`endpoint/bucket/key`), which most S3-compatible servers need. */
  readonly forcePathStyle: boolean
  /** Static credentials; the SDK's default chain (environment, profile, instance role) when absent. */
  readonly accessKeyId: string | undefined
  readonly secretAccessKey: string | undefined
  /** Bytes per multipart part (S3 wants at least 5 MiB for every part but the last). */
  readonly partSize: number
}

const statusOf = (error: unknown): number | undefined =>
  (error as { readonly $metadata?: { readonly httpStatusCode?: number } } | undefined)?.$metadata?.httpStatusCode

const isNotFound = (error: StorageError): boolean => {
  const name = (error.cause as { readonly name?: unknown } | undefined)?.name
  return statusOf(error.cause) === 404 || name === "NotFound" || name === "NoSuchKey"
}

const concat = (chunks: ReadonlyArray<Uint8Array>, size: number): Buffer => Buffer.concat(chunks as Array<Uint8Array>, size)

export const makeS3 = (options: S3Options): Effect.Effect<FileStorageShape, never, import("effect/Scope").Scope> =>
  Effect.gen(function*() {
    const client = yield* Effect.acquireRelease(
      Effect.sync(() =>
        new S3Client({
          region: options.region,
          forcePathStyle: options.forcePathStyle,
          // Checksums only where S3 requires them: with the default, a streamed body is
          // stored with its chunk-encoding bytes by some S3-compatible servers, and
          // presigned PUT URLs carry a checksum the uploader cannot know.
          requestChecksumCalculation: "WHEN_REQUIRED",
          responseChecksumValidation: "WHEN_REQUIRED",
          ...(options.endpoint === undefined ? {} : { endpoint: options.endpoint }),
          ...(options.accessKeyId === undefined || options.secretAccessKey === undefined
            ? {}
            : { credentials: { accessKeyId: options.accessKeyId, secretAccessKey: options.secretAccessKey } })
        })
      ),
      (c) => Effect.sync(() => c.destroy())
    )
    const Bucket = options.bucket
    const aws = <A>(operation: string, f: (signal: AbortSignal) => Promise<A>) =>
      Effect.tryPromise({ try: f, catch: (cause) => new StorageError({ operation, cause }) })

    const put: FileStorageShape["put"] = <E>(key: string, body: Stream.Stream<Uint8Array, E>) =>
      Effect.gen(function*() {
        const Key = yield* checkKey(key)
        let buffered: Array<Uint8Array> = []
        let bufferedBytes = 0
        let size = 0
        let uploadId: string | undefined
        const parts: Array<{ ETag: string; PartNumber: number }> = []
        const flushPart = Effect.suspend(() => {
          const data = concat(buffered, bufferedBytes)
          buffered = []
          bufferedBytes = 0
          return Effect.gen(function*() {
            if (uploadId === undefined) {
              const created = yield* aws("create multipart upload", (abortSignal) => client.send(new CreateMultipartUploadCommand({ Bucket, Key }), { abortSignal }))
              if (created.UploadId === undefined) return yield* new StorageError({ operation: "create multipart upload", cause: new Error("no UploadId") })
              uploadId = created.UploadId
            }
            const PartNumber = parts.length + 1
            const id = uploadId
            const uploaded = yield* aws("upload part", (abortSignal) =>
              client.send(new UploadPartCommand({ Bucket, Key, UploadId: id, PartNumber, Body: data, ContentLength: data.length }), { abortSignal }))
            parts.push({ ETag: uploaded.ETag ?? "", PartNumber })
          })
        })
        const upload = Effect.gen(function*() {
          yield* Stream.runForEach(body, (chunk) => {
            size += chunk.length
            buffered.push(chunk)
            bufferedBytes += chunk.length
            return bufferedBytes >= options.partSize ? flushPart : Effect.void
          })
          if (uploadId === undefined) {
            // Smaller than one part: one request.
            const data = concat(buffered, bufferedBytes)
            buffered = []
            yield* aws("put object", (abortSignal) => client.send(new PutObjectCommand({ Bucket, Key, Body: data, ContentLength: data.length }), { abortSignal }))
            return { size }
          }
          if (bufferedBytes > 0) yield* flushPart
          const id = uploadId
          yield* aws("complete multipart upload", (abortSignal) =>
            client.send(new CompleteMultipartUploadCommand({ Bucket, Key, UploadId: id, MultipartUpload: { Parts: parts } }), { abortSignal }))
          return { size }
        })
        return yield* upload.pipe(
          Effect.onExit((exit) => {
            if (exit._tag === "Success" || uploadId === undefined) return Effect.void
            const id = uploadId
            // Some S3-compatible servers lack AbortMultipartUpload; then the bucket's
            // lifecycle rule for incomplete uploads is the backstop.
            return aws("abort multipart upload", () => client.send(new AbortMultipartUploadCommand({ Bucket, Key, UploadId: id }))).pipe(
              Effect.catchAll((error) => Effect.logWarning("could not abort a multipart upload", { key: Key, error: error.message }))
            )
          })
        )
      })

    const stat: FileStorageShape["stat"] = (key) =>
      Effect.flatMap(checkKey(key), (Key) =>
        aws("head object", (abortSignal) => client.send(new HeadObjectCommand({ Bucket, Key }), { abortSignal })).pipe(
          Effect.map((r) => Option.some({ size: r.ContentLength ?? 0 })),
          Effect.catchIf(isNotFound, () => Effect.succeed(Option.none()))
        ))

    const getObject = (Key: string, Range?: string) =>
      aws("get object", (abortSignal) => client.send(new GetObjectCommand({ Bucket, Key, ...(Range === undefined ? {} : { Range }) }), { abortSignal })).pipe(
        Effect.map(Option.some),
        Effect.catchIf(isNotFound, () => Effect.succeed(Option.none()))
      )

    const head: FileStorageShape["head"] = (key, bytes) =>
      Effect.gen(function*() {
        const Key = yield* checkKey(key)
        const size = yield* stat(Key)
        if (Option.isNone(size)) return Option.none()
        if (size.value.size === 0) return Option.some(new Uint8Array(0))
        const got = yield* getObject(Key, `bytes=0-${bytes - 1}`)
        if (Option.isNone(got) || got.value.Body === undefined) return Option.none()
        const body = got.value.Body
        const data = yield* aws("read object", () => body.transformToByteArray())
        return Option.some(data.subarray(0, bytes))
      })

    const read: FileStorageShape["read"] = (key) =>
      Effect.gen(function*() {
        const got = yield* getObject(yield* checkKey(key))
        if (Option.isNone(got) || got.value.Body === undefined) return Option.none()
        const readable = got.value.Body as unknown as Readable
        return Option.some({
          size: got.value.ContentLength ?? 0,
          body: NodeStream.fromReadable<StorageError>(() => readable, (cause) => new StorageError({ operation: "read", cause }))
        })
      })

    const remove: FileStorageShape["remove"] = (key) =>
      Effect.flatMap(checkKey(key), (Key) =>
        aws("delete object", (abortSignal) => client.send(new DeleteObjectCommand({ Bucket, Key }), { abortSignal })).pipe(
          Effect.asVoid,
          Effect.catchIf(isNotFound, () => Effect.void)
        ))

    const seconds = (d: Duration.Duration) => Math.max(1, Math.ceil(Duration.toMillis(d) / 1000))

    const presignGet: FileStorageShape["presignGet"] = (key, o) =>
      Effect.flatMap(checkKey(key), (Key) =>
        aws("presign get", () =>
          getSignedUrl(
            client,
            new GetObjectCommand({ Bucket, Key, ResponseContentType: o.contentType, ResponseContentDisposition: o.contentDisposition }),
            { expiresIn: seconds(o.expiresIn) }
          )).pipe(Effect.map(Option.some)))

    const presignPut: FileStorageShape["presignPut"] = (key, contentLength, expiresIn) =>
      Effect.flatMap(checkKey(key), (Key) =>
        aws("presign put", () =>
          getSignedUrl(client, new PutObjectCommand({ Bucket, Key, ContentLength: contentLength }), {
            expiresIn: seconds(expiresIn),
            // The length is part of the signature: S3 refuses a body of any other size.
            signableHeaders: new Set(["content-length"])
          })).pipe(Effect.map(Option.some)))

    return { driver: "s3", put, stat, head, read, remove, presignGet, presignPut } satisfies FileStorageShape
  })

// ---- layers ---------------------------------------------------------------------------

export const layerLocal = (root: string): Layer.Layer<FileStorage, StorageError> => Layer.effect(FileStorage, makeLocal(root))

export const layerS3 = (options: S3Options): Layer.Layer<FileStorage> => Layer.scoped(FileStorage, makeS3(options))

/** The driver `ChorusConfig` names (`CHORUS_FILES_DRIVER`). */
export const layerFromConfig: Layer.Layer<FileStorage, StorageError, ChorusConfig> = Layer.unwrapEffect(
  Effect.map(ChorusConfig, (config) =>
    config.filesDriver === "s3"
      ? layerS3({
        bucket: config.filesS3Bucket ?? "",
        region: config.filesS3Region,
        endpoint: config.filesS3Endpoint,
        forcePathStyle: config.filesS3ForcePathStyle,
        accessKeyId: config.filesS3AccessKeyId,
        secretAccessKey: config.filesS3SecretAccessKey === undefined ? undefined : Redacted.value(config.filesS3SecretAccessKey),
        partSize: config.filesS3PartSize
      })
      : layerLocal(config.filesDir))
)
