// The test suite's fake bin-manager on its own, to try bin-proxy by hand: every file in a directory is a binary of that name.
//
//   bun scripts/fake-bin-manager.ts DIR
//
// It prints its API URL and a config for bin-proxy, then every request it answers. Copy a file
// into DIR (or change one) and the next pass sees a new target; remove it and the API forgets it.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { short } from "../lib/hash.ts";
import { artifact, startBinManager } from "../tests/fixture/bin-manager.ts";

const dirArg = process.argv[2];
if (!dirArg || process.argv.length > 3) {
  console.error("usage: bun scripts/fake-bin-manager.ts DIR   (every file in DIR is served as a binary of that name)");
  process.exit(2);
}
const dir = resolve(dirArg);
if (!statSync(dir, { throwIfNoEntry: false })?.isDirectory()) {
  console.error(`fake-bin-manager: ${dir} is not a directory`);
  process.exit(2);
}

const api = await startBinManager();
const served = new Map<string, string>(); // name -> sha256 of what is served now

/** Serves what DIR holds now: new and changed files as new targets (version: the first 12 hex digits), removed ones forgotten. */
function rescan(): void {
  // A file removed between the listing and its stat (an editor's temp file) is simply not served.
  const names = new Set(readdirSync(dir).filter((name) => statSync(join(dir, name), { throwIfNoEntry: false })?.isFile()));
  for (const name of names) {
    const art = artifact(readFileSync(join(dir, name)));
    if (served.get(name) === art.sha256) continue;
    api.setTarget(name, art, short(art.sha256));
    served.set(name, art.sha256);
    console.log(`serving ${name} ${art.sha256}`);
  }
  for (const name of served.keys()) {
    if (names.has(name)) continue;
    api.setTarget(name, null);
    served.delete(name);
    console.log(`no longer serving ${name}`);
  }
}

let printed = 0;
function printRequests(): void {
  for (const r of api.requests.slice(printed)) console.log(`${new Date(r.at).toISOString()} ${r.method} ${r.path}${Object.keys(r.query).length ? `?${new URLSearchParams(r.query)}` : ""}`);
  printed = api.requests.length;
}

rescan();
console.log(`
fake bin-manager at ${api.api}, serving the files of ${dir}
a bin-proxy config to try it with (put your own paths in; SUPERVISORCTL="" restarts nothing):
  BIN_MANAGER_API=${api.api}
  SUPERVISORCTL=""
Ctrl-C stops it.
`);
const timer = setInterval(() => {
  rescan();
  printRequests();
}, 500);

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, async () => {
    clearInterval(timer);
    printRequests();
    await api.stop();
    process.exit(0);
  });
}
