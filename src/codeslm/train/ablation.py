"""Data ablation studies: a base recipe, arms that change only the data, and seeds.

`load_study` reads a TOML or JSON study and refuses arms that change anything but the data (the
training files, the objective's row mix), so every arm trains on the same number of tokens
with the same tokenizer and is scored on the same sets. `run_study` trains and evaluates each
arm x seed in `runs/<study>/<arm>/seed<k>/`, in parallel processes, resuming a killed study and
never redoing a finished run; `codeslm.eval.study_report` turns the results into the report.
But: it builds arm corpora from built corpora (see `codeslm.train.arm_corpus`), never from sources:
an arm with other build filters or dedup names a corpus built with the base tokenizer.
"""

from __future__ import annotations

import json
import os
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, fields
from pathlib import Path

from codeslm.errors import TrainingError
from codeslm.eval.run_metrics import EvalSettings
from codeslm.train.arm_corpus import Selection, arm_corpus, check_alternative_corpus
from codeslm.train.settings import TrainSettings, load_recipe

# Training settings an arm may change: the mix of row types the objective is built from.
ROW_MIX = frozenset({
    "fim_rate", "spm_rate", "fim_line_rate", "retrieval_rate", "copy_rate", "copy_random_share",
    "copy_loss_share",
    "reading_rate", "reading_pool", "reading_per_file", "reading_mix", "reading_loss_share",
    "reading_end_loss", "retrieval_pool", "retrieval_k",
    "retrieval_context_tokens", "retrieval_query",
})
BUDGET = frozenset({"max_steps", "batch_size", "grad_accum", "seq_len"})
SELECTION = frozenset(f.name for f in fields(Selection))
MARKER = "ablation.json"
RESULT = "result.json"


@dataclass(frozen=True)
class Arm:
    name: str
    selection: Selection
    row_mix: dict  # training settings this arm changes (keys in ROW_MIX)
    corpus: str | None = None  # another build of the corpus (other filters, dedup), base tokenizer

    def describe(self) -> dict:
        return {"corpus": self.corpus, "selection": self.selection.describe(),
                "row_mix": self.row_mix}


@dataclass(frozen=True)
class Study:
    name: str
    base: TrainSettings  # the recipe every arm shares (corpus: the base corpus)
    arms: tuple[Arm, ...]
    seeds: tuple[int, ...]
    base_arm: str
    eval: EvalSettings
    runs_root: Path = Path("runs")

    @property
    def dir(self) -> Path:
        return self.runs_root / self.name

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    def settings(self, arm: Arm, seed: int, corpus: Path) -> TrainSettings:
        # One thread unless the recipe says otherwise, however many processes run at once: the
        # thread count is part of a run's identity, so a run resumes with any --workers.
        return self.base.with_overrides(**arm.row_mix, seed=seed, corpus=str(corpus),
                                        run_dir=str(self.run_dir(arm.name, seed)),
                                        threads=self.base.threads or 1)

    def run_dir(self, arm: str, seed: int) -> Path:
        return self.dir / arm / f"seed{seed}"

    def describe(self) -> dict:
        return {"study": self.name, "base": self.base.identity(), "base_corpus": self.base.corpus,
                "base_arm": self.base_arm, "seeds": list(self.seeds),
                "arms": {a.name: a.describe() for a in self.arms}, "eval": _eval_dict(self.eval)}


def _read(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise TrainingError(f"cannot read study {path}: {e}") from e
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise TrainingError(f"study {path} is not valid {path.suffix[1:].upper()}: {e}") from e
    if not isinstance(data, dict):
        raise TrainingError(f"study {path} must hold a table of settings")
    return data


def load_study(path: str | Path, runs_root: str | Path = "runs") -> Study:
    """A checked study from a TOML or JSON file (relative paths inside it are from the cwd).

    Tables: `[study]` (name, seeds, base_arm), `[base]` (a `recipe` and training settings),
    `[eval]` (`EvalSettings` fields) and one `[arms.NAME]` per arm (selection and row-mix keys).
    """
    path = Path(path)
    data = _read(path)
    unknown = set(data) - {"study", "base", "eval", "arms"}
    if unknown:
        raise TrainingError(f"study {path}: unknown table(s) {', '.join(sorted(unknown))}")
    head = dict(data.get("study", {}))
    name = str(head.pop("name", path.stem))
    seeds = head.pop("seeds", [0, 1, 2])
    if not isinstance(seeds, list) or not seeds:
        raise TrainingError(f"study {path}: the seed list is empty; give at least one seed")
    if len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
        raise TrainingError(f"study {path}: seeds must be distinct integers, got {seeds}")
    arms_data = data.get("arms", {})
    if not arms_data:
        raise TrainingError(f"study {path} has no arms; add at least one [arms.NAME] table")
    base_arm = str(head.pop("base_arm", next(iter(arms_data))))
    if head:
        raise TrainingError(f"study {path}: unknown [study] key(s) {', '.join(sorted(head))}")
    if base_arm not in arms_data:
        raise TrainingError(f"study {path}: base_arm {base_arm!r} is not one of its arms")
    base_data = dict(data.get("base", {}))
    recipe = base_data.pop("recipe", None)
    base = load_recipe(recipe) if recipe else TrainSettings()
    base = base.with_overrides(**base_data)
    try:
        eval_settings = EvalSettings(**{k: tuple(v) if isinstance(v, list) else v
                                        for k, v in data.get("eval", {}).items()})
    except TypeError as e:
        raise TrainingError(f"study {path}: bad [eval] table: {e}") from e
    missing = [r for r in eval_settings.repos if not Path(r).is_dir()]
    if missing:
        raise TrainingError(f"study {path}: evaluation repositories not found: {', '.join(missing)}")
    arms = tuple(_arm(path, arm_name, spec, base) for arm_name, spec in arms_data.items())
    return Study(name, base, arms, tuple(seeds), base_arm, eval_settings, Path(runs_root))


def _arm(path: Path, name: str, spec: dict, base: TrainSettings) -> Arm:
    if not isinstance(spec, dict):
        raise TrainingError(f"study {path}: arm {name!r} must be a table")
    budget = sorted(set(spec) & BUDGET)
    if budget:
        raise TrainingError(
            f"study {path}: arm {name!r} changes the training budget ({', '.join(budget)}); "
            "every arm must train on the same number of tokens"
        )
    other = sorted(set(spec) - ROW_MIX - SELECTION - {"corpus"})
    if other:
        raise TrainingError(
            f"study {path}: arm {name!r} changes {', '.join(other)}, which is not data; arms may "
            f"change only the corpus, the selection ({', '.join(sorted(SELECTION))}) and the row "
            f"mix ({', '.join(sorted(ROW_MIX))})"
        )
    selection = Selection(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in spec.items() if k in SELECTION})
    row_mix = {k: v for k, v in spec.items() if k in ROW_MIX}
    base.with_overrides(**row_mix).check()
    corpus = spec.get("corpus")
    if corpus is not None and not isinstance(corpus, str):
        raise TrainingError(f"study {path}: arm {name!r}: corpus must be a directory name")
    return Arm(name, selection, row_mix, corpus)


def check_budgets(study: Study) -> None:
    """Refuse a study whose arms would not all train on the same number of tokens."""
    budgets = {a.name: study.base.with_overrides(**a.row_mix).tokens_per_step
                       * study.base.max_steps for a in study.arms}
    if len(set(budgets.values())) > 1:
        raise TrainingError(f"study {study.name}: arm budgets differ (tokens: {budgets})")


def claim_study_dir(study: Study) -> None:
    """Mark `runs/<study>/` as this study's, refusing one that holds another study or other runs."""
    marker = study.dir / MARKER
    if marker.is_file():
        owner = json.loads(marker.read_text())
        if owner.get("study") != study.name:
            raise TrainingError(f"{study.dir} holds runs of study {owner.get('study')!r}, "
                                f"not {study.name!r}")
        if (study.base.identity_changes(owner.get("base") or {})
                or owner.get("base_corpus") != study.base.corpus):
            raise TrainingError(f"{study.dir} was started with another base recipe; "
                                "or corpus; give the study a new name to change them")
    elif study.dir.exists() and any(study.dir.iterdir()):
        raise TrainingError(f"{study.dir} is not empty and holds no study; pick another name")
    study.dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"study": study.name, "base": study.base.identity(),
                                  "base_corpus": study.base.corpus}, indent=1))


@dataclass(frozen=True)
class RunJob:
    arm: str
    seed: int
    settings: TrainSettings
    eval: EvalSettings
    eval_corpus: str  # the base corpus: its validation split is every arm's


def run_one(job: RunJob) -> dict:
    """Train (or resume) and evaluate one run; a run with a result is returned as it is."""
    from codeslm.eval.run_metrics import evaluate_model
    from codeslm.train.checkpoint import has_checkpoint
    from codeslm.train.pretrain import train
    from codeslm.train.shards import Corpus

    run_dir = Path(job.settings.run_dir)
    if (run_dir / RESULT).is_file():
        return finished_result(job)
    started = time.time()
    result = train(job.settings, resume=has_checkpoint(run_dir), progress=False)
    metrics = evaluate_model(result.export_dir, Corpus.open(job.eval_corpus), job.eval,
                             run_dir / "eval", job.settings.seq_len)
    record = {"arm": job.arm, "seed": job.seed, "identity": job.settings.identity(),
              "eval": _eval_dict(job.eval), "metrics": metrics, "tokens": result.tokens,
              "params": result.params, "train_s": result.wall_s,
              "seconds": time.time() - started,
              "loss_curve": [{"step": h["step"], "loss": h["loss"]}
                             for h in result.history if "loss" in h]}
    partial = run_dir / (RESULT + ".partial")
    partial.write_text(json.dumps(record, indent=1))
    partial.replace(run_dir / RESULT)
    return record


def _eval_dict(settings: EvalSettings) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.__dict__.items()}


def finished_result(job: RunJob) -> dict:
    """The result of a finished run, refused if it was trained or scored otherwise than `job`."""
    path = Path(job.settings.run_dir) / RESULT
    record = json.loads(path.read_text())
    if (job.settings.identity_changes(record.get("identity") or {})
            or record.get("eval") != _eval_dict(job.eval)):
        raise TrainingError(f"{path} was trained or evaluated with other settings than its arm "
                            "now asks for; give the study a new name to change an arm")
    return record


def plan(study: Study, progress=None) -> list[RunJob]:
    """Every run of `study`, arm by arm, with the arms' corpora built first."""
    claim_study_dir(study)
    check_budgets(study)
    jobs = []
    for arm in study.arms:
        if progress:
            progress(f"corpus of arm {arm.name}")
        if arm.corpus:
            check_alternative_corpus(study.base.corpus, arm.corpus)
        corpus = arm_corpus(arm.corpus or study.base.corpus, arm.selection,
                            study.dir / "corpora" / arm.name)
        for seed in study.seeds:
            jobs.append(RunJob(arm.name, seed, study.settings(arm, seed, corpus), study.eval,
                               study.base.corpus))
    return jobs


def run_study(study: Study, workers: int | None = None, max_runs: int | None = None,
              progress=None) -> list[dict]:
    """Run every missing run of `study` (`max_runs` of them at most) and return all results.

    `workers` processes train at once (default: one per core, one thread each); with one worker
    runs train in this process. `progress(message)` hears of each finished run, with an ETA.
    """
    jobs = plan(study, progress)
    todo = [j for j in jobs if not (Path(j.settings.run_dir) / RESULT).is_file()]
    if max_runs is not None:
        todo = todo[:max_runs]
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    total, started = len(jobs), time.time()
    done = sum((Path(j.settings.run_dir) / RESULT).is_file() for j in jobs)

    def report(record: dict, finished_now: int) -> None:
        if progress:
            left = total - done - finished_now  # the whole study's, at this call's pace
            eta = (time.time() - started) / finished_now * left
            progress(f"run {record['arm']}/seed{record['seed']} done: "
                     f"{done + finished_now}/{total} runs, ETA {eta / 60:.1f} min")

    if workers == 1:
        for i, job in enumerate(todo, 1):
            report(run_one(job), i)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(run_one, job) for job in todo]
            for i, future in enumerate(as_completed(futures), 1):
                report(future.result(), i)
    return [finished_result(j) for j in jobs if (Path(j.settings.run_dir) / RESULT).is_file()]
