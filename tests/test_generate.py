"""Decoding (KV cache against full recomputation, stop strings, sampling), bits per byte, the
`codeslm generate` command, and the shipped default checkpoint."""

from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner
from model_fixtures import FILLER, synthetic_documents, train_small_tokenizer

from codeslm.cli import cli
from codeslm.errors import ModelError
from codeslm.model.config import llama_config, model_shape
from codeslm.model.generate import bits_per_byte, generate
from codeslm.model.loading import load_model
from codeslm.model.tokenizer import save_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import LlamaForCausalLM

    tokenizer = train_small_tokenizer([d["text"] for d in synthetic_documents(40, 0)] + [FILLER] * 5)
    torch.manual_seed(1)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model = LlamaForCausalLM(llama_config(model_shape("nano"), len(tokenizer), eos))
    path = tmp_path_factory.mktemp("gen-model")
    model.save_pretrained(str(path))
    save_tokenizer(tokenizer, path)
    return path


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_model(model_dir, device="cpu")


def test_cached_greedy_decoding_equals_full_recomputation(loaded):
    model, tokenizer = loaded
    prompt = "def run(x):\n    return"
    text = generate(model, tokenizer, prompt, max_new_tokens=12)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    stop = {tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<file_sep>", "<fim_pad>")}
    banned = sorted(set(tokenizer.all_special_ids) - stop)
    new = []
    with torch.no_grad():
        for _ in range(12):
            logits = model(input_ids=torch.tensor([ids + new])).logits[0, -1]
            logits[banned] = -float("inf")
            token = int(logits.argmax())
            if token in stop:
                break
            new.append(token)
    assert text == tokenizer.decode(new)


def test_stop_strings_cut_the_completion(loaded):
    model, tokenizer = loaded
    full = generate(model, tokenizer, "import os\n", max_new_tokens=16)
    assert len(full) >= 4
    stop = full[2:4]
    cut = generate(model, tokenizer, "import os\n", max_new_tokens=16, stop=[stop])
    assert cut == full[: full.find(stop)]
    assert generate(model, tokenizer, "import os\n", max_new_tokens=0) == ""


def test_sampling_is_reproducible_with_a_seed(loaded):
    model, tokenizer = loaded
    kwargs = dict(max_new_tokens=12, temperature=1.0, top_p=0.9)
    a = generate(model, tokenizer, "x = ", seed=5, **kwargs)
    assert a == generate(model, tokenizer, "x = ", seed=5, **kwargs)
    others = {generate(model, tokenizer, "x = ", seed=s, **kwargs) for s in range(6, 10)}
    assert others != {a}


def test_bad_decoding_settings_are_refused(loaded):
    model, tokenizer = loaded
    with pytest.raises(ModelError, match="temperature"):
        generate(model, tokenizer, "x", temperature=-1)
    with pytest.raises(ModelError, match="top_p"):
        generate(model, tokenizer, "x", top_p=0)


def test_bits_per_byte_is_the_summed_loss_over_the_bytes(loaded):
    model, tokenizer = loaded
    text = FILLER
    ids = [tokenizer.eos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids[:-1]])).logits[0]
    nats = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum")
    expected = float(nats) / math.log(2) / len(text.encode())
    assert bits_per_byte(model, tokenizer, [text], context_len=len(ids)) == pytest.approx(expected, rel=1e-5)
    # Windows of 32 tokens score every token once, each with less context: close, not equal.
    windowed = bits_per_byte(model, tokenizer, [text], context_len=32)
    assert windowed == pytest.approx(expected, rel=0.1)


def test_generate_command_continues_and_infills(model_dir):
    runner = CliRunner()
    plain = runner.invoke(cli, ["generate", "--model", str(model_dir), "--max-new-tokens", "5", "def f(x):"])
    assert plain.exit_code == 0, plain.output
    infill = runner.invoke(
        cli,
        ["generate", "--model", str(model_dir), "--prefix", "def f(x):\n    return ", "--suffix", "\n",
         "--max-new-tokens", "5", "--temperature", "0.8", "--seed", "3"],
    )
    assert infill.exit_code == 0, infill.output


def test_generate_command_refuses_bad_input(model_dir, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(cli, ["generate", "--model", str(tmp_path / "none"), "x"])
    assert missing.exit_code != 0 and "does not exist" in str(missing.exception)
    both = runner.invoke(cli, ["generate", "--model", str(model_dir), "--prefix", "a", "prompt"])
    assert both.exit_code != 0 and "either" in both.output
    neither = runner.invoke(cli, ["generate", "--model", str(model_dir)])
    assert neither.exit_code != 0


def test_default_checkpoint_loads_and_generates():
    model, tokenizer = load_model(device="cpu")
    assert model.config.vocab_size == len(tokenizer)
    completion = generate(model, tokenizer, "def add(a, b):\n    return", max_new_tokens=8)
    assert completion and "<fim_" not in completion


def test_default_checkpoint_infills_from_the_text_before_the_cursor():
    from codeslm.model.prompt import build_prompt

    model, tokenizer = load_model(device="cpu")
    prefix = "def parse(items):\n    out = []\n    for item in items:\n        try:\n"
    suffix = "        except ValueError:\n            continue\n    return out\n"
    prompt = build_prompt(tokenizer, prefix, suffix, max_tokens=400)
    line = generate(model, tokenizer, prompt, max_new_tokens=16, stop=["\n"])
    # The body of the `try:` four columns in from it: only the prefix says where that is.
    assert line.startswith(" " * 12) and not line.startswith(" " * 13), line


# The shipped checkpoint (3.6M parameters, 142M tokens seen, 1.39 validation bits per byte)
# writes Python-shaped text (` (x + 1) + 1`) but not yet the right line; strict, so the marker
# must go once a better checkpoint completes it.
@pytest.mark.xfail(strict=True, reason="the shipped checkpoint is undertrained")
def test_default_checkpoint_completes_add():
    model, tokenizer = load_model(device="cpu")
    completion = generate(model, tokenizer, "def add(a, b):\n    return", max_new_tokens=8, stop=["\n"])
    assert completion.replace(" ", "").startswith("a+b"), completion
