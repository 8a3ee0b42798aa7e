// Measures bin-proxy against the targets of its performance issues, each as a ratio to a baseline run on the same machine in the same run.
//
//   bun scripts/bench.ts [--runs N]     one host: no-op passes, large, signed and resumed updates, start-up
//   bun scripts/bench.ts --fleet        50 hosts behind one nginx cache: what a release costs the origin
//
// Downloads come from a real nginx (sendfile, as in production) serving a directory at the API's
// download paths; the fake bin-manager answers only the JSON API. Each mode writes its part of
// bench/latest.json and keeps the other's.
import { randomBytes } from "node:crypto";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { availableParallelism, release, tmpdir } from "node:os";
import { join } from "node:path";
import { startBinManager, type Artifact } from "../tests/fixture/bin-manager.ts";
import { requireCommand } from "../tests/fixture/daemon.ts";
import { makeHost, runBinProxy, spawnBinProxy, type Host } from "../tests/fixture/host.ts";
import { makeKeyPair, sign, writeTrustedKeys } from "../tests/fixture/minisign.ts";
import { mountOver } from "../tests/fixture/mount.ts";
import { startNginx, startNginxProcess } from "../tests/fixture/nginx.ts";
import { writeAll, writeFileAtomic } from "../lib/fsx.ts";
import * as build from "./build.ts";

const root = join(import.meta.dir, "..");
const TIME = "/usr/bin/time";
const MiB = 1 << 20;
const SMOL = "--compile-exec-argv=--smol";
const DOWNLOADS = "/api/v1/download";

interface Options {
  /** Runs of each sub-second figure. */
  runs: number;
  /** Runs of each no-op pass figure: ~20 ms each, and judged to 10 %, which 10 or even 30 runs on a shared VM are not steady enough for. */
  noopRuns: number;
  /** Runs of each figure that moves a GiB or more, and rounds of the fleet (at most 5). */
  bigRuns: number;
  fleet: boolean;
}

function parseOptions(argv: string[]): Options {
  const usage = "usage: bun scripts/bench.ts [--runs N] [--fleet]";
  let runs = 10;
  let fleet = false;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--fleet") fleet = true;
    else if (argv[i] === "--runs" && Number.isInteger(Number(argv[i + 1])) && Number(argv[i + 1]) >= 1) runs = Number(argv[++i]);
    else throw new Error(usage);
  }
  return { runs, noopRuns: 10 * runs, bigRuns: Math.min(runs, 5), fleet };
}

/** One process, /usr/bin/time-style: wall and CPU in ms, peak RSS in KiB. */
interface Sample {
  wallMs: number;
  cpuMs: number;
  rssKiB: number;
}

/**
 * Runs cmd under /usr/bin/time and returns its figures. Peak RSS comes from time's %M: Bun's own
 * resourceUsage().maxRSS is useless here, because Linux carries the parent's high-water mark
 * across the vfork+exec Bun spawns with, so every child would look as big as the benchmark.
 * CPU comes from Bun's resourceUsage of the time process, which includes the child it reaped, in
 * microseconds (time prints only hundredths); it adds time's own ~1 ms, as it does to every figure.
 */
async function measure(cmd: string[], opts: { env?: Record<string, string>; cwd?: string } = {}): Promise<Sample & { stdout: string }> {
  const report = join(scratch, `time.${process.pid}.out`);
  const started = performance.now();
  const child = Bun.spawn([TIME, "-o", report, "-f", "%M", ...cmd], {
    env: opts.env ?? { PATH: process.env.PATH ?? "/usr/bin:/bin" },
    cwd: opts.cwd ?? "/",
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  const wallMs = performance.now() - started;
  if (code !== 0) throw new Error(`${cmd.join(" ")} exited ${code}\nstdout: ${stdout.slice(0, 2000)}\nstderr: ${stderr.slice(0, 2000)}`);
  const usage = child.resourceUsage();
  const rssKiB = Number(readFileSync(report, "utf8").trim().split("\n").at(-1));
  if (!usage || !Number.isFinite(rssKiB)) throw new Error(`no resource figures for ${cmd.join(" ")}`);
  return { wallMs, cpuMs: Number(usage.cpuTime.total) / 1000, rssKiB, stdout };
}

/** A figure: how to prepare one run (not measured) and the run itself (measured). */
interface Figure {
  name: string;
  runs: number;
  setup?: () => Promise<void> | void;
  run: () => Promise<Sample>;
}

interface Result {
  name: string;
  samples: Sample[];
  median: Sample;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};

/**
 * Runs a group of figures round-robin (A B C, A B C, …) rather than A A A, B B B: on a shared,
 * noisy machine a burst of load then slows every figure of the group alike, and the ratios hold.
 * Figures of one round run in the order given, so one may prepare what the next measures.
 */
async function rounds(figures: Figure[]): Promise<Map<string, Result>> {
  const samples = new Map<string, Sample[]>(figures.map((f) => [f.name, []]));
  const most = Math.max(...figures.map((f) => f.runs));
  for (let round = 0; round < most; round++) {
    for (const f of figures) {
      if (round >= f.runs) continue;
      await f.setup?.();
      const { wallMs, cpuMs, rssKiB } = await f.run();
      samples.get(f.name)!.push({ wallMs, cpuMs, rssKiB });
      progress(`${f.name}: ${wallMs.toFixed(1)} ms wall, ${cpuMs.toFixed(1)} ms CPU, ${(rssKiB / 1024).toFixed(1)} MiB`);
    }
  }
  const results = new Map<string, Result>();
  for (const [name, s] of samples) {
    results.set(name, {
      name,
      samples: s,
      median: { wallMs: median(s.map((x) => x.wallMs)), cpuMs: median(s.map((x) => x.cpuMs)), rssKiB: median(s.map((x) => x.rssKiB)) },
    });
  }
  return results;
}

const progress = (line: string) => process.stderr.write(`  ${line}\n`);

/** This machine's CPU time so far, from /proc/stat: all of it, and what the hypervisor gave to other guests (steal), in ticks. */
function cpuTimes(): { total: number; steal: number } {
  const ticks = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
  return { total: ticks.reduce((a, b) => a + b, 0), steal: ticks[7] ?? 0 };
}

/** The share of CPU time stolen since before: what says a figure was taken while other guests of the host were busy. */
function stolenSince(before: { total: number; steal: number }): number {
  const now = cpuTimes();
  return (now.steal - before.steal) / Math.max(1, now.total - before.total);
}

/** Writes `size` random bytes to path and returns their SHA-256; constant memory whatever the size. */
function randomFile(path: string, size: number): string {
  const hasher = new Bun.CryptoHasher("sha256");
  const fd = openSync(path, "w", 0o755);
  try {
    for (let left = size; left > 0; ) {
      const chunk = randomBytes(Math.min(left, 16 * MiB));
      hasher.update(chunk);
      writeAll(fd, chunk);
      left -= chunk.length;
    }
  } finally {
    closeSync(fd);
  }
  return hasher.digest("hex");
}

/** The API's answer for a binary whose bytes nginx serves (or nobody serves: a no-op). */
const served = (sha256: string): Artifact => ({ bytes: new Uint8Array(0), sha256 });

async function flushDisk(): Promise<void> {
  // Dirty pages of an earlier run must not be written back during the next measured one.
  if ((await Bun.spawn(["sync"]).exited) !== 0) throw new Error("sync failed");
}

/** Drops one file's pages from the page cache (posix_fadvise DONTNEED), so the next read comes from the disk. */
async function evict(path: string): Promise<void> {
  if ((await Bun.spawn(["dd", `if=${path}`, "iflag=nocache", "count=0", "status=none"]).exited) !== 0) throw new Error(`cannot evict ${path}`);
}

/** One line of nginx's access log: when the response ended (ms since the epoch), how long it took, what it sent. */
interface Served {
  endMs: number;
  seconds: number;
  status: number;
  bytes: number;
  uri: string;
}

interface FileServer {
  /** http://127.0.0.1:PORT; files of dir are at {url}/api/v1/download/NAME (any query ignored). */
  url: string;
  /** Every response so far, in the order nginx logged them. */
  log(): Served[];
  stop(): Promise<void>;
}

/**
 * A real nginx serving the files of dir at the API's download paths with sendfile, as a
 * production bin-manager's file server does; with api, every other path is passed to it (an
 * origin that is the whole bin-manager).
 */
async function startFileServer(dir: string, api?: string): Promise<FileServer> {
  const server = await startNginxProcess({
    logFormat: "$msec $request_time $status $body_bytes_sent $request_uri",
    http: (_, listen) =>
      [
        "sendfile on;",
        "tcp_nopush on;",
        "server {",
        `    listen ${listen};`,
        `    location ${DOWNLOADS}/ { alias ${dir}/; }`,
        ...(api ? [`    location / { proxy_pass ${api}; }`] : []),
        "}",
      ].join("\n"),
  });
  return {
    url: server.url,
    log: () =>
      server.accessLog().map((line) => {
        const [end, seconds, status, bytes, uri] = line.split(" ");
        return { endMs: Number(end) * 1000, seconds: Number(seconds), status: Number(status), bytes: Number(bytes), uri: uri ?? "" };
      }),
    stop: server.stop,
  };
}

/** Responses to downloads of the file name itself (not its checksum file or signature), whatever the query. */
const downloadsOf = (log: Served[], name: string): Served[] => log.filter((s) => s.uri.split("?")[0] === `${DOWNLOADS}/${name}`);

/** Waits until nginx has logged count downloads of name (a response cut by a killed client is logged when nginx notices). */
async function loggedDownloads(server: FileServer, name: string, count: number): Promise<Served[]> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const seen = downloadsOf(server.log(), name);
    if (seen.length >= count) return seen;
    if (Date.now() > deadline) throw new Error(`nginx logged ${seen.length} downloads of ${name}, not ${count}`);
    await Bun.sleep(20);
  }
}

/** The most responses in flight at once, from each one's end time and duration. */
function peakConcurrency(responses: Served[]): number {
  const edges = responses.flatMap((r) => [
    { at: r.endMs - r.seconds * 1000, step: 1 },
    { at: r.endMs, step: -1 },
  ]);
  edges.sort((a, b) => a.at - b.at || a.step - b.step);
  let now = 0;
  let peak = 0;
  for (const e of edges) peak = Math.max(peak, (now += e.step));
  return peak;
}

/** The release build and its twin with --smol toggled: compiled the way scripts/build.ts compiles a release. */
function releaseBuild() {
  const native = build.nativeTarget();
  const target = build.RELEASE_ASSETS.find((a) => a.target === native || a.target.startsWith(`${native}-`))?.target ?? native;
  const flags = [...build.RELEASE_FLAGS];
  const twin = flags.includes(SMOL) ? flags.filter((f) => f !== SMOL) : [...flags, SMOL];
  return { native, target, flags, twin, twinLabel: twin.includes(SMOL) ? "with --smol" : "without --smol" };
}

const mib = (bytes: number) => bytes / MiB;
const fixed = (x: number, digits = 1) => x.toFixed(digits);
/** "low–high" of xs as shown, or the one value when they all show alike. */
const range = (xs: number[], show: (x: number) => string) => {
  const [low, high] = [show(Math.min(...xs)), show(Math.max(...xs))];
  return low === high ? low : `${low}–${high}`;
};

interface Target {
  target: string;
  value: number;
  shown?: string;
  limit: string;
  met: boolean | null;
}

/** A target met or not from its limit ("≤ 1.3", "< 1", "= 21"); "—" marks a reference figure. */
function judged(t: Omit<Target, "met">, all: number[] = [t.value]): Target {
  const [op, bound] = t.limit.split(" ");
  const b = Number(bound);
  const met = op === "≤" ? t.value <= b : op === "<" ? t.value < b : op === "=" ? all.every((n) => n === b) : null;
  return { ...t, met };
}

const targetRows = (targets: Target[]) => [
  "| target | measured | limit | met |",
  "|---|---:|---:|---|",
  ...targets.map((t) => `| ${t.target} | ${t.shown ?? (t.value < 0.1 ? t.value.toFixed(4) : t.value.toFixed(2))} | ${t.limit} | ${t.met === null ? "" : t.met ? "yes" : "**no**"} |`),
];

function machine() {
  const cpuinfo = readFileSync("/proc/cpuinfo", "utf8");
  return {
    cpu: /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? "unknown",
    sha_ni: /^flags\s*:.*\bsha_ni\b/m.test(cpuinfo),
    cores: availableParallelism(),
    kernel: release(),
    bun: Bun.version,
    nginx: (Bun.spawnSync([NGINX, "-v"]).stderr.toString().trim().split("/")[1] ?? "unknown"),
    // The other processes' load when the run started: figures from a shared machine are noisy.
    loadAverage: readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" "),
  };
}

/** Writes this mode's part of bench/latest.json, keeping the other mode's part of the previous run. */
function writeResults(part: "host" | "fleet", doc: object): void {
  mkdirSync(join(root, "bench"), { recursive: true });
  const out = join(root, "bench", "latest.json");
  let previous: Record<string, unknown> = {};
  try {
    previous = JSON.parse(readFileSync(out, "utf8")) as Record<string, unknown>;
  } catch {
    // first run, or a file of an older layout: nothing to keep
  }
  const kept = previous["host"] !== undefined || previous["fleet"] !== undefined ? previous : {};
  const merged = { ...kept, [part]: doc };
  writeFileAtomic(out, JSON.stringify({ host: merged["host"], fleet: merged["fleet"] }, null, 2) + "\n");
  progress(`wrote ${out} (${part})`);
}

const options = parseOptions(process.argv.slice(2));
// Looked up as the fixtures look them up (nginx is in /usr/sbin, which a user's PATH may lack).
const NGINX = requireCommand("nginx", "nginx");
if (!existsSync(TIME)) throw new Error(`${TIME} is required for the benchmark: install Debian's time package`);
for (const [tool, pkg] of [["curl", "curl"], ["sha256sum", "coreutils"], ["sync", "coreutils"], ["dd", "coreutils"], ["openssl", "openssl"], ["minisign", "minisign"], ["mount", "mount"]] as const) {
  requireCommand(tool, pkg);
}
const scratch = mkdtempSync(join(tmpdir(), "bin-proxy-bench-"));
/** Undone in reverse order at the end, whatever happened. */
const cleanups: (() => void | Promise<void>)[] = [];
const later = (undo: () => void | Promise<void>) => void cleanups.push(undo);
const newHost = () => {
  const host = makeHost();
  later(() => host.cleanup());
  return host;
};

/** Once, however often it is called: the end of the run and an interruption both wait for the same cleanup. */
let cleaning: Promise<void> | undefined;
const cleanUp = () =>
  (cleaning ??= (async () => {
    for (const undo of cleanups.reverse()) {
      // One that fails (a tmpfs still busy) must not keep the others from running.
      await Promise.resolve()
        .then(undo)
        .catch((err) => progress(`cleanup: ${(err as Error).message}`));
    }
    rmSync(scratch, { recursive: true, force: true });
  })());
// Interrupted (Ctrl-C, kill): nginx stopped, the tmpfs unmounted, nothing left in the temp dir.
let interrupted = false;
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    interrupted = true;
    void cleanUp().finally(() => process.exit(130));
  });
}
try {
  if (options.fleet) await fleetBench(options);
  else await hostBench(options);
} catch (err) {
  // What fails once the hosts are being removed under it is not news.
  if (!interrupted) throw err;
} finally {
  await cleanUp();
}

async function hostBench({ runs, noopRuns, bigRuns }: Options): Promise<void> {
  // Builds: every option considered, compiled the way scripts/build.ts compiles a release.
  progress("building the variants");
  const rel = releaseBuild();
  const releaseFlags = rel.flags.join(" ");
  const flagSets = [[], ["--minify"], ["--bytecode", "--format=esm"], ["--minify", "--bytecode", "--format=esm"], rel.flags];
  const variants = [...flagSets.map((flags) => ({ target: rel.native, flags })), { target: rel.target, flags: rel.flags }, { target: rel.target, flags: rel.twin }]
    .filter((v, i, all) => all.findIndex((w) => w.target === v.target && w.flags.join(" ") === v.flags.join(" ")) === i)
    .map((v) => ({ ...v, name: `${v.target}${v.flags.length ? ` ${v.flags.join(" ")}` : " (no optional flags)"}` }));
  const exe = new Map<string, string>();
  for (const [i, v] of variants.entries()) {
    const out = join(scratch, "build", `bin-proxy-${i}`);
    await build.compile(out, v.target, v.flags);
    exe.set(v.name, out);
  }
  const exeOf = (flags: string[]) => exe.get(variants.find((v) => v.target === rel.target && v.flags.join(" ") === flags.join(" "))!.name)!;
  const releaseName = variants.find((v) => v.target === rel.target && v.flags.join(" ") === releaseFlags)!.name;
  const releaseExe = exeOf(rel.flags);
  const twinExe = exeOf(rel.twin);

  const bm = await startBinManager();
  later(() => bm.stop());
  const data = join(scratch, "data");
  mkdirSync(data);
  const files = await startFileServer(data);
  later(() => files.stop());
  const downloadBase = `${files.url}${DOWNLOADS}`;
  const keys = makeKeyPair(scratch);
  const trustedKeys = writeTrustedKeys(join(scratch, "trusted-keys"), keys);

  // No-op passes: 20 binaries, all up to date.
  const noopHost = (size: number, label: string) => {
    const host = newHost();
    const entries = [];
    for (let i = 0; i < 20; i++) {
      const name = `${label}-${String(i).padStart(2, "0")}`;
      const sha = randomFile(join(host.binDir, name), size);
      bm.setTarget(name, served(sha));
      entries.push({ serviceName: "", binaryName: name, version: sha, previousVersion: "", port: 0 });
    }
    host.writeManifest(entries);
    return host;
  };
  progress("writing 20 x 1 MiB and 20 x 64 MiB binaries");
  const small = noopHost(MiB, "small");
  const large = noopHost(64 * MiB, "large");
  const metricsFile = join(large.root, "bin_proxy.prom");
  const requestCounts: number[] = [];
  const pass = (host: Host, executable = releaseExe, extra: Record<string, string> = {}) => async (): Promise<Sample> => {
    const before = bm.requests.length;
    const servedBefore = files.log().length;
    const sample = await measure([executable], { env: host.env(bm.api, { DOWNLOAD_BASE_URL: downloadBase, ...extra }) });
    if (sample.stdout !== "") throw new Error(`a quiet pass printed: ${sample.stdout}`);
    requestCounts.push(bm.requests.length - before);
    const calls = bm.requests.slice(before).map((r) => `${r.method} ${r.path}`);
    if (calls.some((c) => !c.startsWith("GET "))) throw new Error(`a no-op pass wrote to the API: ${calls.join(", ")}`);
    // Neither a download nor a checksum file or signature: a no-op does no signature work.
    if (files.log().length !== servedBefore) throw new Error(`a no-op pass fetched ${files.log().slice(servedBefore).map((s) => s.uri).join(", ")}`);
    return sample;
  };
  const withMetrics = { BIN_PROXY_METRICS_FILE: metricsFile };
  const withKeys = { BIN_PROXY_TRUSTED_KEYS: trustedKeys };
  // The warm-up pass hashes every binary once (filling the hash cache) and introduces the node.
  for (const host of [small, large]) {
    await measure([releaseExe], { env: host.env(bm.api) });
    if (!existsSync(join(host.stateDir, "hash-cache.json"))) throw new Error("the warm-up pass wrote no hash cache");
  }
  await pass(large, releaseExe, withMetrics)();
  if (!readFileSync(metricsFile, "utf8").includes("bin_proxy_")) throw new Error(`the pass wrote no metrics to ${metricsFile}`);
  const largeFiles = Array.from({ length: 20 }, (_, i) => join(large.binDir, `large-${String(i).padStart(2, "0")}`));
  await flushDisk();

  progress(`no-op pass (${noopRuns} runs each, ${bigRuns} of sha256sum)`);
  requestCounts.splice(0);
  const cpuBefore = cpuTimes();
  const noop = await rounds([
    { name: "no-op pass, 20 x 1 MiB", runs: noopRuns, run: pass(small) },
    { name: "no-op pass, 20 x 64 MiB", runs: noopRuns, run: pass(large) },
    { name: "no-op pass, 20 x 64 MiB, BIN_PROXY_METRICS_FILE set", runs: noopRuns, run: pass(large, releaseExe, withMetrics) },
    { name: "no-op pass, 20 x 64 MiB, BIN_PROXY_TRUSTED_KEYS set", runs: noopRuns, run: pass(large, releaseExe, withKeys) },
    { name: "sha256sum over the same 20 x 64 MiB", runs: bigRuns, run: () => measure(["sha256sum", ...largeFiles]) },
    { name: "bin-proxy --version", runs: noopRuns, run: () => measure([releaseExe, "--version"]) },
  ]);
  const noopRequests = [...requestCounts];
  const noopSteal = stolenSince(cpuBefore);

  // Updates: one binary per host, always from the same 1 MiB old version to the API's target.
  const oldPath = join(data, "old");
  const oldSha = randomFile(oldPath, MiB);
  interface Update {
    name: string;
    file: string;
    sha: string;
    size: number;
  }
  const release = (name: string, size: number): Update => {
    const file = join(data, name);
    const sha = randomFile(file, size);
    bm.setTarget(name, served(sha));
    return { name, file, sha, size };
  };
  progress("writing the 64 MiB and 1 GiB releases; signing the 1 GiB one with minisign");
  const mid = release("update-64m", 64 * MiB);
  const big = release("update-1g", 1024 * MiB);
  // A signed release as `sha256sum update-1g > update-1g.sha256 && minisign -Sm update-1g.sha256` publishes it, beside the file.
  writeFileSync(`${big.file}.sha256`, `${big.sha}  ${big.name}\n`);
  sign(keys, `${big.file}.sha256`);

  const diskHost = newHost();
  const midHost = newHost();
  const tmpfsHost = newHost();
  later(mountOver(tmpfsHost.binDir, ["-t", "tmpfs", "-o", "size=3g,mode=0755", "tmpfs"]));
  const curlOut = join(scratch, "curl-out");
  if (statSync(scratch).dev !== statSync(diskHost.binDir).dev) throw new Error("the disk baselines must write to BIN_DIR's filesystem");

  /** Puts the old version back, as if the API had just moved on: the next pass updates exactly this binary. */
  const resetTo = (host: Host, u: Update) => async () => {
    writeFileSync(join(host.binDir, u.name), readFileSync(oldPath), { mode: 0o755 });
    host.writeManifest([{ serviceName: "", binaryName: u.name, version: oldSha, previousVersion: "", port: 0 }]);
    rmSync(curlOut, { force: true });
    await flushDisk();
  };
  const envOf = (host: Host, extra: Record<string, string> = {}) => host.env(bm.api, { DOWNLOAD_BASE_URL: downloadBase, ...extra });
  const expectInstalled = (host: Host, u: Update) => {
    const entry = host.readManifest().binaries.find((b) => b.binaryName === u.name);
    const installed = statSync(join(host.binDir, u.name)).size;
    if (entry?.version !== u.sha || installed !== u.size) throw new Error(`the update of ${u.name} did not land:\n${host.log().slice(-2000)}`);
  };
  const update = (host: Host, u: Update, executable = releaseExe, extra: Record<string, string> = {}) => async (): Promise<Sample> => {
    const signaturesBefore = files.log().filter((s) => s.uri.startsWith(`${DOWNLOADS}/${u.name}.sha256.minisig`)).length;
    const sample = await measure([executable], { env: envOf(host, extra) });
    expectInstalled(host, u);
    const signatures = files.log().filter((s) => s.uri.startsWith(`${DOWNLOADS}/${u.name}.sha256.minisig`)).length - signaturesBefore;
    if (signatures !== (extra["BIN_PROXY_TRUSTED_KEYS"] ? 1 : 0)) throw new Error(`the update of ${u.name} fetched ${signatures} signatures`);
    return sample;
  };

  const hashAlone = join(scratch, "hash-alone.ts");
  writeFileSync(hashAlone, [
    `import { closeSync, openSync, readSync } from "node:fs";`,
    `const hasher = new Bun.CryptoHasher("sha256");`,
    `const fd = openSync(process.argv[2], "r");`,
    `const buf = Buffer.allocUnsafe(${MiB});`,
    `let bytes = 0;`,
    `for (let n; (n = readSync(fd, buf, 0, buf.length, null)) > 0; bytes += n) hasher.update(buf.subarray(0, n));`,
    `closeSync(fd);`,
    `console.log(hasher.digest("hex"), bytes);`,
  ].join("\n"));
  // The receive path alone: Bun's fetch read and hashed as lib/download.ts does, nothing written.
  const fetchAlone = join(scratch, "fetch-hash-alone.ts");
  writeFileSync(fetchAlone, [
    `const hasher = new Bun.CryptoHasher("sha256");`,
    `const reader = (await fetch(process.argv[2])).body.getReader();`,
    `for (let r; !(r = await reader.read()).done; ) hasher.update(r.value);`,
    `console.log(hasher.digest("hex"));`,
  ].join("\n"));
  const url = (u: Update) => `${downloadBase}/${u.name}?sha256=${u.sha}`;
  /** A baseline that prints the hash it computed: it must be the file's, or it did not do the work. */
  const hashing = (cmd: string[], env?: Record<string, string>) => async (): Promise<Sample> => {
    const sample = await measure(cmd, { cwd: scratch, env });
    const printed = sample.stdout.trim().split(/\s+/);
    if (!printed.includes(big.sha)) throw new Error(`${cmd.join(" ")} printed ${sample.stdout.trim()}, not ${big.sha}`);
    return sample;
  };

  const twin = rel.twinLabel;
  // Resume: a pass killed when its partial reaches 90 %, then the pass that finishes it.
  const partial = join(diskHost.binDir, `.${big.name}.${big.sha}.part`);
  const resumed: { build: string; keptBytes: number; transferredBytes: number }[] = [];
  let kept = 0;
  const killAt90 = async () => {
    await resetTo(diskHost, big)();
    const logged = downloadsOf(files.log(), big.name).length;
    const proc = spawnBinProxy([], envOf(diskHost), { executable: releaseExe });
    const output = Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
    let exited = false;
    void proc.exited.then(() => (exited = true));
    while ((statSync(partial, { throwIfNoEntry: false })?.size ?? 0) < 0.9 * big.size) {
      if (exited) throw new Error(`the pass ended before its partial reached 90 %: ${(await output).join("\n")}\n${diskHost.log().slice(-2000)}`);
      await Bun.sleep(5);
    }
    proc.kill("SIGKILL");
    if ((await proc.exited) !== 137) throw new Error("the pass to be killed at 90 % was not killed");
    await loggedDownloads(files, big.name, logged + 1);
    kept = statSync(partial).size;
    await flushDisk();
  };
  const hashKept = async (): Promise<Sample> => {
    const sample = await measure([process.execPath, hashAlone, partial]);
    if (Number(sample.stdout.trim().split(" ")[1]) !== kept) throw new Error(`the hash of the kept bytes read ${sample.stdout.trim()}, not ${kept} bytes`);
    return sample;
  };
  const resumePass = (executable: string) => async (): Promise<Sample> => {
    const logged = downloadsOf(files.log(), big.name).length;
    // The kept bytes are read from the disk, as after a reboot (the download's O_DIRECT writes left them out of the page cache too).
    await evict(partial);
    const sample = await measure([executable], { env: envOf(diskHost) });
    expectInstalled(diskHost, big);
    const transfers = (await loggedDownloads(files, big.name, logged + 1)).slice(logged);
    resumed.push({ build: executable === releaseExe ? "release" : twin, keptBytes: kept, transferredBytes: transfers.reduce((sum, s) => sum + s.bytes, 0) });
    return sample;
  };

  progress("warm-up updates");
  for (const [host, u] of [[diskHost, big], [midHost, mid], [tmpfsHost, big]] as const) {
    await resetTo(host, u)();
    await update(host, u)();
  }
  progress(`updates (${bigRuns} runs of each 1 GiB figure, ${runs} of each 64 MiB one)`);
  const updates = await rounds([
    { name: "update pass, 1 GiB", runs: bigRuns, setup: resetTo(diskHost, big), run: update(diskHost, big) },
    // Right after the unsigned one: the 5 % the signature may add is less than this machine's noise between rounds.
    { name: "signed update pass, 1 GiB", runs: bigRuns, setup: resetTo(diskHost, big), run: update(diskHost, big, releaseExe, withKeys) },
    { name: `signed update pass, 1 GiB, ${twin}`, runs: bigRuns, setup: resetTo(diskHost, big), run: update(diskHost, big, twinExe, withKeys) },
    { name: `update pass, 1 GiB, ${twin}`, runs: bigRuns, setup: resetTo(diskHost, big), run: update(diskHost, big, twinExe) },
    { name: "update pass, 64 MiB", runs, setup: resetTo(midHost, mid), run: update(midHost, mid) },
    { name: `update pass, 64 MiB, ${twin}`, runs, setup: resetTo(midHost, mid), run: update(midHost, mid, twinExe) },
    { name: "update pass, 1 GiB, tmpfs BIN_DIR", runs: bigRuns, setup: resetTo(tmpfsHost, big), run: update(tmpfsHost, big) },
    { name: `update pass, 1 GiB, tmpfs BIN_DIR, ${twin}`, runs: bigRuns, setup: resetTo(tmpfsHost, big), run: update(tmpfsHost, big, twinExe) },
    // The floors under an update: each of its streams alone, from the same nginx and to the same filesystem.
    { name: "curl -o /dev/null URL, 1 GiB (transfer alone)", runs: bigRuns, run: () => measure(["curl", "-sS", "-o", "/dev/null", url(big)]) },
    { name: "Bun.CryptoHasher over the same 1 GiB (hash alone)", runs: bigRuns, run: hashing([process.execPath, hashAlone, big.file]) },
    { name: "openssl dgst -sha256 over the same 1 GiB", runs: bigRuns, run: hashing(["openssl", "dgst", "-sha256", "-r", big.file]) },
    {
      name: "dd oflag=direct conv=fsync, the same 1 GiB to BIN_DIR's filesystem (disk alone)",
      runs: bigRuns,
      setup: () => rmSync(curlOut, { force: true }),
      run: () => measure(["dd", `if=${big.file}`, `of=${curlOut}`, "bs=4M", "oflag=direct", "conv=fsync", "status=none"]),
    },
    {
      name: "fetch + Bun.CryptoHasher, nothing written, 1 GiB",
      runs: bigRuns,
      run: hashing([process.execPath, fetchAlone, url(big)], { PATH: process.env.PATH ?? "/usr/bin:/bin", NO_PROXY: "127.0.0.1,localhost" }),
    },
    {
      name: "curl -o FILE URL && sha256sum FILE, 1 GiB (the old script)",
      runs: bigRuns,
      setup: () => rmSync(curlOut, { force: true }),
      run: () => measure(["sh", "-c", 'curl -sS -o "$1" "$2" && sha256sum "$1"', "sh", curlOut, url(big)]),
    },
    // In this order within each round: the kill leaves the partial the next five use. It is hashed
    // cold through the page cache first (a reference: in this VM that costs more CPU than the hash),
    // then again from the page cache: the hash alone, the floor the target is measured against.
    { name: "hash of the kept bytes, cold through the page cache", runs: bigRuns, setup: killAt90, run: hashKept },
    { name: "hash of the kept bytes alone (Bun.CryptoHasher, page cache warm)", runs: bigRuns, run: hashKept },
    {
      name: "dd iflag=direct of the kept bytes to /dev/null (disk read alone)",
      runs: bigRuns,
      run: () => measure(["dd", `if=${partial}`, "of=/dev/null", "bs=4M", "iflag=direct", "status=none"]),
    },
    { name: "resumed update pass, 1 GiB killed at 90 %", runs: bigRuns, run: resumePass(releaseExe) },
    { name: "curl -r N- -o /dev/null URL (transfer of the rest alone)", runs: bigRuns, run: () => measure(["curl", "-sS", "-r", `${kept}-`, "-o", "/dev/null", url(big)]) },
    { name: `resumed update pass, 1 GiB killed at 90 %, ${twin}`, runs: bigRuns, setup: killAt90, run: resumePass(twinExe) },
  ]);

  progress(`start-up of each build option (${runs} runs each)`);
  const startupFigures: Figure[] = [];
  for (const v of variants) {
    const path = exe.get(v.name)!;
    startupFigures.push({ name: `${v.name}: --version`, runs, run: () => measure([path, "--version"]) });
    startupFigures.push({ name: `${v.name}: no-op pass, 20 x 1 MiB`, runs, run: pass(small, path) });
  }
  const startup = await rounds(startupFigures);

  const m = (group: Map<string, Result>, name: string) => group.get(name)!.median;
  /**
   * a's cost over b's as the median of the rounds' own ratios: both ran in every round, one right
   * after the other, so a burst of load or a slower minute of this shared VM moves both alike. The
   * ratio of the two medians, taken apart, moves by several percent between runs for a 10 % target.
   */
  const paired = (group: Map<string, Result>, a: string, b: string, key: "wallMs" | "cpuMs") => {
    const as = group.get(a)!.samples;
    const bs = group.get(b)!.samples;
    return median(as.map((x, i) => x[key] / bs[i]![key]));
  };
  const metricsPass = "no-op pass, 20 x 64 MiB, BIN_PROXY_METRICS_FILE set";
  const keysPass = "no-op pass, 20 x 64 MiB, BIN_PROXY_TRUSTED_KEYS set";
  const plainPass = "no-op pass, 20 x 64 MiB";
  const u = (name: string) => m(updates, name);
  const noop64 = m(noop, plainPass);
  const bigUpdate = u("update pass, 1 GiB");
  const transfer = u("curl -o /dev/null URL, 1 GiB (transfer alone)");
  const hash = u("Bun.CryptoHasher over the same 1 GiB (hash alone)");
  const openssl = u("openssl dgst -sha256 over the same 1 GiB");
  const disk = u("dd oflag=direct conv=fsync, the same 1 GiB to BIN_DIR's filesystem (disk alone)");
  const hashFloor = Math.min(hash.wallMs, openssl.wallMs);
  const floor = Math.max(transfer.wallMs, hashFloor, disk.wallMs);
  /** Peak RSS of each kind of update by the build whose figures' names end in label: the median run's, or (highest) the highest run's. */
  const memoryFigures = (label: string, highest = false) => {
    const at = (name: string) => {
      const r = updates.get(`${name}${label}`)!;
      return highest ? Math.max(...r.samples.map((x) => x.rssKiB)) : r.median.rssKiB;
    };
    return {
      big: at("update pass, 1 GiB"),
      mid: at("update pass, 64 MiB"),
      tmpfs: at("update pass, 1 GiB, tmpfs BIN_DIR"),
      signed: at("signed update pass, 1 GiB"),
      resumed: at("resumed update pass, 1 GiB killed at 90 %"),
    };
  };
  const releaseMemory = memoryFigures("");
  const twinMemory = memoryFigures(`, ${twin}`);
  // Memory is a limit every run must keep, not a median.
  const releasePeak = memoryFigures("", true);
  const twinPeak = memoryFigures(`, ${twin}`, true);
  const keptMedian = median(resumed.filter((r) => r.build === "release").map((r) => r.keptBytes));
  const transferredShare = Math.max(...resumed.map((r) => r.transferredBytes / big.size));
  const rest = u("curl -r N- -o /dev/null URL (transfer of the rest alone)").wallMs;
  const keptHash = u("hash of the kept bytes alone (Bun.CryptoHasher, page cache warm)").wallMs;
  const keptGiB = keptMedian / (1024 * MiB);
  const resumeFloor = keptHash + rest;
  const resumeWall = u("resumed update pass, 1 GiB killed at 90 %").wallMs;
  const flatness = (f: { big: number; mid: number }) => Math.abs(f.big - f.mid) / f.mid;
  const targets: Target[] = [
    judged({ target: "no-op pass CPU: 20 x 64 MiB / 20 x 1 MiB", value: noop64.cpuMs / m(noop, "no-op pass, 20 x 1 MiB").cpuMs, limit: "≤ 1.3" }),
    judged({ target: "no-op pass CPU / sha256sum CPU over the same 20 files", value: noop64.cpuMs / m(noop, "sha256sum over the same 20 x 64 MiB").cpuMs, limit: "≤ 0.1" }),
    judged({ target: "no-op pass wall / --version wall", value: noop64.wallMs / m(noop, "bin-proxy --version").wallMs, limit: "≤ 3" }),
    judged({ target: "API requests per no-op pass (all runs, with and without metrics and keys)", value: Math.max(...noopRequests), shown: [...new Set(noopRequests)].join(", "), limit: "= 21" }, noopRequests),
    judged({ target: "no-op pass wall with BIN_PROXY_METRICS_FILE / without (median of the rounds' ratios)", value: paired(noop, metricsPass, plainPass, "wallMs"), limit: "≤ 1.1" }),
    judged({ target: "no-op pass CPU with BIN_PROXY_METRICS_FILE / without (median of the rounds' ratios)", value: paired(noop, metricsPass, plainPass, "cpuMs"), limit: "≤ 1.1" }),
    judged({ target: "(reference) the same two, as the ratio of the medians: wall", value: m(noop, metricsPass).wallMs / noop64.wallMs, limit: "—" }),
    judged({ target: "(reference) the same two, as the ratio of the medians: CPU", value: m(noop, metricsPass).cpuMs / noop64.cpuMs, limit: "—" }),
    judged({ target: "(reference) CPU time stolen by the hypervisor during the no-op figures", value: noopSteal, shown: `${(100 * noopSteal).toFixed(1)} %`, limit: "—" }),
    judged({ target: "no-op pass wall with BIN_PROXY_TRUSTED_KEYS / without (median of the rounds' ratios)", value: paired(noop, keysPass, plainPass, "wallMs"), limit: "≤ 1.1" }),
    judged({ target: "no-op pass CPU with BIN_PROXY_TRUSTED_KEYS / without (median of the rounds' ratios)", value: paired(noop, keysPass, plainPass, "cpuMs"), limit: "≤ 1.1" }),
    judged({ target: "1 GiB update wall / max(transfer, hash, disk alone)", value: bigUpdate.wallMs / floor, limit: "≤ 1.3" }),
    judged({ target: `(reference) the same, ${twin}`, value: u(`update pass, 1 GiB, ${twin}`).wallMs / floor, limit: "—" }),
    judged({ target: "1 GiB update into tmpfs wall / max(transfer, hash alone)", value: u("update pass, 1 GiB, tmpfs BIN_DIR").wallMs / Math.max(transfer.wallMs, hashFloor), limit: "≤ 1.3" }),
    judged({ target: `(reference) the same, ${twin}`, value: u(`update pass, 1 GiB, tmpfs BIN_DIR, ${twin}`).wallMs / Math.max(transfer.wallMs, hashFloor), limit: "—" }),
    judged({ target: "1 GiB update wall / curl + sha256sum (the old script)", value: bigUpdate.wallMs / u("curl -o FILE URL && sha256sum FILE, 1 GiB (the old script)").wallMs, limit: "≤ 0.3" }),
    judged({ target: "signed 1 GiB update wall / unsigned", value: u("signed update pass, 1 GiB").wallMs / bigUpdate.wallMs, limit: "≤ 1.05" }),
    judged({ target: "resumed pass: bytes transferred / file size (largest of the runs)", value: transferredShare, limit: "≤ 0.15" }),
    judged({ target: "resumed pass wall / (hash of the kept bytes + transfer of the rest, alone)", value: resumeWall / resumeFloor, limit: "≤ 1.3" }),
    judged({
      target: "(reference) resumed pass wall / (max(hash, disk read of the kept bytes) + transfer of the rest, alone)",
      value: resumeWall / (Math.max(keptHash, u("dd iflag=direct of the kept bytes to /dev/null (disk read alone)").wallMs) + rest),
      limit: "—",
    }),
    judged({ target: "resumed pass wall / full 1 GiB update wall", value: resumeWall / bigUpdate.wallMs, limit: "< 1" }),
    judged({ target: "peak RSS of any update in any run, signed and resumed ones too, MiB (release build)", value: Math.max(...Object.values(releasePeak)) / 1024, limit: "≤ 128" }),
    judged({ target: "peak RSS: 1 GiB vs 64 MiB update, relative difference (release build)", value: flatness(releaseMemory), limit: "≤ 0.1" }),
    judged({ target: `(reference) peak RSS of any update in any run, MiB, ${twin}`, value: Math.max(...Object.values(twinPeak)) / 1024, limit: "—" }),
    judged({ target: "(reference) peak RSS of the signed 1 GiB update, highest run, MiB (release build)", value: releasePeak.signed / 1024, limit: "—" }),
    judged({ target: "(reference) peak RSS of the unsigned 1 GiB update, highest run, MiB (release build)", value: releasePeak.big / 1024, limit: "—" }),
    judged({ target: `(reference) peak RSS: 1 GiB vs 64 MiB, relative difference, ${twin}`, value: flatness(twinMemory), limit: "—" }),
    judged({ target: `(reference) signed 1 GiB update wall / unsigned, ${twin}`, value: u(`signed update pass, 1 GiB, ${twin}`).wallMs / u(`update pass, 1 GiB, ${twin}`).wallMs, limit: "—" }),
    judged({ target: "(reference) 1 GiB update wall / transfer alone", value: bigUpdate.wallMs / transfer.wallMs, limit: "—" }),
    judged({ target: "(reference) 1 GiB update wall / fetch + hash alone", value: bigUpdate.wallMs / u("fetch + Bun.CryptoHasher, nothing written, 1 GiB").wallMs, limit: "—" }),
    judged({ target: "(reference) re-hash of the kept bytes in the resumed pass (its wall less the rest's transfer), ms per GiB", value: (resumeWall - rest) / keptGiB, limit: "—" }),
    judged({ target: "(reference) hash alone from the page cache, ms per GiB", value: keptHash / keptGiB, limit: "—" }),
    judged({ target: "(reference) hash read cold through the page cache, ms per GiB", value: u("hash of the kept bytes, cold through the page cache").wallMs / keptGiB, limit: "—" }),
  ];

  const facts = machine();
  const ms = (x: number) => x.toFixed(x < 100 ? 1 : 0);
  const row = (r: Result) =>
    `| ${r.name} | ${ms(r.median.wallMs)} | ${range(r.samples.map((s) => s.wallMs), ms)} | ${ms(r.median.cpuMs)} | ${fixed(r.median.rssKiB / 1024)} | ${r.samples.length} |`;
  const lines = [
    `Machine: ${facts.cpu}${facts.sha_ni ? " (SHA-NI)" : ""}, ${facts.cores} cores, Linux ${facts.kernel}, Bun ${facts.bun}, nginx ${facts.nginx}, load average ${facts.loadAverage} at the start. Release build: ${releaseName}. Medians.`,
    "",
    "| process | wall ms | wall range | CPU ms | peak RSS MiB | runs |",
    "|---|---:|---:|---:|---:|---:|",
    ...[...noop.values(), ...updates.values()].map(row),
    "",
    `Resumed passes (release build and ${twin}): kept ${resumed.map((r) => fixed(mib(r.keptBytes), 0)).join(", ")} MiB, transferred ${resumed.map((r) => fixed(mib(r.transferredBytes), 0)).join(", ")} MiB of ${mib(big.size)} MiB.`,
    "",
    "| build | --version wall ms | --version RSS MiB | no-op pass wall ms | no-op pass CPU ms | no-op pass RSS MiB |",
    "|---|---:|---:|---:|---:|---:|",
    ...variants.map((v) => {
      const version = m(startup, `${v.name}: --version`);
      const p = m(startup, `${v.name}: no-op pass, 20 x 1 MiB`);
      return `| ${v.name}${v.name === releaseName ? " (release)" : ""} | ${ms(version.wallMs)} | ${fixed(version.rssKiB / 1024)} | ${ms(p.wallMs)} | ${ms(p.cpuMs)} | ${fixed(p.rssKiB / 1024)} |`;
    }),
    "",
    ...targetRows(targets),
  ];
  console.log(lines.join("\n"));

  writeResults("host", {
    date: new Date().toISOString(),
    commit: await build.commit(),
    command: `npm run bench${process.argv.includes("--runs") ? ` -- --runs ${runs}` : ""}`,
    machine: facts,
    release: { target: rel.target, flags: rel.flags },
    targets,
    resumed,
    noopRequests,
    figures: Object.fromEntries([...noop, ...updates, ...startup].map(([name, r]) => [name, { median: r.median, samples: r.samples }])),
  });
}

/**
 * 50 hosts (own roots and node names) behind one nginx proxy_cache (the README's config) in front
 * of an origin: nginx serving the release files, passing the API to the fake bin-manager. At each
 * round a new 16 MiB release; every host runs one pass. Counted at the origin: bytes served and the
 * most downloads in flight at once; at the API: when each host reported the new version.
 */
async function fleetBench({ bigRuns }: Options): Promise<void> {
  const HOSTS = 50;
  const SIZE = 16 * MiB;
  const NAME = "fleet-app";
  // Passes at once: a 2-core machine runs every simulated host. Without a splay, at most 10 run at
  // once, and in the herd all 50; with a splay all 50 start at once as cron starts them, each
  // sleeping first, which is what spreads them.
  const scenarios = [
    { splay: 0, concurrency: 10 },
    { splay: 0, concurrency: HOSTS },
    { splay: 20, concurrency: HOSTS },
  ];
  progress("building the release");
  const rel = releaseBuild();
  const exe = join(scratch, "bin-proxy");
  await build.compile(exe, rel.target, rel.flags);

  const bm = await startBinManager();
  later(() => bm.stop());
  const data = join(scratch, "origin");
  mkdirSync(data);
  const origin = await startFileServer(data, bm.origin);
  later(() => origin.stop());
  const cache = await startNginx({ upstream: origin.url });
  later(() => cache.stop());

  const oldPath = join(scratch, "old");
  const oldSha = randomFile(oldPath, MiB);
  const hosts = Array.from({ length: HOSTS }, (_, i) => {
    const host = newHost();
    host.writeBinary(NAME, readFileSync(oldPath));
    host.writeManifest([{ serviceName: "", binaryName: NAME, version: oldSha, previousVersion: "", port: 0 }]);
    return { host, node: `fleet-node-${String(i + 1).padStart(2, "0")}` };
  });

  interface FleetRun {
    splay: number;
    concurrency: number;
    originBytes: number;
    originDownloads: number;
    peakOriginConcurrency: number;
    cacheStatuses: Record<string, number>;
    /** From the moment the passes were started until the last host's POST /bins/{name} of the new version. */
    allReportedMs: number;
    passWallMs: number[];
  }
  const results: FleetRun[] = [];
  for (let round = 0; round < bigRuns; round++) {
    for (const { splay, concurrency } of scenarios) {
      const temp = join(data, `.${NAME}.tmp`);
      const sha = randomFile(temp, SIZE);
      renameSync(temp, join(data, NAME));
      bm.setTarget(NAME, served(sha));
      const originSeen = origin.log().length;
      const cacheSeen = cache.cacheLog().length;
      const apiSeen = bm.requests.length;
      const started = Date.now();
      const walls: number[] = [];
      let next = 0;
      await Promise.all(
        Array.from({ length: concurrency }, async () => {
          while (next < hosts.length) {
            const { host, node } = hosts[next++]!;
            const at = performance.now();
            const env = host.env(`${cache.url}/api/v1`, { NODE_NAME: node, BIN_PROXY_SPLAY: String(splay) });
            const run = await runBinProxy([], env, { executable: exe, timeoutMs: (splay + 60) * 1000 });
            if (run.code !== 0) throw new Error(`${node}'s pass exited ${run.code}: ${run.stderr}\n${host.log().slice(-2000)}`);
            walls.push(performance.now() - at);
            if (host.readManifest().binaries[0]?.version !== sha) throw new Error(`${node} did not install the new release:\n${host.log().slice(-2000)}`);
          }
        }),
      );
      const reports = bm.requests
        .slice(apiSeen)
        .filter((r) => r.method === "POST" && r.path === `/api/v1/bins/${NAME}` && (r.body as { sha256?: string } | undefined)?.sha256 === sha);
      const reported = new Set(reports.map((r) => (r.body as { nodeName?: string }).nodeName));
      if (reported.size !== HOSTS) throw new Error(`${reported.size} of ${HOSTS} hosts reported the new version`);
      // The cache's access log is written as each response ends: wait for all 50.
      const deadline = Date.now() + 10_000;
      while (cache.cacheLog().slice(cacheSeen).filter((l) => l.includes(`${DOWNLOADS}/${NAME}?`)).length < HOSTS && Date.now() < deadline) await Bun.sleep(20);
      const fromOrigin = downloadsOf(origin.log().slice(originSeen), NAME);
      const statuses: Record<string, number> = {};
      for (const line of cache.cacheLog().slice(cacheSeen).filter((l) => l.includes(`${DOWNLOADS}/${NAME}?`))) {
        const status = line.split(" ")[0]!;
        statuses[status] = (statuses[status] ?? 0) + 1;
      }
      const result: FleetRun = {
        splay,
        concurrency,
        originBytes: fromOrigin.reduce((sum, s) => sum + s.bytes, 0),
        originDownloads: fromOrigin.length,
        peakOriginConcurrency: peakConcurrency(fromOrigin),
        cacheStatuses: statuses,
        allReportedMs: Math.max(...reports.map((r) => r.at)) - started,
        passWallMs: walls,
      };
      results.push(result);
      progress(
        `splay ${splay}, ${concurrency} at once: origin served ${fixed(mib(result.originBytes))} MiB in ${result.originDownloads} downloads (peak ${result.peakOriginConcurrency} at once), cache ${JSON.stringify(statuses)}, all reported after ${fixed(result.allReportedMs / 1000, 2)} s`,
      );
    }
  }

  const facts = machine();
  const summary = scenarios.map(({ splay, concurrency }) => {
    const runs = results.filter((r) => r.splay === splay && r.concurrency === concurrency);
    const walls = runs.flatMap((r) => r.passWallMs);
    return {
      splay,
      concurrency,
      originMiB: runs.map((r) => mib(r.originBytes)),
      peakOriginConcurrency: runs.map((r) => r.peakOriginConcurrency),
      allReportedS: runs.map((r) => r.allReportedMs / 1000),
      passWallMedianMs: median(walls),
      passWallMaxMs: Math.max(...walls),
    };
  });
  // What one cluster cache in front of the origin predicts for 10,000 hosts: the origin still sends
  // each release once (proxy_cache_lock); the cache sends it to every host, as they arrive over the
  // splay (at most 55 s: below a 1-minute cron's period, as the README's splay sizing says).
  const FLEET = 10_000;
  const work = summary[0]!.passWallMedianMs / 1000;
  const prediction = [0, 20, 55].map((splay) => ({
    splay,
    originMiB: Math.max(...summary.flatMap((s) => s.originMiB)),
    cacheEgressGiB: (FLEET * SIZE) / (1024 * MiB),
    hostsPerSecond: splay > 0 ? FLEET / splay : null,
    /** Little's law: arrivals per second times each host's pass (measured here without a splay). */
    downloadsInFlightAtCache: splay > 0 ? Math.min(FLEET, (FLEET / splay) * work) : FLEET,
    /** What the cache must send per second for the hosts to keep up with the splay. */
    cacheGbitPerSecond: splay > 0 ? (FLEET * SIZE * 8) / splay / 1e9 : null,
  }));
  const lines = [
    `Machine: ${facts.cpu}, ${facts.cores} cores, Linux ${facts.kernel}, Bun ${facts.bun}, nginx ${facts.nginx}, load average ${facts.loadAverage} at the start. ${HOSTS} hosts, a new ${mib(SIZE)} MiB release per round, ${bigRuns} rounds.`,
    "",
    "| BIN_PROXY_SPLAY | passes at once | origin MiB | peak downloads at the origin | every host reported after, s | pass wall median / max, ms |",
    "|---:|---:|---:|---:|---:|---:|",
    ...summary.map(
      (s) =>
        `| ${s.splay} | ${s.concurrency} | ${range(s.originMiB, (x) => fixed(x))} | ${range(s.peakOriginConcurrency, String)} | ${range(s.allReportedS, (x) => fixed(x, 2))} | ${fixed(s.passWallMedianMs, 0)} / ${fixed(s.passWallMaxMs, 0)} |`,
    ),
    "",
    `For ${FLEET} hosts behind one cache (each pass taking ${fixed(work, 2)} s as measured here without a splay):`,
    "",
    "| BIN_PROXY_SPLAY | origin MiB | cache egress GiB | hosts/s | downloads in flight at the cache | cache Gbit/s |",
    "|---:|---:|---:|---:|---:|---:|",
    ...prediction.map(
      (p) => `| ${p.splay} | ${fixed(p.originMiB)} | ${fixed(p.cacheEgressGiB, 0)} | ${p.hostsPerSecond === null ? "all at once" : fixed(p.hostsPerSecond, 0)} | ${fixed(p.downloadsInFlightAtCache, 0)} | ${p.cacheGbitPerSecond === null ? "—" : fixed(p.cacheGbitPerSecond, 1)} |`,
    ),
  ];
  console.log(lines.join("\n"));
  writeResults("fleet", {
    date: new Date().toISOString(),
    commit: await build.commit(),
    command: "npm run bench -- --fleet",
    machine: facts,
    hosts: HOSTS,
    releaseBytes: SIZE,
    summary,
    prediction10k: prediction,
    runs: results,
  });
}

