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
  init: { method: "GET" | "POST"; body?: string; signal: AbortSignal },
  policy: HttpPolicy,
): Promise<Response> {
  let current = new URL(url);
  for (let hop = 0; ; hop++) {
    const headers: Record<string, string> = { "user-agent": "bin-proxy" };
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
  const e = err as { code?: string; message?: string };
  return [e.code, e.message].filter(Boolean).join(": ") || String(err);
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
