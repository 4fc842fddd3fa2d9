"""The code tokenizer: lossless round trips, single-id special tokens, compact indentation, and
save/load through plain `transformers.AutoTokenizer`."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from codeslm.errors import ModelError
from codeslm.model.tokenizer import (
    EOT,
    SPECIAL_TOKENS,
    bytes_per_token,
    load_tokenizer,
    save_tokenizer,
    token_dtype,
    train_tokenizer,
)

_NAMES = ["alpha", "beta", "gamma", "delta", "count", "items", "value", "result", "index", "node"]


def _python_file(rng: random.Random) -> str:
    """Plausible Python with 4- and 8-space indentation and varied names."""
    out = []
    for _ in range(rng.randint(3, 8)):
        a, b, c = rng.sample(_NAMES, 3)
        out.append(
            f"def {a}_{b}({c}, {a}=None):\n"
            f'    """Return the {b} of {c}."""\n'
            f"    {b} = []\n"
            f"    for {a} in {c}:\n"
            f"        if {a} is not None:\n"
            f"            {b}.append({a} + {rng.randint(0, 99)})\n"
            f"        else:\n"
            f"            continue\n"
            f"    return {b}\n\n"
        )
    return "".join(out)


@pytest.fixture(scope="module")
def corpus_texts() -> list[str]:
    rng = random.Random(0)
    return [_python_file(rng) for _ in range(300)]


@pytest.fixture(scope="module")
def tokenizer(corpus_texts):
    return train_tokenizer(corpus_texts, vocab_size=600)


TRICKY = [
    "",
    "x",
    "def f(x):\n\treturn x\t# tab\n",
    "line one\r\nline two\r\n\r\n",
    "naïve café, Ωμέγα, 日本語のテキスト, עברית",
    "emoji 🙂🚀👩‍👩‍👧 and flags 🇫🇷",
    "nul \x00 byte, bell \x07, escape \x1b[0m",
    "\u2028line sep\u2029para sep\u3000ideographic space\u00a0nbsp",
    "combining e\u0301 and zero\u200bwidth",
    " " * 100 + "deep\n" + "\t" * 7 + "tabs",
    "    \n        \n\n\n   trailing   ",
    "<|endoftext|> inside text <fim_prefix>x<fim_suffix>y<fim_middle>",
    "mixed\r\n    indent\r\n\tand tab\n",
]


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_is_lossless(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text


def test_round_trip_random_unicode(tokenizer):
    rng = random.Random(1)
    # Any code point except surrogates, which UTF-8 cannot carry.
    pool = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for _ in range(50):
        text = "".join(chr(rng.choice(pool)) for _ in range(rng.randint(1, 40)))
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_tokens_are_single_fixed_ids(tokenizer):
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.encode(token) == [expected_id]
        assert tokenizer.convert_tokens_to_ids(token) == expected_id
    assert tokenizer.eos_token == EOT
    assert set(SPECIAL_TOKENS) <= set(tokenizer.all_special_tokens)
    prompt = "<fim_prefix>a = 1<fim_suffix>\n<fim_middle>"
    ids = tokenizer.encode(prompt)
    assert ids[0] == 1 and ids[-1] == 2 and 3 in ids


def test_indentation_runs_are_single_tokens(tokenizer):
    assert len(tokenizer.encode(" " * 8)) == 1
    assert len(tokenizer.encode(" " * 4)) == 1
    ids = tokenizer.encode("\n        return x")
    assert tokenizer.convert_ids_to_tokens(ids)[1] == "Ġ" * 8


def test_code_compresses(tokenizer, corpus_texts):
    assert bytes_per_token(tokenizer, corpus_texts[:20]) > 3.0


def test_bytes_per_token_counts_special_lookalikes_as_text(tokenizer):
    text = "x = '<|endoftext|>'"
    assert bytes_per_token(tokenizer, [text]) < len(text)
    assert len(tokenizer.encode(text)) < len(text)


def test_vocab_size_is_respected_and_checked(corpus_texts):
    assert len(train_tokenizer(corpus_texts, vocab_size=400)) == 400
    with pytest.raises(ModelError, match="too small"):
        train_tokenizer(corpus_texts, vocab_size=100)


def test_token_dtype():
    assert token_dtype(8192).__name__ == "uint16"
    assert token_dtype(65535).__name__ == "uint16"
    assert token_dtype(65536).__name__ == "uint32"


def test_save_load_with_plain_transformers(tokenizer, tmp_path):
    save_tokenizer(tokenizer, tmp_path / "tok")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / "tok" / name).is_file()
    assert (
        json.loads((tmp_path / "tok" / "special_tokens_map.json").read_text())["eos_token"] == EOT
    )
    text = "class A:\n    def f(self):\n        return '🙂'\r\n<fim_middle>"
    # A fresh interpreter with no codeslm import: AutoTokenizer alone must reproduce the ids.
    script = (
        "import sys, json\n"
        "from transformers import AutoTokenizer\n"
        f"t = AutoTokenizer.from_pretrained({str(tmp_path / 'tok')!r})\n"
        f"ids = t.encode({text!r})\n"
        f"assert t.decode(ids) == {text!r}\n"
        "assert not any(m.startswith('codeslm') for m in sys.modules)\n"
        "print(json.dumps([ids, t.eos_token, t.pad_token, len(t)]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    ids, eos, pad, size = json.loads(done.stdout.strip().splitlines()[-1])
    assert ids == tokenizer.encode(text)
    assert (eos, pad, size) == (EOT, tokenizer.pad_token, len(tokenizer))
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.encode(text) == tokenizer.encode(text)


def test_load_rejects_a_directory_without_tokenizer(tmp_path):
    with pytest.raises(ModelError, match="not a tokenizer directory"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot load tokenizer"):
        load_tokenizer(tmp_path)
