"""The report of an ablation study: `study.json`, a Markdown table, plots and a summary.

One row per arm: the mean over seeds of each metric with its 95% bootstrap CI, and the paired
(by seed) difference from the base arm, marked `*` when its 95% bootstrap CI excludes zero.
The summary paragraph is generated from those numbers only.
But: it reads finished runs' results; training them is `codeslm.train.ablation`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from codeslm.eval.run_metrics import HIGHER_IS_BETTER
from codeslm.eval.stats import paired_difference, summarize

LABELS = {"val_bpb": "val bits/byte", "middle_logprob": "middle log-prob (nats)",
          "infill_pass@1": "infill pass@1", "repo_em": "repo EM", "repo_es": "repo ES"}


def aggregate(study, results: list[dict]) -> dict:
    """Per arm and metric: seed values, mean, CI and the paired difference from the base arm."""
    by_arm: dict[str, dict[str, dict[int, float]]] = {a.name: {} for a in study.arms}
    for r in results:
        for metric, value in r["metrics"].items():
            by_arm[r["arm"]].setdefault(metric, {})[r["seed"]] = value
    metrics = [m for m in HIGHER_IS_BETTER if any(m in v for v in by_arm.values())]
    base = by_arm[study.base_arm]
    arms = {}
    for arm, values in by_arm.items():
        entry = {}
        for m in metrics:
            seeds = values.get(m, {})
            s = summarize(list(seeds.values()))
            entry[m] = {"values": {str(k): v for k, v in sorted(seeds.items())}, "mean": s.mean,
                        "ci": list(s.ci), "n": s.n}
            if arm != study.base_arm:
                d = paired_difference(seeds, base.get(m, {}))
                entry[m]["diff"] = {"mean": d.mean, "ci": list(d.ci), "p": d.p, "n": d.n,
                                    "significant": d.significant}
        arms[arm] = entry
    return {"metrics": metrics, "arms": arms}


def _num(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def markdown_table(study, agg: dict) -> str:
    """One row per arm: mean [95% CI] per metric, then each difference from the base arm."""
    metrics = agg["metrics"]
    head = ["arm"] + [LABELS[m] for m in metrics] + [f"Δ {LABELS[m]}" for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, entry in agg["arms"].items():
        cells = [f"**{arm}** (base)" if arm == study.base_arm else arm]
        for m in metrics:
            e = entry[m]
            cells.append(f"{_num(e['mean'])} [{_num(e['ci'][0])}, {_num(e['ci'][1])}]")
        for m in metrics:
            d = entry[m].get("diff")
            if d is None:
                cells.append("—")
            else:
                mark = " *" if d["significant"] else ""
                cells.append(f"{d['mean']:+.3f} [{_num(d['ci'][0])}, {_num(d['ci'][1])}]{mark}"
                             if math.isfinite(d["mean"]) else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    n = len(study.seeds)
    lines.append("")
    lines.append(f"Mean over {n} seed(s) [95% percentile bootstrap CI]; Δ is the arm minus the "
                 f"base arm paired by seed, `*` where its 95% bootstrap CI excludes zero. "
                 + ", ".join(f"{LABELS[m]}: {'higher' if HIGHER_IS_BETTER[m] else 'lower'} is "
                             "better" for m in metrics) + ".")
    return "\n".join(lines) + "\n"


def summary_paragraph(study, agg: dict, results: list[dict]) -> str:
    """What matters, in words generated from the table's numbers."""
    params = {r["params"] for r in results}
    tokens = {r["tokens"] for r in results}
    scale = (f"At {max(params) / 1e6:.1f}M parameters and {max(tokens):,} training tokens per run"
             if params else "")
    sentences = [f"{scale}, {len(study.seeds)} seed(s) per arm, against the base arm "
                 f"`{study.base_arm}`:"]
    for m in agg["metrics"]:
        better, worse, flat, single = [], [], [], []
        for arm, entry in agg["arms"].items():
            d = entry[m].get("diff")
            if d is None or not math.isfinite(d["mean"]):
                continue
            if d["n"] < 2:
                single.append(f"`{arm}` ({d['mean']:+.3f})")
            elif not d["significant"]:
                flat.append(arm)
                continue
            good = (d["mean"] > 0) == HIGHER_IS_BETTER[m]
            (better if good else worse).append(f"`{arm}` ({d['mean']:+.3f})")
        parts = []
        if worse:
            parts.append("worse for " + ", ".join(worse))
        if better:
            parts.append("better for " + ", ".join(better))
        if flat:
            parts.append("within seed noise for " + ", ".join(f"`{a}`" for a in flat))
        if single:
            parts.append("off by " + ", ".join(single) + " on one seed, too few to tell from noise")
        if parts:
            sentences.append(f"{LABELS[m]} is " + "; ".join(parts) + ".")
    primary = agg["metrics"][0] if agg["metrics"] else None
    if primary:
        sign = 1 if HIGHER_IS_BETTER[primary] else -1
        ranked = sorted(agg["arms"], key=lambda a: -sign * agg["arms"][a][primary]["mean"]
                        if math.isfinite(agg["arms"][a][primary]["mean"]) else math.inf)
        sentences.append(f"By {LABELS[primary]} the arms rank " + " > ".join(
            f"`{a}`" for a in ranked) + " (best first).")
    sentences.append("A difference marked significant means all paired seeds moved one way; "
                     "these are within-scale findings and need not hold for larger models.")
    return " ".join(sentences)


def plot_metrics(study, agg: dict, path: Path) -> Path:
    """One panel per metric: each arm's mean with its 95% CI and the seeds' values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics, arms = agg["metrics"], list(agg["arms"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.6), dpi=120,
                             squeeze=False)
    for ax, m in zip(axes[0], metrics, strict=True):
        for x, arm in enumerate(arms):
            e = agg["arms"][arm][m]
            if not math.isfinite(e["mean"]):
                continue
            err = [[e["mean"] - e["ci"][0]], [e["ci"][1] - e["mean"]]]
            ax.errorbar([x], [e["mean"]], yerr=err, fmt="o", capsize=4,
                        color="tab:red" if arm == study.base_arm else "tab:blue")
            ax.scatter([x] * len(e["values"]), list(e["values"].values()), s=10, color="gray",
                       zorder=3)
        ax.set_xticks(range(len(arms)), arms, rotation=45, ha="right")
        ax.set_title(LABELS[m] + (" ↑" if HIGHER_IS_BETTER[m] else " ↓"))
        ax.grid(alpha=0.3)
    fig.suptitle(f"{study.name}: mean and 95% bootstrap CI over seeds")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_loss_curves(study, results: list[dict], path: Path) -> Path:
    """Training loss by step per arm, the mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for arm in study.arms:
        curves = [r["loss_curve"] for r in results if r["arm"] == arm.name and r["loss_curve"]]
        if not curves:
            continue
        steps = sorted(set.intersection(*[{p["step"] for p in c} for c in curves]))
        mean = [np.mean([next(p["loss"] for p in c if p["step"] == s) for c in curves])
                for s in steps]
        ax.plot(steps, mean, label=arm.name, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats/token), mean over seeds")
    ax.set_title(f"{study.name}: loss curves")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(study, results: list[dict], out: Path) -> dict:
    """Write `study.json`, `study.md`, `metrics.png` and `loss.png` to `out`; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    agg = aggregate(study, results)
    table = markdown_table(study, agg)
    summary = summary_paragraph(study, agg, results)
    expected = len(study.arms) * len(study.seeds)
    data = {**study.describe(), "complete": len(results) == expected, "runs": results,
            **agg, "summary": summary}
    (out / "study.json").write_text(json.dumps(data, indent=1))
    (out / "study.md").write_text(f"# Study {study.name}\n\n{table}\n## What matters\n\n"
                                  f"{summary}\n\n![metrics](metrics.png)\n\n![loss](loss.png)\n")
    return {"json": out / "study.json", "table": out / "study.md",
            "metrics_plot": plot_metrics(study, agg, out / "metrics.png"),
            "loss_plot": plot_loss_curves(study, results, out / "loss.png")}
