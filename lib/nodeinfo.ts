// Owns what the node reports about itself: architecture, OS release, name and bin-proxy's version.
import { readFileSync } from "node:fs";
import { machine } from "node:os";
import type { NodeInfo } from "./manifest.ts";

/** PRETTY_NAME of an os-release file, unquoted as the shell would, or "" when absent. */
export function parseOsRelease(text: string): string {
  const match = /^PRETTY_NAME=(.*)$/m.exec(text);
  if (!match) return "";
  const value = match[1]!.trim();
  const quoted = /^"(.*)"$|^'(.*)'$/.exec(value);
  return quoted ? (quoted[1] ?? quoted[2] ?? "").replace(/\\(["\\$`])/g, "$1") : value;
}

function osRelease(): string {
  for (const path of ["/etc/os-release", "/usr/lib/os-release"]) {
    try {
      return parseOsRelease(readFileSync(path, "utf8"));
    } catch {
      // try the next location, as os-release(5) says
    }
  }
  return "";
}

/** The machine as `uname -m` names it: Bun 1.4.5's os.machine() says "arm64" where Linux says "aarch64". */
export function unameMachine(bunMachine: string, platform: string): string {
  return bunMachine === "arm64" && platform === "linux" ? "aarch64" : bunMachine;
}

/** This host's architecture as `uname -m` prints it: what the API is told (cpuArch) and what a download must be built for. */
export function hostCpuArch(): string {
  return unameMachine(machine(), process.platform);
}

export function gatherNodeInfo(nodeName: string, binProxyVersion: string): NodeInfo {
  return { cpuArch: hostCpuArch(), osRelease: osRelease(), nodeName, binProxyVersion };
}

export function sameNodeInfo(a: Partial<NodeInfo>, b: NodeInfo): boolean {
  return a.cpuArch === b.cpuArch && a.osRelease === b.osRelease && a.nodeName === b.nodeName && a.binProxyVersion === b.binProxyVersion;
}
