/**
 * The WebSocket gateway's wire protocol (API.md, "WebSocket gateway"), as pure
 * functions: client frames are parsed and validated into `ClientFrame`s, and server
 * frames are built as JSON text. No sockets, no I/O; `Gateway.ts` is the shell.
 *
 * Client frames are JSON objects with a `type` and, when they expect an answer, an
 * `id` (a number or a short string), echoed as `reply_to`:
 *
 * - `{"id":1,"type":"message","channel":"C…","text":"…","thread_ts"?,"client_msg_id"?,"reply_broadcast"?}`
 * - `{"id":2,"type":"ping",…}` → `{"type":"pong","reply_to":2,…}` (other fields are echoed, as Slack does)
 * - `{"type":"typing","channel":"C…"}` (`id` optional)
 * - `{"id":3,"type":"resume","channels":{"C…":<last seq>,…}}` (ext)
 * - `{"type":"presence_sub","ids":["U…",…]}`
 *
 * Answers: `{"ok":true,"reply_to":id,…}` or `{"ok":false,"reply_to":id,"error":{"code","msg"}}`;
 * a frame too broken to carry a usable `id` gets `{"type":"error","error":{"code","msg"}}`.
 */
import * as Ids from "../domain/Ids.ts"

/** The path the gateway serves on the API's port (`ws://<node>/ws?ticket=…`). */
export const gatewayPath = "/ws"

/** A client frame's `id`: a JSON number (safe integer) or a string of at most 64 characters. */
export type FrameId = number | string

/** Longest message text, in characters (Slack's limit; `msg_too_long` beyond). */
export const maxTextCharacters = 40_000
/** Most channels one `resume` frame may name. */
export const maxResumeChannels = 1_000
/** Most users one `presence_sub` frame may name. */
export const maxPresenceIds = 500

export interface MessageFrame {
  readonly type: "message"
  readonly id: FrameId
  readonly channel: string
  readonly text: string
  readonly thread_ts: string | undefined
  readonly client_msg_id: string | undefined
  readonly reply_broadcast: boolean | undefined
}

export interface PingFrame {
  readonly type: "ping"
  readonly id: FrameId | undefined
  /** The ping's other fields, echoed in the pong (Slack clients put a timestamp there). */
  readonly extra: Readonly<Record<string, unknown>>
}

export interface TypingFrame {
  readonly type: "typing"
  readonly id: FrameId | undefined
  readonly channel: string
}

export interface ResumeFrame {
  readonly type: "resume"
  readonly id: FrameId
  /** Channel → the last `seq` the client has of it. */
  readonly channels: ReadonlyArray<readonly [channel: string, lastSeq: number]>
}

export interface PresenceSubFrame {
  readonly type: "presence_sub"
  readonly id: FrameId | undefined
  readonly ids: ReadonlyArray<string>
}

export type ClientFrame = MessageFrame | PingFrame | TypingFrame | ResumeFrame | PresenceSubFrame

export interface FrameError {
  /** The frame's id when it had a usable one (the error is then a reply). */
  readonly id: FrameId | undefined
  readonly code: string
  readonly msg: string
}

export type ParseResult =
  | { readonly ok: true; readonly frame: ClientFrame }
  | { readonly ok: false; readonly error: FrameError }

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value)

/** A channel id a client may name: a channel (`C…`) or a direct message (`D…`). */
export const isChannelId = (value: unknown): value is string => Ids.isId("C", value) || Ids.isId("D", value)

const tsPattern = /^\d{1,12}\.\d{1,6}$/
// Printable ASCII without spaces: it becomes part of a command id (a NATS header value).
const clientMsgIdPattern = /^[\x21-\x7e]{1,64}$/

const readId = (value: unknown): FrameId | undefined => {
  if (typeof value === "number" && Number.isSafeInteger(value)) return value
  if (typeof value === "string" && value.length > 0 && value.length <= 64) return value
  return undefined
}

const characters = (text: string): number => {
  // Cheap bound first: code points ≤ UTF-16 units.
  if (text.length <= maxTextCharacters) return text.length
  let n = 0
  for (const _ of text) n++
  return n
}

const failure = (id: FrameId | undefined, code: string, msg: string): ParseResult => ({ ok: false, error: { id, code, msg } })

/** Parses one text frame. Never throws. */
export const parseClientFrame = (text: string): ParseResult => {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    return failure(undefined, "invalid_json", "the frame is not valid JSON")
  }
  if (!isRecord(value)) return failure(undefined, "invalid_json", "a frame must be a JSON object")
  const rawId = value["id"]
  const id = readId(rawId)
  if (rawId !== undefined && rawId !== null && id === undefined) {
    return failure(undefined, "invalid_id", "id must be an integer or a string of at most 64 characters")
  }
  const type = value["type"]
  switch (type) {
    case "message":
      return parseMessage(value, id)
    case "ping": {
      const { id: _id, type: _type, ...extra } = value
      return { ok: true, frame: { type: "ping", id, extra } }
    }
    case "typing": {
      const channel = value["channel"]
      if (!isChannelId(channel)) return failure(id, "invalid_channel", "channel must be a channel id")
      return { ok: true, frame: { type: "typing", id, channel } }
    }
    case "resume":
      return parseResume(value, id)
    case "presence_sub": {
      const ids = value["ids"]
      if (!Array.isArray(ids) || ids.length > maxPresenceIds || !ids.every((u) => Ids.isId("U", u))) {
        return failure(id, "invalid_arguments", `ids must be an array of at most ${maxPresenceIds} user ids`)
      }
      return { ok: true, frame: { type: "presence_sub", id, ids: ids as Array<string> } }
    }
    case undefined:
      return failure(id, "invalid_type", "the frame has no type")
    default:
      return failure(id, "unknown_type", typeof type === "string" ? `unknown frame type ${JSON.stringify(String(type).slice(0, 40))}` : "type must be a string")
  }
}

const parseMessage = (value: Record<string, unknown>, id: FrameId | undefined): ParseResult => {
  if (id === undefined) return failure(undefined, "invalid_arguments", "a message frame needs an id")
  const channel = value["channel"]
  if (channel === undefined) return failure(id, "invalid_arguments", "missing channel")
  if (!isChannelId(channel)) return failure(id, "channel_not_found", "channel must be a channel id")
  const text = value["text"]
  if (text !== undefined && typeof text !== "string") return failure(id, "invalid_arguments", "text must be a string")
  if (text === undefined || text.trim().length === 0) return failure(id, "no_text", "the message has no text")
  if (characters(text) > maxTextCharacters) return failure(id, "msg_too_long", `text is longer than ${maxTextCharacters} characters`)
  const threadTs = value["thread_ts"]
  if (threadTs !== undefined && threadTs !== null && (typeof threadTs !== "string" || !tsPattern.test(threadTs))) {
    return failure(id, "invalid_thread_ts", "thread_ts must be a message ts")
  }
  const clientMsgId = value["client_msg_id"]
  if (clientMsgId !== undefined && clientMsgId !== null && (typeof clientMsgId !== "string" || !clientMsgIdPattern.test(clientMsgId))) {
    return failure(id, "invalid_arguments", "client_msg_id must be 1 to 64 printable ASCII characters")
  }
  const replyBroadcast = value["reply_broadcast"]
  if (replyBroadcast !== undefined && typeof replyBroadcast !== "boolean") {
    return failure(id, "invalid_arguments", "reply_broadcast must be a boolean")
  }
  return {
    ok: true,
    frame: {
      type: "message",
      id,
      channel,
      text,
      thread_ts: typeof threadTs === "string" ? threadTs : undefined,
      client_msg_id: typeof clientMsgId === "string" ? clientMsgId : undefined,
      reply_broadcast: replyBroadcast
    }
  }
}

const parseResume = (value: Record<string, unknown>, id: FrameId | undefined): ParseResult => {
  if (id === undefined) return failure(undefined, "invalid_arguments", "a resume frame needs an id")
  const channels = value["channels"]
  if (!isRecord(channels)) return failure(id, "invalid_arguments", "channels must be an object of channel id to last seq")
  const entries = Object.entries(channels)
  if (entries.length > maxResumeChannels) return failure(id, "invalid_arguments", `at most ${maxResumeChannels} channels per resume`)
  const out: Array<readonly [string, number]> = []
  for (const [channel, seq] of entries) {
    if (!isChannelId(channel)) return failure(id, "invalid_arguments", `${JSON.stringify(String(channel).slice(0, 40))} is not a channel id`)
    if (typeof seq !== "number" || !Number.isSafeInteger(seq) || seq < 0) {
      return failure(id, "invalid_arguments", `the last seq of ${channel} must be a non-negative integer`)
    }
    out.push([channel, seq])
  }
  return { ok: true, frame: { type: "resume", id, channels: out } }
}

// ---- server frames ---------------------------------------------------------------

export const hello = JSON.stringify({ type: "hello" })
export const goodbye = JSON.stringify({ type: "goodbye" })

export const pong = (id: FrameId | undefined, extra: Readonly<Record<string, unknown>> = {}): string =>
  JSON.stringify({ ...extra, type: "pong", ...(id === undefined ? {} : { reply_to: id }) })

export const replyOk = (id: FrameId, fields: Readonly<Record<string, unknown>> = {}): string =>
  JSON.stringify({ ok: true, reply_to: id, ...fields })

export const replyError = (id: FrameId, code: string, msg: string): string =>
  JSON.stringify({ ok: false, reply_to: id, error: { code, msg } })

/** An error that answers no particular frame (Slack's RTM `error` event). */
export const errorEvent = (code: string, msg: string): string => JSON.stringify({ type: "error", error: { code, msg } })

/** The answer to a frame error: a reply when the frame had an id, else an `error` event. */
export const frameError = (error: FrameError): string =>
  error.id === undefined ? errorEvent(error.code, error.msg) : replyError(error.id, error.code, error.msg)

/** `user_typing`, sent to the channel's other members (not sequenced: it is not a channel event). */
export const userTyping = (channel: string, user: string): string => JSON.stringify({ type: "user_typing", channel, user })

// ---- close codes ------------------------------------------------------------------

/**
 * Why the gateway closed a socket. 1001 and 1009 are the standard ones (draining
 * node; frame over the size bound, sent by `ws` itself); the 4000 range is Chorus's.
 * After any of them a client reconnects (`rtm.connect`) and resumes.
 */
export const CloseCodes = {
  /** The node is draining (after a `goodbye` frame). */
  goingAway: 1001,
  /** A frame larger than the gateway's `maxFrameBytes`. */
  tooLarge: 1009,
  internalError: 1011,
  /** No frame from the client for longer than the presence TTL. */
  idle: 4000,
  /** The client did not read fast enough: its send buffer passed the bound. */
  slowConsumer: 4001,
  /** This node could not keep the socket's event stream gap-free: reconnect and resume. */
  resync: 4002,
  /** The client kept sending frames faster than its limit after being told `ratelimited`. */
  flood: 4003
} as const

// ---- events from NATS and the log ---------------------------------------------------

/**
 * An event's JSON (bytes from NATS, or text), as an object; undefined when it is not a
 * JSON object. The gateway parses each event once per node and keeps the object for
 * the fields it needs (`seq`, membership changes); sockets get the original bytes.
 */
export const parseEvent = (data: Uint8Array | string): Readonly<Record<string, unknown>> | undefined => {
  try {
    const value: unknown = JSON.parse(typeof data === "string" ? data : textDecoder.decode(data))
    return isRecord(value) ? value : undefined
  } catch {
    return undefined
  }
}

const textDecoder = new TextDecoder()

/** A channel event's `seq` (a positive integer), else undefined. */
export const seqOf = (event: Readonly<Record<string, unknown>>): number | undefined => {
  const seq = event["seq"]
  return typeof seq === "number" && Number.isSafeInteger(seq) && seq > 0 ? seq : undefined
}

/** The channel id a per-user event is about: `channel_id`, a string `channel`, or a channel object's `id`. */
export const channelOf = (event: Readonly<Record<string, unknown>>): string | undefined => {
  if (isChannelId(event["channel_id"])) return event["channel_id"]
  const channel = event["channel"]
  if (typeof channel === "string") return isChannelId(channel) ? channel : undefined
  if (isRecord(channel) && isChannelId(channel["id"])) return channel["id"]
  return undefined
}
