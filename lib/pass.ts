// Owns one pass: node info and keepalive, then every manifest entry in order, and the pass's exit status.
import { mkdirSync } from "node:fs";
import { BinManagerClient } from "./api.ts";
import { ConfigError, DEFAULT_CONFIG_FILE, type Settings } from "./config.ts";
import { EXIT_CONFIG, EXIT_FAILED, EXIT_OK } from "./exit.ts";
import { sweepOrphanTemps, sweepOrphanTempsUnder } from "./fsx.ts";
import { HashCache, hashCachePath } from "./hash.ts";
import { prepareLockDir } from "./lock.ts";
import { sweepLockDir } from "./lockinspect.ts";
import { errorText, type Logger } from "./log.ts";
import { readManifestOrLog, updateManifest, type Manifest } from "./manifest.ts";
import type { TrustedKeys } from "./minisign.ts";
import { gatherNodeInfo, hostCpuArch, sameNodeInfo } from "./nodeinfo.ts";
import { recordRunMetrics, type BinaryResult } from "./runmetrics.ts";
import { loadTrustedKeys } from "./signature.ts";
import { binaryPath, preview, updateBinary, type Outcome, type PassContext } from "./update.ts";
import { VERSION } from "./version.ts";

export interface PassOptions {
  dryRun: boolean;
  /** Spread a fleet's load: sleep a random 0..splay seconds first (never in --dry-run or on a terminal). */
  splay: boolean;
  /** --dry-run prints its verdicts here. */
  print: (line: string) => void;
  /** With --verbose or on a terminal: one line saying what a pass that changed nothing found, so "did it run?" has an answer. */
  summary?: (line: string) => void;
}

export async function runPass(settings: Settings, log: Logger, options: PassOptions): Promise<number> {
  if (options.splay && settings.splaySec > 0) await Bun.sleep(Math.random() * settings.splaySec * 1000);
  const startedAt = new Date();
  // Lines logged before the pass (config warnings) are not something the pass did.
  const linesBefore = log.lineCount;
  const finish = (exitCode: number, results: BinaryResult[] | null, signed: boolean | null) => {
    // A manifest or keys file that cannot be used is a configuration error: the metrics say so (bin_proxy_config_ok 0).
    if (!options.dryRun) recordRunMetrics(settings, log, { kind: exitCode === EXIT_CONFIG ? "config-error" : "pass", startedAt, exitCode, results, signed });
    return exitCode;
  };

  const manifest = readManifestOrLog(settings.manifest, log);
  if (!manifest) return finish(EXIT_CONFIG, null, null);
  const trustedKeys = trustedKeysOrLog(settings, log);
  if (trustedKeys === undefined) return finish(EXIT_CONFIG, null, null);
  if (!options.dryRun) {
    try {
      prepareLockDir(settings.lockDir);
      mkdirSync(settings.stateDir, { recursive: true, mode: 0o700 });
    } catch (err) {
      log.error("setup_failed", { error: errorText(err) });
      return finish(EXIT_FAILED, null, trustedKeys !== null);
    }
  }
  const ctx = passContext(settings, log, trustedKeys, options.dryRun);

  await keepalive(ctx, manifest, options.dryRun);

  const results: BinaryResult[] = [];
  for (const rejected of manifest.rejected) log.error("entry_rejected", { bin: rejected.label, reason: rejected.reason });
  for (const entry of manifest.entries) {
    const name = entry.binaryName;
    let target;
    try {
      target = await ctx.api.target(name);
    } catch (err) {
      log.error("target_unavailable", { bin: name, error: errorText(err) });
      results.push({ entry, target: null, outcome: failedBeforeStart("target", err) });
      continue;
    }
    if (options.dryRun) {
      options.print(`${name}: ${await preview(ctx, entry, target)}`);
      continue;
    }
    let outcome: Outcome;
    try {
      outcome = await updateBinary(ctx, entry, target);
    } catch (err) {
      log.error("update_failed", { bin: name, error: errorText(err) });
      outcome = failedBeforeStart("update", err);
    }
    results.push({ entry, target, outcome });
  }
  if (!options.dryRun) {
    sweepLeftovers(settings, manifest, log);
    ctx.cache.save();
  }
  const count = (kind: Outcome["kind"]) => results.filter((r) => r.outcome?.kind === kind).length;
  // Only when nothing was logged: a pass that did something said so line by line already. A dry run's
  // verdicts are its lines on stdout; it updates nothing, so its counts would say "0 up to date".
  if (log.lineCount === linesBefore && !options.dryRun) options.summary?.(
    `bin-proxy: pass done: ${manifest.entries.length} checked, ${count("up-to-date")} up to date, ${count("updated") + count("adopted")} updated, ` +
      `${count("held")} held, ${count("busy")} busy, ${count("failed")} failed, took_ms=${Date.now() - startedAt.getTime()}`,
  );
  const exitCode = manifest.rejected.length > 0 || count("failed") > 0 || log.errorCount > 0 ? EXIT_FAILED : EXIT_OK;
  return finish(exitCode, results, trustedKeys !== null);
}

/** What every binary's update shares, for a pass and for `rollback NAME`; readOnly (--dry-run) refuses every POST. */
export function passContext(settings: Settings, log: Logger, trustedKeys: TrustedKeys | null, readOnly: boolean): PassContext {
  const cpuArch = hostCpuArch();
  return { settings, api: new BinManagerClient(settings, readOnly, cpuArch), log, cache: HashCache.load(hashCachePath(settings.stateDir)), trustedKeys, cpuArch };
}

/** The trusted keys (null: not signature-checked), or undefined after logging why the keys file is a configuration error. */
export function trustedKeysOrLog(settings: Settings, log: Logger): TrustedKeys | null | undefined {
  try {
    return loadTrustedKeys(settings.trustedKeys);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    log.error("trusted_keys_invalid", { error: err.message });
    return undefined;
  }
}

/** A binary whose update could not even start (the API did not name a target, or an unexpected error). */
function failedBeforeStart(step: string, err: unknown): Outcome {
  return { kind: "failed", step, error: errorText(err), undo: { kind: "nothing-to-restore" }, downloadedBytes: 0 };
}

/**
 * Removes what runs killed mid-way (kill -9, power loss) left behind: temp files of the manifest,
 * the state directory and the binaries named by a pid that is gone, and locks whose recorded holder
 * provably no longer exists. At the end of the pass, so that a lock this pass needed was taken over
 * (and logged as such) by its update. Partial downloads are removed by the next holder of their
 * binary's lock.
 */
function sweepLeftovers(settings: Settings, manifest: Manifest, log: Logger): void {
  try {
    const removed = [
      ...sweepOrphanTemps(settings.manifest, ...manifest.entries.map((e) => binaryPath(settings, e.binaryName))),
      ...sweepOrphanTempsUnder(settings.stateDir),
      ...sweepLockDir(settings.lockDir),
    ];
    if (removed.length > 0) log.info("leftovers_removed", { files: removed.join(",") });
  } catch (err) {
    log.warn("leftovers_not_removed", { error: errorText(err) });
  }
}

/** Tells the API this node is alive; a failure here is logged and never stops the pass. */
async function keepalive(ctx: PassContext, manifest: Manifest, dryRun: boolean): Promise<void> {
  const { settings, api, log } = ctx;
  const info = gatherNodeInfo(settings.nodeName, VERSION);
  const changed = !sameNodeInfo(manifest.nodeInfo, info);
  if (changed && !dryRun) {
    try {
      updateManifest(settings.manifest, settings.lockDir, [{ nodeInfo: info }]);
    } catch (err) {
      log.warn("node_info_not_saved", { error: errorText(err) });
    }
  }
  try {
    const status = await api.keepaliveStatus(settings.nodeName);
    if ((status !== "active" || changed) && !dryRun) await api.postKeepalive(info);
  } catch (err) {
    // A host nobody pointed at a bin-manager is not "up to date": it is not configured, and says so.
    if (!settings.apiConfigured) log.error("not_configured", { error: `BIN_MANAGER_API is not set (environment or config file) and the default ${settings.api} does not answer: ${errorText(err)}; set BIN_MANAGER_API in ${DEFAULT_CONFIG_FILE}` });
    else log.warn("keepalive_failed", { error: errorText(err) });
  }
}
