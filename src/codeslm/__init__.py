"""codeslm: a retrieval-augmented tiny code model.

Knowledge lives in an index a user can rebuild and inspect (tree-sitter chunks, BM25, FAISS);
the weights of a small causal LM only have to read, copy, adapt and complete.
"""

__version__ = "0.1.0"
