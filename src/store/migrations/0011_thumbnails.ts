import { SqlClient } from "@effect/sql"
import { Effect } from "effect"

/**
 * Image thumbnails (src/files/Thumbnails.ts): the original's dimensions and the
 * thumbnails made for it, `[{size, width, height, mimetype}]`, stored next to the
 * file's object (`<storage_key>_thumb_<size>`). Null: none (not an image, or not yet).
 */
export default Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`
    ALTER TABLE files
      ADD COLUMN original_w integer,
      ADD COLUMN original_h integer,
      ADD COLUMN thumbs jsonb`
})
