"""Indexing and search benchmark on this machine's Python standard library.

Measures full index time (BM25 only, and with dense embeddings), chunks, peak memory, the
unchanged re-run, a one-file change, search latency per mode, and the gain of our embedding
batching over a plain per-file `encode` baseline on the same chunks. Prints a table and writes
`eval/results/bench-index-<time>/` (results.json, latency.png).

Usage: python eval/bench_index.py [--baseline-files N] [--queries 100]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


def stdlib_copy(dest: Path) -> Path:
    """The stdlib without site-packages and test folders, copied so the benchmark can edit it."""
    src = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idle_test", "__pycache__"}
    shutil.copytree(src, dest, ignore=lambda d, names: [n for n in names if n in skip],
                    symlinks=True)
    return dest


CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from codeslm.index import build_index
s = build_index(sys.argv[1], sys.argv[2], dense=sys.argv[3] == "1", progress=False)
print(json.dumps({"seconds_total": time.perf_counter() - t0, "seconds_index": s.seconds,
                  "files": s.files, "chunks": s.chunks, "embedded": s.embedded,
                  "up_to_date": s.up_to_date, "added": s.added, "changed": s.changed,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_index(repo: Path, ix: Path, dense: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(repo), str(ix), "1" if dense else "0"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def edit_one_file(repo: Path, n: int) -> None:
    target = repo / "json" / "encoder.py"
    with target.open("a") as f:
        f.write(f"\n\ndef benchmark_added_{n}(value):\n    return encode_basestring(str(value))\n")


def baseline_vs_batched(ix: Path, n_files: int) -> dict:
    """Embedding time of the same chunks: one `encode` call per file vs ours."""
    from codeslm.index import Index
    from codeslm.index.dense import Embedder
    from codeslm.index.store import embedding_text

    index = Index.open(ix)
    rows = index.store.db.execute("SELECT DISTINCT path FROM chunks ORDER BY path").fetchall()
    chosen = sorted(random.Random(0).sample([r[0] for r in rows], min(n_files, len(rows))))
    per_file = []
    for path in chosen:
        ids = index.store.ids_of_files([path])
        chunks = index.store.chunks(ids)
        per_file.append([embedding_text(chunks[i]) for i in ids])
    embedder = Embedder()
    embedder.encode(["warm up"])
    t = time.perf_counter()
    for texts in per_file:
        embedder.model.encode(texts, normalize_embeddings=True, show_progress_bar=False)
    plain = time.perf_counter() - t
    all_texts = [t for texts in per_file for t in texts]
    t = time.perf_counter()
    order = sorted(range(len(all_texts)), key=lambda i: len(all_texts[i]))
    for i in range(0, len(order), 512):
        embedder.encode([all_texts[j] for j in order[i : i + 512]])
    batched = time.perf_counter() - t
    return {"files": len(chosen), "chunks": len(all_texts), "plain_per_file_s": plain,
            "batched_s": batched, "speedup": plain / batched}


def search_latency(ix: Path, n_queries: int) -> dict:
    from codeslm.index import Index

    index = Index.open(ix)
    rng = random.Random(1)
    ids = rng.sample(list(index.ids), n_queries)
    chunks = index.store.chunks(ids)
    queries = []
    for cid in ids:
        c = chunks[cid]
        words = (c.symbol or c.path).replace("_", " ").replace(".", " ")
        queries.append(f"where is {words} implemented")
    index.search("warm up the model", k=10, mode="hybrid")
    result = {}
    for mode in ("bm25", "dense", "hybrid"):
        times = []
        for q in queries:
            t = time.perf_counter()
            index.search(q, k=10, mode=mode)
            times.append((time.perf_counter() - t) * 1000)
        result[mode] = {"p50_ms": float(np.percentile(times, 50)),
                        "p95_ms": float(np.percentile(times, 95))}
    code_times = []
    for cid in ids:
        c = chunks[cid]
        t = time.perf_counter()
        index.search_code(c.text[-300:], k=10, exclude=(c.path, c.start_line))
        code_times.append((time.perf_counter() - t) * 1000)
    result["search_code_bm25"] = {"p50_ms": float(np.percentile(code_times, 50)),
                                  "p95_ms": float(np.percentile(code_times, 95))}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-files", type=int, default=10_000,
                        help="files in the per-file encode baseline (default: all)")
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="codeslm-bench-"))
    repo = stdlib_copy(work / "stdlib")
    n_files = sum(1 for _ in repo.rglob("*") if _.is_file())
    size_mb = sum(p.stat().st_size for p in repo.rglob("*") if p.is_file()) / 1e6
    print(f"stdlib copy: {n_files} files, {size_mb:.1f} MB, cores={os.cpu_count()}", flush=True)

    r = {}
    r["bm25_full"] = run_index(repo, work / "ix-bm25", dense=False)
    print("bm25 full:", r["bm25_full"], flush=True)
    r["bm25_unchanged"] = run_index(repo, work / "ix-bm25", dense=False)
    edit_one_file(repo, 0)
    r["bm25_one_file"] = run_index(repo, work / "ix-bm25", dense=False)
    r["dense_full"] = run_index(repo, work / "ix-dense", dense=True)
    print("dense full:", r["dense_full"], flush=True)
    r["dense_unchanged"] = run_index(repo, work / "ix-dense", dense=True)
    edit_one_file(repo, 1)
    r["dense_one_file"] = run_index(repo, work / "ix-dense", dense=True)
    r["search"] = search_latency(work / "ix-dense", args.queries)
    r["embedding_baseline"] = baseline_vs_batched(work / "ix-dense", args.baseline_files)
    r["peak_rss_mb_this_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r["machine"] = {"cores": os.cpu_count(), "files": n_files, "mb": size_mb}

    rows = [
        ("BM25-only full index", f"{r['bm25_full']['seconds_index']:.1f} s "
         f"({r['bm25_full']['files'] / r['bm25_full']['seconds_index']:.0f} files/s)", "<= 30 s"),
        ("dense full index", f"{r['dense_full']['seconds_index']:.1f} s "
         f"({r['dense_full']['files'] / r['dense_full']['seconds_index']:.1f} files/s)", "<= 600 s"),
        ("files / chunks", f"{r['dense_full']['files']} / {r['dense_full']['chunks']}", ""),
        ("peak memory (dense build)", f"{r['dense_full']['peak_rss_mb']:.0f} MB", "<= 2048 MB"),
        ("unchanged re-run (library / process)", f"{r['dense_unchanged']['seconds_index']:.2f} s / "
         f"{r['dense_unchanged']['seconds_total']:.2f} s", "<= 3 s"),
        ("one-file change, BM25 (library / process)", f"{r['bm25_one_file']['seconds_index']:.2f} s / "
         f"{r['bm25_one_file']['seconds_total']:.2f} s", "<= 1 s"),
        ("one-file change, dense (library / process)", f"{r['dense_one_file']['seconds_index']:.2f} s / "
         f"{r['dense_one_file']['seconds_total']:.2f} s", "<= 1 s"),
    ]
    for mode, v in r["search"].items():
        rows.append((f"search {mode} p50 / p95", f"{v['p50_ms']:.1f} / {v['p95_ms']:.1f} ms",
                     "p95 <= 50 ms" if mode == "hybrid" else ""))
    b = r["embedding_baseline"]
    rows.append((f"embedding {b['chunks']} chunks of {b['files']} files: per-file encode vs ours",
                 f"{b['plain_per_file_s']:.1f} s vs {b['batched_s']:.1f} s ({b['speedup']:.2f}x)", ""))
    width = max(len(a) for a, _, _ in rows)
    print(f"\n{'measure':<{width}}  {'result':<32}  target")
    for a, v, t in rows:
        print(f"{a:<{width}}  {v:<32}  {t}")

    out = ROOT / "eval" / "results" / f"bench-index-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(r, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(r["search"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(modes))
    ax.bar(x - 0.2, [r["search"][m]["p50_ms"] for m in modes], 0.4, label="p50")
    ax.bar(x + 0.2, [r["search"][m]["p95_ms"] for m in modes], 0.4, label="p95")
    ax.axhline(50, color="grey", linestyle="--", linewidth=1, label="hybrid p95 target")
    ax.set_xticks(x, modes)
    ax.set_ylabel("ms per query")
    ax.set_title(f"Search latency, stdlib index ({r['dense_full']['chunks']} chunks)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=120)
    print(f"\nwrote {out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
