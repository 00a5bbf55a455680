/**
 * All schema migrations, in order. Add a file `NNNN_name.ts` exporting the migration
 * Effect and list it here; never edit one that has shipped.
 */
import type { SqlClient } from "@effect/sql"
import type { Effect } from "effect"
import m0001 from "./0001_runtime.ts"
import m0002 from "./0002_counter.ts"
import m0003 from "./0003_accounts.ts"
import m0004 from "./0004_channels.ts"
import m0005 from "./0005_channel_commands.ts"
import m0006 from "./0006_read_indexes.ts"
import m0008 from "./0008_files.ts"
import m0009 from "./0009_search.ts"
import m0007 from "./0007_read_state.ts"
import m0010 from "./0010_apps.ts"
import m0011 from "./0011_thumbnails.ts"
import m0012 from "./0012_fence_check.ts"

export const migrations: Record<string, Effect.Effect<void, unknown, SqlClient.SqlClient>> = {
  "0001_runtime": m0001,
  "0002_counter": m0002,
  "0003_accounts": m0003,
  "0004_channels": m0004,
  "0005_channel_commands": m0005,
  "0006_read_indexes": m0006,
  "0008_files": m0008,
  "0009_search": m0009,
  "0007_read_state": m0007,
  "0010_apps": m0010,
  "0011_thumbnails": m0011,
  "0012_fence_check": m0012
}
