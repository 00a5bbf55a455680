// Test helpers in one import: `import { startCluster, freshDatabase } from "../support/index.ts"`.
export * from "./cluster.ts"
export * from "./http.ts"
export * from "./nats.ts"
export * from "./postgres.ts"
export * from "./services.ts"
export { freePort, REPO_ROOT, sleep } from "./processes.ts"
