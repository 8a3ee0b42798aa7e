// Owns the bin-manager API: the calls of SPEC §5, and validating every answer into a typed value.
import type { Settings } from "./config.ts";
import { parseSha256, type Sha256 } from "./hash.ts";
import { describe, exchange, readCapped, type HttpPolicy } from "./http.ts";
import { isObject, type Json } from "./json.ts";
import type { NodeInfo } from "./manifest.ts";

export class ApiError extends Error {}

export interface Target {
  sha256: Sha256;
  version: string;
}

export type ProgressStatus = "in_progress" | "success" | "failed";

export interface Progress {
  nodeName: string;
  binName: string;
  targetHash: Sha256;
  processingTime: number;
  status: ProgressStatus;
}

export interface Installed {
  nodeName: string;
  binName: string;
  sha256: Sha256;
  version: string;
}

const MAX_JSON_BYTES = 1 << 20;

/** The API's own words in an answer's {code, message} envelope, one line and at most 200 characters; "" when it has none. */
const messageOf = (body: Json): string => (typeof body.message === "string" ? body.message.replace(/\s+/g, " ").slice(0, 200) : "");

/** The payload of an answer: `data` of the {code, message, data} envelope, or the whole body of a build without one. */
export function unwrap(body: unknown): Json {
  if (!isObject(body)) throw new ApiError("answer is not a JSON object");
  if ("code" in body && body.code !== 0) {
    const message = messageOf(body);
    throw new ApiError(`API answered code ${JSON.stringify(body.code)}${message ? `: ${message}` : ""}`);
  }
  if ("data" in body) {
    if (!isObject(body.data)) throw new ApiError(`"data" is not an object`);
    return body.data;
  }
  return body;
}

export function parseTarget(body: unknown): Target {
  const data = unwrap(body);
  const sha256 = parseSha256(data.sha256);
  if (!sha256) throw new ApiError(`sha256 is not 64 hex digits: ${JSON.stringify(data.sha256 ?? null).slice(0, 80)}`);
  const version = typeof data.version === "string" ? data.version.slice(0, 200) : "";
  return { sha256, version };
}

export function parseKeepaliveStatus(body: unknown): string {
  const status = unwrap(body).status;
  return typeof status === "string" ? status : "";
}

/** The `message` of an error answer's {code, message} envelope, as ": message", or "" when it has none: the API's own words for the operator. */
async function apiMessage(res: Response, what: string): Promise<string> {
  try {
    const body: unknown = JSON.parse(new TextDecoder().decode(await readCapped(res, MAX_JSON_BYTES, what)));
    const message = isObject(body) ? messageOf(body) : "";
    return message ? `: ${message}` : "";
  } catch {
    return "";
  }
}

export class BinManagerClient {
  readonly policy: HttpPolicy;

  /**
   * readOnly (--dry-run): any POST is refused here, whatever the caller does. cpuArch: the
   * architecture GET /bins/{name} asks for, this host's unless a caller says otherwise.
   */
  constructor(private readonly settings: Settings, private readonly readOnly: boolean, private readonly cpuArch: string) {
    this.policy = { token: settings.token, tokenOrigin: new URL(settings.api).origin, timeoutMs: settings.httpTimeoutMs, proxy: settings.proxy };
  }

  async keepaliveStatus(nodeName: string): Promise<string> {
    return parseKeepaliveStatus(await this.call("GET", `/keepalive?nodeName=${encodeURIComponent(nodeName)}`));
  }

  async postKeepalive(info: NodeInfo): Promise<void> {
    const { cpuArch, osRelease, nodeName, binProxyVersion } = info;
    await this.call("POST", "/keepalive", { cpuArch, osRelease, nodeName, binProxyVersion });
  }

  /** The version this node should run (SPEC §10): the API may answer per node (staged rollouts) and per architecture. */
  async target(name: string): Promise<Target> {
    const query = new URLSearchParams({ nodeName: this.settings.nodeName, cpuArch: this.cpuArch });
    return parseTarget(await this.call("GET", `/bins/${name}?${query}`));
  }

  async progress(p: Progress): Promise<void> {
    const { nodeName, binName, targetHash, processingTime, status } = p;
    await this.call("POST", `/bins/${p.binName}/progress`, { nodeName, binName, targetHash, processingTime, status });
  }

  async installed(i: Installed): Promise<void> {
    const { nodeName, binName, sha256, version } = i;
    await this.call("POST", `/bins/${i.binName}`, { nodeName, binName, sha256, version });
  }

  /**
   * Where a binary is downloaded from: the primary location, then the fallback. Content-addressed
   * (SPEC §10): the query names the target, so a cache in front keys each version apart and can
   * never serve last week's bytes for this week's hash; a plain file server ignores it.
   */
  downloadUrls(name: string, target: Sha256): string[] {
    const query = `?sha256=${target}`;
    return [`${this.settings.downloadBaseUrl}/${name}${query}`, `${this.settings.api}/releases/latest/${name}/download${query}`];
  }

  private async call(method: "GET" | "POST", path: string, body?: object): Promise<unknown> {
    if (method === "POST" && this.readOnly) throw new ApiError(`refusing POST ${path} in a read-only pass`);
    const url = `${this.settings.api}${path}`;
    const what = `${method} ${describe(url)}`;
    const bytes = await exchange(url, { method, body: body && JSON.stringify(body) }, this.policy, what, MAX_JSON_BYTES, (res) => apiMessage(res, what));
    try {
      return JSON.parse(new TextDecoder().decode(bytes));
    } catch {
      throw new ApiError(`${what}: answer is not JSON (${bytes.length} bytes)`);
    }
  }
}
