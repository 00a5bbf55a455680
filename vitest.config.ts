import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Cluster tests spawn node processes and real servers: give them room, and
    // run files in parallel (each isolates itself by database and NATS names).
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: "forks",
    poolOptions: { forks: { maxForks: 3, minForks: 1 } },
    sequence: { concurrent: false }
  }
})
