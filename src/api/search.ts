/**
 * `search.messages` with Slack's arguments and answer:
 *
 *   {query, sort: score|timestamp, sort_dir: desc|asc, count (20, at most 100),
 *    page (from 1, at most 100), highlight}
 *   → {query, messages: {total, pagination, paging, matches: [{type: "message", iid, ts,
 *      text, user, username, channel: {id, name, is_private, …}, permalink, team}]}}
 *
 * The query syntax is src/search/SearchQuery.ts. Invariant 5: the conversations to look
 * in are computed for the caller at query time (SearchScope.ts) and the index is asked
 * for those only, so a private channel the caller left, or another workspace, never
 * answers; `in:` can only narrow them. As on Slack, the method is for user tokens
 * (`search:read`): a bot token gets `not_allowed_token_type`.
 */
import { Clock, Effect } from "effect"
import { createHash } from "node:crypto"
import { Auth } from "../auth/Principal.ts"
import { ChorusConfig } from "../config/ChorusConfig.ts"
import { Search } from "../search/Search.ts"
import type { SearchHit, SortBy, SortDir } from "../search/Search.ts"
import * as SearchQuery from "../search/SearchQuery.ts"
import type { MatchChannel } from "../search/SearchScope.ts"
import { SearchScope } from "../search/SearchScope.ts"
import type { ApiHandler } from "../transport/ApiMethod.ts"
import { optionalNumber, optionalString } from "../transport/ApiMethod.ts"
import { fail, isTruthy, orDieOnSql } from "./auth.ts"
import { permalink } from "./conversationsRead.ts"

export const defaultCount = 20
export const maxCount = 100
export const maxPage = 100

const clamp = (value: number | undefined, fallback: number, max: number) =>
  value === undefined || !Number.isFinite(value) || value < 1 ? fallback : Math.min(Math.floor(value), max)

/** Slack's `pagination` and (older) `paging` of a page. */
export const pages = (total: number, page: number, count: number) => {
  const pageCount = Math.ceil(total / count)
  return {
    pagination: {
      total_count: total,
      page,
      per_page: count,
      page_count: pageCount,
      first: (page - 1) * count + 1,
      last: Math.min(total, page * count)
    },
    paging: { count, total, page, pages: pageCount }
  }
}

/** A stable id of a match (Slack's `iid` is an opaque UUID). */
export const iidOf = (channelId: string, ts: string): string => {
  const h = createHash("sha1").update(`${channelId}/${ts}`).digest("hex")
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`
}

/** The `channel` of a match, as Slack shows it. */
export const matchChannel = (c: MatchChannel) => {
  const isPrivate = c.is_private || c.is_im || c.is_mpim
  return {
    id: c.id,
    is_channel: !c.is_im && !c.is_mpim,
    is_group: false,
    is_im: c.is_im,
    is_mpim: c.is_mpim,
    is_private: isPrivate,
    is_shared: false,
    is_org_shared: false,
    is_ext_shared: false,
    is_pending_ext_shared: false,
    pending_shared: [],
    // Slack names a DM after the other member.
    name: c.is_im ? (c.im_user ?? "") : (c.name ?? ""),
    ...(c.is_im && c.im_user !== null ? { user: c.im_user } : {})
  }
}

export const make = Effect.gen(function*() {
  const auth = yield* Auth
  const search = yield* Search
  const scope = yield* SearchScope
  const config = yield* ChorusConfig

  const messages: ApiHandler = (request) =>
    Effect.gen(function*() {
      const principal = yield* auth.authenticateInWorkspace(request.token)
      if (principal.tokenKind === "bot") return yield* fail("not_allowed_token_type")
      yield* auth.requireScope(principal, "search:read")
      const query = optionalString(request, "query")
      if (query === undefined || query.trim().length === 0) return yield* fail("no_query")
      const count = clamp(yield* optionalNumber(request, "count"), defaultCount, maxCount)
      const page = clamp(yield* optionalNumber(request, "page"), 1, maxPage)
      const sort: SortBy = optionalString(request, "sort") === "timestamp" ? "timestamp" : "score"
      const sortDir: SortDir = optionalString(request, "sort_dir")?.toLowerCase() === "asc" ? "asc" : "desc"
      const highlight = isTruthy(request.args["highlight"])

      const now = new Date(yield* Clock.currentTimeMillis)
      const parsed = SearchQuery.parse(query, now)
      const answer = (total: number, matches: ReadonlyArray<unknown>) => ({
        query,
        messages: { total, ...pages(total, page, count), matches }
      })
      if (parsed.impossible) return answer(0, [])

      // Invariant 5: the conversations this caller may read now, narrowed by `in:`.
      const [readable, named, users] = yield* orDieOnSql(Effect.all([
        scope.readable(principal),
        parsed.in.length > 0 ? Effect.map(scope.places(principal.teamId, principal.userId, parsed.in), (ids) => new Set(ids)) : Effect.succeed(undefined),
        parsed.from.length > 0 ? scope.users(principal.teamId, principal.userId, parsed.from) : Effect.succeed(undefined)
      ], { concurrency: "unbounded" }))
      const channels = named === undefined ? readable : readable.filter((id) => named.has(id))
      if (channels.length === 0 || users?.length === 0) return answer(0, [])

      const result = yield* search.search({
        teamId: principal.teamId,
        channels,
        users,
        terms: parsed.terms,
        range: parsed.range,
        hasLink: parsed.hasLink,
        isThread: parsed.isThread,
        sort,
        sortDir,
        offset: (page - 1) * count,
        limit: count,
        highlight
      }).pipe(Effect.orDie)

      const hits = result.hits
      const [conversations, handles] = yield* orDieOnSql(Effect.all([
        scope.conversations(principal.userId, [...new Set(hits.map((h) => h.channelId))]),
        scope.handles([...new Set(hits.flatMap((h) => (h.userId === null ? [] : [h.userId])))])
      ], { concurrency: "unbounded" }))
      const matches = hits.flatMap((hit: SearchHit) => {
        const channel = conversations.get(hit.channelId)
        if (channel === undefined) return []
        return [{
          type: "message",
          iid: iidOf(hit.channelId, hit.ts),
          team: principal.teamId,
          channel: matchChannel(channel),
          ...(hit.userId === null ? {} : { user: hit.userId, username: handles.get(hit.userId) ?? "" }),
          ts: hit.ts,
          text: hit.text,
          permalink: permalink(config.advertiseUrl, hit.channelId, { ts: hit.ts, thread_ts: hit.threadTs }),
          ...(sort === "score" ? { score: hit.score } : {})
        }]
      })
      return answer(result.total, matches)
    })

  return new Map<string, ApiHandler>([["search.messages", messages]])
})
