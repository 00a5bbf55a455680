// Files end to end against a real node with the S3 driver, on an s3rver this test
// starts on loopback: multipart uploads to the bucket, url_private as a presigned
// redirect (followed to the same bytes), 404 for those who may not see the file,
// refused uploads leaving no object, direct (presigned PUT) uploads, deletion.

import { DeleteObjectCommand, HeadObjectCommand, ListObjectsV2Command, S3Client } from "@aws-sdk/client-s3"
import sharp from "sharp"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { workspace, type ChatUser } from "../support/chat.ts"
import { startCluster, type ChorusCluster } from "../support/cluster.ts"
import { api, download, must, pngBytes, postMultipart, postRaw, startS3rver, type S3Server } from "./filesSupport.ts"

const maxBytes = 1_000_000
const partSize = 64 * 1024

let s3: S3Server
let client: S3Client
let cluster: ChorusCluster
let url: string
let users: Record<string, ChatUser>
let teamId: string
let outsider: ChatUser
let pub: string
let priv: string

beforeAll(async () => {
  s3 = await startS3rver()
  client = new S3Client({
    region: "us-east-1",
    endpoint: s3.endpoint,
    forcePathStyle: true,
    credentials: { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" },
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED"
  })
  cluster = await startCluster({
    nodes: 1,
    env: {
      CHORUS_FILES_DRIVER: "s3",
      CHORUS_S3_BUCKET: s3.bucket,
      CHORUS_S3_ENDPOINT: s3.endpoint,
      CHORUS_S3_FORCE_PATH_STYLE: "true",
      CHORUS_S3_ACCESS_KEY_ID: "S3RVER",
      CHORUS_S3_SECRET_ACCESS_KEY: "S3RVER",
      CHORUS_S3_PART_SIZE: String(partSize),
      CHORUS_FILES_MAX_BYTES: String(maxBytes)
    }
  })
  url = cluster.nodes[0]!.url
  const ws = await workspace(url, ["alice", "bob"])
  users = ws.users
  teamId = ws.team.id
  outsider = (await workspace(url, [])).users["owner"]!
  pub = (await must(api(url, "conversations.create", { name: `s3-pub-${Date.now()}` }, users["alice"]!.token)))["channel"].id
  await must(api(url, "conversations.join", { channel: pub }, users["bob"]!.token))
  priv = (await must(api(url, "conversations.create", { name: `s3-priv-${Date.now()}`, is_private: true }, users["alice"]!.token)))["channel"].id
})

afterAll(async () => {
  await cluster?.stopAll()
  client?.destroy()
  await s3?.close()
})

const tok = (name: string) => users[name]!.token

const objects = async () => {
  const listed = await client.send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: `${teamId}/` }))
  return (listed.Contents ?? []).map((o) => o.Key as string).sort()
}

const exists = (key: string) =>
  client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: key })).then(() => true, () => false)

describe("files (S3)", () => {
  it("upload (multipart to the bucket) → complete → a member follows url_private's redirect to the same bytes", async () => {
    const bytes = pngBytes(300_000) // several parts
    const got = await must(api(url, "files.getUploadURLExternal", { filename: "big.png", length: bytes.length }, tok("alice")))
    expect(await postRaw(got["upload_url"], bytes)).toEqual({ status: 200, text: `OK - ${bytes.length}` })
    const fileId = got["file_id"] as string
    expect(await exists(`${teamId}/${fileId}`)).toBe(true)
    const done = await must(api(url, "files.completeUploadExternal", { files: [{ id: fileId, title: "Big" }], channel_id: pub }, tok("alice")))
    const file = done["files"][0]
    expect(file).toMatchObject({ id: fileId, mimetype: "image/png", size: bytes.length, is_public: true })

    const redirect = await download(file.url_private, tok("bob"), "manual")
    expect(redirect.status).toBe(302)
    const location = redirect.headers.get("location") ?? ""
    expect(location.startsWith(`${s3.endpoint}/${s3.bucket}/${teamId}/${fileId}?`)).toBe(true)
    expect(location).toContain("X-Amz-Expires=60")
    const followed = await download(file.url_private, tok("bob"))
    expect(followed.status).toBe(200)
    expect(followed.body.equals(bytes)).toBe(true)
    expect(followed.headers.get("content-type")).toBe("image/png")
    expect(followed.headers.get("content-disposition")).toMatch(/^inline; filename="big.png"/)

    for (const token of [outsider.token, undefined]) {
      const refused = await download(file.url_private, token, "manual")
      expect(refused.status).toBe(404)
      expect(refused.headers.get("location")).toBeNull()
    }
  })

  it("a file shared in a private channel redirects its members only", async () => {
    const bytes = Buffer.from("private bytes\n")
    const got = await must(api(url, "files.getUploadURLExternal", { filename: "p.txt", length: bytes.length }, tok("alice")))
    expect((await postMultipart(got["upload_url"], bytes)).status).toBe(200)
    const done = await must(api(url, "files.completeUploadExternal", { files: [{ id: got["file_id"] }], channel_id: priv }, tok("alice")))
    const file = done["files"][0]
    expect((await download(file.url_private, tok("alice"))).body.equals(bytes)).toBe(true)
    expect((await download(file.url_private, tok("bob"), "manual")).status).toBe(404)
    expect((await download(file.url_private, tok("owner"), "manual")).status).toBe(404)
  })

  it("refused uploads leave no object in the bucket", async () => {
    const before = await objects()
    expect((await api(url, "files.getUploadURLExternal", { filename: "huge", length: maxBytes + 1 }, tok("alice"))).error).toBe("file_too_large")
    const atLimit = await must(api(url, "files.getUploadURLExternal", { filename: "limit", length: maxBytes }, tok("alice")))
    expect((await postMultipart(atLimit["upload_url"], Buffer.alloc(maxBytes + 200_000, 3))).status).toBe(413)
    const short = await must(api(url, "files.getUploadURLExternal", { filename: "short", length: 200_000 }, tok("alice")))
    expect((await postRaw(short["upload_url"], Buffer.alloc(199_999, 4))).status).toBe(400)
    expect((await postRaw(short["upload_url"], Buffer.alloc(200_001, 4))).status).toBe(400)
    expect(await objects()).toEqual(before)
  })

  it("direct=true hands out a presigned PUT URL; completion checks what arrived", async () => {
    const bytes = Buffer.from("%PDF-1.4\n" + "x".repeat(5000))
    const got = await must(api(url, "files.getUploadURLExternal", { filename: "doc.pdf", length: bytes.length, direct: true }, tok("alice")))
    expect(got["upload_url"].startsWith(`${s3.endpoint}/${s3.bucket}/${teamId}/${got["file_id"]}?`)).toBe(true)
    // Completing before the bytes are there completes nothing.
    expect((await api(url, "files.completeUploadExternal", { files: [{ id: got["file_id"] }] }, tok("alice"))).error).toBe("file_not_found")
    const put = await fetch(got["upload_url"], { method: "PUT", body: bytes })
    expect(put.status).toBe(200)
    const done = await must(api(url, "files.completeUploadExternal", { files: [{ id: got["file_id"] }], channel_id: pub }, tok("alice")))
    expect(done["files"][0]).toMatchObject({ mimetype: "application/pdf", filetype: "pdf", size: bytes.length })
    expect((await download(done["files"][0].url_private, tok("bob"))).body.equals(bytes)).toBe(true)

    // Bytes of another length than declared are never completed (and are deleted).
    const other = await must(api(url, "files.getUploadURLExternal", { filename: "lie.bin", length: 100, direct: true }, tok("alice")))
    const key = `${teamId}/${other["file_id"]}`
    const lied = await fetch(other["upload_url"], { method: "PUT", body: Buffer.alloc(150, 1) }).then((r) => r.status, () => 0)
    if (lied === 200) {
      expect((await api(url, "files.completeUploadExternal", { files: [{ id: other["file_id"] }] }, tok("alice"))).error).toBe("file_not_found")
      expect(await exists(key)).toBe(false)
    } else {
      expect(lied).not.toBe(200)
    }
    await client.send(new DeleteObjectCommand({ Bucket: s3.bucket, Key: key })).catch(() => undefined)
  })

  it("files.delete removes the object", async () => {
    const bytes = Buffer.from("to be deleted")
    const got = await must(api(url, "files.getUploadURLExternal", { filename: "d.txt", length: bytes.length }, tok("alice")))
    await postRaw(got["upload_url"], bytes)
    const done = await must(api(url, "files.completeUploadExternal", { files: [{ id: got["file_id"] }], channel_id: pub }, tok("alice")))
    expect(await exists(`${teamId}/${got["file_id"]}`)).toBe(true)
    await must(api(url, "files.delete", { file: got["file_id"] }, tok("alice")))
    expect(await exists(`${teamId}/${got["file_id"]}`)).toBe(false)
    expect((await download(done["files"][0].url_private, tok("bob"), "manual")).status).toBe(404)
  })

  it("an image's thumbnails are objects in the bucket, served by a presigned redirect, removed with the file", async () => {
    const raw = Buffer.alloc(400 * 300 * 3, 90)
    const image = await sharp(raw, { raw: { width: 400, height: 300, channels: 3 } }).jpeg().toBuffer()
    const got = await must(api(url, "files.getUploadURLExternal", { filename: "photo.jpg", length: image.length }, tok("alice")))
    await postRaw(got["upload_url"], image)
    const fileId = got["file_id"] as string
    const file = (await must(api(url, "files.completeUploadExternal", { files: [{ id: fileId }], channel_id: pub }, tok("alice"))))["files"][0]
    expect(file).toMatchObject({ mimetype: "image/jpeg", original_w: 400, original_h: 300, thumb_360_w: 360, thumb_360_h: 270, thumb_480_w: 400 })
    expect(file.thumb_720).toBeUndefined() // boxes above the image's size are not made
    expect(await exists(`${teamId}/${fileId}_thumb_360`)).toBe(true)
    const redirect = await download(file.thumb_360, tok("bob"), "manual")
    expect(redirect.status).toBe(302)
    const followed = await download(file.thumb_360, tok("bob"))
    expect(await sharp(followed.body).metadata()).toMatchObject({ format: "jpeg", width: 360, height: 270 })
    expect((await download(file.thumb_360, outsider.token, "manual")).status).toBe(404)
    await must(api(url, "files.delete", { file: fileId }, tok("alice")))
    expect(await exists(`${teamId}/${fileId}_thumb_360`)).toBe(false)
  })
})
