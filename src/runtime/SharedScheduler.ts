/**
 * The scheduler every Chorus process runs its fibers on: Effect's default
 * `MixedScheduler` (microtasks, a timer turn every 2,048), with one task runner shared by
 * all fibers, as before Effect 3.20.
 *
 * Since 3.20 the default scheduler gives each fiber that yields its own runner, kept in
 * a WeakMap keyed by the fiber (so that concurrent `runPromise` calls keep their
 * AsyncLocalStorage apart, which Chorus does not use). V8's young-generation GC keeps
 * such entries alive, so every fiber that ever suspended (each request's, each send's)
 * outlived its scavenge and was copied and promoted: a loop of `Effect.async` fibers
 * kept 11 MB per scavenge with 30 ms pauses, and nothing with the shared runner
 * (decision 0021).
 */
import { Layer } from "effect"
import * as Scheduler from "effect/Scheduler"

const mixed = new Scheduler.MixedScheduler(2048)

export const scheduler: Scheduler.Scheduler = {
  shouldYield: (fiber) => mixed.shouldYield(fiber),
  // No fiber: the shared runner.
  scheduleTask: (task, priority) => mixed.scheduleTask(task, priority)
}

/** For runtimes built from layers (a ManagedRuntime): their fibers use `scheduler`. */
export const layer = Layer.setScheduler(scheduler)
