"""Model shapes, prompt format and budgets, saving and loading (with and without codeslm)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from model_fixtures import FILLER, synthetic_documents, train_small_tokenizer

from codeslm.errors import ModelError
from codeslm.model.config import SIZES, count_parameters, llama_config, model_shape
from codeslm.model.loading import default_model_dir, load_model
from codeslm.model.prompt import OURS, build_prompt, count_tokens, fim_template
from codeslm.model.tokenizer import save_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_small_tokenizer([d["text"] for d in synthetic_documents(40, 0)] + [FILLER] * 5)


def nano_model(tokenizer, seed: int = 0):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return LlamaForCausalLM(llama_config(model_shape("nano"), len(tokenizer), eos)).eval()


@pytest.fixture(scope="module")
def saved_model(tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    model = nano_model(tokenizer)
    model.save_pretrained(str(path))
    save_tokenizer(tokenizer, path)
    return path, model


def test_size_presets_span_about_one_to_twenty_five_million_parameters():
    from transformers import LlamaForCausalLM

    counts = {}
    for size in SIZES:
        with torch.device("meta"):
            model = LlamaForCausalLM(llama_config(model_shape(size), 8192, 0))
        counts[size] = count_parameters(model)
    assert 0.4e6 < counts["nano"] < 1.5e6
    assert 2.5e6 < counts["micro"] < 8e6
    assert 15e6 < counts["tiny"] <= 25e6


def test_overrides_apply_and_bad_shapes_are_refused():
    assert model_shape("micro", n_layers=3, d_model=None).n_layers == 3
    with pytest.raises(ModelError, match="unknown model size"):
        model_shape("huge")
    with pytest.raises(ModelError, match="not divisible"):
        model_shape("nano", d_model=66)
    with pytest.raises(ModelError, match="unknown model setting"):
        model_shape("nano", width=3)


def test_fim_prompt_with_context_follows_the_repository_format(tokenizer):
    prompt = build_prompt(
        tokenizer, "def add(a, b):\n    return", "\n", [("m.py", "x = 1"), ("n.py", "y = 2\n")], "demo"
    )
    assert prompt == (
        "<repo_name>demo\n<file_sep>m.py\nx = 1\n<file_sep>n.py\ny = 2\n"
        "<fim_prefix><fim_suffix>\n<fim_middle>def add(a, b):\n    return"
    )
    assert build_prompt(tokenizer, "a = ", "") == "<fim_prefix><fim_suffix><fim_middle>a = "


def test_plain_prompt_is_context_then_the_file(tokenizer):
    assert build_prompt(tokenizer, "import os\n") == "import os\n"
    prompt = build_prompt(tokenizer, "import os\n", context=[("a.py", "x = 1\n")], path="b.py")
    assert prompt == "<file_sep>a.py\nx = 1\n<file_sep>b.py\nimport os\n"


def test_budget_keeps_the_prefix_nearest_the_cursor_and_drops_least_relevant_context(tokenizer):
    prefix = "".join(f"value_{i} = {i}\n" for i in range(200)) + "result = value_199 +"
    context = [(f"c{i}.py", f"def helper_{i}():\n    return {i}\n" * 3) for i in range(20)]
    prompt = build_prompt(tokenizer, prefix, "\nprint(result)\n", context, "demo", max_tokens=300)
    assert count_tokens(tokenizer, prompt) <= 300 + 4
    assert "<fim_suffix>\nprint(result)\n<fim_middle>" in prompt
    assert prompt.endswith("value_199 = 199\nresult = value_199 +")
    # A long file does not crowd out context: half the budget is kept for it.
    assert "c19.py" in prompt and "c0.py" not in prompt
    assert count_tokens(tokenizer, prompt.split("<fim_prefix>")[0]) >= 100
    # The most relevant chunk is the last one given; it must survive before any earlier one.
    short = build_prompt(tokenizer, "x = 1\n", "", context, None, max_tokens=120)
    assert "c19.py" in short and "c0.py" not in short


def test_template_is_read_from_the_tokenizer(tokenizer):
    assert fim_template(tokenizer) == OURS
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"a": 0, "<|endoftext|>": 1}, unk_token="a"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    plain = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    with pytest.raises(ModelError, match="fill-in-the-middle"):
        fim_template(plain)


def test_save_and_load_give_identical_logits(tokenizer, saved_model):
    path, model = saved_model
    loaded, loaded_tokenizer = load_model(path, device="cpu")
    ids = torch.tensor([tokenizer("def run(x):\n    return x", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()


def test_checkpoint_loads_with_plain_transformers(saved_model):
    path, model = saved_model
    code = f"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(path)!r})
model = AutoModelForCausalLM.from_pretrained({str(path)!r})
ids = tok("<fim_prefix>def f(x):<fim_suffix><fim_middle>", add_special_tokens=False)["input_ids"]
with torch.no_grad():
    logits = model(input_ids=torch.tensor([ids])).logits
print(json.dumps({{"codeslm": any(m.startswith("codeslm") for m in sys.modules),
                  "ids": ids, "sum": float(logits.sum())}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["codeslm"] is False
    assert result["ids"][0] == tokenizer_id(path, "<fim_prefix>")
    with torch.no_grad():
        expected = float(model(input_ids=torch.tensor([result["ids"]])).logits.sum())
    assert result["sum"] == pytest.approx(expected, rel=1e-5)


def tokenizer_id(path, token):
    return json.loads((path / "tokenizer.json").read_text())["model"]["vocab"][token]


def test_bad_model_directories_are_refused(tokenizer, saved_model, tmp_path):
    path, _ = saved_model
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(ModelError, match="no config.json"):
        load_model(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in path.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelError, match="corrupt or truncated"):
        load_model(broken, device="cpu")
    weights.unlink()
    with pytest.raises(ModelError, match="no weights"):
        load_model(broken, device="cpu")


def test_tokenizer_model_mismatch_is_refused(tokenizer, saved_model, tmp_path):
    path, model = saved_model
    model.save_pretrained(str(tmp_path))
    bigger = train_small_tokenizer([d["text"] for d in synthetic_documents(60, 0, seed=3)] + [FILLER], 600)
    assert len(bigger) > model.config.vocab_size
    save_tokenizer(bigger, tmp_path)
    with pytest.raises(ModelError, match="do not match"):
        load_model(tmp_path, device="cpu")


def test_default_model_dir_is_inside_the_package():
    assert default_model_dir().parts[-3:] == ("codeslm", "assets", "default-model")


def test_unknown_device_is_refused(saved_model):
    with pytest.raises(ModelError, match="unknown device"):
        load_model(saved_model[0], device="tpu")
