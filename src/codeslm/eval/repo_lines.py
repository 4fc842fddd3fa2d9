"""Repository-level line completion in the style of RepoEval, from any repository.

Zhang et al. (2023), "RepoCoder: Repository-Level Code Completion Through Iterative Retrieval
and Generation", arXiv:2303.12570. A task is one held-out line of a code file: the model sees
the file before it (and after it, for infilling) and must write the line; exact match and edit
similarity score it. Lines are drawn with a seed from every code file tree-sitter parses,
skipping blank lines, comments, docstrings, imports and lines of fewer than `min_chars`
non-blank characters. `CopyBaseline` is the model-free floor: it copies the line that follows
the line most similar to the one before the cursor, from other files or earlier in the file.
But: retrieval for the model is `codeslm.eval.completers.RetrievalCompleter`.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from codeslm.errors import EvalError
from codeslm.eval.metrics import edit_similarity, exact_match
from codeslm.eval.tasks import Example, Task, TaskResult, register

COMMENT_NODES = {"comment", "line_comment", "block_comment", "doc_comment"}
IMPORT_NODES = {
    "import_statement", "import_from_statement", "future_import_statement",
    "import_declaration", "use_declaration", "extern_crate_declaration", "preproc_include",
    "package_clause", "package_declaration",
}


def read_code_files(repo: Path, max_file_size: int = 1_000_000) -> dict[str, list[str]]:
    """Each code file's lines (ends kept), by repository-relative path, as the index reads them.

    Files whose line breaks tree-sitter and `str.splitlines` would count differently (a lone
    `\\r`, form feeds) are left out, so line numbers agree with the index's chunks.
    """
    from codeslm.chunking.languages import DOC_LANGUAGES, language_for, parser_for
    from codeslm.index.walk import UnusableFile, read_source, walk_repo

    files = {}
    for source in walk_repo(repo, max_file_size)[0]:
        language = language_for(source.path)
        if language in DOC_LANGUAGES or parser_for(language) is None:
            continue
        try:
            text = read_source(source)[1]
        except UnusableFile:
            continue
        lines = text.splitlines(keepends=True)
        if len(lines) == text.count("\n") + (0 if text.endswith("\n") else 1):
            files[source.path] = lines
    return files


def skipped_lines(path: str, lines: list[str]) -> set[int]:
    """0-based numbers of lines inside comments, docstrings and imports (tree-sitter)."""
    from codeslm.chunking.languages import language_for, parser_for

    tree = parser_for(language_for(path)).parse("".join(lines).encode("utf-8"))
    skipped: set[int] = set()
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        kind = node.type
        bare_string = (kind == "expression_statement" and node.named_child_count == 1
                       and node.named_children[0].type in ("string", "concatenated_string"))
        if kind in COMMENT_NODES or kind in IMPORT_NODES or bare_string:
            skipped.update(range(node.start_point[0], node.end_point[0] + 1))
        else:
            stack.extend(node.children)
    return skipped


def build_line_tasks(files: dict[str, list[str]], n_tasks: int, seed: int,
                     min_chars: int = 4) -> list[Example]:
    """`n_tasks` held-out lines drawn with `seed` (all candidates if there are fewer)."""
    candidates = []
    for path in sorted(files):
        lines = files[path]
        skip = skipped_lines(path, lines)
        candidates += [(path, i) for i, line in enumerate(lines)
                       if i not in skip and len("".join(line.split())) >= min_chars]
    if not candidates:
        raise EvalError("the repository has no code lines to hold out")
    chosen = random.Random(seed).sample(candidates, min(n_tasks, len(candidates)))
    chosen.sort()
    return [Example(task_id=f"{path}:{i + 1}", prefix="".join(files[path][:i]),
                    suffix="".join(files[path][i + 1:]),
                    reference=files[path][i].rstrip("\r\n"), path=path,
                    meta={"line": i + 1, "candidates": len(candidates)})
            for path, i in chosen]


def first_line(generation: str) -> str:
    return generation.split("\n", 1)[0].rstrip("\r")


class CopyBaseline:
    """Predict the line that follows the line most like the cursor's previous line.

    Only text a real cursor could see is searched: other files, and the current file before the
    previous line (so the target itself, and anything after it, is never copied).
    """

    def __init__(self, files: dict[str, list[str]]):
        self.paths = sorted(files)
        self.texts, self.file_ids, self.next_texts, self.next_rows = [], [], [], []
        for file_id, path in enumerate(self.paths):
            stripped = [line.strip() for line in files[path]]
            following = [-1] * len(stripped)
            nxt = -1
            for row in range(len(stripped) - 1, -1, -1):
                following[row] = nxt
                if stripped[row]:
                    nxt = row
            for row, text in enumerate(stripped):
                if text and following[row] >= 0:
                    self.texts.append(text)
                    self.file_ids.append(file_id)
                    self.next_texts.append(files[path][following[row]].rstrip("\r\n"))
                    self.next_rows.append(following[row])
        self.file_ids = np.array(self.file_ids)
        self.next_rows = np.array(self.next_rows)
        self.file_index = {path: i for i, path in enumerate(self.paths)}

    def __call__(self, example: Example) -> str:
        from rapidfuzz.distance import Levenshtein
        from rapidfuzz.process import cdist

        before = [line.strip() for line in example.prefix.splitlines() if line.strip()]
        if not before or not self.texts:
            return ""
        scores = cdist([before[-1]], self.texts, scorer=Levenshtein.normalized_similarity,
                       workers=1)[0]
        target_row = example.meta["line"] - 1
        same_file = self.file_ids == self.file_index.get(example.path, -1)
        scores[same_file & (self.next_rows >= target_row)] = -1.0
        best = int(np.argmax(scores))
        return self.next_texts[best] if scores[best] >= 0 else ""


@register
class RepoLines(Task):
    """Complete one held-out line of a repository's code."""

    name = "repo-lines"
    citation = "Zhang et al. 2023, arXiv:2303.12570 (RepoEval line completion)"
    stop = ("\n",)
    max_new_tokens = 64

    def __init__(self, repo: str | Path, n_tasks: int = 200, seed: int = 0,
                 min_chars: int = 4, max_file_size: int = 1_000_000):
        self.repo = Path(repo).expanduser()
        if not self.repo.is_dir():
            raise EvalError(f"repository {self.repo} is not a directory")
        self.repo = self.repo.resolve()
        self.n_tasks, self.seed, self.min_chars = n_tasks, seed, min_chars
        self.files = read_code_files(self.repo, max_file_size)
        if not self.files:
            raise EvalError(f"{self.repo} has no code files that tree-sitter can parse")
        self._examples = build_line_tasks(self.files, n_tasks, seed, min_chars)

    def examples(self) -> list[Example]:
        return list(self._examples)

    def postprocess(self, example: Example, generation: str) -> str:
        return first_line(generation)

    def score(self, examples: list[Example], completions: list[list[str]],
              progress=None) -> TaskResult:
        records = []
        for example, predictions in zip(examples, completions, strict=True):
            prediction = predictions[0]
            records.append({
                "task_id": example.task_id, "path": example.path, "line": example.meta["line"],
                "reference": example.reference, "prediction": prediction,
                "exact_match": exact_match(prediction, example.reference),
                "edit_similarity": round(edit_similarity(prediction, example.reference), 4),
            })
            if progress is not None:
                progress(1)
        scores = {"exact_match": float(np.mean([r["exact_match"] for r in records])),
                  "edit_similarity": float(np.mean([r["edit_similarity"] for r in records]))}
        return TaskResult(records=records, scores=scores)

    def copy_baseline(self) -> CopyBaseline:
        return CopyBaseline(self.files)

    def describe(self) -> dict:
        return {"name": f"repository lines of {self.repo.name}", "citation": self.citation,
                "repo": str(self.repo), "files": len(self.files), "tasks": len(self._examples),
                "candidate_lines": self._examples[0].meta["candidates"], "seed": self.seed,
                "min_chars": self.min_chars}
