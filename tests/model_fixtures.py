"""Small real data for the model tests: a synthetic code corpus written in the corpus layout.

Each package has `defs.py`, defining functions with random names, and `use.py`, which imports and
calls them: the names in `use.py`'s import line can only be predicted from `defs.py`, which is
what retrieval puts before it. Validation packages have names never seen in training.
"""

from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path

import numpy as np

FILLER = '''import os


def read_lines(path):
    """Return the lines of a file without their line ends."""
    with open(path) as handle:
        return [line.rstrip("\\n") for line in handle]


class Counter:
    def __init__(self):
        self.counts = {}

    def add(self, key, amount=1):
        self.counts[key] = self.counts.get(key, 0) + amount
        return self.counts[key]


def add(a, b):
    return a + b
'''


def random_name(rng: np.random.Generator, n: int = 7) -> str:
    return "".join(rng.choice(list(string.ascii_lowercase), size=n))


def package_files(rng: np.random.Generator, package: str, n_names: int = 3,
                  pool: list[str] | None = None) -> dict[str, str]:
    if pool:
        names = [str(n) for n in rng.choice(pool, size=n_names, replace=False)]
    else:
        names = [f"{random_name(rng)}_{random_name(rng, 4)}" for _ in range(n_names)]
    factors = rng.integers(2, 9, size=n_names)
    defs = "\n\n".join(
        f"def {n}(value):\n    return value * {f}\n" for n, f in zip(names, factors, strict=True)
    )
    use = (
        f"from {package}.defs import {', '.join(names)}\n\n\n"
        "def run(x):\n" + "".join(f"    x = {n}(x)\n" for n in names) + "    return x\n"
    )
    return {f"{package}/defs.py": defs, f"{package}/use.py": use}


def synthetic_documents(n_train: int, n_val: int, seed: int = 0, names_per_package: int = 3,
                        name_pool: int = 0) -> list[dict]:
    """Packages of random function names; with `name_pool`, names are drawn from that many
    6-letter words, which a tokenizer of some 700 tokens holds as one token each."""
    rng = np.random.default_rng(seed)
    pool = sorted({random_name(rng, 6) for _ in range(name_pool)}) if name_pool else None
    docs = []
    for i in range(n_train + n_val):
        package = f"pkg{i}"
        split = "train" if i < n_train else "val"
        files = package_files(rng, package, names_per_package, pool)
        if i % 4 == 0:
            files[f"{package}/common.py"] = FILLER
        for path, text in files.items():
            docs.append({"package": package, "path": path, "split": split, "text": text})
    return docs


def train_small_tokenizer(texts: list[str], vocab_size: int = 400):
    from codeslm.model.tokenizer import train_tokenizer

    return train_tokenizer(texts, vocab_size=vocab_size)


def write_corpus(root: Path, docs: list[dict], tokenizer=None, vocab_size: int = 400) -> Path:
    """Write `docs` (package, path, split, text) as a corpus directory; returns `root`."""
    from codeslm.model.tokenizer import save_tokenizer
    from codeslm.train.shards import FORMAT, FORMAT_VERSION

    root.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tokenizer = train_small_tokenizer([d["text"] for d in docs if d["split"] == "train"], vocab_size)
    save_tokenizer(tokenizer, root / "tokenizer")
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    dtype = np.uint16
    backend = tokenizer.backend_tokenizer
    backend.encode_special_tokens = True
    with (root / "documents.jsonl").open("w") as f:
        for i, d in enumerate(docs):
            data = d["text"].encode()
            record = {"id": i, "source": "synthetic", **d, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            f.write(json.dumps(record) + "\n")
    for split in ("train", "val"):
        tokens, rows = [], []
        for i, d in enumerate(docs):
            if d["split"] != split:
                continue
            ids = backend.encode(d["text"], add_special_tokens=False).ids
            start = sum(len(t) for t in tokens)
            rows.append((i, start, start + len(ids)))
            tokens.append(np.array(ids + [eot], dtype=dtype))
        flat = np.concatenate(tokens) if tokens else np.zeros(0, dtype=dtype)
        flat.tofile(root / f"{split}.bin")
        np.save(root / f"{split}.docs.npy", np.array(rows, dtype=np.int64).reshape(-1, 3))
    backend.encode_special_tokens = False
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "dtype": "uint16", "vocab_size": len(tokenizer),
                "tokenizer": "tokenizer", "file_sizes": {f.name: f.stat().st_size for f in root.iterdir() if f.is_file()}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root
