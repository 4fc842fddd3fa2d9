"""`make demo`'s completions: the shipped model completes a few cursors of the sample repository.

Each cursor is code a user might be writing against the sample repository (a new file that uses
its API, and lines of its own files), completed once with retrieval from `index/sample-repo/`.
Prints the line with the completion, the chunks retrieval handed the model and the time.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from codeslm.complete import CompletionEngine, CompletionRequest, split_at_cursor

ROOT = Path(__file__).resolve().parent / "sample-repo"

# (file, text before the cursor, text after it): new code using the repository's API.
NEW_CODE = [
    ("taskq/worker.py", "from taskq.queue import PriorityQueue, run_with_retries\n\n\n"
     "def drain(queue: PriorityQueue):\n    while len(queue):\n        job = queue.", "\n"),
    ("taskq/app.py", "from pathlib import Path\n\nfrom taskq.config import load_config\n\n\n"
     "def main():\n    config = load_", "\n    return config\n"),
]
# (file, line, column) in the repository's own files: the line's rest is deleted and retyped.
IN_REPO = [("taskq/config.py", 38, 9), ("taskq/queue.py", 38, 17)]


def show(label: str, prefix: str, suffix: str, path: str, engine: CompletionEngine,
         original: str | None = None) -> None:
    started = time.perf_counter()
    result = engine.complete(CompletionRequest(prefix, suffix, path))
    ms = (time.perf_counter() - started) * 1000
    line = prefix.rsplit("\n", 1)[-1]
    rest = suffix.split("\n", 1)[0]
    print(f"\n{label}  ({ms:.0f} ms, {result.prompt_tokens} prompt tokens)")
    print(f"  {line}\x1b[2m{result.text or '(nothing)'}\x1b[0m{rest}")
    if original is not None:
        print(f"  {line}{original}   <- what the file has")
    for chunk in result.retrieved:
        where = f"{chunk.path}:{chunk.start_line}-{chunk.end_line}"
        print(f"    retrieved {where:<26} {chunk.symbol or ''}")
    for note in result.notes:
        print(f"    note: {note}")


def main() -> None:
    index_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("index/sample-repo")
    engine = CompletionEngine.open(index_dir=index_dir)
    print(f"codeslm completes code with the shipped model and retrieval from {index_dir}:")
    for path, prefix, suffix in NEW_CODE:
        show(f"{path} (a new file)", prefix, suffix, path, engine)
    for path, line, col in IN_REPO:
        prefix, suffix = split_at_cursor((ROOT / path).read_text(encoding="utf-8"), line, col)
        original, _, after = suffix.partition("\n")
        show(f"{path}:{line}:{col}", prefix, "\n" + after, path, engine, original)
    print("""
Next:
  codeslm serve --workspace examples/sample-repo   # HTTP on 127.0.0.1:8012 (llama.vim, llama.vscode, Continue)
  codeslm lsp                                      # LSP inline completion on stdio (Neovim 0.12, Helix, ...)
  Editor plugins: editor-plugin/nvim and editor-plugin/vscode (see the README).""")


if __name__ == "__main__":
    main()
