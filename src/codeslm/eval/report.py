"""Run directories: results.json, per-sample JSONL, a summary.md table and PNG plots; compare runs.

Every run writes `eval/results/<run-id>/` naming its model, index, task set, seed, commit and
settings next to its scores, so a number never travels without what produced it. Files are
written to a temporary name and renamed, so a killed run never leaves a half-written result.
But: it does not run benchmarks (see `codeslm.eval.runs`).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path

from codeslm.errors import EvalError

RESULTS_ROOT = Path("eval/results")


def new_run_dir(benchmark: str, out: str | Path | None = None) -> Path:
    """A fresh `<out or eval/results>/<benchmark>-<timestamp>` directory."""
    root = Path(out) if out is not None else RESULTS_ROOT
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        run_dir = root / (f"{benchmark}-{stamp}" + (f"-{n}" if n else ""))
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            continue
    raise EvalError(f"cannot create a run directory under {root}")


def git_commit() -> str:
    """The commit of the codeslm source in use, `+dirty` when it has changes, else `unknown`."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here,
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty.strip() else "")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_records(run_dir: Path, name: str, records: list[dict]) -> str:
    """Per-sample records as `<name>.jsonl`; returns the file name."""
    _write_atomic(run_dir / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return f"{name}.jsonl"


def write_run(run_dir: Path, results: dict) -> None:
    """results.json, summary.md and plots for a finished run."""
    results = dict(results, run_id=run_dir.name, commit=results.get("commit") or git_commit())
    plots = plot_run(run_dir, results)
    results["plots"] = [p.name for p in plots]
    _write_atomic(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
    _write_atomic(run_dir / "summary.md", summary_markdown(results))


def load_run(path: str | Path) -> dict:
    """A run's results.json, from the run directory or the file itself."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise EvalError(f"{path} is not an evaluation run (no results.json)")
    try:
        results = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise EvalError(f"{file} is not valid JSON: {e}") from e
    if not isinstance(results, dict) or not isinstance(results.get("scores"), dict):
        raise EvalError(f"{file} has no scores")
    return results


def _fmt(value) -> str:
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"


def summary_markdown(results: dict) -> str:
    """One table of scores, then what produced them."""
    lines = [f"# {results.get('benchmark', 'evaluation')}: {results.get('run_id', '')}", "",
             "| score | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in results["scores"].items()]
    lines += ["", "| | |", "|---|---|"]
    model = results.get("model") or {}
    about = {
        "model": model.get("path", "none") if isinstance(model, dict) else "none",
        "index": (results.get("index") or {}).get("path", "none"),
        "task set": (results.get("task_set") or {}).get("name", ""),
        "seed": results.get("seed"), "commit": results.get("commit"),
        "sandbox": results.get("sandbox", {}).get("summary", "not used"),
        "started": results.get("started"), "seconds": results.get("seconds"),
    }
    lines += [f"| {k} | {v} |" for k, v in about.items() if v is not None]
    settings = results.get("settings") or {}
    if settings:
        lines += ["", "Settings: " + ", ".join(f"`{k}={v}`" for k, v in settings.items())]
    return "\n".join(lines) + "\n"


def _bar_chart(path: Path, labels: list[str], series: dict[str, list[float]], title: str,
               ylabel: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(labels) * max(1, len(series))), 4))
    width = 0.8 / max(1, len(series))
    for n, (name, values) in enumerate(series.items()):
        xs = [i + (n - (len(series) - 1) / 2) * width for i in range(len(labels))]
        bars = ax.bar(xs, [0 if math.isnan(v) else v for v in values], width, label=name)
        ax.bar_label(bars, labels=["" if math.isnan(v) else f"{v:.3f}" for v in values],
                     fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 3 else 0, ha="right"
                  if len(labels) > 3 else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_run(run_dir: Path, results: dict) -> list[Path]:
    """The run's scores as bars; per-problem pass rates as a histogram when there are any."""
    scores = {k: v for k, v in results["scores"].items() if isinstance(v, int | float)}
    unit = "bits per byte" if results.get("benchmark") == "bpb" else "score"
    plots = [_bar_chart(run_dir / "scores.png", list(scores), {"": list(scores.values())},
                        f"{results.get('benchmark', '')} ({results['run_id']})", unit)]
    rates = (results.get("details") or {}).get("per_problem_pass_rate")
    if rates:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.hist(list(rates.values()), bins=10, range=(0, 1))
        ax.set_xlabel("fraction of samples passing")
        ax.set_ylabel("problems")
        ax.set_title("per-problem pass rate")
        fig.tight_layout()
        fig.savefig(run_dir / "pass_rates.png", dpi=120)
        plt.close(fig)
        plots.append(run_dir / "pass_rates.png")
    return plots


def compare_runs(paths: list[str | Path], out: str | Path | None = None) -> tuple[str, Path]:
    """A markdown table with one column per run and a grouped bar chart of shared scores."""
    if not paths:
        raise EvalError("name at least one run directory to compare")
    runs = [load_run(p) for p in paths]
    names = [r.get("run_id") or Path(p).name for r, p in zip(runs, paths, strict=True)]
    keys = list(dict.fromkeys(k for r in runs for k in r["scores"]))
    header = "| score | " + " | ".join(names) + " |"
    lines = [header, "|---" * (len(names) + 1) + "|"]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(_fmt(r["scores"].get(key, "")) for r in runs)
                     + " |")
    for label, field in (("model", "path"), ("index", "path")):
        lines.append(f"| {label} | " + " | ".join(
            str((r.get(label) or {}).get(field, "none")) for r in runs) + " |")
    for label in ("seed", "commit"):
        lines.append(f"| {label} | " + " | ".join(str(r.get(label, "")) for r in runs) + " |")
    table = "\n".join(lines) + "\n"
    out_dir = Path(out) if out is not None else RESULTS_ROOT
    out_dir.mkdir(parents=True, exist_ok=True)
    numeric = [k for k in keys if all(isinstance(r["scores"].get(k, 0.0), int | float)
                                      for r in runs)]
    plot = _bar_chart(out_dir / f"compare-{time.strftime('%Y%m%d-%H%M%S')}.png", numeric,
                      {n: [float(r["scores"].get(k, math.nan)) for k in numeric]
                       for n, r in zip(names, runs, strict=True)},
                      "comparison", "score")
    return table, plot
