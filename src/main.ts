/**
 * Entry point of a node process (bundled into `dist/main.mjs`, decision 0023),
 * configured by the environment (README, "Configuration"). Logs are JSON lines.
 *
 * Tracing is off (decision 0025): nothing exports spans, and the spans libraries make
 * anyway (one per SQL statement, per HTTP request) were a third of a query's CPU.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Config, Effect, Layer, Logger, LogLevel } from "effect"
import { layerFromEnv } from "./config/ChorusConfig.ts"
import { NodeLive } from "./Node.ts"
import * as SharedScheduler from "./runtime/SharedScheduler.ts"

const LogLevelFromEnv = Layer.unwrapEffect(
  Config.logLevel("CHORUS_LOG_LEVEL").pipe(Config.withDefault(LogLevel.Info), Effect.map(Logger.minimumLogLevel))
)

const MainLive = NodeLive.pipe(Layer.provide(layerFromEnv), Layer.provide(Logger.json), Layer.provide(LogLevelFromEnv))

NodeRuntime.runMain(
  Layer.launch(MainLive).pipe(
    Effect.withScheduler(SharedScheduler.scheduler),
    Effect.withTracerEnabled(false),
    Effect.annotateLogs("node", process.env["NODE_ID"] ?? "node")
  ),
  {
    disablePrettyLogger: true
  }
)
