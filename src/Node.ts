/**
 * A Chorus node as a Layer: the HTTP API (and WebSocket gateway) on one port, and an
 * actor host. Every node runs this same program; nodes share only NATS and PostgreSQL.
 *
 * Start order: configuration → NATS (streams, buckets) → PostgreSQL (migrations) →
 * membership → sharding (acquires this node's shards) → HTTP. Shutdown runs it
 * backwards: the HTTP server closes, the node drains (hands its shards over), leaves
 * the membership, and closes its connections.
 */
import { HttpServer } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import * as ChannelActor from "./actors/ChannelActor.ts"
import * as Counter from "./actors/Counter.ts"
import * as PresenceActor from "./actors/PresenceActor.ts"
import * as UserSessionActor from "./actors/UserSessionActor.ts"
import { allMethods } from "./api/index.ts"
import * as Apps from "./apps/Apps.ts"
import * as EventDelivery from "./apps/EventDelivery.ts"
import * as SlashCommands from "./apps/SlashCommands.ts"
import * as Webhooks from "./apps/Webhooks.ts"
import * as AuthLive from "./auth/AuthLive.ts"
import { ChorusConfig } from "./config/ChorusConfig.ts"
import * as Files from "./files/Files.ts"
import * as UploadRoutes from "./files/UploadRoutes.ts"
import * as Behaviour from "./runtime/Behaviour.ts"
import * as GroupCommit from "./runtime/GroupCommit.ts"
import * as Membership from "./runtime/Membership.ts"
import * as OperatorControl from "./runtime/OperatorControl.ts"
import * as RuntimeMetrics from "./runtime/RuntimeMetrics.ts"
import * as Sharding from "./runtime/Sharding.ts"
import * as ShardingClient from "./runtime/ShardingClient.ts"
import * as SearchLive from "./search/SearchLive.ts"
import * as ConversationsRead from "./store/ConversationsRead.ts"
import * as Database from "./store/Database.ts"
import { ApiMethods } from "./transport/ApiMethod.ts"
import * as EdgePresence from "./transport/EdgePresence.ts"
import * as Gateway from "./transport/Gateway.ts"
import * as GatewayTickets from "./transport/GatewayTickets.ts"
import * as HttpApi from "./transport/HttpApi.ts"
import * as Nats from "./transport/Nats.ts"
import * as RateLimiter from "./transport/RateLimiter.ts"

const Infrastructure = Layer.unwrapEffect(
  Effect.gen(function*() {
    const config = yield* ChorusConfig
    return Layer.mergeAll(
      Nats.layer({ servers: config.natsUrl, cluster: config.cluster, name: config.nodeId, provision: true }),
      Database.layer({ url: config.databaseUrl, maxConnections: config.databasePoolSize, applicationName: `chorus ${config.nodeId}` }),
      RuntimeMetrics.layer(config.nodeId)
    )
  })
)

/** The actor behaviours this node hosts. */
const behaviours = Effect.all([Behaviour.toRunnable(Counter.behaviour), Behaviour.toRunnable(ChannelActor.behaviour).pipe(Effect.provide(ChannelActor.services)), Behaviour.toRunnable(PresenceActor.behaviour).pipe(Effect.provide(PresenceActor.services)), Behaviour.toRunnable(UserSessionActor.behaviour).pipe(Effect.provide(UserSessionActor.services))])

const Runtime = Layer.unwrapEffect(
  Effect.gen(function*() {
    yield* Database.migrate
    return Sharding.layer(yield* behaviours)
  })
).pipe(Layer.provideMerge(Membership.layer), Layer.provideMerge(GroupCommit.layer()))

const Operator = Layer.scopedDiscard(Effect.forkScoped(OperatorControl.run))

const Client = Layer.unwrapEffect(Effect.map(RuntimeMetrics.RuntimeMetrics, (m) => ShardingClient.layer(m)))

/** Chat services over PostgreSQL that the API methods use. */
const Services = Layer.mergeAll(AuthLive.layerPg(), ConversationsRead.layer, SearchLive.services, Files.layer)

/** Apps (src/apps): their store, incoming webhooks and slash commands, over the chat services. */
const AppServices = Layer.mergeAll(Webhooks.layer, SlashCommands.layer).pipe(Layer.provideMerge(Apps.layer), Layer.provideMerge(Services))

const Methods = Layer.effect(ApiMethods, Effect.map(allMethods, (methods) => ({ methods }))).pipe(Layer.provide(AppServices))

/**
 * The Web API and the WebSocket gateway on one http.Server (the gateway owns `/ws`
 * upgrades). The gateway is built after the server listens and closed before it
 * closes: its finalizer says goodbye to every socket, which the server's close would
 * otherwise wait for. `rtm.connect` and the gateway share one ticket book.
 */
const Http = Layer.unwrapEffect(
  Effect.map(ChorusConfig, (config) => {
    const server = Gateway.createHttpServer()
    // The file routes (upload_url, url_private) in front of the Web API.
    // The apps' routes (incoming webhooks, response URLs) in front of those.
    const Api = HttpServer.serve(Webhooks.withAppRoutes(UploadRoutes.withFileRoutes(HttpApi.app))).pipe(Layer.provide(Methods), Layer.provide(AppServices))
    // Presence and limits: the gateway's idle timeout is the presence TTL; one rate limiter for the API and the gateway.
    const gateway = Gateway.layer(server, { idleTimeout: config.presenceTtl, typingInterval: config.typingInterval, typingMaxMembers: config.typingMaxMembers, coalesceWrites: config.gatewayCoalesce, flushWritesPerSecond: config.gatewayFlushWritesPerSecond }).pipe(
      // Slash commands typed in a socket's message frame run as they do through chat.postMessage.
      Layer.provide(AppServices)
    )
    return Layer.mergeAll(Api, gateway).pipe(
      Layer.provide(NodeHttpServer.layer(() => server, { port: config.port, host: config.host })),
      Layer.provide(GatewayTickets.layer()),
      Layer.provide(Layer.merge(RateLimiter.layer, EdgePresence.layer))
    )
  })
)

const Ready = Layer.effectDiscard(
  Effect.flatMap(ChorusConfig, (config) =>
    Effect.logInfo("node ready", { node: config.nodeId, url: config.advertiseUrl, cluster: config.cluster, shards: config.shards })
  )
)

/** Events API delivery (it runs on the node that holds shard 0). */
const AppsDelivery = EventDelivery.layer.pipe(Layer.provide(AppServices))

export const NodeLive = Layer.mergeAll(Http, Operator, Ready, SearchLive.indexer, AppsDelivery).pipe(
  // Nothing is accepted before the consumer that carries it to apps exists.
  Layer.provide(EventDelivery.consumerLayer),
  Layer.provideMerge(Client),
  Layer.provideMerge(Runtime),
  Layer.provideMerge(Infrastructure)
)
