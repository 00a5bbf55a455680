#!/usr/bin/env node
// The `chorus` command (`npx chorus …` in a checkout): runs src/cli/main.ts through tsx,
// so the CLI needs no build step.
import { spawnSync } from "node:child_process"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const root = join(dirname(fileURLToPath(import.meta.url)), "..")
const result = spawnSync(process.execPath, ["--import", "tsx", join(root, "src/cli/main.ts"), ...process.argv.slice(2)], {
  stdio: "inherit",
  cwd: process.cwd()
})
process.exit(result.status ?? 1)
