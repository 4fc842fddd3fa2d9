"""An ablation arm's corpus: a base corpus whose training split keeps only the selected files.

Selections pick training documents by source, package glob, path glob and file kind (tests,
examples), and may strip Python docstrings (those files are re-tokenized with the base
tokenizer). The validation split, the tokenizer and the document ids stay exactly the base's, so
every arm is measured on the same held-out packages.
But: filters and dedup that need the raw sources are `codeslm corpus build`'s; an arm that changes
them trains on such a build, checked by `check_alternative_corpus`.
"""

from __future__ import annotations

import ast
import fnmatch
import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from codeslm.errors import CorpusError
from codeslm.train.shards import FORMAT, FORMAT_VERSION, Corpus

TEST_DIRS = {"test", "tests", "testing"}
EXAMPLE_DIRS = {"example", "examples", "demo", "demos", "sample", "samples"}


@dataclass(frozen=True)
class Selection:
    """Which training documents an arm keeps; the default keeps the base corpus as it is."""

    sources: tuple[str, ...] = ()  # keep only these sources ("stdlib", "site-packages", --src names)
    packages: tuple[str, ...] = ()  # keep only packages matching one of these globs
    exclude_packages: tuple[str, ...] = ()
    exclude_paths: tuple[str, ...] = ()  # drop files whose path matches one of these globs
    drop_tests: bool = False
    drop_examples: bool = False
    strip_docstrings: bool = False

    @property
    def is_identity(self) -> bool:
        return self == Selection()

    def describe(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def keeps(self, record: dict) -> bool:
        path = PurePosixPath(record["path"])
        if self.sources and record.get("source") not in self.sources:
            return False
        if self.packages and not any(fnmatch.fnmatch(record["package"], g) for g in self.packages):
            return False
        if any(fnmatch.fnmatch(record["package"], g) for g in self.exclude_packages):
            return False
        if any(fnmatch.fnmatch(str(path), g) for g in self.exclude_paths):
            return False
        if self.drop_tests and is_test_file(path):
            return False
        return not (self.drop_examples and set(path.parts[:-1]) & EXAMPLE_DIRS)


def is_test_file(path: PurePosixPath) -> bool:
    """Test code by the layout pytest and unittest use: a tests directory or a test_ file."""
    name = path.name
    return (bool(set(path.parts[:-1]) & TEST_DIRS) or name.startswith("test_")
            or name.endswith("_test.py") or name == "conftest.py")


def strip_python_docstrings(text: str) -> str:
    """`text` without the docstrings of its module, classes and functions (unparsable: as is).

    A docstring that is a body's only statement becomes `...`, so the code still parses.
    """
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return text
    lines = text.splitlines(keepends=True)
    cuts = []  # (first line, last line, replacement), 1-based inclusive
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            doc = body[0]
            indent = lines[doc.lineno - 1][: doc.col_offset]
            cuts.append((doc.lineno, doc.end_lineno, f"{indent}...\n" if len(body) == 1 else ""))
    for first, last, replacement in sorted(cuts, reverse=True):
        lines[first - 1 : last] = [replacement] if replacement else []
    return "".join(lines)


def check_alternative_corpus(base: str | Path, other: str | Path) -> None:
    """Refuse a corpus for an arm whose tokenizer is not the base's, or that trains on a package
    the base corpus holds out for validation (every arm is evaluated on the base's)."""
    base_corpus, other_corpus = Corpus.open(base), Corpus.open(other)
    if other_corpus.tokenizer_fingerprint() != base_corpus.tokenizer_fingerprint():
        raise CorpusError(f"corpus {other} has another tokenizer than the base corpus {base}; "
                          f"build it with `--tokenizer {base_corpus.tokenizer_dir}`")
    held_out = {r["package"] for r in base_corpus.records("val")}
    leaked = sorted({r["package"] for r in other_corpus.records("train")} & held_out)
    if leaked:
        raise CorpusError(f"corpus {other} trains on {len(leaked)} package(s) the base corpus holds "
                          f"out for validation ({', '.join(leaked[:5])}); build it with --exclude-package")


def arm_corpus(base: str | Path, selection: Selection, out: Path) -> Path:
    """The corpus of `selection` over `base`, written to `out` once (reused when it matches)."""
    base_corpus = Corpus.open(base)
    if selection.is_identity:
        return base_corpus.root
    key = {"base_manifest_sha256": _sha256(base_corpus.root / "manifest.json"),
           "selection": selection.describe()}
    if (out / "manifest.json").is_file():
        if json.loads((out / "manifest.json").read_text()).get("derived") == key:
            return out
        raise CorpusError(f"{out} holds a corpus of another selection; remove it to rebuild")
    records = [r for r in base_corpus.records()
               if r["split"] == "val" or selection.keeps(r)]
    kept = [r for r in records if r["split"] == "train"]
    if not kept:
        raise CorpusError(
            f"the selection {json.dumps(selection.describe())} keeps no training files of {base}"
        )
    _write(base_corpus, records, selection, out, key)
    return out


def _write(base: Corpus, records: list[dict], selection: Selection, out: Path, key: dict) -> None:
    dtype = np.dtype(base.manifest["dtype"])
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copytree(base.tokenizer_dir, staging / "tokenizer")
    encoder = None
    if selection.strip_docstrings:
        from tokenizers import Tokenizer

        encoder = Tokenizer.from_file(str(base.tokenizer_dir / "tokenizer.json"))
        encoder.encode_special_tokens = True  # as the corpus build encodes source text
    eot = base.load_tokenizer().convert_tokens_to_ids("<|endoftext|>")
    spans = {name: {int(d): (int(s), int(e)) for d, s, e in split.docs}
             for name, split in base.splits.items()}
    with (staging / "documents.jsonl").open("w", encoding="utf-8") as docs_file:
        for split in ("train", "val"):
            rows, offset = [], 0
            with (staging / f"{split}.bin").open("wb") as bin_file:
                for record in (r for r in records if r["split"] == split):
                    doc_id = int(record["id"])
                    start, end = spans[split][doc_id]
                    ids = base.splits[split].tokens[start:end]
                    if encoder is not None and split == "train" and record["path"].endswith(".py"):
                        text = strip_python_docstrings(record["text"])
                        if text != record["text"]:
                            ids = np.asarray(encoder.encode(text, add_special_tokens=False).ids)
                            data = text.encode("utf-8")
                            record = {**record, "text": text, "bytes": len(data),
                                      "sha256": hashlib.sha256(data).hexdigest()}
                    bin_file.write(np.append(ids, eot).astype(dtype).tobytes())
                    rows.append((doc_id, offset, offset + len(ids)))
                    offset += len(ids) + 1
                    docs_file.write(json.dumps(record) + "\n")
            np.save(staging / f"{split}.docs.npy", np.array(rows, dtype=np.int64).reshape(-1, 3))
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "dtype": dtype.name,
                "vocab_size": base.manifest["vocab_size"], "tokenizer": "tokenizer",
                "derived": key,
                "file_sizes": {f.name: f.stat().st_size for f in staging.iterdir() if f.is_file()}}
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
