"""Near-duplicate detection for corpus files: MinHash signatures over word 5-grams, LSH lookup.

`signature` runs in worker processes (pure function of the text's word hashes); `NearDuplicates`
keeps the LSH index of the files kept so far and answers "is this one close to any of them".
But: exact duplicates are caught earlier by content hash, in the corpus builder.
"""

from __future__ import annotations

import numpy as np
from datasketch import MinHash, MinHashLSH

from codeslm.errors import CorpusError
from codeslm.train.decontaminate import window_hashes

SHINGLE = 5
NUM_PERM = 128
_SCHEME = "affine32"


def _identity(value: int) -> int:
    return value


def signature(hashes: np.ndarray, seed: int = 1, num_perm: int = NUM_PERM) -> np.ndarray:
    """MinHash signature (uint32 array of `num_perm`) of the word 5-gram set of a file."""
    windows = window_hashes(hashes, min(SHINGLE, max(len(hashes), 1)))
    shingles = np.unique(((windows >> np.uint64(32)) ^ windows) & np.uint64(0xFFFFFFFF))
    minhash = MinHash(num_perm=num_perm, seed=seed, hashfunc=_identity, scheme=_SCHEME)
    # Batches bound the (shingles x num_perm) temporary for very large files.
    for start in range(0, len(shingles), 8192):
        minhash.update_batch(shingles[start : start + 8192].tolist())
    return minhash.hashvalues


class NearDuplicates:
    """LSH index of kept files' signatures at a Jaccard `threshold`."""

    def __init__(self, threshold: float = 0.8, seed: int = 1, num_perm: int = NUM_PERM):
        if not 0.0 < threshold < 1.0:
            raise CorpusError(f"near-duplicate threshold must be between 0 and 1, got {threshold}")
        self.seed = seed
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)

    def _minhash(self, hashvalues: np.ndarray) -> MinHash:
        return MinHash(seed=self.seed, hashvalues=hashvalues, scheme=_SCHEME)

    def find(self, hashvalues: np.ndarray) -> list:
        """Keys of kept files whose signatures collide with this one's in the LSH bands."""
        return self.lsh.query(self._minhash(hashvalues))

    def add(self, key, hashvalues: np.ndarray) -> None:
        self.lsh.insert(key, self._minhash(hashvalues))
