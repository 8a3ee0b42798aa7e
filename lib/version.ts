// Owns what `--version` says: the package version, and the commit and target stamped in at build time.
import pkg from "../package.json" with { type: "json" };

declare const BIN_PROXY_COMMIT: string | undefined;
declare const BIN_PROXY_TARGET: string | undefined;

export const VERSION: string = pkg.version;
export const COMMIT = typeof BIN_PROXY_COMMIT === "string" ? BIN_PROXY_COMMIT : "unknown";
export const TARGET = typeof BIN_PROXY_TARGET === "string" ? BIN_PROXY_TARGET : "source";

export function versionLine(): string {
  return `bin-proxy ${VERSION} (commit ${COMMIT}, target ${TARGET}, bun ${Bun.version})`;
}
