"""Ablation studies: refusals of bad studies, arm corpora, a micro study end to end with its
report, resume after a kill, and the bootstrap against a hand computation."""

from __future__ import annotations

import json
import math
from pathlib import PurePosixPath

import pytest
from click.testing import CliRunner
from model_fixtures import synthetic_documents, write_corpus

from codeslm.cli import cli
from codeslm.errors import CorpusError, TrainingError
from codeslm.eval.stats import bootstrap_ci, paired_difference, sign_flip_p
from codeslm.eval.study_report import write_report
from codeslm.train.ablation import load_study, run_study
from codeslm.train.arm_corpus import Selection, arm_corpus, is_test_file, strip_python_docstrings
from codeslm.train.pretrain import train
from codeslm.train.shards import Corpus

BASE = """
[base]
size = "nano"
seq_len = 64
batch_size = 4
max_steps = 4
warmup_steps = 1
lr = 1e-2
retrieval_rate = 0.5
retrieval_pool = 100
retrieval_context_tokens = 32
eval_every = 1000
eval_rows = 4
log_every = 1
precision = "fp32"
threads = 1
corpus = "{corpus}"

[eval]
val_files = 6
middle_problems = 2
"""


def with_test_files(docs: list[dict]) -> list[dict]:
    """Add a tests/ file to every fourth training package, from another source."""
    extra = []
    for d in docs:
        if d["path"].endswith("defs.py") and d["split"] == "train" and d["package"][3:].isdigit() \
                and int(d["package"][3:]) % 4 == 1:
            extra.append({**d, "source": "tests-source", "path": d["package"] + "/tests/test_defs.py",
                          "text": '"""Tests."""\n\n\ndef test_one():\n    """One."""\n    assert 1\n'})
    return docs + extra


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), with_test_files(synthetic_documents(24, 4)))


def write_study(tmp_path, corpus_dir, arms: str, head: str = 'name = "micro"\nseeds = [1, 2]',
                name="study.toml"):
    path = tmp_path / name
    path.write_text(f"[study]\n{head}\n" + BASE.format(corpus=corpus_dir) + arms)
    return path


ARMS = """
[arms.all]

[arms.no-retrieval]
retrieval_rate = 0.0
"""


@pytest.mark.parametrize("head, arms, message", [
    ('name = "x"', "", "has no arms"),
    ('name = "x"\nseeds = []', ARMS, "seed list is empty"),
    ('name = "x"', ARMS + "\n[arms.fast]\nlr = 0.1\n", "arm 'fast' changes lr, which is not data"),
    ('name = "x"', ARMS + "\n[arms.long]\nmax_steps = 8\n", "changes the training budget"),
    ('name = "x"\nbase_arm = "nope"', ARMS, "base_arm 'nope' is not one of its arms"),
])
def test_bad_studies_are_refused_with_a_clear_message(tmp_path, corpus_dir, head, arms, message):
    with pytest.raises(TrainingError, match=message):
        load_study(write_study(tmp_path, corpus_dir, arms, head))


def test_a_subset_that_selects_no_files_is_refused(tmp_path, corpus_dir):
    with pytest.raises(CorpusError, match="keeps no training files"):
        arm_corpus(corpus_dir, Selection(sources=("no-such-source",)), tmp_path / "arm")


def test_arm_corpora_keep_the_validation_split_and_tokenizer(tmp_path, corpus_dir):
    base = Corpus.open(corpus_dir)
    out = arm_corpus(corpus_dir, Selection(drop_tests=True, strip_docstrings=True), tmp_path / "a")
    arm = Corpus.open(out)
    assert arm.tokenizer_fingerprint() == base.tokenizer_fingerprint()
    assert arm.splits["val"].tokens.tolist() == base.splits["val"].tokens.tolist()
    paths = [d.path for d in arm.documents().values()]
    assert not [p for p in paths if "/tests/" in p]
    assert len(arm.splits["train"].docs) == len(base.splits["train"].docs) - 6
    only = Corpus.open(arm_corpus(corpus_dir, Selection(sources=("tests-source",)), tmp_path / "b"))
    assert {r["source"] for r in only.records("train")} == {"tests-source"}
    # Reused when it matches, refused when another selection is asked for in the same place.
    assert arm_corpus(corpus_dir, Selection(drop_tests=True, strip_docstrings=True), tmp_path / "a") == out
    with pytest.raises(CorpusError, match="another selection"):
        arm_corpus(corpus_dir, Selection(drop_examples=True), tmp_path / "a")


def test_file_kinds_and_docstring_stripping():
    assert is_test_file(PurePosixPath("pkg/tests/helpers.py"))
    assert is_test_file(PurePosixPath("pkg/test_io.py"))
    assert not is_test_file(PurePosixPath("pkg/contest.py"))
    code = '"""Module."""\nimport os\n\n\ndef f():\n    """Only a docstring."""\n\n\nclass C:\n    """Doc\n    more."""\n    x = 1\n'
    stripped = strip_python_docstrings(code)
    assert '"""' not in stripped
    assert stripped == "import os\n\n\ndef f():\n    ...\n\n\nclass C:\n    x = 1\n"
    compile(stripped, "x", "exec")


def test_bootstrap_ci_matches_a_hand_computation():
    # The 27 equally likely resamples of [1, 2, 3] have means 1, 4/3 (3x), 5/3 (6x), 2 (7x),
    # 7/3 (6x), 8/3 (3x), 3; linear percentiles at 2.5 and 97.5 fall at positions 0.65 and 25.35.
    low, high = bootstrap_ci([1.0, 2.0, 3.0])
    assert low == pytest.approx(1 + 0.65 / 3)
    assert high == pytest.approx(8 / 3 + 0.35 / 3)
    assert bootstrap_ci([5.0, 5.0, 5.0]) == (5.0, 5.0)
    # Eight values: drawn resamples, close to the normal approximation of the mean's spread.
    values = [0.1, 0.4, 0.2, 0.9, 0.5, 0.3, 0.7, 0.6]
    low, high = bootstrap_ci(values)
    half = 1.96 * math.sqrt(sum((v - 0.4625) ** 2 for v in values) / 8 / 8)
    assert low == pytest.approx(0.4625 - half, abs=0.03) and high == pytest.approx(0.4625 + half, abs=0.03)


def test_paired_difference_pairs_by_seed():
    d = paired_difference({1: 2.0, 2: 3.0, 3: 5.0}, {1: 1.0, 2: 1.0, 3: 1.0, 4: 9.0})
    assert d.n == 3 and d.mean == pytest.approx((1 + 2 + 4) / 3)
    assert d.significant  # every difference is positive
    assert sign_flip_p([1.0, 2.0, 4.0]) == pytest.approx(2 / 8)
    mixed = paired_difference({1: 2.0, 2: 0.0}, {1: 1.0, 2: 1.0})
    assert not mixed.significant and mixed.mean == 0.0


def test_a_micro_study_runs_end_to_end_and_reports_its_numbers(tmp_path, corpus_dir):
    study = load_study(write_study(tmp_path, corpus_dir, ARMS), tmp_path / "runs")
    messages = []
    results = run_study(study, workers=1, progress=messages.append)
    assert len(results) == 4 and any("4/4 runs" in m and "ETA" in m for m in messages)
    assert (tmp_path / "runs/micro/no-retrieval/seed2/result.json").is_file()
    paths = write_report(study, results, tmp_path / "report")
    data = json.loads(paths["json"].read_text())
    assert data["complete"] and data["metrics"] == ["val_bpb", "middle_logprob"]
    table = paths["table"].read_text()
    for arm in ("all", "no-retrieval"):
        for metric in ("val_bpb", "middle_logprob"):
            values = [r["metrics"][metric] for r in results if r["arm"] == arm]
            assert all(math.isfinite(v) for v in values)
            entry = data["arms"][arm][metric]
            assert entry["mean"] == pytest.approx(sum(values) / 2)
            assert f"{entry['mean']:.3f} [{entry['ci'][0]:.3f}, {entry['ci'][1]:.3f}]" in table
    diff = data["arms"]["no-retrieval"]["val_bpb"]["diff"]
    by_seed = {(r["arm"], r["seed"]): r["metrics"]["val_bpb"] for r in results}
    assert diff["mean"] == pytest.approx(sum(by_seed["no-retrieval", s] - by_seed["all", s]
                                             for s in (1, 2)) / 2)
    assert f"{diff['mean']:+.3f}" in table
    curves = {r["arm"]: r["loss_curve"] for r in results if r["seed"] == 1}
    assert curves["all"] != curves["no-retrieval"]  # the arms did train on other rows
    assert "What matters" in table and data["summary"] in table and "`all`" in data["summary"]
    for plot in ("metrics_plot", "loss_plot"):
        assert paths[plot].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_killed_study_resumes_and_never_redoes_finished_runs(tmp_path, corpus_dir):
    study = load_study(write_study(tmp_path, corpus_dir, ARMS), tmp_path / "runs")
    messages = []
    first = run_study(study, workers=1, max_runs=1, progress=messages.append)  # one run, then stop
    assert "1/4 runs, ETA" in messages[-1]
    done = tmp_path / "runs/micro/all/seed1/result.json"
    assert len(first) == 1 and done.is_file()
    finished_at = done.stat().st_mtime_ns
    # The next run was killed mid-training: a checkpoint at step 2 of 4, no result.
    from codeslm.train.ablation import plan

    interrupted = next(j for j in plan(study) if j.arm == "all" and j.seed == 2)
    train(interrupted.settings, until_step=2, progress=False)
    results = run_study(study, workers=2)  # the three runs left, two processes at a time
    assert len(results) == 4 and done.stat().st_mtime_ns == finished_at
    log = [json.loads(line) for line in
           (tmp_path / "runs/micro/all/seed2/log.jsonl").read_text().splitlines()]
    steps = [e["step"] for e in log if "loss" in e]
    assert steps == [1, 2, 3, 4]  # resumed at step 3, not started again
    # An arm changed after its runs finished: its old results are not passed off as the new arm's.
    changed = write_study(tmp_path, corpus_dir, ARMS.replace("0.0", "0.1"), name="changed.toml")
    with pytest.raises(TrainingError, match="other settings than its arm"):
        run_study(load_study(changed, tmp_path / "runs"), workers=1)


def test_a_run_directory_of_another_study_is_refused(tmp_path, corpus_dir):
    study = load_study(write_study(tmp_path, corpus_dir, ARMS), tmp_path / "runs")
    run_study(study, workers=1, max_runs=0)
    other = write_study(tmp_path, corpus_dir, ARMS, 'name = "micro"\nseeds = [1]', "other.toml")
    text = other.read_text().replace("lr = 1e-2", "lr = 5e-3")
    other.write_text(text)
    with pytest.raises(TrainingError, match="another base recipe"):
        run_study(load_study(other, tmp_path / "runs"), workers=1)
    (tmp_path / "runs/mine").mkdir(parents=True)
    (tmp_path / "runs/mine/seed0").mkdir()
    renamed = write_study(tmp_path, corpus_dir, ARMS, 'name = "mine"', "mine.toml")
    with pytest.raises(TrainingError, match="holds no study"):
        run_study(load_study(renamed, tmp_path / "runs"), workers=1)


def test_the_cli_reports_bad_studies_and_finished_runs(tmp_path, corpus_dir):
    bad = write_study(tmp_path, corpus_dir, "", 'name = "x"', "bad.toml")
    result = CliRunner().invoke(cli, ["ablate", str(bad)], standalone_mode=False)
    assert isinstance(result.exception, TrainingError) and "has no arms" in str(result.exception)
    good = write_study(tmp_path, corpus_dir, ARMS, 'name = "cli"\nseeds = [1]', "good.toml")
    result = CliRunner().invoke(cli, ["ablate", str(good), "--runs-root", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert "2/2 runs finished" in result.output and "| no-retrieval |" in result.output
    assert (tmp_path / "runs/cli/report/study.md").is_file()


def test_engine_and_infill_metrics_join_the_results_when_asked_for(tmp_path, corpus_dir):
    repo = tmp_path / "repo" / "pkg"
    repo.mkdir(parents=True)
    for i in range(3):
        (repo / f"m{i}.py").write_text(f"def scale_{i}(value):\n    result = value * {i}\n"
                                       f"    return result\n")
    evals = f'\n[eval]\nval_files = 2\nmiddle_problems = 1\ninfill_problems = 1\nrepos = ["{repo.parent}"]\nrepo_tasks = 2\n'
    path = write_study(tmp_path, corpus_dir, "[arms.all]\n", 'name = "engine"\nseeds = [1]')
    path.write_text(path.read_text().replace("[eval]\nval_files = 6\nmiddle_problems = 2\n", "") + evals)
    [record] = run_study(load_study(path, tmp_path / "runs"), workers=1)
    metrics = record["metrics"]
    assert set(metrics) == {"val_bpb", "middle_logprob", "infill_pass@1", "repo_em", "repo_es"}
    assert 0 <= metrics["infill_pass@1"] <= 1 and 0 <= metrics["repo_es"] <= 1
    assert (tmp_path / "runs/engine/all/seed1/eval/index").is_dir()
    missing = write_study(tmp_path, corpus_dir, "[arms.all]\n", 'name = "m"', "missing.toml")
    missing.write_text(missing.read_text().replace("val_files = 6", f'val_files = 6\nrepos = ["{tmp_path}/nope"]'))
    with pytest.raises(TrainingError, match="evaluation repositories not found"):
        load_study(missing)


def test_the_shipped_study_is_a_valid_six_arm_three_seed_data_study(tmp_path):
    from pathlib import Path

    from codeslm.train.ablation import check_budgets

    text = (Path(__file__).parent.parent / "eval/ablations/data-v1.toml").read_text()
    # Its proof projects are fetched by eval/proof_repo.py; the rest needs nothing fetched.
    lines = [line for line in text.splitlines() if not line.startswith("repos = ")]
    (tmp_path / "data-v1.toml").write_text("\n".join(lines))
    study = load_study(tmp_path / "data-v1.toml")
    check_budgets(study)
    assert len(study.arms) >= 6 and study.seeds == (1, 2, 3) and study.base_arm == "all"
    assert {a.name for a in study.arms} >= {"all", "stdlib-only", "site-packages-only", "no-tests",
                                           "no-retrieval", "no-copy"}
    assert study.arm("no-copy").row_mix == {"copy_rate": 0.0} and study.base.copy_rate > 0


def test_an_arm_may_train_on_another_build_with_the_base_tokenizer_only(tmp_path, corpus_dir):
    from model_fixtures import train_small_tokenizer

    from codeslm.model.tokenizer import load_tokenizer
    from codeslm.train.ablation import plan

    tokenizer = load_tokenizer(corpus_dir / "tokenizer")
    docs = synthetic_documents(24, 4)
    # Another build: its duplicate files kept (as with dedup off), the same held-out packages.
    copies = [{**d, "path": d["path"].replace(".py", "_copy.py")} for d in docs if d["split"] == "train"]
    other = write_corpus(tmp_path / "no-dedup", docs + copies, tokenizer=tokenizer)
    arms = ARMS + f'\n[arms.no-dedup]\ncorpus = "{other}"\n'
    study = load_study(write_study(tmp_path, corpus_dir, arms), tmp_path / "runs")
    job = next(j for j in plan(study) if j.arm == "no-dedup")
    assert len(Corpus.open(job.settings.corpus).splits["train"].docs) == 2 * len(copies)
    assert job.eval_corpus == str(corpus_dir)  # evaluated on the base corpus's sets
    for name, bad_docs, bad_tokenizer, message in [
        ("retokenized", docs, None, "another tokenizer"),
        ("leaky", [{**d, "split": "train"} for d in docs]
         + [{**docs[0], "package": "other", "path": "other/defs.py", "split": "val"}],
         tokenizer, "holds out for validation"),
    ]:
        path = write_corpus(tmp_path / name, bad_docs, tokenizer=bad_tokenizer
                            or train_small_tokenizer([d["text"] for d in docs], 300))
        study = load_study(write_study(tmp_path, corpus_dir, ARMS + f'\n[arms.x]\ncorpus = "{path}"\n',
                                       f'name = "{name}"', f"{name}.toml"), tmp_path / "runs")
        with pytest.raises(CorpusError, match=message):
            plan(study)


def test_the_summary_says_which_differences_are_beyond_seed_noise():
    from types import SimpleNamespace

    from codeslm.eval.study_report import aggregate, summary_paragraph

    study = SimpleNamespace(arms=[SimpleNamespace(name=n) for n in ("all", "worse", "same")],
                            base_arm="all", seeds=(1, 2, 3))
    bpb = {"all": [1.0, 1.1, 1.2], "worse": [1.2, 1.3, 1.5], "same": [1.1, 1.0, 1.25]}
    results = [{"arm": arm, "seed": seed, "metrics": {"val_bpb": v}, "params": 600_000,
                "tokens": 1000} for arm, values in bpb.items() for seed, v in zip((1, 2, 3), values)]
    agg = aggregate(study, results)
    assert agg["arms"]["worse"]["val_bpb"]["diff"]["mean"] == pytest.approx(0.7 / 3)
    text = summary_paragraph(study, agg, results)
    assert "val bits/byte is worse for `worse` (+0.233); within seed noise for `same`." in text
    assert "rank `all` > `same` > `worse`" in text


def test_validation_texts_are_a_fixed_sample_within_the_byte_budget(corpus_dir):
    from codeslm.eval.run_metrics import validation_texts

    corpus = Corpus.open(corpus_dir)
    val = {r["text"]: r for r in corpus.records("val")}
    texts = validation_texts(corpus, 100, max_bytes=300)
    assert texts and sum(len(t.encode()) for t in texts) <= 300
    assert texts == validation_texts(corpus, 100, max_bytes=300)
    assert all(t in val for t in texts) and len(validation_texts(corpus, 2)) == 2
    order = [val[t]["sha256"] for t in validation_texts(corpus, 100)]
    assert order == sorted(order) and len(order) == len(val)
