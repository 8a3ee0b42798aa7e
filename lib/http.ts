// Owns HTTP policy: who gets the token, which redirects are followed, time limits, and capped body reads.
export interface HttpPolicy {
  /** Sent as a Bearer token, and only to this origin (the API's). */
  token: string | undefined;
  tokenOrigin: string;
  timeoutMs: number;
}

export class HttpError extends Error {}

const MAX_REDIRECTS = 5;

/**
 * fetch with redirects followed by hand: at most five, never from https to http, and the token
 * only ever sent to the API's own origin. The signal bounds the whole exchange.
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
    let res: Response;
    try {
      res = await fetch(current, { method: init.method, body: init.body, headers, redirect: "manual", signal: init.signal });
    } catch (err) {
      throw new HttpError(`${init.method} ${describe(current)}: ${networkReason(err, init.signal)}`);
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
