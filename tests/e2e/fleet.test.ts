// End-to-end tests of SPEC §10: hosts told apart, content-addressed downloads through a real nginx cache, the architecture check, proxies through a real tinyproxy.
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { artifact, startBinManager, status, type Artifact, type BinManager, type RecordedRequest } from "../fixture/bin-manager.ts";
import { startForwardProxy, type ForwardProxy } from "../fixture/forward-proxy.ts";
import { BIN_PROXY, freePort, hostPool, runBinProxy, type Host } from "../fixture/host.ts";
import { startNginx, type Nginx } from "../fixture/nginx.ts";
import { makePki, type TestPki } from "../fixture/tls.ts";
import { events, expectWhole, MANIFEST_LOCK } from "./invariants.ts";

const API = "/api/v1";
/** An aarch64 ELF: the loader of Debian's libc6-arm64-cross (.ci/run installs it). */
const AARCH64_ELF = "/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1";
/** The name only the forward proxy resolves (to 127.0.0.1): bin-proxy sends loopback addresses directly. */
const PROXIED_NAME = "bin-manager.test";
/** The name the test PKI's "wrong name" certificate is issued for; the forward proxy resolves it too. */
const TLS_NAME = "not-this-host.invalid";
const FLEET = 10;

/** This machine as `uname -m` prints it, asked of uname itself rather than of the code under test. */
const UNAME_M = Bun.spawnSync(["uname", "-m"]).stdout.toString().trim();

let bm: BinManager;
let tlsBm: BinManager;
let pki: TestPki;
let cache: Nginx;
let pathKeyedCache: Nginx;
let proxy: ForwardProxy;
const hosts = hostPool();

beforeAll(async () => {
  pki = makePki();
  [bm, tlsBm] = await Promise.all([startBinManager(), startBinManager({ tls: pki.wrongName })]);
  [cache, pathKeyedCache, proxy] = await Promise.all([
    startNginx({ upstream: bm.origin, key: "uri" }),
    startNginx({ upstream: bm.origin, key: "path" }),
    startForwardProxy({ hosts: { [PROXIED_NAME]: "127.0.0.1", [TLS_NAME]: "127.0.0.1" } }),
  ]);
});

afterAll(async () => {
  await Promise.all([cache?.stop(), pathKeyedCache?.stop(), proxy?.stop(), bm?.stop(), tlsBm?.stop()]);
  pki?.cleanup();
  hosts.cleanup();
});

beforeEach(() => bm.clearRequests());

const entry = (name: string, fields: object = {}) => ({ serviceName: "", binaryName: name, version: "", previousVersion: "", port: 0, ...fields });
const entryOf = (host: Host, name: string) => host.readManifest().binaries.find((b) => b.binaryName === name)!;
const requestsTo = (server: BinManager, method: string, path: string): RecordedRequest[] => server.requests.filter((r) => r.method === method && r.path === path);
/** GETs of name's download at the origin, primary and fallback, as "primary <sha12>" / "fallback <sha12>". */
const originDownloads = (name: string): string[] =>
  bm.requests
    .filter((r) => r.method === "GET" && (r.path === `${API}/download/${name}` || r.path === `${API}/releases/latest/${name}/download`))
    .map((r) => `${r.path.startsWith(`${API}/download/`) ? "primary" : "fallback"} ${(r.query.sha256 ?? "none").slice(0, 12)}`);

/** A host with one managed binary at `current` (recorded in the manifest), or none yet. */
function hostWith(name: string, current: Artifact | null): Host {
  const host = hosts.make();
  if (current) host.writeBinary(name, current.bytes);
  host.writeManifest([entry(name, current ? { version: current.sha256 } : {})]);
  return host;
}

/** What a failed update must leave: the binary byte-identical, the manifest valid and unchanged in version, nothing else in BIN_DIR, no lock. */
function expectIntact(host: Host, name: string, current: Artifact): void {
  expect(readFileSync(join(host.binDir, name))).toEqual(Buffer.from(current.bytes));
  expect(expectWhole(host, name, [current])).toEqual({ onDisk: current.sha256, recorded: current.sha256 });
  expect(readdirSync(host.binDir)).toEqual([name]);
  expect(readdirSync(host.lockDir).filter((f) => f !== MANIFEST_LOCK)).toEqual([]);
}

describe("wire format", () => {
  test("GET /bins/{name} says who asks: nodeName and cpuArch as uname -m prints it", async () => {
    const v1 = artifact("#!/bin/sh\necho wire v1\n");
    bm.setTarget("wire", v1);
    const host = hostWith("wire", v1);
    const r = await runBinProxy([], host.env(bm.api, { NODE_NAME: "rack7-node03" }));
    expect(r.code).toBe(0);
    expect(requestsTo(bm, "GET", `${API}/bins/wire`).map((q) => q.query)).toEqual([{ nodeName: "rack7-node03", cpuArch: UNAME_M }]);
  });

  test("downloads are content-addressed: ?sha256=T on the primary URL and on the fallback", async () => {
    const v1 = artifact("#!/bin/sh\necho addressed v1\n");
    const v2 = artifact("#!/bin/sh\necho addressed v2\n");
    bm.setTarget("addressed", v2);
    bm.setPrimary("addressed", status(404));
    const host = hostWith("addressed", v1);
    const r = await runBinProxy([], host.env(bm.api));
    expect(r.code).toBe(0);
    const downloads = bm.requests.filter((q) => q.path.includes("/addressed") && !q.path.startsWith(`${API}/bins/`));
    expect(downloads.map((q) => ({ method: q.method, path: q.path, query: q.query }))).toEqual([
      { method: "GET", path: `${API}/download/addressed`, query: { sha256: v2.sha256 } },
      { method: "GET", path: `${API}/releases/latest/addressed/download`, query: { sha256: v2.sha256 } },
    ]);
    expect(readFileSync(join(host.binDir, "addressed"))).toEqual(Buffer.from(v2.bytes));
  });
});

describe("the architecture check", () => {
  /** An executable of the other architecture: on x86_64 the real aarch64 loader; elsewhere an x86_64 header on a stub. */
  function foreignElf(): { art: Artifact; names: string } {
    if (UNAME_M === "x86_64") {
      if (!existsSync(AARCH64_ELF)) throw new Error(`${AARCH64_ELF} not found: install Debian's libc6-arm64-cross (.ci/run does)`);
      return { art: artifact(readFileSync(AARCH64_ELF)), names: "the download is an ELF for aarch64 (AArch64), this host is x86_64" };
    }
    const header = new Uint8Array(4096);
    header.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
    new DataView(header.buffer).setUint16(18, 62, true);
    return { art: artifact(header), names: `the download is an ELF for x86_64 (x86-64), this host is ${UNAME_M}` };
  }

  test("an ELF for another architecture fails the update before anything is swapped, naming both", async () => {
    const v1 = artifact("#!/bin/sh\necho arch v1\n");
    const { art, names } = foreignElf();
    bm.setTarget("arch", art);
    const host = hostWith("arch", v1);
    const r = await runBinProxy([], host.env(bm.api));
    expect(r.code).toBe(1);
    expect(host.log()).toContain(names);
    expectIntact(host, "arch", v1);
    // Verified and then refused: one download, no report of an installed version.
    expect(originDownloads("arch")).toEqual([`primary ${art.sha256.slice(0, 12)}`]);
    expect(requestsTo(bm, "POST", `${API}/bins/arch`)).toEqual([]);
  });

  test("a script is not judged: it is installed", async () => {
    const v1 = artifact("#!/bin/sh\necho script v1\n");
    const v2 = artifact("#!/bin/sh\necho script v2\n");
    bm.setTarget("script", v2);
    const host = hostWith("script", v1);
    expect((await runBinProxy([], host.env(bm.api))).code).toBe(0);
    expect(readFileSync(join(host.binDir, "script"))).toEqual(Buffer.from(v2.bytes));
  });

  test("self-update asks with cpuArch, and an ELF for another architecture never replaces bin-proxy", async () => {
    const host = hosts.make();
    const exe = join(host.root, "sbin", "bin-proxy");
    mkdirSync(join(host.root, "sbin"));
    copyFileSync(BIN_PROXY, exe);
    chmodSync(exe, 0o755);
    const current = artifact(readFileSync(exe));
    host.writeManifest([entry("bin-proxy", { version: current.sha256 })]);
    const { art, names } = foreignElf();
    bm.setTarget("bin-proxy", art);
    const r = await runBinProxy([], host.env(bm.api, { NODE_NAME: "mixed-fleet-1" }), { executable: exe });
    expect(r.code).toBe(1);
    expect(requestsTo(bm, "GET", `${API}/bins/bin-proxy`).map((q) => q.query)).toEqual([{ nodeName: "mixed-fleet-1", cpuArch: UNAME_M }]);
    expect(host.log()).toContain(names);
    expect(readFileSync(exe)).toEqual(Buffer.from(current.bytes));
    expect(readdirSync(join(host.root, "sbin"))).toEqual(["bin-proxy"]);
    bm.setTarget("bin-proxy", null);
  }, 60_000);
});

describe("ten hosts behind one nginx cache", () => {
  /** Ten hosts, each with its own root and node name, all talking to the API through `via`. */
  function fleet(name: string, current: Artifact): Host[] {
    return Array.from({ length: FLEET }, () => hostWith(name, current));
  }
  const passAll = (fleetHosts: Host[], via: Nginx) =>
    Promise.all(fleetHosts.map((host, i) => runBinProxy([], host.env(`${via.url}${API}`, { NODE_NAME: `fleet-${String(i + 1).padStart(2, "0")}` }))));
  const onDisk = (host: Host, name: string) => readFileSync(join(host.binDir, name));
  const v = (name: string, n: number) => artifact(`#!/bin/sh\n# ${name} release ${n}\n${"x".repeat(256 * 1024)}\n`);

  test("keyed by the full URI: the origin serves each version once, every host gets every release, none held", async () => {
    const [v0, v1, v2] = [0, 1, 2].map((n) => v("cached", n)) as [Artifact, Artifact, Artifact];
    const fleetHosts = fleet("cached", v0);

    for (const release of [v1, v2]) {
      bm.clearRequests();
      bm.setTarget("cached", release);
      const runs = await passAll(fleetHosts, cache);
      expect(runs.map((r) => r.code)).toEqual(Array(FLEET).fill(0));
      for (const host of fleetHosts) {
        expect(onDisk(host, "cached")).toEqual(Buffer.from(release.bytes));
        expect(entryOf(host, "cached").hold).toBeUndefined();
        expect(events(host, "download_attempt_failed")).toEqual([]);
      }
      expect(originDownloads("cached")).toEqual([`primary ${release.sha256.slice(0, 12)}`]);
      // The API's answers are per node: every one of them reached the origin, none came from the cache.
      expect(requestsTo(bm, "GET", `${API}/bins/cached`).map((q) => q.query.nodeName).sort()).toEqual(
        Array.from({ length: FLEET }, (_, i) => `fleet-${String(i + 1).padStart(2, "0")}`),
      );
    }
  }, 120_000);

  test("keyed without the query (the old URLs): every host's download fails verification and falls back, then every host is held", async () => {
    const [v0, v1, v2, v3] = [0, 1, 2, 3].map((n) => v("stale", n)) as [Artifact, Artifact, Artifact, Artifact];
    const fleetHosts = fleet("stale", v0);

    bm.setTarget("stale", v1);
    expect((await passAll(fleetHosts, pathKeyedCache)).map((r) => r.code)).toEqual(Array(FLEET).fill(0));
    expect(originDownloads("stale")).toEqual([`primary ${v1.sha256.slice(0, 12)}`]);

    // A new release: the cache serves last release's bytes for the primary URL to every host.
    bm.clearRequests();
    bm.setTarget("stale", v2);
    expect((await passAll(fleetHosts, pathKeyedCache)).map((r) => r.code)).toEqual(Array(FLEET).fill(0));
    for (const host of fleetHosts) {
      expect(events(host, "download_attempt_failed").map((e) => e.reason)).toEqual([expect.stringContaining("content does not match")]);
      expect(onDisk(host, "stale")).toEqual(Buffer.from(v2.bytes));
    }
    expect(originDownloads("stale")).toEqual([`fallback ${v2.sha256.slice(0, 12)}`]);

    // The next release: now the fallback is stale in the cache too, and no host can update.
    bm.clearRequests();
    bm.setTarget("stale", v3);
    expect((await passAll(fleetHosts, pathKeyedCache)).map((r) => r.code)).toEqual(Array(FLEET).fill(1));
    for (const host of fleetHosts) {
      expectIntact(host, "stale", v2);
      expect(entryOf(host, "stale").hold).toMatchObject({ version: v3.sha256 });
    }
    expect(originDownloads("stale")).toEqual([]);
  }, 120_000);
});

describe("proxies", () => {
  const proxiedApi = () => bm.api.replace("127.0.0.1", PROXIED_NAME);
  const newRequests = (before: number) => proxy.requests().slice(before);

  /** An update of name from v1 to v2 on a fresh host; returns the host. */
  function updateCase(name: string): { host: Host; v1: Artifact; v2: Artifact } {
    const v1 = artifact(`#!/bin/sh\necho ${name} v1\n`);
    const v2 = artifact(`#!/bin/sh\necho ${name} v2\n`);
    bm.setTarget(name, v2);
    return { host: hostWith(name, v1), v1, v2 };
  }

  /** The environment without the fixture's NO_PROXY, so that only what the test sets applies. */
  function envWithout(host: Host, api: string, extra: Record<string, string>, drop: string[]): Record<string, string> {
    const env = host.env(api, extra);
    for (const key of drop) delete env[key];
    return env;
  }

  test("HTTP_PROXY from the environment: every request goes through it", async () => {
    const { host, v2 } = updateCase("penv");
    const before = proxy.requests().length;
    const r = await runBinProxy([], envWithout(host, proxiedApi(), { HTTP_PROXY: proxy.url }, ["NO_PROXY"]));
    expect(r.code).toBe(0);
    expect(readFileSync(join(host.binDir, "penv"))).toEqual(Buffer.from(v2.bytes));
    // What the origin saw and what went through the proxy are the same requests.
    expect(newRequests(before).map((line) => line.replace(`http://${PROXIED_NAME}:${new URL(bm.origin).port}`, ""))).toEqual(
      bm.requests.map((q) => `${q.method} ${q.path}${Object.keys(q.query).length ? `?${new URLSearchParams(q.query)}` : ""}`),
    );
    expect(newRequests(before)).toContainEqual(`GET http://${PROXIED_NAME}:${new URL(bm.origin).port}${API}/download/penv?sha256=${v2.sha256}`);
  });

  test("HTTP_PROXY from the config file behaves the same, whatever the crontab line sources", async () => {
    const { host, v2 } = updateCase("pfile");
    writeFileSync(join(host.root, "etc", "config"), `export HTTP_PROXY="${proxy.url}"\n`);
    const before = proxy.requests().length;
    const r = await runBinProxy([], envWithout(host, proxiedApi(), {}, ["NO_PROXY"]));
    expect(r.code).toBe(0);
    expect(readFileSync(join(host.binDir, "pfile"))).toEqual(Buffer.from(v2.bytes));
    expect(newRequests(before)).toHaveLength(bm.requests.length);
    expect(bm.requests.length).toBeGreaterThanOrEqual(3);
  });

  test("NO_PROXY from the config file exempts a host even when HTTP_PROXY comes from the environment", async () => {
    const { host, v1 } = updateCase("pnone");
    writeFileSync(join(host.root, "etc", "config"), `NO_PROXY=".test"\n`);
    const before = proxy.requests().length;
    const r = await runBinProxy([], envWithout(host, proxiedApi(), { HTTP_PROXY: proxy.url }, ["NO_PROXY"]));
    // Directly, bin-manager.test does not resolve: the pass fails, on the name, and the proxy saw nothing.
    expect(r.code).toBe(1);
    expect(newRequests(before)).toEqual([]);
    expect(host.log()).toContain(`ENOTFOUND: getaddrinfo ENOTFOUND ${PROXIED_NAME}`);
    expect(host.log()).not.toMatch(/proxy failure|through proxy/);
    expectIntact(host, "pnone", v1);
  });

  test("loopback goes directly, although NO_PROXY does not name it", async () => {
    const { host, v2 } = updateCase("ploop");
    const before = proxy.requests().length;
    const r = await runBinProxy([], envWithout(host, bm.api, { HTTP_PROXY: proxy.url }, ["NO_PROXY"]));
    expect(r.code).toBe(0);
    expect(readFileSync(join(host.binDir, "ploop"))).toEqual(Buffer.from(v2.bytes));
    expect(newRequests(before)).toEqual([]);
  });

  test("https through HTTPS_PROXY: only CONNECT tunnels, and the token only inside them", async () => {
    const v1 = artifact("#!/bin/sh\necho ptls v1\n");
    const v2 = artifact("#!/bin/sh\necho ptls v2\n");
    tlsBm.setTarget("ptls", v2);
    const host = hostWith("ptls", v1);
    const api = tlsBm.api.replace("127.0.0.1", TLS_NAME);
    const before = proxy.requests().length;
    const env = envWithout(host, api, { HTTPS_PROXY: proxy.url, NODE_EXTRA_CA_CERTS: pki.caFile, BIN_MANAGER_TOKEN: "fleet-token-123" }, ["NO_PROXY"]);
    const r = await runBinProxy([], env);
    expect(r.code).toBe(0);
    expect(readFileSync(join(host.binDir, "ptls"))).toEqual(Buffer.from(v2.bytes));
    const seen = newRequests(before);
    expect(seen.length).toBeGreaterThan(0);
    expect(seen.every((line) => line === `CONNECT ${TLS_NAME}:${new URL(tlsBm.origin).port}`)).toBe(true);
    expect(tlsBm.requests.every((q) => q.headers.authorization === "Bearer fleet-token-123")).toBe(true);
  });

  test("the token is never sent through a plain-http proxy: the pass refuses, and says how to fix it", async () => {
    const { host, v1 } = updateCase("ptoken");
    const before = proxy.requests().length;
    const r = await runBinProxy([], envWithout(host, proxiedApi(), { HTTP_PROXY: proxy.url, BIN_MANAGER_TOKEN: "fleet-token-123" }, ["NO_PROXY"]));
    expect(r.code).toBe(1);
    expect(newRequests(before)).toEqual([]);
    expect(bm.requests).toEqual([]);
    expect(host.log()).toContain(`refusing to send BIN_MANAGER_TOKEN in clear text through proxy ${proxy.hostPort}`);
    expect(host.log()).not.toContain("fleet-token-123");
    expectIntact(host, "ptoken", v1);
  });

  test("a dead proxy is reported as a proxy failure naming it, never its credentials", async () => {
    const { host, v1 } = updateCase("pdead");
    const dead = await freePort();
    const r = await runBinProxy([], envWithout(host, proxiedApi(), { HTTP_PROXY: `http://ops:hunter2@127.0.0.1:${dead}` }, ["NO_PROXY"]));
    expect(r.code).toBe(1);
    const log = host.log();
    expect(log).toContain(`proxy failure: proxy 127.0.0.1:${dead} unreachable`);
    expect(`${log}${r.stderr}`).not.toContain("hunter2");
    expect(bm.requests).toEqual([]);
    expectIntact(host, "pdead", v1);
  });
});
