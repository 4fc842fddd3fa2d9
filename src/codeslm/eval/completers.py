"""Completers: callables `complete(example) -> str` that benchmarks score.

`ModelCompleter` prompts any local HF causal LM (FIM when the example has a suffix) and samples
reproducibly: the seed of each call follows from the run's seed, the example and how many
samples that example already had. `RetrievalCompleter` adds chunks retrieved from a repository
index around the cursor, never the cursor's own chunk or anything after it.
But: model-free baselines live with their benchmark (see `codeslm.eval.repo_lines`).
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import replace
from pathlib import Path

from codeslm.eval.tasks import Example

QUERY_LINES = 20  # lines before the cursor used as the retrieval query


class ModelCompleter:
    """Complete examples with a model directory (`None`: the checkpoint shipped with codeslm)."""

    def __init__(self, model_dir: str | Path | None = None, *, device: str = "auto",
                 max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0, max_prompt_tokens: int = 1024, stop: tuple[str, ...] = (),
                 repo_name: str | None = None):
        from codeslm.model.loading import default_model_dir, load_model
        from codeslm.model.prompt import position_limit, prompt_budget

        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        self.model, self.tokenizer = load_model(self.model_dir, device=device)
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        # The prompt stays within the positions the model was trained on, leaving room for a
        # completion of typical length (a quarter of the positions, or less when asked for less).
        reserve = min(max_new_tokens, position_limit(self.model) // 4)
        max_prompt_tokens = prompt_budget(self.model, max_prompt_tokens, reserve)
        self.seed, self.max_prompt_tokens, self.stop = seed, max_prompt_tokens, stop
        self.repo_name = repo_name
        self._calls: Counter[str] = Counter()

    def prompt(self, example: Example) -> str:
        from codeslm.model.prompt import build_prompt

        return build_prompt(self.tokenizer, example.prefix, example.suffix,
                            context=example.context, repo_name=self.repo_name,
                            max_tokens=self.max_prompt_tokens, path=example.path)

    def __call__(self, example: Example) -> str:
        from codeslm.model.generate import generate

        sample = self._calls[example.task_id]
        self._calls[example.task_id] += 1
        seed = zlib.crc32(f"{self.seed}:{example.task_id}:{sample}".encode())
        return generate(self.model, self.tokenizer, self.prompt(example),
                        max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                        top_p=self.top_p, stop=self.stop, seed=seed)

    def describe(self) -> dict:
        return {"path": str(self.model_dir), "parameters": sum(p.numel() for p in
                                                              self.model.parameters()),
                "temperature": self.temperature, "top_p": self.top_p,
                "max_new_tokens": self.max_new_tokens, "max_prompt_tokens": self.max_prompt_tokens}


class RetrievalCompleter:
    """Wrap a completer so each example first gets the `k` chunks most like its cursor.

    The query is the last lines before the cursor; `search_code` excludes the chunk holding
    the cursor line and everything after it in that file, so the target never leaks in.
    """

    def __init__(self, inner, index, k: int = 4):
        self.inner, self.index, self.k = inner, index, k

    def hits(self, example: Example) -> list:
        """The retrieved chunks for `example`, best first."""
        query = "".join(example.prefix.splitlines(keepends=True)[-QUERY_LINES:])
        return self.index.search_code(query, k=self.k, exclude=(example.path, example.meta["line"]))

    def context(self, example: Example) -> tuple[tuple[str, str], ...]:
        # Most relevant last, nearest the cursor.
        return tuple((hit.chunk.path, hit.chunk.text) for hit in reversed(self.hits(example)))

    def __call__(self, example: Example) -> str:
        return self.inner(replace(example, context=self.context(example)))
