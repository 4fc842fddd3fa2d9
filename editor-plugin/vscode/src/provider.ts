/**
 * The inline completion provider: turns VS Code's request into LSP 3.18
 * `textDocument/inlineCompletion` for `codeslm lsp` and its answer into ghost text.
 * It does not talk to the server itself: `send` does (the language client in the editor,
 * a plain JSON-RPC connection in the tests), with VS Code's token for cancellation.
 */
import * as vscode from "vscode";

export type SendRequest = (method: string, params: unknown, token: vscode.CancellationToken) => Promise<unknown>;

export interface Settings {
  enable: boolean;
  languages: readonly string[];
}

interface LspPosition { line: number; character: number }
interface LspItem { insertText: string | { value: string }; range?: { start: LspPosition; end: LspPosition } }

/** LSP's InlineCompletionTriggerKind: VS Code counts from 0, LSP from 1. */
export const LSP_INVOKED = 1;
export const LSP_AUTOMATIC = 2;

/** Whether `languageId` is completed: "*" enables all, "-id" leaves one out. */
export function languageEnabled(languages: readonly string[], languageId: string): boolean {
  if (languages.includes("-" + languageId)) {
    return false;
  }
  return languages.includes("*") || languages.includes(languageId);
}

export class CodeslmInlineProvider implements vscode.InlineCompletionItemProvider {
  /** Milliseconds from the last request to its answer, as the editor saw it. */
  lastLatencyMs: number | undefined;
  lastError: string | undefined;

  constructor(
    private readonly send: SendRequest,
    private readonly settings: () => Settings,
    private readonly onAnswer: () => void = () => {},
  ) {}

  async provideInlineCompletionItems(
    document: vscode.TextDocument,
    position: vscode.Position,
    context: vscode.InlineCompletionContext,
    token: vscode.CancellationToken,
  ): Promise<vscode.InlineCompletionItem[] | undefined> {
    const s = this.settings();
    if (!s.enable || !languageEnabled(s.languages, document.languageId) || token.isCancellationRequested) {
      return undefined;
    }
    const params = {
      textDocument: { uri: document.uri.toString() },
      position: { line: position.line, character: position.character },
      context: {
        triggerKind: context.triggerKind === vscode.InlineCompletionTriggerKind.Invoke ? LSP_INVOKED : LSP_AUTOMATIC,
      },
    };
    const start = performance.now();
    let result: unknown;
    try {
      result = await this.send("textDocument/inlineCompletion", params, token);
    } catch (err) {
      if (token.isCancellationRequested) {
        return undefined; // the user typed on: the server was told to stop
      }
      this.lastError = err instanceof Error ? err.message : String(err);
      this.onAnswer();
      return undefined;
    }
    if (token.isCancellationRequested) {
      return undefined;
    }
    this.lastLatencyMs = performance.now() - start;
    this.lastError = undefined;
    this.onAnswer();
    const items = (Array.isArray(result) ? result : (result as { items?: LspItem[] } | null)?.items ?? []) as LspItem[];
    return items.flatMap((item) => {
      const text = typeof item.insertText === "string" ? item.insertText : item.insertText?.value;
      if (!text) {
        return [];
      }
      const r = item.range;
      const range = r ? new vscode.Range(r.start.line, r.start.character, r.end.line, r.end.character)
        : new vscode.Range(position, position);
      return [new vscode.InlineCompletionItem(text, range)];
    });
  }
}
