// Owns the supervised service: supervisorctl restart and stop, the RUNNING check and the TCP health check.
import { connect } from "node:net";

/** How supervisorctl is run: its path, and its config file (SUPERVISORCTL_CONFIG, passed as `-c`) when set. */
export interface Supervisorctl {
  path: string;
  config: string | null;
}

export interface ServiceCheck {
  supervisorctl: Supervisorctl;
  program: string;
  port: number;
  timeoutMs: number;
}

/** The state word supervisorctl prints for program (RUNNING, STARTING, BACKOFF, FATAL…), or null. */
export function parseState(output: string, program: string): string | null {
  for (const line of output.split("\n")) {
    const [name, state] = line.trim().split(/\s+/);
    if (name === program && state && /^[A-Z]+$/.test(state)) return state;
  }
  return null;
}

/** supervisorctl's own command line: its path, and `-c CONFIG` when one is set. */
const commandOf = (ctl: Supervisorctl): string[] => [ctl.path, ...(ctl.config ? ["-c", ctl.config] : [])];

async function supervisorctl(ctl: Supervisorctl, args: string[], timeoutMs: number): Promise<{ code: number; output: string }> {
  // cwd "/": without -c, supervisorctl reads a supervisord.conf from its working directory first.
  // The environment is passed without the API token: no child ever needs it.
  const { BIN_MANAGER_TOKEN: _token, ...env } = process.env;
  const child = Bun.spawn([...commandOf(ctl), ...args], { cwd: "/", env, stdin: "ignore", stdout: "pipe", stderr: "pipe", timeout: timeoutMs, killSignal: "SIGKILL" });
  const [out, err, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  return { code, output: (out + err).trim() };
}

/** What `supervisorctl status PROGRAM…` prints: read it with parseState (its exit status is 0 even for BACKOFF). */
export async function supervisorStatus(ctl: Supervisorctl, programs: string[], timeoutMs: number): Promise<string> {
  return (await supervisorctl(ctl, ["status", ...programs], timeoutMs)).output;
}

/**
 * The service manager cannot restart the program: a problem of this host (supervisord down, no
 * supervisorctl, a program it does not know), not of the release, so the target is not held.
 */
export class ServiceUnavailable extends Error {}

/**
 * Checked before anything is swapped: supervisorctl answers with a state for the program. Throws
 * ServiceUnavailable, in words that say how to fix the host, when it does not.
 */
export async function checkServiceAnswers(check: ServiceCheck): Promise<void> {
  let output: string;
  try {
    output = await supervisorStatus(check.supervisorctl, [check.program], check.timeoutMs);
  } catch (err) {
    throw new ServiceUnavailable(`cannot run ${check.supervisorctl.path}: ${(err as Error).message}`);
  }
  if (parseState(output, check.program) !== null) return;
  const why = /no such (process|group)/i.test(output)
    ? `supervisord has no program ${check.program}: add a [program:${check.program}] section, or fix serviceName in the manifest`
    : `supervisord does not answer: start it (or point SUPERVISORCTL at the right supervisorctl, SUPERVISORCTL_CONFIG at its config)`;
  throw new ServiceUnavailable(`${why}; supervisorctl said: ${oneLine(output) || "nothing"}`);
}

/** Stops the program: after a first install is taken back there is no binary left for it to run. */
export async function stopService(check: ServiceCheck): Promise<void> {
  const stop = await supervisorctl(check.supervisorctl, ["stop", check.program], check.timeoutMs);
  if (stop.code !== 0 && !/not running/i.test(stop.output)) throw new Error(`supervisorctl stop ${check.program} failed (exit ${stop.code}): ${oneLine(stop.output)}`);
}

/**
 * Restarts the program, then waits until supervisor reports it RUNNING and, when a port is given,
 * until it accepts a TCP connection on 127.0.0.1. Throws with the reason when it does not come up
 * within the time limit.
 */
export async function restartAndCheck(check: ServiceCheck): Promise<void> {
  const deadline = Date.now() + check.timeoutMs;
  const restart = await supervisorctl(check.supervisorctl, ["restart", check.program], check.timeoutMs);
  if (restart.code !== 0) throw new Error(`supervisorctl restart ${check.program} failed (exit ${restart.code}): ${oneLine(restart.output)}${whereItsLogIs(check)}`);
  // restart exits 0 even for BACKOFF, so the state word is what counts.
  for (;;) {
    const status = await supervisorStatus(check.supervisorctl, [check.program], check.timeoutMs);
    const state = parseState(status, check.program);
    if (state === "RUNNING") break;
    if (state !== "STARTING" || Date.now() > deadline) {
      throw new Error(`${check.program} is ${state ?? "unknown"} after restart${state ? "" : `: ${oneLine(status)}`}${whereItsLogIs(check)}`);
    }
    await Bun.sleep(200);
  }
  if (check.port > 0) {
    while (!(await accepts(check.port, 1000))) {
      if (Date.now() > deadline) throw new Error(`${check.program} does not accept connections on 127.0.0.1:${check.port} within ${check.timeoutMs / 1000}s`);
      await Bun.sleep(200);
    }
  }
}

export function accepts(port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}

/** Where the program's own words are: supervisor keeps its output, and `supervisorctl tail` shows it wherever the log file is. */
function whereItsLogIs(check: ServiceCheck): string {
  return `; its output: ${commandOf(check.supervisorctl).join(" ")} tail ${check.program} stderr`;
}

const oneLine = (text: string) => text.replace(/\s+/g, " ").slice(0, 300);
