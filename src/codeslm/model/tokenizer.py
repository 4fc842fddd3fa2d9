"""Byte-level BPE tokenizer for code, trained with `tokenizers`, shipped as a HF fast tokenizer.

Text is pre-split so that runs of spaces, tabs and newlines are pieces of their own (indentation
becomes one token), then mapped to bytes, so any string round-trips exactly. The result is a
`transformers.PreTrainedTokenizerFast` that `AutoTokenizer.from_pretrained` loads without codeslm.
But: it does not build prompts (see `codeslm.model.prompt`) or tokenize corpora (`codeslm.train`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from codeslm.errors import ModelError

EOT = "<|endoftext|>"
FIM_PREFIX = "<fim_prefix>"
FIM_MIDDLE = "<fim_middle>"
FIM_SUFFIX = "<fim_suffix>"
FIM_PAD = "<fim_pad>"
FILE_SEP = "<file_sep>"
REPO_NAME = "<repo_name>"
# Order fixes the ids: <|endoftext|> is 0, then the FIM and repository tokens.
SPECIAL_TOKENS = (EOT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD, FILE_SEP, REPO_NAME)

# 8192 suits a 5-10M parameter model: with a 256-wide embedding the (tied) table is 2.1M
# parameters, a quarter of the budget. On the default corpus's validation split, 4k/8k/16k/32k
# vocabularies give 3.01/3.30/3.54/3.76 bytes per token: 16k buys 7% more text per token for
# another 2.1M parameters, most of a small model; 4k costs 9% more tokens for the same code.
DEFAULT_VOCAB_SIZE = 8192

# Pieces, tried left to right: runs of 2+ spaces (indentation, alignment), runs of tabs, runs of
# line breaks, a word or up to three digits with one optional leading non-letter (" foo", ".append",
# "_bar", " 10", "(0"), punctuation with one optional leading space, and other whitespace (leaving
# one space for the word after it, as GPT-2 does). Pieces never cross these boundaries, so BPE
# learns whole indentation runs as single tokens. (Letting numbers take the leading character
# gained 1.5% bytes per token on Python; gluing underscores into words gained nothing more.)
PRETOKENIZE_PATTERN = (
    r" {2,}|\t+|[\r\n]+|[^\r\n\p{L}\p{N}]?\p{L}+|[^\r\n\p{L}\p{N}]?\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
    r"|\s+(?!\S)|\s+"
)


def _backend(vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        # All 256 bytes are in the vocabulary whatever the data, so no text is ever unknown.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return tokenizer, trainer


def wrap_tokenizer(backend):
    """Wrap a `tokenizers.Tokenizer` holding our special tokens as a `PreTrainedTokenizerFast`."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOT,
        eos_token=EOT,
        pad_token=FIM_PAD,
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 20,
    )


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE):
    """Train a byte-level BPE tokenizer on `texts`; returns a `PreTrainedTokenizerFast`.

    `vocab_size` counts the 256 byte tokens and the special tokens; the trainer may stop short of
    it when the texts have too few distinct pairs.
    """
    minimum = 256 + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ModelError(
            f"vocab size {vocab_size} is too small: at least {minimum} (bytes + special tokens)"
        )
    backend, trainer = _backend(vocab_size)
    backend.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(backend)


def save_tokenizer(tokenizer, path: str | Path) -> Path:
    """`save_pretrained` plus a `special_tokens_map.json`, which transformers 5 no longer writes
    but older transformers and other tools read."""
    import json

    path = Path(path)
    tokenizer.save_pretrained(str(path))
    special = {
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
    }
    (path / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return path


def load_tokenizer(path: str | Path):
    """Load a tokenizer directory with `AutoTokenizer`; checks it carries `<|endoftext|>`."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise ModelError(f"{path} is not a tokenizer directory (no tokenizer.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # transformers raises many kinds for a broken directory
        raise ModelError(f"cannot load tokenizer from {path}: {e}") from e
    if tokenizer.convert_tokens_to_ids(EOT) in (None, tokenizer.unk_token_id):
        raise ModelError(f"tokenizer in {path} has no {EOT} token")
    return tokenizer


def token_dtype(vocab_size: int):
    """The smallest unsigned numpy dtype that holds every id of a `vocab_size` vocabulary."""
    import numpy as np

    return np.uint16 if vocab_size < 1 << 16 else np.uint32


def bytes_per_token(tokenizer, texts: Iterable[str], batch_size: int = 256) -> float:
    """UTF-8 bytes per token over `texts`, special-token lookalikes encoded as plain text."""
    backend = tokenizer.backend_tokenizer
    n_bytes = n_tokens = 0
    batch: list[str] = []

    def flush() -> None:
        nonlocal n_tokens
        n_tokens += sum(len(e.ids) for e in backend.encode_batch(batch, add_special_tokens=False))
        batch.clear()

    previous = backend.encode_special_tokens
    backend.encode_special_tokens = True
    try:
        for text in texts:
            n_bytes += len(text.encode("utf-8"))
            batch.append(text)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    finally:
        backend.encode_special_tokens = previous
    if n_tokens == 0:
        raise ModelError("no text to measure bytes per token on")
    return n_bytes / n_tokens
