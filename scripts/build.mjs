// `npm run build`: the node program as one ES module, dist/main.mjs (with a linked
// source map), its packages left as imports from node_modules. Nodes run this, not the
// TypeScript through tsx: tsx compiles with `keepNames` (an Object.defineProperty for
// every named closure made) and installs its hooks, and on the message path that cost
// a third of a node's CPU (decision 0023). esbuild takes about 0.1 s.
//
// `buildNode()` is idempotent and safe to run from several processes at once: each
// writes its own temporary files and renames them into place.

import * as esbuild from "esbuild"
import fs from "node:fs"
import path from "node:path"
import { fileURLToPath } from "node:url"

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
export const NODE_BUNDLE = "dist/main.mjs"

export async function buildNode() {
  const outfile = path.join(ROOT, NODE_BUNDLE)
  const result = await esbuild.build({
    absWorkingDir: ROOT,
    entryPoints: ["src/main.ts"],
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    packages: "external",
    sourcemap: "linked",
    outfile,
    write: false,
    logLevel: "warning"
  })
  fs.mkdirSync(path.dirname(outfile), { recursive: true })
  for (const file of result.outputFiles) {
    const temporary = `${file.path}.${process.pid}.tmp`
    fs.writeFileSync(temporary, file.contents)
    fs.renameSync(temporary, file.path)
  }
  return NODE_BUNDLE
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  await buildNode()
  console.log(`built ${NODE_BUNDLE}`)
}
