/**
 * The extension's manifest, and the packaged .vsix against it: name, entry point, activation,
 * every contributed command registered by the code, every setting read by it, the runtime
 * dependencies inside. The .vsix check runs once `npm run package` has built codeslm.vsix.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { test } from "node:test";

const HERE = path.resolve(__dirname, "../..");
const manifest = JSON.parse(fs.readFileSync(path.join(HERE, "package.json"), "utf8"));
const source = fs.readFileSync(path.join(HERE, "src/extension.ts"), "utf8");
const VSIX = path.join(HERE, "codeslm.vsix");

function vsixEntries(): { names: string[]; packageJson: any } {
  const script = "import json, sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\n"
    + "print(json.dumps({'names': z.namelist(), 'package': json.loads(z.read('extension/package.json'))}))";
  const out = JSON.parse(execFileSync("python3", ["-c", script, VSIX], { encoding: "utf8" }));
  return { names: out.names, packageJson: out.package };
}

test("the manifest names the extension, its entry point and when it starts", () => {
  assert.equal(manifest.name, "codeslm");
  assert.equal(manifest.publisher, "codeslm");
  assert.equal(manifest.main, "./out/src/extension.js");
  assert.ok(fs.existsSync(path.join(HERE, manifest.main)), "built entry point");
  assert.deepEqual(manifest.activationEvents, ["onStartupFinished"]);
  assert.ok(manifest.engines.vscode);
});

test("every contributed command is registered, every setting is read", () => {
  const commands = manifest.contributes.commands.map((c: { command: string }) => c.command);
  assert.deepEqual(commands.sort(),
    ["codeslm.acceptLine", "codeslm.acceptWord", "codeslm.restart", "codeslm.showStatus", "codeslm.toggle"]);
  for (const c of commands) {
    assert.ok(source.includes(`registerCommand("${c}"`), `${c} registered`);
  }
  const settings = Object.keys(manifest.contributes.configuration.properties);
  assert.deepEqual(settings.sort(),
    ["codeslm.args", "codeslm.enable", "codeslm.languages", "codeslm.model", "codeslm.multiline", "codeslm.path"]);
  for (const s of settings) {
    assert.ok(source.includes(`"${s.slice("codeslm.".length)}"`), `${s} read`);
  }
});

test("the .vsix holds this manifest, the built code and the language client", { skip: !fs.existsSync(VSIX) && "no codeslm.vsix (npm run package)" }, () => {
  const { names, packageJson } = vsixEntries();
  assert.equal(packageJson.name, manifest.name);
  assert.equal(packageJson.version, manifest.version);
  assert.deepEqual(packageJson.activationEvents, manifest.activationEvents);
  assert.deepEqual(packageJson.contributes, manifest.contributes);
  for (const f of ["extension/out/src/extension.js", "extension/out/src/provider.js", "extension/out/src/status.js",
    "extension/node_modules/vscode-languageclient/node.js", "extension.vsixmanifest"]) {
    assert.ok(names.includes(f), `${f} in the .vsix`);
  }
  assert.ok(!names.some((n) => n.includes("/test/") && n.startsWith("extension/out")), "no tests in the .vsix");
  assert.ok(!names.some((n) => n.endsWith(".ts") && !n.endsWith(".d.ts")), "no TypeScript sources");
});
