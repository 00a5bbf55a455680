/**
 * The `chorus` command line. Minimal for now: other subcommands are mounted here as
 * they land.
 */
import { Command, ValidationError } from "@effect/cli"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Effect } from "effect"
import { placementCommand } from "./placementSimulate.ts"
import { searchCommand } from "./searchReindex.ts"

const chorus = Command.make("chorus").pipe(Command.withSubcommands([placementCommand, searchCommand]))

const cli = Command.run(chorus, { name: "chorus", version: "0.1.0" })

cli(process.argv).pipe(
  // @effect/cli has already printed the usage error: exit 1 without reporting it twice.
  Effect.catchIf(ValidationError.isValidationError, () => Effect.sync(() => void (process.exitCode = 1))),
  Effect.provide(NodeContext.layer),
  NodeRuntime.runMain
)
