// Compiles bin-proxy.ts into self-contained executables: dist/bin-proxy for this machine, or (--release) a whole release: one per architecture, install.sh, SHA256SUMS, and minisign signatures.
import { $ } from "bun";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { hashFile } from "../lib/hash.ts";
import { writeFileAtomic } from "../lib/fsx.ts";

const root = join(import.meta.dir, "..");
export const DIST = join(root, "dist");

/**
 * The flags every build uses. A compiled bin-proxy runs as root from cron in whatever working
 * directory cron gives it: it must never load a .env, bunfig.toml, tsconfig.json or package.json
 * found there (a stray .env could turn off TLS checks; a bunfig.toml could preload code).
 */
export const SAFE_FLAGS = [
  "--compile",
  "--production",
  "--no-compile-autoload-dotenv",
  "--no-compile-autoload-bunfig",
  "--no-compile-autoload-tsconfig",
  "--no-compile-autoload-package-json",
];

/**
 * The optional flags, chosen by measurement (README, "Building"). Every build uses them, so the
 * tests run what ships. --bytecode halves a pass's start-up (the pass runs every minute);
 * --format=esm keeps the module semantics of the source, which --bytecode alone turns into CommonJS.
 * --smol (Bun's runtime flag, stamped in) collects garbage sooner: a large download's peak memory
 * then stays flat whatever the file's size (npm run bench: 1 GiB vs 64 MiB), for ~3 ms more CPU a pass.
 */
export const RELEASE_FLAGS = ["--minify", "--bytecode", "--format=esm", "--compile-exec-argv=--smol"];

/** What a release ships: the file name install.sh picks by `uname -m`, Bun's target, and the npm package of that runtime. */
export const RELEASE_ASSETS = [
  // baseline: runs on x86_64 CPUs without AVX2; in Bun 1.4.5 it is the very runtime of bun-linux-x64.
  { asset: "bin-proxy-linux-x86_64", target: "bun-linux-x64-baseline", npmPackage: "@oven/bun-linux-x64-baseline" },
  { asset: "bin-proxy-linux-aarch64", target: "bun-linux-arm64", npmPackage: "@oven/bun-linux-aarch64" },
] as const;

export async function commit(): Promise<string> {
  const result = await $`git -C ${root} rev-parse --short=12 HEAD`.nothrow().quiet();
  if (result.exitCode !== 0) return "unknown";
  const dirty = (await $`git -C ${root} status --porcelain`.nothrow().quiet()).stdout.length > 0;
  return result.stdout.toString().trim() + (dirty ? "-dirty" : "");
}

/** Bun's name for this machine's target, e.g. bun-linux-x64. */
export function nativeTarget(): string {
  return `bun-${process.platform}-${process.arch}`;
}

export interface CompileOptions {
  /** Stamped into --version instead of the git commit (a test builds a "new release" this way). */
  commit?: string;
  /** A Bun runtime of the target to build with, instead of the one Bun downloads. */
  executablePath?: string;
}

/** Compiles for target with the safety flags and `flags` (the release's by default; a benchmark passes others). */
export async function compile(outfile: string, target: string, flags: string[] = RELEASE_FLAGS, options: CompileOptions = {}): Promise<void> {
  const defines = [
    `--define=BIN_PROXY_COMMIT=${JSON.stringify(options.commit ?? (await commit()))}`,
    `--define=BIN_PROXY_TARGET=${JSON.stringify(target)}`,
  ];
  const targetFlag = target === nativeTarget() ? [] : [`--target=${target}`];
  const runtime = options.executablePath ? [`--compile-executable-path=${options.executablePath}`] : [];
  // Built beside the destination and renamed over it: a test running the old executable never sees half a file.
  const temp = `${outfile}.${process.pid}.tmp`;
  mkdirSync(dirname(outfile), { recursive: true });
  const result = await $`${process.execPath} build ${SAFE_FLAGS} ${flags} ${targetFlag} ${runtime} ${defines} ${join(root, "bin-proxy.ts")} --outfile ${temp}`
    .cwd(root).nothrow().quiet();
  if (result.exitCode !== 0) {
    rmSync(temp, { force: true });
    throw new Error(`bun build failed for ${target}:\n${result.stderr.toString()}${result.stdout.toString()}`);
  }
  renameSync(temp, outfile);
}

/**
 * Fetches a target's Bun runtime with npm (which follows the machine's npm registry settings),
 * for when Bun's own download of it fails; Bun fetches straight from registry.npmjs.org.
 */
async function runtimeFromNpm(npmPackage: string, dir: string): Promise<string> {
  const packed = await $`npm pack --silent ${`${npmPackage}@${Bun.version}`} --pack-destination ${dir}`.cwd(dir).nothrow().quiet();
  if (packed.exitCode !== 0) throw new Error(`npm pack ${npmPackage}@${Bun.version} failed:\n${packed.stderr.toString()}`);
  const tarball = join(dir, packed.stdout.toString().trim().split("\n").pop()!);
  await $`tar -xzf ${tarball} -C ${dir}`.quiet();
  return join(dir, "package", "bin", "bun");
}

export interface ReleaseOptions extends Pick<CompileOptions, "commit"> {
  /** A minisign secret key file (BIN_PROXY_SIGNING_KEY): sign the release with it. */
  signingKey?: string;
}

/** Writes every release asset into dir, then the files that complete a release (writeReleaseFiles). Returns every file written. */
export async function buildRelease(dir: string, options: ReleaseOptions = {}): Promise<string[]> {
  if (options.signingKey !== undefined) checkSigningKey(options.signingKey); // before minutes of compiling, not after
  mkdirSync(dir, { recursive: true });
  for (const { asset, target, npmPackage } of RELEASE_ASSETS) {
    const outfile = join(dir, asset);
    try {
      await compile(outfile, target, RELEASE_FLAGS, options);
    } catch (err) {
      console.error(`${(err as Error).message}\ntrying the runtime from npm instead (npm pack ${npmPackage}@${Bun.version})`);
      const scratch = mkdtempSync(join(tmpdir(), "bin-proxy-runtime-"));
      try {
        await compile(outfile, target, RELEASE_FLAGS, { ...options, executablePath: await runtimeFromNpm(npmPackage, scratch) });
      } finally {
        rmSync(scratch, { recursive: true, force: true });
      }
    }
  }
  return [...RELEASE_ASSETS.map(({ asset }) => join(dir, asset)), ...writeReleaseFiles(dir, options.signingKey)];
}

/**
 * Completes a release in dir beside the executables, so that serving dir is the whole release:
 * install.sh, and SHA256SUMS (in the format `sha256sum -c` reads) for the executables and
 * install.sh. With a minisign secret key: `ASSET.sha256` beside each executable (what bin-proxy's
 * self-update fetches, SPEC §9), and a `.minisig` for each of those and for SHA256SUMS (what
 * `install.sh --pubkey` verifies), made by the minisign command itself. Without one, signatures
 * an earlier signed build left are removed: they would not match these files. Returns the files written.
 */
export function writeReleaseFiles(dir: string, signingKey?: string): string[] {
  const installer = join(dir, "install.sh");
  writeFileAtomic(installer, readFileSync(join(root, "scripts", "install.sh")), { mode: 0o755 });
  const shipped = [...RELEASE_ASSETS.map(({ asset }) => asset), "install.sh"];
  const sums = join(dir, "SHA256SUMS");
  // One line per file, in sha256sum's format: SHA256SUMS holds them all, each ASSET.sha256 its own.
  const lines = new Map(shipped.map((name) => [name, `${hashFile(join(dir, name))}  ${name}\n`]));
  writeFileAtomic(sums, [...lines.values()].join(""));
  const checksumFiles = RELEASE_ASSETS.map(({ asset }) => join(dir, `${asset}.sha256`));
  const signed = [sums, ...checksumFiles];
  // Signatures of an earlier build would not match these files: gone before any new one is made, so
  // a signing that fails half-way leaves none that lie.
  for (const file of [...checksumFiles, ...signed.map((f) => `${f}.minisig`)]) rmSync(file, { force: true });
  if (signingKey === undefined) return [installer, sums];
  checkSigningKey(signingKey);
  for (const [i, { asset }] of RELEASE_ASSETS.entries()) writeFileAtomic(checksumFiles[i]!, lines.get(asset)!);
  for (const file of signed) {
    // stdin is the terminal's: a key with a password asks for it (minisign reads it itself, without echo).
    const result = Bun.spawnSync(["minisign", "-S", "-s", signingKey, "-m", file], { stdin: "inherit", stdout: "pipe", stderr: "pipe" });
    if (result.exitCode !== 0) throw new Error(`minisign -S -s ${signingKey} -m ${file} failed (exit ${result.exitCode}): ${result.stderr.toString().trim()}`);
  }
  return [installer, sums, ...checksumFiles, ...signed.map((f) => `${f}.minisig`)];
}

function checkSigningKey(signingKey: string): void {
  if (!Bun.which("minisign")) throw new Error("BIN_PROXY_SIGNING_KEY is set, but the minisign command is not installed (apt-get install minisign)");
  if (!existsSync(signingKey)) throw new Error(`BIN_PROXY_SIGNING_KEY names ${signingKey}, which does not exist (a minisign secret key, as minisign -G writes it)`);
}

if (import.meta.main) {
  if (process.argv.includes("--release")) {
    // An empty BIN_PROXY_SIGNING_KEY counts as unset, as bin-proxy's own settings do.
    for (const file of await buildRelease(DIST, { signingKey: process.env.BIN_PROXY_SIGNING_KEY || undefined })) console.log(`wrote ${file}`);
  } else {
    const outfile = join(DIST, "bin-proxy");
    await compile(outfile, nativeTarget());
    console.log(`built ${outfile}`);
  }
}
