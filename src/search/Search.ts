/**
 * The search service: an index of messages, kept up to date from channel events
 * (src/search/Indexer.ts), and searched on behalf of one caller (src/api/search.ts).
 * Two implementations pass one contract suite (test/search/contract.ts): PostgreSQL
 * full-text (PgSearch.ts, the default) and Typesense (TypesenseSearch.ts).
 *
 * The index knows nothing of who may read what: every search names the conversations
 * to look in — those the caller may read now, computed at query time by
 * SearchScope.ts — and the workspace, and an implementation must never answer outside
 * them (invariant 5).
 *
 * Writes are versioned so that they can be applied more than once and in any order
 * (redeliveries; competing indexers on several nodes): a document's version is the
 * channel `seq` of the event that produced it, and a write lands only over an older
 * version. A deletion leaves a tombstone with its version, so a late redelivery of the
 * post cannot bring the message back.
 */
import { Context, Data } from "effect"
import type { Effect } from "effect"
import type { ChannelEvent } from "../domain/ChannelEvents.ts"
import type { Term, TimeRange } from "./SearchQuery.ts"

/** A message as the index holds it. */
export interface SearchDocument {
  readonly teamId: string
  readonly channelId: string
  readonly ts: string
  readonly userId: string | null
  readonly text: string
  /** The thread it belongs to (its own ts for a thread parent), else null. */
  readonly threadTs: string | null
  /** The channel seq this state is as of. */
  readonly version: number
}

export type IndexOp =
  | { readonly _tag: "Upsert"; readonly doc: SearchDocument }
  | { readonly _tag: "Remove"; readonly teamId: string; readonly channelId: string; readonly ts: string; readonly version: number }
  /** A reply arrived: its parent `ts` is now a thread parent (monotonic, so unversioned). */
  | { readonly _tag: "MarkThread"; readonly channelId: string; readonly ts: string }

export type SortBy = "score" | "timestamp"
export type SortDir = "asc" | "desc"

export interface SearchRequest {
  readonly teamId: string
  /** The conversations to look in: those the caller may read, narrowed by `in:`. Empty matches nothing. */
  readonly channels: ReadonlyArray<string>
  /** Authors (`from:`); undefined for anyone, empty for no one. */
  readonly users: ReadonlyArray<string> | undefined
  readonly terms: ReadonlyArray<Term>
  readonly range: TimeRange
  readonly hasLink: boolean
  readonly isThread: boolean
  /** `score` without any text to match sorts by timestamp. */
  readonly sort: SortBy
  readonly sortDir: SortDir
  readonly offset: number
  readonly limit: number
  /** Wrap matched words in `highlightStart`/`highlightEnd`. */
  readonly highlight: boolean
}

export interface SearchHit {
  readonly channelId: string
  readonly ts: string
  readonly userId: string | null
  readonly threadTs: string | null
  /** The message text, highlighted when asked. */
  readonly text: string
  readonly score: number
}

export interface SearchResult {
  /** Matches in all (some implementations cap very large counts; see each). */
  readonly total: number
  readonly hits: ReadonlyArray<SearchHit>
}

/** Where a rebuild from PostgreSQL got to: the last `(channel_id, ts)` of `messages` done. */
export interface ReindexCursor {
  readonly channelId: string
  readonly ts: string
}

export class SearchError extends Data.TaggedError("SearchError")<{
  readonly operation: string
  readonly cause: unknown
}> {
  override get message(): string {
    const detail = this.cause instanceof Error ? this.cause.message : String(this.cause)
    return `search ${this.operation} failed: ${detail}`
  }
}

export interface SearchShape {
  readonly backend: "postgres" | "typesense"
  /** Applies index writes; idempotent and order-insensitive (see the versions above). */
  readonly apply: (ops: ReadonlyArray<IndexOp>) => Effect.Effect<void, SearchError>
  readonly search: (request: SearchRequest) => Effect.Effect<SearchResult, SearchError>
  /**
   * Indexes up to `limit` rows of PostgreSQL's `messages` after `after` (in primary-key
   * order), as of their channel's `last_seq`: what `chorus search reindex` loops over.
   * `next` is undefined once past the last row.
   */
  readonly reindex: (
    after: ReindexCursor | undefined,
    limit: number
  ) => Effect.Effect<{ readonly next: ReindexCursor | undefined; readonly scanned: number }, SearchError>
  /** Removes every document (a rebuild from scratch). */
  readonly clear: Effect.Effect<void, SearchError>
}

export class Search extends Context.Tag("chorus/search/Search")<Search, SearchShape>() {}

// ---- pure helpers shared by the implementations ----------------------------------------

/** Slack's highlight markers (private-use characters), as `search.messages` returns with `highlight=true`. */
export const highlightStart = "\ue000"
export const highlightEnd = "\ue001"

/** Message subtypes that are searchable; system messages (joins, topics, renames…) are not. */
export const indexedSubtypes: ReadonlySet<string> = new Set(["bot_message", "thread_broadcast", "file_share", "me_message"])

export const isIndexed = (subtype: unknown): boolean => subtype === undefined || subtype === null || (typeof subtype === "string" && indexedSubtypes.has(subtype))

/** Same rule as the SQL of PgSearch (`text ~* 'https?://'`): Slack's `has:link`. */
export const linkPattern = /https?:\/\//i
export const hasLink = (text: string): boolean => linkPattern.test(text)

const str = (value: unknown): string | undefined => (typeof value === "string" ? value : undefined)

/** A document from a Slack message object (of a `message` or `message_changed` event). */
const documentOf = (message: Readonly<Record<string, unknown>>, channel: string, version: number): SearchDocument | undefined => {
  const ts = str(message["ts"])
  if (ts === undefined || !isIndexed(message["subtype"])) return undefined
  return {
    teamId: str(message["team"]) ?? "",
    channelId: channel,
    ts,
    userId: str(message["user"]) ?? null,
    text: str(message["text"]) ?? "",
    threadTs: str(message["thread_ts"]) ?? null,
    version
  }
}

/**
 * What a channel event does to the index: a post is indexed (and a reply marks its
 * parent as a thread), an edit re-indexes the new text, a deletion removes. Every other
 * event (reactions, members, renames…) changes nothing searchable.
 */
export const opsOfEvent = (event: ChannelEvent): ReadonlyArray<IndexOp> => {
  if (event.type !== "message") return []
  const subtype = str(event["subtype"])
  if (subtype === "message_changed") {
    const message = event["message"]
    if (typeof message !== "object" || message === null) return []
    const doc = documentOf(message as Record<string, unknown>, event.channel, event.seq)
    return doc === undefined ? [] : [{ _tag: "Upsert", doc }]
  }
  if (subtype === "message_deleted") {
    const ts = str(event["deleted_ts"])
    if (ts === undefined) return []
    const previous = event["previous_message"] as Record<string, unknown> | undefined
    return [{ _tag: "Remove", teamId: str(previous?.["team"]) ?? "", channelId: event.channel, ts, version: event.seq }]
  }
  const doc = documentOf(event, event.channel, event.seq)
  if (doc === undefined) return []
  const ops: Array<IndexOp> = [{ _tag: "Upsert", doc }]
  if (doc.threadTs !== null && doc.threadTs !== doc.ts) ops.push({ _tag: "MarkThread", channelId: doc.channelId, ts: doc.threadTs })
  return ops
}

/** The rows one batch writes: per message, only its newest version (a deletion is a row with `deleted`). */
export interface Coalesced {
  readonly writes: ReadonlyArray<{ readonly doc: SearchDocument; readonly deleted: boolean }>
  readonly threads: ReadonlyArray<{ readonly channelId: string; readonly ts: string }>
}

export const coalesce = (ops: ReadonlyArray<IndexOp>): Coalesced => {
  const writes = new Map<string, { doc: SearchDocument; deleted: boolean }>()
  const threads = new Map<string, { channelId: string; ts: string }>()
  for (const op of ops) {
    if (op._tag === "MarkThread") {
      threads.set(`${op.channelId}\u0000${op.ts}`, { channelId: op.channelId, ts: op.ts })
      continue
    }
    const write = op._tag === "Upsert"
      ? { doc: op.doc, deleted: false }
      : { doc: { teamId: op.teamId, channelId: op.channelId, ts: op.ts, userId: null, text: "", threadTs: null, version: op.version }, deleted: true }
    const key = `${write.doc.channelId}\u0000${write.doc.ts}`
    const seen = writes.get(key)
    if (seen === undefined || seen.doc.version < write.doc.version) writes.set(key, write)
  }
  return { writes: [...writes.values()], threads: [...threads.values()] }
}

/** The search `id` of a message in document stores that want one key. */
export const documentId = (channelId: string, ts: string): string => `${channelId}-${ts}`
