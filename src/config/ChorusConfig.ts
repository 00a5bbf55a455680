/**
 * Every knob a Chorus node reads, in one place. Each field says what it does, its
 * default and how it interacts with the others; `ChorusConfig.fromEnv` reads them
 * from the environment (variable names in the README's configuration table).
 */
import { Config, Context, Duration, Effect, Layer, Redacted } from "effect"
import * as Os from "node:os"
import { RingDefaults } from "../runtime/Ring.ts"

export interface ChorusConfigShape {
  /** This node's id; unique in the cluster. Default `<hostname>-<port>`. */
  readonly nodeId: string
  /** Interface the HTTP API and WebSocket gateway listen on. Default 127.0.0.1. */
  readonly host: string
  /** Port of the HTTP API and the WebSocket gateway (one port). Default 3000. */
  readonly port: number
  /** URL other nodes and `rtm.connect` hand out for this node. Default `http://host:port`. */
  readonly advertiseUrl: string
  /** PostgreSQL connection URL. */
  readonly databaseUrl: Redacted.Redacted
  /** Maximum PostgreSQL connections per node. Default 16. */
  readonly databasePoolSize: number
  /** NATS server URL(s), comma-separated. */
  readonly natsUrl: string
  /**
   * Namespace of every NATS stream, KV bucket and subject of this cluster, so several
   * clusters (and parallel test runs) share one NATS without seeing each other.
   */
  readonly cluster: string
  /**
   * Number of shards. Changing it re-homes every actor, so it is fixed for a cluster's
   * life. Default 128 (see docs/decisions/0003-shards-and-mailboxes.md).
   */
  readonly shards: number
  /** Virtual nodes per unit of weight: the resolution of weights (see Ring.ts). Default 4. */
  readonly vnodesPerWeight: number
  /** Bounded-load factor ε: no node holds more than max(⌈fair⌉, ⌊(1+ε)·fair⌋) shards. Default 0.1. */
  readonly balanceEpsilon: number
  /** This node's weight on the ring (its share of shards is proportional). Default 1. */
  readonly weight: number
  /** Interval between membership heartbeats. Default 250 ms. */
  readonly heartbeatInterval: Duration.Duration
  /**
   * A node whose last heartbeat is older than this is dead; its shards move. A node
   * stops serving its shards once its own last heartbeat is older than this minus
   * `leaseSafetyMargin`, so it stops before anyone may take over. Default 1 s.
   */
  readonly failureTimeout: Duration.Duration
  /** Allowance for clock skew between nodes when judging leases. Default 200 ms. */
  readonly leaseSafetyMargin: Duration.Duration
  /** An actor with no message for this long is passivated. Default 60 s. */
  readonly passivateAfter: Duration.Duration
  /** Capacity of each actor's mailbox queue. Default 1,024. */
  readonly mailboxCapacity: number
  /** Most messages an actor handles in one batch (group commit size). Default 256. */
  readonly maxBatch: number
  /** Unacknowledged durable commands per shard held by its owner. Default 512. */
  readonly maxAckPendingPerShard: number
  /** Restarts of one actor allowed within `restartWindow` before dead-lettering. Default 5. */
  readonly maxRestarts: number
  readonly restartWindow: Duration.Duration
  /** How long a sender waits for a reply before retrying with the same command id. */
  readonly requestTimeout: Duration.Duration
  /** How long a sender keeps retrying a request in all. Default 30 s. */
  readonly requestDeadline: Duration.Duration
  /** Longest a draining node waits for its shards to be handed over. Default 15 s. */
  readonly drainTimeout: Duration.Duration
  /** Token of the `cluster.*` operator methods; unset disables them. */
  readonly operatorToken: Redacted.Redacted | undefined
  /** Largest HTTP request body accepted, bytes. Default 1 MiB. */
  readonly maxBodyBytes: number
  // --- search --- (src/search; docs/decisions/0012-search.md)
  /** Typesense server URL; when set, search uses Typesense instead of PostgreSQL full-text (the default). */
  readonly searchTypesenseUrl: string | undefined
  /** Typesense API key (with `searchTypesenseUrl`). */
  readonly searchTypesenseApiKey: Redacted.Redacted | undefined
  /** Typesense collection of this cluster's messages. Default `<cluster>_messages`. */
  readonly searchTypesenseCollection: string | undefined
  /** Whether this node runs a search indexer (a competing consumer of the cluster's one durable consumer). Default true. */
  readonly searchIndexer: boolean
  /** Most channel events per index write. Default 500. */
  readonly searchIndexerBatch: number
  /** How long the indexer lets events gather before a write (unless a full batch is waiting). Default 100 ms. */
  readonly searchIndexerDelay: Duration.Duration
  // --- end search ---
  // --- files --- (src/files; docs/decisions/0011-files.md)
  /** Where file bytes live: `local` (a directory on disk, the default) or `s3`. */
  readonly filesDriver: "local" | "s3"
  /** The `local` driver's directory (nodes must share it to serve each other's files). Default `.chorus/files`. */
  readonly filesDir: string
  /** Largest file accepted, bytes; enforced while the bytes stream in. Default 1 GiB. */
  readonly filesMaxBytes: number
  /** Base URL of `upload_url` and `url_private` (a load balancer's); default `advertiseUrl`. */
  readonly filesPublicUrl: string | undefined
  /** An upload not completed within this is deleted by the sweep. Default 1 day. */
  readonly filesPendingMaxAge: Duration.Duration
  /** How often every node sweeps abandoned uploads. Default 10 minutes. */
  readonly filesSweepInterval: Duration.Duration
  /** Lifetime of the presigned GET URL `url_private` redirects to (s3). Default 60 s. */
  readonly filesDownloadUrlTtl: Duration.Duration
  /** Lifetime of a presigned PUT URL from `direct=true` (s3). Default 1 hour. */
  readonly filesDirectUploadTtl: Duration.Duration
  /** Bucket of the `s3` driver (required with it). */
  readonly filesS3Bucket: string | undefined
  /** Region of the bucket. Default us-east-1. */
  readonly filesS3Region: string
  /** An S3-compatible endpoint (MinIO, …); AWS when unset. */
  readonly filesS3Endpoint: string | undefined
  /** Path-style bucket URLs (most S3-compatible servers need them). Default false. */
  readonly filesS3ForcePathStyle: boolean
  /** Static credentials; the AWS SDK's default chain when unset. */
  readonly filesS3AccessKeyId: string | undefined
  readonly filesS3SecretAccessKey: Redacted.Redacted | undefined
  /** Bytes per multipart-upload part, buffered in memory per upload (S3 wants ≥ 5 MiB). Default 8 MiB. */
  readonly filesS3PartSize: number
  // --- end files ---
  // --- presence and limits --- (src/actors/PresenceActor.ts, src/transport/RateLimiter.ts; docs/decisions/0014-presence-and-limits.md)
  /**
   * Presence TTL: a user no gateway has reported within this long is offline (a
   * killed node's users go offline by it), and a socket silent (no frame, no pong) for
   * longer is closed. Clients ping at least every half of it. Default 60 s.
   */
  readonly presenceTtl: Duration.Duration
  /**
   * How often each gateway reports the full set of its connected users to the
   * presence actors (one message per shard). Changes (a user's first socket opened,
   * last one closed) go at once, batched for `presenceFlushDelay`. Must be under half
   * the TTL. Default 5 s.
   */
  readonly presenceReportInterval: Duration.Duration
  /** How long a gateway gathers presence changes before sending them (one message per shard). Default 50 ms. */
  readonly presenceFlushDelay: Duration.Duration
  /** A connected user with no activity (message, typing, subscription) for this long is `away` (auto_away; Slack's 10 min). Default 10 min. */
  readonly presenceAwayAfter: Duration.Duration
  /** Least time between two `user_typing` of one user in one channel. Default 3 s. */
  readonly typingInterval: Duration.Duration
  /** `user_typing` is not fanned out in channels with more members than this. Default 1,000. */
  readonly typingMaxMembers: number
  /** A socket written to within this long holds its next event frames up to this long, to write them together (0: never). Default 25 ms. */
  readonly gatewayCoalesce: Duration.Duration
  /** Held-frame writes per second a gateway aims at; more busy sockets widen the window (up to 4 × `gatewayCoalesce`). Default 10,000. */
  readonly gatewayFlushWritesPerSecond: number
  /** Rate limits on (`CHORUS_RATE_LIMITS=on`, the default) or off (benchmarks, load tests). */
  readonly rateLimits: boolean
  /**
   * Sustained calls per minute of Slack's tiers 1–4, per token and method; a bucket
   * holds a minute's worth, and at least `rateLimitMinBurst`. Default 1, 20, 50, 100.
   */
  readonly rateLimitTiers: readonly [number, number, number, number]
  /** Smallest burst of any tier's bucket (Slack tolerates "some burst" even in tier 1). Default 5. */
  readonly rateLimitMinBurst: number
  /** Per-method tier overrides, `method=tier` comma-separated (tier 1–4); the defaults are in RateLimiter.ts. */
  readonly rateLimitMethods: Readonly<Record<string, number>>
  /** Messages per second one token may post to one channel, sustained (Slack: about 1). Default 1. */
  readonly postRate: number
  /** Messages one token may post to one channel in a burst. Default 20. */
  readonly postBurst: number
  /** Frames per second one WebSocket may send, sustained. Default 20. */
  readonly socketFrameRate: number
  /** Frames one WebSocket may send in a burst. Default 100. */
  readonly socketFrameBurst: number
  /** Refused frames in a row after which a flooding socket is closed (4003). Default 50. */
  readonly socketFloodClose: number
  // --- end presence and limits ---
  // --- apps --- (src/apps; docs/decisions/0013-apps.md)
  /** How long Chorus waits for an app's answer to an event, a command or the URL challenge (Slack: 3 s). Default 3 s. */
  readonly appsRequestTimeout: Duration.Duration
  /** Where requests to apps may go: `public` addresses only (the default), or `any` (local development, apps on a private network). */
  readonly appsEgress: "public" | "any"
  /**
   * Waits before each retry of a failed event delivery; the list's length is the number
   * of retries (Slack makes 3). A channel's later events wait for its head, for that app
   * only. Default 1 s, 5 s, 30 s.
   */
  readonly appsRetryDelaysMs: ReadonlyArray<number>
  /** An app failing every delivery for this long is paused (until its subscription is set again). Default 60 s. */
  readonly appsPauseAfter: Duration.Duration
  /** Event deliveries queued for one app beyond which it is paused. Default 10,000. */
  readonly appsMaxPending: number
  /** Requests in flight to one app (different channels; one per channel). Default 32. */
  readonly appsMaxInFlight: number
  // --- end apps ---
}

export class ChorusConfig extends Context.Tag("chorus/ChorusConfig")<ChorusConfig, ChorusConfigShape>() {}

export const defaults = {
  host: "127.0.0.1",
  port: 3000,
  databaseUrl: "postgres://postgres@127.0.0.1:5432/chorus",
  databasePoolSize: 16,
  natsUrl: "nats://127.0.0.1:4222",
  cluster: "chorus",
  shards: 128,
  vnodesPerWeight: RingDefaults.vnodesPerWeight,
  balanceEpsilon: RingDefaults.epsilon,
  weight: 1,
  heartbeatIntervalMs: 250,
  failureTimeoutMs: 1_000,
  leaseSafetyMarginMs: 200,
  passivateAfterMs: 60_000,
  mailboxCapacity: 1_024,
  maxBatch: 256,
  maxAckPendingPerShard: 512,
  maxRestarts: 5,
  restartWindowMs: 10_000,
  requestTimeoutMs: 2_000,
  requestDeadlineMs: 30_000,
  drainTimeoutMs: 15_000,
  maxBodyBytes: 1_048_576,
  // --- search ---
  searchIndexerBatch: 500,
  searchIndexerDelayMs: 100,
  // --- end search ---
  // --- files ---
  filesDriver: "local",
  filesDir: ".chorus/files",
  filesMaxBytes: 1_073_741_824,
  filesPendingMaxAgeMs: 86_400_000,
  filesSweepIntervalMs: 600_000,
  filesDownloadUrlTtlMs: 60_000,
  filesDirectUploadTtlMs: 3_600_000,
  filesS3Region: "us-east-1",
  filesS3PartSize: 8_388_608,
  // --- end files ---
  // --- apps ---
  appsRequestTimeoutMs: 3_000,
  appsEgress: "public" as "public" | "any",
  appsRetryDelaysMs: "1000,5000,30000",
  appsPauseAfterMs: 60_000,
  appsMaxPending: 10_000,
  appsMaxInFlight: 32,
  // --- end apps ---
  // --- presence and limits ---
  presenceTtlMs: 60_000,
  presenceReportIntervalMs: 5_000,
  presenceFlushDelayMs: 50,
  presenceAwayAfterMs: 600_000,
  typingIntervalMs: 3_000,
  typingMaxMembers: 1_000,
  gatewayCoalesceMs: 25,
  gatewayFlushWritesPerSecond: 10_000,
  rateLimitTiers: "1,20,50,100",
  rateLimitMinBurst: 5,
  postRate: 1,
  postBurst: 20,
  socketFrameRate: 20,
  socketFrameBurst: 100,
  socketFloodClose: 50
  // --- end presence and limits ---
} as const

const ms = (name: string, fallback: number, description: string) =>
  Config.integer(name).pipe(
    Config.withDefault(fallback),
    Config.validate({ message: `${name} must be a positive number of milliseconds`, validation: (n) => n > 0 }),
    Config.map(Duration.millis),
    Config.withDescription(description)
  )

const msOrZero = (name: string, fallback: number, description: string) =>
  Config.integer(name).pipe(
    Config.withDefault(fallback),
    Config.validate({ message: `${name} must be 0 or a positive number of milliseconds`, validation: (n) => n >= 0 }),
    Config.map(Duration.millis),
    Config.withDescription(description)
  )

const positiveInt = (name: string, fallback: number, description: string) =>
  Config.integer(name).pipe(
    Config.withDefault(fallback),
    Config.validate({ message: `${name} must be a positive integer`, validation: (n) => n > 0 }),
    Config.withDescription(description)
  )

const clusterName = Config.string("CHORUS_CLUSTER").pipe(
  Config.withDefault(defaults.cluster),
  Config.validate({
    message: "CHORUS_CLUSTER must match [a-z][a-z0-9_]{0,30} (it prefixes NATS names)",
    validation: (s) => /^[a-z][a-z0-9_]{0,30}$/.test(s)
  }),
  Config.withDescription("Namespace of this cluster's NATS streams, buckets and subjects")
)

export const config: Config.Config<ChorusConfigShape> = Config.all({
  host: Config.string("HOST").pipe(Config.withDefault(defaults.host), Config.withDescription("Listen interface")),
  port: Config.port("PORT").pipe(Config.withDefault(defaults.port), Config.withDescription("HTTP + WebSocket port")),
  nodeId: Config.string("NODE_ID").pipe(Config.option),
  advertiseUrl: Config.string("CHORUS_ADVERTISE_URL").pipe(Config.option),
  databaseUrl: Config.redacted("DATABASE_URL").pipe(
    Config.withDefault(Redacted.make(defaults.databaseUrl)),
    Config.withDescription("PostgreSQL URL")
  ),
  databasePoolSize: positiveInt("CHORUS_DB_POOL", defaults.databasePoolSize, "PostgreSQL connections per node"),
  natsUrl: Config.string("NATS_URL").pipe(Config.withDefault(defaults.natsUrl), Config.withDescription("NATS URL(s)")),
  cluster: clusterName,
  shards: positiveInt("CHORUS_SHARDS", defaults.shards, "Number of shards (fixed for a cluster's life)"),
  vnodesPerWeight: positiveInt("CHORUS_VNODES", defaults.vnodesPerWeight, "Ring virtual nodes per unit of weight"),
  balanceEpsilon: Config.number("CHORUS_BALANCE_EPSILON").pipe(
    Config.withDefault(defaults.balanceEpsilon),
    Config.validate({ message: "CHORUS_BALANCE_EPSILON must be >= 0", validation: (n) => n >= 0 }),
    Config.withDescription("Bounded-load factor: max shards per node = (1+ε)·mean")
  ),
  weight: Config.number("CHORUS_NODE_WEIGHT").pipe(
    Config.withDefault(defaults.weight),
    Config.validate({ message: "CHORUS_NODE_WEIGHT must be > 0", validation: (n) => n > 0 }),
    Config.withDescription("This node's share of shards, relative to the others")
  ),
  heartbeatInterval: ms("CHORUS_HEARTBEAT_MS", defaults.heartbeatIntervalMs, "Membership heartbeat interval"),
  failureTimeout: ms("CHORUS_FAILURE_TIMEOUT_MS", defaults.failureTimeoutMs, "Heartbeat age after which a node is dead"),
  leaseSafetyMargin: ms("CHORUS_LEASE_MARGIN_MS", defaults.leaseSafetyMarginMs, "Clock-skew allowance for leases"),
  passivateAfter: ms("CHORUS_PASSIVATE_AFTER_MS", defaults.passivateAfterMs, "Idle time before an actor is passivated"),
  mailboxCapacity: positiveInt("CHORUS_MAILBOX_CAPACITY", defaults.mailboxCapacity, "Per-actor queue capacity"),
  maxBatch: positiveInt("CHORUS_MAX_BATCH", defaults.maxBatch, "Most messages per actor batch"),
  maxAckPendingPerShard: positiveInt("CHORUS_MAX_ACK_PENDING", defaults.maxAckPendingPerShard, "Unacked durable commands per shard"),
  maxRestarts: positiveInt("CHORUS_MAX_RESTARTS", defaults.maxRestarts, "Actor restarts per window before dead-lettering"),
  restartWindow: ms("CHORUS_RESTART_WINDOW_MS", defaults.restartWindowMs, "Window of CHORUS_MAX_RESTARTS"),
  requestTimeout: ms("CHORUS_REQUEST_TIMEOUT_MS", defaults.requestTimeoutMs, "Reply wait before a retry"),
  requestDeadline: ms("CHORUS_REQUEST_DEADLINE_MS", defaults.requestDeadlineMs, "Total time a request is retried"),
  drainTimeout: ms("CHORUS_DRAIN_TIMEOUT_MS", defaults.drainTimeoutMs, "Longest wait for shard handover on drain"),
  operatorToken: Config.redacted("CHORUS_OPERATOR_TOKEN").pipe(Config.option),
  maxBodyBytes: positiveInt("CHORUS_MAX_BODY_BYTES", defaults.maxBodyBytes, "Largest HTTP request body"),
  // --- search ---
  searchTypesenseUrl: Config.string("TYPESENSE_URL").pipe(
    Config.option,
    Config.map((o) => (o._tag === "Some" && o.value.trim().length > 0 ? o.value.trim() : undefined)),
    Config.withDescription("Typesense URL; unset: PostgreSQL full-text search")
  ),
  searchTypesenseApiKey: Config.redacted("TYPESENSE_API_KEY").pipe(
    Config.option,
    Config.map((o) => (o._tag === "Some" ? o.value : undefined)),
    Config.withDescription("Typesense API key")
  ),
  searchTypesenseCollection: Config.string("CHORUS_TYPESENSE_COLLECTION").pipe(
    Config.option,
    Config.map((o) => (o._tag === "Some" ? o.value : undefined)),
    Config.withDescription("Typesense collection (default <cluster>_messages)")
  ),
  searchIndexer: Config.boolean("CHORUS_SEARCH_INDEXER").pipe(Config.withDefault(true), Config.withDescription("Run a search indexer on this node")),
  searchIndexerBatch: positiveInt("CHORUS_SEARCH_BATCH", defaults.searchIndexerBatch, "Most channel events per index write"),
  searchIndexerDelay: msOrZero("CHORUS_SEARCH_DELAY_MS", defaults.searchIndexerDelayMs, "How long the indexer lets events gather before an index write"),
  // --- end search ---
  // --- files ---
  filesDriver: Config.literal("local", "s3")("CHORUS_FILES_DRIVER").pipe(
    Config.withDefault(defaults.filesDriver),
    Config.withDescription("File storage driver: local or s3")
  ),
  filesDir: Config.string("CHORUS_FILES_DIR").pipe(Config.withDefault(defaults.filesDir), Config.withDescription("Directory of the local file driver")),
  filesMaxBytes: positiveInt("CHORUS_FILES_MAX_BYTES", defaults.filesMaxBytes, "Largest file accepted, bytes"),
  filesPublicUrl: Config.string("CHORUS_FILES_PUBLIC_URL").pipe(Config.option, Config.withDescription("Base URL of upload_url and url_private")),
  filesPendingMaxAge: ms("CHORUS_FILES_PENDING_MAX_AGE_MS", defaults.filesPendingMaxAgeMs, "Age at which an uncompleted upload is deleted"),
  filesSweepInterval: ms("CHORUS_FILES_SWEEP_INTERVAL_MS", defaults.filesSweepIntervalMs, "Interval of the abandoned-upload sweep"),
  filesDownloadUrlTtl: ms("CHORUS_FILES_DOWNLOAD_URL_TTL_MS", defaults.filesDownloadUrlTtlMs, "Lifetime of presigned download URLs"),
  filesDirectUploadTtl: ms("CHORUS_FILES_DIRECT_UPLOAD_TTL_MS", defaults.filesDirectUploadTtlMs, "Lifetime of presigned upload URLs"),
  filesS3Bucket: Config.string("CHORUS_S3_BUCKET").pipe(Config.option, Config.withDescription("Bucket of the s3 file driver")),
  filesS3Region: Config.string("CHORUS_S3_REGION").pipe(Config.withDefault(defaults.filesS3Region), Config.withDescription("Region of the bucket")),
  filesS3Endpoint: Config.string("CHORUS_S3_ENDPOINT").pipe(Config.option, Config.withDescription("S3-compatible endpoint URL")),
  filesS3ForcePathStyle: Config.boolean("CHORUS_S3_FORCE_PATH_STYLE").pipe(Config.withDefault(false), Config.withDescription("Path-style bucket URLs")),
  filesS3AccessKeyId: Config.string("CHORUS_S3_ACCESS_KEY_ID").pipe(Config.option, Config.withDescription("S3 access key id")),
  filesS3SecretAccessKey: Config.redacted("CHORUS_S3_SECRET_ACCESS_KEY").pipe(Config.option, Config.withDescription("S3 secret access key")),
  filesS3PartSize: positiveInt("CHORUS_S3_PART_SIZE", defaults.filesS3PartSize, "Bytes per multipart-upload part"),
  // --- end files ---
  // --- apps ---
  appsRequestTimeout: ms("CHORUS_APPS_REQUEST_TIMEOUT_MS", defaults.appsRequestTimeoutMs, "Wait for an app's answer to an event, command or URL challenge"),
  appsEgress: Config.literal("public", "any")("CHORUS_APPS_EGRESS").pipe(
    Config.withDefault(defaults.appsEgress),
    Config.withDescription("Where requests to apps may go: public addresses only, or any")
  ),
  appsRetryDelaysMs: Config.string("CHORUS_APPS_RETRY_DELAYS_MS").pipe(
    Config.withDefault(defaults.appsRetryDelaysMs),
    Config.map((s) => s.split(",").map((t) => t.trim()).filter((t) => t.length > 0).map(Number)),
    Config.validate({
      message: "CHORUS_APPS_RETRY_DELAYS_MS must be milliseconds, comma-separated (empty: no retries)",
      validation: (delays) => delays.every((n) => Number.isInteger(n) && n >= 0)
    }),
    Config.withDescription("Waits before each retry of a failed event delivery")
  ),
  appsPauseAfter: ms("CHORUS_APPS_PAUSE_AFTER_MS", defaults.appsPauseAfterMs, "Failing time after which an app's event subscription is paused"),
  appsMaxPending: positiveInt("CHORUS_APPS_MAX_PENDING", defaults.appsMaxPending, "Event deliveries queued per app before it is paused"),
  appsMaxInFlight: positiveInt("CHORUS_APPS_MAX_IN_FLIGHT", defaults.appsMaxInFlight, "Requests in flight per app"),
  // --- end apps ---
  // --- presence and limits ---
  presenceTtl: ms("CHORUS_PRESENCE_TTL_MS", defaults.presenceTtlMs, "Presence TTL, and the idle time after which a socket is closed"),
  presenceReportInterval: ms("CHORUS_PRESENCE_REPORT_MS", defaults.presenceReportIntervalMs, "Interval of full edge presence reports"),
  presenceFlushDelay: ms("CHORUS_PRESENCE_FLUSH_MS", defaults.presenceFlushDelayMs, "Batching delay of edge presence changes"),
  presenceAwayAfter: ms("CHORUS_AWAY_AFTER_MS", defaults.presenceAwayAfterMs, "Idle time after which a connected user is away"),
  typingInterval: ms("CHORUS_TYPING_INTERVAL_MS", defaults.typingIntervalMs, "Least time between two user_typing of a user in a channel"),
  typingMaxMembers: positiveInt("CHORUS_TYPING_MAX_MEMBERS", defaults.typingMaxMembers, "Channels above this many members get no user_typing"),
  gatewayCoalesce: msOrZero("CHORUS_GATEWAY_COALESCE_MS", defaults.gatewayCoalesceMs, "Longest a busy socket's event frames wait to be written together"),
  gatewayFlushWritesPerSecond: positiveInt(
    "CHORUS_GATEWAY_FLUSH_WRITES_PER_S",
    defaults.gatewayFlushWritesPerSecond,
    "Held-frame writes per second a gateway aims at; more busy sockets widen the coalescing window, up to 4 times CHORUS_GATEWAY_COALESCE_MS"
  ),
  rateLimits: Config.literal("on", "off")("CHORUS_RATE_LIMITS").pipe(
    Config.withDefault("on" as const),
    Config.map((v) => v === "on"),
    Config.withDescription("Rate limits: on or off")
  ),
  rateLimitTiers: Config.string("CHORUS_RATE_LIMIT_TIERS").pipe(
    Config.withDefault(defaults.rateLimitTiers),
    Config.map((s) => s.split(",").map((t) => Number(t.trim()))),
    Config.validate({
      message: "CHORUS_RATE_LIMIT_TIERS must be four positive numbers (calls per minute of tiers 1-4), comma-separated",
      validation: (t) => t.length === 4 && t.every((n) => Number.isFinite(n) && n > 0)
    }),
    Config.map((t) => [t[0]!, t[1]!, t[2]!, t[3]!] as const),
    Config.withDescription("Calls per minute of Slack's tiers 1-4")
  ),
  rateLimitMinBurst: positiveInt("CHORUS_RATE_LIMIT_MIN_BURST", defaults.rateLimitMinBurst, "Smallest burst of a tier's bucket"),
  rateLimitMethods: Config.string("CHORUS_RATE_LIMIT_METHODS").pipe(
    Config.withDefault(""),
    Config.map((s) => s.split(",").map((e) => e.trim()).filter((e) => e.length > 0).map((e) => e.split("=").map((x) => x.trim()))),
    Config.validate({
      message: "CHORUS_RATE_LIMIT_METHODS must be method=tier pairs (tier 1-4), comma-separated",
      validation: (pairs) => pairs.every((p) => p.length === 2 && /^[a-zA-Z.]+$/.test(p[0] ?? "") && /^[1-4]$/.test(p[1] ?? ""))
    }),
    Config.map((pairs) => Object.fromEntries(pairs.map(([m, t]) => [m ?? "", Number(t)]))),
    Config.withDescription("Per-method tier overrides (method=tier,...)")
  ),
  postRate: Config.number("CHORUS_POST_RATE").pipe(
    Config.withDefault(defaults.postRate),
    Config.validate({ message: "CHORUS_POST_RATE must be > 0", validation: (n) => n > 0 }),
    Config.withDescription("Messages per second per token and channel, sustained")
  ),
  postBurst: positiveInt("CHORUS_POST_BURST", defaults.postBurst, "Messages per token and channel in a burst"),
  socketFrameRate: positiveInt("CHORUS_WS_FRAME_RATE", defaults.socketFrameRate, "Frames per second per socket, sustained"),
  socketFrameBurst: positiveInt("CHORUS_WS_FRAME_BURST", defaults.socketFrameBurst, "Frames per socket in a burst"),
  socketFloodClose: positiveInt("CHORUS_WS_FLOOD_CLOSE", defaults.socketFloodClose, "Refused frames in a row before a flooding socket is closed")
  // --- end presence and limits ---
}).pipe(
  Config.map((c) => {
    const nodeId = c.nodeId._tag === "Some" ? c.nodeId.value : `${Os.hostname()}-${c.port}`
    const advertiseUrl = c.advertiseUrl._tag === "Some" ? c.advertiseUrl.value : `http://${c.host}:${c.port}`
    return {
      ...c,
      nodeId,
      advertiseUrl,
      operatorToken: c.operatorToken._tag === "Some" ? c.operatorToken.value : undefined,
      // --- files ---
      filesPublicUrl: c.filesPublicUrl._tag === "Some" ? c.filesPublicUrl.value : undefined,
      filesS3Bucket: c.filesS3Bucket._tag === "Some" ? c.filesS3Bucket.value : undefined,
      filesS3Endpoint: c.filesS3Endpoint._tag === "Some" ? c.filesS3Endpoint.value : undefined,
      filesS3AccessKeyId: c.filesS3AccessKeyId._tag === "Some" ? c.filesS3AccessKeyId.value : undefined,
      filesS3SecretAccessKey: c.filesS3SecretAccessKey._tag === "Some" ? c.filesS3SecretAccessKey.value : undefined
      // --- end files ---
    }
  }),
  Config.validate({
    message: "CHORUS_FAILURE_TIMEOUT_MS must exceed twice CHORUS_HEARTBEAT_MS plus CHORUS_LEASE_MARGIN_MS",
    validation: (c) =>
      Duration.toMillis(c.failureTimeout) >
        2 * Duration.toMillis(c.heartbeatInterval) + Duration.toMillis(c.leaseSafetyMargin)
  }),
  // --- files ---
  Config.validate({
    message: "CHORUS_S3_BUCKET is required when CHORUS_FILES_DRIVER=s3",
    validation: (c) => c.filesDriver !== "s3" || (c.filesS3Bucket !== undefined && c.filesS3Bucket.length > 0)
  }),
  // --- end files ---
  // --- presence and limits ---
  Config.validate({
    message: "CHORUS_PRESENCE_REPORT_MS must be under half of CHORUS_PRESENCE_TTL_MS",
    validation: (c) => 2 * Duration.toMillis(c.presenceReportInterval) < Duration.toMillis(c.presenceTtl)
  })
  // --- end presence and limits ---
)

/** Reads the environment. */
export const layerFromEnv: Layer.Layer<ChorusConfig, import("effect/ConfigError").ConfigError> = Layer.effect(
  ChorusConfig,
  config
)

/** For tests and embedding: defaults overridden by `overrides`. */
export const layer = (overrides: Partial<ChorusConfigShape>): Layer.Layer<ChorusConfig, import("effect/ConfigError").ConfigError> =>
  Layer.effect(
    ChorusConfig,
    Effect.map(config, (c) => ({ ...c, ...overrides }))
  )
