// Owns HTTP policy: who gets the token, which redirects are followed, which proxy each request goes through, time limits, and capped body reads.
import { isIP } from "node:net";
import type { ProxySettings } from "./config.ts";

export interface HttpPolicy {
  /** Sent as a Bearer token, and only to this origin (the API's). */
  token: string | undefined;
  tokenOrigin: string;
  timeoutMs: number;
  /** HTTP_PROXY/HTTPS_PROXY/NO_PROXY as the settings resolved them, from the environment or the config file. */
  proxy: ProxySettings;
}

/**
 * A request that did not get an answer worth reading. transient: the network or a proxy failed and
 * a later try may get through; otherwise (a refused redirect, the token rule, a proxy asking for
 * credentials) only a change of configuration helps.
 */
export class HttpError extends Error {
  constructor(message: string, readonly transient = false) {
    super(message);
  }
}

const MAX_REDIRECTS = 5;

/**
 * fetch with redirects followed by hand: at most five, never from https to http, and the token
 * only ever sent to the API's own origin. Each hop goes through the proxy proxyFor() names, or
 * directly: always said explicitly, so that Bun's own reading of HTTP_PROXY/NO_PROXY from the
 * environment can never disagree with settings that came from the config file. The token never
 * crosses a proxy in clear text: only inside an https tunnel (CONNECT). The signal bounds the
 * whole exchange.
 */
export async function request(
  url: string,
  init: { method: "GET" | "POST"; body?: string; signal: AbortSignal; headers?: Record<string, string> },
  policy: HttpPolicy,
): Promise<Response> {
  let current = new URL(url);
  for (let hop = 0; ; hop++) {
    // The caller's headers (a download's Range) go to every hop: a redirect names where the same bytes are.
    const headers: Record<string, string> = { "user-agent": "bin-proxy", ...init.headers };
    if (init.body !== undefined) headers["content-type"] = "application/json";
    if (policy.token && current.origin === policy.tokenOrigin) headers.authorization = `Bearer ${policy.token}`;
    const via = proxyFor(current, policy.proxy);
    if (via && current.protocol === "http:" && headers.authorization) {
      throw new HttpError(
        `${init.method} ${describe(current)}: refusing to send BIN_MANAGER_TOKEN in clear text through proxy ${proxyName(via)}: ` +
          `use an https:// URL (the proxy then only tunnels it) or name ${current.hostname} in NO_PROXY`,
      );
    }
    let res: Response;
    try {
      res = await fetch(current, {
        method: init.method,
        body: init.body,
        headers,
        redirect: "manual",
        signal: init.signal,
        // respectNoProxy: false, because NO_PROXY was already applied, from wherever it was set.
        proxy: via ? { url: via, respectNoProxy: false } : false,
      });
    } catch (err) {
      throw new HttpError(`${init.method} ${describe(current)}: ${via ? proxiedReason(err, via, init.signal) : networkReason(err, init.signal)}`, true);
    }
    const refusal = via && proxyRefusal(current, res);
    if (refusal) {
      await res.body?.cancel();
      throw new HttpError(`${init.method} ${describe(current)}: proxy failure: proxy ${proxyName(via)} ${refusal}`, res.status !== 407);
    }
    if (res.status < 300 || res.status >= 400 || !res.headers.has("location")) return res;
    await res.body?.cancel();
    if (hop >= MAX_REDIRECTS) throw new HttpError(`${describe(current)}: more than ${MAX_REDIRECTS} redirects`);
    const next = new URL(res.headers.get("location")!, current);
    if (next.protocol !== "https:" && next.protocol !== "http:") throw new HttpError(`${describe(current)}: redirect to unsupported ${next.protocol} URL refused`);
    if (current.protocol === "https:" && next.protocol === "http:") {
      throw new HttpError(`${describe(current)}: redirect from https to http refused (${describe(next)})`);
    }
    current = next;
  }
}

/** A URL as it may be logged: no query string, no credentials. */
export function describe(url: URL | string): string {
  const u = new URL(url);
  return `${u.origin}${u.pathname}`;
}

/**
 * The proxy a request to url goes through (its URL, credentials included), or null to connect
 * directly (pure). https URLs use HTTPS_PROXY and http URLs HTTP_PROXY, neither falling back on the
 * other (as curl and Go do). Loopback (localhost, 127.0.0.0/8, ::1) is always direct, whatever
 * NO_PROXY says: a proxy elsewhere cannot reach this host's loopback.
 */
export function proxyFor(url: URL, proxy: ProxySettings): string | null {
  const chosen = url.protocol === "https:" ? proxy.https : proxy.http;
  if (!chosen || isLoopback(url.hostname) || bypassesProxy(url, proxy.noProxy)) return null;
  return chosen;
}

export function isLoopback(hostname: string): boolean {
  const host = bareHost(hostname);
  if (host === "localhost" || host.endsWith(".localhost")) return true;
  if (isIP(host) === 4) return host.startsWith("127.");
  return isIP(host) === 6 && (host === "::1" || /^::ffff:(127\.|7f[0-9a-f]{2}:)/.test(host));
}

/**
 * Whether NO_PROXY exempts url (pure). Entries are separated by commas or spaces, compared without
 * case: `*` exempts everything; `example.com` and `.example.com` exempt that host and every name
 * under it (never `badexample.com`); an IP address exempts itself, and `10.0.0.0/8` an IPv4 range;
 * an entry may end in `:port`, exempting only that port (the URL's default port counts).
 */
export function bypassesProxy(url: URL, noProxy: string | undefined): boolean {
  if (!noProxy) return false;
  const host = bareHost(url.hostname);
  const port = url.port || (url.protocol === "https:" ? "443" : "80");
  return noProxy.split(/[\s,]+/).some((raw) => {
    const entry = raw.trim().toLowerCase();
    if (entry === "") return false;
    if (entry === "*") return true;
    const [name, entryPort] = splitPort(entry);
    if (entryPort !== null && entryPort !== port) return false;
    if (name.includes("/")) return inIpv4Range(host, name);
    const domain = name.replace(/^\*?\./, "").replace(/\.$/, "");
    return host === domain || (isIP(host) === 0 && host.endsWith(`.${domain}`));
  });
}

/** [::1] as URL.hostname gives it, to ::1; names lower-case, without a trailing dot. */
function bareHost(hostname: string): string {
  return hostname.replace(/^\[(.*)\]$/, "$1").replace(/\.$/, "").toLowerCase();
}

/** "host:port", "[v6]:port", a bare IPv6 address or a name: the name (brackets removed) and the port, if any. */
function splitPort(entry: string): [string, string | null] {
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(entry);
  if (bracketed) return [bracketed[1]!, bracketed[2] ?? null];
  if (isIP(entry) === 6) return [entry, null];
  const withPort = /^(.*):(\d+)$/.exec(entry);
  return withPort ? [withPort[1]!, withPort[2]!] : [entry, null];
}

function inIpv4Range(host: string, cidr: string): boolean {
  const [base = "", bitsText = ""] = cidr.split("/");
  const bits = Number(bitsText);
  if (isIP(host) !== 4 || isIP(base) !== 4 || !/^\d{1,2}$/.test(bitsText) || bits > 32) return false;
  const toInt = (ip: string) => ip.split(".").reduce((n, octet) => n * 256 + Number(octet), 0);
  const size = 2 ** (32 - bits);
  return Math.floor(toInt(host) / size) === Math.floor(toInt(base) / size);
}

/** A proxy as it may be logged: host:port, never its credentials. */
export function proxyName(proxyUrl: string): string {
  const u = new URL(proxyUrl);
  return u.port ? u.host : `${u.host}:${u.protocol === "https:" ? 443 : 80}`;
}

/**
 * When an answer to a plain-http request through a proxy is the proxy's own failure, why (pure).
 * A 407 always is. A 5xx is when it carries no Via header: a proxy must add Via to every answer it
 * forwards (RFC 9110 §7.6.3), so one without it was made by the proxy (it could not reach the
 * server). An https answer comes through the tunnel untouched: the proxy's refusals of a tunnel
 * are fetch errors instead (proxiedReason).
 */
export function proxyRefusal(url: URL, res: { status: number; headers: Headers }): string | null {
  if (url.protocol !== "http:") return null;
  if (res.status === 407) return "answered HTTP 407 (proxy authentication required): give its user and password as http://user:password@host:port";
  if (res.status >= 500 && !res.headers.has("via")) return `answered HTTP ${res.status} itself (no Via header): it could not reach ${url.host}`;
  return null;
}

// What fetch reports when the connection to the proxy itself failed: through a proxy, that is the only connection fetch opens.
const PROXY_CONNECTION_FAILURE = /^(ECONNREFUSED|ConnectionRefused|ENOTFOUND|EAI_AGAIN|DNSException|EHOSTUNREACH|ENETUNREACH|FailedToOpenSocket|ConnectionClosed)$/;

/** Why a request through a proxy failed: a failure of the proxy says so and names it; anything else says which proxy it went through. */
function proxiedReason(err: unknown, via: string, signal: AbortSignal): string {
  const reason = networkReason(err, signal);
  const code = (err as { code?: unknown }).code;
  if (!signal.aborted && code === "ERR_PROXY_TUNNEL") return `proxy failure: proxy ${proxyName(via)} refused the tunnel (${reason.replace(/^ERR_PROXY_TUNNEL: /, "")})`;
  if (!signal.aborted && typeof code === "string" && PROXY_CONNECTION_FAILURE.test(code)) return `proxy failure: proxy ${proxyName(via)} unreachable (${reason})`;
  return `${reason} (through proxy ${proxyName(via)})`;
}

function networkReason(err: unknown, signal: AbortSignal): string {
  if (signal.aborted) return signal.reason instanceof Error && signal.reason.name === "TimeoutError" ? "timed out" : String(signal.reason?.message ?? "aborted");
  return fetchFailure(err);
}

// OpenSSL's verification failures, as fetch reports them in `code`.
const UNTRUSTED_CERTIFICATE = /^(UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT(_LOCALLY)?|SELF_SIGNED_CERT_IN_CHAIN|DEPTH_ZERO_SELF_SIGNED_CERT|CERT_UNTRUSTED)$/;
const CERTIFICATE_PROBLEM = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|UNABLE_TO_GET_ISSUER/;

/**
 * What made a fetch or a body read fail, in words an operator can act on. Bun's advice to pass
 * `verbose: true` is dropped, and so is the URL it repeats (the caller names the URL, without its
 * query string). A refused certificate says what to check.
 */
export function fetchFailure(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown };
  const code = typeof e.code === "string" ? e.code : "";
  const message = (typeof e.message === "string" ? e.message : String(err))
    .replace(/ fetching "[^"]*"/, "")
    .replace(/\.? *For more information, pass `verbose: true`.*$/s, "")
    .trim();
  const text = code && !message.startsWith(code) ? `${code}: ${message}` : message || code;
  if (!CERTIFICATE_PROBLEM.test(code)) return text;
  const advice = UNTRUSTED_CERTIFICATE.test(code)
    ? "not signed by a trusted CA; for a private CA, set NODE_EXTRA_CA_CERTS to its certificate file"
    : code === "ERR_TLS_CERT_ALTNAME_INVALID"
      ? "the certificate was not issued for this host name"
      : "the certificate is not valid";
  return `TLS certificate refused (${text}): ${advice}`;
}

/**
 * One whole exchange under the API's rules (SPEC §5): one timeout for all of it, and a body of at
 * most maxBytes. A non-2xx answer is an HttpError, with what statusNote reads from it (the API's
 * own message, a hint) appended.
 */
export async function exchange(
  url: string,
  init: { method: "GET" | "POST"; body?: string },
  policy: HttpPolicy,
  what: string,
  maxBytes: number,
  statusNote: (res: Response) => Promise<string> = async () => "",
): Promise<Uint8Array> {
  const signal = AbortSignal.timeout(policy.timeoutMs);
  try {
    const res = await request(url, { ...init, signal }, policy);
    if (!res.ok) {
      const note = await statusNote(res);
      if (!res.bodyUsed) await res.body?.cancel();
      throw new HttpError(`${what}: HTTP ${res.status}${note}`);
    }
    return await readCapped(res, maxBytes, what);
  } catch (err) {
    if (err instanceof HttpError) throw err;
    throw new HttpError(`${what}: ${signal.aborted ? `no answer within ${policy.timeoutMs / 1000}s` : fetchFailure(err)}`, true);
  }
}

/** Reads a body of at most maxBytes, refusing a larger one without reading it all. */
export async function readCapped(res: Response, maxBytes: number, what: string): Promise<Uint8Array> {
  const declared = Number(res.headers.get("content-length"));
  if (declared > maxBytes) {
    await res.body?.cancel();
    throw new HttpError(`${what}: body of ${declared} bytes is over the ${maxBytes}-byte limit`);
  }
  const chunks: Uint8Array[] = [];
  let total = 0;
  if (res.body) {
    const reader = res.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.length;
      if (total > maxBytes) {
        await reader.cancel();
        throw new HttpError(`${what}: body is over the ${maxBytes}-byte limit`);
      }
      chunks.push(value);
    }
  }
  return Buffer.concat(chunks);
}
