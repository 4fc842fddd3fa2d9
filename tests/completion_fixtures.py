"""A small repository and a nano model trained, in the test, to copy names from retrieved code.

Every training example is a repository-level FIM prompt (`build_prompt`, the engine's format)
with one to three retrieved chunks that each define a function; the middle calls the one nearest
the cursor, which also shares the caller's comment, as the engine's most relevant chunk does.
Which name that is can only be read from the retrieved chunks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

NAMES = ("frobnicate", "zanzibar", "quibble", "snorkel", "wibble", "flummox", "blorb",
         "crumple", "dazzle", "fizzle", "grumble", "hobble", "jostle", "kerfuffle", "lollop",
         "mumble", "noodle", "piffle", "rumble", "skedaddle", "tootle", "waddle", "yodel")
VERBS = ("polish", "paint", "sort", "count", "merge", "split", "clean", "check", "load", "store")
NOUNS = ("widget", "gadget", "record", "buffer", "ticket", "packet", "folder", "sample")


def chunk_text(name: str, verb: str, noun: str) -> str:
    return f"def {name}({noun}):\n    # {verb} the {noun}\n    return {noun}\n"


def caller_prefix(verb: str, noun: str, fn: str = "run") -> str:
    return f"def {fn}({noun}):\n    # {verb} the {noun}\n    return"


def training_texts(tokenizer, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """`n` pairs of a prompt and the middle that completes it."""
    from codeslm.model.prompt import build_prompt

    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n):
        picks = rng.choice(len(NAMES), size=int(rng.integers(1, 4)), replace=False)
        verbs = rng.choice(VERBS, size=len(picks), replace=False)
        nouns = rng.choice(NOUNS, size=len(picks))
        context = [(f"mod{int(rng.integers(9))}.py", chunk_text(NAMES[p], v, o))
                   for p, v, o in zip(picks, verbs, nouns)]
        verb, noun, name = verbs[-1], nouns[-1], NAMES[picks[-1]]
        suffix = "\n" if rng.random() < 0.5 else "\n\n\ndef later(x):\n    return x\n"
        repo = "demo" if rng.random() < 0.5 else None
        prompt = build_prompt(tokenizer, caller_prefix(verb, noun), suffix, context, repo, max_tokens=512)
        texts.append((prompt, f" {name}({noun})<|endoftext|>"))
    return texts


def train_nano_model(steps: int = 2000, seed: int = 0, lr: float = 3e-3, middle_only: bool = True,
                     width: int = 64):
    """`(model, tokenizer)`: a nano Llama that has learned to call the last retrieved function."""
    from transformers import LlamaForCausalLM

    from codeslm.model.config import llama_config, model_shape
    from codeslm.model.prompt import count_tokens
    from codeslm.model.tokenizer import train_tokenizer
    from codeslm.train.pretrain import token_loss

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs fastest on one thread
    seed_texts = [chunk_text(n, v, o) + caller_prefix(v, o) for n in NAMES for v in VERBS[:3] for o in NOUNS[:3]]
    tokenizer = train_tokenizer(seed_texts * 2 + list(CONFIG_FILE.splitlines()), vocab_size=600)
    tokenizer.padding_side = "right"
    shape = model_shape("nano", d_model=width, max_seq_len=256)
    model = LlamaForCausalLM(llama_config(shape, len(tokenizer), tokenizer.eos_token_id))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    texts = training_texts(tokenizer, 2000, seed)
    rows = []
    for prompt, middle in texts:
        ids = tokenizer(prompt + middle, add_special_tokens=False)["input_ids"]
        rows.append((ids, count_tokens(tokenizer, prompt)))
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        batch = [rows[i] for i in rng.integers(len(rows), size=8)]
        width = max(len(r) for r, _ in batch)
        x = torch.full((len(batch), width - 1), tokenizer.eos_token_id)
        y = torch.full((len(batch), width - 1), -100)
        for i, (r, start) in enumerate(batch):
            x[i, : len(r) - 1] = torch.tensor(r[:-1])
            # Only the middle is a target: all the steps go to learning to copy it.
            first = start if middle_only else 1
            y[i, first - 1 : len(r) - 1] = torch.tensor(r[first:])
        loss = token_loss(model, x, y, bf16=False)
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    torch.set_num_threads(threads)
    return model.eval(), tokenizer


CONFIG_FILE = 'TIMEOUT_SECONDS = 4217\nRETRY_POLICY = "quixotic"\n'


def write_repo(root: Path) -> Path:
    """A repository whose `main.py` stops at a `return` that only `helpers.py` can finish."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "helpers.py").write_text(
        chunk_text("frobnicate", "polish", "widget") + "\n\n" + chunk_text("snorkel", "merge", "packet")
    )
    (root / "other.py").write_text(
        chunk_text("dazzle", "count", "ticket") + "\n\n" + chunk_text("yodel", "store", "folder")
    )
    (root / "config.py").write_text(CONFIG_FILE)
    (root / "main.py").write_text(
        caller_prefix("polish", "widget") + "\n\n\n" + "def later(x):\n    return x.glorpified()\n"
    )
    return root
