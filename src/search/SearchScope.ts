/**
 * Where a search may look, decided in PostgreSQL at query time (invariant 5), and the
 * names a query or an answer refers to:
 *
 * - `readable`: the conversations the caller may read *now*: every public channel of
 *   their workspace (unless a guest) and every conversation of that workspace they are
 *   a member of — the rule of src/domain/ConversationAccess.ts, in one indexed query
 *   (`channels_team_public`, `channel_members_user`). Leaving a private channel removes
 *   it from the next search; another workspace is never in it.
 * - `places` / `users`: what `in:` and `from:` name (channel names, DMs with someone,
 *   handles), as ids; the caller intersects places with `readable`.
 * - `conversations` / `handles`: what a page of matches shows.
 */
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { Context, Effect, Layer } from "effect"
import { dmKey } from "../actors/ChannelProtocol.ts"
import type { Viewer } from "../domain/ConversationAccess.ts"
import { seesPublicWithoutMembership } from "../domain/ConversationAccess.ts"
import type { Place, UserRef } from "./SearchQuery.ts"

/** A conversation as a match shows it. */
export interface MatchChannel {
  readonly id: string
  readonly name: string | null
  readonly is_private: boolean
  readonly is_im: boolean
  readonly is_mpim: boolean
  /** For a DM: the member who is not the viewer. */
  readonly im_user: string | null
}

export interface SearchScopeShape {
  readonly readable: (viewer: Viewer & { readonly userId: string }) => Effect.Effect<ReadonlyArray<string>, SqlError>
  readonly users: (teamId: string, viewerId: string, refs: ReadonlyArray<UserRef>) => Effect.Effect<ReadonlyArray<string>, SqlError>
  readonly places: (teamId: string, viewerId: string, places: ReadonlyArray<Place>) => Effect.Effect<ReadonlyArray<string>, SqlError>
  readonly conversations: (viewerId: string, ids: ReadonlyArray<string>) => Effect.Effect<ReadonlyMap<string, MatchChannel>, SqlError>
  readonly handles: (ids: ReadonlyArray<string>) => Effect.Effect<ReadonlyMap<string, string>, SqlError>
}

export class SearchScope extends Context.Tag("chorus/search/SearchScope")<SearchScope, SearchScopeShape>() {}

export const make: Effect.Effect<SearchScopeShape, never, SqlClient.SqlClient> = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient

  const readable: SearchScopeShape["readable"] = (viewer) => {
    const members = sql`
      SELECT c.id FROM channel_members m JOIN channels c ON c.id = m.channel_id
      WHERE m.user_id = ${viewer.userId} AND c.team_id = ${viewer.teamId}`
    const statement = seesPublicWithoutMembership(viewer)
      ? sql<{ id: string }>`
          SELECT c.id FROM channels c
          WHERE c.team_id = ${viewer.teamId} AND (NOT c.is_private AND NOT c.is_im AND NOT c.is_mpim)
          UNION ${members}`
      : sql<{ id: string }>`${members}`
    return Effect.map(statement, (rows) => rows.map((r) => r.id))
  }

  const users: SearchScopeShape["users"] = (teamId, viewerId, refs) =>
    Effect.gen(function*() {
      const ids = new Set<string>()
      const handles: Array<string> = []
      for (const ref of refs) {
        if (ref._tag === "Me") ids.add(viewerId)
        else if (ref._tag === "UserId") ids.add(ref.id)
        else handles.push(ref.handle)
      }
      if (handles.length > 0) {
        const rows = yield* sql<{ id: string }>`
          SELECT a.id FROM accounts a JOIN workspace_members w ON w.user_id = a.id
          WHERE w.team_id = ${teamId} AND lower(a.handle) = ANY(${handles}::text[])`
        for (const row of rows) ids.add(row.id)
      }
      return [...ids]
    })

  const places: SearchScopeShape["places"] = (teamId, viewerId, wanted) =>
    Effect.gen(function*() {
      const ids = new Set<string>()
      const names: Array<string> = []
      const people: Array<UserRef> = []
      for (const place of wanted) {
        if (place._tag === "ChannelId") ids.add(place.id)
        else if (place._tag === "ChannelName") names.push(place.name)
        else people.push(place.user)
      }
      if (names.length > 0) {
        const rows = yield* sql<{ id: string }>`
          SELECT id FROM channels WHERE team_id = ${teamId} AND name = ANY(${names}::text[])`
        for (const row of rows) ids.add(row.id)
      }
      if (people.length > 0) {
        const others = yield* users(teamId, viewerId, people)
        if (others.length > 0) {
          const keys = others.map((other) => dmKey([viewerId, other]))
          const rows = yield* sql<{ id: string }>`
            SELECT id FROM channels WHERE team_id = ${teamId} AND is_im AND dm_key = ANY(${keys}::text[])`
          for (const row of rows) ids.add(row.id)
        }
      }
      return [...ids]
    })

  const conversations: SearchScopeShape["conversations"] = (viewerId, ids) =>
    ids.length === 0 ? Effect.succeed(new Map()) : Effect.map(
      sql<MatchChannel>`
        SELECT c.id, c.name, c.is_private, c.is_im, c.is_mpim,
          CASE WHEN c.is_im THEN COALESCE(
            (SELECT o.user_id FROM channel_members o WHERE o.channel_id = c.id AND o.user_id <> ${viewerId} ORDER BY o.user_id LIMIT 1),
            ${viewerId}) END AS im_user
        FROM channels c WHERE c.id = ANY(${[...ids]}::text[])`,
      (rows) => new Map(rows.map((r) => [r.id, r]))
    )

  const handles: SearchScopeShape["handles"] = (ids) =>
    ids.length === 0 ? Effect.succeed(new Map()) : Effect.map(
      sql<{ id: string; handle: string }>`SELECT id, handle FROM accounts WHERE id = ANY(${[...ids]}::text[])`,
      (rows) => new Map(rows.map((r) => [r.id, r.handle]))
    )

  return { readable, users, places, conversations, handles } satisfies SearchScopeShape
})

export const layer: Layer.Layer<SearchScope, never, SqlClient.SqlClient> = Layer.effect(SearchScope, make)
