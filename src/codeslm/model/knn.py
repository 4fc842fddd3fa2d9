"""Token-level kNN-LM datastore: the model's hidden state at every token of a repository (key)
and the token that follows it (value), searched with FAISS at generation time.

`p = λ'·p_kNN + (1-λ')·p_LM`, with `p_kNN` a softmax over negative squared distances of the k
nearest keys (temperature: a quarter of the datastore's typical nearest-key distance, `scale`)
and `λ' = λ·exp(-d_min / scale)` shrinking as the nearest key lies farther than is usual in this
datastore (Khandelwal et al., 2020, with a distance-adaptive weight). A datastore remembers the
fingerprint of the model that built it and refuses any other. Each entry remembers its file and
line, so a completion can leave out its own file from the cursor on (the text it must not see).

A store may also hold a teacher's view (soft labels, as in ReAugKD): a second causal LM with the
student's tokenizer, run over the same text, gives each entry its top-k next-token log-probs.
An entry's value is then `(1-s)·onehot(next token) + s·q`, with `q` the teacher's top-k
renormalized and `s` the teacher's share (1: the teacher's distribution replaces the one-hot).
The keys stay the student's, so the teacher's knowledge is found where the student's state is.
But: it does not decode (see `codeslm.complete.decode`) or walk repositories (see `codeslm.index`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from codeslm.errors import ModelError
from codeslm.index.manifest import KNN_DIR

FORMAT_VERSION = 3  # 2: per-entry file and line; 3: optional teacher top-k values
READABLE_VERSIONS = (2, FORMAT_VERSION)  # a format-2 store is a store without a teacher
# Up to this many keys: an HNSW graph over the exact keys (a search per generated token takes
# about 0.1 ms where an exhaustive one over 150,000 keys took 6 ms). Above: keys scalar-quantized
# (8 bits) in IVF lists.
GRAPH_LIMIT = 200_000
HNSW_NEIGHBOURS = 32
HNSW_EF_SEARCH = 64  # candidates a search keeps: recall of the 16 nearest about 0.98


def model_fingerprint(model) -> str:
    """A digest of the model's config and a sample of every weight tensor (fast, shape-exact)."""
    h = hashlib.sha256()
    config = model.config.to_dict()
    h.update(json.dumps({k: config[k] for k in sorted(config) if not k.startswith("_")},
                        sort_keys=True, default=str).encode())
    for name, p in sorted(model.state_dict().items()):
        flat = p.detach().reshape(-1)
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(flat[:2048].float().cpu().numpy().tobytes())
        h.update(flat[-2048:].float().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


def _windows(n: int, window: int):
    """`(start, skip, end)` of each overlapping window over `n` positions: the window reads
    `[start, end)` and fills `[start + skip, end)`.

    Later windows only fill positions earlier ones saw with less than half a window, so every
    position but the first few has at least half a window of context.
    """
    stride = max(window // 2, 1)
    start = 0
    while True:
        yield start, 0 if start == 0 else window - stride, min(start + window, n)
        if start + window >= n:
            return
        start += stride


def _window(model) -> int:
    """The longest window of tokens a datastore build runs `model` over at once."""
    return min(getattr(model.config, "max_position_embeddings", 1024), 1024)


@torch.inference_mode()
def hidden_states(model, ids: list[int], window: int) -> np.ndarray:
    """Final-layer hidden state at each position of `ids` (N, d), in overlapping windows."""
    device = next(model.parameters()).device
    out = np.zeros((len(ids), model.config.hidden_size), dtype=np.float32)
    for start, skip, end in _windows(len(ids), window):
        states = model(input_ids=torch.tensor([ids[start:end]], device=device), output_hidden_states=True)
        out[start + skip : end] = states.hidden_states[-1][0, skip:].float().cpu().numpy()
    return out


@torch.inference_mode()
def top_k_logprobs(model, ids: list[int], window: int, k: int,
                   vocab: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`(ids (N, k) int32, log-probs (N, k) float32)`: `model`'s `k` likeliest tokens at position
    `i + 1` of `ids` for each position `i`, best first, in the windows `hidden_states` uses.

    `vocab` limits the choice to the first `vocab` ids (a model's embedding table may be padded
    past its tokenizer's last token); the log-probs are still over the model's whole vocabulary.
    """
    device = next(model.parameters()).device
    out_ids = np.zeros((len(ids), k), dtype=np.int32)
    out_logprobs = np.zeros((len(ids), k), dtype=np.float32)
    for start, skip, end in _windows(len(ids), window):
        logits = model(input_ids=torch.tensor([ids[start:end]], device=device)).logits[0, skip:]
        log_probs = torch.log_softmax(logits.float(), dim=-1)[:, :vocab]
        top_logprobs, top = log_probs.topk(k, dim=-1)
        out_ids[start + skip : end] = top.cpu().numpy()
        out_logprobs[start + skip : end] = top_logprobs.cpu().numpy()
    return out_ids, out_logprobs


class KnnDatastore:
    """Keys (hidden states) and values (next tokens, and optionally a teacher's top-k next-token
    log-probs) of a repository, for one model."""

    def __init__(self, index, values: np.ndarray, meta: dict, lines: np.ndarray, k: int = 16,
                 teacher_ids: np.ndarray | None = None, teacher_logprobs: np.ndarray | None = None):
        self.index = index
        self.values = values
        self.meta = meta
        self.lines = lines  # 1-based line of each entry's next token in its file
        self.k = k
        self.teacher_ids = teacher_ids  # (N, top_k) int32, the teacher's likeliest next tokens
        self.teacher_logprobs = teacher_logprobs  # (N, top_k) float16, their log-probs
        teacher = meta.get("teacher")
        self.teacher_share = float(teacher["share"]) if teacher else 0.0
        self.scale = float(meta["distance_scale"])
        self.file_of = {path: i for i, path in enumerate(meta["paths"])}
        self.file_starts = np.asarray(meta["file_starts"], dtype=np.int64)  # first entry per file
        self._params = _search_params(index)

    @property
    def teacher_share(self) -> float:
        """Share `s` of the teacher's distribution in each entry's value (0: the one-hot only)."""
        return self._teacher_share

    @teacher_share.setter
    def teacher_share(self, share: float) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"teacher_share must lie in [0, 1], not {share}")
        self._teacher_share = float(share)

    def exclude_after(self, path: str, line: int) -> None:
        """Leave out `path`'s entries from 1-based `line` on (its text at and after a cursor).

        Entries are stored file by file in line order, so that is one range of ids. An unknown
        path (or an empty one) clears the exclusion.
        """
        import faiss

        self._params = _search_params(self.index)
        f = self.file_of.get(path)
        if f is None:
            return
        start = int(self.file_starts[f])
        end = int(self.file_starts[f + 1]) if f + 1 < len(self.file_starts) else len(self.values)
        lo = start + int(np.searchsorted(self.lines[start:end], line, side="left"))
        if lo >= end:
            return
        # The selectors are kept on self: FAISS holds raw pointers to them.
        self._range = faiss.IDSelectorRange(lo, end)
        self._not = faiss.IDSelectorNot(self._range)
        self._params = _search_params(self.index, self._not)

    @classmethod
    def build(cls, model, tokenizer, files: list[tuple[str, str]], *, max_tokens: int = 2_000_000,
              progress: bool = True, teacher: tuple | None = None, teacher_top_k: int = 8,
              teacher_share: float = 0.5) -> KnnDatastore:
        """A datastore over `files` (`(path, text)`), each read as `<file_sep>PATH\\nTEXT`.

        `teacher` (`(model, tokenizer, name)`) adds its `teacher_top_k` likeliest next tokens at
        every entry, weighed `teacher_share` against the one-hot next token by default.
        """
        import faiss
        from tqdm.auto import tqdm

        from codeslm.model.prompt import fim_template

        if teacher_top_k < 1:
            raise ValueError(f"teacher_top_k must be at least 1, not {teacher_top_k}")
        if not 0.0 <= teacher_share <= 1.0:
            raise ValueError(f"teacher_share must lie in [0, 1], not {teacher_share}")
        if teacher is not None:
            _check_shared_tokenizer(tokenizer, teacher[1], teacher[2])
            teacher_top_k = min(teacher_top_k, len(tokenizer))
        template = fim_template(tokenizer)
        window = _window(model)
        keys, values, lines, paths, starts, total = [], [], [], [], [], 0
        top_ids, top_logprobs = [], []
        for path, text in tqdm(files, desc="kNN datastore", unit="file", disable=not progress):
            block = template.block(path, text)
            encoded = tokenizer(block, add_special_tokens=False, return_offsets_mapping=True)
            ids = encoded["input_ids"]
            if len(ids) < 2 or total >= max_tokens:
                continue
            ids = ids[: max_tokens - total + 1]
            keys.append(hidden_states(model, ids, window)[:-1])
            values.append(np.asarray(ids[1:], dtype=np.int32))
            if teacher is not None:
                t_ids, t_logprobs = top_k_logprobs(teacher[0], ids, _window(teacher[0]), teacher_top_k,
                                                   vocab=len(tokenizer))
                top_ids.append(t_ids[:-1])
                top_logprobs.append(t_logprobs[:-1].astype(np.float16))
            lines.append(_token_lines(block, len(block) - len(text), encoded["offset_mapping"][1 : len(ids)]))
            paths.append(path)
            starts.append(total)
            total += len(ids) - 1
        if not keys:
            raise ModelError("no code to build a kNN datastore from")
        keys_arr = np.ascontiguousarray(np.concatenate(keys))
        values_arr = np.concatenate(values)
        d = keys_arr.shape[1]
        threads = faiss.omp_get_max_threads()
        if len(keys_arr) > GRAPH_LIMIT:
            nlist = int(4 * np.sqrt(len(keys_arr)))
            index = faiss.index_factory(d, f"IVF{nlist},SQ8")
            index.train(keys_arr[np.random.default_rng(0).permutation(len(keys_arr))[: 64 * nlist]])
            index.nprobe = 8
        else:
            index = faiss.IndexHNSWFlat(d, HNSW_NEIGHBOURS)
            faiss.omp_set_num_threads(1)  # one thread builds the same graph every time
        try:
            index.add(keys_arr)
        finally:
            faiss.omp_set_num_threads(threads)
        meta = {
            "format_version": FORMAT_VERSION,
            "model_fingerprint": model_fingerprint(model),
            "model_type": model.config.model_type,
            "dim": d,
            "entries": int(len(keys_arr)),
            "files": len(files),
            "paths": paths,
            "file_starts": starts,
            "distance_scale": _distance_scale(index, keys_arr),
            "teacher": None if teacher is None else {
                "name": teacher[2], "fingerprint": model_fingerprint(teacher[0]),
                "top_k": teacher_top_k, "share": teacher_share,
            },
        }
        if teacher is None:
            return cls(index, values_arr, meta, np.concatenate(lines))
        return cls(index, values_arr, meta, np.concatenate(lines),
                   teacher_ids=np.concatenate(top_ids), teacher_logprobs=np.concatenate(top_logprobs))

    def save(self, index_dir: Path) -> Path:
        """Write under `index_dir/knn/`, replacing any previous datastore only once complete."""
        import faiss

        final = Path(index_dir) / KNN_DIR
        tmp = Path(index_dir) / f".{KNN_DIR}-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        faiss.write_index(self.index, str(tmp / "keys.faiss"))
        np.save(tmp / "values.npy", self.values)
        np.save(tmp / "lines.npy", self.lines)
        if self.teacher_ids is not None:
            np.save(tmp / "teacher_ids.npy", self.teacher_ids)
            np.save(tmp / "teacher_logprobs.npy", self.teacher_logprobs)
        (tmp / "knn.json").write_text(json.dumps(self.meta, indent=2, sort_keys=True))
        old = Path(index_dir) / f".{KNN_DIR}-old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        return final

    @staticmethod
    def exists(index_dir: str | Path) -> bool:
        """Whether `index_dir` holds a datastore (of whatever model)."""
        return (Path(index_dir) / KNN_DIR / "knn.json").is_file()

    @staticmethod
    def describe(index_dir: str | Path) -> dict | None:
        """What `index_dir`'s datastore says of itself (`knn.json`: the student's fingerprint, the
        teacher or None, counts), without loading its index; None when it has none."""
        where = Path(index_dir) / KNN_DIR / "knn.json"
        if not where.is_file():
            return None
        try:
            meta = json.loads(where.read_text())
        except (OSError, ValueError) as e:
            raise ModelError(f"the kNN datastore's {where} is unreadable ({e}); rebuild it with --knn") from e
        if not isinstance(meta, dict):
            raise ModelError(f"the kNN datastore's {where} is not a JSON object; rebuild it with --knn")
        meta.setdefault("teacher", None)  # format 2 predates teachers
        return meta

    @classmethod
    def load(cls, index_dir: Path, model) -> KnnDatastore:
        """The datastore of `index_dir`; `ModelError` if it is missing or `model` did not build it."""
        import faiss

        where = Path(index_dir) / KNN_DIR
        if not cls.exists(index_dir):
            raise ModelError(
                f"{index_dir} has no kNN datastore; build one with `codeslm index REPO --knn`"
            )
        meta = cls.describe(index_dir)
        if meta.get("format_version") not in READABLE_VERSIONS:
            raise ModelError(f"the kNN datastore in {where} has an unknown format; rebuild it with --knn")
        try:
            index = faiss.read_index(str(where / "keys.faiss"))
            values = np.load(where / "values.npy")
            lines = np.load(where / "lines.npy")
            teacher_ids, teacher_logprobs = _load_teacher_values(where, meta)
        except (OSError, ValueError, RuntimeError) as e:
            raise ModelError(f"the kNN datastore in {where} is corrupt ({e}); rebuild it with --knn") from e
        if meta["model_fingerprint"] != model_fingerprint(model):
            raise ModelError(
                f"the kNN datastore in {where} was built by another model "
                f"(fingerprint {meta['model_fingerprint']}); its keys mean nothing to this one: "
                "rebuild it with `codeslm index REPO --knn --model DIR` for this model"
            )
        if not len(values) == len(lines) == index.ntotal:
            raise ModelError(f"the kNN datastore in {where} is corrupt (keys, values and lines differ in count)")
        if teacher_ids is not None:
            shape = (len(values), int(meta["teacher"]["top_k"]))
            if not teacher_ids.shape == teacher_logprobs.shape == shape:
                raise ModelError(f"the kNN datastore in {where} is corrupt (its teacher values are "
                                 f"{teacher_ids.shape} and {teacher_logprobs.shape}, not {shape}); "
                                 "rebuild it with --knn")
            if len(teacher_ids) and not 0 <= teacher_ids.min() <= teacher_ids.max() < model.config.vocab_size:
                raise ModelError(f"the kNN datastore in {where} is corrupt (teacher token ids outside "
                                 "the model's vocabulary); rebuild it with --knn")
        return cls(index, values, meta, lines, teacher_ids=teacher_ids, teacher_logprobs=teacher_logprobs)

    def distribution(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """`(tokens, their masses, the nearest distance)`: `p_kNN` of the k nearest keys as pairs
        whose masses sum to 1 (a token may repeat).

        Without a teacher: each neighbour's next token at its softmax weight. With one, a
        neighbour's weight `w` is split: `(1-s)·w` on its next token, `s·w·q` on the teacher's
        top-k tokens (`q` renormalized over them).
        """
        query = hidden.detach().float().cpu().numpy().reshape(1, -1)
        if self._params is not None:
            dist, rows = self.index.search(query, self.k, params=self._params)
        else:
            dist, rows = self.index.search(query, self.k)
        keep = rows[0] >= 0
        dist, rows = dist[0][keep], rows[0][keep]
        # A key at the typical nearest distance weighs e^-4 (1/55) of an exact match.
        weights = torch.softmax(torch.from_numpy(-dist / (0.25 * self.scale)), dim=0)
        tokens = torch.from_numpy(self.values[rows].astype(np.int64))
        nearest = float(dist.min()) if len(dist) else float("inf")  # every neighbour left out
        if self.teacher_ids is None or len(rows) == 0:
            return tokens, weights, nearest
        share = self.teacher_share
        q = torch.softmax(torch.from_numpy(self.teacher_logprobs[rows].astype(np.float32)), dim=-1)  # (k, top_k)
        tokens = torch.cat([tokens, torch.from_numpy(self.teacher_ids[rows].reshape(-1).astype(np.int64))])
        masses = torch.cat([(1 - share) * weights, (share * weights[:, None] * q).reshape(-1)])
        return tokens, masses, nearest

    def interpolate(self, log_probs: torch.Tensor, hidden: torch.Tensor, lam: float) -> torch.Tensor:
        """`log(λ'·p_kNN + (1-λ')·p_LM)` for the model's `log_probs` (V,) at `hidden` (d,)."""
        tokens, weights, nearest = self.distribution(hidden)
        if len(tokens) == 0:
            return log_probs
        lam = lam * float(np.exp(-nearest / self.scale))
        p_knn = torch.zeros_like(log_probs).index_add_(0, tokens, weights.to(log_probs.dtype))
        return torch.log(lam * p_knn + (1 - lam) * log_probs.exp() + 1e-30)


def _check_shared_tokenizer(tokenizer, teacher_tokenizer, teacher_name: str) -> None:
    """Refuse a teacher whose token ids mean other strings than the student's."""
    vocab, teacher_vocab = tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if vocab != teacher_vocab:
        shared = sum(teacher_vocab.get(t) == i for t, i in vocab.items())
        raise ModelError(
            f"the teacher {teacher_name} has another tokenizer than the student ({len(teacher_vocab)} "
            f"tokens against {len(vocab)}, {shared} the same with the same id): token-level transfer "
            "needs a shared tokenizer (text transfer does not)"
        )


def _load_teacher_values(where: Path, meta: dict) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The teacher arrays of the datastore in `where`: both or neither, as its meta says."""
    files = (where / "teacher_ids.npy", where / "teacher_logprobs.npy")
    described = meta.get("teacher") is not None
    if [f.is_file() for f in files] != [described, described]:
        raise ValueError("its teacher files and knn.json disagree on whether it has a teacher")
    if not described:
        return None, None
    return np.load(files[0]), np.load(files[1])


def _search_params(index, selector=None):
    """FAISS search parameters for `index`'s kind, leaving out what `selector` excludes (None:
    nothing to set, for an exhaustive index searched over every key)."""
    import faiss

    if hasattr(index, "nprobe"):
        return faiss.SearchParametersIVF(sel=selector, nprobe=index.nprobe)
    if hasattr(index, "hnsw"):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=HNSW_EF_SEARCH)
    return None if selector is None else faiss.SearchParameters(sel=selector)


def _token_lines(block: str, text_start: int, offsets) -> np.ndarray:
    """1-based line in the file of each token's last character (0 for the block's header).

    The last character decides, so a token that runs into a line (a newline and its
    indentation) counts as part of it.
    """
    chars = np.frombuffer(block.encode("utf-32-le"), dtype=np.uint32)
    newlines = np.flatnonzero(chars == ord("\n"))
    newlines = newlines[newlines >= text_start]
    ends = np.array([max(end - 1, start) for start, end in offsets], dtype=np.int64)
    lines = np.searchsorted(newlines, ends, side="left") + 1
    return np.where(ends < text_start, 0, lines).astype(np.int32)


def _distance_scale(index, keys: np.ndarray) -> float:
    """Median distance from a key to its nearest other key: what "near" means here.

    Repeated text gives keys at distance 0; those say nothing about the spread and are skipped.
    """
    rng = np.random.default_rng(0)
    sample = keys[rng.permutation(len(keys))[:512]]
    dist, _ = index.search(sample, 2)
    apart = dist[:, 1][dist[:, 1] > 1e-6]
    return float(np.median(apart)) if len(apart) else 1.0


def index_code_files(index_dir: str | Path) -> list[tuple[str, str]]:
    """`(path, text)` of the code files an index holds, read from its repository as they are now."""
    from codeslm.index import Index

    index = Index.open(index_dir)
    try:
        repo = Path(index.manifest.repo)
        paths = sorted(p for p, rec in index.store.files().items() if rec.language not in ("markdown", "rst", "text"))
    finally:
        index.close()
    files = []
    for path in paths:
        try:
            files.append((path, (repo / path).read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError):
            continue  # deleted or rewritten since indexing; the next `codeslm index` catches up
    return files


def build_index_datastore(index_dir: str | Path, model_dir: str | Path | None = None, *,
                          loaded: tuple | None = None, max_tokens: int = 2_000_000,
                          device: str = "auto", progress: bool = True,
                          teacher_dir: str | Path | None = None, teacher_loaded: tuple | None = None,
                          teacher_top_k: int = 8, teacher_share: float = 0.5) -> KnnDatastore:
    """Build and save the datastore of the index in `index_dir` with a model (default: ours), or
    with an already loaded `(model, tokenizer)`; with the teacher in `teacher_dir` (named after
    the directory: "default-model" for the shipped one) or an already loaded
    `(model, tokenizer, name)`, each entry also holds the teacher's top-k next tokens."""
    from codeslm.model.loading import load_model

    files = index_code_files(index_dir)
    model, tokenizer = loaded or load_model(model_dir, device=device)
    teacher = teacher_loaded
    if teacher is None and teacher_dir is not None:
        teacher = (*load_model(teacher_dir, device=device), Path(teacher_dir).resolve().name)
    store = KnnDatastore.build(model, tokenizer, files, max_tokens=max_tokens, progress=progress,
                               teacher=teacher, teacher_top_k=teacher_top_k, teacher_share=teacher_share)
    store.save(Path(index_dir))
    return store
