// Owns the settings: the shell-syntax config file, the environment, defaults, precedence and validation.
import { accessSync, constants, existsSync, readFileSync, statSync } from "node:fs";
import { hostname } from "node:os";
import { delimiter, isAbsolute, join } from "node:path";

export const DEFAULT_CONFIG_FILE = "/etc/bin-proxy/config";
export const DEFAULT_LOG_FILE = "/var/log/bin-proxy.log";

export interface Settings {
  api: string;
  /** BIN_MANAGER_API was set somewhere: false means the default localhost API, which an unconfigured host does not have. */
  apiConfigured: boolean;
  binDir: string;
  manifest: string;
  logFile: string;
  lockDir: string;
  downloadBaseUrl: string;
  token: string | undefined;
  stateDir: string;
  lockTimeoutSec: number;
  splaySec: number;
  /** null: no supervisorctl, so nothing is restarted (see restartsDisabled for why). */
  supervisorctl: string | null;
  /** SUPERVISORCTL_CONFIG: supervisorctl's config file, passed as `-c FILE` to every supervisorctl call; null: its own default. */
  supervisorctlConfig: string | null;
  /** SUPERVISORCTL="" said so: services are not restarted. Otherwise a null supervisorctl was not found, which fails an update whose entry names a service. */
  restartsDisabled: boolean;
  nodeName: string;
  httpTimeoutMs: number;
  maxDownloadBytes: number;
  retryBackoffSec: number;
  healthTimeoutMs: number;
  /** BIN_PROXY_TRUSTED_KEYS: minisign public keys every target must be signed by (SPEC §9). */
  trustedKeys: { path: string; required: boolean };
  /** BIN_PROXY_METRICS_FILE: Prometheus textfile written after every run (SPEC §11); null: none. */
  metricsFile: string | null;
  /** Forward proxies for every request (SPEC §10), from the environment or the config file. */
  proxy: ProxySettings;
}

export interface ProxySettings {
  http: string | undefined;
  https: string | undefined;
  /** NO_PROXY as given: comma-separated host names, domains (.example.com) and "*". */
  noProxy: string | undefined;
}

const DEFAULT_TRUSTED_KEYS = "/etc/bin-proxy/trusted-keys";

export class ConfigError extends Error {
  /** LOG_FILE as the environment or config file set it, so that the failure can still be logged there. */
  logFile: string | undefined;
  /** BIN_PROXY_METRICS_FILE and BIN_PROXY_STATE_DIR as set, so that a broken config still shows in the metrics (SPEC §11). */
  metricsFile: string | undefined;
  stateDir: string | undefined;
  /** The setting whose value is wrong, so that loadSettings can say where that value came from. */
  constructor(message: string, readonly key?: Key) {
    super(message);
  }
}

/** Something in the config file that is probably not what its author meant; the pass goes on. */
export interface ConfigWarning {
  file: string;
  line: number;
  message: string;
}

/** Every key bin-proxy reads, from the environment or the config file. */
export const SETTING_KEYS = [
  "BIN_MANAGER_API", "BIN_DIR", "BIN_MANIFESTS", "LOG_FILE", "LOCK_DIR", "DOWNLOAD_BASE_URL",
  "BIN_MANAGER_TOKEN", "BIN_PROXY_STATE_DIR", "LOCK_TIMEOUT", "BIN_PROXY_SPLAY", "SUPERVISORCTL",
  "NODE_NAME", "HTTP_TIMEOUT", "MAX_DOWNLOAD_BYTES", "BIN_PROXY_RETRY_BACKOFF", "BIN_PROXY_HEALTH_TIMEOUT",
  "BIN_PROXY_TRUSTED_KEYS", "BIN_PROXY_METRICS_FILE", "SUPERVISORCTL_CONFIG",
  "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy",
] as const;
type Key = (typeof SETTING_KEYS)[number];
type Lookup = (key: string) => string | undefined;

const ASSIGNMENT = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$/;
/** `KEY = value`, `KEY =value`, `KEY= value`: sh runs a command there, it assigns nothing. */
const SPACED_ASSIGNMENT = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)(?:\s+=|=\s+[^\s#])/;
/** What may follow a value on its line: nothing, a comment, or the next command. */
const END_OF_VALUE = /^\s*(?:$|#|;|&&|\|\|)/;

const isSetting = (key: string): key is Key => (SETTING_KEYS as readonly string[]).includes(key);

export interface ShellConfig {
  values: Map<string, string>;
  /** The line (1-based) where each value was last assigned, to say where a bad value came from. */
  lines: Map<string, number>;
  warnings: { line: number; message: string }[];
}

/**
 * Reads the assignments of a shell config file the way `sh` would for the syntax the old script's
 * config used: `KEY=value`, `export KEY="value"`, 'single quotes', comments, `$KEY`, `${KEY}` and
 * `${KEY:-default}` of keys defined above (else of the environment). Lines that are not assignments
 * (shell logic) are ignored; an assignment of a setting that uses syntax we cannot evaluate without
 * running a shell (command substitution), or that sh would cut at an unquoted space, is an error,
 * because guessing would be worse. A likely typo of a setting's name, and a setting assigned with
 * spaces around `=` (which sh does not assign), are warnings. `file` names the file in messages.
 */
export function parseShellConfig(text: string, env: Lookup, file = "config"): ShellConfig {
  const config: ShellConfig = { values: new Map(), lines: new Map(), warnings: [] };
  const lookup: Lookup = (key) => config.values.get(key) ?? env(key);
  text.split("\n").forEach((rawLine, index) => {
    const line = rawLine.trim();
    const where = `${file} line ${index + 1}`;
    const spaced = SPACED_ASSIGNMENT.exec(line);
    if (spaced) {
      const key = spaced[1]!;
      const meant = isSetting(key) ? key : likelySetting(key);
      if (meant) config.warnings.push({ line: index + 1, message: `spaces around "=": sh does not assign ${key} here, and neither does bin-proxy; write ${meant}=value` });
      return;
    }
    const match = ASSIGNMENT.exec(line);
    if (!match) return;
    const [, key = "", rest = ""] = match;
    if (!isSetting(key)) {
      const meant = likelySetting(key);
      // A helper variable used by another line ($ROOT) is deliberate, whatever its name.
      if (meant && !new RegExp(`\\$\\{?${key}\\b`).test(text)) {
        config.warnings.push({ line: index + 1, message: `${key} is not a bin-proxy setting and is ignored: did you mean ${meant}?` });
      }
    }
    try {
      const [value, end] = parseShellWord(rest, lookup);
      if (!END_OF_VALUE.test(rest.slice(end))) {
        const hint = key === "SUPERVISORCTL" ? "; SUPERVISORCTL is a path only: set supervisorctl's -c file with SUPERVISORCTL_CONFIG" : "";
        throw new Error(`unquoted space in the value: sh would set ${JSON.stringify(value)} and run ${JSON.stringify(rest.slice(end).trim())} as a command; quote the value${hint}`);
      }
      config.values.set(key, value);
      config.lines.set(key, index + 1);
    } catch (err) {
      if (isSetting(key)) throw new ConfigError(`${where}: ${key}: ${(err as Error).message}`, key);
    }
  });
  return config;
}

/** The setting a key not known to bin-proxy was probably meant to be (a typo, a case slip), or null. */
export function likelySetting(key: string): Key | null {
  const upper = key.toUpperCase();
  const allowed = upper.length >= 6 ? 2 : 1;
  let best: { key: Key; distance: number } | null = null;
  for (const setting of SETTING_KEYS) {
    if (setting === key) return null;
    const distance = editDistance(upper, setting.toUpperCase());
    if (distance <= allowed && (!best || distance < best.distance)) best = { key: setting, distance };
  }
  return best?.key ?? null;
}

/** Levenshtein distance, counting a swap of two neighbours as one edit (optimal string alignment). */
function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i]![j] = Math.min(d[i]![j]!, d[i - 2]![j - 2]! + 1);
    }
  }
  return d[a.length]![b.length]!;
}

/** The value of the shell word at the start of input, and the index where the word ends. */
function parseShellWord(input: string, lookup: Lookup): [string, number] {
  let out = "";
  let i = 0;
  while (i < input.length) {
    const ch = input[i]!;
    if (ch === " " || ch === "\t" || ch === ";") break; // end of the word; what follows is a comment or another command
    if (ch === "#" && i === 0) break;
    if (ch === "'") {
      const end = input.indexOf("'", i + 1);
      if (end < 0) throw new Error("unterminated single quote");
      out += input.slice(i + 1, end);
      i = end + 1;
    } else if (ch === '"') {
      i++;
      while (i < input.length && input[i] !== '"') {
        if (input[i] === "\\" && i + 1 < input.length && '"\\$`'.includes(input[i + 1]!)) {
          out += input[i + 1];
          i += 2;
        } else if (input[i] === "$") {
          const [value, next] = expand(input, i, lookup);
          out += value;
          i = next;
        } else if (input[i] === "`") {
          throw new Error("command substitution is not supported");
        } else {
          out += input[i++];
        }
      }
      if (input[i] !== '"') throw new Error("unterminated double quote");
      i++;
    } else if (ch === "\\" && i + 1 < input.length) {
      out += input[i + 1];
      i += 2;
    } else if (ch === "$") {
      const [value, next] = expand(input, i, lookup);
      out += value;
      i = next;
    } else if (ch === "`") {
      throw new Error("command substitution is not supported");
    } else {
      out += ch;
      i++;
    }
  }
  return [out, i];
}

/** Expands the `$…` at input[start]; returns the value and the index after it. */
function expand(input: string, start: number, lookup: Lookup): [string, number] {
  const braced = /^\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/.exec(input.slice(start));
  if (braced) {
    const value = lookup(braced[1]!);
    const fallback = braced[2];
    return [fallback !== undefined && !value ? fallback : (value ?? ""), start + braced[0].length];
  }
  const bare = /^\$([A-Za-z_][A-Za-z0-9_]*)/.exec(input.slice(start));
  if (bare) return [lookup(bare[1]!) ?? "", start + bare[0].length];
  if (input[start + 1] === "(" || input[start + 1] === "{") throw new Error(`unsupported expansion ${input.slice(start, start + 3)}…`);
  return ["$", start + 1];
}

export interface ConfigSource {
  /** --config FILE, if given. */
  configFlag: string | undefined;
  env: Record<string, string | undefined>;
}

export interface ConfigFileChoice {
  path: string;
  /** Only the default file may be missing. */
  required: boolean;
  /** Who named the file, for messages: "--config", "BIN_PROXY_CONFIG" or null (the default). */
  namedBy: "--config" | "BIN_PROXY_CONFIG" | null;
}

/** Which config file to read, and whether its absence is an error. */
export function configFileChoice(source: ConfigSource): ConfigFileChoice {
  if (source.configFlag !== undefined) return { path: source.configFlag, required: true, namedBy: "--config" };
  const fromEnv = source.env.BIN_PROXY_CONFIG;
  if (fromEnv) return { path: fromEnv, required: true, namedBy: "BIN_PROXY_CONFIG" };
  return { path: DEFAULT_CONFIG_FILE, required: false, namedBy: null };
}

export interface LoadedSettings {
  settings: Settings;
  /** For the caller to log as config_warning: a likely typo, spaces around "=", a token readable by others. */
  warnings: ConfigWarning[];
}

/**
 * An environment value as SPEC §3 reads it: an empty one counts as unset, so the config file's
 * value applies (as the old script's `${VAR:-default}` did). SUPERVISORCTL is the exception: set
 * to "" anywhere, it disables restarts, and the environment is where a crontab line says so.
 */
function fromEnvironment(env: ConfigSource["env"], key: Key): string | undefined {
  const value = env[key];
  return key === "SUPERVISORCTL" ? value : value || undefined;
}

/** Reads the config file and environment, and validates every setting. Throws ConfigError. */
export function loadSettings(source: ConfigSource): LoadedSettings {
  const { path, required, namedBy } = configFileChoice(source);
  let config: ShellConfig = { values: new Map(), lines: new Map(), warnings: [] };
  const warnings: ConfigWarning[] = [];
  // Environment over file, as SPEC §3 orders them; until the file is read, the environment alone.
  const raw = (key: Key): string | undefined => fromEnvironment(source.env, key) ?? config.values.get(key);
  const origin = (key: Key): string | null =>
    fromEnvironment(source.env, key) !== undefined ? "the environment" : config.lines.has(key) ? `${path} line ${config.lines.get(key)}` : null;
  try {
    if (existsSync(path) || required) {
      let text: string;
      let mode: number;
      try {
        text = readFileSync(path, "utf8");
        mode = statSync(path).mode;
      } catch (err) {
        const named = namedBy === "--config" ? " (named by --config on the command line)" : namedBy ? ` (named by ${namedBy} in the environment)` : "";
        throw new ConfigError(`cannot read config file ${path}${named}: ${(err as Error).message}`);
      }
      config = parseShellConfig(text, (key) => source.env[key], path);
      warnings.push(...config.warnings.map((w) => ({ file: path, ...w })));
      if (config.values.get("BIN_MANAGER_TOKEN") && (mode & 0o044) !== 0) {
        warnings.push({
          file: path,
          line: config.lines.get("BIN_MANAGER_TOKEN")!,
          message: `holds BIN_MANAGER_TOKEN but is readable by ${mode & 0o004 ? "everyone" : "its group"} (mode ${(mode & 0o777).toString(8).padStart(4, "0")}): chmod 600 ${path}`,
        });
      }
    }
    return { settings: resolveSettings(raw), warnings };
  } catch (err) {
    // Whatever failed (an unreadable or unparsable file, a bad value), the error still says where to
    // log it and where the metrics go, as far as they are known.
    if (err instanceof ConfigError) {
      err.logFile = raw("LOG_FILE") || undefined;
      err.metricsFile = raw("BIN_PROXY_METRICS_FILE") || undefined;
      err.stateDir = raw("BIN_PROXY_STATE_DIR") || undefined;
      const from = err.key && origin(err.key);
      if (from) err.message += ` (set in ${from})`;
    }
    throw err;
  }
}

/** Applies defaults and validates each value; pure apart from locating supervisorctl and the host name. */
export function resolveSettings(raw: (key: Key) => string | undefined): Settings {
  const api = url("BIN_MANAGER_API", raw("BIN_MANAGER_API") || "http://localhost:8080/api/v1");
  const token = raw("BIN_MANAGER_TOKEN") || undefined;
  if (token !== undefined && /[\r\n]/.test(token)) throw new ConfigError("BIN_MANAGER_TOKEN must be one line", "BIN_MANAGER_TOKEN");
  const nodeName = raw("NODE_NAME") || hostname();
  if (!/^[\x21-\x7e]{1,253}$/.test(nodeName)) throw new ConfigError(`NODE_NAME must be 1-253 printable characters without spaces, got ${JSON.stringify(nodeName)}`, "NODE_NAME");
  return {
    api,
    apiConfigured: Boolean(raw("BIN_MANAGER_API")),
    binDir: absolutePath("BIN_DIR", raw("BIN_DIR") || "/usr/local/bin"),
    manifest: absolutePath("BIN_MANIFESTS", raw("BIN_MANIFESTS") || "/etc/bin-proxy/bin-manifests.json"),
    logFile: absolutePath("LOG_FILE", raw("LOG_FILE") || DEFAULT_LOG_FILE),
    lockDir: absolutePath("LOCK_DIR", raw("LOCK_DIR") || "/var/run/bin-proxy"),
    downloadBaseUrl: url("DOWNLOAD_BASE_URL", raw("DOWNLOAD_BASE_URL") || `${api}/download`),
    token,
    stateDir: absolutePath("BIN_PROXY_STATE_DIR", raw("BIN_PROXY_STATE_DIR") || "/var/lib/bin-proxy"),
    lockTimeoutSec: integer("LOCK_TIMEOUT", raw("LOCK_TIMEOUT"), 600, 1),
    splaySec: integer("BIN_PROXY_SPLAY", raw("BIN_PROXY_SPLAY"), 0, 0),
    supervisorctl: supervisorctlPath(raw("SUPERVISORCTL")),
    restartsDisabled: raw("SUPERVISORCTL") === "",
    supervisorctlConfig: raw("SUPERVISORCTL_CONFIG") ? readableFile("SUPERVISORCTL_CONFIG", raw("SUPERVISORCTL_CONFIG")!) : null,
    nodeName,
    httpTimeoutMs: integer("HTTP_TIMEOUT", raw("HTTP_TIMEOUT"), 30, 1) * 1000,
    maxDownloadBytes: integer("MAX_DOWNLOAD_BYTES", raw("MAX_DOWNLOAD_BYTES"), 4294967296, 1),
    retryBackoffSec: integer("BIN_PROXY_RETRY_BACKOFF", raw("BIN_PROXY_RETRY_BACKOFF"), 600, 0),
    healthTimeoutMs: integer("BIN_PROXY_HEALTH_TIMEOUT", raw("BIN_PROXY_HEALTH_TIMEOUT"), 30, 1) * 1000,
    trustedKeys: raw("BIN_PROXY_TRUSTED_KEYS")
      ? { path: absolutePath("BIN_PROXY_TRUSTED_KEYS", raw("BIN_PROXY_TRUSTED_KEYS")!), required: true }
      : { path: DEFAULT_TRUSTED_KEYS, required: false },
    metricsFile: raw("BIN_PROXY_METRICS_FILE") ? absolutePath("BIN_PROXY_METRICS_FILE", raw("BIN_PROXY_METRICS_FILE")!) : null,
    proxy: {
      // curl's order: the lower-case form first (only it, for http_proxy, in CGI-safe tools).
      http: proxyUrl(raw("http_proxy") ? "http_proxy" : "HTTP_PROXY", raw("http_proxy") || raw("HTTP_PROXY")),
      https: proxyUrl(raw("https_proxy") ? "https_proxy" : "HTTPS_PROXY", raw("https_proxy") || raw("HTTPS_PROXY")),
      noProxy: raw("no_proxy") || raw("NO_PROXY") || undefined,
    },
  };
}

function url(key: Key, value: string): string {
  let parsed: URL;
  try {
    parsed = new URL(value);
  } catch {
    throw new ConfigError(`${key} must be an http:// or https:// URL, got ${JSON.stringify(value)}`, key);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new ConfigError(`${key} must be an http:// or https:// URL, got ${JSON.stringify(value)}`, key);
  }
  if (parsed.username || parsed.password) throw new ConfigError(`${key} must not carry credentials; use BIN_MANAGER_TOKEN`, key);
  return value.replace(/\/+$/, "");
}

/** A proxy URL; credentials in it are allowed (user:pass@host), but are never logged. */
function proxyUrl(key: Key, value: string | undefined): string | undefined {
  if (!value) return undefined;
  let parsed: URL;
  try {
    parsed = new URL(value.includes("://") ? value : `http://${value}`);
  } catch {
    // Whatever stands before the last "@" may be a password, with or without a scheme: never quoted.
    throw new ConfigError(`${key} must be a proxy URL such as http://proxy.example:3128, got ${JSON.stringify(value.replace(/^([a-z][a-z0-9+.-]*:\/\/)?.*@/is, "$1…@"))}`, key);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") throw new ConfigError(`${key} must be an http:// or https:// proxy URL`, key);
  return parsed.href;
}

function absolutePath(key: Key, value: string): string {
  if (!isAbsolute(value) || value.includes("\0")) throw new ConfigError(`${key} must be an absolute path, got ${JSON.stringify(value)}`, key);
  return value.length > 1 ? value.replace(/\/+$/, "") : value;
}

function integer(key: Key, value: string | undefined, fallback: number, min: number): number {
  if (value === undefined || value === "") return fallback;
  if (!/^\d{1,16}$/.test(value.trim()) || Number(value) < min) {
    throw new ConfigError(`${key} must be a whole number >= ${min}, got ${JSON.stringify(value)}`, key);
  }
  return Number(value);
}

/** SUPERVISORCTL set to "" disables restarts; unset means: look on PATH, then the usual places. */
function supervisorctlPath(value: string | undefined): string | null {
  if (value === "") return null;
  if (value !== undefined) {
    if (!isAbsolute(value) || !isExecutable(value)) {
      const hint = /\s/.test(value) ? " (it is a path only: give supervisorctl's -c file as SUPERVISORCTL_CONFIG)" : "";
      throw new ConfigError(`SUPERVISORCTL is not an executable file: ${value}${hint}`, "SUPERVISORCTL");
    }
    return value;
  }
  const dirs = [...(process.env.PATH ?? "").split(delimiter).filter(isAbsolute), "/usr/bin", "/usr/local/bin"];
  return dirs.map((dir) => join(dir, "supervisorctl")).find(isExecutable) ?? null;
}

/** A file bin-proxy hands to another program (supervisorctl -c): it must exist and be readable now. */
function readableFile(key: Key, value: string): string {
  const path = absolutePath(key, value);
  try {
    accessSync(path, constants.R_OK);
  } catch (err) {
    throw new ConfigError(`${key} is not a readable file: ${path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, key);
  }
  return path;
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}
