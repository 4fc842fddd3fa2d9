"""Serving benchmark: `codeslm serve`'s HTTP front on this machine's Python standard library.

Runs the real app (uvicorn on 127.0.0.1, in this process) over the default model with one
model thread and measures:
1. `/infill` end to end at N cursors next to the same engine called in process (server overhead);
2. a typing simulation: real lines typed character by character at 30-80 ms intervals, a request
   per keystroke cancelling the previous one as llama.vim does (it kills its curl), and one
   more after a 150 ms pause at each line's end: the wait for the suggestion the user sees,
   the share of requests cancelled and the CPU seconds spent on cancelled work;
3. save -> the first completion that retrieves the saved change (the file watcher re-indexes);
4. 4 concurrent clients for 60 s: errors and p95 per client;
5. the process's peak RSS.
Prints a table and writes `eval/results/bench-serve-<time>/results.json`.

Usage: python eval/bench_serve.py [--positions 200] [--typed-lines 20] [--concurrent-s 60]
       [--repo DIR --index-dir DIR]   (an indexed copy of the stdlib; default: build one, BM25)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_complete import percentiles, sample_cursors  # noqa: E402
from bench_index import stdlib_copy  # noqa: E402


def infill_body(prefix: str, suffix: str, path: str) -> dict:
    """What llama.vim sends (the cursor line's start goes in `prompt`), plus our `filename`."""
    head, _, middle = prefix.rpartition("\n")
    return {"id_slot": 0, "input_prefix": head + ("\n" if head or prefix.startswith("\n") else ""),
            "prompt": middle, "input_suffix": suffix, "input_extra": [], "n_predict": 128,
            "samplers": ["top_k", "top_p", "infill"], "top_k": 40, "top_p": 0.9, "cache_prompt": True,
            "t_max_prompt_ms": 500, "t_max_predict_ms": 250, "stream": False, "filename": path}


def end_to_end(http, engine_of, cursors) -> dict:
    """Per cursor: HTTP wall time, and the engine's own time for the same cursor in process."""
    from codeslm.complete import CompletionRequest, split_at_cursor

    engine = engine_of()
    inproc, http_ms, overhead = [], [], []
    for file, line, col in cursors:
        prefix, suffix = split_at_cursor(file.read_text(encoding="utf-8"), line, col)
        path = engine.relative_path(file)
        t = time.perf_counter()
        engine.complete(CompletionRequest(prefix, suffix, path))
        inproc.append((time.perf_counter() - t) * 1000)
    for file, line, col in cursors:
        prefix, suffix = split_at_cursor(file.read_text(encoding="utf-8"), line, col)
        t = time.perf_counter()
        reply = http.post("/infill", json=infill_body(prefix, suffix, str(file)))
        wall = (time.perf_counter() - t) * 1000
        reply.raise_for_status()
        http_ms.append(wall)
        overhead.append(wall - reply.json()["codeslm"]["total_ms"])
    return {"in_process_ms": percentiles(inproc), "http_ms": percentiles(http_ms),
            "overhead_ms": percentiles(overhead)}


def typed_lines(repo: Path, n: int, seed: int) -> list[tuple[Path, int, str]]:
    """`n` (file, line number, line) code lines of at least 20 characters to retype."""
    rng = random.Random(seed)
    files = sorted(repo.rglob("*.py"))
    out = []
    while len(out) < n:
        f = rng.choice(files)
        lines = f.read_text(encoding="utf-8").split("\n")
        good = [i for i, ln in enumerate(lines) if 20 <= len(ln.strip()) <= 80 and not ln.strip().startswith("#")]
        if good:
            i = rng.choice(good)
            out.append((f, i, lines[i]))
    return out


async def typing(url: str, lines, seed: int) -> dict:
    """Type each line after its indentation; a request per keystroke, the old one cancelled.

    A suggestion is shown when its answer arrives before the next keystroke; the user waited
    from that keystroke to the answer.
    """
    import httpx

    rng = random.Random(seed)
    waits, sent, cancelled = [], 0, 0
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:

        async def ask(body: dict) -> float:
            t = time.perf_counter()
            (await http.post("/infill", json=body)).raise_for_status()
            return time.perf_counter() - t

        for file, i, line in lines:
            text = file.read_text(encoding="utf-8").split("\n")
            before, after = "\n".join(text[:i]) + "\n", "\n" + "\n".join(text[i + 1:])
            indent = len(line) - len(line.lstrip())
            pending: asyncio.Task | None = None
            for k in range(indent + 1, len(line) + 1):
                if pending is not None:
                    if pending.done():
                        waits.append(pending.result())
                    else:
                        pending.cancel()  # closes the connection: the server sees the hang-up
                        cancelled += 1
                pending = asyncio.create_task(ask(infill_body(before + line[:k], after, str(file))))
                sent += 1
                await asyncio.sleep(0.15 if k == len(line) else rng.uniform(0.03, 0.08))
            waits.append(await pending)
    return {"requests": sent, "cancelled_by_client": cancelled, "shown": len(waits),
            "wait_ms": percentiles([w * 1000 for w in waits])}


def save_to_completion(http, repo: Path, ws, rounds: int = 5) -> dict:
    """Write a new function to a file; time until a completion retrieves it, and until the
    workspace switched to the index that holds it (the rest is the polling request)."""
    times, switched = [], []
    for r in range(rounds):
        name = f"zebra_quokka_{r}_{random.randrange(10**6)}"
        target = repo / "json" / f"bench_saved_{r}.py"
        body = infill_body(f"from json.bench_saved_{r} import {name}\n\n\ndef use(x):\n    return {name}(",
                           ")\n", str(repo / "json" / "bench_user.py"))
        t, wall = time.perf_counter(), time.time()
        target.write_text(f"def {name}(items, key=None):\n    return sorted(items, key=key)\n")
        while time.perf_counter() - t < 30:
            retrieved = http.post("/infill", json=body).json()["codeslm"]["retrieved"]
            if any(h["path"] == target.relative_to(repo).as_posix() for h in retrieved):
                times.append((time.perf_counter() - t) * 1000)
                switched.append((ws.status.updated - wall) * 1000)
                break
        before = ws.status.updated
        target.unlink()
        while (ws.status.updated == before or ws.status.updating) and time.perf_counter() - t < 60:
            time.sleep(0.05)  # the removal is indexed before the next round
    return {"rounds": rounds, "seen": len(times), "ms": percentiles(times) if times else None,
            "index_switched_ms": percentiles(switched) if switched else None}


async def concurrent(url: str, cursors, seconds: float, clients: int = 4) -> dict:
    import httpx

    from codeslm.complete import split_at_cursor

    bodies = []
    for file, line, col in cursors:
        prefix, suffix = split_at_cursor(file.read_text(encoding="utf-8"), line, col)
        bodies.append(infill_body(prefix, suffix, str(file)))

    async def one(slot: int):
        rng = random.Random(slot)
        times, errors = [], 0
        end = time.perf_counter() + seconds
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            while time.perf_counter() < end:
                body = {**rng.choice(bodies), "id_slot": slot}
                t = time.perf_counter()
                try:
                    reply = await http.post("/infill", json=body)
                    ok = reply.status_code == 200 and "content" in reply.json()
                except httpx.HTTPError:
                    ok = False
                errors += not ok
                times.append((time.perf_counter() - t) * 1000)
        return {"requests": len(times), "errors": errors, "ms": percentiles(times)}

    per_client = await asyncio.gather(*(one(s) for s in range(clients)))
    return {"seconds": seconds, "clients": per_client,
            "errors": sum(c["errors"] for c in per_client)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, default=None, help="An indexed stdlib copy to serve.")
    parser.add_argument("--index-dir", type=Path, default=None, help="Its index (dense for the save test).")
    parser.add_argument("--positions", type=int, default=200)
    parser.add_argument("--typed-lines", type=int, default=20)
    parser.add_argument("--concurrent-s", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import httpx

    from codeslm.serve.http import ServerThread, create_app
    from codeslm.serve.service import CompletionService, ServiceOptions

    tmp = None
    repo, index_dir = args.repo, args.index_dir
    if repo is None:
        tmp = tempfile.TemporaryDirectory(prefix="codeslm-bench-serve-")
        repo = stdlib_copy(Path(tmp.name) / "stdlib")
        index_dir = Path(tmp.name) / "ix"
    dense = index_dir is not None and (index_dir / "manifest.json").is_file() and \
        json.loads((index_dir / "manifest.json").read_text())["dense"]
    service = CompletionService(ServiceOptions(index_dir=index_dir, dense=dense, threads=1))
    service.add_workspace(repo)
    server = ServerThread(create_app(service))
    print(f"serving {repo} at {server.url}; loading ...", flush=True)
    service.load()
    ws = service.workspaces.for_path(repo)
    t = time.perf_counter()
    if not ws.wait_ready(1800):
        raise SystemExit(f"the index never became ready: {ws.status}")
    print(f"index ready in {time.perf_counter() - t:.1f}s ({ws.status.chunks} chunks, dense {ws.status.dense})")
    results = {"repo": str(repo), "index": str(ws.index_dir), "dense": ws.status.dense,
               "positions": args.positions, "seed": args.seed}

    with httpx.Client(base_url=server.url, timeout=60) as http:
        http.post("/infill", json=infill_body("import os\n", "\n", str(repo / "os.py")))  # warm-up
        cursors = sample_cursors(ws.engine.index, args.positions, args.seed)
        results["end_to_end"] = end_to_end(http, lambda: ws.engine, cursors)
        print("end to end done", flush=True)
        results["save_to_completion"] = save_to_completion(http, repo, ws)
        print("save -> completion done", flush=True)
    stats = service.scheduler.stats
    cancelled_cpu, cancelled = stats.cancelled_cpu_s, stats.cancelled
    results["typing"] = asyncio.run(typing(server.url, typed_lines(repo, args.typed_lines, args.seed), args.seed))
    results["typing"]["cancelled_on_server"] = stats.cancelled - cancelled
    results["typing"]["cancelled_cpu_s"] = stats.cancelled_cpu_s - cancelled_cpu
    print("typing done", flush=True)
    results["concurrent"] = asyncio.run(concurrent(server.url, cursors[:50], args.concurrent_s))
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    server.stop()
    service.close()

    e2e, ty, conc = results["end_to_end"], results["typing"], results["concurrent"]
    print(f"\nmodel {service.model_name}  {results['index']}  {args.positions} cursors  1 model thread")
    print(f"{'ms':<38}{'p50':>9}{'p95':>9}{'p99':>9}")
    for name, row in (("in-process engine", e2e["in_process_ms"]), ("HTTP /infill end to end", e2e["http_ms"]),
                      ("server overhead (HTTP - engine)", e2e["overhead_ms"]),
                      ("typing: wait for the shown suggestion", ty["wait_ms"])):
        print(f"{name:<38}{row['p50']:>9.1f}{row['p95']:>9.1f}{row['p99']:>9.1f}")
    sc = results["save_to_completion"]
    if sc["ms"]:
        print(f"{'save -> completion sees it':<38}{sc['ms']['p50']:>9.1f}{sc['ms']['p95']:>9.1f}"
              f"{'':>9}  ({sc['seen']}/{sc['rounds']} seen, dense {results['dense']})")
        sw = sc["index_switched_ms"]
        print(f"{'  of which save -> new index in use':<38}{sw['p50']:>9.1f}{sw['p95']:>9.1f}")
    for i, c in enumerate(conc["clients"]):
        name = f"concurrent client {i} ({c['requests']} requests)"
        print(f"{name:<38}{c['ms']['p50']:>9.1f}{c['ms']['p95']:>9.1f}{c['ms']['p99']:>9.1f}")
    print(f"typing: {ty['requests']} requests, {ty['cancelled_by_client']} cancelled by the client "
          f"({ty['cancelled_by_client'] / max(ty['requests'], 1):.0%}), {ty['cancelled_on_server']} stopped "
          f"on the server, {ty['cancelled_cpu_s']:.2f} CPU s on cancelled work; {ty['shown']} suggestions shown")
    print(f"concurrent: {conc['errors']} errors in {sum(c['requests'] for c in conc['clients'])} requests "
          f"over {conc['seconds']:.0f}s; peak RSS {results['peak_rss_mb']:.0f} MB")
    out = ROOT / "eval" / "results" / f"bench-serve-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'results.json'}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
