"""Bits per byte of a model on code, beside `gzip -9` and `xz -9` on the very same bytes.

Bits per byte (summed next-token loss in bits over the UTF-8 bytes) compares models across
tokenizers. The compressors see all files concatenated, so they may use redundancy across
files that the model, reading each file on its own, cannot: a conservative floor.
But: the loss itself is `codeslm.model.generate.bits_per_byte`.
"""

from __future__ import annotations

from pathlib import Path

from codeslm.errors import EvalError
from codeslm.eval.metrics import compressed_bits_per_byte


def collect_texts(paths: list[str | Path], max_file_size: int = 1_000_000) -> list[tuple[str, str]]:
    """`(path, text)` of each file given, and of each indexable file under each directory."""
    from codeslm.index.walk import SourceFile, UnusableFile, read_source, walk_repo

    texts = []
    for given in paths:
        root = Path(given).expanduser()
        if root.is_file():
            stat = root.stat()
            sources = [SourceFile(root.name, root, stat.st_size, stat.st_mtime_ns)]
        elif root.is_dir():
            sources = walk_repo(root, max_file_size)[0]
        else:
            raise EvalError(f"{root} does not exist")
        for source in sources:
            try:
                texts.append((str(root / source.path) if root.is_dir() else str(root),
                              read_source(source)[1]))
            except UnusableFile:
                continue
    if not texts:
        raise EvalError(f"no readable text files under {', '.join(map(str, paths))}")
    return texts


def measure(model, tokenizer, texts: list[tuple[str, str]], context_len: int = 512) -> dict:
    """The model's bits per byte and the compressors', with the byte and file counts."""
    from codeslm.model.generate import bits_per_byte

    data = "".join(text for _, text in texts).encode("utf-8")
    scores = {"model": bits_per_byte(model, tokenizer, [t for _, t in texts],
                                     context_len=context_len)}
    scores.update(compressed_bits_per_byte(data))
    return {"scores": scores, "bytes": len(data), "files": len(texts)}
