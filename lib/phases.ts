// Owns the step runner: named steps run in order over one value; on failure every started step is undone, newest first, and what the undo achieved is returned as data.
import { errorText } from "./log.ts";

export interface Step<A, Stop> {
  name: string;
  /** Does the step. Returning a value stops the list there with that value (nothing to do, busy…). */
  run(a: A): Promise<Stop | void>;
  /**
   * Puts back what run changed. Called for every started step, the failed one included, so it must
   * be safe when run did nothing. Says whether it restored something on the host.
   */
  undo?(a: A): Promise<"restored" | "nothing">;
}

/** What undoing a failed list achieved: the host as it was, nothing to put back, or a host left inconsistent (and why). */
export type Undo = { kind: "restored" } | { kind: "nothing-to-restore" } | { kind: "inconsistent"; why: string };

export type StepsResult<Stop> =
  | { ok: true; stoppedWith: Stop | undefined }
  | { ok: false; step: string; error: unknown; undo: Undo };

export interface StepHooks {
  /** Called when a step fails, before anything is undone, so the log tells cause before consequence. */
  onFailure(step: string, error: unknown): void;
  onUndoError(step: string, error: unknown): void;
}

export async function runSteps<A, Stop>(a: A, steps: Step<A, Stop>[], hooks: StepHooks): Promise<StepsResult<Stop>> {
  const started: Step<A, Stop>[] = [];
  for (const step of steps) {
    started.push(step);
    let stop: Stop | void;
    try {
      stop = await step.run(a);
    } catch (error) {
      hooks.onFailure(step.name, error);
      return { ok: false, step: step.name, error, undo: await undoAll(a, started, hooks) };
    }
    if (stop !== undefined) return { ok: true, stoppedWith: stop };
  }
  return { ok: true, stoppedWith: undefined };
}

async function undoAll<A, Stop>(a: A, started: Step<A, Stop>[], hooks: StepHooks): Promise<Undo> {
  let restored = false;
  const failures: string[] = [];
  for (const step of [...started].reverse()) {
    try {
      if ((await step.undo?.(a)) === "restored") restored = true;
    } catch (error) {
      hooks.onUndoError(step.name, error);
      failures.push(`${step.name}: ${errorText(error)}`);
    }
  }
  if (failures.length > 0) return { kind: "inconsistent", why: failures.join("; ") };
  return restored ? { kind: "restored" } : { kind: "nothing-to-restore" };
}
