// Owns the event log: one logfmt line per event, appended to LOG_FILE and echoed to stderr when asked.
import { appendText } from "./fsx.ts";

export type Level = "info" | "warn" | "error";
export type Fields = Record<string, string | number | boolean | undefined>;

export interface LogOptions {
  /** Where lines are appended; undefined sends them to stderr only (--dry-run writes no file). */
  file: string | undefined;
  /** Echo every line to stderr (--verbose, or a terminal). Errors are always echoed: cron mails them. */
  echo: boolean;
  /** Strings that must never appear in a line (the API token). */
  secrets: string[];
}

const BARE_VALUE = /^[A-Za-z0-9._:/@+\-,>]+$/;

function formatValue(value: string | number | boolean): string {
  const text = String(value);
  return BARE_VALUE.test(text) ? text : JSON.stringify(text);
}

/** One logfmt line: time first, then level, bin, event, then the rest in the order given. */
export function formatLine(now: Date, level: Level, event: string, fields: Fields): string {
  const { bin, ...rest } = fields;
  const parts = [now.toISOString(), `level=${level}`];
  if (bin !== undefined) parts.push(`bin=${formatValue(bin)}`);
  parts.push(`event=${formatValue(event)}`);
  for (const [key, value] of Object.entries(rest)) {
    if (value !== undefined) parts.push(`${key}=${formatValue(value)}`);
  }
  return parts.join(" ");
}

export function redact(line: string, secrets: string[]): string {
  let clean = line;
  for (const secret of secrets) if (secret) clean = clean.split(secret).join("[redacted]");
  return clean;
}

export class Logger {
  private fileBroken = false;
  errorCount = 0;
  /** Lines written so far: a pass that logged none changed nothing. */
  lineCount = 0;

  constructor(private readonly options: LogOptions) {}

  info(event: string, fields: Fields = {}): void {
    this.write("info", event, fields);
  }
  warn(event: string, fields: Fields = {}): void {
    this.write("warn", event, fields);
  }
  /** An error is a failure of the pass: it is counted, and always reaches stderr. */
  error(event: string, fields: Fields = {}): void {
    this.errorCount++;
    this.write("error", event, fields);
  }

  private write(level: Level, event: string, fields: Fields): void {
    // The pid tells the lines of runs that overlap (cron starts one every minute) apart.
    const line = redact(formatLine(new Date(), level, event, { ...fields, pid: process.pid }), this.options.secrets);
    this.lineCount++;
    // Once the log file has failed, every line goes to stderr instead, so cron mails what the log lost.
    if (this.options.echo || level === "error" || this.options.file === undefined || this.fileBroken) {
      process.stderr.write(line + "\n");
    }
    if (this.options.file === undefined || this.fileBroken) return;
    try {
      // Root appends here: a symlink planted at the log's path must not redirect the write elsewhere.
      appendText(this.options.file, line + "\n", 0o640);
    } catch (err) {
      // An unwritable log must not stop the pass; say so on stderr, where cron mails it.
      this.fileBroken = true;
      process.stderr.write(redact(`bin-proxy: cannot write log file ${this.options.file}: ${errorText(err)}`, this.options.secrets) + "\n");
      if (!this.options.echo && level !== "error") process.stderr.write(line + "\n");
    }
  }
}

/** The message of anything thrown, for a log field. */
export function errorText(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as NodeJS.ErrnoException).code;
    const text = code && !err.message.includes(code) ? `${code}: ${err.message}` : err.message;
    // Every file bin-proxy creates or rewrites is opened with O_NOFOLLOW: ELOOP means a planted symlink.
    return code === "ELOOP" ? `${text} (a symlink where bin-proxy keeps its own file; it is never followed: remove it)` : text;
  }
  return String(err);
}
