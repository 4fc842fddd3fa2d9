"""Token-level kNN-LM datastore: the model's hidden state at every token of a repository (key)
and the token that follows it (value), searched with FAISS at generation time.

`p = λ'·p_kNN + (1-λ')·p_LM`, with `p_kNN` a softmax over negative squared distances of the k
nearest keys (temperature: a quarter of the datastore's typical nearest-key distance, `scale`)
and `λ' = λ·exp(-d_min / scale)` shrinking as the nearest key lies farther than is usual in this
datastore (Khandelwal et al., 2020, with a distance-adaptive weight). A datastore remembers the
fingerprint of the model that built it and refuses any other. Each entry remembers its file and
line, so a completion can leave out its own file from the cursor on (the text it must not see).
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

FORMAT_VERSION = 2  # 2: per-entry file and line
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


@torch.inference_mode()
def hidden_states(model, ids: list[int], window: int) -> np.ndarray:
    """Final-layer hidden state at each position of `ids` (N, d), in overlapping windows."""
    device = next(model.parameters()).device
    out = np.zeros((len(ids), model.config.hidden_size), dtype=np.float32)
    stride = max(window // 2, 1)
    start = 0
    while True:
        chunk = ids[start : start + window]
        states = model(input_ids=torch.tensor([chunk], device=device), output_hidden_states=True)
        h = states.hidden_states[-1][0].float().cpu().numpy()
        # Later windows only fill positions earlier ones saw with less than half a window.
        skip = 0 if start == 0 else window - stride
        out[start + skip : start + len(chunk)] = h[skip:]
        if start + window >= len(ids):
            return out
        start += stride


class KnnDatastore:
    """Keys (hidden states) and values (next tokens) of a repository, for one model."""

    def __init__(self, index, values: np.ndarray, meta: dict, lines: np.ndarray, k: int = 16):
        self.index = index
        self.values = values
        self.meta = meta
        self.lines = lines  # 1-based line of each entry's next token in its file
        self.k = k
        self.scale = float(meta["distance_scale"])
        self.file_of = {path: i for i, path in enumerate(meta["paths"])}
        self.file_starts = np.asarray(meta["file_starts"], dtype=np.int64)  # first entry per file
        self._params = _search_params(index)

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
              progress: bool = True) -> KnnDatastore:
        """A datastore over `files` (`(path, text)`), each read as `<file_sep>PATH\\nTEXT`."""
        import faiss
        from tqdm.auto import tqdm

        from codeslm.model.prompt import fim_template

        template = fim_template(tokenizer)
        window = min(getattr(model.config, "max_position_embeddings", 1024), 1024)
        keys, values, lines, paths, starts, total = [], [], [], [], [], 0
        for path, text in tqdm(files, desc="kNN datastore", unit="file", disable=not progress):
            block = template.block(path, text)
            encoded = tokenizer(block, add_special_tokens=False, return_offsets_mapping=True)
            ids = encoded["input_ids"]
            if len(ids) < 2 or total >= max_tokens:
                continue
            ids = ids[: max_tokens - total + 1]
            keys.append(hidden_states(model, ids, window)[:-1])
            values.append(np.asarray(ids[1:], dtype=np.int32))
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
        }
        return cls(index, values_arr, meta, np.concatenate(lines))

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

    @classmethod
    def load(cls, index_dir: Path, model) -> KnnDatastore:
        """The datastore of `index_dir`; `ModelError` if it is missing or `model` did not build it."""
        import faiss

        where = Path(index_dir) / KNN_DIR
        if not cls.exists(index_dir):
            raise ModelError(
                f"{index_dir} has no kNN datastore; build one with `codeslm index REPO --knn`"
            )
        try:
            meta = json.loads((where / "knn.json").read_text())
            index = faiss.read_index(str(where / "keys.faiss"))
            values = np.load(where / "values.npy")
            lines = np.load(where / "lines.npy")
        except (OSError, ValueError, RuntimeError) as e:
            raise ModelError(f"the kNN datastore in {where} is corrupt ({e}); rebuild it with --knn") from e
        if meta.get("format_version") != FORMAT_VERSION:
            raise ModelError(f"the kNN datastore in {where} has an unknown format; rebuild it with --knn")
        if meta["model_fingerprint"] != model_fingerprint(model):
            raise ModelError(
                f"the kNN datastore in {where} was built by another model "
                f"(fingerprint {meta['model_fingerprint']}); its keys mean nothing to this one: "
                "rebuild it with `codeslm index REPO --knn --model DIR` for this model"
            )
        if not len(values) == len(lines) == index.ntotal:
            raise ModelError(f"the kNN datastore in {where} is corrupt (keys, values and lines differ in count)")
        return cls(index, values, meta, lines)

    def distribution(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """`(next tokens of the k nearest keys, their softmax weights, the nearest distance)`."""
        query = hidden.detach().float().cpu().numpy().reshape(1, -1)
        if self._params is not None:
            dist, rows = self.index.search(query, self.k, params=self._params)
        else:
            dist, rows = self.index.search(query, self.k)
        keep = rows[0] >= 0
        dist, rows = dist[0][keep], rows[0][keep]
        # A key at the typical nearest distance weighs e^-4 (1/55) of an exact match.
        weights = torch.softmax(torch.from_numpy(-dist / (0.25 * self.scale)), dim=0)
        return torch.from_numpy(self.values[rows].astype(np.int64)), weights, float(dist.min())

    def interpolate(self, log_probs: torch.Tensor, hidden: torch.Tensor, lam: float) -> torch.Tensor:
        """`log(λ'·p_kNN + (1-λ')·p_LM)` for the model's `log_probs` (V,) at `hidden` (d,)."""
        tokens, weights, nearest = self.distribution(hidden)
        if len(tokens) == 0:
            return log_probs
        lam = lam * float(np.exp(-nearest / self.scale))
        p_knn = torch.zeros_like(log_probs).index_add_(0, tokens, weights.to(log_probs.dtype))
        return torch.log(lam * p_knn + (1 - lam) * log_probs.exp() + 1e-30)


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


def build_index_datastore(index_dir: str | Path, model_dir: str | Path | None = None, *,
                          loaded: tuple | None = None, max_tokens: int = 2_000_000,
                          device: str = "auto", progress: bool = True) -> KnnDatastore:
    """Build and save the datastore of the index in `index_dir` with a model (default: ours), or
    with an already loaded `(model, tokenizer)`."""
    from codeslm.index import Index
    from codeslm.model.loading import load_model

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
    model, tokenizer = loaded or load_model(model_dir, device=device)
    store = KnnDatastore.build(model, tokenizer, files, max_tokens=max_tokens, progress=progress)
    store.save(Path(index_dir))
    return store
