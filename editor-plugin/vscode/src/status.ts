/**
 * The status bar item: ready / indexing / error / off, and the last completion's latency,
 * from the server's `codeslm/status` answer. It draws; it does not decide when to ask.
 */
import * as vscode from "vscode";

export interface WorkspaceStatus {
  root: string;
  index_dir: string;
  state: "indexing" | "ready" | "error";
  chunks: number;
  dense: boolean;
  error: string | null;
}

export interface ServerStatus {
  model: string;
  workspaces: WorkspaceStatus[];
  last_latency_ms: number | null;
  notes: string[];
}

export interface StatusLook {
  text: string;
  tooltip: string;
  state: "off" | "starting" | "error" | "indexing" | "ready";
}

/** What the item shows for a status answer (or the error getting it). */
export function describeStatus(enabled: boolean, status?: ServerStatus, error?: string, latencyMs?: number): StatusLook {
  if (!enabled) {
    return { text: "$(circle-slash) codeslm", tooltip: "codeslm: completion off", state: "off" };
  }
  if (error) {
    return { text: "$(error) codeslm", tooltip: `codeslm: ${error}`, state: "error" };
  }
  if (!status) {
    return { text: "$(loading~spin) codeslm", tooltip: "codeslm: starting", state: "starting" };
  }
  const lines = [`codeslm: model ${status.model}`];
  for (const w of status.workspaces) {
    lines.push(`${w.root}: ${w.state}, ${w.chunks} chunks${w.dense ? ", dense" : ""}${w.error ? `, ${w.error}` : ""}`);
  }
  const latency = status.last_latency_ms ?? latencyMs;
  if (latency !== undefined && latency !== null) {
    lines.push(`last completion: ${Math.round(latency)} ms`);
  }
  lines.push(...status.notes.map((n) => `note: ${n}`));
  const failed = status.workspaces.find((w) => w.state === "error");
  if (failed) {
    return { text: "$(error) codeslm", tooltip: lines.join("\n"), state: "error" };
  }
  if (status.workspaces.some((w) => w.state === "indexing")) {
    return { text: "$(sync~spin) codeslm indexing", tooltip: lines.join("\n"), state: "indexing" };
  }
  const ms = latency !== undefined && latency !== null ? ` ${Math.round(latency)} ms` : "";
  return { text: `$(check) codeslm${ms}`, tooltip: lines.join("\n"), state: "ready" };
}

export class StatusView {
  status: ServerStatus | undefined;
  error: string | undefined;
  look: StatusLook;

  constructor(
    private readonly item: vscode.StatusBarItem,
    private readonly fetch: () => Promise<ServerStatus>,
    private readonly enabled: () => boolean,
  ) {
    this.look = this.draw();
    item.command = "codeslm.showStatus";
    item.show();
  }

  /** Ask the server and redraw; returns what is shown. */
  async refresh(latencyMs?: number): Promise<StatusLook> {
    try {
      this.status = await this.fetch();
      this.error = undefined;
    } catch (err) {
      this.error = err instanceof Error ? err.message : String(err);
    }
    return this.draw(latencyMs);
  }

  fail(error: string): StatusLook {
    this.error = error;
    return this.draw();
  }

  draw(latencyMs?: number): StatusLook {
    this.look = describeStatus(this.enabled(), this.status, this.error, latencyMs);
    this.item.text = this.look.text;
    this.item.tooltip = this.look.tooltip;
    return this.look;
  }
}
