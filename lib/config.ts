// Owns the settings: the shell-syntax config file, the environment, defaults, precedence and validation.
import { accessSync, constants, existsSync, readFileSync } from "node:fs";
import { hostname } from "node:os";
import { delimiter, isAbsolute, join } from "node:path";

export const DEFAULT_CONFIG_FILE = "/etc/bin-proxy/config";
export const DEFAULT_LOG_FILE = "/var/log/bin-proxy.log";

export interface Settings {
  api: string;
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

export const DEFAULT_TRUSTED_KEYS = "/etc/bin-proxy/trusted-keys";

export class ConfigError extends Error {
  /** LOG_FILE as the environment or config file set it, so that the failure can still be logged there. */
  logFile: string | undefined;
}

/** Every key bin-proxy reads, from the environment or the config file. */
export const SETTING_KEYS = [
  "BIN_MANAGER_API", "BIN_DIR", "BIN_MANIFESTS", "LOG_FILE", "LOCK_DIR", "DOWNLOAD_BASE_URL",
  "BIN_MANAGER_TOKEN", "BIN_PROXY_STATE_DIR", "LOCK_TIMEOUT", "BIN_PROXY_SPLAY", "SUPERVISORCTL",
  "NODE_NAME", "HTTP_TIMEOUT", "MAX_DOWNLOAD_BYTES", "BIN_PROXY_RETRY_BACKOFF", "BIN_PROXY_HEALTH_TIMEOUT",
  "BIN_PROXY_TRUSTED_KEYS", "BIN_PROXY_METRICS_FILE",
  "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy",
] as const;
type Key = (typeof SETTING_KEYS)[number];
type Lookup = (key: string) => string | undefined;

const ASSIGNMENT = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$/;

/**
 * Reads the assignments of a shell config file the way `sh` would for the syntax the old script's
 * config used: `KEY=value`, `export KEY="value"`, 'single quotes', comments, `$KEY`, `${KEY}` and
 * `${KEY:-default}` of keys defined above (else of the environment). Lines that are not assignments
 * (shell logic) are ignored; an assignment of a setting that uses syntax we cannot evaluate without
 * running a shell (command substitution) is an error, because guessing would be worse.
 */
export function parseShellConfig(text: string, env: Lookup): Map<string, string> {
  const values = new Map<string, string>();
  const lookup: Lookup = (key) => values.get(key) ?? env(key);
  text.split("\n").forEach((rawLine, index) => {
    const line = rawLine.trim();
    const match = ASSIGNMENT.exec(line);
    if (!match) return;
    const [, key = "", rest = ""] = match;
    try {
      values.set(key, parseShellWord(rest, lookup));
    } catch (err) {
      if ((SETTING_KEYS as readonly string[]).includes(key)) {
        throw new ConfigError(`config line ${index + 1}: ${key}: ${(err as Error).message}`);
      }
    }
  });
  return values;
}

function parseShellWord(input: string, lookup: Lookup): string {
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
  return out;
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

/** Which config file to read, and whether its absence is an error (only the default may be missing). */
export function configFileChoice(source: ConfigSource): { path: string; required: boolean } {
  if (source.configFlag !== undefined) return { path: source.configFlag, required: true };
  const fromEnv = source.env.BIN_PROXY_CONFIG;
  if (fromEnv) return { path: fromEnv, required: true };
  return { path: DEFAULT_CONFIG_FILE, required: false };
}

/** Reads the config file and environment, and validates every setting. Throws ConfigError. */
export function loadSettings(source: ConfigSource): Settings {
  const { path, required } = configFileChoice(source);
  let fileValues = new Map<string, string>();
  if (existsSync(path) || required) {
    let text: string;
    try {
      text = readFileSync(path, "utf8");
    } catch (err) {
      throw new ConfigError(`cannot read config file ${path}: ${(err as Error).message}`);
    }
    fileValues = parseShellConfig(text, (key) => source.env[key]);
  }
  // Environment over file, as SPEC §3 orders them; an empty environment value still counts as set.
  const raw = (key: Key): string | undefined => source.env[key] ?? fileValues.get(key);
  try {
    return resolveSettings(raw);
  } catch (err) {
    if (err instanceof ConfigError) err.logFile = raw("LOG_FILE") || undefined;
    throw err;
  }
}

/** Applies defaults and validates each value; pure apart from locating supervisorctl and the host name. */
export function resolveSettings(raw: (key: Key) => string | undefined): Settings {
  const api = url("BIN_MANAGER_API", raw("BIN_MANAGER_API") || "http://localhost:8080/api/v1");
  const token = raw("BIN_MANAGER_TOKEN") || undefined;
  if (token !== undefined && /[\r\n]/.test(token)) throw new ConfigError("BIN_MANAGER_TOKEN must be one line");
  const nodeName = raw("NODE_NAME") || hostname();
  if (!/^[\x21-\x7e]{1,253}$/.test(nodeName)) throw new ConfigError(`NODE_NAME must be 1-253 printable characters without spaces, got ${JSON.stringify(nodeName)}`);
  return {
    api,
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
      http: proxyUrl("HTTP_PROXY", raw("http_proxy") || raw("HTTP_PROXY")),
      https: proxyUrl("HTTPS_PROXY", raw("https_proxy") || raw("HTTPS_PROXY")),
      noProxy: raw("no_proxy") || raw("NO_PROXY") || undefined,
    },
  };
}

function url(key: Key, value: string): string {
  let parsed: URL;
  try {
    parsed = new URL(value);
  } catch {
    throw new ConfigError(`${key} must be an http:// or https:// URL, got ${JSON.stringify(value)}`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new ConfigError(`${key} must be an http:// or https:// URL, got ${JSON.stringify(value)}`);
  }
  if (parsed.username || parsed.password) throw new ConfigError(`${key} must not carry credentials; use BIN_MANAGER_TOKEN`);
  return value.replace(/\/+$/, "");
}

/** A proxy URL; credentials in it are allowed (user:pass@host), but are never logged. */
function proxyUrl(key: Key, value: string | undefined): string | undefined {
  if (!value) return undefined;
  let parsed: URL;
  try {
    parsed = new URL(value.includes("://") ? value : `http://${value}`);
  } catch {
    throw new ConfigError(`${key} must be a proxy URL such as http://proxy.example:3128, got ${JSON.stringify(value.replace(/\/\/[^@/]*@/, "//…@"))}`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") throw new ConfigError(`${key} must be an http:// or https:// proxy URL`);
  return parsed.href;
}

function absolutePath(key: Key, value: string): string {
  if (!isAbsolute(value) || value.includes("\0")) throw new ConfigError(`${key} must be an absolute path, got ${JSON.stringify(value)}`);
  return value.length > 1 ? value.replace(/\/+$/, "") : value;
}

function integer(key: Key, value: string | undefined, fallback: number, min: number): number {
  if (value === undefined || value === "") return fallback;
  if (!/^\d{1,16}$/.test(value.trim()) || Number(value) < min) {
    throw new ConfigError(`${key} must be a whole number >= ${min}, got ${JSON.stringify(value)}`);
  }
  return Number(value);
}

/** SUPERVISORCTL set to "" disables restarts; unset means: look on PATH, then the usual places. */
function supervisorctlPath(value: string | undefined): string | null {
  if (value === "") return null;
  if (value !== undefined) {
    if (!isAbsolute(value) || !isExecutable(value)) throw new ConfigError(`SUPERVISORCTL is not an executable file: ${value}`);
    return value;
  }
  const dirs = [...(process.env.PATH ?? "").split(delimiter).filter(isAbsolute), "/usr/bin", "/usr/local/bin"];
  return dirs.map((dir) => join(dir, "supervisorctl")).find(isExecutable) ?? null;
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}
