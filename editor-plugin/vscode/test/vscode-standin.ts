/**
 * A stand-in for the `vscode` module, which only exists inside VS Code: the few classes the
 * provider and the status view use, with VS Code's semantics. Cancellation tokens are
 * vscode-jsonrpc's, the same shape VS Code hands to providers.
 */
import { CancellationTokenSource } from "vscode-languageserver-protocol/node";

export { CancellationTokenSource };

export class Position {
  constructor(readonly line: number, readonly character: number) {}
}

export class Range {
  readonly start: Position;
  readonly end: Position;
  constructor(a: Position | number, b: Position | number, c?: number, d?: number) {
    if (typeof a === "number") {
      this.start = new Position(a, b as number);
      this.end = new Position(c as number, d as number);
    } else {
      this.start = a;
      this.end = b as Position;
    }
  }
}

export class InlineCompletionItem {
  constructor(readonly insertText: string, readonly range?: Range) {}
}

export enum InlineCompletionTriggerKind { Invoke = 0, Automatic = 1 }

export enum StatusBarAlignment { Left = 1, Right = 2 }

export class Uri {
  private constructor(readonly fsPath: string) {}
  static file(path: string): Uri {
    return new Uri(path);
  }
  toString(): string {
    return "file://" + encodeURI(this.fsPath);
  }
}
