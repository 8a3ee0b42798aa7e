// Fault matrix (SPEC §5, §7): every way the API, the network and the filesystem can fight back, run against the
// compiled executable; every case asserts the same invariants (exit status, binary intact, no stray file, no secret, a cause).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  chmodSync, chownSync, existsSync, linkSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync,
  statSync, symlinkSync, writeFileSync,
} from "node:fs";
import { spawnSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  API_PREFIX, apiError, artifact, garbage, huge, json, redirect, stallBody, stallHeaders, startBinManager, truncated,
  type Artifact, type BinManager, type Handler,
} from "../fixture/bin-manager.ts";
import { BIN_PROXY, makeHost, runBinProxy, serviceScript, type Host } from "../fixture/host.ts";
import { startSupervisor } from "../fixture/supervisor.ts";
import { mount, mountOver, unmount } from "../fixture/mount.ts";
import { makePki, type TestPki } from "../fixture/tls.ts";

/** The API token of every run: it must never show up in any output, file or child process. */
const TOKEN = `tok-${crypto.randomUUID()}`;
const MIB = 1 << 20;
/** A stall is detected after HTTP_TIMEOUT: short, but long enough for a loaded 2-core machine. */
const STALL_TIMEOUT = "2";

let bm: BinManager;
let pki: TestPki;
beforeAll(async () => {
  bm = await startBinManager();
  pki = makePki();
});
afterAll(async () => {
  await bm.stop();
  pki.cleanup();
});

const isJson = (text: string) => {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
};
const sha256 = (data: Uint8Array | string) => new Bun.CryptoHasher("sha256").update(data).digest("hex");

/** Distinct bytes of about `size` bytes (a shell script first, so small ones still run). */
function binary(tag: string, size = 0): Uint8Array {
  const script = new TextEncoder().encode(serviceScript({ tag }));
  if (size <= script.length) return script;
  const out = new Uint8Array(size);
  out.set(script);
  for (let i = script.length; i < size; i++) out[i] = (i * 31 + tag.length) & 0xff;
  return out;
}

/** A body that never ends, counting what it produced: a client that reads it all never finishes. */
function endless(prefix: string, produced: { bytes: number }): Handler {
  const chunk = new Uint8Array(64 * 1024).fill(0x78);
  return () => {
    let first = true;
    const body = new ReadableStream<Uint8Array>(
      {
        pull(c) {
          const next = first ? new TextEncoder().encode(prefix) : chunk.slice();
          first = false;
          produced.bytes += next.length;
          c.enqueue(next);
        },
      },
      { highWaterMark: 0 },
    );
    return new Response(body, { headers: { "content-type": "application/json" } });
  };
}

const primaryPath = (name: string) => `${API_PREFIX}/download/${name}`;
const fallbackPath = (name: string) => `${API_PREFIX}/releases/latest/${name}/download`;

let seq = 0;

/**
 * One host for one case: two managed binaries, `app` (the one the fault hits) and `next` (which
 * must still be updated when the pass goes on), both with a newer target at the API, plus a
 * directory outside every allowed one holding a victim file and the target of a dangling symlink.
 */
interface World {
  host: Host;
  server: BinManager;
  app: string;
  next: string;
  old: Map<string, Uint8Array>;
  target: Map<string, Artifact>;
  outside: string;
  victim: string;
  /** Where a dangling symlink points: nothing may create it. */
  dangling: string;
  before: Set<string>;
  /** The manifest as the pass found it. */
  manifestBefore: { text: string; valid: boolean };
  /** Undone before the host is removed (mounts), newest first. */
  teardown: (() => void)[];
  env(extra?: Record<string, string>): Record<string, string>;
}

const VICTIM = "a file bin-proxy must never touch\n";

function world(opts: { server?: BinManager; appSize?: number } = {}): World {
  const server = opts.server ?? bm;
  const host = makeHost();
  const n = ++seq;
  const app = `app${n}`;
  const next = `next${n}`;
  for (const dir of ["tmp", "home", "outside"]) mkdirSync(join(host.root, dir));
  const outside = join(host.root, "outside");
  const victim = join(outside, "victim");
  writeFileSync(victim, VICTIM);
  const old = new Map<string, Uint8Array>();
  const target = new Map<string, Artifact>();
  for (const [name, size] of [[app, opts.appSize ?? 0], [next, 0]] as const) {
    old.set(name, binary(`${name} v1`));
    host.writeBinary(name, old.get(name)!);
    target.set(name, artifact(binary(`${name} v2`, size)));
    server.setTarget(name, target.get(name)!);
  }
  host.writeManifest([app, next].map((name) => ({ serviceName: "", binaryName: name, version: sha256(old.get(name)!), previousVersion: "", port: 0 })));
  server.clearRequests();
  return {
    host, server, app, next, old, target, outside, victim,
    dangling: join(outside, "created-through-a-symlink"),
    before: new Set(host.listFiles()),
    manifestBefore: { text: "", valid: true },
    teardown: [],
    env: (extra = {}) =>
      host.env(server.api, {
        BIN_MANAGER_TOKEN: TOKEN,
        HTTP_TIMEOUT: "20",
        // Anything written to a temp or home directory would be outside the allowed places: keep both where the test sees them.
        TMPDIR: join(host.root, "tmp"),
        HOME: join(host.root, "home"),
        ...extra,
      }),
  };
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** What a case's setup may change about the run. */
interface RunOptions {
  env?: Record<string, string>;
  /** argv run in front of bin-proxy (prlimit, a shell that plants files first). */
  prefix?: string[];
  cwd?: string;
}

async function pass(w: World, opts: RunOptions = {}): Promise<Run> {
  const env = w.env(opts.env);
  if (!opts.prefix) return runBinProxy([], env, { cwd: opts.cwd });
  const [executable, ...args] = opts.prefix;
  return runBinProxy([...args, BIN_PROXY], env, { executable: executable!, cwd: opts.cwd });
}

interface Expectation {
  code: number;
  /** What becomes of each binary. */
  app: "intact" | "updated";
  next: "intact" | "updated";
  /** An error line (in the log, and on stderr) that names the cause; null: no error at all. */
  cause: RegExp | null;
  /** Where error lines go; "stderr" when the log file itself is what is broken. */
  logTo?: "log" | "stderr";
}

const ALLOWED = (file: string) => ["bin/", "lock/", "state/"].some((dir) => file.startsWith(dir)) || file === "etc/bin-manifests.json" || file === "log/bin-proxy.log";

/** The invariants every case shares. */
function expectInvariants(w: World, run: Run, want: Expectation): void {
  const { host } = w;
  const context = `exit ${run.code}\nstderr:\n${run.stderr}\nlog:\n${host.log()}`;
  expect(run.code, context).toBe(want.code);

  for (const [name, state] of [[w.app, want.app], [w.next, want.next]] as const) {
    const path = join(host.binDir, name);
    if (lstatSync(path).isSymbolicLink()) continue; // the symlinked-binary case checks its link itself
    const expected = state === "intact" ? w.old.get(name)! : w.target.get(name)!.bytes;
    expect(sha256(readFileSync(path)), `${name} should be ${state}\n${context}`).toBe(sha256(expected));
    expect(statSync(path).mode & 0o7777).toBe(0o755);
  }

  // Nothing new outside the allowed places; nothing left in BIN_DIR but the binaries; no version lock left held.
  const after = host.listFiles();
  expect(after.filter((f) => !w.before.has(f) && !ALLOWED(f)), context).toEqual([]);
  expect(after.filter((f) => f.startsWith("bin/") && !w.before.has(f)), context).toEqual([]);
  expect(after.filter((f) => /^lock\/.*-[0-9a-f]{64}\.lock$/.test(f) && !w.before.has(f)), context).toEqual([]);
  expect(readFileSync(w.victim, "utf8")).toBe(VICTIM);
  expect(existsSync(w.dangling)).toBe(false);
  // A valid manifest stays valid, whatever happened; an invalid one is never touched.
  if (w.manifestBefore.valid) JSON.parse(readFileSync(host.manifest, "utf8"));
  else expect(readFileSync(host.manifest, "utf8")).toBe(w.manifestBefore.text);

  // No secret anywhere: output, log, every file on the host.
  expect(run.stdout).not.toContain(TOKEN);
  expect(run.stderr).not.toContain(TOKEN);
  for (const file of after) {
    const path = join(host.root, file);
    if (lstatSync(path).isFile()) expect(readFileSync(path).includes(TOKEN), `${file} holds the token`).toBe(false);
  }

  // Cron mails stdout: a pass prints nothing there.
  expect(run.stdout).toBe("");
  const logLines = (want.logTo === "stderr" ? run.stderr : host.log()).split("\n");
  const errors = logLines.filter((l) => l.includes(" level=error "));
  if (want.cause === null) {
    expect(errors, context).toEqual([]);
  } else {
    expect(errors.filter((l) => want.cause!.test(l)), `no error line matches ${want.cause}\n${context}`).not.toEqual([]);
    expect(run.stderr.split("\n").filter((l) => want.cause!.test(l)), `stderr does not say ${want.cause}\n${context}`).not.toEqual([]);
  }
}

/**
 * Runs one case on a fresh world and checks the invariants. What setup creates (planted symlinks,
 * a .env) is part of the world the pass finds. opts.check runs the case's own checks while the
 * host still exists; the returned world serves checks of the servers' records.
 */
async function faultCase(
  setup: (w: World) => void | RunOptions | Promise<void | RunOptions>,
  want: Expectation,
  opts: Parameters<typeof world>[0] & { env?: Record<string, string>; check?: (w: World, run: Run) => void | Promise<void> } = {},
): Promise<World> {
  const w = world(opts);
  try {
    const extra = (await setup(w)) ?? {};
    for (const file of w.host.listFiles()) w.before.add(file);
    const text = readFileSync(w.host.manifest, "utf8");
    w.manifestBefore = { text, valid: isJson(text) };
    const run = await pass(w, { ...extra, env: { ...opts.env, ...extra.env } });
    expectInvariants(w, run, want);
    await opts.check?.(w, run);
    return w;
  } finally {
    for (const undo of w.teardown.reverse()) undo();
    w.host.cleanup();
  }
}

const appFails = (cause: RegExp): Expectation => ({ code: 1, app: "intact", next: "updated", cause });

describe("a hostile or broken API", () => {
  const override = (w: World, behaviour: Parameters<BinManager["override"]>[2]) => w.server.override("GET", `${API_PREFIX}/bins/${w.app}`, behaviour);

  test("an answer that is not JSON", async () => {
    await faultCase((w) => override(w, garbage()), appFails(/bin=app\d+ event=target_unavailable .*answer is not JSON/));
  });

  test("JSON of the wrong shape", async () => {
    const shapes: [unknown, RegExp][] = [
      [[1, 2, 3], /answer is not a JSON object/],
      ["a string", /answer is not a JSON object/],
      [{ code: 0, message: "ok", data: [1] }, /\\"data\\" is not an object/],
      [{ code: 0, message: "ok", data: { version: "1.0" } }, /sha256 is not 64 hex digits: null/],
      [{ code: 0, message: "ok", data: { sha256: { nested: true } } }, /sha256 is not 64 hex digits/],
    ];
    for (const [body, cause] of shapes) {
      await faultCase((w) => override(w, json(body)), appFails(new RegExp(`bin=app\\d+ event=target_unavailable .*${cause.source}`)));
    }
  });

  test("code != 0 in a 200 answer (and a message that echoes the token is redacted)", async () => {
    await faultCase((w) => override(w, apiError(7, `access denied for token ${TOKEN}`)), appFails(/bin=app\d+ event=target_unavailable .*API answered code 7: access denied for token \[redacted\]/));
  });

  test("a non-2xx status", async () => {
    await faultCase((w) => override(w, json({ code: 0, data: { sha256: "a".repeat(64) } }, 503)), appFails(/bin=app\d+ event=target_unavailable .*HTTP 503/));
  });

  test("a non-2xx status keeps the API's own message (an unknown binary, say)", async () => {
    await faultCase(
      (w) => override(w, json({ code: 404, message: `binary app not published for node ${TOKEN}`, data: null }, 404)),
      appFails(/bin=app\d+ event=target_unavailable .*HTTP 404: binary app not published for node \[redacted\]/),
    );
  });

  test("a sha256 that is not 64 hex digits never reaches a path", async () => {
    const bad: unknown[] = ["../../../outside/victim", `${"a".repeat(60)}/../`, "", "a".repeat(63), "a".repeat(65), `${"g".repeat(64)}`, 42, null];
    for (const sha256 of bad) {
      const w = await faultCase(
        (w) => override(w, json({ code: 0, message: "ok", data: { sha256, version: "evil" } })),
        appFails(/bin=app\d+ event=target_unavailable .*sha256 is not 64 hex digits/),
      );
      expect(w.server.count("GET", primaryPath(w.app))).toBe(0);
    }
  });

  test("an upper-case sha256 is normalised and installed", async () => {
    await faultCase(
      (w) => override(w, json({ code: 0, message: "ok", data: { sha256: w.target.get(w.app)!.sha256.toUpperCase(), version: "2" } })),
      { code: 0, app: "updated", next: "updated", cause: null },
      { check: (w) => expect(w.host.readManifest().binaries[0]!.version).toBe(w.target.get(w.app)!.sha256) },
    );
  });

  test("a JSON body over 1 MiB, announced by Content-Length, is refused", async () => {
    await faultCase((w) => override(w, huge(5 * MIB)), appFails(/bin=app\d+ event=target_unavailable .*body of 5242880 bytes is over the 1048576-byte limit/));
  });

  test("an endless JSON body is refused without reading it all", async () => {
    const produced = { bytes: 0 };
    await faultCase(
      (w) => override(w, endless(`{"code":0,"message":"ok","data":{"sha256":"`, produced)),
      appFails(/bin=app\d+ event=target_unavailable .*body is over the 1048576-byte limit/),
    );
    // Socket buffers hold a few MiB at most: the rest of an endless body is never produced.
    expect(produced.bytes).toBeGreaterThan(MIB);
    expect(produced.bytes).toBeLessThan(64 * MIB);
  });

  test("an API answer cut short", async () => {
    const body = new TextEncoder().encode(JSON.stringify({ code: 0, message: "ok", data: { sha256: "a".repeat(64), pad: "x".repeat(100_000) } }));
    await faultCase((w) => override(w, truncated(body, 50_000)), appFails(/bin=app\d+ event=target_unavailable .*ECONNRESET: The socket connection was closed unexpectedly"/));
  });

  test("an API that never sends headers is given up after HTTP_TIMEOUT", async () => {
    await faultCase((w) => override(w, stallHeaders()), appFails(/bin=app\d+ event=target_unavailable .*timed out/), { env: { HTTP_TIMEOUT: STALL_TIMEOUT } });
  });

  test("an API answer that stalls mid-body is given up after HTTP_TIMEOUT", async () => {
    await faultCase((w) => override(w, stallBody('{"code":0,')), appFails(/bin=app\d+ event=target_unavailable .*no answer within 2s/), { env: { HTTP_TIMEOUT: STALL_TIMEOUT } });
  });
});

describe("a hostile or broken download", () => {
  const both = (w: World, primary: Parameters<BinManager["setPrimary"]>[1], fallback = primary) => {
    w.server.setPrimary(w.app, primary);
    w.server.setFallback(w.app, fallback);
  };
  const downloadFails = (cause: RegExp) => appFails(new RegExp(`bin=app\\d+ event=update_failed phase=download .*${cause.source}`));

  test("a download larger than MAX_DOWNLOAD_BYTES: announced, or endless", async () => {
    const produced = { bytes: 0 };
    const w = await faultCase(
      (w) => {
        // The primary announces its size; the fallback streams without end.
        w.server.override("GET", fallbackPath(w.app), endless("", produced));
      },
      downloadFails(/size 65536 bytes is over MAX_DOWNLOAD_BYTES \(4096\).*more than MAX_DOWNLOAD_BYTES \(4096\) bytes/),
      { appSize: 64 * 1024, env: { MAX_DOWNLOAD_BYTES: "4096" } },
    );
    expect(w.server.count("GET", primaryPath(w.app))).toBe(1);
    expect(produced.bytes).toBeLessThan(64 * MIB);
  });

  test("several write blocks in, a body cut short or wrong in its last byte: the file is removed only once its writes are done", async () => {
    await faultCase(
      (w) => {
        const bytes = w.target.get(w.app)!.bytes;
        const wrongLastByte = bytes.slice();
        wrongLastByte[wrongLastByte.length - 1]! ^= 1;
        w.server.setPrimary(w.app, truncated(bytes, 9 * MIB + 1));
        w.server.override("GET", fallbackPath(w.app), () => new Response(wrongLastByte));
      },
      downloadFails(/body cut short after 9437185 bytes: .*content does not match: expected [0-9a-f]{12}, got [0-9a-f]{12} \(10489857 bytes\)/),
      { appSize: 10 * MIB + 4097 },
    );
  });

  test("a body that stalls is aborted after HTTP_TIMEOUT without a byte", async () => {
    await faultCase((w) => both(w, stallBody("#!/bin/sh\n")), downloadFails(/no data within 2s.*no data within 2s/), { env: { HTTP_TIMEOUT: STALL_TIMEOUT } });
  });

  test("a server that never answers headers", async () => {
    await faultCase((w) => both(w, stallHeaders()), downloadFails(/no response headers within 2s.*no response headers within 2s/), { env: { HTTP_TIMEOUT: STALL_TIMEOUT } });
  });

  test("a 200 with a truncated body", async () => {
    await faultCase(
      (w) => both(w, truncated(w.target.get(w.app)!.bytes, 30_000)),
      downloadFails(/body cut short after 30000 bytes: ECONNRESET: The socket connection was closed unexpectedly;.*body cut short/),
      { appSize: 100_000 },
    );
  });

  test("redirects are followed at most 5 times", async () => {
    const w = await faultCase(
      (w) => both(w, redirect(`${w.server.origin}${primaryPath(w.app)}`), redirect(`${w.server.origin}${fallbackPath(w.app)}`)),
      downloadFails(/more than 5 redirects.*more than 5 redirects/),
    );
    expect(w.server.count("GET", primaryPath(w.app))).toBe(6);
    expect(w.server.count("GET", fallbackPath(w.app))).toBe(6);

    // Five hops are still followed.
    await faultCase(
      (w) =>
        w.server.override("GET", primaryPath(w.app), (_req, rec) => {
          const hop = Number(rec.query["hop"] ?? 0);
          return hop < 5 ? Response.redirect(`${w.server.origin}${primaryPath(w.app)}?hop=${hop + 1}`, 302) : new Response(w.target.get(w.app)!.bytes);
        }),
      { code: 0, app: "updated", next: "updated", cause: null },
      { check: (w) => expect(w.server.count("GET", primaryPath(w.app))).toBe(6) },
    );
  });

  test("content that does not match the API's sha256 (a malicious mirror) is never installed", async () => {
    const evil = new TextEncoder().encode("#!/bin/sh\necho owned\n");
    await faultCase((w) => both(w, evil), downloadFails(/content does not match.*content does not match/));
  });

  test("a primary that serves the wrong content falls back to the fallback URL", async () => {
    await faultCase(
      (w) => w.server.setPrimary(w.app, new TextEncoder().encode("#!/bin/sh\necho owned\n")),
      { code: 0, app: "updated", next: "updated", cause: null },
      {
        check: (w) => {
          expect(w.host.log()).toMatch(/level=warn bin=app\d+ event=download_attempt_failed .*content does not match/);
          // The fallback is on the API's origin: it gets the token too.
          const fallback = w.server.requests.filter((r) => r.path === fallbackPath(w.app));
          expect(fallback.map((r) => r.headers["authorization"])).toEqual([`Bearer ${TOKEN}`]);
        },
      },
    );
  });
});

describe("HTTPS and the token", () => {
  let tls: BinManager;
  beforeAll(async () => {
    tls = await startBinManager({ tls: pki.server });
  });
  afterAll(async () => {
    await tls.stop();
  });

  test("a private CA given by NODE_EXTRA_CA_CERTS works, and every call carries the token", async () => {
    const w = await faultCase(() => {}, { code: 0, app: "updated", next: "updated", cause: null }, { server: tls, env: { NODE_EXTRA_CA_CERTS: pki.caFile } });
    const calls = w.server.requests.map((r) => `${r.method} ${r.path}`);
    for (const call of [`GET ${API_PREFIX}/keepalive`, `POST ${API_PREFIX}/keepalive`, `GET ${API_PREFIX}/bins/${w.app}`, `GET ${primaryPath(w.app)}`,
      `POST ${API_PREFIX}/bins/${w.app}/progress`, `POST ${API_PREFIX}/bins/${w.app}`]) {
      expect(calls).toContain(call);
    }
    for (const r of w.server.requests) expect(r.headers["authorization"], `${r.method} ${r.path}`).toBe(`Bearer ${TOKEN}`);
  });

  test("an untrusted certificate is refused, never silently accepted", async () => {
    const wrongName = await startBinManager({ tls: pki.wrongName });
    const selfSigned = await startBinManager({ tls: pki.selfSigned });
    try {
      const cases: [BinManager, Record<string, string>, RegExp][] = [
        // No CA given: the private CA's certificate is not trusted.
        [tls, {}, /TLS certificate refused \(UNABLE_TO_VERIFY_LEAF_SIGNATURE.*NODE_EXTRA_CA_CERTS/],
        // A certificate from the trusted CA, for another name.
        [wrongName, { NODE_EXTRA_CA_CERTS: pki.caFile }, /TLS certificate refused \(ERR_TLS_CERT_ALTNAME_INVALID.*not issued for this host name/],
        [selfSigned, { NODE_EXTRA_CA_CERTS: pki.caFile }, /TLS certificate refused \(DEPTH_ZERO_SELF_SIGNED_CERT/],
      ];
      for (const [server, env, cause] of cases) {
        const w = await faultCase(
          (w) => {
            // A .env in the working directory that would turn certificate checks off is never read.
            writeFileSync(join(w.host.root, "tmp", ".env"), "NODE_TLS_REJECT_UNAUTHORIZED=0\n");
            return { cwd: join(w.host.root, "tmp") };
          },
          { code: 1, app: "intact", next: "intact", cause: new RegExp(`bin=app\\d+ event=target_unavailable .*${cause.source}`) },
          { server, env },
        );
        expect(w.server.requests).toEqual([]);
      }
    } finally {
      await wrongName.stop();
      await selfSigned.stop();
    }
  });

  test("a redirect from https to http is refused", async () => {
    const w = await faultCase(
      (w) => {
        bm.setTarget(w.app, w.target.get(w.app)!);
        w.server.setPrimary(w.app, redirect(`${bm.api}/download/${w.app}`));
        w.server.setFallback(w.app, redirect(`${bm.api}/download/${w.app}`, 301));
      },
      appFails(/bin=app\d+ event=update_failed phase=download .*redirect from https to http refused.*redirect from https to http refused/),
      { server: tls, env: { NODE_EXTRA_CA_CERTS: pki.caFile } },
    );
    expect(bm.count("GET", primaryPath(w.app))).toBe(0);
  });

  test("the token goes to the API's origin only: not after a redirect elsewhere, not to another download origin", async () => {
    const other = await startBinManager();
    try {
      // A redirect to another origin is followed (within the limit) but without the token.
      let w = await faultCase(
        (w) => {
          other.setTarget(w.app, w.target.get(w.app)!);
          w.server.setPrimary(w.app, redirect(`${other.api}/download/${w.app}`));
        },
        { code: 0, app: "updated", next: "updated", cause: null },
      );
      expect(other.count("GET", primaryPath(w.app))).toBe(1);
      for (const r of other.requests) expect(r.headers["authorization"]).toBeUndefined();
      for (const r of w.server.requests) expect(r.headers["authorization"], `${r.method} ${r.path}`).toBe(`Bearer ${TOKEN}`);

      // DOWNLOAD_BASE_URL on another origin: downloaded there without the token.
      other.clearRequests();
      (w = await faultCase(
        (w) => {
          other.setTarget(w.app, w.target.get(w.app)!);
          other.setTarget(w.next, w.target.get(w.next)!);
        },
        { code: 0, app: "updated", next: "updated", cause: null },
        { env: { DOWNLOAD_BASE_URL: `${other.api}/download` } },
      ));
      expect(other.requests.length).toBe(2);
      for (const r of other.requests) expect(r.headers["authorization"]).toBeUndefined();
      expect(w.server.count("GET", primaryPath(w.app))).toBe(0);
    } finally {
      await other.stop();
    }
  });

  test("a configuration error quoting a value that holds the token is redacted", async () => {
    await faultCase(() => ({ env: { NODE_NAME: `node ${TOKEN}` } }), { code: 2, app: "intact", next: "intact", cause: null }, {
      check: (w, run) => {
        expect(run.stderr).toMatch(/^bin-proxy: configuration error: NODE_NAME must be .*"node \[redacted\]" \(set in the environment\)$/m);
        expect(w.host.log()).toMatch(/level=warn event=not_started error=.*node \[redacted\]/);
      },
    });
  });

  test("the token never reaches a child process: supervisorctl gets it neither in its arguments nor in its environment", async () => {
    const supDir = mkdtempSync(join(tmpdir(), "bin-proxy-faults-sup-"));
    const record = join(supDir, "ctl-calls");
    let sup: Awaited<ReturnType<typeof startSupervisor>> | undefined;
    try {
      await faultCase(
        async (w) => {
          sup = await startSupervisor(supDir, [{ name: w.app, command: join(w.host.binDir, w.app) }]);
          // A probe in front of the real supervisorctl records what bin-proxy hands its child.
          const probe = join(supDir, "ctl-probe");
          writeFileSync(probe, `#!/bin/sh\n{ printf 'argv:'; printf ' %s' "$@"; echo; env; } >>'${record}'\nexec '${sup.ctl}' "$@"\n`);
          chmodSync(probe, 0o755);
          w.host.writeManifest([w.app, w.next].map((name) => ({ serviceName: name === w.app ? name : "", binaryName: name, version: sha256(w.old.get(name)!), previousVersion: "", port: 0 })));
          return { env: { SUPERVISORCTL: probe } };
        },
        { code: 0, app: "updated", next: "updated", cause: null },
      );
      const calls = readFileSync(record, "utf8");
      expect(calls).toMatch(/^argv: restart app\d+$/m);
      expect(calls).toMatch(/^PATH=/m);
      expect(calls).not.toContain(TOKEN);
      expect(calls).not.toContain("BIN_MANAGER_TOKEN");
    } finally {
      await sup?.stop();
      rmSync(supDir, { recursive: true, force: true });
    }
  }, 60_000);
});

/** Runs mount; the error text when this machine does not allow it (not root, no CAP_SYS_ADMIN, a container). */
/** A filesystem mounted over dir for one case (then made read-only when asked); a case that cannot have one fails with the reason. */
function mountOrFail(w: World, dir: string, args: string[], readOnly = false): void {
  w.teardown.push(mountOver(dir, args));
  if (readOnly) mountOver(dir, ["-o", "remount,bind,ro"]);
}

function prlimit(): string {
  const path = Bun.which("prlimit");
  if (!path) throw new Error("prlimit (util-linux) is needed to set RLIMIT_FSIZE on bin-proxy");
  return path;
}

/** Writes the world's binaries again: after a filesystem was mounted over BIN_DIR. */
function rewriteBinaries(w: World): void {
  for (const [name, bytes] of w.old) w.host.writeBinary(name, bytes);
}

describe("the filesystem fights back", () => {
  const installFails = (phase: string, cause: RegExp) => appFails(new RegExp(`bin=app\\d+ event=update_failed phase=${phase} .*${cause.source}`));

  test("a full disk during the download: the partial file is removed, the old binary stays", async () => {
    let how = "";
    await faultCase(
      (w) => {
        const error = mount(["-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", w.host.binDir]);
        if (error === null) {
          how = "tmpfs";
          w.teardown.push(() => unmount(w.host.binDir));
          rewriteBinaries(w);
          return;
        }
        // Said on the output, so a run where no filesystem could be made never passes for one where it was.
        console.log(`full disk: cannot mount a 2 MiB tmpfs here (${error}); falling back to RLIMIT_FSIZE=2 MiB on bin-proxy, which fails the same write`);
        how = "rlimit";
        return { prefix: [prlimit(), `--fsize=${2 * MIB}`, "--"] };
      },
      { code: 1, app: "intact", next: "updated", cause: /bin=app\d+ event=update_failed phase=download .*(ENOSPC: no space left on device|EFBIG: file too large)/ },
      {
        appSize: 3 * MIB,
        check: (w) => {
          expect(w.host.log()).toMatch(how === "tmpfs" ? /ENOSPC.*ENOSPC/ : /EFBIG.*EFBIG/);
          // Both attempts filled the disk, and both partial files are gone: the space is back.
          if (how === "tmpfs") expect(Number(Bun.spawnSync(["df", "--output=used", "-B1", w.host.binDir]).stdout.toString().split("\n")[1])).toBeLessThan(MIB);
        },
      },
    );
  });

  test("RLIMIT_FSIZE: SIGXFSZ does not kill bin-proxy; the write fails, the partial file is removed", async () => {
    // Bun ignores SIGXFSZ, so an over-limit write fails with EFBIG instead of killing the process (exit 153).
    await faultCase(
      () => ({ prefix: [prlimit(), `--fsize=${MIB}`, "--"] }),
      installFails("download", /EFBIG: file too large.*EFBIG: file too large/),
      { appSize: 2 * MIB },
    );
  });

  test("a full disk where the manifest lives: the update is undone and the manifest stays as it was", async () => {
    let manifestBefore = "";
    await faultCase(
      (w) => {
        const etc = join(w.host.root, "etc");
        const saved = ["config", "bin-manifests.json"].map((f) => [f, readFileSync(join(etc, f))] as const);
        mountOrFail(w, etc, ["-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs"]);
        for (const [f, bytes] of saved) writeFileSync(join(etc, f), bytes);
        manifestBefore = readFileSync(w.host.manifest, "utf8");
        // Fill the rest of the filesystem: no rewrite of the manifest can succeed.
        Bun.spawnSync(["dd", "if=/dev/zero", `of=${join(etc, "filler")}`, "bs=4k"], { stdout: "ignore", stderr: "ignore" });
      },
      { code: 1, app: "intact", next: "intact", cause: /bin=app\d+ event=update_failed phase=report .*ENOSPC: no space left on device/ },
      { check: (w) => expect(readFileSync(w.host.manifest, "utf8")).toBe(manifestBefore) },
    );
  });

  test("a full disk where the state lives: the journal record cannot be written, so nothing is swapped", async () => {
    await faultCase(
      (w) => {
        mountOrFail(w, w.host.stateDir, ["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"]);
        Bun.spawnSync(["dd", "if=/dev/zero", `of=${join(w.host.stateDir, "filler")}`, "bs=4k"], { stdout: "ignore", stderr: "ignore" });
      },
      { code: 1, app: "intact", next: "intact", cause: /bin=app\d+ event=update_failed phase=journal .*ENOSPC: no space left on device/ },
    );
  });

  test("BIN_DIR read-only", async () => {
    await faultCase(
      (w) => {
        mountOrFail(w, w.host.binDir, ["--bind", w.host.binDir], true);
      },
      { code: 1, app: "intact", next: "intact", cause: /bin=app\d+ event=update_failed phase=download .*EROFS: read-only file system/ },
    );
  });

  test("LOCK_DIR missing: created 0700", async () => {
    await faultCase((w) => rmSync(w.host.lockDir, { recursive: true }), { code: 0, app: "updated", next: "updated", cause: null }, {
      check: (w) => expect(statSync(w.host.lockDir).mode & 0o7777).toBe(0o700),
    });
  });

  test("LOCK_DIR a symlink: refused, nothing written through it", async () => {
    for (const dangling of [false, true]) {
      await faultCase(
        (w) => {
          rmSync(w.host.lockDir, { recursive: true });
          const target = join(w.outside, "lock-target");
          if (!dangling) mkdirSync(target, { mode: 0o700 });
          symlinkSync(dangling ? w.dangling : target, w.host.lockDir);
        },
        { code: 1, app: "intact", next: "intact", cause: /event=setup_failed error="lock directory: .*\/lock is a symlink; refusing to use it"/ },
      );
    }
  });

  test("LOCK_DIR writable by others: refused, sticky bit or not; and one owned by another user", async () => {
    const cases: [(dir: string) => void, RegExp][] = [
      [(dir) => chmodSync(dir, 0o777), /is world-writable; make it 0700/],
      [(dir) => chmodSync(dir, 0o1777), /is world-writable; make it 0700/],
      [(dir) => chownSync(dir, 65534, 65534), /belongs to uid 65534, who could plant files in it/],
    ];
    for (const [spoil, cause] of cases) {
      await faultCase((w) => spoil(w.host.lockDir), { code: 1, app: "intact", next: "intact", cause: new RegExp(`event=setup_failed .*lock directory .*${cause.source}`) });
    }
  });

  test("a symlink planted where a lock, partial, backup or temp file will be created is never followed; a hard link or FIFO at the partial is not used", async () => {
    const updated: Expectation = { code: 0, app: "updated", next: "updated", cause: null };
    const lockOf = (w: World) => join(w.host.lockDir, `${w.app}-${w.target.get(w.app)!.sha256}.lock`);
    const oldSha = (w: World) => sha256(w.old.get(w.app)!);

    // A directory where another version's lock would be: it cannot be dropped, so the lock just taken
    // is given up again; the update fails naming it, and no lock is left naming this run.
    await faultCase((w) => mkdirSync(join(w.host.lockDir, `${w.app}-${"e".repeat(64)}.lock`)), installFails("lock", /EISDIR/));
    // The version lock: refused (ELOOP), the update of that binary fails, the others go on.
    await faultCase((w) => symlinkSync(w.victim, lockOf(w)), installFails("lock", /ELOOP.*a symlink where bin-proxy keeps its own file; it is never followed/));
    // The manifest's lock: no manifest change can be recorded, so the updates are undone.
    await faultCase(
      (w) => symlinkSync(w.victim, join(w.host.lockDir, ".bin-proxy-manifest.lock")),
      { code: 1, app: "intact", next: "intact", cause: /bin=app\d+ event=update_failed phase=report .*ELOOP/ },
    );
    // The partial download: removed (unlink never follows), then created exclusively.
    await faultCase((w) => symlinkSync(w.victim, join(w.host.binDir, `.${w.app}.${w.target.get(w.app)!.sha256}.part`)), updated);
    // A hard link there (as a killed rollback leaves its staged backup): never resumed nor truncated, since its bytes are another file's.
    await faultCase((w) => linkSync(w.victim, join(w.host.binDir, `.${w.app}.${w.target.get(w.app)!.sha256}.part`)), updated);
    // A FIFO there: never opened for reading bytes that will not come (the pass would wait forever).
    await faultCase((w) => expect(spawnSync("mkfifo", [join(w.host.binDir, `.${w.app}.${w.target.get(w.app)!.sha256}.part`)]).status).toBe(0), updated);
    // The backup: replaced by rename, which never follows; it then holds the old binary.
    await faultCase(
      (w) => {
        mkdirSync(join(w.host.stateDir, "backups", w.app), { recursive: true, mode: 0o700 });
        symlinkSync(w.victim, join(w.host.stateDir, "backups", w.app, oldSha(w)));
      },
      updated,
      { check: (w) => expect(sha256(readFileSync(join(w.host.stateDir, "backups", w.app, oldSha(w))))).toBe(oldSha(w)) },
    );
    // The backup directory: refused, since creating files in it would write outside the state directory.
    await faultCase(
      (w) => {
        mkdirSync(join(w.outside, "backups"));
        symlinkSync(join(w.outside, "backups"), join(w.host.stateDir, "backups"));
      },
      { code: 1, app: "intact", next: "intact", cause: /bin=app\d+ event=update_failed phase=install .*\/state\/backups is a symlink; refusing to use it/ },
    );
    // Every temp file named by pid: planted by a shell that then execs bin-proxy, so $$ is its pid.
    await faultCase(
      (w) => {
        mkdirSync(join(w.host.stateDir, "backups", w.app), { recursive: true, mode: 0o700 });
        const temps = [
          [join(w.host.root, "etc"), ".bin-manifests.json."],
          [w.host.stateDir, ".hash-cache.json."],
          [w.host.lockDir, `..${w.app}-${w.target.get(w.app)!.sha256}.lock.holder.`],
          [join(w.host.stateDir, "backups", w.app), `.${oldSha(w)}.`],
        ];
        const plant = temps.map(([dir, prefix], i) => `ln -s '${i === 0 ? w.victim : w.dangling}' '${dir}/${prefix}'$$'.tmp'`).join(" && ");
        return { prefix: ["/bin/sh", "-c", `${plant} && exec "$0"`] };
      },
      updated,
    );
    // The log file: not appended through the link; the pass runs and says so on stderr.
    await faultCase((w) => symlinkSync(w.victim, w.host.logFile), { ...updated, logTo: "stderr" }, {
      check: (_w, run) => expect(run.stderr).toMatch(/cannot write log file .*ELOOP/),
    });
  });

  test("a managed binary that is itself a symlink is refused, and left as it is", async () => {
    await faultCase(
      (w) => {
        const real = join(w.outside, "real-app");
        writeFileSync(real, w.old.get(w.app)!, { mode: 0o755 });
        rmSync(join(w.host.binDir, w.app));
        symlinkSync(real, join(w.host.binDir, w.app));
      },
      installFails("check", /\/bin\/app\d+ is a symlink; bin-proxy manages regular files only/),
      {
        check: (w) => {
          expect(readlinkSync(join(w.host.binDir, w.app))).toBe(join(w.outside, "real-app"));
          expect(sha256(readFileSync(join(w.outside, "real-app")))).toBe(sha256(w.old.get(w.app)!));
          expect(w.server.count("GET", primaryPath(w.app))).toBe(0);
        },
      },
    );
  });

  test("an unwritable log file: the error is on stderr, the pass still runs", async () => {
    for (const where of ["a directory", "a missing directory"]) {
      await faultCase(
        () => ({}),
        { code: 0, app: "updated", next: "updated", cause: null, logTo: "stderr" },
        {
          env: { LOG_FILE: where === "a directory" ? "/" : "/nonexistent-dir/bin-proxy.log" },
          check: (w, run) => {
            expect(run.stderr).toMatch(where === "a directory" ? /^bin-proxy: cannot write log file \/: EISDIR/m : /^bin-proxy: cannot write log file \/nonexistent-dir\/bin-proxy.log: ENOENT/m);
            // What the log lost reaches stderr, where cron mails it.
            expect(run.stderr).toMatch(new RegExp(`level=info bin=${w.app} event=updated`));
            expect(existsSync("/nonexistent-dir")).toBe(false);
          },
        },
      );
    }
  });
});

describe("the manifest", () => {
  const invalid: [string, string, RegExp][] = [
    ["invalid JSON", `{"binaries": [ {"binaryName": "x"`, /not valid JSON/],
    ["an empty file", "", /not valid JSON/],
    ["wrong types: binaryName", JSON.stringify({ binaries: [{ binaryName: 5 }] }), /binaryName must be a string/],
    ["wrong types: port", JSON.stringify({ binaries: [{ binaryName: "x", port: "8080" }] }), /port must be a whole number/],
    ["wrong types: version", JSON.stringify({ binaries: [{ binaryName: "x", version: 12 }] }), /version must be/],
    ["wrong types: nodeInfo", JSON.stringify({ binaries: [], nodeInfo: [] }), /\\"nodeInfo\\" must be an object/],
    ["wrong types: an entry", JSON.stringify({ binaries: ["x"] }), /must be an object/],
    ["duplicate binaryName", JSON.stringify({ binaries: [{ binaryName: "x" }, { binaryName: "x" }] }), /binaryName \\"x\\" appears twice/],
    ["missing binaries", JSON.stringify({ nodeInfo: {} }), /\\"binaries\\" must be an array/],
    ["not an object", "[]", /must be a JSON object/],
  ];
  for (const [row, text, cause] of invalid) {
    test(`${row}: exit 2, the file untouched`, async () => {
      let mtime = 0n;
      await faultCase(
        (w) => {
          writeFileSync(w.host.manifest, text);
          mtime = statSync(w.host.manifest, { bigint: true }).mtimeNs;
        },
        { code: 2, app: "intact", next: "intact", cause: new RegExp(`event=manifest_invalid .*${cause.source}`) },
        {
          check: (w) => {
            expect(readFileSync(w.host.manifest, "utf8")).toBe(text);
            expect(statSync(w.host.manifest, { bigint: true }).mtimeNs).toBe(mtime);
            expect(w.server.requests).toEqual([]);
          },
        },
      );
    });
  }

  test("a manifest bin-proxy rewrote stays byte-stable when nothing changed", async () => {
    await faultCase(
      (w) => {
        // The operator's own layout: four-space indent, fields bin-proxy does not know, in their order.
        const doc = {
          comment: "kept",
          binaries: [w.app, w.next].map((name) => ({ binaryName: name, serviceName: "", owner: "team-a", version: sha256(w.old.get(name)!), previousVersion: "", port: 0 })),
          nodeInfo: { cpuArch: "", osRelease: "", nodeName: "", binProxyVersion: "", rack: "r1" },
        };
        writeFileSync(w.host.manifest, JSON.stringify(doc, null, 4) + "\n");
      },
      { code: 0, app: "updated", next: "updated", cause: null },
      {
        check: async (w) => {
          const first = readFileSync(w.host.manifest, "utf8");
          expect(first).toContain('\n    "comment": "kept",\n');
          expect(first).toContain('"owner": "team-a"');
          expect(first).toContain('"rack": "r1"');
          const st = statSync(w.host.manifest, { bigint: true });
          for (let i = 0; i < 2; i++) {
            const again = await pass(w);
            expect(again.code, again.stderr).toBe(0);
            expect(readFileSync(w.host.manifest, "utf8")).toBe(first);
            const now = statSync(w.host.manifest, { bigint: true });
            expect([now.ino, now.mtimeNs, now.ctimeNs]).toEqual([st.ino, st.mtimeNs, st.ctimeNs]);
          }
        },
      },
    );
  });
});
