// bin-proxy: keeps this host's supervised binaries in step with bin-manager. Start at runPass (lib/pass.ts).
import { isAbsolute } from "node:path";
import { ConfigError, DEFAULT_LOG_FILE, loadSettings, type ConfigWarning, type Settings } from "./lib/config.ts";
import { parseArgs, UsageError, USAGE, type Invocation } from "./lib/cli.ts";
import { errorText, Logger, redact } from "./lib/log.ts";
import { EXIT_CONFIG, EXIT_FAILED } from "./lib/exit.ts";
import { runPass } from "./lib/pass.ts";
import { retry, rollback } from "./lib/rollback.ts";
import { recordConfigErrorMetrics } from "./lib/runmetrics.ts";
import { runStatus } from "./lib/status.ts";
import { versionLine } from "./lib/version.ts";

/** The API token, as soon as it is known: kept out of the last-resort lines below too. */
const secrets: string[] = process.env.BIN_MANAGER_TOKEN ? [process.env.BIN_MANAGER_TOKEN] : [];

async function main(argv: string[]): Promise<number> {
  const startedAt = new Date();
  let invocation: Invocation;
  try {
    invocation = parseArgs(argv);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    return fatal(`${err.message}\n${USAGE}`, EXIT_CONFIG, configuredLogFile(err.configPath));
  }
  const { command, configPath } = invocation;
  if (command.kind === "version") return print(versionLine());
  if (command.kind === "help") return print(USAGE);

  let settings: Settings;
  let warnings: ConfigWarning[];
  try {
    ({ settings, warnings } = loadSettings({ configFlag: configPath, env: process.env }));
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    const code = fatal(`configuration error: ${err.message}`, EXIT_CONFIG, err.logFile);
    // "Broken config" is visible as such on a dashboard, not as a host that stopped reporting; status and --dry-run write nothing, even then.
    const readOnly = command.kind === "status" || (command.kind === "pass" && command.dryRun);
    const problem = readOnly ? null : recordConfigErrorMetrics(err.metricsFile, err.stateDir, startedAt);
    if (problem) process.stderr.write(redact(`bin-proxy: metrics not written: ${problem}`, secrets) + "\n");
    return code;
  }
  if (settings.token) secrets.push(settings.token);
  const interactive = process.stdin.isTTY === true;
  switch (command.kind) {
    case "pass": {
      const log = new Logger({
        file: command.dryRun ? undefined : settings.logFile,
        echo: command.verbose || interactive,
        secrets,
      });
      logWarnings(log, warnings);
      const summary = command.verbose || interactive ? (line: string) => void process.stderr.write(line + "\n") : undefined;
      return runPass(settings, log, { dryRun: command.dryRun, splay: !command.dryRun && !interactive, print, summary });
    }
    case "status":
      logWarnings(null, warnings);
      return runStatus(settings, { json: command.json, print, warn: (line) => void process.stderr.write(`bin-proxy: ${line}\n`) });
    case "rollback":
    case "retry": {
      // Run by hand: every event is echoed to stderr as well as logged.
      const log = new Logger({ file: settings.logFile, echo: true, secrets });
      logWarnings(log, warnings);
      return command.kind === "rollback" ? rollback(settings, log, command.name, { print }) : retry(settings, log, command.name, { print });
    }
  }
}

/** Config warnings: logged (echoed on a terminal, where someone reads them), or said on stderr where nothing is logged (status). */
function logWarnings(log: Logger | null, warnings: ConfigWarning[]): void {
  for (const { file, line, message } of warnings) {
    if (log) log.warn("config_warning", { file, line, warning: message });
    else process.stderr.write(`bin-proxy: config warning: ${file} line ${line}: ${message}\n`);
  }
}

/** The LOG_FILE the configuration names (the --config FILE of a command line that is otherwise wrong), or undefined. */
function configuredLogFile(configPath: string | undefined): string | undefined {
  try {
    return loadSettings({ configFlag: configPath, env: process.env }).settings.logFile;
  } catch (err) {
    if (err instanceof ConfigError) return err.logFile;
    throw err;
  }
}

function print(line: string): number {
  process.stdout.write(line + "\n");
  return 0;
}

/** A usage or configuration error: said on stderr, and logged to the configured log file, else the default one. */
function fatal(message: string, code: number, logFile = process.env.LOG_FILE || DEFAULT_LOG_FILE): number {
  process.stderr.write(redact(`bin-proxy: ${message}`, secrets) + "\n");
  if (logFile && isAbsolute(logFile)) new Logger({ file: logFile, echo: false, secrets }).warn("not_started", { error: message.split("\n")[0] });
  return code;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(redact(`bin-proxy: unexpected error: ${errorText(err)}`, secrets) + "\n");
    process.exit(EXIT_FAILED);
  },
);
