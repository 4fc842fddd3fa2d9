/**
 * The provider and the status view against the real `codeslm lsp` (the shipped model, BM25 only)
 * on a copy of the sample repository, over a plain JSON-RPC connection standing where
 * vscode-languageclient stands in VS Code; only the `vscode` module is a stand-in.
 */
import "./register-vscode";

import assert from "node:assert/strict";
import { ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";

import * as vscode from "vscode";
import {
  CancellationTokenSource, createProtocolConnection, ErrorCodes, ProtocolConnection, ResponseError, StreamMessageReader,
  StreamMessageWriter,
} from "vscode-languageserver-protocol/node";

import { CodeslmInlineProvider, languageEnabled, Settings } from "../src/provider";
import { describeStatus, ServerStatus, StatusView } from "../src/status";

const REPO = path.resolve(__dirname, "../../../..");
const CODESLM = process.env.CODESLM ?? path.join(REPO, ".venv/bin/codeslm");
const DRAIN = '"""Draining a queue."""\n\nfrom taskq.queue import PriorityQueue, backoff_delay\n\n\n'
  + "def drain(queue):\n    while len(queue):\n        yield queue.";
const END = new vscode.Position(7, "        yield queue.".length);

let proc: ChildProcess;
let conn: ProtocolConnection;
let tmp: string;
let doc: vscode.TextDocument;
const sent: { method: string; params: any }[] = [];
const logs: string[] = [];
let stderr = "";
let settings: Settings = { enable: true, languages: ["*"] };

/**
 * Stands where vscode-languageclient's sendRequest stands: once the server has died it rejects
 * without writing to the closed pipe, as the client does once it has stopped.
 */
function request(method: string, params: unknown, token?: vscode.CancellationToken): Promise<unknown> {
  if (proc.exitCode !== null || proc.signalCode !== null) {
    return Promise.reject(new ResponseError(ErrorCodes.ConnectionInactive, "Client is not running"));
  }
  return conn.sendRequest(method, params, token as any) as Promise<unknown>;
}
const send = (method: string, params: unknown, token: vscode.CancellationToken) => {
  sent.push({ method, params });
  return request(method, params, token);
};
const provider = new CodeslmInlineProvider(send, () => settings);
const automatic = { triggerKind: vscode.InlineCompletionTriggerKind.Automatic, selectedCompletionInfo: undefined };
const invoked = { triggerKind: vscode.InlineCompletionTriggerKind.Invoke, selectedCompletionInfo: undefined };

function token() {
  return new CancellationTokenSource().token;
}

async function until<T>(f: () => Promise<T | undefined>, what: string, ms = 90_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) {
      return v;
    }
    if (Date.now() > end) {
      throw new Error(`no ${what} within ${ms} ms`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

before(async () => {
  assert.ok(fs.existsSync(CODESLM), `no codeslm executable at ${CODESLM} (set CODESLM)`);
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "codeslm-vscode-"));
  const root = path.join(tmp, "repo");
  fs.cpSync(path.join(REPO, "examples/sample-repo"), root, { recursive: true });
  fs.mkdirSync(path.join(root, ".git"));
  const file = path.join(root, "taskq", "drain.py");
  fs.writeFileSync(file, DRAIN);
  proc = spawn(CODESLM, ["lsp", "--no-dense"], {
    env: { ...process.env, XDG_CACHE_HOME: path.join(tmp, "cache"), HF_HUB_OFFLINE: "1", TOKENIZERS_PARALLELISM: "false" },
    stdio: ["pipe", "pipe", "pipe"],
  });
  proc.stderr!.on("data", (d) => (stderr += d));
  proc.once("exit", (code, signal) => {
    if (code) {
      console.error(`codeslm lsp exited with ${code} (${signal}):\n${stderr}`);
    }
  });
  conn = createProtocolConnection(new StreamMessageReader(proc.stdout!), new StreamMessageWriter(proc.stdin!));
  conn.onRequest("window/workDoneProgress/create", () => null);
  conn.onRequest("client/registerCapability", () => null);
  conn.onRequest("workspace/configuration", () => []);
  conn.onNotification("window/logMessage", (p: { message: string }) => logs.push(p.message));
  conn.onNotification("$/progress", () => undefined);
  conn.listen();
  const rootUri = vscode.Uri.file(root).toString();
  const init: any = await conn.sendRequest("initialize", {
    processId: process.pid,
    rootUri,
    workspaceFolders: [{ uri: rootUri, name: "repo" }],
    capabilities: {
      general: { positionEncodings: ["utf-16"] },
      window: { workDoneProgress: true },
      textDocument: { synchronization: { didSave: true }, inlineCompletion: {} },
      workspace: { workspaceFolders: true },
    },
    initializationOptions: { multiline: false },
  });
  assert.ok(init.capabilities.inlineCompletionProvider, "the server offers inline completion");
  await conn.sendNotification("initialized", {});
  doc = { uri: vscode.Uri.file(file), languageId: "python" } as unknown as vscode.TextDocument;
  await conn.sendNotification("textDocument/didOpen", {
    textDocument: { uri: doc.uri.toString(), languageId: "python", version: 1, text: DRAIN },
  });
});

after(async () => {
  proc?.kill();
  if (tmp) {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

describe("against codeslm lsp", () => {
  test("suggests text inserted at the cursor, asked as automatic", async () => {
    const items = await until(async () => {
      const got = await provider.provideInlineCompletionItems(doc, END, automatic, token());
      return got && got.length ? got : undefined;
    }, "suggestion");
    assert.ok(String(items[0].insertText).length > 0);
    assert.deepEqual([items[0].range!.start, items[0].range!.end], [END, END]);
    assert.equal(sent.at(-1)!.params.context.triggerKind, 2);
    assert.deepEqual(sent.at(-1)!.params.position, { line: 7, character: END.character });
    assert.ok(provider.lastLatencyMs! > 0);
  });

  test("asked by hand, the request says invoked", async () => {
    const items = await provider.provideInlineCompletionItems(doc, END, invoked, token());
    assert.equal(sent.at(-1)!.params.context.triggerKind, 1);
    assert.ok(Array.isArray(items));
  });

  test("a cancelled token gives nothing, and the server answers the next request", async () => {
    const source = new CancellationTokenSource();
    const pending = provider.provideInlineCompletionItems(doc, END, automatic, source.token);
    source.cancel();
    assert.equal(await pending, undefined);
    const next = await provider.provideInlineCompletionItems(doc, END, automatic, token());
    assert.ok(next && next.length > 0);
  });

  test("disabled, or a language left out, sends nothing", async () => {
    const before = sent.length;
    settings = { enable: false, languages: ["*"] };
    assert.equal(await provider.provideInlineCompletionItems(doc, END, automatic, token()), undefined);
    settings = { enable: true, languages: ["*", "-python"] };
    assert.equal(await provider.provideInlineCompletionItems(doc, END, automatic, token()), undefined);
    settings = { enable: true, languages: ["*"] };
    assert.equal(sent.length, before);
  });

  test("the status bar shows ready with the last latency", async () => {
    const item = { text: "", tooltip: "", command: "", show() {} } as unknown as vscode.StatusBarItem;
    const view = new StatusView(item, () => request("codeslm/status", {}) as Promise<ServerStatus>, () => true);
    const look = await until(async () => {
      const l = await view.refresh(provider.lastLatencyMs);
      return l.state === "ready" ? l : undefined;
    }, "ready index");
    assert.match(item.text, /codeslm \d+ ms/);
    assert.match(String(item.tooltip), /chunks/);
    assert.equal(look.state, "ready");
  });

  test("a server that died gives nothing and an error state, without throwing", async () => {
    proc.kill("SIGKILL");
    await new Promise((r) => proc.once("exit", r));
    const items = await provider.provideInlineCompletionItems(doc, END, automatic, token());
    assert.equal(items, undefined);
    assert.ok(provider.lastError);
    const item = { text: "", tooltip: "", command: "", show() {} } as unknown as vscode.StatusBarItem;
    const view = new StatusView(item, () => request("codeslm/status", {}) as Promise<ServerStatus>, () => true);
    assert.equal((await view.refresh()).state, "error");
  });
});

describe("settings and status text", () => {
  test("languages: * for all, -id leaves one out, else listed only", () => {
    assert.ok(languageEnabled(["*"], "python"));
    assert.ok(!languageEnabled(["*", "-markdown"], "markdown"));
    assert.ok(languageEnabled(["python", "rust"], "rust"));
    assert.ok(!languageEnabled(["python"], "go"));
  });

  test("status: off, starting, indexing, error", () => {
    const ws = { root: "/r", index_dir: "/c", chunks: 3, dense: false, error: null };
    const status = (state: "indexing" | "ready" | "error"): ServerStatus =>
      ({ model: "m", workspaces: [{ ...ws, state }], last_latency_ms: 42.4, notes: ["completed without retrieval: x"] });
    assert.equal(describeStatus(false, status("ready")).state, "off");
    assert.equal(describeStatus(true).state, "starting");
    assert.equal(describeStatus(true, status("indexing")).text, "$(sync~spin) codeslm indexing");
    assert.equal(describeStatus(true, status("ready")).text, "$(check) codeslm 42 ms");
    assert.match(describeStatus(true, status("ready")).tooltip, /note: completed without retrieval/);
    assert.equal(describeStatus(true, status("error")).state, "error");
    assert.equal(describeStatus(true, undefined, "server stopped").state, "error");
  });
});
