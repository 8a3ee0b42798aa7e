// Tests of scripts/install.sh: dash runs it against a local release server, into a temp root (DESTDIR).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  chmodSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { makeKeyPair, requireMinisign, sign, type KeyPair } from "./fixture/minisign.ts";

const INSTALLER = resolve(import.meta.dir, "../scripts/install.sh");
// Its output is not thrown away: cron mails what a pass prints (nothing, unless it fails).
const SEED_CRON_LINE = "* * * * * root /usr/local/sbin/bin-proxy.sh";
const OLD_SCRIPT = "#!/bin/sh\n# the old bin-proxy.sh\necho old\n";
// What bin-proxy.sh becomes: the host's path, whatever DESTDIR the install used.
const WRAPPER = '#!/bin/sh\nexec /usr/local/sbin/bin-proxy "$@"\n';
const ASSETS = ["bin-proxy-linux-x86_64", "bin-proxy-linux-aarch64"] as const;

const scratch = mkdtempSync(join(tmpdir(), "bin-proxy-install-test-"));
const sha256 = (data: string | Uint8Array) => new Bun.CryptoHasher("sha256").update(data).digest("hex");

// A fake release executable: answers --version like bin-proxy (or like another program, `name`),
// or fails it like a binary that cannot run on the host. MARKER lets a test see that --version is
// running; RAN, that a cron line reached it (and with which arguments); run that way, it prints a
// line, as a failing pass does, for cron to mail.
function fakeExecutable(version: string, arch: string, runs = true, name = "bin-proxy"): string {
  return runs
    ? `#!/bin/sh\nif [ -n "\${MARKER:-}" ]; then : >"$MARKER"; sleep 1; fi\n` +
        `if [ -n "\${RAN:-}" ]; then echo "bin-proxy ${version} (${arch}) ran with [$*]" >>"$RAN"; echo "what a pass printed"; fi\n` +
        `[ "$1" = --version ] && echo "${name} ${version} (${arch})"\nexit 0\n`
    : `#!/bin/sh\necho "cannot execute binary file: Exec format error" >&2\nexit 126\n`;
}

// Releases served under /<name>/, each a map of file name to content.
const releases = new Map<string, Map<string, string>>();
function addRelease(name: string, version: string, opts: { runs?: boolean; sums?: "ok" | "wrong" | "missing"; program?: string } = {}) {
  const files = new Map<string, string>();
  for (const asset of ASSETS) files.set(asset, fakeExecutable(version, asset.slice("bin-proxy-linux-".length), opts.runs, opts.program));
  const sums = ASSETS.map((asset) => {
    const hash = opts.sums === "wrong" ? sha256(`not ${asset}`) : sha256(files.get(asset)!);
    return `${hash}  ${asset}\n`;
  });
  files.set("SHA256SUMS", opts.sums === "missing" ? "" : sums.join(""));
  files.set("install.sh", readFileSync(INSTALLER, "utf8"));
  releases.set(name, files);
  return files;
}
const v1 = addRelease("v1", "1.0.0");
const v2 = addRelease("v2", "2.0.0");
addRelease("badsum", "1.0.0", { sums: "wrong" });
addRelease("nosum", "1.0.0", { sums: "missing" });
addRelease("broken", "1.0.0", { runs: false });
addRelease("impostor", "1.0.0", { program: "manager" });

/** Signs a release's SHA256SUMS with the real minisign, as a release pipeline does; `tamper` changes SHA256SUMS after signing. */
function signRelease(files: Map<string, string>, keys: KeyPair, tamper = false) {
  const dir = newDir("sign");
  writeFileSync(join(dir, "SHA256SUMS"), files.get("SHA256SUMS")!);
  files.set("SHA256SUMS.minisig", new TextDecoder().decode(sign(keys, join(dir, "SHA256SUMS"))));
  if (tamper) files.set("SHA256SUMS", files.get("SHA256SUMS")!.replace(/^[0-9a-f]/, (c) => (c === "0" ? "1" : "0")));
}

/** A key pair made by the real minisign (the installer's --pubkey is checked against it): its files, and the public key's base64 line. */
function keyPair(): KeyPair & { pubFile: string; pub: string } {
  const keys = makeKeyPair(newDir("key"));
  return { ...keys, pubFile: keys.publicKey, pub: keys.publicText.trim().split("\n").at(-1)! };
}

let server: ReturnType<typeof Bun.serve>;
let downUrl = "";
/** Every path the release server was asked for, in order. */
const served: string[] = [];
const url = (release: string) => `http://127.0.0.1:${server.port}/${release}`;

beforeAll(async () => {
  server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      const [, release = "", file = ""] = new URL(req.url).pathname.split("/");
      served.push(`${release}/${file}`);
      const body = releases.get(release)?.get(file);
      return body === undefined ? new Response("not found\n", { status: 404 }) : new Response(body);
    },
  });
  // A port that refuses connections: a server that was there and is gone.
  const gone = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("") });
  downUrl = `http://127.0.0.1:${gone.port}/v1`;
  await gone.stop(true);
});

afterAll(async () => {
  await server.stop(true);
  rmSync(scratch, { recursive: true, force: true });
});

let counter = 0;
function newDir(prefix: string): string {
  const dir = join(scratch, `${prefix}-${++counter}`);
  mkdirSync(dir, { recursive: true });
  return dir;
}

function put(root: string, rel: string, content: string, mode = 0o644) {
  const path = join(root, rel);
  mkdirSync(join(path, ".."), { recursive: true });
  writeFileSync(path, content);
  chmodSync(path, mode);
}

const read = (root: string, rel: string) => readFileSync(join(root, rel), "utf8");

// A host that ran the old script: script, crontab line, config and manifest.
function oldHost(cronLine = "* * * * * root . /etc/bin-proxy/config; /usr/local/sbin/bin-proxy.sh") {
  const root = newDir("root");
  put(root, "usr/local/sbin/bin-proxy.sh", OLD_SCRIPT, 0o755);
  if (cronLine) put(root, "etc/cron.d/binproxy", `SHELL=/bin/sh\n${cronLine}\n`);
  put(root, "etc/bin-proxy/config", 'export BIN_MANAGER_API="http://bm.example/api/v1"\n', 0o640);
  put(root, "etc/bin-proxy/bin-manifests.json", '{"binaries":[{"binaryName":"manager"}]}\n');
  return root;
}

// Every entry under root with its type, mode, content hash and inode: equal listings mean nothing
// was created, removed, rewritten or re-permissioned.
function snapshot(root: string): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const name of readdirSync(join(root, rel)).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const st = lstatSync(join(root, r));
      const mode = (st.mode & 0o7777).toString(8);
      if (st.isSymbolicLink()) out.push(`l ${r} -> ${readlinkSync(join(root, r))}`);
      else if (st.isDirectory()) {
        out.push(`d ${r} ${mode}`);
        walk(r);
      } else out.push(`f ${r} ${mode} ino=${st.ino} mtime=${st.mtimeMs} ${sha256(readFileSync(join(root, r)))}`);
    }
  };
  walk("");
  return out;
}

function modeOf(root: string, rel: string): string {
  return (lstatSync(join(root, rel)).mode & 0o7777).toString(8);
}

function expectWrapper(root: string) {
  expect(lstatSync(join(root, "usr/local/sbin/bin-proxy.sh")).isFile()).toBe(true);
  expect(read(root, "usr/local/sbin/bin-proxy.sh")).toBe(WRAPPER);
  expect(modeOf(root, "usr/local/sbin/bin-proxy.sh")).toBe("755");
}

/**
 * Runs a cron command (through sh -c, as cron does) with root's /usr/local/sbin mounted over the
 * host's, in a private mount namespace: the wrapper's fixed path then reaches what the install
 * put under root, and the real host is never touched. Returns its output and what the fake executable recorded.
 */
async function runCronCommand(root: string, command: string): Promise<{ stdout: string; ran: string }> {
  const unshare = Bun.which("unshare");
  if (!unshare) throw new Error("unshare (util-linux) is needed to run the installed wrapper in a private mount namespace");
  const ran = join(newDir("ran"), "log");
  const proc = Bun.spawn(
    [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", 'mount --bind "$SBIN" /usr/local/sbin && exec sh -c "$CMD"'],
    {
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", SBIN: join(root, "usr/local/sbin"), CMD: command, RAN: ran },
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
    },
  );
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  if (code !== 0) throw new Error(`${command} exited ${code}:\n${stdout}\n${stderr}`);
  return { stdout, ran: (await Bun.file(ran).exists()) ? readFileSync(ran, "utf8") : "" };
}

// The asset this machine's `uname -m` should pick.
function hostAsset(): string {
  const machine = Bun.spawnSync(["uname", "-m"]).stdout.toString().trim();
  if (machine === "x86_64" || machine === "amd64") return "bin-proxy-linux-x86_64";
  if (machine === "aarch64" || machine === "arm64") return "bin-proxy-linux-aarch64";
  throw new Error(`these tests expect an x86_64 or aarch64 machine, not ${machine}`);
}

// A directory of executables to put first on PATH.
function shimDir(scripts: Record<string, string>): string {
  const dir = newDir("shim");
  for (const [name, body] of Object.entries(scripts)) put(dir, name, body, 0o755);
  return dir;
}
const fakeUname = (machine: string) =>
  shimDir({ uname: `#!/bin/sh\ncase "$1" in -m) echo ${machine} ;; *) echo Linux ;; esac\n` });

// PATH as it is, minus some commands: links to every other executable on it.
function pathWithout(...missing: string[]): string {
  const dir = newDir("path");
  const seen = new Set(missing);
  for (const entry of (process.env.PATH ?? "").split(":")) {
    let names: string[];
    try {
      names = readdirSync(entry);
    } catch {
      continue;
    }
    for (const name of names) {
      if (seen.has(name)) continue;
      seen.add(name);
      symlinkSync(join(resolve(entry), name), join(dir, name));
    }
  }
  return dir;
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
  tmpLeft: string[];
}

async function install(
  root: string,
  args: string[],
  opts: { env?: Record<string, string>; path?: string; stdin?: string; onSpawn?: (p: Bun.Subprocess) => void } = {},
): Promise<Run> {
  const tmp = newDir("tmp");
  const proc = Bun.spawn(opts.stdin === undefined ? ["dash", INSTALLER, ...args] : ["dash", "-s", "--", ...args], {
    env: {
      PATH: opts.path ?? process.env.PATH ?? "",
      DESTDIR: root,
      TMPDIR: tmp,
      NO_PROXY: "127.0.0.1",
      no_proxy: "127.0.0.1",
      LC_ALL: "C",
      ...opts.env,
    },
    stdin: opts.stdin === undefined ? "ignore" : new Blob([opts.stdin]),
    stdout: "pipe",
    stderr: "pipe",
  });
  opts.onSpawn?.(proc);
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  return { code, stdout, stderr, tmpLeft: readdirSync(tmp) };
}

function expectOk(run: Run) {
  if (run.code !== 0) throw new Error(`installer exited ${run.code}:\n${run.stdout}\n${run.stderr}`);
  expect(run.tmpLeft).toEqual([]);
}

function expectFailedCleanly(run: Run, before: string[], root: string, stderr: RegExp) {
  expect(run.code).not.toBe(0);
  expect(run.stderr).toMatch(stderr);
  expect(snapshot(root)).toEqual(before);
  expect(run.tmpLeft).toEqual([]);
}

// Lines of every cron file under root that mention bin-proxy and are not comments.
function cronLines(root: string): string[] {
  const lines: string[] = [];
  const dir = join(root, "etc/cron.d");
  let names: string[] = [];
  try {
    names = readdirSync(dir);
  } catch {}
  for (const name of names) {
    for (const line of read(dir, name).split("\n")) {
      if (line.includes("bin-proxy") && !line.trimStart().startsWith("#")) lines.push(`${name}: ${line}`);
    }
  }
  return lines;
}

beforeAll(() => {
  for (const tool of ["dash", "curl"]) {
    if (!Bun.which(tool)) throw new Error(`${tool} is needed to test the installer`);
  }
});

describe("install", () => {
  test("fresh host: executable, wrapper, directories, config, manifest and the seed's cron line", async () => {
    const root = newDir("root");
    const run = await install(root, ["--release-url", url("v1")]);
    expectOk(run);
    const asset = hostAsset();
    expect(read(root, "usr/local/sbin/bin-proxy")).toBe(v1.get(asset)!);
    expect(modeOf(root, "usr/local/sbin/bin-proxy")).toBe("755");
    expectWrapper(root);
    expect(() => lstatSync(join(root, "usr/local/sbin/bin-proxy.sh.orig"))).toThrow();
    expect(modeOf(root, "etc/bin-proxy")).toBe("755");
    expect(modeOf(root, "var/run/bin-proxy")).toBe("700");
    expect(modeOf(root, "var/lib/bin-proxy")).toBe("700");
    expect(modeOf(root, "etc/bin-proxy/config")).toBe("600");
    expect(read(root, "etc/bin-proxy/config").split("\n").filter((l) => l && !l.startsWith("#"))).toEqual([]);
    const manifest = JSON.parse(read(root, "etc/bin-proxy/bin-manifests.json"));
    expect(manifest.binaries).toEqual([]);
    expect(Object.keys(manifest.nodeInfo)).toEqual(["cpuArch", "osRelease", "nodeName", "binProxyVersion"]);
    expect(cronLines(root)).toEqual([`bin-proxy: ${SEED_CRON_LINE}`]);
    expect(modeOf(root, "etc/cron.d/bin-proxy")).toBe("644");
    expect(read(root, "etc/cron.d/bin-proxy").endsWith("\n")).toBe(true);
    // No staged or backup file is left next to the real ones.
    expect(readdirSync(join(root, "usr/local/sbin")).sort()).toEqual(["bin-proxy", "bin-proxy.sh"]);
    expect(readdirSync(join(root, "etc/bin-proxy")).sort()).toEqual(["bin-manifests.json", "config"]);
    expect(run.stdout).toContain(`installed ${root}/usr/local/sbin/bin-proxy (bin-proxy 1.0.0`);
    expect(run.stderr).toBe("");
  });

  test("host with the old script: kept as .orig, replaced in place, its cron line, config and manifest untouched", async () => {
    const root = oldHost();
    const before = snapshot(root);
    const run = await install(root, ["--release-url", url("v1")]);
    expectOk(run);
    expect(read(root, "usr/local/sbin/bin-proxy.sh.orig")).toBe(OLD_SCRIPT);
    expect(modeOf(root, "usr/local/sbin/bin-proxy.sh.orig")).toBe("755");
    expectWrapper(root);
    // The old line calls bin-proxy.sh, so it now runs bin-proxy: no second line.
    expect(cronLines(root)).toEqual(["binproxy: * * * * * root . /etc/bin-proxy/config; /usr/local/sbin/bin-proxy.sh"]);
    const after = snapshot(root);
    for (const rel of ["etc/cron.d/binproxy", "etc/bin-proxy/config", "etc/bin-proxy/bin-manifests.json"]) {
      const line = before.find((l) => l.startsWith(`f ${rel} `));
      expect(line).toBeDefined();
      expect(after).toContain(line!);
    }
    expect(run.stdout).toContain("kept the old script as");
    expect(run.stdout).toContain("kept the existing cron line");
  });

  test("the existing cron line reaches bin-proxy however it runs bin-proxy.sh: directly, through sh or bash, sourced", async () => {
    const arch = hostAsset().slice("bin-proxy-linux-".length);
    for (const [command, args] of [
      ["/usr/local/sbin/bin-proxy.sh", ""],
      ["bash /usr/local/sbin/bin-proxy.sh", ""],
      ["/bin/sh -e /usr/local/sbin/bin-proxy.sh >/dev/null 2>&1", ""],
      [". /usr/local/sbin/bin-proxy.sh", ""],
      ["sh /usr/local/sbin/bin-proxy.sh --verbose", "--verbose"],
    ] as const) {
      const root = oldHost(`* * * * * root ${command}`);
      // Before the install the line runs the old script: the namespace really shows root's files.
      expect(await runCronCommand(root, command.replace(/ *>.*$/, ""))).toEqual({ stdout: "old\n", ran: "" });
      expectOk(await install(root, ["--release-url", url("v1")]));
      expect(cronLines(root)).toEqual([`binproxy: * * * * * root ${command}`]);
      expect((await runCronCommand(root, command)).ran).toBe(`bin-proxy 1.0.0 (${arch}) ran with [${args}]\n`);
    }
  });

  test("the old line in root's crontab counts: no cron.d file is added", async () => {
    const root = oldHost("");
    put(root, "var/spool/cron/crontabs/root", "# m h dom mon dow command\n*/5 * * * * /usr/local/sbin/bin-proxy.sh\n", 0o600);
    expectOk(await install(root, ["--release-url", url("v1")]));
    expect(cronLines(root)).toEqual([]);
  });

  test("commented-out lines and files cron ignores do not count: the seed's line is added", async () => {
    const root = oldHost("");
    put(root, "etc/cron.d/binproxy", "#* * * * * root /usr/local/sbin/bin-proxy.sh\n");
    put(root, "etc/cron.d/bin-proxy.bak", `${SEED_CRON_LINE}\n`);
    expectOk(await install(root, ["--release-url", url("v1")]));
    expect(cronLines(root)).toContain(`bin-proxy: ${SEED_CRON_LINE}`);
  });

  test("second run changes nothing and downloads only SHA256SUMS, on a fresh host and on an old one", async () => {
    for (const root of [newDir("root"), oldHost()]) {
      expectOk(await install(root, ["--release-url", url("v1")]));
      const before = snapshot(root);
      served.length = 0;
      const run = await install(root, ["--release-url", url("v1")]);
      expectOk(run);
      expect(snapshot(root)).toEqual(before);
      expect(run.stdout).toContain("is already this release");
      expect(served).toEqual(["v1/SHA256SUMS"]);
    }
  });

  test("an installed executable that differs from the release is replaced, whichever is newer", async () => {
    const root = newDir("root");
    expectOk(await install(root, ["--release-url", url("v2")]));
    served.length = 0;
    expectOk(await install(root, ["--release-url", url("v1")]));
    expect(read(root, "usr/local/sbin/bin-proxy")).toBe(v1.get(hostAsset())!);
    expect(served).toEqual(["v1/SHA256SUMS", `v1/${hostAsset()}`]);
  });

  test("the previous release's cron file (which threw the output away) is replaced by a re-install, and removed by --uninstall", async () => {
    const previous = "# bin-proxy: one pass a minute. Written by bin-proxy's install.sh, which never overwrites it.\n* * * * * root /usr/local/sbin/bin-proxy.sh >/dev/null 2>&1\n";
    const root = newDir("root");
    expectOk(await install(root, ["--release-url", url("v1")]));
    const current = read(root, "etc/cron.d/bin-proxy");
    put(root, "etc/cron.d/bin-proxy", previous);
    expectOk(await install(root, ["--release-url", url("v1")]));
    expect(read(root, "etc/cron.d/bin-proxy")).toBe(current);

    put(root, "etc/cron.d/bin-proxy", previous);
    expectOk(await install(root, ["--uninstall"]));
    expect(existsSync(join(root, "etc/cron.d/bin-proxy"))).toBe(false);
  });

  test("the cron line it writes keeps the output, for cron to mail", async () => {
    const root = newDir("root");
    expectOk(await install(root, ["--release-url", url("v1")]));
    const line = read(root, "etc/cron.d/bin-proxy").split("\n").find((l) => l.startsWith("* "))!;
    expect(line).toBe(SEED_CRON_LINE);
    const command = line.replace(/^(\S+\s+){5}root\s+/, "");
    expect(await runCronCommand(root, command)).toEqual({ stdout: "what a pass printed\n", ran: `bin-proxy 1.0.0 (${hostAsset().slice("bin-proxy-linux-".length)}) ran with []\n` });
  });

  test("a new release replaces bin-proxy only", async () => {
    const root = oldHost();
    expectOk(await install(root, ["--release-url", url("v1")]));
    const before = snapshot(root).filter((l) => !l.startsWith("f usr/local/sbin/bin-proxy "));
    const run = await install(root, ["--release-url", url("v2")]);
    expectOk(run);
    expect(read(root, "usr/local/sbin/bin-proxy")).toBe(v2.get(hostAsset())!);
    expect(snapshot(root).filter((l) => !l.startsWith("f usr/local/sbin/bin-proxy "))).toEqual(before);
    expect(readdirSync(join(root, "usr/local/sbin")).sort()).toEqual(["bin-proxy", "bin-proxy.sh", "bin-proxy.sh.orig"]);
    expect(run.stdout).toContain("(bin-proxy 2.0.0");
  });

  test("an existing .orig identical to the script is kept; one that differs stops the install", async () => {
    const same = oldHost();
    put(same, "usr/local/sbin/bin-proxy.sh.orig", OLD_SCRIPT, 0o755);
    expectOk(await install(same, ["--release-url", url("v1")]));
    expect(read(same, "usr/local/sbin/bin-proxy.sh.orig")).toBe(OLD_SCRIPT);
    expectWrapper(same);

    const differs = oldHost();
    put(differs, "usr/local/sbin/bin-proxy.sh.orig", "#!/bin/sh\necho older\n", 0o755);
    const before = snapshot(differs);
    expectFailedCleanly(await install(differs, ["--release-url", url("v1")]), before, differs, /both exist and differ/);
  });

  test("an old script kept as a symlink is kept as a symlink", async () => {
    const root = oldHost();
    put(root, "opt/old/bin-proxy.sh", OLD_SCRIPT, 0o755);
    rmSync(join(root, "usr/local/sbin/bin-proxy.sh"));
    symlinkSync("/opt/old/bin-proxy.sh", join(root, "usr/local/sbin/bin-proxy.sh"));
    expectOk(await install(root, ["--release-url", url("v1")]));
    expect(readlinkSync(join(root, "usr/local/sbin/bin-proxy.sh.orig"))).toBe("/opt/old/bin-proxy.sh");
    expectWrapper(root);
  });

  test("the architecture picks the executable", async () => {
    for (const [machine, asset] of [
      ["x86_64", "bin-proxy-linux-x86_64"],
      ["amd64", "bin-proxy-linux-x86_64"],
      ["aarch64", "bin-proxy-linux-aarch64"],
      ["arm64", "bin-proxy-linux-aarch64"],
    ] as const) {
      const root = newDir("root");
      const run = await install(root, ["--release-url", url("v1")], {
        path: `${fakeUname(machine)}:${process.env.PATH}`,
      });
      expectOk(run);
      expect(read(root, "usr/local/sbin/bin-proxy")).toBe(v1.get(asset)!);
    }
  });

  test("the one-liner: the script on standard input, arguments after -s --", async () => {
    const root = newDir("root");
    const run = await install(root, ["--release-url", url("v1")], { stdin: v1.get("install.sh")! });
    expectOk(run);
    expectWrapper(root);
  });

  test("BIN_PROXY_RELEASE_URL gives the release when no argument does", async () => {
    const root = newDir("root");
    expectOk(await install(root, [], { env: { BIN_PROXY_RELEASE_URL: `${url("v1")}/` } }));
    expect(read(root, "usr/local/sbin/bin-proxy")).toBe(v1.get(hostAsset())!);
  });

  test("downloads with wget when curl is missing", async () => {
    expect(Bun.which("wget")).not.toBeNull();
    const root = newDir("root");
    expectOk(await install(root, ["--release-url", url("v1")], { path: pathWithout("curl") }));
    expect(read(root, "usr/local/sbin/bin-proxy")).toBe(v1.get(hostAsset())!);
  });
});

describe("install failures leave the host as it was", () => {
  test("checksum mismatch: nothing installed, on a fresh host and on an old one", async () => {
    for (const root of [newDir("root"), oldHost()]) {
      const before = snapshot(root);
      const run = await install(root, ["--release-url", url("badsum")]);
      expectFailedCleanly(run, before, root, /checksum mismatch for bin-proxy-linux-.*nothing was installed/);
      expect(run.code).toBe(1);
    }
  });

  test("SHA256SUMS without a line for the executable", async () => {
    const root = oldHost();
    const before = snapshot(root);
    expectFailedCleanly(await install(root, ["--release-url", url("nosum")]), before, root, /SHA256SUMS has no line for/);
  });

  test("server down", async () => {
    const root = oldHost();
    const before = snapshot(root);
    expectFailedCleanly(await install(root, ["--release-url", downUrl]), before, root, /cannot download .*nothing was installed/);
  });

  test("release without the file (404)", async () => {
    const root = oldHost();
    const before = snapshot(root);
    expectFailedCleanly(await install(root, ["--release-url", url("nosuch")]), before, root, /cannot download/);
  });

  test("an executable whose --version does not start with 'bin-proxy ' is refused", async () => {
    for (const root of [newDir("root"), oldHost()]) {
      const before = snapshot(root);
      expectFailedCleanly(await install(root, ["--release-url", url("impostor")]), before, root, /is not bin-proxy: its --version said 'manager 1\.0\.0 .*nothing was installed/);
    }
  });

  test("an executable that does not run here: directories it made are removed again", async () => {
    const fresh = newDir("root");
    const upgraded = oldHost();
    expectOk(await install(upgraded, ["--release-url", url("v1")]));
    for (const root of [fresh, oldHost(), upgraded]) {
      const before = snapshot(root);
      expectFailedCleanly(await install(root, ["--release-url", url("broken")]), before, root, /does not run here.*Exec format error/);
    }
  });

  test("unsupported architecture", async () => {
    const root = newDir("root");
    const run = await install(root, ["--release-url", url("v1")], { path: `${fakeUname("mips")}:${process.env.PATH}` });
    expectFailedCleanly(run, [], root, /unsupported architecture 'mips'/);
  });

  test("neither curl nor wget", async () => {
    const root = oldHost();
    const before = snapshot(root);
    const run = await install(root, ["--release-url", url("v1")], { path: pathWithout("curl", "wget") });
    expectFailedCleanly(run, before, root, /curl or wget is required/);
  });

  test("a failure while staging (cron.d is not a directory) removes everything staged", async () => {
    const root = oldHost("");
    put(root, "etc/cron.d", "not a directory\n");
    const before = snapshot(root);
    expectFailedCleanly(await install(root, ["--release-url", url("v1")]), before, root, /cannot create .*cron\.d/);
  });

  test("a failure at the last rename undoes the renames before it", async () => {
    // mv fails only for the cron file, the last thing the installer puts in place.
    const realMv = Bun.which("mv")!;
    const failingMv = shimDir({
      mv: `#!/bin/sh\nfor last; do :; done\ncase $last in */etc/cron.d/bin-proxy) echo "mv: injected failure" >&2; exit 1 ;; esac\nexec ${realMv} "$@"\n`,
    });
    const path = `${failingMv}:${process.env.PATH}`;

    const firstInstall = oldHost("");
    const upgrade = oldHost("");
    expectOk(await install(upgrade, ["--release-url", url("v1")]));
    rmSync(join(upgrade, "etc/cron.d/bin-proxy"));
    for (const [root, release] of [
      [firstInstall, "v1"],
      [upgrade, "v2"],
    ] as const) {
      const before = snapshot(root);
      const run = await install(root, ["--release-url", url(release)], { path });
      expectFailedCleanly(run, before, root, /injected failure/);
      // bin-proxy had been renamed into place before the failure: the rollback put back the old one.
      expect(run.stdout).toMatch(/installed .*bin-proxy \(bin-proxy/);
    }
  });

  test("interrupted (SIGTERM) while checking the executable", async () => {
    const root = oldHost();
    const before = snapshot(root);
    const marker = join(newDir("marker"), "running");
    let proc: Bun.Subprocess | undefined;
    const running = install(root, ["--release-url", url("v1")], { env: { MARKER: marker }, onSpawn: (p) => (proc = p) });
    for (let i = 0; i < 200 && !(await Bun.file(marker).exists()); i++) await Bun.sleep(25);
    expect(await Bun.file(marker).exists()).toBe(true);
    proc!.kill("SIGTERM");
    const run = await running;
    expect(run.code).toBe(143);
    expect(snapshot(root)).toEqual(before);
    expect(run.tmpLeft).toEqual([]);
  });
});

describe("--uninstall", () => {
  test("restores the old script and leaves config, manifest, state and the host's own cron line", async () => {
    const root = oldHost();
    const original = snapshot(root);
    expectOk(await install(root, ["--release-url", url("v1")]));
    const run = await install(root, ["--uninstall"]);
    expectOk(run);
    expect(read(root, "usr/local/sbin/bin-proxy.sh")).toBe(OLD_SCRIPT);
    expect(lstatSync(join(root, "usr/local/sbin/bin-proxy.sh")).isFile()).toBe(true);
    // The old script is back as the very file it was: same inode, mode and content.
    const created = ["d var", "d var/lib", "d var/lib/bin-proxy", "d var/run", "d var/run/bin-proxy"];
    expect(snapshot(root).filter((l) => !created.some((c) => l.startsWith(`${c} `)))).toEqual(original);
    expect(run.stdout).toContain("restored");
    expect(run.stdout).toMatch(/left as they are: .*config and manifest.* the cron line/);

    const again = await install(root, ["--uninstall"]);
    expectOk(again);
    expect(again.stdout).toContain("is not installed");
  });

  test("on a host installed fresh: removes bin-proxy, the wrapper and the cron file it wrote, keeps the rest", async () => {
    const root = newDir("root");
    expectOk(await install(root, ["--release-url", url("v1")]));
    const run = await install(root, ["--uninstall"]);
    expectOk(run);
    expect(readdirSync(join(root, "usr/local/sbin"))).toEqual([]);
    expect(readdirSync(join(root, "etc/cron.d"))).toEqual([]);
    expect(run.stdout).toContain(`removed ${root}/etc/cron.d/bin-proxy`);
    expect(readdirSync(join(root, "etc/bin-proxy")).sort()).toEqual(["bin-manifests.json", "config"]);
  });

  test("a cron file at its path that install.sh did not write as it is now is left alone", async () => {
    const edited = newDir("root");
    expectOk(await install(edited, ["--release-url", url("v1")]));
    const changed = read(edited, "etc/cron.d/bin-proxy").replace("* * * * *", "*/5 * * * *");
    put(edited, "etc/cron.d/bin-proxy", changed);
    const notOurs = oldHost("");
    put(notOurs, "etc/cron.d/bin-proxy", "* * * * * root /usr/local/sbin/bin-proxy.sh\n");
    expectOk(await install(notOurs, ["--release-url", url("v1")]));
    for (const [root, content] of [[edited, changed], [notOurs, "* * * * * root /usr/local/sbin/bin-proxy.sh\n"]] as const) {
      const run = await install(root, ["--uninstall"]);
      expectOk(run);
      expect(read(root, "etc/cron.d/bin-proxy")).toBe(content);
      expect(run.stderr).toContain("is not the file install.sh wrote");
    }
  });

  test("an old script put back by someone else is left alone", async () => {
    const root = oldHost();
    expectOk(await install(root, ["--release-url", url("v1")]));
    rmSync(join(root, "usr/local/sbin/bin-proxy.sh"));
    put(root, "usr/local/sbin/bin-proxy.sh", "#!/bin/sh\necho redeployed\n", 0o755);
    const run = await install(root, ["--uninstall"]);
    expectOk(run);
    expect(read(root, "usr/local/sbin/bin-proxy.sh")).toBe("#!/bin/sh\necho redeployed\n");
    expect(read(root, "usr/local/sbin/bin-proxy.sh.orig")).toBe(OLD_SCRIPT);
    expect(run.stderr).toContain("left it and");
  });
});

describe("--pubkey: SHA256SUMS.minisig verified with minisign before the checksums are trusted", () => {
  let key: ReturnType<typeof keyPair>;
  beforeAll(() => {
    key = keyPair();
    const other = keyPair();
    signRelease(addRelease("signed", "1.0.0"), key);
    signRelease(addRelease("signed2", "2.0.0"), key);
    signRelease(addRelease("otherkey", "1.0.0"), other);
    signRelease(addRelease("tampered", "1.0.0"), key, true);
    addRelease("unsigned", "1.0.0");
  });

  test("a good signature, the key as its base64 line or as minisign's file: installed", async () => {
    for (const pubkey of [key.pub, key.pubFile]) {
      const root = newDir("root");
      served.length = 0;
      const run = await install(root, ["--release-url", url("signed"), "--pubkey", pubkey]);
      expectOk(run);
      expect(run.stdout).toMatch(/SHA256SUMS is signed by the --pubkey key \(timestamp:\d+\tfile:SHA256SUMS\thashed\)/);
      expect(read(root, "usr/local/sbin/bin-proxy")).toBe(releases.get("signed")!.get(hostAsset())!);
      expect(served).toEqual(["signed/SHA256SUMS", "signed/SHA256SUMS.minisig", `signed/${hostAsset()}`]);
      expect(existsSync(join(root, "etc/bin-proxy/trusted-keys"))).toBe(false);
    }
  });

  test.each([
    ["signed by another key", "otherkey", /SHA256SUMS\.minisig does not verify with the --pubkey key \(.*key id.*\); nothing was installed/],
    ["SHA256SUMS changed after signing", "tampered", /SHA256SUMS\.minisig does not verify with the --pubkey key \(Signature verification failed\); nothing was installed/],
    ["no SHA256SUMS.minisig", "unsigned", /cannot download .*SHA256SUMS\.minisig, which --pubkey requires; nothing was installed/],
  ])("%s: refused, nothing downloaded but the two small files, the host as it was", async (_, release, message) => {
    for (const root of [newDir("root"), oldHost()]) {
      const before = snapshot(root);
      served.length = 0;
      expectFailedCleanly(await install(root, ["--release-url", url(release), "--pubkey", key.pub]), before, root, message);
      expect(served).toEqual([`${release}/SHA256SUMS`, `${release}/SHA256SUMS.minisig`]);
    }
  });

  test("minisign missing: refused before anything is downloaded, not skipped", async () => {
    const root = oldHost();
    const before = snapshot(root);
    served.length = 0;
    const run = await install(root, ["--release-url", url("signed"), "--pubkey", key.pub], { path: pathWithout("minisign") });
    expectFailedCleanly(run, before, root, /--pubkey needs the minisign command .*not installed \(apt-get install minisign\); nothing was installed/);
    expect(served).toEqual([]);
  });

  test("a --pubkey that is not a minisign public key is a usage error", async () => {
    const root = newDir("root");
    for (const bad of ["RWQnotakey", "hello", join(scratch, "no-such-key.pub")]) {
      const run = await install(root, ["--release-url", url("signed"), "--pubkey", bad]);
      expect(run.code).toBe(2);
      expect(run.stderr).toContain("--pubkey: not a minisign public key");
    }
    expect(readdirSync(root)).toEqual([]);
  });

  test("--trust-pubkey installs the key as /etc/bin-proxy/trusted-keys, which minisign itself reads; kept on later runs", async () => {
    const root = newDir("root");
    const run = await install(root, ["--release-url", url("signed"), "--pubkey", key.pubFile, "--trust-pubkey"]);
    expectOk(run);
    expect(run.stdout).toContain("created " + join(root, "etc/bin-proxy/trusted-keys"));
    expect(modeOf(root, "etc/bin-proxy/trusted-keys")).toBe("644");
    // The file is a minisign public key file: the reference tool verifies the release with it.
    const dir = newDir("check");
    writeFileSync(join(dir, "SHA256SUMS"), releases.get("signed")!.get("SHA256SUMS")!);
    writeFileSync(join(dir, "SHA256SUMS.minisig"), releases.get("signed")!.get("SHA256SUMS.minisig")!);
    const check = Bun.spawnSync([requireMinisign(), "-V", "-p", join(root, "etc/bin-proxy/trusted-keys"), "-m", join(dir, "SHA256SUMS")]);
    expect(check.exitCode).toBe(0);
    const keys = read(root, "etc/bin-proxy/trusted-keys");
    const again = await install(root, ["--release-url", url("signed2"), "--pubkey", key.pub, "--trust-pubkey"]);
    expectOk(again);
    expect(again.stdout).toContain("(it holds this key)");
    expect(read(root, "etc/bin-proxy/trusted-keys")).toBe(keys);
  });

  test("--trust-pubkey leaves a trusted-keys file that holds other keys as it is, and says so", async () => {
    const root = newDir("root");
    const other = keyPair();
    put(root, "etc/bin-proxy/trusted-keys", readFileSync(other.pubFile, "utf8"));
    const run = await install(root, ["--release-url", url("signed"), "--pubkey", key.pub, "--trust-pubkey"]);
    expectOk(run);
    expect(read(root, "etc/bin-proxy/trusted-keys")).toBe(readFileSync(other.pubFile, "utf8"));
    expect(run.stderr).toContain("does not hold this key: left it as it is");
  });

  test("--trust-pubkey without --pubkey is a usage error", async () => {
    const run = await install(newDir("root"), ["--release-url", url("signed"), "--trust-pubkey"]);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain("--trust-pubkey needs --pubkey KEY");
  });
});

describe("usage", () => {
  test("no release URL, unknown argument, --help", async () => {
    const root = newDir("root");
    const noUrl = await install(root, []);
    expect(noUrl.code).toBe(2);
    expect(noUrl.stderr).toContain("no release URL");
    const unknown = await install(root, ["--frobnicate"]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain("unknown argument: --frobnicate");
    const help = await install(root, ["--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("usage: sh install.sh [--release-url URL] [--pubkey KEY [--trust-pubkey]] [--uninstall]");
    expect(readdirSync(root)).toEqual([]);
  });

  test("shellcheck -s sh finds nothing", () => {
    const shellcheck = Bun.which("shellcheck");
    if (!shellcheck) throw new Error("shellcheck is not installed: the installer must be checked with it");
    const result = Bun.spawnSync([shellcheck, "-s", "sh", INSTALLER]);
    expect(result.stdout.toString() + result.stderr.toString()).toBe("");
    expect(result.exitCode).toBe(0);
  });
});
