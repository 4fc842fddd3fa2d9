"""The on-disk index of a repository: chunk metadata, BM25, and FAISS dense embeddings.

`build_index` writes or incrementally updates one; `Index.open` searches one.
"""

from codeslm.index.build import IndexSummary, build_index, default_index_dir
from codeslm.index.search import MODES, Hit, Index

__all__ = ["MODES", "Hit", "Index", "IndexSummary", "build_index", "default_index_dir"]
