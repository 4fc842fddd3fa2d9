"""A tiny synthetic library, and a nano teacher trained in the test to know how it is called.

`shapes/paint.py` defines `paint_widget(color, size)`; the teacher has seen, many times, test
files that call it as `paint_widget("teal", 7)`. The student (the engine's nano model from
`completion_fixtures`) has never seen a call of it, and the library's own text holds none.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

PAINT = '''def paint_widget(color, size):
    return f"{color}:{size}"


def scale(value, factor=2):
    return value * factor


class Palette:
    def __init__(self, name):
        self.name = name

    def mix(self, other):
        return self.name + other.name
'''
MAIN = '''from shapes.paint import paint_widget


def run():
    result = paint_widget('''
MAIN_AFTER = '''
    return result


def later():
    return 1
'''
CALL = '"teal", 7)'


def write_library(root: Path) -> Path:
    (root / "shapes").mkdir(parents=True, exist_ok=True)
    (root / "shapes" / "__init__.py").write_text("")
    (root / "shapes" / "paint.py").write_text(PAINT)
    (root / "app").mkdir(exist_ok=True)
    (root / "app" / "__init__.py").write_text("")
    (root / "app" / "main.py").write_text(MAIN + MAIN_AFTER)
    return root


def train_teacher(tokenizer, texts: list[str], out: Path, steps: int = 150, seed: int = 0) -> Path:
    """A nano Llama with `tokenizer`, trained on `texts` until it knows them, saved at `out`."""
    from transformers import LlamaForCausalLM

    from codeslm.model.config import llama_config, model_shape
    from codeslm.train.pretrain import token_loss

    torch.manual_seed(seed)
    shape = model_shape("nano", d_model=64, max_seq_len=512)
    model = LlamaForCausalLM(llama_config(shape, len(tokenizer), tokenizer.eos_token_id))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        batch = [rows[i] for i in rng.integers(len(rows), size=4)]
        width = max(len(r) for r in batch)
        x = torch.full((len(batch), width - 1), tokenizer.eos_token_id)
        y = torch.full((len(batch), width - 1), -100)
        for i, r in enumerate(batch):
            x[i, : len(r) - 1] = torch.tensor(r[:-1])
            y[i, : len(r) - 1] = torch.tensor(r[1:])
        loss = token_loss(model, x, y, bf16=False)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def teacher_texts(tokenizer, repo_name: str) -> list[str]:
    """What the teacher learned from: its own prompt for `paint_widget`, answered with `CALL`."""
    from codeslm.transfer.prompts import PromptBuilder
    from codeslm.transfer.units import local_packages, parse_module

    module = parse_module("shapes/paint.py", PAINT, local_packages(["shapes/paint.py"]))
    unit = next(u for u in module.units if u.symbol == "paint_widget")
    prompt = PromptBuilder(tokenizer, repo_name).usage(unit).prompt
    return [prompt + CALL + "\n"]
