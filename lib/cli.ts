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

export class UsageError extends Error {}

export const USAGE = `usage:
  bin-proxy [--once] [--dry-run] [--config FILE] [--verbose]   one pass (the default)
  bin-proxy status [--json] [--config FILE]                     local state of every managed binary
  bin-proxy rollback NAME [--config FILE]                       go back to the previous version of NAME and hold there
  bin-proxy retry NAME [--config FILE]                          clear a hold, so the next pass tries again
  bin-proxy --version | --help`;

const FLAGS_OF = {
  pass: ["--once", "--dry-run", "--verbose"],
  status: ["--json"],
  rollback: [],
  retry: [],
} as const;

export function parseArgs(argv: string[]): Invocation {
  if (argv.length === 1 && (argv[0] === "--version" || argv[0] === "-V")) return { command: { kind: "version" }, configPath: undefined };
  if (argv.length === 1 && (argv[0] === "--help" || argv[0] === "-h")) return { command: { kind: "help" }, configPath: undefined };
  const args = [...argv];
  const verb = args[0] && !args[0].startsWith("-") ? args.shift()! : "pass";
  if (!(verb in FLAGS_OF)) throw new UsageError(`unknown command ${JSON.stringify(verb)}`);
  const kind = verb as keyof typeof FLAGS_OF;
  const flags = new Set<string>();
  const operands: string[] = [];
  let configPath: string | undefined;
  while (args.length > 0) {
    const arg = args.shift()!;
    if (arg === "--config" || arg.startsWith("--config=")) {
      configPath = arg === "--config" ? args.shift() : arg.slice("--config=".length);
      if (!configPath) throw new UsageError("--config needs a FILE");
    } else if ((FLAGS_OF[kind] as readonly string[]).includes(arg)) {
      flags.add(arg);
    } else if (arg.startsWith("-")) {
      throw new UsageError(`unknown option ${JSON.stringify(arg)}${kind === "pass" ? "" : ` for ${kind}`}`);
    } else {
      operands.push(arg);
    }
  }
  const needsName = kind === "rollback" || kind === "retry";
  if (operands.length !== (needsName ? 1 : 0)) {
    throw new UsageError(needsName ? `${kind} needs exactly one NAME` : `unexpected argument ${JSON.stringify(operands[0])}`);
  }
  const command: Command =
    kind === "pass" ? { kind, dryRun: flags.has("--dry-run"), verbose: flags.has("--verbose") }
    : kind === "status" ? { kind, json: flags.has("--json") }
    : { kind, name: operands[0]! };
  return { command, configPath };
}
