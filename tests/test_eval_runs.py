"""End-to-end runs with a real model: a nano Llama trained in the test to recite the canonical
solutions of HumanEval's first three problems, so the whole path (prompt, generation, stop
rules, sandbox, pass@k, files) can show a pass that only a correct generation earns.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from codeslm.cli import cli
from codeslm.eval.humaneval import load_problems, read_samples
from codeslm.eval.runs import run_humaneval, run_infill


def train_reciting_model(path: Path, problems: list[dict], steps: int = 400) -> Path:
    from transformers import LlamaForCausalLM

    from codeslm.model.config import llama_config, model_shape
    from codeslm.model.tokenizer import save_tokenizer, train_tokenizer

    torch.manual_seed(0)
    texts = [p["prompt"] + p["canonical_solution"] for p in problems]
    tokenizer = train_tokenizer(texts * 4, vocab_size=500)
    model = LlamaForCausalLM(llama_config(model_shape("nano", max_seq_len=512),
                                          len(tokenizer), tokenizer.eos_token_id))

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    # Prompt and solution tokenized apart, as generation will see the prompt.
    rows = [ids(p["prompt"]) + ids(p["canonical_solution"]) + [tokenizer.eos_token_id]
            for p in problems]
    width = max(map(len, rows))
    x = torch.full((len(rows), width), tokenizer.eos_token_id)
    labels = torch.full((len(rows), width), -100)
    for i, row in enumerate(rows):
        x[i, :len(row)] = labels[i, :len(row)] = torch.tensor(row)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=x, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.005:
            break
    model.eval()
    model.save_pretrained(path)
    save_tokenizer(tokenizer, path)
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # A model this small decodes many times faster on one thread, above all on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return train_reciting_model(tmp_path_factory.mktemp("model"), load_problems(3))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    for n in range(3):
        (root / f"m{n}.py").write_text(
            f"def load_{n}(path):\n    handle = open(path)\n    return handle.read()\n\n\n"
            f"def save_{n}(path, text):\n    handle = open(path, 'w')\n    handle.write(text)\n")
    return root


def test_humaneval_cli_generates_passes_and_writes_human_eval_samples(model_dir, tmp_path):
    result = CliRunner().invoke(cli, ["eval", "humaneval", "--model", str(model_dir),
                                      "--limit", "3", "--workers", "2", "--device", "cpu",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "pass@1  1.0000" in result.output
    run_dir = next(tmp_path.iterdir())
    samples = read_samples(run_dir / "samples.jsonl")
    problems = load_problems(3)
    assert [s["completion"] for s in samples] == [p["canonical_solution"] for p in problems]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["model"]["path"] == str(model_dir)
    assert results["sandbox"]["summary"] and results["details"]["statuses"] == {"passed": 3}

    # The written samples file scores the same through --samples.
    rescored = CliRunner().invoke(cli, ["eval", "humaneval", "--samples",
                                        str(run_dir / "samples.jsonl"), "--limit", "3",
                                        "--out", str(tmp_path / "again")])
    assert rescored.exit_code == 0, rescored.output
    assert "pass@1  1.0000" in rescored.output


def test_sampling_several_per_problem_gives_pass_at_k(model_dir, tmp_path):
    run_dir, results = run_humaneval(model_dir, n=2, temperature=0.8, top_p=0.95, ks=(1, 2),
                                     limit=2, seed=7, out=tmp_path, device="cpu", workers=2)
    assert set(results["scores"]) == {"pass@1", "pass@2"}
    assert results["scores"]["pass@1"] <= results["scores"]["pass@2"]
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert [(r["task_id"], r["completion_id"]) for r in records] == [
        ("HumanEval/0", 0), ("HumanEval/0", 1), ("HumanEval/1", 0), ("HumanEval/1", 1)]
    again, _ = run_humaneval(model_dir, n=2, temperature=0.8, top_p=0.95, ks=(1, 2), limit=2,
                             seed=7, out=tmp_path, device="cpu", workers=2)
    assert (again / "samples.jsonl").read_text() == (run_dir / "samples.jsonl").read_text()


def test_infill_run_scores_every_masked_line(model_dir, tmp_path):
    run_dir, results = run_infill("single-line", model_dir, limit=1, workers=2, out=tmp_path,
                                  device="cpu")
    lines = [ln for ln in load_problems(1)[0]["canonical_solution"].splitlines() if ln.strip()]
    records = (run_dir / "results.jsonl").read_text().splitlines()
    assert len(records) == len(lines) == results["task_set"]["tasks"]
    assert 0.0 <= results["scores"]["pass@1"] <= 1.0


def test_repo_cli_with_model_retrieval_and_engine(model_dir, repo, tmp_path):
    result = CliRunner().invoke(cli, ["eval", "repo", str(repo), "--model", str(model_dir),
                                      "--index-dir", str(tmp_path / "index"), "--tasks", "4",
                                      "--engine", "bm25", "--engine", "knn", "--device", "cpu",
                                      "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    run_dir = next((tmp_path / "r").iterdir())
    results = json.loads((run_dir / "results.json").read_text())
    assert results["systems"] == ["copy baseline", "model", "model + retrieval", "engine (bm25)",
                                  "engine (knn)"]
    assert (tmp_path / "index" / "knn" / "knn.json").is_file()
    assert results["index"]["path"] == str(tmp_path / "index")
    for system in results["systems"]:
        assert 0.0 <= results["scores"][f"{system}: exact_match"] <= 1.0
        assert 0.0 <= results["scores"][f"{system}: edit_similarity"] <= 1.0
        assert f"{system}: exact_match" in result.output
    assert (run_dir / "tasks-model-retrieval.jsonl").is_file()


def test_bpb_cli_sets_the_model_beside_the_compressors(model_dir, tmp_path):
    recited = tmp_path / "recited.py"
    recited.write_text("".join(p["prompt"] + p["canonical_solution"] for p in load_problems(3)))
    result = CliRunner().invoke(cli, ["eval", "bpb", str(model_dir), str(recited),
                                      "--context-len", "256", "--device", "cpu",
                                      "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    run_dir = next((tmp_path / "runs").iterdir())
    scores = json.loads((run_dir / "results.json").read_text())["scores"]
    assert set(scores) == {"model", "gzip -9", "xz -9"}
    assert scores["model"] < scores["xz -9"]  # it has learnt these very bytes
    missing = CliRunner().invoke(cli, ["eval", "bpb", str(model_dir), str(tmp_path / "nope")])
    assert missing.exit_code != 0


def test_cli_engine_choices_are_the_engine_variants():
    # The CLI lists the names itself so that `codeslm --help` does not import the harness.
    from codeslm.eval.runs import ENGINE_VARIANTS

    repo_cmd = cli.commands["eval"].commands["repo"]
    engine = next(p for p in repo_cmd.params if p.name == "engines")
    assert list(engine.type.choices) == list(ENGINE_VARIANTS)
