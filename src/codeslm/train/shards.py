"""Reading a built corpus directory: manifest, document metadata, memory-mapped token shards.

The layout (written by `codeslm corpus build`): `manifest.json`, `documents.jsonl`, `tokenizer/`,
and per split `{train,val}.bin` (flat token ids, each document followed by end of text) with
`{train,val}.docs.npy` (rows of document id, start and end token offsets). Training and the
tokenizer trainer read corpora only through `Corpus`.
But: it only reads and checks a corpus; building one is `codeslm.train.corpus`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codeslm.errors import CorpusError

FORMAT = "codeslm-corpus"
FORMAT_VERSION = 1
SPLITS = ("train", "val")


@dataclass
class Split:
    """One split's tokens (memory-mapped) and its documents' token ranges."""

    tokens: np.ndarray  # (n_tokens,) uint16 or uint32
    docs: np.ndarray  # (n_docs, 3) int64: document id, start, end (end excludes end of text)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


@dataclass
class DocumentInfo:
    id: int
    package: str
    path: str


class Corpus:
    """A corpus directory, checked complete and consistent on open: `Corpus.open(path)`."""

    def __init__(self, root: Path, manifest: dict, splits: dict[str, Split]):
        self.root = root
        self.manifest = manifest
        self.splits = splits
        self._documents: dict[int, DocumentInfo] | None = None

    @classmethod
    def open(cls, root: str | Path) -> Corpus:
        root = Path(root)
        if not root.is_dir():
            raise CorpusError(f"corpus directory {root} does not exist")
        manifest = cls._read_manifest(root)
        dtype = np.dtype(manifest["dtype"])
        splits = {name: cls._open_split(root, name, dtype) for name in SPLITS}
        if splits["train"].n_tokens == 0 or len(splits["train"].docs) == 0:
            raise CorpusError(f"corpus {root} has no usable training files (train split is empty)")
        if splits["val"].n_tokens == 0 or len(splits["val"].docs) == 0:
            raise CorpusError(f"corpus {root} has an empty validation split")
        corpus = cls(root, manifest, splits)
        corpus._check_token_ids()
        return corpus

    @staticmethod
    def _read_manifest(root: Path) -> dict:
        manifest_file = root / "manifest.json"
        # The build writes the manifest last: a directory without one was never finished.
        if not manifest_file.is_file():
            raise CorpusError(
                f"{root} is not a complete corpus: no manifest.json "
                "(build it with `codeslm corpus build`)"
            )
        try:
            manifest = json.loads(manifest_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CorpusError(f"{manifest_file} is not valid JSON: {e}") from e
        if not isinstance(manifest, dict):
            raise CorpusError(f"{manifest_file} is not a JSON object")
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise CorpusError(f"{root} holds no {FORMAT} v{FORMAT_VERSION} corpus")
        for key in ("dtype", "vocab_size", "file_sizes"):
            if key not in manifest:
                raise CorpusError(f"{manifest_file} lacks {key!r}")
        # Sizes the build recorded catch a shard cut short (or grown) after the manifest was written.
        for name, size in manifest["file_sizes"].items():
            if not (root / name).is_file():
                raise CorpusError(f"corpus {root} is incomplete: {name} is missing")
            actual = (root / name).stat().st_size
            if actual != size:
                raise CorpusError(
                    f"corpus {root} is incomplete: {name} is {actual} bytes, expected {size}"
                )
        tokenizer_file = f"{manifest.get('tokenizer', 'tokenizer')}/tokenizer.json"
        if not (root / tokenizer_file).is_file():
            raise CorpusError(f"corpus {root} is incomplete: {tokenizer_file} is missing")
        return manifest

    @staticmethod
    def _open_split(root: Path, name: str, dtype: np.dtype) -> Split:
        bin_file, docs_file = root / f"{name}.bin", root / f"{name}.docs.npy"
        for f in (bin_file, docs_file):
            if not f.is_file():
                raise CorpusError(f"corpus {root} is incomplete: {f.name} is missing")
        size = bin_file.stat().st_size
        tokens = np.memmap(bin_file, dtype=dtype, mode="r") if size else np.zeros(0, dtype=dtype)
        try:
            docs = np.load(docs_file)
        except (OSError, ValueError) as e:
            raise CorpusError(f"cannot read {docs_file}: {e}") from e
        if docs.ndim != 2 or docs.shape[1] != 3:
            raise CorpusError(f"{docs_file} has shape {docs.shape}; expected (n_docs, 3)")
        if len(docs) and (docs[:, 2].max() > len(tokens) or (docs[:, 1] > docs[:, 2]).any()):
            raise CorpusError(f"{docs_file} points outside {bin_file.name}: the corpus is corrupt")
        return Split(tokens=tokens, docs=docs.astype(np.int64))

    def _check_token_ids(self) -> None:
        vocab = int(self.manifest["vocab_size"])
        for name, split in self.splits.items():
            top = int(split.tokens.max())
            if top >= vocab:
                raise CorpusError(
                    f"{name}.bin holds token id {top}, beyond the vocabulary of {vocab}"
                )

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / self.manifest.get("tokenizer", "tokenizer")

    def load_tokenizer(self):
        from codeslm.model.loading import check_tokenizer_matches
        from codeslm.model.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(self.tokenizer_dir)
        check_tokenizer_matches(tokenizer, int(self.manifest["vocab_size"]), str(self.root))
        return tokenizer

    def tokenizer_fingerprint(self) -> str:
        """sha256 of `tokenizer.json`: a model trained with one tokenizer refuses another."""
        return hashlib.sha256((self.tokenizer_dir / "tokenizer.json").read_bytes()).hexdigest()

    def documents(self) -> dict[int, DocumentInfo]:
        """Package and path of every document, by id (text is not kept)."""
        if self._documents is None:
            self._documents = {}
            for record in self.records():
                info = DocumentInfo(int(record["id"]), str(record["package"]), str(record["path"]))
                self._documents[info.id] = info
        return self._documents

    def texts(self, ids: set[int]) -> dict[int, str]:
        """The text of the documents in `ids`."""
        return {int(r["id"]): r["text"] for r in self.records() if int(r["id"]) in ids}

    def records(self, split: str | None = None) -> Iterator[dict]:
        """Full document records (id, source, package, path, split, sha256, bytes, text), all or
        one split's, streamed from documents.jsonl since the texts are too large to hold."""
        path = self.root / "documents.jsonl"
        if not path.is_file():
            raise CorpusError(f"corpus {self.root} is incomplete: documents.jsonl is missing")
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CorpusError(f"{path} line {n} is not valid JSON: {e}") from e
                if split is None or record["split"] == split:
                    yield record


def token_byte_lengths(tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for (0 for special tokens), for bits per byte."""
    from tokenizers import pre_tokenizers

    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    special = set(tokenizer.all_special_ids)
    lengths = np.zeros(len(tokenizer), dtype=np.int64)
    for token, i in tokenizer.get_vocab().items():
        if i in special:
            continue
        # Byte-level BPE spells each byte as one character of its 256-character alphabet.
        lengths[i] = len(token) if set(token) <= alphabet else len(token.encode("utf-8"))
    return lengths
