"""The interface every benchmark implements, the registry of benchmarks, and completers.

A benchmark is one module with one `Task` subclass: where its examples come from (`examples`),
what the model sees (`Example.prefix`/`suffix`), the reference, how a raw generation is cut
(`postprocess`) and how completions are judged (`score`). `@register` adds it to `TASKS`.
A completer is any callable `complete(example) -> str`: the model, the model with retrieval,
a model-free baseline, or a full completion engine.
But: it does not generate text itself (see `codeslm.eval.completers`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from codeslm.errors import EvalError


@dataclass(frozen=True)
class Example:
    """One thing to complete: the text before (and after, for infilling) the cursor.

    `suffix=None` means left-to-right completion. `context` holds retrieved `(path, text)`
    chunks, most relevant last; `path` names the file for repository-level prompts.
    """

    task_id: str
    prefix: str
    suffix: str | None = None
    reference: str = ""
    path: str | None = None
    context: tuple[tuple[str, str], ...] = ()
    meta: dict = field(default_factory=dict, compare=False)


Completer = Callable[[Example], str]


@dataclass
class TaskResult:
    """Per-sample records (one dict each, written as JSONL) and the scores of a run."""

    records: list[dict]
    scores: dict[str, float]
    details: dict = field(default_factory=dict)


class Task(ABC):
    """One benchmark. Subclasses set `name`, `citation` and `stop`, and implement the rest."""

    name: ClassVar[str]
    citation: ClassVar[str]
    # Strings at which generation can stop early (post-processing still decides the cut).
    stop: ClassVar[tuple[str, ...]] = ()
    max_new_tokens: ClassVar[int] = 256

    @abstractmethod
    def examples(self) -> list[Example]:
        """The dataset, in a fixed order."""

    def reference(self, example: Example) -> str:
        return example.reference

    def postprocess(self, example: Example, generation: str) -> str:
        """Cut a raw generation to what the benchmark scores."""
        return generation

    @abstractmethod
    def score(self, examples: list[Example], completions: list[list[str]]) -> TaskResult:
        """Judge `completions[i]` (one or more samples) for `examples[i]`."""

    def describe(self) -> dict:
        """What goes into results.json as the task set."""
        return {"name": self.name, "citation": self.citation}


TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator adding a benchmark to `TASKS` under its `name`."""
    if cls.name in TASKS:
        raise EvalError(f"two benchmarks are named {cls.name!r}")
    TASKS[cls.name] = cls
    return cls


def get_task(name: str, **options) -> Task:
    """The benchmark called `name`, built with `options`."""
    import codeslm.eval  # noqa: F401  (importing the package registers every benchmark)

    if name not in TASKS:
        raise EvalError(f"unknown benchmark {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name](**options)
