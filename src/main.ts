/**
 * Entry point of a node process: `node --import tsx src/main.ts`, configured by the
 * environment (README, "Configuration"). Logs are JSON lines.
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
  Layer.launch(MainLive).pipe(Effect.withScheduler(SharedScheduler.scheduler), Effect.annotateLogs("node", process.env["NODE_ID"] ?? "node")),
  {
    disablePrettyLogger: true
  }
)
