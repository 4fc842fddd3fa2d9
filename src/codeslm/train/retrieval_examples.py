"""Retrieved context for training files: chunks of *other* files of the same package, by BM25.

Files are grouped by package (large packages by package and directory); each group is chunked
with tree-sitter once, indexed with BM25 over split identifiers, and every file in it is used as
a code-to-code query with its own chunks masked out: the whole file, or (`query="window"`) one
window of it picked at random, which the training row then shows, so the chunks are the ones
relevant to the text the model is asked to predict. The best chunks that fit a token budget are
rendered with the model's `FimTemplate` (most relevant last) and stored as token ids, cached in
the run directory. But: it does not place them in training rows (see `codeslm.train.stream`).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from codeslm.train.shards import Corpus

MAX_GROUP_FILES = 200
MAX_QUERY_TOKENS = 4096
CACHE_NAME = "retrieval-contexts.npz"


@dataclass
class RetrievalContexts:
    """Token ids of the retrieved context of each target document (`doc_ids[i]`)."""

    doc_ids: np.ndarray  # (n,) int64 document ids
    offsets: np.ndarray  # (n + 1,) int64 into tokens
    tokens: np.ndarray  # (total,) int32
    # (n,) int64 token offset in its document of the window each context was retrieved for;
    # None when the whole file was the query.
    starts: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.doc_ids)

    def context(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]


def _groups(corpus: Corpus) -> dict[str, list[int]]:
    """Training document ids by package; a package over MAX_GROUP_FILES splits by directory."""
    documents = corpus.documents()
    by_package: dict[str, list[int]] = defaultdict(list)
    for doc_id in corpus.splits["train"].docs[:, 0].tolist():
        by_package[documents[doc_id].package].append(doc_id)
    groups: dict[str, list[int]] = {}
    for package, ids in by_package.items():
        if len(ids) <= MAX_GROUP_FILES:
            groups[package] = ids
            continue
        for doc_id in ids:
            parent = str(PurePosixPath(documents[doc_id].path).parent)
            groups.setdefault(f"{package}:{parent}", []).append(doc_id)
    return {name: ids for name, ids in groups.items() if len(ids) >= 2}


def _pick_groups(
    groups: dict[str, list[int]], pool: int, rng: np.random.Generator
) -> dict[str, list[int]]:
    """Random groups until they hold `pool` files; oversized groups keep a random sample."""
    picked: dict[str, list[int]] = {}
    total = 0
    names = sorted(groups)
    for i in rng.permutation(len(names)):
        if total >= pool:
            break
        ids = groups[names[i]]
        if len(ids) > MAX_GROUP_FILES:
            ids = sorted(rng.choice(ids, size=MAX_GROUP_FILES, replace=False).tolist())
        picked[names[i]] = ids
        total += len(ids)
    return picked


def build_retrieval_contexts(
    corpus: Corpus,
    tokenizer,
    pool: int,
    k: int,
    context_tokens: int,
    seed: int,
    progress: bool = True,
    window_tokens: int | None = None,
) -> RetrievalContexts:
    """Retrieved context for about `pool` training files: up to `k` chunks in `context_tokens`.

    With `window_tokens`, each file's query is a random window of that many of its tokens (the
    offset is kept in `starts`); without, the whole file."""
    from tqdm.auto import tqdm

    from codeslm.chunking import chunk_text
    from codeslm.index.bm25 import BM25Index
    from codeslm.index.tokenize import code_tokens
    from codeslm.model.prompt import fim_template

    template = fim_template(tokenizer)
    specials = [t for t in tokenizer.all_special_tokens if t]
    backend = tokenizer.backend_tokenizer
    rng = np.random.default_rng(seed)
    groups = _pick_groups(_groups(corpus), pool, rng)
    wanted = {i for ids in groups.values() for i in ids}
    texts = corpus.texts(wanted)
    documents = corpus.documents()
    train = corpus.splits["train"]
    spans = {int(d): (int(a), int(b)) for d, a, b in train.docs.tolist()}
    # Its own generator, so file queries draw exactly what they drew before windows existed.
    window_rng = np.random.default_rng((seed, 7))

    doc_ids: list[int] = []
    starts: list[int] = []
    contexts: list[list[int]] = []
    for name in tqdm(sorted(groups), desc="retrieval contexts", disable=not progress, unit="pkg"):
        ids = groups[name]
        chunks, owners = [], []
        for doc_id in ids:
            path = documents[doc_id].path
            for chunk in chunk_text(path, texts[doc_id]):
                # Chunks quoting special tokens would teach the model they can appear in code.
                if chunk.text.strip() and not any(s in chunk.text for s in specials):
                    chunks.append(chunk)
                    owners.append(doc_id)
        if not chunks:
            continue
        owners_arr = np.array(owners)
        blocks = [template.block(c.path, c.text) for c in chunks]
        costs = [len(e.ids) for e in backend.encode_batch(blocks, add_special_tokens=False)]
        bm25 = BM25Index.build([code_tokens(c.text) for c in chunks])
        package = documents[ids[0]].package
        header = template.context_text((), package)
        header_cost = len(backend.encode(header, add_special_tokens=False).ids)
        for doc_id in ids:
            start = -1
            if window_tokens is None:
                query_text = texts[doc_id]
            else:
                lo, hi = spans[doc_id]
                start = int(window_rng.integers(0, max(hi - lo - window_tokens, 0) + 1))
                window = np.asarray(train.tokens[lo + start : lo + start + window_tokens])
                query_text = tokenizer.decode(window.tolist())
            query = code_tokens(query_text)[:MAX_QUERY_TOKENS]
            rows, _ = bm25.search(query, k=4 * k, mask=owners_arr != doc_id)
            # Half the examples name the repository (its header counts against the budget).
            repo = package if rng.random() < 0.5 else None
            chosen, budget = [], context_tokens - (header_cost if repo else 0)
            for row in rows.tolist():
                if costs[row] <= budget:
                    chosen.append(row)
                    budget -= costs[row]
                if len(chosen) == k:
                    break
            if not chosen:
                continue
            # Most relevant last, nearest the file.
            pairs = [(chunks[r].path, chunks[r].text) for r in reversed(chosen)]
            context_ids = tokenizer(template.context_text(pairs, repo), add_special_tokens=False)["input_ids"]
            # Blocks tokenized together may merge differently at their joins than apart.
            while len(context_ids) > context_tokens and len(pairs) > 1:
                pairs = pairs[1:]
                context_ids = tokenizer(template.context_text(pairs, repo), add_special_tokens=False)["input_ids"]
            doc_ids.append(doc_id)
            starts.append(start)
            contexts.append(context_ids)

    offsets = np.zeros(len(contexts) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(c) for c in contexts])
    flat = np.fromiter((t for c in contexts for t in c), dtype=np.int32, count=int(offsets[-1]))
    starts_arr = np.array(starts, dtype=np.int64) if window_tokens is not None else None
    return RetrievalContexts(np.array(doc_ids, dtype=np.int64), offsets, flat, starts_arr)


def cached_retrieval_contexts(
    cache_dir: Path,
    corpus: Corpus,
    tokenizer,
    pool: int,
    k: int,
    context_tokens: int,
    seed: int,
    progress: bool = True,
    window_tokens: int | None = None,
) -> RetrievalContexts:
    """`build_retrieval_contexts`, computed once per corpus and settings and kept in `cache_dir`."""
    identity = {
        "version": 2,
        "manifest": hashlib.sha256((corpus.root / "manifest.json").read_bytes()).hexdigest(),
        "tokenizer": corpus.tokenizer_fingerprint(),
        "pool": pool,
        "k": k,
        "context_tokens": context_tokens,
        "seed": seed,
        "max_group_files": MAX_GROUP_FILES,
    }
    if window_tokens is not None:  # file-query caches keep their key
        identity["window_tokens"] = window_tokens
    key = json.dumps(identity, sort_keys=True)
    path = cache_dir / CACHE_NAME
    if path.is_file():
        try:
            with np.load(path) as data:
                if str(data["key"]) == key:
                    starts = data["starts"] if "starts" in data.files else None
                    return RetrievalContexts(data["doc_ids"], data["offsets"], data["tokens"], starts)
        except (OSError, ValueError, KeyError):
            pass  # an unreadable cache is rebuilt below
    contexts = build_retrieval_contexts(
        corpus, tokenizer, pool, k, context_tokens, seed, progress, window_tokens
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        key=np.array(key),
        doc_ids=contexts.doc_ids,
        offsets=contexts.offsets,
        tokens=contexts.tokens,
        **({"starts": contexts.starts} if contexts.starts is not None else {}),
    )
    tmp.replace(path)
    return contexts
