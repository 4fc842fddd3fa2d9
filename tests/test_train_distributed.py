"""`codeslm train` under torchrun with 2 CPU processes (gloo): the same losses as one process on
the same global batch, resume on another number of ranks, and a world size that does not divide
the batch refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from model_fixtures import synthetic_documents, write_corpus

from codeslm.train.pretrain import train
from codeslm.train.settings import TrainSettings

SETTINGS = dict(size="nano", seq_len=64, batch_size=8, max_steps=6, warmup_steps=2, lr=1e-2,
                retrieval_rate=0.5, retrieval_pool=200, retrieval_context_tokens=32, fim_rate=0.5,
                eval_every=1000, eval_rows=8, log_every=1, precision="fp32", compile=False,
                threads=1)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), synthetic_documents(40, 4))


def recipe(tmp_path, corpus_dir, run_dir, **overrides):
    path = tmp_path / f"{run_dir.name}.json"
    path.write_text(json.dumps({**SETTINGS, "corpus": str(corpus_dir), "run_dir": str(run_dir), **overrides}))
    return path


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", "-m", "codeslm.cli", "train", *args, "-q"],
                          capture_output=True, text=True, env=env, timeout=600)


def losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_two_ranks_match_one_process_and_resume_on_one(corpus_dir, tmp_path):
    single = train(TrainSettings(corpus=str(corpus_dir), run_dir=str(tmp_path / "single"), **SETTINGS),
                   progress=False)
    two = torchrun(2, "--recipe", str(recipe(tmp_path, corpus_dir, tmp_path / "two")))
    assert two.returncode == 0, two.stderr[-3000:]
    np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "single"), rtol=1e-4)
    from safetensors.torch import load_file

    a = load_file(single.export_dir / "model.safetensors")
    b = load_file(tmp_path / "two" / "export" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)

    # Two ranks stop halfway; one process resumes and ends where the uninterrupted run did.
    split = recipe(tmp_path, corpus_dir, tmp_path / "split")
    half = torchrun(2, "--recipe", str(split), "--until-step", "3")
    assert half.returncode == 0, half.stderr[-3000:]
    assert not (tmp_path / "split" / "export").exists()
    from click.testing import CliRunner

    from codeslm.cli import cli

    done = CliRunner().invoke(cli, ["train", "--recipe", str(split), "--resume", "-q"])
    assert done.exit_code == 0, done.output
    np.testing.assert_allclose(losses(tmp_path / "split"), losses(tmp_path / "single"), rtol=1e-4)


def test_a_world_size_that_does_not_divide_the_batch_is_refused(corpus_dir, tmp_path):
    out = torchrun(2, "--recipe", str(recipe(tmp_path, corpus_dir, tmp_path / "odd", batch_size=7)))
    assert out.returncode != 0
    assert "batch size 7 is not a multiple of 2" in out.stderr + out.stdout
