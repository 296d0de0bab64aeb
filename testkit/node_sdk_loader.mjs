// The official OpenAI Node SDK, loaded from where testkit/test_node_sdk.py says it is
// ($OPENAI_SDK_DIR, NODE_PATH, else ~/.cache/claude-bridge/node/node_modules/openai).
import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { delimiter, join } from "node:path";
import { pathToFileURL } from "node:url";

function sdkDir() {
  if (process.env.OPENAI_SDK_DIR) return process.env.OPENAI_SDK_DIR;
  for (const dir of (process.env.NODE_PATH || "").split(delimiter).filter(Boolean)) {
    if (existsSync(join(dir, "openai", "package.json"))) return join(dir, "openai");
  }
  return join(homedir(), ".cache", "claude-bridge", "node", "node_modules", "openai");
}

// Bare `import "openai"` ignores NODE_PATH in an ES module, so load the package's own ESM
// entry (its exports["."] for import) from the directory found above.
export async function loadSdk() {
  const dir = sdkDir();
  const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
  let entry = pkg.exports?.["."] ?? pkg.module ?? pkg.main;
  while (entry && typeof entry === "object") entry = entry.import ?? entry.default;
  const mod = await import(pathToFileURL(join(dir, entry)).href);
  return { mod, version: pkg.version };
}
