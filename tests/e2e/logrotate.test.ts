// The README's logrotate snippet, run by the real logrotate (Debian package) between two passes: the log is reopened per line, so `create` works and no line is lost.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { artifact, startBinManager, type BinManager } from "../fixture/bin-manager.ts";
import { requireCommand } from "../fixture/daemon.ts";
import { hostPool, runBinProxy } from "../fixture/host.ts";

const README = resolve(import.meta.dir, "../../README.md");
const LOG_PATH_IN_README = "/var/log/bin-proxy.log";

let bm: BinManager;
const hosts = hostPool();

beforeAll(async () => {
  bm = await startBinManager();
});

afterAll(async () => {
  await bm?.stop();
  hosts.cleanup();
});

/** The logrotate snippet of the README's "Log rotation" section, exactly as an operator copies it. */
function readmeSnippet(): string {
  const section = readFileSync(README, "utf8").split("### Log rotation")[1];
  const snippet = section && /```\n(\/var\/log\/bin-proxy\.log \{\n[\s\S]*?\n\})\n```/.exec(section)?.[1];
  if (!snippet) throw new Error(`README.md has no logrotate snippet for ${LOG_PATH_IN_README} under "### Log rotation"`);
  return snippet + "\n";
}

function logrotate(): string {
  // The README's rotation snippet must be run, not only read.
  return requireCommand("logrotate", "logrotate");
}

test("rotating between two passes: the first pass's lines in .1, the second's in the new file created by `create`", async () => {
  const h = hosts.make();
  h.writeManifest([{ serviceName: "", binaryName: "rotated", version: "", previousVersion: "", port: 0 }]);
  const v1 = artifact("#!/bin/sh\necho rotated v1\n");
  const v2 = artifact("#!/bin/sh\necho rotated v2\n");

  bm.setTarget("rotated", v1);
  expect((await runBinProxy([], h.env(bm.api))).code).toBe(0);
  const firstPass = h.log();
  expect(firstPass).toMatch(/ bin=rotated event=updated from=none to=/);

  const conf = join(h.root, "logrotate.conf");
  writeFileSync(conf, readmeSnippet().replace(LOG_PATH_IN_README, h.logFile));
  // Its own state file; -f rotates now, as the weekly run would.
  const rotated = Bun.spawnSync([logrotate(), "-f", "-s", join(h.root, "logrotate.state"), conf], { stdin: "ignore" });
  if (rotated.exitCode !== 0) throw new Error(`logrotate exited ${rotated.exitCode}: ${rotated.stderr.toString()}`);
  expect(readFileSync(`${h.logFile}.1`, "utf8")).toBe(firstPass);
  // `create 0640 root adm` made the new, empty log.
  expect(h.log()).toBe("");
  expect((statSync(h.logFile).mode & 0o777).toString(8)).toBe("640");

  bm.setTarget("rotated", v2);
  expect((await runBinProxy([], h.env(bm.api))).code).toBe(0);
  expect(h.log()).toMatch(new RegExp(` bin=rotated event=updated from=${v1.sha256.slice(0, 12)} to=${v2.sha256.slice(0, 12)} `));
  expect(readFileSync(`${h.logFile}.1`, "utf8")).toBe(firstPass);
  // delaycompress: the first rotation is not compressed yet, so it is still readable as it is.
  expect(existsSync(`${h.logFile}.1.gz`)).toBe(false);
});
