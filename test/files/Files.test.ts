// The Files service in process, over a fresh database and the local driver: upload
// rules (declared length, size limit, one upload per URL), completion, and the sweep
// of abandoned uploads with an injected clock (two sweeps at once never fight).

import { SqlClient } from "@effect/sql"
import { Clock, Duration, Effect, Exit, Layer, ManagedRuntime, Option, Redacted, Stream } from "effect"
import fs from "node:fs"
import os from "node:os"
import path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as ChorusConfig from "../../src/config/ChorusConfig.ts"
import * as Ids from "../../src/domain/Ids.ts"
import type { FileRefused, Viewer } from "../../src/files/Files.ts"
import * as Files from "../../src/files/Files.ts"
import * as FileStorage from "../../src/files/FileStorage.ts"
import * as Database from "../../src/store/Database.ts"
import { freshDatabase, type FreshDatabase } from "../support/services.ts"

const maxBytes = 64 * 1024
const maxAgeMs = 86_400_000

let db: FreshDatabase
let dir: string
let runtime: ManagedRuntime.ManagedRuntime<Files.Files | FileStorage.FileStorage | SqlClient.SqlClient, unknown>

/** The real clock shifted by `offset` ms: the sweep's "a day later". */
let offset = 0
const real = Clock.make()
const shifted: Clock.Clock = {
  [Clock.ClockTypeId]: Clock.ClockTypeId,
  unsafeCurrentTimeMillis: () => real.unsafeCurrentTimeMillis() + offset,
  currentTimeMillis: Effect.sync(() => real.unsafeCurrentTimeMillis() + offset),
  unsafeCurrentTimeNanos: () => real.unsafeCurrentTimeNanos() + BigInt(offset) * 1_000_000n,
  currentTimeNanos: Effect.sync(() => real.unsafeCurrentTimeNanos() + BigInt(offset) * 1_000_000n),
  sleep: (d) => real.sleep(d)
}

beforeAll(async () => {
  db = await freshDatabase({ prefix: "files" })
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-files-"))
  const sql = Database.layer({ url: Redacted.make(db.url), maxConnections: 4, applicationName: "chorus files test" })
  const config = ChorusConfig.layer({
    advertiseUrl: "http://chorus.test",
    filesDir: dir,
    filesMaxBytes: maxBytes,
    filesPendingMaxAge: Duration.millis(maxAgeMs),
    // The node's own sweeper stays out of the way: the test sweeps by hand.
    filesSweepInterval: Duration.hours(24)
  })
  runtime = ManagedRuntime.make(Files.layer.pipe(Layer.provideMerge(sql), Layer.provideMerge(config)))
  await runtime.runPromise(Database.migrate)
})

afterAll(async () => {
  await runtime?.dispose()
  await db?.drop()
  fs.rmSync(dir, { recursive: true, force: true })
})

const viewer: Viewer = { userId: Ids.make("U"), teamId: Ids.make("T"), role: "member" }

const run = <A, E>(f: (files: Files.FilesShape) => Effect.Effect<A, E>) => runtime.runPromise(Effect.flatMap(Files.Files, f))
const exit = <A, E>(f: (files: Files.FilesShape) => Effect.Effect<A, E>) => runtime.runPromiseExit(Effect.flatMap(Files.Files, f))

const refusal = (e: Exit.Exit<unknown, unknown>): FileRefused | undefined =>
  Exit.isFailure(e) && e.cause._tag === "Fail" ? (e.cause.error as FileRefused) : undefined

/** The secret of an upload URL. */
const parts = (url: string) => {
  const m = /\/upload\/v1\/(F[A-Z0-9]+)\/([A-Za-z0-9_-]+)$/.exec(url)
  if (m === null) throw new Error(`unexpected upload url ${url}`)
  return { id: m[1] as string, secret: m[2] as string }
}

const chunks = (data: Uint8Array, size = 1000) => {
  const out: Array<Uint8Array> = []
  for (let i = 0; i < data.length; i += size) out.push(data.subarray(i, i + size))
  return Stream.fromIterable(out)
}

const register = (length: number, filename = "a.bin") =>
  run((f) => f.create(viewer, { filename, length, altTxt: undefined, snippetType: undefined, direct: false }))

const blobs = () => {
  const found: Array<string> = []
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name)
      if (e.isDirectory()) walk(p)
      else found.push(path.relative(dir, p))
    }
  }
  walk(dir)
  return found.sort()
}

const count = (sql: string) =>
  runtime.runPromise(Effect.flatMap(SqlClient.SqlClient, (c) => c.unsafe<{ n: number }>(sql)).pipe(Effect.map((r) => Number(r[0]?.n ?? 0))))

describe("Files", () => {
  it("stores exactly the declared bytes, sniffs the type, and takes one upload per URL", async () => {
    const png = Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.alloc(5000, 7)])
    const { file, uploadUrl } = await register(png.length, "picture.txt")
    const { id, secret } = parts(uploadUrl)
    expect(id).toBe(file.id)
    const stored = await run((f) => f.receive(id, secret, chunks(png)))
    expect(stored).toMatchObject({ state: "uploaded", size: png.length, mimetype: "image/png", filetype: "png" })
    expect(fs.readFileSync(path.join(dir, viewer.teamId, id)).equals(png)).toBe(true)
    // The URL is spent.
    expect(refusal(await exit((f) => f.receive(id, secret, chunks(png))))).toMatchObject({ status: 404 })
    // A wrong secret is no URL at all.
    const other = await register(3)
    expect(refusal(await exit((f) => f.receive(other.file.id, "x".repeat(32), chunks(Buffer.from("abc")))))).toMatchObject({ status: 404 })
  })

  it("refuses a body longer or shorter than declared, or past the limit, and keeps nothing", async () => {
    const before = blobs()
    const { uploadUrl } = await register(100)
    const { id, secret } = parts(uploadUrl)
    expect(refusal(await exit((f) => f.receive(id, secret, chunks(Buffer.alloc(150)))))).toMatchObject({ code: "length_mismatch", status: 400 })
    expect(refusal(await exit((f) => f.receive(id, secret, chunks(Buffer.alloc(99)))))).toMatchObject({ code: "length_mismatch", status: 400 })
    expect(blobs()).toEqual(before)
    // A refused upload leaves the URL usable.
    expect(await run((f) => f.receive(id, secret, chunks(Buffer.alloc(100, 65))))).toMatchObject({ size: 100, mimetype: "text/plain" })

    expect(refusal(await exit((f) => f.create(viewer, { filename: "big", length: maxBytes + 1, altTxt: undefined, snippetType: undefined, direct: false }))))
      .toMatchObject({ code: "file_too_large" })
    const atLimit = await register(maxBytes)
    const p = parts(atLimit.uploadUrl)
    const withBig = blobs()
    expect(refusal(await exit((f) => f.receive(p.id, p.secret, chunks(Buffer.alloc(maxBytes + 5000), 4096))))).toMatchObject({ code: "file_too_large", status: 413 })
    expect(blobs()).toEqual(withBig)
    expect(refusal(await exit((f) => f.create(viewer, { filename: "d", length: 1, altTxt: undefined, snippetType: undefined, direct: true }))))
      .toMatchObject({ code: "direct_not_supported" })
  })

  it("completes only the uploader's uploaded files, and a completion again answers the same", async () => {
    const { uploadUrl } = await register(5, "note.txt")
    const { id, secret } = parts(uploadUrl)
    const stranger: Viewer = { ...viewer, userId: Ids.make("U") }
    expect(refusal(await exit((f) => f.complete(viewer, [{ id, title: "Note" }])))).toMatchObject({ code: "file_not_found" })
    await run((f) => f.receive(id, secret, chunks(Buffer.from("hello"))))
    expect(refusal(await exit((f) => f.complete(stranger, [{ id, title: "Mine" }])))).toMatchObject({ code: "file_not_found" })
    const [done] = await run((f) => f.complete(viewer, [{ id, title: "Note" }]))
    expect(done).toMatchObject({ id, title: "Note", state: "complete" })
    const [again] = await run((f) => f.complete(viewer, [{ id, title: "Other" }]))
    expect(again).toMatchObject({ id, title: "Note", state: "complete" })
    // Visible to its uploader; not to another member while it is shared nowhere.
    expect(Option.isSome(await run((f) => f.visible(viewer, id)))).toBe(true)
    expect(Option.isNone(await run((f) => f.visible(stranger, id)))).toBe(true)
    expect(Option.isNone(await run((f) => f.visible({ ...viewer, teamId: Ids.make("T") }, id)))).toBe(true)
  })

  it("sweeps uploads never completed after the configured age, once, whichever node sweeps", async () => {
    const completed = await register(4, "kept.txt")
    const k = parts(completed.uploadUrl)
    await run((f) => f.receive(k.id, k.secret, chunks(Buffer.from("kept"))))
    await run((f) => f.complete(viewer, [{ id: k.id, title: undefined }]))
    const abandoned = await register(7, "left.txt")
    const a = parts(abandoned.uploadUrl)
    await run((f) => f.receive(a.id, a.secret, chunks(Buffer.from("abandon"))))
    await register(9, "never-sent.txt")
    expect(blobs()).toContain(path.join(viewer.teamId, a.id))

    // Not yet a day old: nothing goes.
    offset = maxAgeMs - 60_000
    expect(await run((f) => Effect.withClock(f.sweep, shifted))).toBe(0)

    // A day later, two nodes sweep at once: every abandoned row goes exactly once.
    offset = maxAgeMs + 60_000
    const unfinished = await count(`SELECT count(*) AS n FROM files WHERE state IN ('pending', 'uploading', 'uploaded')`)
    expect(unfinished).toBeGreaterThanOrEqual(3)
    const [one, two] = await Promise.all([run((f) => Effect.withClock(f.sweep, shifted)), run((f) => Effect.withClock(f.sweep, shifted))])
    expect((one ?? 0) + (two ?? 0)).toBe(unfinished)
    expect(await count(`SELECT count(*) AS n FROM files WHERE state <> 'complete'`)).toBe(0)
    expect(blobs()).not.toContain(path.join(viewer.teamId, a.id))
    expect(blobs()).toContain(path.join(viewer.teamId, k.id))
    // The abandoned URL is gone; the completed file stays.
    expect(refusal(await exit((f) => f.receive(a.id, a.secret, chunks(Buffer.from("abandon")))))).toMatchObject({ status: 404 })
    expect(Option.isSome(await run((f) => f.visible(viewer, k.id)))).toBe(true)
    expect(await run((f) => Effect.withClock(f.sweep, shifted))).toBe(0)
    offset = 0
  })

  it("every node runs the sweep periodically (a second node with a short age here)", async () => {
    const sql = Database.layer({ url: Redacted.make(db.url), maxConnections: 2, applicationName: "chorus files test 2" })
    const config = ChorusConfig.layer({
      advertiseUrl: "http://chorus.test",
      filesDir: dir,
      filesMaxBytes: maxBytes,
      filesPendingMaxAge: Duration.millis(300),
      filesSweepInterval: Duration.millis(100)
    })
    const { uploadUrl } = await register(3, "soon-gone.txt")
    const { id, secret } = parts(uploadUrl)
    await run((f) => f.receive(id, secret, chunks(Buffer.from("abc"))))
    const second = ManagedRuntime.make(Files.layer.pipe(Layer.provideMerge(sql), Layer.provideMerge(config)))
    try {
      await second.runPromise(Effect.void)
      const deadline = Date.now() + 10_000
      while (Date.now() < deadline && (await count(`SELECT count(*) AS n FROM files WHERE id = '${id}'`)) > 0) await new Promise((r) => setTimeout(r, 100))
      expect(await count(`SELECT count(*) AS n FROM files WHERE id = '${id}'`)).toBe(0)
      expect(blobs()).not.toContain(path.join(viewer.teamId, id))
      expect(await count(`SELECT count(*) AS n FROM files WHERE state = 'complete'`)).toBeGreaterThan(0)
    } finally {
      await second.dispose()
    }
  })
})
