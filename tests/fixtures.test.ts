// Self-tests of the test fixtures: fake bin-manager, real supervisord, temp host and runner.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  apiError,
  artifact,
  garbage,
  huge,
  json,
  legacy,
  redirect,
  slow,
  stallBody,
  stallHeaders,
  startBinManager,
  status,
  truncated,
  type BinManager,
} from "./fixture/bin-manager.ts";
import { freePort, makeHost, runBinProxy, serviceScript, type Host } from "./fixture/host.ts";
import { processAlive, startSupervisor } from "./fixture/supervisor.ts";

// Tests dig into arbitrary JSON shapes, some deliberately wrong: typing them would only add casts.
async function jsonOf(r: Response | Promise<Response>): Promise<any> {
  return (await r).json();
}

const HELLO_SHA = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

/** Processes whose command line mentions `needle` (the fixtures put their temp dir in every command). */
function processesMentioning(needle: string): number[] {
  const found: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, "utf8").includes(needle) && processAlive(Number(entry))) found.push(Number(entry));
    } catch {
      // exited while we looked
    }
  }
  return found;
}

describe("bin-manager fixture", () => {
  let bm: BinManager;
  const app = artifact("hello");
  beforeAll(async () => {
    bm = await startBinManager();
  });
  afterAll(async () => {
    await bm.stop();
  });

  test("artifact hashes to lowercase hex sha256", () => {
    expect(app.sha256).toBe(HELLO_SHA);
    expect(artifact(new TextEncoder().encode("hello")).sha256).toBe(HELLO_SHA);
  });

  test("keepalive remembers nodes that POSTed, and every request is recorded", async () => {
    bm.clearRequests();
    expect(bm.api).toBe(`${bm.origin}/api/v1`);
    const before = await jsonOf(fetch(`${bm.api}/keepalive?nodeName=n1`));
    expect(before).toEqual({ code: 0, message: "ok", data: { status: "inactive" } });
    const info = { cpuArch: "x86_64", osRelease: "Debian", nodeName: "n1", binProxyVersion: "1" };
    const post = await fetch(`${bm.api}/keepalive`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(info) });
    expect((await jsonOf(post)).code).toBe(0);
    const after = await jsonOf(fetch(`${bm.api}/keepalive?nodeName=n1`));
    expect(after.data.status).toBe("active");

    expect(bm.requests.map((r) => `${r.method} ${r.path}`)).toEqual([
      "GET /api/v1/keepalive",
      "POST /api/v1/keepalive",
      "GET /api/v1/keepalive",
    ]);
    expect(bm.requests[0]!.query).toEqual({ nodeName: "n1" });
    expect(bm.requests[0]!.body).toBeUndefined();
    expect(bm.requests[1]!.body).toEqual(info);
    expect(bm.requests[1]!.headers["content-type"]).toBe("application/json");
    expect(bm.requests[1]!.at).toBeGreaterThanOrEqual(bm.requests[0]!.at);
    expect(bm.count("GET", "/api/v1/keepalive")).toBe(2);
    expect(bm.count("*", "/api/v1/")).toBe(3);
    expect(bm.count("POST", "/api/v1/keep")).toBe(0);
  });

  test("targets: GET /bins, both download URLs, progress and report", async () => {
    bm.setTarget("app", app, "1.2.3");
    const meta = await jsonOf(fetch(`${bm.api}/bins/app`));
    expect(meta).toEqual({ code: 0, message: "ok", data: { sha256: HELLO_SHA, version: "1.2.3" } });
    for (let i = 0; i < 2; i++) {
      expect(await (await fetch(`${bm.api}/download/app`)).text()).toBe("hello");
      expect(await (await fetch(`${bm.api}/releases/latest/app/download`)).text()).toBe("hello");
    }
    const progress = await fetch(`${bm.api}/bins/app/progress`, { method: "POST", body: JSON.stringify({ status: "in_progress" }) });
    expect((await jsonOf(progress)).code).toBe(0);
    expect((await jsonOf(fetch(`${bm.api}/bins/app`, { method: "POST", body: "{}" }))).code).toBe(0);
    expect(bm.count("POST", "/api/v1/bins/app")).toBe(1);
    expect(bm.count("POST", "/api/v1/bins/")).toBe(2);
    expect(bm.requests.at(-2)!.body).toEqual({ status: "in_progress" });

    const unknown = await fetch(`${bm.api}/bins/nosuch`);
    expect(unknown.status).toBe(404);
    expect((await jsonOf(unknown)).code).not.toBe(0);
    expect((await fetch(`${bm.api}/download/nosuch`)).status).toBe(404);

    bm.setTarget("app", null);
    expect((await fetch(`${bm.api}/bins/app`)).status).toBe(404);
  });

  test("setPrimary and setFallback serve other bytes or misbehave", async () => {
    bm.setTarget("two", app);
    bm.setPrimary("two", new TextEncoder().encode("evil"));
    bm.setFallback("two", status(500));
    expect(await (await fetch(`${bm.api}/download/two`)).text()).toBe("evil");
    expect((await fetch(`${bm.api}/releases/latest/two/download`)).status).toBe(500);
    bm.setPrimary("two", null);
    bm.setFallback("two", null);
    expect(await (await fetch(`${bm.api}/download/two`)).text()).toBe("hello");
    expect(await (await fetch(`${bm.api}/releases/latest/two/download`)).text()).toBe("hello");
  });

  test("override answers with a behaviour or a handler, and can be removed", async () => {
    const path = "/api/v1/bins/ov";
    bm.setTarget("ov", app);
    const get = () => fetch(bm.origin + path);

    bm.override("GET", path, status(503));
    expect((await get()).status).toBe(503);
    bm.override("GET", path, garbage());
    let r = await get();
    expect(r.status).toBe(200);
    const page = await r.text();
    expect(page).toContain("502 Bad Gateway");
    expect(() => JSON.parse(page)).toThrow();
    bm.override("GET", path, apiError(7, "nope"));
    expect(await jsonOf(get())).toEqual({ code: 7, message: "nope", data: null });
    bm.override("GET", path, legacy(HELLO_SHA));
    expect(await jsonOf(get())).toEqual({ sha256: HELLO_SHA, version: HELLO_SHA.slice(0, 12) });
    bm.override("GET", path, json({ code: 0, message: "ok", data: { sha256: "../../etc/passwd" } }));
    expect((await jsonOf(get())).data.sha256).toBe("../../etc/passwd");
    bm.override("GET", path, (req, rec) => new Response(`${req.method} ${rec.path}`, { status: 418 }));
    r = await get();
    expect(r.status).toBe(418);
    expect(await r.text()).toBe(`GET ${path}`);
    bm.override("POST", "/api/v1/keepalive", status(500));
    expect((await fetch(`${bm.api}/keepalive`, { method: "POST", body: "{}" })).status).toBe(500);

    bm.override("GET", path, null);
    bm.override("POST", "/api/v1/keepalive", null);
    expect((await jsonOf(get())).data.sha256).toBe(HELLO_SHA);
    expect(bm.count("GET", path)).toBe(7);
  });

  test("huge bodies, announced or streamed", async () => {
    bm.override("GET", "/api/v1/bins/big", huge());
    let r = await fetch(`${bm.api}/bins/big`);
    expect(Number(r.headers.get("content-length"))).toBe(5 * 1024 * 1024);
    let text = await r.text();
    expect(text.length).toBe(5 * 1024 * 1024);
    expect(JSON.parse(text).code).toBe(0);

    bm.override("GET", "/api/v1/bins/big", huge(2 * 1024 * 1024, { announced: false, sha256: HELLO_SHA }));
    r = await fetch(`${bm.api}/bins/big`);
    expect(r.headers.get("content-length")).toBeNull();
    text = await r.text();
    expect(text.length).toBe(2 * 1024 * 1024);
    expect(JSON.parse(text).data.sha256).toBe(HELLO_SHA);
  });

  test("redirects", async () => {
    bm.setTarget("moved", app);
    bm.setPrimary("moved", redirect(`${bm.api}/releases/latest/moved/download`));
    expect(await (await fetch(`${bm.api}/download/moved`)).text()).toBe("hello");
    const manual = await fetch(`${bm.api}/download/moved`, { redirect: "manual" });
    expect(manual.status).toBe(302);
    expect(manual.headers.get("location")).toBe(`${bm.api}/releases/latest/moved/download`);
  });

  test("a truncated body fails the reader, after some bytes arrived", async () => {
    const big = artifact(new Uint8Array(100_000).fill(1));
    bm.setPrimary("cut", truncated(big.bytes, 30_000));
    const r = await fetch(`${bm.api}/download/cut`);
    expect(r.status).toBe(200);
    const reader = r.body!.getReader();
    let got = 0;
    let error: unknown;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        got += value.length;
      }
    } catch (e) {
      error = e;
    }
    expect(error).toBeDefined();
    expect(got).toBeGreaterThan(0);
    expect(got).toBeLessThan(100_000);
  });

  test("stalls: no headers at all, or headers then silence", async () => {
    bm.setPrimary("stall", stallHeaders());
    const t0 = performance.now();
    const err = await fetch(`${bm.api}/download/stall`, { signal: AbortSignal.timeout(300) }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DOMException);
    expect((err as DOMException).name).toBe("TimeoutError");
    expect(performance.now() - t0).toBeGreaterThanOrEqual(280);

    bm.setPrimary("stall", stallBody("abc"));
    const r = await fetch(`${bm.api}/download/stall`);
    expect(r.status).toBe(200);
    const reader = r.body!.getReader();
    expect(new TextDecoder().decode((await reader.read()).value)).toBe("abc");
    const next = await Promise.race([reader.read().then(() => "more"), Bun.sleep(400).then(() => "silent")]);
    expect(next).toBe("silent");
    await reader.cancel();
    expect(() => stallBody("")).toThrow();
  });

  test("throttling lets a test see a download in progress", async () => {
    const body = artifact(new Uint8Array(20_000).fill(2));
    bm.setTarget("slow", body);
    bm.throttle(40_000);
    bm.clearRequests();
    const t0 = performance.now();
    const pending = fetch(`${bm.api}/download/slow`).then((r) => r.arrayBuffer());
    await Bun.sleep(150);
    expect(bm.count("GET", "/api/v1/download/slow")).toBe(1);
    const settled = await Promise.race([pending.then(() => true), Bun.sleep(0).then(() => false)]);
    expect(settled).toBe(false);
    const bytes = new Uint8Array(await pending);
    expect(body.bytes).toEqual(bytes);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(400);
    bm.throttle(null);

    bm.setFallback("slow", slow(body.bytes, 100_000));
    const t1 = performance.now();
    const viaFallback = new Uint8Array(await (await fetch(`${bm.api}/releases/latest/slow/download`)).arrayBuffer());
    expect(body.bytes).toEqual(viaFallback);
    expect(performance.now() - t1).toBeGreaterThanOrEqual(150);
    const t2 = performance.now();
    await (await fetch(`${bm.api}/download/slow`)).arrayBuffer();
    expect(performance.now() - t2).toBeLessThan(150);
  });

  test("TLS with a private certificate, and stop() closes the port", async () => {
    const dir = mkdtempSync(join(tmpdir(), "bin-proxy-tls-"));
    try {
      const gen = Bun.spawnSync(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
          "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem")],
        { stdout: "ignore", stderr: "pipe" },
      );
      expect(gen.exitCode).toBe(0);
      const cert = readFileSync(join(dir, "cert.pem"), "utf8");
      const tlsBm = await startBinManager({ tls: { cert, key: readFileSync(join(dir, "key.pem"), "utf8") } });
      expect(tlsBm.api.startsWith("https://127.0.0.1:")).toBe(true);
      tlsBm.setTarget("t", app);
      const r = await fetch(`${tlsBm.api}/bins/t`, { tls: { ca: cert } });
      expect((await jsonOf(r)).data.sha256).toBe(HELLO_SHA);
      expect(await fetch(`${tlsBm.api}/bins/t`).catch(() => "rejected")).toBe("rejected");
      await tlsBm.stop();
      expect(await fetch(`${tlsBm.api}/bins/t`, { tls: { ca: cert } }).catch(() => "refused")).toBe("refused");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("host fixture", () => {
  let host: Host;
  beforeAll(() => {
    host = makeHost();
  });
  afterAll(() => host.cleanup());

  test("layout, env and manifest", () => {
    for (const d of [host.binDir, host.lockDir, host.stateDir]) expect(statSync(d).isDirectory()).toBe(true);
    expect(host.root.startsWith(tmpdir())).toBe(true);
    expect(host.listFiles()).toEqual(["etc/config"]);
    const env = host.env("http://127.0.0.1:1/api/v1", { HTTP_TIMEOUT: "2" });
    expect(env).toEqual({
      BIN_MANAGER_API: "http://127.0.0.1:1/api/v1",
      BIN_DIR: host.binDir,
      BIN_MANIFESTS: host.manifest,
      LOG_FILE: host.logFile,
      LOCK_DIR: host.lockDir,
      BIN_PROXY_STATE_DIR: host.stateDir,
      NODE_NAME: "test-node",
      SUPERVISORCTL: "",
      PATH: process.env.PATH!,
      NO_PROXY: "127.0.0.1,localhost",
      BIN_PROXY_CONFIG: join(host.root, "etc", "config"),
      HTTP_TIMEOUT: "2",
    });
    expect(host.env("x", { SUPERVISORCTL: "/x/ctl" }).SUPERVISORCTL).toBe("/x/ctl");

    host.writeManifest([{ serviceName: "a", binaryName: "a", version: "", previousVersion: "", port: 0 }], { extra: 1 });
    const m = host.readManifest();
    expect(m.binaries[0]!.binaryName).toBe("a");
    expect(m.nodeInfo).toEqual({ cpuArch: "", osRelease: "", nodeName: "", binProxyVersion: "" });
    expect(m["extra"]).toBe(1);

    expect(host.log()).toBe("");
    writeFileSync(host.logFile, "line\n");
    expect(host.log()).toBe("line\n");
    const bin = host.writeBinary("a", serviceScript({ tag: "v1" }));
    expect(statSync(bin).mode & 0o777).toBe(0o755);
    expect(host.listFiles()).toEqual(["bin/a", "etc/bin-manifests.json", "etc/config", "log/bin-proxy.log"]);
  });

  test("serviceScript variants differ and behave", async () => {
    const a = serviceScript({ tag: "v1" });
    const b = serviceScript({ tag: "v2" });
    expect(a).not.toBe(b);
    expect(a.startsWith("#!/bin/sh\n")).toBe(true);
    expect(a).toContain("exec sleep 100000");
    const exiting = host.writeBinary("exits", serviceScript({ exitCode: 3, tag: "x" }));
    expect(Bun.spawnSync([exiting]).exitCode).toBe(3);
    expect(serviceScript({ port: 1234, tag: "p" })).toContain("listen(1234");
    expect(() => serviceScript({ port: 0, tag: "p" })).toThrow();
  });

  test("freePort gives a port that can be listened on", async () => {
    const port = await freePort();
    expect(port).toBeGreaterThan(0);
    const l = Bun.listen({ hostname: "127.0.0.1", port, socket: { data() {} } });
    expect(l.port).toBe(port);
    l.stop(true);
  });

  test("runBinProxy passes exactly the env, no terminal on stdin, and enforces its timeout", async () => {
    const env = host.env("http://127.0.0.1:1/api/v1");
    const printed = await runBinProxy([], env, { executable: "/usr/bin/env" });
    expect(printed.code).toBe(0);
    const seen = Object.fromEntries(printed.stdout.trim().split("\n").map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]));
    expect(seen).toEqual(env);

    const tty = await runBinProxy(["-c", "test -t 0 && echo tty || echo notty; pwd; echo err >&2; exit 4"], env, { executable: "/bin/sh" });
    expect(tty).toEqual({ code: 4, stdout: "notty\n/\n", stderr: "err\n" });
    const piped = await runBinProxy(["-c", "cat"], env, { executable: "/bin/sh", stdin: "fed\n" });
    expect(piped.stdout).toBe("fed\n");

    const t0 = performance.now();
    const err = await runBinProxy(["-c", "sleep 30 & wait"], env, { executable: "/bin/sh", timeoutMs: 300 }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect(String(err)).toContain("timed out");
    expect(performance.now() - t0).toBeLessThan(5000);
  });
});

describe("supervisor fixture", () => {
  let host: Host;
  beforeAll(() => {
    host = makeHost();
  });
  afterAll(() => host.cleanup());

  test("programs come up RUNNING or FATAL, the wrapper works, stop leaves nothing behind", async () => {
    const port = await freePort();
    const idle = host.writeBinary("idle", serviceScript({ tag: "idle" }));
    const web = host.writeBinary("web", serviceScript({ port, tag: "web" }));
    const broken = host.writeBinary("broken", serviceScript({ exitCode: 1, tag: "broken" }));
    const sup = await startSupervisor(host.root, [
      { name: "idle", command: idle },
      { name: "web", command: web },
      { name: "broken", command: broken },
    ]);
    let stopped = false;
    try {
      expect(await sup.status("idle")).toBe("RUNNING");
      expect(await sup.status("web")).toBe("RUNNING");
      expect(await sup.status("broken")).toBe("FATAL");
      expect(await sup.pid("broken")).toBe(0);
      await expect(sup.status("nosuch")).rejects.toThrow();

      const idlePid = await sup.pid("idle");
      const webPid = await sup.pid("web");
      expect(processAlive(idlePid)).toBe(true);
      expect(processAlive(webPid)).toBe(true);
      expect(processAlive(sup.supervisordPid)).toBe(true);

      const conn = await Bun.connect({ hostname: "127.0.0.1", port, socket: { data() {} } });
      conn.end();

      // The wrapper must work from any working directory, as bin-proxy runs it.
      const ctl = Bun.spawnSync([sup.ctl, "status", "idle"], { cwd: host.binDir });
      expect(ctl.exitCode).toBe(0);
      expect(ctl.stdout.toString()).toContain("RUNNING");
      expect(Bun.spawnSync([sup.ctl, "status", "broken"]).exitCode).toBe(3);
      const restart = Bun.spawnSync([sup.ctl, "restart", "idle"], { cwd: "/" });
      expect(restart.exitCode).toBe(0);
      const newPid = await sup.pid("idle");
      expect(newPid).not.toBe(idlePid);
      expect(processAlive(idlePid)).toBe(false);
      expect(await sup.waitFor("idle", ["RUNNING"], 5000)).toBe("RUNNING");

      await sup.stop();
      stopped = true;
      for (const pid of [sup.supervisordPid, newPid, webPid]) expect(processAlive(pid)).toBe(false);
      expect(processesMentioning(host.root)).toEqual([]);
    } finally {
      if (!stopped) await sup.stop();
    }
  }, 60_000);
});
