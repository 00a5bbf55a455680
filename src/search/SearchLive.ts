/**
 * Search as a node runs it: the backend chosen by configuration (Typesense when
 * `TYPESENSE_URL` is set, else PostgreSQL full-text), the query-time scope, and the
 * indexer. src/Node.ts provides `services` to the API methods and runs `indexer`.
 */
import type { SqlClient } from "@effect/sql"
import { Effect, Layer, Redacted } from "effect"
import { ChorusConfig } from "../config/ChorusConfig.ts"
import type { Nats } from "../transport/Nats.ts"
import * as Indexer from "./Indexer.ts"
import * as PgSearch from "./PgSearch.ts"
import type { Search, SearchError } from "./Search.ts"
import * as SearchScope from "./SearchScope.ts"
import * as TypesenseSearch from "./TypesenseSearch.ts"

/** The search backend of this configuration. */
export const backend: Layer.Layer<Search, SearchError, SqlClient.SqlClient | ChorusConfig> = Layer.unwrapEffect(
  Effect.map(ChorusConfig, (config) =>
    config.searchTypesenseUrl === undefined
      ? PgSearch.layer
      : TypesenseSearch.layer({
        url: config.searchTypesenseUrl,
        apiKey: config.searchTypesenseApiKey ?? Redacted.make(""),
        collection: config.searchTypesenseCollection ?? `${config.cluster}_messages`
      }))
)

/** What `search.messages` needs. */
export const services: Layer.Layer<Search | SearchScope.SearchScope, SearchError, SqlClient.SqlClient | ChorusConfig> = Layer.merge(
  backend,
  SearchScope.layer
)

/** This node's indexer (when `CHORUS_SEARCH_INDEXER` is not off). */
export const indexer: Layer.Layer<never, SearchError, SqlClient.SqlClient | ChorusConfig | Nats> = Indexer.layer.pipe(Layer.provide(backend))
