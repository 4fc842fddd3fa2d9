"""Reading rows: engine-format prompts whose retrieved context may hold the line to be written.

For held-out lines of training files, a prompt is built as the completion engine builds it
(`build_prompt`, suffix-prefix-middle, the cursor at a line start) with loss only on the line,
its line end and end of text. Its chunks are one of: the line's surroundings verbatim, or with
names and literals renamed (`codeslm.train.renames`; the file keeps its names, so the model must
adapt, not copy), or a real near-duplicate from another file of the package (a BM25 hit holding
a line within edit similarity 0.7 of the target); each alone or at a random place among BM25
chunks retrieved for the cursor; or only those ordinary chunks, which a model must learn to
judge rather than copy. Surroundings run 1 to 8 lines before and 0 to 3 after.
But: near-duplicates are searched within a package's files, not across the corpus; and rows are
placed in batches by `codeslm.train.stream`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codeslm.train.retrieval_examples import _groups, _pick_groups
from codeslm.train.shards import Corpus

KINDS = ("verbatim", "edited", "near", "ordinary")
# Share of each kind unless told; a "near" row without a near-duplicate in its package becomes
# "ordinary".
KIND_SHARES = (0.35, 0.25, 0.15, 0.25)
# The engine's cursor window and the tokens it keeps for the completion (CompletionSettings).
PREFIX_TOKENS, SUFFIX_TOKENS, NEW_TOKENS = 384, 96, 48
NEAR_SIMILARITY = 0.7
CACHE_NAME = "reading-examples.npz"


@dataclass
class ReadingExamples:
    """Token ids of each example (prompt then target) and where its target starts."""

    offsets: np.ndarray  # (n + 1,) int64 into tokens
    tokens: np.ndarray  # (total,) int32
    target_starts: np.ndarray  # (n,) int64, within the example
    kinds: np.ndarray  # (n,) int8 index into KINDS

    def __len__(self) -> int:
        return len(self.target_starts)

    def example(self, i: int) -> tuple[np.ndarray, int]:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]], int(self.target_starts[i])


def _window(tokenizer, text: str, n: int, tail: bool) -> str:
    """The last (`tail`) or first `n` tokens of `text`, cut at a line boundary in reach."""
    piece = text[-n * 8 :] if tail else text[: n * 8]
    ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
    if len(ids) <= n and len(piece) == len(text):
        return text
    if tail:
        kept = tokenizer.decode(ids[-n:])
        cut = kept.find("\n")
        return kept[cut + 1 :] if 0 <= cut < len(kept) - 1 else kept
    kept = tokenizer.decode(ids[:n])
    cut = kept.rfind("\n")
    return kept[: cut + 1] if cut > 0 else kept


def _target_rows(path: str, lines: list[str]) -> list[int]:
    """Rows a held-out-line task could pick: code lines, not comments, docstrings or imports."""
    from codeslm.eval.repo_lines import skipped_lines

    try:
        skip = skipped_lines(path, lines)
    except (ValueError, UnicodeError):
        return []
    return [i for i, line in enumerate(lines) if i not in skip and len("".join(line.split())) >= 4]


def _near_duplicate(reference: str, hits: list[str], rng: np.random.Generator) -> str | None:
    """Lines around the best line of `hits` within NEAR_SIMILARITY of `reference`, if any."""
    from rapidfuzz.distance import Levenshtein

    want = reference.strip()
    best, best_score = None, NEAR_SIMILARITY
    for text in hits:
        lines = text.splitlines(keepends=True)
        for j, line in enumerate(lines):
            score = Levenshtein.normalized_similarity(line.strip(), want)
            if score >= best_score:
                best, best_score = (lines, j), score
    if best is None:
        return None
    lines, j = best
    before, after = int(rng.integers(1, 9)), int(rng.integers(0, 4))
    return "".join(lines[max(0, j - before) : j + after + 1])


def build_reading_examples(corpus: Corpus, tokenizer, pool: int, per_file: int, seed: int,
                           seq_len: int, progress: bool = True,
                           shares: tuple[float, ...] = KIND_SHARES) -> ReadingExamples:
    """About `pool` training files' worth of reading examples, `per_file` lines each, every one
    fitting a row of `seq_len + 1` tokens, of each kind at its share of `shares`."""
    from tqdm.auto import tqdm

    from codeslm.chunking import chunk_text
    from codeslm.index.bm25 import BM25Index
    from codeslm.index.tokenize import code_tokens
    from codeslm.model.prompt import build_prompt, fim_template
    from codeslm.train.renames import rename_code

    template = fim_template(tokenizer)
    specials = [t for t in tokenizer.all_special_tokens if t]
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    max_prompt = seq_len - NEW_TOKENS
    p_kind = np.asarray(shares, dtype=np.float64) / sum(shares)
    rng = np.random.default_rng((seed, 11))
    groups = _pick_groups(_groups(corpus), pool, rng)
    wanted = {i for ids in groups.values() for i in ids}
    texts = corpus.texts(wanted)
    documents = corpus.documents()

    examples: list[np.ndarray] = []
    starts: list[int] = []
    kinds: list[int] = []
    for name in tqdm(sorted(groups), desc="reading examples", disable=not progress, unit="pkg"):
        ids = [i for i in groups[name] if not any(s in texts[i] for s in specials)]
        chunks, owners = [], []
        for doc_id in ids:
            for chunk in chunk_text(documents[doc_id].path, texts[doc_id]):
                if chunk.text.strip():
                    chunks.append(chunk)
                    owners.append(doc_id)
        if len(set(owners)) < 2:
            continue
        owners_arr = np.array(owners)
        bm25 = BM25Index.build([code_tokens(c.text) for c in chunks])
        package = documents[ids[0]].package
        for doc_id in ids:
            path = documents[doc_id].path
            lines = texts[doc_id].splitlines(keepends=True)
            rows = _target_rows(path, lines)
            if not rows:
                continue
            others = [documents[d].path for d in ids if d != doc_id]
            for i in sorted(rng.choice(rows, size=min(per_file, len(rows)), replace=False).tolist()):
                reference = lines[i].rstrip("\r\n")
                prefix, suffix = "".join(lines[:i]), "".join(lines[i + 1 :])
                query = "\n".join(prefix.split("\n")[-10:]) + "\n" + suffix.split("\n", 1)[0]
                mask = owners_arr != doc_id
                found, _ = bm25.search(code_tokens(query), k=8, mask=mask)
                kind = int(rng.choice(len(KINDS), p=p_kind))
                before, after = int(rng.integers(1, 9)), int(rng.integers(0, 4))
                lo = max(0, i - before)
                useful = "".join(lines[lo : i + after + 1])
                if kind == 1:
                    useful = rename_code(useful, rng, visible_lines=i - lo, name_rate=0.7,
                                         literal_rate=0.5).text
                elif kind == 2:
                    near, _ = bm25.search(code_tokens(useful), k=8, mask=mask)
                    useful = _near_duplicate(reference, [chunks[r].text for r in near.tolist()], rng)
                    if useful is None:
                        kind = 3
                n_other = int(rng.integers(1, 5)) if kind == 3 else int(rng.integers(0, 4))
                # Cut, so that a useful chunk among them keeps its place in the prompt.
                context = [(chunks[r].path, "".join(chunks[r].text.splitlines(keepends=True)
                                                    [: int(rng.integers(3, 13))]))
                           for r in found.tolist()[:n_other]]
                context = [c for c in context if not any(s in c[1] for s in specials)]
                useful_block = None
                if kind != 3:
                    where = others[int(rng.integers(0, len(others)))]
                    context.insert(int(rng.integers(0, len(context) + 1)), (where, useful))
                    useful_block = template.block(where, useful)
                repo = package if rng.random() < 0.8 else None
                before_text = _window(tokenizer, prefix, PREFIX_TOKENS, tail=True)
                after_text = _window(tokenizer, suffix, SUFFIX_TOKENS, tail=False)
                while True:
                    prompt = build_prompt(tokenizer, before_text, after_text, context, repo,
                                          max_tokens=max_prompt)
                    if useful_block is None or useful_block in prompt or len(context) == 1:
                        break
                    # The prompt cut the useful chunk: leave out a distractor and build again.
                    drop = [j for j, c in enumerate(context) if c[1] is not useful]
                    context.pop(drop[int(rng.integers(0, len(drop)))])
                if useful_block is not None and useful_block not in prompt:
                    continue
                head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
                target = tokenizer(reference + "\n", add_special_tokens=False)["input_ids"] + [eot]
                if len(head) + len(target) > seq_len + 1:
                    continue
                examples.append(np.array(head + target, dtype=np.int32))
                starts.append(len(head))
                kinds.append(kind)

    offsets = np.zeros(len(examples) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(e) for e in examples])
    flat = np.concatenate(examples) if examples else np.zeros(0, dtype=np.int32)
    return ReadingExamples(offsets, flat, np.array(starts, dtype=np.int64),
                           np.array(kinds, dtype=np.int8))


def cached_reading_examples(cache_dir: Path, corpus: Corpus, tokenizer, pool: int, per_file: int,
                            seed: int, seq_len: int, progress: bool = True,
                            shares: tuple[float, ...] = KIND_SHARES) -> ReadingExamples:
    """`build_reading_examples`, computed once per corpus and settings and kept in `cache_dir`."""
    key = json.dumps({
        "version": 1,
        "manifest": hashlib.sha256((corpus.root / "manifest.json").read_bytes()).hexdigest(),
        "tokenizer": corpus.tokenizer_fingerprint(), "pool": pool, "per_file": per_file,
        "seed": seed, "seq_len": seq_len, "shares": list(shares),
    }, sort_keys=True)
    path = cache_dir / CACHE_NAME
    if path.is_file():
        try:
            with np.load(path) as data:
                if str(data["key"]) == key:
                    return ReadingExamples(data["offsets"], data["tokens"], data["target_starts"],
                                           data["kinds"])
        except (OSError, ValueError, KeyError):
            pass  # an unreadable cache is rebuilt below
    examples = build_reading_examples(corpus, tokenizer, pool, per_file, seed, seq_len, progress,
                                      shares)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, key=np.array(key), offsets=examples.offsets, tokens=examples.tokens,
             target_starts=examples.target_starts, kinds=examples.kinds)
    tmp.replace(path)
    return examples
