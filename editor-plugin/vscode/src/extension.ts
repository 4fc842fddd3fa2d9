/**
 * codeslm for VS Code: starts `codeslm lsp` through vscode-languageclient (which keeps the
 * server's copy of the documents in sync), registers the inline completion provider, the status
 * bar item and the commands. What to suggest is the server's business.
 */
import * as vscode from "vscode";
import {
  CloseAction, ErrorAction, LanguageClient, LanguageClientOptions, ServerOptions, State,
} from "vscode-languageclient/node";

import { CodeslmInlineProvider, Settings } from "./provider";
import { ServerStatus, StatusView } from "./status";

let client: LanguageClient | undefined;

function config() {
  return vscode.workspace.getConfiguration("codeslm");
}

function settings(): Settings {
  const c = config();
  return { enable: c.get<boolean>("enable", true), languages: c.get<string[]>("languages", ["*"]) };
}

function serverOptions(): ServerOptions {
  const c = config();
  const args = ["lsp", ...c.get<string[]>("args", [])];
  const model = c.get<string>("model", "");
  if (model) {
    args.push("--model", model);
  }
  return { command: c.get<string>("path", "codeslm") || "codeslm", args };
}

function clientOptions(output: vscode.OutputChannel): LanguageClientOptions {
  const c = config();
  return {
    documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
    initializationOptions: {
      ...(c.get<string>("model", "") ? { model: c.get<string>("model") } : {}),
      multiline: c.get<boolean>("multiline", false),
    },
    outputChannel: output,
    // A server that dies is reported once (see `start`); it is not restarted in a loop.
    errorHandler: {
      error: () => ({ action: ErrorAction.Continue, handled: true }),
      closed: () => ({ action: CloseAction.DoNotRestart, handled: true }),
    },
  };
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const output = vscode.window.createOutputChannel("codeslm");
  const item = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  const status = new StatusView(
    item,
    async () => {
      if (!client || client.state !== State.Running) {
        throw new Error("server not running");
      }
      return client.sendRequest<ServerStatus>("codeslm/status", {});
    },
    () => settings().enable,
  );
  let polling: NodeJS.Timeout | undefined;
  let starting: Promise<void> | undefined;
  const poll = async () => {
    const look = await status.refresh(provider.lastLatencyMs);
    clearTimeout(polling);
    if (look.state === "indexing" || look.state === "starting") {
      polling = setTimeout(poll, 2000);
    }
  };
  const provider = new CodeslmInlineProvider(
    async (method, params, token) => {
      if (client?.state === State.Starting) {
        await starting; // the first keystrokes wait for the server instead of failing
      }
      if (!client || client.state !== State.Running) {
        throw new Error("server not running");
      }
      return client.sendRequest(method, params, token);
    },
    settings,
    () => void poll(),
  );

  const start = async () => {
    const started = new LanguageClient("codeslm", "codeslm", serverOptions(), clientOptions(output));
    client = started;
    client.onDidChangeState((e) => {
      if (e.newState === State.Stopped && client === started) {
        const msg = "codeslm: the server stopped; see the codeslm output, and \"codeslm: Restart Server\" to start it again";
        status.fail("server stopped");
        void vscode.window.showErrorMessage(msg);
      }
    });
    try {
      starting = client.start();
      await starting;
      await poll();
    } catch (err) {
      const msg = err instanceof Error ? err.message : String(err);
      status.fail(msg);
      void vscode.window.showErrorMessage(
        `codeslm: could not start \`${config().get("path")} lsp\`: ${msg}. Set codeslm.path to the codeslm executable.`);
    }
  };
  const stop = async () => {
    const c = client;
    client = undefined;
    if (c) {
      await c.stop().catch(() => undefined);
    }
  };

  context.subscriptions.push(
    output,
    item,
    vscode.languages.registerInlineCompletionItemProvider([{ scheme: "file" }, { scheme: "untitled" }], provider),
    vscode.commands.registerCommand("codeslm.toggle", async () => {
      await config().update("enable", !settings().enable, vscode.ConfigurationTarget.Global);
      status.draw(provider.lastLatencyMs);
    }),
    vscode.commands.registerCommand("codeslm.acceptWord",
      () => vscode.commands.executeCommand("editor.action.inlineSuggest.acceptNextWord")),
    vscode.commands.registerCommand("codeslm.acceptLine",
      () => vscode.commands.executeCommand("editor.action.inlineSuggest.acceptNextLine")),
    vscode.commands.registerCommand("codeslm.showStatus", async () => {
      await poll();
      void vscode.window.showInformationMessage(status.look.tooltip, { modal: false });
    }),
    vscode.commands.registerCommand("codeslm.restart", async () => {
      await stop();
      await start();
    }),
    vscode.workspace.onDidChangeConfiguration(async (e) => {
      if (["path", "model", "args", "multiline"].some((k) => e.affectsConfiguration(`codeslm.${k}`))) {
        await stop();
        await start();
      } else if (e.affectsConfiguration("codeslm")) {
        status.draw(provider.lastLatencyMs);
      }
    }),
    { dispose: () => clearTimeout(polling) },
  );
  await start();
}

export async function deactivate(): Promise<void> {
  if (client) {
    await client.stop();
  }
}
