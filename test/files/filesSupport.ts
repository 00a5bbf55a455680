// Helpers of the files tests against real nodes: the Web API as raw fetches (to see
// HTTP statuses), uploads raw or multipart, downloads with a token, and an s3rver.

import { randomBytes } from "node:crypto"
import fs from "node:fs"
import { createRequire } from "node:module"
import os from "node:os"
import path from "node:path"

export type Answer = { readonly ok: boolean; readonly error?: string; readonly [field: string]: any }

/** POSTs a Web API method as a form (objects as JSON strings, as Slack's clients send them). */
export const api = async (url: string, method: string, args: Record<string, unknown>, token?: string): Promise<Answer> => {
  const form = new URLSearchParams()
  for (const [k, v] of Object.entries(args)) if (v !== undefined) form.set(k, typeof v === "string" ? v : JSON.stringify(v))
  const res = await fetch(`${url}/api/${method}`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded", ...(token === undefined ? {} : { authorization: `Bearer ${token}` }) },
    body: form
  })
  return (await res.json()) as Answer
}

export const must = async (p: Promise<Answer>): Promise<Answer> => {
  const a = await p
  if (!a.ok) throw new Error(`expected ok, got ${JSON.stringify(a)}`)
  return a
}

/** Bytes of a small PNG-looking file (the signature, then filler). */
export const pngBytes = (size: number): Buffer => {
  const b = randomBytes(size)
  Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]).copy(b)
  return b
}

/** POSTs `body` raw to an upload URL: the status and the text answered (or the network error). */
export const postRaw = async (uploadUrl: string, body: Uint8Array, headers: Record<string, string> = {}) => {
  try {
    const res = await fetch(uploadUrl, { method: "POST", headers: { "content-type": "application/octet-stream", ...headers }, body })
    return { status: res.status, text: await res.text() }
  } catch (error) {
    return { status: 0, text: String((error as { cause?: unknown }).cause ?? error) }
  }
}

/** POSTs `body` as multipart/form-data with the file in field `field`. */
export const postMultipart = async (uploadUrl: string, body: Uint8Array, field = "file", filename = "upload.bin") => {
  const form = new FormData()
  form.append("note", "a field before the file")
  form.append(field, new Blob([body]), filename)
  const res = await fetch(uploadUrl, { method: "POST", body: form })
  return { status: res.status, text: await res.text() }
}

/** GETs a file URL with a token; `redirect: "manual"` to see a 302. */
export const download = async (fileUrl: string, token: string | undefined, redirect: "follow" | "manual" = "follow") => {
  const res = await fetch(fileUrl, { redirect, headers: token === undefined ? {} : { authorization: `Bearer ${token}` } })
  return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) }
}

/** An S3-compatible server on a free loopback port, with its own temporary directory. */
export interface S3Server {
  readonly endpoint: string
  readonly bucket: string
  readonly directory: string
  close(): Promise<void>
}

interface S3rverInstance {
  run(): Promise<{ port: number }>
  close(): Promise<void>
}
type S3rverClass = new (options: Record<string, unknown>) => S3rverInstance

export const startS3rver = async (bucket = "chorus-files"): Promise<S3Server> => {
  const S3rver = createRequire(import.meta.url)("s3rver") as S3rverClass
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-s3rver-"))
  const server = new S3rver({ address: "127.0.0.1", port: 0, silent: true, directory, configureBuckets: [{ name: bucket }] })
  const address = await server.run()
  return {
    endpoint: `http://127.0.0.1:${address.port}`,
    bucket,
    directory,
    close: async () => {
      await server.close().catch(() => undefined)
      fs.rmSync(directory, { recursive: true, force: true })
    }
  }
}

/** Every file under `dir`, relative, sorted (blobs left on disk). */
export const filesUnder = (dir: string): Array<string> => {
  const found: Array<string> = []
  const walk = (d: string) => {
    if (!fs.existsSync(d)) return
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name)
      if (e.isDirectory()) walk(p)
      else found.push(path.relative(dir, p))
    }
  }
  walk(dir)
  return found.sort()
}
