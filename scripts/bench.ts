// Measures bin-proxy against the targets of its performance issue, each as a ratio to a baseline run on the same machine in the same run.
import { randomBytes } from "node:crypto";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { availableParallelism, release, tmpdir } from "node:os";
import { join } from "node:path";
import { startBinManager, type Artifact, type BinManager } from "../tests/fixture/bin-manager.ts";
import { makeHost, type Host } from "../tests/fixture/host.ts";
import { writeAll } from "../lib/fsx.ts";
import * as build from "./build.ts";

const root = join(import.meta.dir, "..");
const TIME = "/usr/bin/time";
const MiB = 1 << 20;
const SMOL = "--compile-exec-argv=--smol";

/** Runs of each sub-second figure, and of each figure that reads a GiB or more (at most 3). */
function parseRuns(argv: string[]): { runs: number; bigRuns: number } {
  const i = argv.indexOf("--runs");
  if (i < 0) return { runs: 10, bigRuns: 3 };
  const n = Number(argv[i + 1]);
  if (!Number.isInteger(n) || n < 1) throw new Error("usage: bun scripts/bench.ts [--runs N]");
  return { runs: n, bigRuns: Math.min(n, 3) };
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

/** The API's answer for a binary whose bytes the benchmark serves itself (or never serves: a no-op). */
const served = (sha256: string): Artifact => ({ bytes: new Uint8Array(0), sha256 });

async function flushDisk(): Promise<void> {
  // Dirty pages of an earlier run must not be written back during the next measured one.
  if ((await Bun.spawn(["sync"]).exited) !== 0) throw new Error("sync failed");
}

const { runs, bigRuns } = parseRuns(process.argv.slice(2));
for (const tool of [TIME, "curl", "sha256sum", "sync", "dd"]) {
  if (tool.startsWith("/") ? !existsSync(tool) : !Bun.which(tool)) {
    throw new Error(`${tool} is required for the benchmark (Debian: apt-get install -y time curl coreutils)`);
  }
}
const scratch = mkdtempSync(join(tmpdir(), "bin-proxy-bench-"));
const hosts: Host[] = [];
let api: BinManager | undefined;

try {
  // Builds: every option considered, compiled the way scripts/build.ts compiles a release.
  progress("building the variants");
  const native = build.nativeTarget();
  const releaseTarget = build.RELEASE_ASSETS.find((a) => a.target === native || a.target.startsWith(`${native}-`))?.target ?? native;
  const releaseFlags = build.RELEASE_FLAGS.join(" ");
  // --smol (a runtime flag, stamped in with --compile-exec-argv) trades some CPU for a smaller, flatter heap.
  const withSmol = (flags: string[]) => (flags.includes(SMOL) ? flags.filter((f) => f !== SMOL) : [...flags, SMOL]);
  const releaseTwin = withSmol([...build.RELEASE_FLAGS]);
  const flagSets = [[], ["--minify"], ["--bytecode", "--format=esm"], ["--minify", "--bytecode", "--format=esm"], [...build.RELEASE_FLAGS]];
  const variants = [
    ...flagSets.map((flags) => ({ target: native, flags })),
    { target: releaseTarget, flags: [...build.RELEASE_FLAGS] },
    { target: releaseTarget, flags: releaseTwin },
  ]
    .filter((v, i, all) => all.findIndex((w) => w.target === v.target && w.flags.join(" ") === v.flags.join(" ")) === i)
    .map((v) => ({ ...v, name: `${v.target}${v.flags.length ? ` ${v.flags.join(" ")}` : " (no optional flags)"}` }));
  const exe = new Map<string, string>();
  for (const [i, v] of variants.entries()) {
    const out = join(scratch, "build", `bin-proxy-${i}`);
    await build.compile(out, v.target, v.flags);
    exe.set(v.name, out);
  }
  const exeOf = (target: string, flags: string[]) => exe.get(variants.find((v) => v.target === target && v.flags.join(" ") === flags.join(" "))!.name)!;
  const releaseName = variants.find((v) => v.target === releaseTarget && v.flags.join(" ") === releaseFlags)!.name;
  const releaseExe = exe.get(releaseName)!;

  api = await startBinManager();
  const bm = api;

  const noopHost = (size: number, label: string) => {
    const host = makeHost();
    hosts.push(host);
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
  const requestCounts: number[] = [];
  const pass = (host: Host, executable = releaseExe) => async (): Promise<Sample> => {
    const before = bm.requests.length;
    const sample = await measure([executable], { env: host.env(bm.api) });
    if (sample.stdout !== "") throw new Error(`a quiet pass printed: ${sample.stdout}`);
    requestCounts.push(bm.requests.length - before);
    const calls = bm.requests.slice(before).map((r) => `${r.method} ${r.path}`);
    if (calls.some((c) => !c.startsWith("GET "))) throw new Error(`a no-op pass wrote to the API: ${calls.join(", ")}`);
    return sample;
  };
  // The warm-up pass hashes every binary once (filling the hash cache) and introduces the node.
  for (const host of [small, large]) {
    await measure([releaseExe], { env: host.env(bm.api) });
    if (!existsSync(join(host.stateDir, "hash-cache.json"))) throw new Error("the warm-up pass wrote no hash cache");
  }
  const largeFiles = Array.from({ length: 20 }, (_, i) => join(large.binDir, `large-${String(i).padStart(2, "0")}`));
  await flushDisk();

  progress(`no-op pass (${runs} runs each, ${bigRuns} of sha256sum)`);
  const noop = await rounds([
    { name: "no-op pass, 20 x 1 MiB", runs, run: pass(small) },
    { name: "no-op pass, 20 x 64 MiB", runs, run: pass(large) },
    { name: "sha256sum over the same 20 x 64 MiB", runs: bigRuns, run: () => measure(["sha256sum", ...largeFiles]) },
    { name: "bin-proxy --version", runs, run: () => measure([releaseExe, "--version"]) },
  ]);
  const noopRequests = [...requestCounts];

  const bigHost = makeHost();
  hosts.push(bigHost);
  const data = join(scratch, "data");
  mkdirSync(data);
  const oldPath = join(data, "old");
  const oldSha = randomFile(oldPath, MiB);
  const updateOf = (name: string, size: number) => {
    const file = join(data, name);
    const sha = randomFile(file, size);
    bm.setTarget(name, served(sha));
    // Served straight from the file: the fixture's own byte arrays would hold a GiB in memory.
    bm.override("GET", `/api/v1/download/${name}`, () => new Response(Bun.file(file)));
    return { name, file, sha, size };
  };
  progress("writing the 64 MiB and 1 GiB releases");
  const mid = updateOf("update-64m", 64 * MiB);
  const big = updateOf("update-1g", 1024 * MiB);
  const entryOf = (name: string) => ({ serviceName: "", binaryName: name, version: oldSha, previousVersion: "", port: 0 });
  bigHost.writeManifest([entryOf(mid.name), entryOf(big.name)]);
  const env = bigHost.env(bm.api);

  /** Puts the old version back, as the API moved on: the next pass updates exactly that one binary. */
  const resetTo = (u: typeof big) => async () => {
    const manifest = bigHost.readManifest();
    for (const entry of manifest.binaries) {
      const current = entry.binaryName === u.name;
      // The other binary is made up to date, so the pass has exactly one update to do.
      bm.setTarget(entry.binaryName!, served(current ? u.sha : oldSha));
      entry.version = oldSha;
      entry.previousVersion = "";
      writeFileSync(join(bigHost.binDir, entry.binaryName!), readFileSync(oldPath), { mode: 0o755 });
    }
    writeFileSync(bigHost.manifest, JSON.stringify(manifest, null, 2) + "\n");
    rmSync(join(scratch, "curl-out"), { force: true });
    await flushDisk();
  };
  const update = (u: typeof big, executable = releaseExe) => async (): Promise<Sample> => {
    const sample = await measure([executable], { env });
    const entry = bigHost.readManifest().binaries.find((b) => b.binaryName === u.name);
    const installed = statSync(join(bigHost.binDir, u.name)).size;
    if (entry?.version !== u.sha || installed !== u.size) throw new Error(`the update of ${u.name} did not land:\n${bigHost.log().slice(-2000)}`);
    return sample;
  };
  const hashAlone = join(scratch, "hash-alone.ts");
  writeFileSync(hashAlone, [
    `import { closeSync, openSync, readSync } from "node:fs";`,
    `const hasher = new Bun.CryptoHasher("sha256");`,
    `const fd = openSync(process.argv[2], "r");`,
    `const buf = Buffer.allocUnsafe(${MiB});`,
    `for (let n; (n = readSync(fd, buf, 0, buf.length, null)) > 0; ) hasher.update(buf.subarray(0, n));`,
    `closeSync(fd);`,
    `console.log(hasher.digest("hex"));`,
  ].join("\n"));
  // The receive path alone: Bun's fetch read and hashed as lib/download.ts does, nothing written.
  const fetchAlone = join(scratch, "fetch-hash-alone.ts");
  writeFileSync(fetchAlone, [
    `const hasher = new Bun.CryptoHasher("sha256");`,
    `const reader = (await fetch(process.argv[2])).body.getReader();`,
    `for (let r; !(r = await reader.read()).done; ) hasher.update(r.value);`,
    `console.log(hasher.digest("hex"));`,
  ].join("\n"));
  const url = (u: typeof big) => `${bm.api}/download/${u.name}`;
  /** A baseline that prints the hash it computed: it must be the file's, or it did not do the work. */
  const hashing = (cmd: string[], env?: Record<string, string>) => async (): Promise<Sample> => {
    const sample = await measure(cmd, { cwd: scratch, env });
    if (sample.stdout.trim() !== big.sha) throw new Error(`${cmd.join(" ")} printed ${sample.stdout.trim()}, not ${big.sha}`);
    return sample;
  };
  const curlScript = 'curl -sS -o "$1" "$2" && sha256sum "$1"';
  const curlOut = join(scratch, "curl-out");

  const twinExe = exeOf(releaseTarget, releaseTwin);
  const twinLabel = releaseTwin.includes(SMOL) ? "with --smol" : "without --smol";
  progress("warm-up update");
  await resetTo(big)();
  await update(big)();
  progress(`large update (${bigRuns} runs of each 1 GiB figure, ${runs} of each 64 MiB one)`);
  const updates = await rounds([
    { name: "update pass, 1 GiB", runs: bigRuns, setup: resetTo(big), run: update(big) },
    { name: "update pass, 64 MiB", runs, setup: resetTo(mid), run: update(mid) },
    // The same two updates by the release's twin with --smol toggled: what that flag does to memory and time.
    { name: `update pass, 1 GiB, ${twinLabel}`, runs: bigRuns, setup: resetTo(big), run: update(big, twinExe) },
    { name: `update pass, 64 MiB, ${twinLabel}`, runs, setup: resetTo(mid), run: update(mid, twinExe) },
    { name: "Bun.CryptoHasher over the same 1 GiB", runs: bigRuns, setup: flushDisk, run: hashing([process.execPath, hashAlone, big.file]) },
    { name: "curl -o FILE URL && sha256sum FILE, 1 GiB", runs: bigRuns, setup: resetTo(big), run: () => measure(["sh", "-c", curlScript, "sh", curlOut, url(big)]) },
    // Not targets: what each stream of the update costs alone on this machine, the floors under it.
    { name: "curl -o /dev/null URL, 1 GiB", runs: bigRuns, run: () => measure(["curl", "-sS", "-o", "/dev/null", url(big)]) },
    {
      name: "fetch + Bun.CryptoHasher, nothing written, 1 GiB",
      runs: bigRuns,
      run: hashing([process.execPath, fetchAlone, url(big)], { PATH: process.env.PATH ?? "/usr/bin:/bin", NO_PROXY: "127.0.0.1,localhost" }),
    },
    {
      name: "dd oflag=direct conv=fsync, the same 1 GiB to this disk",
      runs: bigRuns,
      setup: resetTo(big),
      run: () => measure(["dd", `if=${big.file}`, `of=${curlOut}`, "bs=4M", "oflag=direct", "conv=fsync", "status=none"]),
    },
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
  const noop64 = m(noop, "no-op pass, 20 x 64 MiB");
  const bigUpdate = m(updates, "update pass, 1 GiB");
  const midUpdate = m(updates, "update pass, 64 MiB");
  const transfer = m(updates, "curl -o /dev/null URL, 1 GiB");
  const targets: { target: string; value: number; shown?: string; limit: string; met: boolean | null }[] = [
    { target: "no-op pass CPU: 20 x 64 MiB / 20 x 1 MiB", value: noop64.cpuMs / m(noop, "no-op pass, 20 x 1 MiB").cpuMs, limit: "≤ 1.3" },
    { target: "no-op pass CPU / sha256sum CPU over the same 20 files", value: noop64.cpuMs / m(noop, "sha256sum over the same 20 x 64 MiB").cpuMs, limit: "≤ 0.1" },
    { target: "no-op pass wall / --version wall", value: noop64.wallMs / m(noop, "bin-proxy --version").wallMs, limit: "≤ 3" },
    { target: "API requests per no-op pass (all runs)", value: Math.max(...noopRequests), shown: [...new Set(noopRequests)].join(", "), limit: "= 21" },
    { target: "1 GiB update wall / Bun.CryptoHasher alone", value: bigUpdate.wallMs / m(updates, "Bun.CryptoHasher over the same 1 GiB").wallMs, limit: "≤ 1.3" },
    { target: "1 GiB update wall / curl + sha256sum", value: bigUpdate.wallMs / m(updates, "curl -o FILE URL && sha256sum FILE, 1 GiB").wallMs, limit: "≤ 0.3" },
    { target: "1 GiB update peak RSS, MiB", value: bigUpdate.rssKiB / 1024, limit: "≤ 96" },
    { target: "peak RSS: 1 GiB vs 64 MiB update, relative difference", value: Math.abs(bigUpdate.rssKiB - midUpdate.rssKiB) / midUpdate.rssKiB, limit: "≤ 0.1" },
    { target: "(reference) 1 GiB update wall / loopback transfer alone", value: bigUpdate.wallMs / transfer.wallMs, limit: "—" },
    { target: "(reference) 1 GiB update wall / fetch + hash alone", value: bigUpdate.wallMs / m(updates, "fetch + Bun.CryptoHasher, nothing written, 1 GiB").wallMs, limit: "—" },
    { target: "(reference) 1 GiB update wall / disk write alone", value: bigUpdate.wallMs / m(updates, "dd oflag=direct conv=fsync, the same 1 GiB to this disk").wallMs, limit: "—" },
  ].map((t) => {
    const [op, bound] = t.limit.split(" ");
    const met = op === "≤" ? t.value <= Number(bound) : op === "=" ? noopRequests.every((n) => n === Number(bound)) : null;
    return { ...t, met };
  });

  const machine = {
    cpu: /^model name\s*:\s*(.*)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? "unknown",
    sha_ni: /^flags\s*:.*\bsha_ni\b/m.test(readFileSync("/proc/cpuinfo", "utf8")),
    cores: availableParallelism(),
    kernel: release(),
    bun: Bun.version,
  };
  const ms = (x: number) => x.toFixed(x < 100 ? 1 : 0);
  const mib = (kib: number) => (kib / 1024).toFixed(1);
  const ratio = (x: number) => (x < 0.1 ? x.toFixed(4) : x.toFixed(2));
  const row = (r: Result) => `| ${r.name} | ${ms(r.median.wallMs)} | ${ms(r.median.cpuMs)} | ${mib(r.median.rssKiB)} | ${r.samples.length} |`;
  const head = ["| process | wall ms | CPU ms | peak RSS MiB | runs |", "|---|---:|---:|---:|---:|"];
  const lines = [
    `Machine: ${machine.cpu}${machine.sha_ni ? " (SHA-NI)" : ""}, ${machine.cores} cores, Linux ${machine.kernel}, Bun ${machine.bun}. Release build: ${releaseName}. Medians.`,
    "",
    ...head,
    ...[...noop.values(), ...updates.values()].map(row),
    "",
    "| build | --version wall ms | --version RSS MiB | no-op pass wall ms | no-op pass CPU ms | no-op pass RSS MiB |",
    "|---|---:|---:|---:|---:|---:|",
    ...variants.map((v) => {
      const version = m(startup, `${v.name}: --version`);
      const pass = m(startup, `${v.name}: no-op pass, 20 x 1 MiB`);
      return `| ${v.name}${v.name === releaseName ? " (release)" : ""} | ${ms(version.wallMs)} | ${mib(version.rssKiB)} | ${ms(pass.wallMs)} | ${ms(pass.cpuMs)} | ${mib(pass.rssKiB)} |`;
    }),
    "",
    "| target | measured | limit | met |",
    "|---|---:|---:|---|",
    ...targets.map((t) => `| ${t.target} | ${t.shown ?? ratio(t.value)} | ${t.limit} | ${t.met === null ? "" : t.met ? "yes" : "**no**"} |`),
  ];
  console.log(lines.join("\n"));

  mkdirSync(join(root, "bench"), { recursive: true });
  const out = join(root, "bench", "latest.json");
  const doc = {
    date: new Date().toISOString(),
    commit: await build.commit(),
    command: `npm run bench${process.argv.includes("--runs") ? ` -- --runs ${runs}` : ""}`,
    machine,
    release: { target: releaseTarget, flags: build.RELEASE_FLAGS },
    figures: Object.fromEntries([...noop, ...updates, ...startup].map(([name, r]) => [name, { median: r.median, samples: r.samples }])),
    noopRequests,
    targets,
  };
  writeFileSync(`${out}.tmp`, JSON.stringify(doc, null, 2) + "\n");
  renameSync(`${out}.tmp`, out);
  progress(`wrote ${out}`);
} finally {
  await api?.stop();
  for (const host of hosts) host.cleanup();
  rmSync(scratch, { recursive: true, force: true });
}
