/**
 * Every Web API method group a node serves. A group is an Effect that builds a map
 * from method name to handler, using whatever services it needs; the node merges them.
 * Add a group here when you add a file to src/api/.
 */
import { Effect } from "effect"
import type { ApiHandler } from "../transport/ApiMethod.ts"
import * as ClusterMethods from "../transport/ClusterMethods.ts"
import * as AdminMethods from "./admin.ts"
import * as AppsMethods from "./apps.ts"
import * as AuthMethods from "./auth.ts"
import * as ChatMethods from "./chat.ts"
import * as ConversationsReadMethods from "./conversationsRead.ts"
import * as ConversationsWriteMethods from "./conversationsWrite.ts"
import * as FilesMethods from "./files.ts"
import * as MarkMethods from "./mark.ts"
import * as PresenceMethods from "./presence.ts"
import * as ReactionsMethods from "./reactions.ts"
import * as RtmMethods from "./rtm.ts"
import * as SearchMethods from "./search.ts"
import * as TeamMethods from "./team.ts"
import * as UsersMethods from "./users.ts"

export const methodGroups = [ClusterMethods.make, AuthMethods.make, TeamMethods.make, UsersMethods.make, AdminMethods.make, RtmMethods.make, ConversationsWriteMethods.make, ChatMethods.make, ReactionsMethods.make, ConversationsReadMethods.make, SearchMethods.make, AppsMethods.make, FilesMethods.make, PresenceMethods.make, MarkMethods.make] as const

export const allMethods = Effect.map(Effect.all(methodGroups), (groups) => {
  const methods = new Map<string, ApiHandler>()
  for (const group of groups) for (const [name, handler] of group) methods.set(name, handler)
  return methods
})
