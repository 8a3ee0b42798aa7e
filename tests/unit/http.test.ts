// Unit tests of the proxy decisions (pure), and of request() through a real tinyproxy: the token rule, proxy failures, Bun's own proxy environment overruled.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { ProxySettings } from "../../lib/config.ts";
import { bypassesProxy, isLoopback, proxyFor, proxyName, proxyRefusal, request, type HttpPolicy } from "../../lib/http.ts";
import { startForwardProxy, type ForwardProxy } from "../fixture/forward-proxy.ts";
import { freePort } from "../fixture/host.ts";

const u = (s: string) => new URL(s);
const settings = (p: Partial<ProxySettings>): ProxySettings => ({ http: undefined, https: undefined, noProxy: undefined, ...p });

describe("NO_PROXY matching", () => {
  const cases: [string, string, boolean][] = [
    ["*", "http://anything.example/", true],
    ["example.com", "http://example.com/", true],
    ["example.com", "http://www.example.com/", true],
    [".example.com", "http://www.example.com/", true],
    [".example.com", "http://example.com/", true],
    ["*.example.com", "http://a.b.example.com/", true],
    ["example.com", "http://badexample.com/", false],
    ["example.com", "http://example.com.evil/", false],
    ["EXAMPLE.com", "http://Example.COM/", true],
    ["example.com.", "http://example.com/", true],
    ["example.com:8080", "http://example.com:8080/", true],
    ["example.com:8080", "http://example.com:9090/", false],
    ["example.com:443", "https://example.com/", true],
    ["example.com:80", "https://example.com/", false],
    ["10.1.2.3", "http://10.1.2.3:8080/", true],
    ["10.1.2.3", "http://10.1.2.30/", false],
    ["10.0.0.0/8", "http://10.200.3.4/", true],
    ["10.0.0.0/8", "http://11.0.0.1/", false],
    ["192.168.1.0/24", "http://192.168.2.1/", false],
    ["2.3", "http://1.2.3/", false], // an IP literal (normalised 1.2.0.3) never matches by suffix
    ["::1", "http://[::1]:8080/", true],
    ["[fd00::5]:8080", "http://[fd00::5]:8080/", true],
    ["fd00::5", "http://[fd00::6]/", false],
    ["a.test, b.test  c.test", "http://c.test/", true],
    ["a.test,,", "http://b.test/", false],
    ["", "http://example.com/", false],
  ];
  for (const [noProxy, url, expected] of cases) {
    test(`${JSON.stringify(noProxy)} ${expected ? "exempts" : "does not exempt"} ${url}`, () => {
      expect(bypassesProxy(u(url), noProxy)).toBe(expected);
    });
  }
});

describe("which proxy a request goes through", () => {
  const both = settings({ http: "http://p:3128/", https: "http://s:3128/" });

  test("https URLs use HTTPS_PROXY and http URLs HTTP_PROXY, neither falling back on the other", () => {
    expect(proxyFor(u("https://api.example/x"), both)).toBe("http://s:3128/");
    expect(proxyFor(u("http://api.example/x"), both)).toBe("http://p:3128/");
    expect(proxyFor(u("https://api.example/x"), settings({ http: "http://p:3128/" }))).toBeNull();
    expect(proxyFor(u("http://api.example/x"), settings({ https: "http://s:3128/" }))).toBeNull();
  });

  test("NO_PROXY exempts", () => {
    expect(proxyFor(u("https://api.example/x"), { ...both, noProxy: "xample" })).toBe("http://s:3128/");
    expect(proxyFor(u("https://api.example/x"), { ...both, noProxy: ".example" })).toBeNull();
  });

  test("loopback is always direct, whatever NO_PROXY says", () => {
    for (const url of ["http://127.0.0.1:8080/", "http://127.9.9.9/", "http://localhost/", "http://LOCALHOST:1/", "http://api.localhost/", "http://[::1]/", "http://[::ffff:127.0.0.1]/"]) {
      expect(proxyFor(u(url), { ...both, noProxy: "other.example" })).toBeNull();
    }
    expect(isLoopback("128.0.0.1")).toBe(false);
    expect(isLoopback("localhost.example")).toBe(false);
    expect(isLoopback("[::2]")).toBe(false);
  });

  test("a proxy is named by host:port, never with its credentials", () => {
    expect(proxyName("http://alice:s3cret@proxy.example:3128/")).toBe("proxy.example:3128");
    expect(proxyName("http://proxy.example/")).toBe("proxy.example:80");
    expect(proxyName("https://proxy.example/")).toBe("proxy.example:443");
  });
});

describe("an answer that is the proxy's own failure", () => {
  const answer = (status: number, headers: Record<string, string> = {}) => ({ status, headers: new Headers(headers) });

  test("407 always; a 5xx without Via; never an https answer (it came through the tunnel)", () => {
    expect(proxyRefusal(u("http://api.example/"), answer(407))).toContain("HTTP 407");
    expect(proxyRefusal(u("http://api.example:81/"), answer(500))).toBe("answered HTTP 500 itself (no Via header): it could not reach api.example:81");
    expect(proxyRefusal(u("http://api.example/"), answer(502, { via: "1.1 cache.example (tinyproxy/1.11.1)" }))).toBeNull();
    expect(proxyRefusal(u("http://api.example/"), answer(404))).toBeNull();
    expect(proxyRefusal(u("https://api.example/"), answer(407))).toBeNull();
  });
});

// ---------------------------------------------------------------------------------------------
// request() through a real proxy. The origin is reached by a name only the proxy resolves:
// bin-proxy sends loopback addresses directly.

let proxy: ForwardProxy;
let authProxy: ForwardProxy;
let origin: ReturnType<typeof Bun.serve>;
const seen: { path: string; authorization: string | null }[] = [];
const NAME = "origin.test";

beforeAll(async () => {
  origin = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      const url = new URL(req.url);
      seen.push({ path: url.pathname, authorization: req.headers.get("authorization") });
      return url.pathname === "/fail" ? new Response("down", { status: 502 }) : new Response("ok");
    },
  });
  [proxy, authProxy] = await Promise.all([
    startForwardProxy({ hosts: { [NAME]: "127.0.0.1" } }),
    startForwardProxy({ hosts: { [NAME]: "127.0.0.1" }, basicAuth: { user: "alice", password: "s3cret" } }),
  ]);
});

afterAll(async () => {
  await Promise.all([proxy?.stop(), authProxy?.stop()]);
  origin?.stop(true);
});

const policy = (p: Partial<ProxySettings>, token?: string, tokenOrigin = `http://${NAME}:${origin.port}`): HttpPolicy => ({
  token,
  tokenOrigin,
  timeoutMs: 10_000,
  proxy: settings(p),
});
const get = (url: string, pol: HttpPolicy) => request(url, { method: "GET", signal: AbortSignal.timeout(10_000) }, pol);

describe("request() through a real proxy", () => {
  test("goes through HTTP_PROXY, and the proxy sees the request", async () => {
    const before = proxy.requests().length;
    const res = await get(`http://${NAME}:${origin.port}/a?sha256=1`, policy({ http: proxy.url }));
    expect(await res.text()).toBe("ok");
    expect(proxy.requests().slice(before)).toEqual([`GET http://${NAME}:${origin.port}/a?sha256=1`]);
  });

  test("refuses to send the token in clear text through a plain-http proxy hop, sending nothing", async () => {
    const before = proxy.requests().length;
    const url = `http://${NAME}:${origin.port}/api`;
    await expect(get(url, policy({ http: proxy.url }, "tok-secret"))).rejects.toThrow(`refusing to send BIN_MANAGER_TOKEN in clear text through proxy ${proxy.hostPort}`);
    expect(proxy.requests().length).toBe(before);
    // The same request without a token, or to another origin, goes through.
    expect((await get(url, policy({ http: proxy.url }))).status).toBe(200);
    expect((await get(url, policy({ http: proxy.url }, "tok-secret", "https://elsewhere.example"))).status).toBe(200);
    expect(seen.filter((s) => s.authorization !== null)).toEqual([]);
  });

  test("a dead proxy is a proxy failure naming it, never its credentials", async () => {
    const port = await freePort();
    for (const scheme of ["http", "https"] as const) {
      const attempt = get(`${scheme}://${NAME}:${origin.port}/`, policy({ [scheme]: `http://bob:hunter2@127.0.0.1:${port}` }));
      await expect(attempt).rejects.toThrow(`proxy failure: proxy 127.0.0.1:${port} unreachable`);
      const message = await attempt.catch((e: Error) => e.message);
      expect(message).not.toContain("hunter2");
      expect(message).not.toContain("bob");
    }
  });

  test("a proxy that wants credentials (407) is a proxy failure; with them, the request goes through", async () => {
    const url = `http://${NAME}:${origin.port}/b`;
    await expect(get(url, policy({ http: authProxy.url }))).rejects.toThrow(`proxy failure: proxy ${authProxy.hostPort} answered HTTP 407`);
    await expect(get(`https://${NAME}:${origin.port}/b`, policy({ https: authProxy.url }))).rejects.toThrow(
      `proxy failure: proxy ${authProxy.hostPort} refused the tunnel (Proxy refused to open a tunnel: 407`,
    );
    const withCredentials = authProxy.url.replace("//", "//alice:s3cret@");
    expect(await (await get(url, policy({ http: withCredentials }))).text()).toBe("ok");
  });

  test("a proxy that cannot reach the server says so; the server's own 502 through the proxy stays the server's", async () => {
    const closed = await freePort();
    await expect(get(`http://${NAME}:${closed}/`, policy({ http: proxy.url }))).rejects.toThrow(
      `proxy failure: proxy ${proxy.hostPort} answered HTTP 500 itself (no Via header): it could not reach ${NAME}:${closed}`,
    );
    await expect(get(`https://${NAME}:${closed}/`, policy({ https: proxy.url }))).rejects.toThrow(`proxy failure: proxy ${proxy.hostPort} refused the tunnel`);
    expect((await get(`http://${NAME}:${origin.port}/fail`, policy({ http: proxy.url }))).status).toBe(502);
  });

  test("Bun's own reading of the environment is overruled: HTTP_PROXY there is not used, NO_PROXY there does not exempt", async () => {
    const saved = { HTTP_PROXY: process.env.HTTP_PROXY, NO_PROXY: process.env.NO_PROXY };
    try {
      process.env.HTTP_PROXY = `http://127.0.0.1:${await freePort()}`; // dead: using it would fail
      const direct = await get(`http://127.0.0.1:${origin.port}/direct`, policy({}));
      expect(await direct.text()).toBe("ok");
      process.env.NO_PROXY = "*";
      const before = proxy.requests().length;
      await (await get(`http://${NAME}:${origin.port}/proxied`, policy({ http: proxy.url }))).text();
      expect(proxy.requests().length).toBe(before + 1);
    } finally {
      for (const [key, value] of Object.entries(saved)) {
        if (value === undefined) delete process.env[key];
        else process.env[key] = value;
      }
    }
  });
});
