"""Do teacher-written summaries make undocumented code findable in natural language?

    python eval/nl_search.py                                   # toolz, the shipped model as teacher
    python eval/nl_search.py --project eval/repos/marshmallow-4.4.0 --teacher DIR

The project is copied with every function's and class's docstring removed; the first line of
each removed docstring becomes a query whose answer is that unit. The copy is indexed (BM25 and
dense), then the teacher writes a summary of each undocumented unit (`codeslm transfer --items
summary`). Recall@1 and @5 are measured for BM25, dense and hybrid search, without and with the
summaries (a summary counts as a hit on the unit it was written about). Prints a table and
writes `nl-search.json` and `nl-search.png` to a new directory under `eval/results/`.
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODES = ("bm25", "dense", "hybrid")


def strip_docstrings(src: Path, dest: Path) -> list[dict]:
    """Copy `src` to `dest` without docstrings of functions, methods and classes; returns one
    query per removed docstring: its first line and the unit it documented (path, symbol)."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".git", "__pycache__"))
    queries = []
    for path in sorted(dest.rglob("*.py")):
        rel = path.relative_to(dest).as_posix()
        if "/tests/" in f"/{rel}" or path.name.startswith("test_") or path.name == "conftest.py":
            continue
        text = path.read_text(encoding="utf-8")
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        lines = text.split("\n")
        cut: list[tuple[int, int, str]] = []  # 0-based first line, last line, replacement
        for node, symbol in _units(tree):
            body = node.body
            if not (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                continue
            first = body[0].value.value.strip().split("\n", 1)[0].strip()
            doc = body[0]
            indent = lines[doc.lineno - 1][: doc.col_offset]
            cut.append((doc.lineno - 1, doc.end_lineno - 1, f"{indent}pass" if len(body) == 1 else None))
            if len(first.split()) >= 3:
                queries.append({"query": first, "path": rel, "symbol": symbol})
        for start, end, replacement in sorted(cut, reverse=True):
            lines[start : end + 1] = [replacement] if replacement else []
        path.write_text("\n".join(lines), encoding="utf-8")
    return queries


def _units(tree):
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node, node.name
        elif isinstance(node, ast.ClassDef):
            yield node, node.name
            for child in node.body:
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield child, f"{node.name}.{child.name}"


def unit_of(hit, provenance: dict) -> tuple[str, str]:
    """The unit a hit stands for: its own symbol, or for a teacher item its source unit's."""
    if hit.chunk.kind == "teacher":
        source = provenance[hit.id]["source"]
        return source["path"], source["symbol"]
    return hit.chunk.path, hit.chunk.symbol


def recall(index, queries: list[dict], mode: str, with_teacher: bool, depth: int = 5) -> dict:
    from codeslm.index.store import TEACHER_KIND

    ranks = []
    for q in queries:
        hits = index.search(q["query"], k=depth * 3, mode=mode,
                            exclude_kinds=() if with_teacher else (TEACHER_KIND,))
        provenance = index.store.provenance([h.id for h in hits if h.chunk.kind == TEACHER_KIND])
        seen = []
        for hit in hits:
            unit = unit_of(hit, provenance)
            if unit not in seen:
                seen.append(unit)
        target = (q["path"], q["symbol"])
        ranks.append(seen.index(target) + 1 if target in seen[:depth] else None)
    n = len(ranks)
    return {"recall@1": sum(r == 1 for r in ranks) / n, "recall@5": sum(r is not None for r in ranks) / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=REPO / "eval" / "repos" / "toolz-1.2.0")
    parser.add_argument("--teacher", type=Path, default=None, help="Teacher model [default: the shipped one].")
    parser.add_argument("--budget", default=None, help="Transfer budget (items or minutes).")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not args.project.is_dir():
        sys.exit(f"{args.project} is not a directory; fetch the proof projects with `python eval/proof_repo.py`")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from codeslm.eval.report import new_run_dir
    from codeslm.index import Index, build_index
    from codeslm.transfer.run import Budget, TransferOptions, transfer

    torch.set_num_threads(1)
    run_dir = new_run_dir("nl-search", args.out)
    work = Path(tempfile.mkdtemp(prefix="codeslm-nl-search-"))
    stripped = work / args.project.name
    queries = strip_docstrings(args.project, stripped)
    index_dir = work / "index"
    started = time.time()
    build_index(stripped, index_dir, dense=True, progress=True)
    index_s = time.time() - started
    index = Index.open(index_dir)
    without = {mode: recall(index, queries, mode, with_teacher=False) for mode in MODES}
    index.close()

    report = transfer(stripped, args.teacher, index_dir, options=TransferOptions(
        item_kinds=("summary",), budget=Budget.parse(args.budget)), progress=True)
    index = Index.open(index_dir)
    with_summaries = {mode: recall(index, queries, mode, with_teacher=True) for mode in MODES}
    index.close()

    results = {
        "project": args.project.name, "queries": len(queries), "teacher": report.teacher,
        "summaries": {"requests": report.requests, "kept": report.tally.kept.get("summary", 0),
                      "dropped": dict(report.tally.dropped), "teacher_minutes": report.teacher_seconds / 60,
                      "examples": report.tally.examples},
        "index_seconds": index_s, "without": without, "with_summaries": with_summaries,
    }
    (run_dir / "nl-search.json").write_text(json.dumps(results, indent=2))
    lines = [f"natural-language search on {args.project.name} without docstrings: {len(queries)} queries "
             f"(first docstring lines), teacher {report.teacher['name']} kept "
             f"{results['summaries']['kept']} of {report.requests} summaries "
             f"({report.teacher_seconds / 60:.1f} teacher min)",
             "", "| mode | recall@1 | recall@1 + summaries | recall@5 | recall@5 + summaries |",
             "|---|---|---|---|---|"]
    for mode in MODES:
        a, b = without[mode], with_summaries[mode]
        lines.append(f"| {mode} | {a['recall@1']:.3f} | {b['recall@1']:.3f} | {a['recall@5']:.3f} | "
                     f"{b['recall@5']:.3f} |")
    table = "\n".join(lines) + "\n"
    (run_dir / "summary.md").write_text(table)
    print(table)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.2
    for i, (label, data, key) in enumerate([("R@1", without, "recall@1"), ("R@1 + summaries", with_summaries, "recall@1"),
                                            ("R@5", without, "recall@5"), ("R@5 + summaries", with_summaries, "recall@5")]):
        ax.bar([m + (i - 1.5) * width for m in range(len(MODES))], [data[mode][key] for mode in MODES], width,
               label=label)
    ax.set_xticks(range(len(MODES)), MODES)
    ax.set_ylabel("recall")
    ax.set_title(f"{args.project.name} without docstrings: {len(queries)} queries")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "nl-search.png", dpi=120)
    shutil.rmtree(work, ignore_errors=True)
    print(f"results in {run_dir}")


if __name__ == "__main__":
    main()
