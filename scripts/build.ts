// Compiles bin-proxy.ts into a self-contained executable: dist/bin-proxy for this machine.
import { $ } from "bun";
import { renameSync, rmSync } from "node:fs";
import { join } from "node:path";

const root = join(import.meta.dir, "..");

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

export async function compile(outfile: string, target: string, extraFlags: string[] = []): Promise<void> {
  const defines = [
    `--define=BIN_PROXY_COMMIT=${JSON.stringify(await commit())}`,
    `--define=BIN_PROXY_TARGET=${JSON.stringify(target)}`,
  ];
  const targetFlag = target === nativeTarget() ? [] : [`--target=${target}`];
  // Built beside the destination and renamed over it: a test running the old executable never sees half a file.
  const temp = `${outfile}.${process.pid}.tmp`;
  const result = await $`${process.execPath} build ${SAFE_FLAGS} ${extraFlags} ${targetFlag} ${defines} ${join(root, "bin-proxy.ts")} --outfile ${temp}`
    .cwd(root).nothrow().quiet();
  if (result.exitCode !== 0) {
    rmSync(temp, { force: true });
    throw new Error(`bun build failed for ${target}:\n${result.stderr.toString()}${result.stdout.toString()}`);
  }
  renameSync(temp, outfile);
}

if (import.meta.main) {
  const outfile = join(root, "dist", "bin-proxy");
  await compile(outfile, nativeTarget());
  console.log(`built ${outfile}`);
}
