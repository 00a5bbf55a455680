/**
 * A chat user for end-to-end tests: Slack's own `WebClient` for the Web API, and a
 * plain `ws` socket for the gateway (rtm.connect → ws url → hello → frames).
 */
import { WebClient } from "@slack/web-api"
import { randomBytes } from "node:crypto"
import WebSocket from "ws"

export interface ChatUser {
  readonly id: string
  readonly email: string
  readonly token: string
  readonly web: WebClient
}

const client = (url: string, token: string) =>
  new WebClient(token, { slackApiUrl: `${url}/api/`, retryConfig: { retries: 0 } })

const anonymous = (url: string) => new WebClient(undefined, { slackApiUrl: `${url}/api/`, retryConfig: { retries: 0 } })

/** Calls a method (including Chorus's extensions) and returns its answer's fields. */
const call = async (web: WebClient, method: string, args: Record<string, unknown>): Promise<Readonly<Record<string, unknown>>> =>
  (await web.apiCall(method, args)) as unknown as Readonly<Record<string, unknown>>

/** Signs up an account and returns its (workspace-less) token. */
export const signup = async (url: string, name: string) => {
  const email = `${name}-${randomBytes(4).toString("hex")}@example.test`
  const answer = await call(anonymous(url), "auth.signup", { email, password: "correct horse battery", name })
  return { id: answer["user_id"] as string, token: answer["token"] as string, email }
}

/** A workspace with an owner and `members` more users (invited, signed up, logged in). */
export const workspace = async (url: string, members: ReadonlyArray<string>, roles: Readonly<Record<string, string>> = {}) => {
  const owner = await signup(url, "owner")
  const created = await call(client(url, owner.token), "team.create", { name: "Acme", domain: `acme-${randomBytes(4).toString("hex")}` })
  const team = created["team"] as { id: string; name: string; domain: string }
  const ownerToken = created["token"] as string
  const users: Record<string, ChatUser> = { owner: { id: owner.id, email: owner.email, token: ownerToken, web: client(url, ownerToken) } }
  for (const name of members) {
    const email = `${name}-${randomBytes(4).toString("hex")}@example.test`
    await client(url, ownerToken).apiCall("admin.users.invite", { email, role: roles[name] ?? "member" })
    await anonymous(url).apiCall("auth.signup", { email, password: "correct horse battery", name })
    const login = await call(anonymous(url), "auth.login", { email, password: "correct horse battery", team_id: team.id })
    const token = login["token"] as string
    users[name] = { id: login["user_id"] as string, email, token, web: client(url, token) }
  }
  return { team, users }
}

/** The same user's token used against another node. */
export const on = (user: ChatUser, url: string): ChatUser => ({ ...user, web: client(url, user.token) })

export type Frame = Readonly<Record<string, unknown>>

export interface ChatSocket {
  readonly events: Array<Frame>
  /** Sends a frame with a fresh id and resolves with the server's reply to it. */
  readonly request: (frame: Frame) => Promise<Frame>
  readonly sendRaw: (data: string) => void
  /** Resolves when an event matching `predicate` has arrived (or rejects after `timeoutMs`). */
  readonly waitFor: (predicate: (event: Frame) => boolean, timeoutMs?: number) => Promise<Frame>
  readonly closed: Promise<{ code: number; reason: string }>
  readonly close: () => void
  /** Drops the connection without a close handshake, as a lost network would. */
  readonly drop: () => void
}

/** Connects a user's socket through `rtm.connect` on the node at `url`. */
export const connect = async (url: string, token: string): Promise<ChatSocket> => {
  const answer = await call(client(url, token), "rtm.connect", {})
  const ws = new WebSocket(answer["url"] as string)
  const events: Array<Frame> = []
  const replies = new Map<unknown, (frame: Frame) => void>()
  const waiters = new Set<{ predicate: (e: Frame) => boolean; resolve: (e: Frame) => void }>()
  let nextId = 1
  const hello = new Promise<void>((resolve, reject) => {
    ws.once("error", reject)
    ws.on("message", (data) => {
      const frame = JSON.parse(String(data)) as Frame
      if (frame["type"] === "hello") return resolve()
      if ("reply_to" in frame && frame["type"] !== "pong" && replies.has(frame["reply_to"])) {
        replies.get(frame["reply_to"])!(frame)
        replies.delete(frame["reply_to"])
        return
      }
      if (frame["type"] === "pong") {
        replies.get(frame["reply_to"])?.(frame)
        replies.delete(frame["reply_to"])
        return
      }
      events.push(frame)
      for (const w of waiters) {
        if (w.predicate(frame)) {
          waiters.delete(w)
          w.resolve(frame)
        }
      }
    })
  })
  const closed = new Promise<{ code: number; reason: string }>((resolve) =>
    ws.on("close", (code, reason) => resolve({ code, reason: String(reason) }))
  )
  await hello
  return {
    events,
    closed,
    request: (frame) =>
      new Promise((resolve, reject) => {
        const id = nextId++
        const timer = setTimeout(() => reject(new Error(`no reply to frame ${id} ${JSON.stringify(frame)}`)), 20_000)
        replies.set(id, (reply) => {
          clearTimeout(timer)
          resolve(reply)
        })
        ws.send(JSON.stringify({ ...frame, id }))
      }),
    sendRaw: (data) => ws.send(data),
    waitFor: (predicate, timeoutMs = 20_000) => {
      const found = events.find(predicate)
      if (found !== undefined) return Promise.resolve(found)
      return new Promise((resolve, reject) => {
        const entry = {
          predicate,
          resolve: (e: Frame) => {
            clearTimeout(timer)
            resolve(e)
          }
        }
        const timer = setTimeout(() => {
          waiters.delete(entry)
          reject(new Error(`timed out waiting for an event; got ${events.length}: ${JSON.stringify(events.slice(-5))}`))
        }, timeoutMs)
        waiters.add(entry)
      })
    },
    close: () => ws.close(),
    drop: () => ws.terminate()
  }
}

/** A channel's events (those with a seq) in arrival order. */
export const channelEvents = (socket: ChatSocket, channel: string): Array<Frame> =>
  socket.events.filter((e) => e["channel"] === channel && typeof e["seq"] === "number")
