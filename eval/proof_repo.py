"""Does retrieval lift the tiny model? Repository line completion on real projects that are in no
training split, for every completion-engine variant next to the model-free copy baseline.

    python eval/proof_repo.py                        # shipped model, three PyPI projects, 200 tasks each
    python eval/proof_repo.py --model runs/x/export --tasks 300 --project attrs==25.4.0

Each project is an sdist fetched from PyPI with pip (never installed), unpacked under
`eval/repos/`, indexed under `index/`, and scored with `codeslm eval repo`'s `run_repo`. Prints one
table (exact match / edit similarity per system and project) and writes it with a bar chart
(`proof.png`) and `proof.json` to a new run directory under `eval/results/`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from codeslm.eval.runs import ENGINE_VARIANTS

REPO = Path(__file__).resolve().parent.parent
PROJECTS = ["boltons==26.2.0", "toolz==1.2.0", "marshmallow==4.4.0"]
ENGINES = tuple(ENGINE_VARIANTS)


def fetch(spec: str, where: Path) -> Path:
    """The unpacked sdist of `spec` (name==version) under `where`, downloaded once."""
    name, _, version = spec.partition("==")
    if not version:
        raise SystemExit(f"give the project as name==version (got {spec!r}): the version is recorded")
    target = where / f"{name}-{version}"
    if target.is_dir():
        return target
    downloads = where / "sdists"
    downloads.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
                    ":all:", spec, "-d", str(downloads)], check=True)
    stem = f"{name.replace('-', '_')}-{version}".lower()
    archives = [p for p in downloads.glob("*.tar.gz")
                if p.name.lower().replace("-", "_").startswith(stem.replace("-", "_"))]
    if not archives:
        raise SystemExit(f"pip downloaded no sdist for {spec} into {downloads}")
    with tarfile.open(archives[0]) as tar:
        top = tar.getnames()[0].split("/")[0]
        tar.extractall(where, filter="data")
    (where / top).rename(target)
    return target


def corpus_packages(*splits: str) -> set[str]:
    """Top-level packages of the default corpus's `splits` (`train`, `val`; empty if absent)."""
    manifest = REPO / "runs" / "corpus-default" / "manifest.json"
    if not manifest.is_file():
        return set()
    split = json.loads(manifest.read_text())["split"]
    return set().union(*(split.get(f"{name}_packages", []) for name in splits))


def score_table(rows: dict[str, dict[str, dict]], columns: list[str], first: str) -> str:
    """A Markdown table of EM / ES per row and column, with the mean over the columns."""
    header = [first] + [f"{c} EM / ES" for c in columns] + ["mean EM", "mean ES"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, by_column in rows.items():
        em = [by_column[c]["exact_match"] for c in columns]
        es = [by_column[c]["edit_similarity"] for c in columns]
        cells = [f"{a:.3f} / {b:.3f}" for a, b in zip(em, es, strict=True)]
        lines.append("| " + " | ".join([name, *cells, f"{sum(em) / len(em):.3f}",
                                        f"{sum(es) / len(es):.3f}"]) + " |")
    return "\n".join(lines)


def plot(rows: dict[str, dict[str, dict]], projects: list[str], path: Path,
         title: str = "Repository line completion on projects in no training split") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    systems = list(rows)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / len(projects)
    x = np.arange(len(systems))
    for ax, metric, title in ((axes[0], "exact_match", "exact match"),
                              (axes[1], "edit_similarity", "edit similarity")):
        for i, project in enumerate(projects):
            ax.bar(x + i * width, [rows[s][project][metric] for s in systems], width, label=project)
        ax.set_xticks(x + width * (len(projects) - 1) / 2, systems, rotation=35, ha="right")
        ax.set_title(title)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model directory [default: the shipped one]")
    parser.add_argument("--project", action="append", help="name==version from PyPI (repeatable)")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-k", type=int, default=4)
    parser.add_argument("--engine", action="append", choices=ENGINES,
                        help="engine variants [default: all]")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=REPO / "eval" / "results")
    args = parser.parse_args()

    import torch

    from codeslm.eval.report import new_run_dir
    from codeslm.eval.runs import run_repo

    torch.set_num_threads(1)  # single-token decoding is fastest on one thread here
    projects = args.project or PROJECTS
    engines = tuple(args.engine or ENGINES)
    seen = corpus_packages("train", "val")
    rows: dict[str, dict[str, dict]] = {}
    runs = {}
    started = time.time()
    for spec in projects:
        root = fetch(spec, REPO / "eval" / "repos")
        packages = [p for d in (root, root / "src") if d.is_dir() for p in d.iterdir()
                    if (p / "__init__.py").is_file() and p.name not in ("tests", "test", "docs")]
        overlap = sorted(p.name for p in packages if p.name in seen)
        if overlap:
            raise SystemExit(f"{spec} is not unseen: the training corpus holds {', '.join(overlap)}")
        print(f"== {spec}: {root}", flush=True)
        run_dir, results = run_repo(root, args.model, index_dir=REPO / "index" / root.name,
                                    n_tasks=args.tasks, seed=args.seed, k=args.k,
                                    out=args.out, device=args.device, engines=engines)
        runs[spec] = {"run_dir": str(run_dir), "tasks": results["task_set"]["tasks"],
                      "files": results["task_set"]["files"], "seconds": results["seconds"]}
        for system in results["systems"]:
            rows.setdefault(system, {})[spec] = {
                metric: results["scores"][f"{system}: {metric}"]
                for metric in ("exact_match", "edit_similarity")
            }

    out = new_run_dir("proof-repo", args.out)
    table = score_table(rows, projects, "system")
    print(table)
    (out / "proof.md").write_text(table + "\n")
    plot(rows, projects, out / "proof.png")
    (out / "proof.json").write_text(json.dumps({
        "model": args.model or "default checkpoint", "projects": runs, "engines": list(engines),
        "tasks": args.tasks, "seed": args.seed, "k": args.k, "scores": rows,
        "seconds": round(time.time() - started, 1)}, indent=2))
    print(f"table, plot and scores in {out}")


if __name__ == "__main__":
    main()
