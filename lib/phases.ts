// Owns the phase runner: named steps run in order; on failure each started step is undone, newest first.
export interface Phase<Stop> {
  name: string;
  /** Does the step. Returning a value stops the sequence there with that outcome (nothing to do, busy…). */
  run(): Promise<Stop | void>;
  /** Puts back what run changed; called for every started step, the failed one included, so it must be idempotent. */
  undo?(): Promise<void>;
  /** Always called at the end, after any undo: releases what the step holds. */
  cleanup?(): void;
}

export type PhaseResult<Stop> =
  | { ok: true; stoppedWith: Stop | undefined }
  | { ok: false; phase: string; error: unknown };

export interface PhaseHooks {
  /** Called when a step fails, before anything is undone, so the log tells cause before consequence. */
  onFailure(phase: string, error: unknown): void;
  onUndoError(phase: string, error: unknown): void;
}

export async function runPhases<Stop>(phases: Phase<Stop>[], hooks: PhaseHooks): Promise<PhaseResult<Stop>> {
  const started: Phase<Stop>[] = [];
  try {
    for (const phase of phases) {
      started.push(phase);
      let stop: Stop | void;
      try {
        stop = await phase.run();
      } catch (error) {
        hooks.onFailure(phase.name, error);
        for (const done of [...started].reverse()) {
          try {
            await done.undo?.();
          } catch (undoError) {
            hooks.onUndoError(done.name, undoError);
          }
        }
        return { ok: false, phase: phase.name, error };
      }
      if (stop !== undefined) return { ok: true, stoppedWith: stop };
    }
    return { ok: true, stoppedWith: undefined };
  } finally {
    for (const done of started.reverse()) {
      try {
        done.cleanup?.();
      } catch (cleanupError) {
        hooks.onUndoError(done.name, cleanupError);
      }
    }
  }
}
