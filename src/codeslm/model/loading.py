"""Loading a local Hugging Face causal-LM directory (ours by default) with its tokenizer.

Checks the directory before transformers sees it, so a missing, truncated or mismatched model is
refused with a message that names the problem. Never downloads anything.
But: it does not train or export models (see `codeslm.train.pretrain`).
"""

from __future__ import annotations

import json
from pathlib import Path

from codeslm.errors import ModelError

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def default_model_dir() -> Path:
    """The checkpoint that ships inside the package."""
    return Path(__file__).resolve().parent.parent / "assets" / "default-model"


def resolve_device(device: str = "auto") -> str:
    """`auto` picks CUDA when a GPU is there, else the CPU; anything else must be usable here."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for, but no CUDA GPU is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise ModelError(f"unknown device {device!r}; use auto, cpu or cuda[:N]")
    return device


def check_model_dir(path: Path) -> dict:
    """The parsed `config.json` of a model directory; `ModelError` if it cannot be a model."""
    if not path.is_dir():
        raise ModelError(f"model directory {path} does not exist")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{path} is not a model directory: no config.json")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{config_file} is not valid JSON: {e}") from e
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ModelError(f"{path} has no weights (expected one of {', '.join(WEIGHT_FILES)})")
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise ModelError(f"{path} has no tokenizer (tokenizer.json or tokenizer_config.json)")
    return config


def check_tokenizer_matches(tokenizer, vocab_size: int, where: str) -> None:
    """Refuse a tokenizer with ids the model has no embedding for."""
    if len(tokenizer) > vocab_size:
        raise ModelError(
            f"tokenizer and model do not match in {where}: the tokenizer has {len(tokenizer)} "
            f"tokens but the model only {vocab_size} embeddings"
        )


def load_model(path: str | Path | None = None, device: str = "auto"):
    """`(model, tokenizer)` from a local HF causal-LM directory, in eval mode on `device`.

    `path=None` loads the default checkpoint shipped with codeslm.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = Path(path) if path is not None else default_model_dir()
    config = check_model_dir(path)
    device = resolve_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # transformers raises many kinds for a broken directory
        raise ModelError(f"cannot load the tokenizer in {path}: {e}") from e
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, dtype=torch.float32
        )
    except Exception as e:
        raise ModelError(f"cannot load the model in {path} (corrupt or truncated?): {e}") from e
    check_tokenizer_matches(tokenizer, config.get("vocab_size", model.config.vocab_size), str(path))
    if tokenizer.eos_token_id is None:
        raise ModelError(f"the tokenizer in {path} has no end-of-text token")
    return model.to(device).eval(), tokenizer
