// Owns the command line: turning argv into a typed command, or a usage error (pure).
export type Command =
  | { kind: "pass"; dryRun: boolean; verbose: boolean }
  | { kind: "status"; json: boolean }
  | { kind: "rollback"; name: string }
  | { kind: "retry"; name: string }
  | { kind: "version" }
  | { kind: "help" };

export interface Invocation {
  command: Command;
  configPath: string | undefined;
}

export class UsageError extends Error {
  /** The --config FILE the command line named, if any: its LOG_FILE is where the error is logged. */
  constructor(message: string, readonly configPath: string | undefined) {
    super(message);
  }
}

export const USAGE = `usage:
  bin-proxy [--once] [--dry-run] [--config FILE] [--verbose]   one pass (the default)
  bin-proxy status [--json] [--config FILE]                     local state of every managed binary
  bin-proxy rollback NAME [--config FILE]                       go back to the previous version of NAME and hold there
  bin-proxy retry NAME [--config FILE]                          clear a hold, so the next pass tries again
  bin-proxy --version | --help | help
-v is --verbose, -V is --version, -h is --help; --help after a command prints this too.`;

const FLAGS_OF = {
  pass: ["--once", "--dry-run", "--verbose"],
  status: ["--json"],
  rollback: [],
  retry: [],
} as const;

/** Short flags, as their long names. -v is --verbose, as for most tools whose default action does work; -V is --version. */
const SHORT: Record<string, string> = { "-v": "--verbose", "-V": "--version", "-h": "--help" };

/**
 * Takes every --config FILE and --config=FILE out of argv first, so that a FILE is never read as a
 * flag (`--config -h`). The last FILE is the one that counts, known even when the rest is wrong.
 */
function takeConfig(argv: string[]): { configPath: string | undefined; missingFile: boolean; rest: string[] } {
  let configPath: string | undefined;
  let missingFile = false;
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg !== "--config" && !arg.startsWith("--config=")) {
      rest.push(arg);
      continue;
    }
    configPath = (arg === "--config" ? argv[++i] : arg.slice("--config=".length)) || undefined;
    if (configPath === undefined) missingFile = true;
  }
  return { configPath, missingFile, rest };
}

export function parseArgs(argv: string[]): Invocation {
  const { configPath, missingFile, rest } = takeConfig(argv);
  const args = rest.map((arg) => SHORT[arg] ?? arg);
  const typed = new Map(rest.map((arg) => [SHORT[arg] ?? arg, arg])); // for messages: what the operator wrote
  if (args.length === 1 && args[0] === "--version" && !missingFile) return { command: { kind: "version" }, configPath };
  // `help`, `--help` alone or after any command (`status --help`): the usage, whatever else is there.
  if (args[0] === "help" || args.includes("--help")) return { command: { kind: "help" }, configPath };
  if (missingFile) throw new UsageError("--config needs a FILE", configPath);
  const verb = args[0] && !args[0].startsWith("-") ? args.shift()! : "pass";
  if (!(verb in FLAGS_OF)) throw new UsageError(`unknown command ${JSON.stringify(verb)}`, configPath);
  const kind = verb as keyof typeof FLAGS_OF;
  const flags = new Set<string>();
  const operands: string[] = [];
  while (args.length > 0) {
    const arg = args.shift()!;
    if ((FLAGS_OF[kind] as readonly string[]).includes(arg)) {
      flags.add(arg);
    } else if (arg.startsWith("-")) {
      throw new UsageError(`unknown option ${JSON.stringify(typed.get(arg) ?? arg)}${kind === "pass" ? "" : ` for ${kind}`}`, configPath);
    } else {
      operands.push(arg);
    }
  }
  const needsName = kind === "rollback" || kind === "retry";
  if (operands.length !== (needsName ? 1 : 0)) {
    throw new UsageError(needsName ? `${kind} needs exactly one NAME` : `unexpected argument ${JSON.stringify(operands[0])}`, configPath);
  }
  const command: Command =
    kind === "pass" ? { kind, dryRun: flags.has("--dry-run"), verbose: flags.has("--verbose") }
    : kind === "status" ? { kind, json: flags.has("--json") }
    : { kind, name: operands[0]! };
  return { command, configPath };
}
