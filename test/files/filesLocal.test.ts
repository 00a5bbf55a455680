// Files end to end against a real node with the local-disk driver: Slack's upload flow
// (raw and multipart bodies, and @slack/web-api's filesUploadV2 unchanged), downloads
// through url_private only for those who can see a conversation the file is shared in
// (404 for anyone else), refused uploads, listing and deletion.

import fs from "node:fs"
import os from "node:os"
import path from "node:path"
import sharp from "sharp"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { connect, workspace, type ChatUser } from "../support/chat.ts"
import { startCluster, type ChorusCluster } from "../support/cluster.ts"
import { api, download, filesUnder, must, pngBytes, postMultipart, postRaw } from "./filesSupport.ts"

const maxBytes = 256 * 1024

let cluster: ChorusCluster
let dir: string
let url: string
let users: Record<string, ChatUser>
let outsider: ChatUser
let pub: string
let priv: string

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "chorus-files-node-"))
  cluster = await startCluster({ nodes: 1, env: { CHORUS_FILES_DIR: dir, CHORUS_FILES_MAX_BYTES: String(maxBytes) } })
  url = cluster.nodes[0]!.url
  users = (await workspace(url, ["alice", "bob", "carol"])).users
  outsider = (await workspace(url, [])).users["owner"]!
  const token = (name: string) => users[name]!.token
  pub = (await must(api(url, "conversations.create", { name: `files-pub-${Date.now()}` }, token("alice"))))["channel"].id
  await must(api(url, "conversations.join", { channel: pub }, token("bob")))
  priv = (await must(api(url, "conversations.create", { name: `files-priv-${Date.now()}`, is_private: true }, token("alice"))))["channel"].id
  await must(api(url, "conversations.invite", { channel: priv, users: users["carol"]!.id }, token("alice")))
})

afterAll(async () => {
  await cluster?.stopAll()
  if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true })
})

const tok = (name: string) => users[name]!.token

/** getUploadURLExternal + a raw POST of `bytes`. */
const uploadRaw = async (name: string, filename: string, bytes: Buffer) => {
  const got = await must(api(url, "files.getUploadURLExternal", { filename, length: bytes.length }, tok(name)))
  const posted = await postRaw(got["upload_url"], bytes)
  expect(posted).toEqual({ status: 200, text: `OK - ${bytes.length}` })
  return got["file_id"] as string
}

describe("files (local disk)", () => {
  it("upload → complete → a member downloads the same bytes through url_private; outsiders get 404", async () => {
    const bytes = pngBytes(20_000)
    const fileId = await uploadRaw("alice", "not-really.txt", bytes)
    expect(fileId).toMatch(/^F[A-Z0-9]+$/)
    const done = await must(api(url, "files.completeUploadExternal", { files: [{ id: fileId, title: "A cat" }], channel_id: pub, initial_comment: "look" }, tok("alice")))
    const file = done["files"][0]
    expect(file).toMatchObject({ id: fileId, title: "A cat", name: "not-really.txt", mimetype: "image/png", filetype: "png", size: bytes.length, user: users["alice"]!.id, is_public: true, channels: [pub] })
    expect(file.shares.public[pub][0].ts).toMatch(/^\d{10}\.\d{6}$/)
    expect(file.url_private).toBe(`${url}/files/${fileId}/not-really.txt`)

    const got = await download(file.url_private, tok("bob"))
    expect(got.status).toBe(200)
    expect(got.body.equals(bytes)).toBe(true)
    expect(got.headers.get("content-type")).toBe("image/png")
    expect(got.headers.get("content-length")).toBe(String(bytes.length))
    expect(got.headers.get("content-disposition")).toMatch(/^inline; filename="not-really.txt"/)
    const attachment = await download(file.url_private_download, tok("carol"))
    expect(attachment.status).toBe(200)
    expect(attachment.body.equals(bytes)).toBe(true)
    expect(attachment.headers.get("content-disposition")).toMatch(/^attachment;/)

    for (const token of [outsider.token, undefined, "xoxp-not-a-token"]) {
      const refused = await download(file.url_private, token)
      expect(refused.status).toBe(404)
      expect(refused.body.includes(Buffer.from(bytes.subarray(8, 40)))).toBe(false)
    }
    expect((await api(url, "files.info", { file: fileId }, outsider.token)).error).toBe("file_not_found")

    const history = await must(api(url, "conversations.history", { channel: pub, limit: 1 }, tok("bob")))
    expect(history["messages"][0]).toMatchObject({ subtype: "file_share", text: "look", user: users["alice"]!.id, upload: true })
    expect(history["messages"][0].files[0]).toMatchObject({ id: fileId, title: "A cat", mimetype: "image/png", url_private: file.url_private })
  })

  it("a file shared only in a private channel is 404 to non-members, admins included", async () => {
    const bytes = Buffer.from("secret plans\n".repeat(100))
    const got = await must(api(url, "files.getUploadURLExternal", { filename: "plans.txt", length: bytes.length }, tok("alice")))
    expect(await postMultipart(got["upload_url"], bytes, "file", "plans.txt")).toEqual({ status: 200, text: `OK - ${bytes.length}` })
    const fileId = got["file_id"] as string
    const done = await must(api(url, "files.completeUploadExternal", { files: JSON.stringify([{ id: fileId }]), channels: priv }, tok("alice")))
    const file = done["files"][0]
    expect(file).toMatchObject({ is_public: false, groups: [priv], mimetype: "text/plain", title: "plans.txt" })

    expect((await download(file.url_private, tok("carol"))).body.equals(bytes)).toBe(true)
    expect((await download(file.url_private, tok("alice"))).status).toBe(200)
    expect((await download(file.url_private, tok("bob"))).status).toBe(404)
    expect((await download(file.url_private, tok("owner"))).status).toBe(404)
    expect((await api(url, "files.info", { file: fileId }, tok("bob"))).error).toBe("file_not_found")
    expect((await must(api(url, "files.info", { file: fileId }, tok("carol"))))["file"]).toMatchObject({ id: fileId, groups: [priv] })
    const listed = (name: string) => api(url, "files.list", {}, tok(name)).then((a) => (a["files"] as Array<{ id: string }>).map((f) => f.id))
    expect(await listed("carol")).toContain(fileId)
    expect(await listed("bob")).not.toContain(fileId)
    // Sharing into a conversation one cannot see is refused, and shares nothing.
    expect((await api(url, "files.completeUploadExternal", { files: [{ id: fileId }], channel_id: priv }, tok("bob"))).error).toBe("channel_not_found")
  })

  it("refuses too-large and length-mismatched uploads and keeps nothing of them", async () => {
    expect((await api(url, "files.getUploadURLExternal", { filename: "huge.bin", length: maxBytes + 1 }, tok("alice"))).error).toBe("file_too_large")
    expect((await api(url, "files.getUploadURLExternal", { filename: "x.bin", length: 10, direct: true }, tok("alice"))).error).toBe("direct_not_supported")
    const before = filesUnder(dir)

    const atLimit = await must(api(url, "files.getUploadURLExternal", { filename: "limit.bin", length: maxBytes }, tok("alice")))
    const tooBig = await postRaw(atLimit["upload_url"], Buffer.alloc(maxBytes + 50_000, 1))
    expect(tooBig.status).toBe(413)
    // Without a Content-Length (chunked), the limit is enforced as the bytes arrive.
    const chunked = await fetch(atLimit["upload_url"], {
      method: "POST",
      body: new ReadableStream({
        start(controller) {
          for (let i = 0; i < 8; i++) controller.enqueue(new Uint8Array(64 * 1024).fill(1))
          controller.close()
        }
      }),
      duplex: "half"
    } as RequestInit)
    expect(chunked.status).toBe(413)
    // Multipart: the file part is held to the limit while it streams in.
    expect((await postMultipart(atLimit["upload_url"], Buffer.alloc(maxBytes + 100_000, 1))).status).toBe(413)

    const declared = await must(api(url, "files.getUploadURLExternal", { filename: "short.bin", length: 1000 }, tok("alice")))
    expect((await postRaw(declared["upload_url"], Buffer.alloc(900, 2))).status).toBe(400)
    expect((await postRaw(declared["upload_url"], Buffer.alloc(1100, 2))).status).toBe(400)
    expect((await postMultipart(declared["upload_url"], Buffer.alloc(999, 2))).status).toBe(400)
    expect(filesUnder(dir)).toEqual(before)
    // Nothing was uploaded: it cannot be completed.
    expect((await api(url, "files.completeUploadExternal", { files: [{ id: declared["file_id"] }] }, tok("alice"))).error).toBe("file_not_found")
    // The URL still takes the right bytes, once.
    expect(await postRaw(declared["upload_url"], Buffer.alloc(1000, 2))).toEqual({ status: 200, text: "OK - 1000" })
    expect((await postRaw(declared["upload_url"], Buffer.alloc(1000, 2))).status).toBe(404)
    expect((await postRaw(`${url}/upload/v1/${declared["file_id"]}/wrong-secret`, Buffer.alloc(1000, 2))).status).toBe(404)
  })

  it("@slack/web-api's filesUploadV2 works unchanged, with file_shared and file_share events", async () => {
    const socket = await connect(url, tok("bob"))
    try {
      const content = "meeting notes\n- ship files\n"
      const result = await users["alice"]!.web.filesUploadV2({ channel_id: pub, content, filename: "notes.txt", title: "Notes", initial_comment: "see notes" })
      const completion = (result as unknown as { files: Array<{ files: Array<Record<string, any>> }> }).files[0]!.files[0]!
      expect(completion).toMatchObject({ title: "Notes", name: "notes.txt", mimetype: "text/plain", size: Buffer.byteLength(content) })
      const fileId = completion["id"] as string
      const shared = await socket.waitFor((e) => e["type"] === "file_shared" && e["file_id"] === fileId)
      expect(shared).toMatchObject({ channel_id: pub, user_id: users["alice"]!.id, file: { id: fileId } })
      const message = await socket.waitFor((e) => e["type"] === "message" && e["subtype"] === "file_share" && e["channel"] === pub && (e["files"] as Array<{ id: string }>)?.[0]?.id === fileId)
      expect(message["text"]).toBe("see notes")
      expect((message["seq"] as number) < (shared["seq"] as number)).toBe(true)
      const got = await download(completion["url_private"], tok("bob"))
      expect(got.body.toString("utf8")).toBe(content)
      expect(got.headers.get("content-type")).toBe("text/plain; charset=utf-8")

      // A Buffer body (multipart with the file in field `body`), in a thread.
      const parent = await users["bob"]!.web.chat.postMessage({ channel: pub, text: "thread here" })
      const png = pngBytes(3000)
      const again = await users["alice"]!.web.filesUploadV2({ channel_id: pub, file: png, filename: "pic.png", thread_ts: parent.ts as string })
      const pic = (again as unknown as { files: Array<{ files: Array<Record<string, any>> }> }).files[0]!.files[0]!
      expect(pic).toMatchObject({ mimetype: "image/png", size: png.length })
      expect((await download(pic["url_private"], tok("carol"))).body.equals(png)).toBe(true)
      const replies = await must(api(url, "conversations.replies", { channel: pub, ts: parent.ts }, tok("bob")))
      expect(replies["messages"][1]).toMatchObject({ subtype: "file_share", thread_ts: parent.ts, files: [{ id: pic["id"] }] })
    } finally {
      socket.close()
    }
  })

  it("lists files by channel, user and type, and deletes them (owner or admin) everywhere", async () => {
    const png = pngBytes(1000)
    const pngId = await uploadRaw("alice", "list.png", png)
    const txtId = await uploadRaw("alice", "list.txt", Buffer.from("plain"))
    await must(api(url, "files.completeUploadExternal", { files: [{ id: pngId }, { id: txtId }], channel_id: pub }, tok("alice")))
    const ids = (a: { files: Array<{ id: string }> } | Record<string, any>) => (a["files"] as Array<{ id: string }>).map((f) => f.id)

    const inChannel = await must(api(url, "files.list", { channel: pub, count: 100 }, tok("bob")))
    expect(ids(inChannel)).toEqual(expect.arrayContaining([pngId, txtId]))
    expect(inChannel["paging"]).toMatchObject({ count: 100, page: 1 })
    const images = ids(await must(api(url, "files.list", { channel: pub, types: "images" }, tok("bob"))))
    expect(images).toContain(pngId)
    expect(images).not.toContain(txtId)
    expect(ids(await must(api(url, "files.list", { user: users["bob"]!.id }, tok("bob"))))).toEqual([])
    const paged = await must(api(url, "files.list", { user: users["alice"]!.id, count: 1, page: 2 }, tok("bob")))
    expect(paged["files"]).toHaveLength(1)
    expect(paged["paging"].total).toBeGreaterThanOrEqual(2)
    const byCursor = await must(api(url, "files.list", { user: users["alice"]!.id, limit: 1 }, tok("bob")))
    const next = await must(api(url, "files.list", { user: users["alice"]!.id, limit: 1, cursor: byCursor["response_metadata"].next_cursor }, tok("bob")))
    expect(ids(next)[0]).not.toBe(ids(byCursor)[0])
    expect((await api(url, "files.list", { channel: priv }, tok("bob"))).error).toBe("channel_not_found")

    expect((await api(url, "files.delete", { file: pngId }, tok("bob"))).error).toBe("cant_delete_file")
    const blobsBefore = filesUnder(dir)
    await must(api(url, "files.delete", { file: pngId }, tok("alice")))
    expect(filesUnder(dir).length).toBe(blobsBefore.length - 1)
    const info = await must(api(url, "files.info", { file: txtId }, tok("bob")))
    expect((await download(info["file"].url_private.replace(txtId, pngId).replace("list.txt", "list.png"), tok("alice"))).status).toBe(404)
    expect((await api(url, "files.info", { file: pngId }, tok("alice"))).error).toBe("file_deleted")
    expect((await api(url, "files.delete", { file: pngId }, tok("alice"))).error).toBe("file_deleted")
    const history = await must(api(url, "conversations.history", { channel: pub, limit: 1 }, tok("bob")))
    expect(history["messages"][0].files).toEqual([{ id: pngId, mode: "tombstone" }, expect.objectContaining({ id: txtId })])
    // A workspace admin may delete anyone's file they can see.
    await must(api(url, "files.delete", { file: txtId }, tok("owner")))
    expect((await download(info["file"].url_private, tok("bob"))).status).toBe(404)
    expect(ids(await must(api(url, "files.list", { channel: pub }, tok("bob"))))).not.toContain(txtId)
  })

  it("an image gets Slack's thumbnails, served to those who see the file; an undecodable one gets none; delete removes them", async () => {
    // A real 800×600 PNG (a gradient, so it does not compress to nothing).
    const width = 800
    const height = 600
    const raw = Buffer.alloc(width * height * 3)
    for (let i = 0; i < raw.length; i++) raw[i] = (i * 7) % 251
    const image = await sharp(raw, { raw: { width, height, channels: 3 } }).png().toBuffer()
    const fileId = await uploadRaw("alice", "photo.png", image)
    const done = await must(api(url, "files.completeUploadExternal", { files: [{ id: fileId }], channel_id: pub }, tok("alice")))
    const file = done["files"][0]
    expect(file).toMatchObject({ original_w: 800, original_h: 600, thumb_64_w: 64, thumb_64_h: 48, thumb_360_w: 360, thumb_360_h: 270, thumb_720_w: 720, thumb_720_h: 540 })
    expect(file.thumb_360).toBe(`${url}/files-tmb/${fileId}/360/photo.png`)
    const info = (await must(api(url, "files.info", { file: fileId }, tok("bob"))))["file"]
    expect(info.thumb_480).toBe(`${url}/files-tmb/${fileId}/480/photo.png`)

    const thumb = await download(file.thumb_360, tok("bob"))
    expect(thumb.status).toBe(200)
    expect(thumb.headers.get("content-type")).toBe("image/png")
    expect(await sharp(thumb.body).metadata()).toMatchObject({ format: "png", width: 360, height: 270 })
    for (const token of [outsider.token, undefined]) expect((await download(file.thumb_360, token)).status).toBe(404)
    expect((await download(`${url}/files-tmb/${fileId}/999/photo.png`, tok("bob"))).status).toBe(404)

    // PNG's signature followed by noise: stored and shared, but no thumbnails.
    const broken = pngBytes(5_000)
    const brokenId = await uploadRaw("alice", "broken.png", broken)
    const brokenDone = await must(api(url, "files.completeUploadExternal", { files: [{ id: brokenId }], channel_id: pub }, tok("alice")))
    expect(brokenDone["files"][0].mimetype).toBe("image/png")
    expect(brokenDone["files"][0].thumb_64).toBeUndefined()

    const before = filesUnder(dir).filter((f) => f.includes(fileId))
    expect(before.length).toBe(7) // the image and its six thumbnails
    await must(api(url, "files.delete", { file: fileId }, tok("alice")))
    expect(filesUnder(dir).filter((f) => f.includes(fileId))).toEqual([])
    expect((await download(file.thumb_360, tok("bob"))).status).toBe(404)
  })
})
