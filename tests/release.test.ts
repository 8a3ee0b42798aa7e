// Tests of the release build: both targets built, checksummed and signed with the real minisign, dist/ served as a release installs, the build ignores a hostile working directory, the aarch64 executable runs a pass under qemu.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pkg from "../package.json" with { type: "json" };
import { buildRelease, RELEASE_ASSETS, writeReleaseFiles } from "../scripts/build.ts";
import { artifact, startBinManager, type BinManager } from "./fixture/bin-manager.ts";
import { hostPool, runBinProxy, type Host } from "./fixture/host.ts";
import { makeKeyPair, requireMinisign } from "./fixture/minisign.ts";

const QEMU = "qemu-aarch64-static";
/** Debian's arm64 libc (libc6-arm64-cross): qemu-user finds the loader and libc.so.6 there. */
const ARM64_SYSROOT = "/usr/aarch64-linux-gnu";

const scratch = mkdtempSync(join(tmpdir(), "bin-proxy-release-test-"));
const dist = join(scratch, "dist");
const assetPath = (asset: (typeof RELEASE_ASSETS)[number]["asset"]) => join(dist, asset);
const x86_64 = assetPath("bin-proxy-linux-x86_64");
const aarch64 = assetPath("bin-proxy-linux-aarch64");

const sha256Of = (path: string) => new Bun.CryptoHasher("sha256").update(readFileSync(path)).digest("hex");

let bm: BinManager;
const hosts = hostPool();
const host = hosts.make;

beforeAll(async () => {
  if (process.arch !== "x64") throw new Error(`these tests run the x86_64 build natively: an x86_64 machine is needed, not ${process.arch}`);
  await buildRelease(dist);
  bm = await startBinManager();
}, 600_000);

afterAll(async () => {
  await bm?.stop();
  hosts.cleanup();
  rmSync(scratch, { recursive: true, force: true });
});

/** What --version must say for a target: version, commit, target and Bun's version. */
function versionPattern(target: string): RegExp {
  const escape = (s: string) => s.replace(/[.]/g, "\\.");
  return new RegExp(`^bin-proxy ${escape(pkg.version)} \\(commit [0-9a-f]{12}(-dirty)?, target ${target}, bun ${escape(Bun.version)}\\)\\n$`);
}

/** A one-binary pass to run: the API offers `app`, which the host does not have yet. */
function installScenario() {
  const h = host();
  const name = `app-${hosts.all.length}`;
  const app = artifact(`#!/bin/sh\n# ${name}\necho ${name}\n`);
  bm.setTarget(name, app, "1.0.0");
  h.writeManifest([{ serviceName: "", binaryName: name, version: "", previousVersion: "", port: 0 }]);
  return { h, name, app };
}

function expectInstalled(h: Host, name: string, app: ReturnType<typeof artifact>) {
  expect(sha256Of(join(h.binDir, name))).toBe(app.sha256);
  expect(h.readManifest().binaries[0]!.version).toBe(app.sha256);
  const reports = bm.requests.filter((r) => r.method === "POST" && r.path === `/api/v1/bins/${name}`);
  expect(reports.map((r) => r.body)).toEqual([{ nodeName: "test-node", binName: name, sha256: app.sha256, version: "1.0.0" }]);
}

describe("release build", () => {
  test("writes both executables, install.sh and a SHA256SUMS of the three that sha256sum -c accepts; unsigned, no signatures", () => {
    const sums = readFileSync(join(dist, "SHA256SUMS"), "utf8");
    expect(sums).toMatch(/^([0-9a-f]{64} {2}bin-proxy-linux-(x86_64|aarch64)\n){2}[0-9a-f]{64} {2}install\.sh\n$/);
    expect(readFileSync(join(dist, "install.sh"), "utf8")).toBe(readFileSync(join(import.meta.dir, "../scripts/install.sh"), "utf8"));
    expect(readdirSync(dist).sort()).toEqual(["SHA256SUMS", "bin-proxy-linux-aarch64", "bin-proxy-linux-x86_64", "install.sh"]);
    const check = Bun.spawnSync(["sha256sum", "-c", "--strict", "SHA256SUMS"], { cwd: dist });
    expect(check.stdout.toString()).toBe("bin-proxy-linux-x86_64: OK\nbin-proxy-linux-aarch64: OK\ninstall.sh: OK\n");
    expect(check.exitCode).toBe(0);
    // A changed byte is caught: the file really describes these executables.
    writeFileSync(join(scratch, "SHA256SUMS"), sums.replace(/^[0-9a-f]/, (c) => (c === "0" ? "1" : "0")));
    const tampered = Bun.spawnSync(["sha256sum", "-c", join(scratch, "SHA256SUMS")], { cwd: dist });
    expect(tampered.exitCode).not.toBe(0);
  });

  test("the x86_64 executable is the baseline build and says so in --version", async () => {
    const { code, stdout } = await runBinProxy(["--version"], {}, { executable: x86_64 });
    expect(code).toBe(0);
    expect(stdout).toMatch(versionPattern("bun-linux-x64-baseline"));
  });

  test("a hostile .env or bunfig.toml in the working directory is ignored", async () => {
    const { h, name, app } = installScenario();
    const cwd = join(h.root, "cwd");
    const dead = `http://127.0.0.1:9`;
    const preloaded = join(h.root, "preloaded");
    writeFileSync(join(h.root, "preload.ts"), `require("node:fs").writeFileSync(${JSON.stringify(preloaded)}, "ran");\n`);
    mkdirSync(cwd);
    const dotenv = `HTTP_PROXY=${dead}\nhttp_proxy=${dead}\nNODE_TLS_REJECT_UNAUTHORIZED=0\nNODE_NAME=from-dotenv\n`;
    writeFileSync(join(cwd, ".env"), dotenv);
    writeFileSync(join(cwd, ".env.local"), dotenv);
    writeFileSync(join(cwd, "bunfig.toml"), `preload = [${JSON.stringify(join(h.root, "preload.ts"))}]\n`);
    // NO_PROXY would exempt the API from the proxy, and NODE_NAME would win over the file: leave both out.
    const { NO_PROXY: _noProxy, NODE_NAME: _nodeName, ...env } = h.env(bm.api);

    // What these files would do if they were loaded: the same settings in the environment change
    // the node name the API is told (--dry-run, so this check changes nothing) and run the preload.
    // (HTTP_PROXY would reroute an API that is not on loopback; loopback is always reached directly.)
    bm.clearRequests();
    const renamed = await runBinProxy(["--dry-run"], { ...env, NODE_NAME: "from-dotenv" }, { executable: x86_64 });
    expect(renamed.code).toBe(0);
    expect(bm.requests.some((r) => JSON.stringify(r).includes("from-dotenv"))).toBe(true);
    const preload = await runBinProxy(["--version"], { ...env, BUN_OPTIONS: `--preload ${join(h.root, "preload.ts")}` }, { executable: x86_64 });
    expect(preload.code).toBe(0);
    expect(existsSync(preloaded)).toBe(true);
    rmSync(preloaded);

    bm.clearRequests();
    const run = await runBinProxy([], env, { executable: x86_64, cwd });
    expect(run.stderr).toBe("");
    expect(run.code).toBe(0);
    expect(existsSync(preloaded)).toBe(false);
    expect(sha256Of(join(h.binDir, name))).toBe(app.sha256);
    expect(bm.requests.some((r) => JSON.stringify(r).includes("from-dotenv"))).toBe(false);
  });
});

describe("a signed release (BIN_PROXY_SIGNING_KEY), signed by the real minisign", () => {
  let signed: string;
  let pub: string;
  let secret: string;
  beforeAll(() => {
    signed = join(scratch, "signed");
    mkdirSync(signed);
    for (const { asset } of RELEASE_ASSETS) copyFileSync(assetPath(asset), join(signed, asset));
    ({ publicKey: pub, secretKey: secret } = makeKeyPair(scratch));
    writeReleaseFiles(signed, secret);
  });

  // The release signatures are checked with the real minisign.
  const verifies = (file: string) => Bun.spawnSync([requireMinisign(), "-V", "-p", pub, "-m", file], { stdin: "ignore" }).exitCode === 0;

  test("SHA256SUMS and a FILE.sha256 beside each executable, each with a .minisig that minisign -V accepts", () => {
    expect(readdirSync(signed).sort()).toEqual([
      "SHA256SUMS", "SHA256SUMS.minisig",
      "bin-proxy-linux-aarch64", "bin-proxy-linux-aarch64.sha256", "bin-proxy-linux-aarch64.sha256.minisig",
      "bin-proxy-linux-x86_64", "bin-proxy-linux-x86_64.sha256", "bin-proxy-linux-x86_64.sha256.minisig",
      "install.sh",
    ]);
    for (const { asset } of RELEASE_ASSETS) {
      expect(readFileSync(join(signed, `${asset}.sha256`), "utf8")).toBe(`${sha256Of(join(signed, asset))}  ${asset}\n`);
      expect(verifies(join(signed, `${asset}.sha256`))).toBe(true);
    }
    expect(verifies(join(signed, "SHA256SUMS"))).toBe(true);
    // The signatures really cover these files: one changed byte and minisign refuses.
    const copy = join(scratch, "SHA256SUMS");
    writeFileSync(copy, readFileSync(join(signed, "SHA256SUMS"), "utf8").replace(/^[0-9a-f]/, (c) => (c === "0" ? "1" : "0")));
    copyFileSync(join(signed, "SHA256SUMS.minisig"), `${copy}.minisig`);
    expect(verifies(copy)).toBe(false);
  });

  test("serving the release directory is a complete release: install.sh --pubkey from it installs the real executable", async () => {
    const server = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: (req) => {
        const file = join(signed, new URL(req.url).pathname.slice(1));
        return existsSync(file) ? new Response(Bun.file(file)) : new Response("not found\n", { status: 404 });
      },
    });
    try {
      const url = `http://127.0.0.1:${server.port}`;
      const root = join(scratch, "installed");
      mkdirSync(root);
      // The one-liner of the README: the installer fetched from the release, its key given by file.
      const proc = Bun.spawn(["sh", "-c", `curl -fsS "$URL/install.sh" | dash -s -- --release-url "$URL" --pubkey "$PUB"`], {
        env: { PATH: process.env.PATH ?? "/usr/bin:/bin", URL: url, PUB: pub, DESTDIR: root, NO_PROXY: "127.0.0.1", no_proxy: "127.0.0.1" },
        stdin: "ignore",
        stdout: "pipe",
        stderr: "pipe",
      });
      const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
      if (code !== 0) throw new Error(`install.sh exited ${code}:\n${stdout}\n${stderr}`);
      expect(stdout).toContain("SHA256SUMS is signed by the --pubkey key");
      expect(sha256Of(join(root, "usr/local/sbin/bin-proxy"))).toBe(sha256Of(x86_64));
      expect(stdout).toMatch(/installed .*usr\/local\/sbin\/bin-proxy \(bin-proxy \d+\.\d+\.\d+ \(commit /);
    } finally {
      await server.stop(true);
    }
  });

  test("an unsigned build over a signed one removes the signatures it left", () => {
    const dir = join(scratch, "resigned");
    mkdirSync(dir);
    for (const file of readdirSync(signed)) copyFileSync(join(signed, file), join(dir, file));
    writeReleaseFiles(dir);
    expect(readdirSync(dir).sort()).toEqual(["SHA256SUMS", "bin-proxy-linux-aarch64", "bin-proxy-linux-x86_64", "install.sh"]);
  });

  test("a signing that fails half-way (a key minisign cannot use) leaves no signature of an earlier build beside the new files", () => {
    const dir = join(scratch, "badly-signed");
    mkdirSync(dir);
    for (const file of readdirSync(signed)) copyFileSync(join(signed, file), join(dir, file));
    const broken = join(scratch, "broken.key");
    writeFileSync(broken, "untrusted comment: not a minisign secret key\nAAAA\n");
    expect(() => writeReleaseFiles(dir, broken)).toThrow(/minisign -S -s .*broken\.key -m .* failed/);
    expect(readdirSync(dir).filter((f) => f.endsWith(".minisig"))).toEqual([]);
  });

  test("a signing key that does not exist stops the build before anything is compiled", async () => {
    const out = join(scratch, "never");
    await expect(buildRelease(out, { signingKey: join(scratch, "no-such.key") })).rejects.toThrow(/BIN_PROXY_SIGNING_KEY names .*no-such\.key, which does not exist/);
    expect(existsSync(out)).toBe(false);
  });
});

describe("the aarch64 executable under qemu-user", () => {
  /** A stand-in executable that runs the aarch64 build under qemu, so the fixture runner can start it. */
  function qemuRunner(): string {
    const qemu = Bun.which(QEMU);
    if (!qemu) throw new Error(`${QEMU} is not installed (apt-get install qemu-user-static): the aarch64 build must be run, not only built`);
    if (!existsSync(join(ARM64_SYSROOT, "lib", "ld-linux-aarch64.so.1"))) {
      throw new Error(`the arm64 libc is not installed in ${ARM64_SYSROOT} (apt-get install libc6-arm64-cross)`);
    }
    const runner = join(scratch, "bin-proxy-aarch64");
    writeFileSync(runner, `#!/bin/sh\nexec ${qemu} -L ${ARM64_SYSROOT} ${aarch64} "$@"\n`, { mode: 0o755 });
    return runner;
  }

  test("--version names the arm64 target", async () => {
    const { code, stdout, stderr } = await runBinProxy(["--version"], {}, { executable: qemuRunner(), timeoutMs: 120_000 });
    expect(stderr).toBe("");
    expect(code).toBe(0);
    expect(stdout).toMatch(versionPattern("bun-linux-arm64"));
  });

  test("one full pass: downloads, installs and records a binary, and reports the node as aarch64", async () => {
    const { h, name, app } = installScenario();
    bm.clearRequests();
    const run = await runBinProxy([], h.env(bm.api), { executable: qemuRunner(), timeoutMs: 120_000 });
    if (run.code !== 0) throw new Error(`the pass exited ${run.code}:\n${run.stderr}\n${h.log()}`);
    expectInstalled(h, name, app);
    expect(h.log()).toContain(`event=updated`);
    const keepalive = bm.requests.find((r) => r.method === "POST" && r.path === "/api/v1/keepalive");
    expect((keepalive?.body as { cpuArch?: string } | undefined)?.cpuArch).toBe("aarch64");
    expect(h.readManifest().nodeInfo?.cpuArch).toBe("aarch64");
    // The version lock was taken (through bun:ffi and libc) and released.
    expect(h.listFiles().filter((f) => f.startsWith(`lock/${name}-`))).toEqual([]);
  });
});
