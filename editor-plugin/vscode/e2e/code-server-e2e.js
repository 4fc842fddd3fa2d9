// End to end in a real VS Code (code-server, driven by headless Chromium): install codeslm.vsix,
// open a copy of the sample repository, type in a file, wait for the inline suggestion, accept it
// with Tab, save, and check the file on disk holds it. Slow (a code-server start and the model's
// first completion); run by e2e/run.sh, which installs what it needs.
"use strict";
const { spawn, execFileSync } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const assert = require("node:assert/strict");

const E2E_DIR = process.env.E2E_DIR;
const { chromium } = require(require.resolve("playwright-core", { paths: [E2E_DIR] }));
const CODE_SERVER = path.join(E2E_DIR, "node_modules/.bin/code-server");
const HERE = path.resolve(__dirname, "..");
const REPO = path.resolve(HERE, "../..");
const CODESLM = process.env.CODESLM || path.join(REPO, ".venv/bin/codeslm");
const VSIX = path.join(HERE, "codeslm.vsix");
const PORT = Number(process.env.E2E_PORT || 18080);
const OUT = process.env.E2E_OUT || path.join(os.tmpdir(), "codeslm-e2e");

async function main() {
  assert.ok(fs.existsSync(VSIX), "build codeslm.vsix first (npm run package)");
  fs.mkdirSync(OUT, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "codeslm-e2e-"));
  const root = path.join(tmp, "repo");
  fs.cpSync(path.join(REPO, "examples/sample-repo"), root, { recursive: true });
  fs.mkdirSync(path.join(root, ".git"));
  const head = fs.readFileSync(path.join(root, "taskq/queue.py"), "utf8").split("\n").slice(0, 22).join("\n");
  const file = path.join(root, "taskq/peek.py");
  fs.writeFileSync(file, head + "\n\n    def peek(self):\n        if not self._heap:\n");
  const userData = path.join(tmp, "user"), extensions = path.join(tmp, "extensions");
  fs.mkdirSync(path.join(userData, "User"), { recursive: true });
  fs.writeFileSync(path.join(userData, "User/settings.json"), JSON.stringify({
    "codeslm.path": CODESLM,
    "codeslm.args": ["--no-dense"],
    "editor.inlineSuggest.enabled": true,
    "editor.quickSuggestions": { other: false, comments: false, strings: false },
    "editor.suggestOnTriggerCharacters": false,
    "editor.wordBasedSuggestions": "off",
    "editor.autoIndent": "none",
    "security.workspace.trust.enabled": false,
    "workbench.startupEditor": "none",
    "telemetry.telemetryLevel": "off",
    "workbench.secondarySideBar.defaultVisibility": "hidden",
  }));
  const env = { ...process.env, XDG_CACHE_HOME: path.join(tmp, "cache"), HF_HUB_OFFLINE: "1" };
  const common = ["--user-data-dir", userData, "--extensions-dir", extensions];
  execFileSync(CODE_SERVER, [...common, "--install-extension", VSIX], { env, stdio: "inherit" });
  const server = spawn(CODE_SERVER, [...common, "--auth", "none", "--bind-addr", `127.0.0.1:${PORT}`,
    "--disable-telemetry", "--disable-workspace-trust", root], { env, stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  server.stdout.on("data", (d) => (log += d));
  server.stderr.on("data", (d) => (log += d));
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox"], headless: true });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    for (let i = 0; ; i++) {
      try {
        await page.goto(`http://127.0.0.1:${PORT}/?folder=${encodeURIComponent(root)}`);
        break;
      } catch (err) {
        if (i > 60) throw err;
        await page.waitForTimeout(1000);
      }
    }
    await page.waitForSelector(".monaco-workbench", { timeout: 120_000 });
    await page.waitForTimeout(3000);
    await page.locator(".explorer-folders-view .monaco-list-row", { hasText: "taskq" }).first().click();
    await page.locator(".explorer-folders-view .monaco-list-row", { hasText: "peek.py" }).first().click();
    await page.waitForSelector(".monaco-editor .view-lines", { timeout: 60_000 });
    await page.click(".monaco-editor .view-lines");
    await page.keyboard.press("Control+End");
    const started = Date.now();
    let ghost = "";
    // Typed once the status bar says the server is up; the first answer waits for the model to
    // load, so retype the last character (a new automatic request) until a suggestion shows.
    await page.waitForSelector('.statusbar-item:has-text("codeslm") .codicon-check', { timeout: 120_000 });
    await page.keyboard.type("            r", { delay: 50 });
    while (!ghost.trim() && Date.now() - started < 150_000) {
      const el = await page.waitForSelector(".ghost-text-decoration, .ghost-text", { timeout: 15_000 }).catch(() => null);
      // VS Code splits the ghost text of a line into several decorated spans
      ghost = el ? (await page.$$eval(".view-lines .ghost-text-decoration, .view-lines .ghost-text",
        (els) => els.map((e) => e.textContent).join(""))) : "";
      if (!ghost.trim()) {
        await page.keyboard.press("Backspace");
        await page.keyboard.type("r");
      }
    }
    if (!ghost.trim()) {
      await page.screenshot({ path: path.join(OUT, "code-server-failed.png") });
      console.error("status bar:", await page.locator(".statusbar").innerText());
      fs.cpSync(path.join(userData, "logs"), path.join(OUT, "logs"), { recursive: true });
    }
    assert.ok(ghost.trim(), "an inline suggestion appeared");
    console.log(`ghost text after ${((Date.now() - started) / 1000).toFixed(1)} s: ${JSON.stringify(ghost)}`);
    await page.screenshot({ path: path.join(OUT, "code-server-ghost.png") });
    const status = await page.locator(".statusbar").innerText();
    console.log("status bar:", JSON.stringify(status.split("\n").filter((s) => s.includes("codeslm"))));
    assert.match(status, /codeslm/);
    await page.keyboard.press("Tab");
    await page.waitForTimeout(500);
    await page.keyboard.press("Control+S");
    await page.waitForTimeout(1500);
    const last = fs.readFileSync(file, "utf8").split("\n").filter((l) => l.trim()).at(-1);
    console.log("last line on disk:", JSON.stringify(last));
    assert.equal(last, "            r" + ghost.replace(/\u00a0/g, " "), "Tab inserted the suggestion after what was typed");
    await page.screenshot({ path: path.join(OUT, "code-server-accepted.png") });
    console.log("ok: code-server showed codeslm's suggestion and Tab accepted it");
  } catch (err) {
    console.error(log.slice(-4000));
    throw err;
  } finally {
    await browser.close();
    server.kill();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
