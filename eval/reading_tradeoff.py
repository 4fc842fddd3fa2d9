"""What reading costs: each model's exact match with a chunk (the reading probe) against its bits
per byte without one (`codeslm eval bpb`), one point per model, the first the reference.

    python eval/reading_tradeoff.py \
        shipped=eval/results/reading-A,eval/results/bpb-B \
        stage14=eval/results/reading-C,eval/results/bpb-D

Each argument is `LABEL=READING_RUN,BPB_RUN`: a run directory of `eval/reading_probe.py` (its
`reading.json`) and one of `codeslm eval bpb` (its `results.json`). Both should come from the same
repositories for every point (validation-split packages, for choosing settings). Prints one table
(model-alone exact match per condition, bits per byte and its change from the first point) and
writes it with a plot (`tradeoff.png`) and `tradeoff.json` to a new run directory under
`eval/results/`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONDITIONS = ("verbatim", "edited", "distractors", "none")


def read_point(text: str) -> tuple[str, dict]:
    """`(label, point)` from `LABEL=READING_RUN,BPB_RUN`."""
    label, sep, runs = text.partition("=")
    reading, comma, bpb = runs.partition(",")
    if not sep or not comma or not label:
        raise SystemExit(f"give each point as LABEL=READING_RUN,BPB_RUN (got {text!r})")
    try:
        probe = json.loads((Path(reading) / "reading.json").read_text(encoding="utf-8"))
        bits = json.loads((Path(bpb) / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SystemExit(f"{label}: cannot read its runs: {e}") from e
    summaries = probe["summaries"]
    em = {c: sum(s[c]["model_em"] for s in summaries.values()) / len(summaries) for c in CONDITIONS}
    return label, {"model": probe["model"], "repos": sorted(summaries), "tasks": probe["tasks"],
                   "model_em": em, "bits_per_byte": bits["scores"]["model"],
                   "bpb_paths": bits["task_set"]["paths"], "runs": [reading, bpb]}


def table(points: dict[str, dict]) -> str:
    first = next(iter(points.values()))["bits_per_byte"]
    lines = ["| model | " + " | ".join(f"{c} EM" for c in CONDITIONS)
             + " | bits/byte without a chunk | change |", "|" + "---|" * (len(CONDITIONS) + 3)]
    for label, p in points.items():
        cells = [f"{p['model_em'][c]:.3f}" for c in CONDITIONS]
        change = p["bits_per_byte"] - first
        lines.append(f"| {label} | " + " | ".join(cells)
                     + f" | {p['bits_per_byte']:.4f} | {change:+.3f} |")
    return "\n".join(lines)


def plot(points: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(points.values()))["bits_per_byte"]
    fig, ax = plt.subplots(figsize=(7, 4.8))
    names = {"verbatim": "verbatim chunk", "edited": "edited chunk",
             "distractors": "verbatim among distractors"}
    xs = [p["bits_per_byte"] - first for p in points.values()]
    for condition, marker in zip(CONDITIONS[:3], "os^", strict=True):
        ys = [p["model_em"][condition] for p in points.values()]
        ax.scatter(xs, ys, marker=marker, label=names[condition])
        if condition == "verbatim":
            for label, x, y in zip(points, xs, ys, strict=True):
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.axvline(0.02, color="grey", linestyle="--", linewidth=1)
    ax.text(0.02, 0.98, " +0.02 allowed", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
    ax.axhline(0.70, color="grey", linestyle=":", linewidth=1)
    ax.text(1.0, 0.70, "verbatim target ", transform=ax.get_yaxis_transform(), ha="right",
            va="bottom", fontsize=8)
    span = max(max(xs) - min(xs), 0.02)
    ax.set_xlim(min(xs) - 0.05 * span, max(xs) + 0.35 * span)  # room for the labels
    ax.set_xlabel("bits per byte without a chunk, change from " + next(iter(points)))
    ax.set_ylabel("model-alone exact match with the chunk")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Reading a retrieved chunk against loss without one")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("points", nargs="+", metavar="LABEL=READING_RUN,BPB_RUN")
    parser.add_argument("--out", type=Path, default=REPO / "eval" / "results")
    args = parser.parse_args()

    from codeslm.eval.report import new_run_dir

    points = dict(read_point(text) for text in args.points)
    if len(points) < len(args.points):
        raise SystemExit("give every point its own label")
    reference = next(iter(points.values()))
    for label, p in points.items():
        if p["repos"] != reference["repos"] or p["bpb_paths"] != reference["bpb_paths"]:
            print(f"warning: {label} was measured on other repositories than the first point",
                  file=sys.stderr)
    text = table(points)
    out = new_run_dir("reading-tradeoff", args.out)
    (out / "tradeoff.md").write_text(text + "\n", encoding="utf-8")
    (out / "tradeoff.json").write_text(json.dumps(points, indent=2), encoding="utf-8")
    plot(points, out / "tradeoff.png")
    print(text)
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
