"""The completion engine: cursor context -> retrieval -> prompt -> tiny model -> completion.

`CompletionEngine.complete` windows the text around the cursor in tokens, queries the index with
the last lines of the prefix (never the cursor's own chunk or anything after it, nor a copy of
the file that ends at the cursor), builds the
repository-level FIM prompt, decodes with stop rules and a time budget (mixing in a token n-gram
cache over the whole file and the retrieved chunks), and trims the result.
A keystroke cache answers requests that only typed the start of the last suggestion.
But: it does not build indexes (see `codeslm.index`) or train models (see `codeslm.train`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from codeslm.complete.decode import CachedDecoder
from codeslm.complete.postprocess import StopRule, trim_suffix_overlap, word_fragment
from codeslm.errors import CodeslmError, IndexFormatError, ModelError
from codeslm.model.ngram_cache import NgramCache, model_lambdas

MODES = ("bm25", "hybrid")
# Weight of an index's kNN datastore when the settings leave it to the engine. Chosen for the
# shipped model on validation-split packages (`eval/engine_sweep.py --set knn_lambda=...`).
DEFAULT_KNN_LAMBDA = 0.9


@dataclass(frozen=True)
class CompletionSettings:
    """Knobs of the engine; the defaults suit the default model on a laptop CPU."""

    multiline: bool = False
    retrieval: bool = True
    mode: str = "bm25"  # code-to-code retrieval: "bm25" or "hybrid" (BM25 + dense, RRF)
    k: int = 4  # retrieved chunks in the prompt
    cache_k: int = 4  # retrieved chunks the n-gram cache reads, k or more (they cost no positions)
    repocoder: bool = False  # retrieve a second time with the first draft appended
    query_lines: int = 10  # last lines of the prefix in the query (plus the suffix's first)
    prefix_tokens: int = 384  # window of the text before the cursor
    suffix_tokens: int = 96  # window of the text after the cursor
    max_prompt_tokens: int = 896
    context_share: float = 0.5  # of the prompt kept for retrieved chunks (as much as they need)
    max_new_tokens: int | None = None  # None: 48 for a line, 160 for a block
    line_budget_ms: float | None = 250.0  # after this, finish the current line and stop
    # Beam search: hypotheses kept (1 decodes greedily; None: 4 for a line, 1 for a block); ended
    # texts rank by log-probability / tokens^length_penalty. Chosen for lines on
    # validation-split packages (`eval/engine_sweep.py`); blocks were not measured.
    beams: int | None = None
    length_penalty: float = 0.5
    # Weight of the index's kNN datastore; None: DEFAULT_KNN_LAMBDA when the engine has one built
    # by its model, else off.
    knn_lambda: float | None = None
    ngram_cache: bool = True  # mix in what followed the last tokens in the file and chunks
    cache_size: int = 64  # keystroke cache entries
    # Teacher-written items (`codeslm transfer`) retrieved beside the code chunks, nearest the
    # cursor, at most `teacher_k` of them and `teacher_tokens` tokens (the n-gram cache reads
    # them too).
    teacher: bool = True
    teacher_k: int = 2
    teacher_tokens: int = 96

    def chunks_wanted(self) -> int:
        """Chunks to retrieve: the prompt's, and more when the n-gram cache reads more."""
        return max(self.k, self.cache_k) if self.ngram_cache else self.k

    def knn_weight(self, has_datastore: bool) -> float:
        """The kNN datastore's weight for an engine that has one (or not)."""
        if not has_datastore:
            return 0.0
        return DEFAULT_KNN_LAMBDA if self.knn_lambda is None else self.knn_lambda

    def beam_count(self) -> int:
        if self.beams is not None:
            return self.beams
        return 1 if self.multiline else 4

    def new_tokens(self) -> int:
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return 160 if self.multiline else 48


@dataclass
class CompletionRequest:
    """A cursor: all text before it, all text after it, and the file's repository-relative path.

    `extra_context` holds `(path, text)` chunks a client sends (open files, recent edits); they go
    into the prompt after the retrieved ones, nearest the cursor.
    """

    prefix: str
    suffix: str = ""
    path: str = ""
    language: str | None = None
    extra_context: Sequence[tuple[str, str]] = ()


@dataclass
class RetrievedChunk:
    path: str
    start_line: int
    end_line: int
    symbol: str
    score: float
    text: str
    # One of the best `k`, offered to the prompt (which keeps what fits); the others only feed
    # the n-gram cache.
    in_prompt: bool = True
    kind: str = "code"  # "teacher" for an item a teacher model wrote about the code at these lines


@dataclass
class CompletionResult:
    text: str
    retrieved: list[RetrievedChunk] = field(default_factory=list)
    prompt_tokens: int = 0
    reused_tokens: int = 0
    new_tokens: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    from_cache: bool = False
    stop_reason: str = ""
    knn_lambda: float = 0.0  # weight the kNN datastore had
    notes: list[str] = field(default_factory=list)
    # Other completions the beam search ended with, best first (for an editor's "next").
    alternatives: list[str] = field(default_factory=list)
    teacher_items: int = 0  # teacher-written items among the retrieved ones

    def teacher_summary(self) -> str:
        """Which teacher items the completion saw, in one line ("" when none)."""
        used = [h.symbol for h in self.retrieved if h.kind == "teacher"]
        return f"teacher items: {len(used)} ({', '.join(used)})" if used else ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Remembered:
    prefix: str
    suffix: str
    path: str
    multiline: bool
    text: str
    result: CompletionResult


def require_fim(tokenizer):
    """The tokenizer's FIM template; `ModelError` naming the tokens it lacks when it has none."""
    from codeslm.model.prompt import TEMPLATES, fim_template

    try:
        return fim_template(tokenizer)
    except ModelError:
        vocab = tokenizer.get_vocab()
        missing = "; ".join(
            f"{t.family}: {', '.join(s for s in (t.prefix, t.suffix, t.middle) if s not in vocab)}"
            for t in TEMPLATES
        )
        raise ModelError(
            "this model cannot fill in the middle: its tokenizer lacks the FIM tokens of every "
            f"known family (missing per family: {missing})"
        ) from None


class CompletionEngine:
    """Completes code at a cursor with a causal LM and, when there is one, a repository index.

    Example:
        >>> engine = CompletionEngine.open(index_dir="index/myrepo")
        >>> engine.complete(CompletionRequest("def area(r):\\n    return ", "\\n", "geo.py")).text
        'math.pi * r ** 2'
    """

    def __init__(self, model, tokenizer, index=None, settings: CompletionSettings = CompletionSettings(),
                 knn=None, problems: Sequence[str] = ()):
        if settings.mode not in MODES:
            raise CodeslmError(f"unknown retrieval mode {settings.mode!r}; use one of {', '.join(MODES)}")
        if settings.beam_count() < 1:
            raise CodeslmError(f"beams must be 1 or more (got {settings.beams})")
        self.template = require_fim(tokenizer)
        try:
            self.ngram_lambdas = model_lambdas(model.config)  # fitted for this model, if it has them
        except ValueError as e:
            raise ModelError(str(e)) from e
        self.model = model
        self.tokenizer = tokenizer
        self.problems = list(problems)  # said in every result's notes
        self._knn_asked = settings.knn_lambda
        self.settings = settings
        self.decoder = CachedDecoder(model, tokenizer)
        self._recent: OrderedDict[int, _Remembered] = OrderedDict()
        self._n = 0
        self.use_index(index, knn)

    def use_index(self, index, knn=None) -> None:
        """Complete from `index` (None: without retrieval) and its kNN datastore from now on.

        A served workspace calls this between completions when its index was updated.
        """
        self.index = index
        self.repo_root = Path(index.manifest.repo) if index is not None else None
        self.repo_name = self.repo_root.name if self.repo_root is not None else None
        weight = replace(self.settings, knn_lambda=self._knn_asked).knn_weight(knn is not None)
        self.settings = replace(self.settings, knn_lambda=weight)
        self.knn = knn if weight > 0 else None
        self.decoder.knn = self.knn
        self.decoder.knn_lambda = weight if self.knn is not None else 0.0
        self._recent.clear()  # remembered suggestions came from the old index

    @classmethod
    def open(cls, model_dir=None, index_dir=None, settings: CompletionSettings = CompletionSettings(),
             device: str = "cpu") -> CompletionEngine:
        """Load a model directory (default: the shipped checkpoint) and, if given, an index.

        An index that is missing or unreadable does not stop completion: the engine completes
        without retrieval and says why in every result's notes. The index's kNN datastore is used
        when `settings.knn_lambda` asks for it (an error if it cannot be) or, left at None, when
        the index has one this model built (a note says why one that exists was not used).
        """
        from codeslm.model.knn import KnnDatastore
        from codeslm.model.loading import load_model

        model, tokenizer = load_model(model_dir, device=device)
        index, problems = None, []
        explicit_knn = bool(settings.knn_lambda)
        if index_dir is not None and (settings.retrieval or explicit_knn):
            from codeslm.index import Index

            try:
                index = Index.open(index_dir)
            except IndexFormatError as e:
                problems.append(f"completed without retrieval: {e}")
        knn = None
        if explicit_knn:
            if index_dir is None:
                raise CodeslmError("--knn-lambda needs an index built with `codeslm index --knn`")
            knn = KnnDatastore.load(Path(index_dir), model)
        elif settings.knn_lambda is None and index is not None and KnnDatastore.exists(index_dir):
            try:
                knn = KnnDatastore.load(Path(index_dir), model)
            except ModelError as e:
                problems.append(f"completed without the kNN datastore: {e}")
        return cls(model, tokenizer, index, settings, knn, problems)

    # Public entry points ------------------------------------------------------------------

    def complete(self, request: CompletionRequest, multiline: bool | None = None,
                 cancelled: Callable[[], bool] | None = None,
                 max_new_tokens: int | None = None) -> CompletionResult:
        """The completion at `request`'s cursor (single-line unless `multiline` or the settings say).

        `cancelled()`, asked between decode steps, stops the call with `CompletionCancelled`;
        `max_new_tokens` caps the tokens written below what the settings allow.
        """
        settings = self.settings if multiline is None else replace(self.settings, multiline=multiline)
        if max_new_tokens is not None:
            settings = replace(settings, max_new_tokens=min(max_new_tokens, settings.new_tokens()))
        started = time.perf_counter()
        hit = self._from_cache(request, settings.multiline)
        if hit is not None:
            hit.timings_ms = {"total": (time.perf_counter() - started) * 1000}
            return hit
        result = self._complete(request, settings, started, cancelled)
        self._remember(request, settings.multiline, result)
        return result

    def complete_file(self, file: str | Path, line: int, col: int,
                      multiline: bool | None = None) -> CompletionResult:
        """Complete in `file` at 1-based `line` and 1-based `col` (the cursor is before that column)."""
        file = Path(file)
        if not file.is_file():
            raise CodeslmError(f"{file} does not exist or is not a file")
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise CodeslmError(f"{file} is not UTF-8 text ({e})") from e
        prefix, suffix = split_at_cursor(text, line, col, str(file))
        return self.complete(CompletionRequest(prefix, suffix, self.relative_path(file)), multiline)

    def __call__(self, example) -> str:
        """The completion text for an example with `prefix`, `suffix`, `path` (and `context`).

        The form `codeslm.eval` scores: `run_repo(repo, completers={"engine": engine})`.
        """
        request = CompletionRequest(example.prefix, example.suffix or "", example.path or "",
                                    extra_context=tuple(getattr(example, "context", ()) or ()))
        return self.complete(request).text

    def relative_path(self, file: Path) -> str:
        """`file`'s path inside the indexed repository (its name alone when it lies outside)."""
        if self.repo_root is not None:
            try:
                return file.resolve().relative_to(self.repo_root).as_posix()
            except ValueError:
                pass
        return file.name

    # The pipeline ---------------------------------------------------------------------------

    def _complete(self, request: CompletionRequest, settings: CompletionSettings, started: float,
                  cancelled: Callable[[], bool] | None = None):
        from codeslm.chunking import language_for
        from codeslm.chunking.languages import DOC_LANGUAGES, parser_for

        notes = list(self.problems)
        language = request.language or language_for(request.path or "untitled")
        if language not in DOC_LANGUAGES and parser_for(language) is None:
            kind = Path(request.path).suffix or language
            notes.append(f"no grammar for {kind} files: generic stop rules")
        # A prompt ending inside a word may end where no training text had a token boundary; cut
        # the piece and let the model re-write it (token healing). A piece no token extends stays.
        t = time.perf_counter()
        fragment = word_fragment(request.prefix)
        if fragment and not self.decoder.extends(fragment):
            fragment = ""
        prefix = self._window_prefix(request.prefix[: len(request.prefix) - len(fragment)], settings)
        suffix = self._window_suffix(request.suffix, settings)
        cursor_line = request.prefix.rsplit("\n", 1)[-1]
        rule = StopRule(settings.multiline, cursor_line, language)
        window_ms = (time.perf_counter() - t) * 1000

        if self.knn is not None:
            # Like retrieval, the datastore never shows this file from the cursor on.
            self.knn.exclude_after(request.path, request.prefix.count("\n") + 1)
        t = time.perf_counter()
        hits = self._retrieve(request, prefix + fragment, suffix, settings, notes, draft="")
        timings = {"retrieval": (time.perf_counter() - t) * 1000}

        text, stats, prompt_ms = self._generate(request, prefix, suffix, fragment, hits, rule, settings,
                                                cancelled)
        # "prompt" covers the cursor window and the prompt itself.
        timings.update(prompt=window_ms + prompt_ms, prefill=stats.prefill_s * 1000,
                       decode=stats.decode_s * 1000)

        if settings.repocoder and self.index is not None and settings.retrieval and text.strip():
            t = time.perf_counter()
            hits = self._retrieve(request, prefix + fragment, suffix, settings, notes, draft=text)
            timings["retrieval"] += (time.perf_counter() - t) * 1000
            text, stats, prompt_ms = self._generate(request, prefix, suffix, fragment, hits, rule,
                                                    settings, cancelled)
            timings["prompt"] += prompt_ms
            timings["prefill"] += stats.prefill_s * 1000
            timings["decode"] += stats.decode_s * 1000

        def finish(text: str) -> str:
            text = trim_suffix_overlap(text, request.suffix, settings.multiline)
            return text if settings.multiline else text.rstrip()

        text = finish(text)
        alternatives = list(dict.fromkeys(t for t in map(finish, stats.alternatives) if t and t != text))
        timings["total"] = (time.perf_counter() - started) * 1000
        return CompletionResult(
            text=text,
            retrieved=hits,
            prompt_tokens=stats.prompt_tokens,
            reused_tokens=stats.reused_tokens,
            new_tokens=stats.new_tokens,
            timings_ms=timings,
            stop_reason=stats.stop_reason,
            knn_lambda=settings.knn_lambda,
            notes=notes,
            alternatives=alternatives,
            teacher_items=sum(h.kind == "teacher" for h in hits),
        )

    def _generate(self, request, prefix, suffix, fragment, hits, rule, settings, cancelled=None):
        from codeslm.model.prompt import build_prompt, prompt_budget

        t = time.perf_counter()
        # Least relevant first, so the best chunk sits nearest the cursor; teacher items, short and
        # about how the code is used, nearer still.
        code = [(h.path, h.text) for h in reversed(hits) if h.in_prompt and h.kind != "teacher"]
        items = [(h.path, h.text) for h in reversed(hits) if h.in_prompt and h.kind == "teacher"]
        tail = cursor_tail(request.prefix)
        context = code + items + [(p, t) for p, t in request.extra_context if not ends_at_cursor(t, tail)]
        # Prompt and new tokens stay within the positions the model was trained on.
        budget = prompt_budget(self.model, settings.max_prompt_tokens, settings.new_tokens())
        prompt = build_prompt(self.tokenizer, prefix, suffix, context, self.repo_name, max_tokens=budget,
                              context_share=settings.context_share)
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ngram = None
        if settings.ngram_cache:
            # The whole file, not just the window: the cache costs no positions.
            before = request.prefix[: len(request.prefix) - len(fragment)]
            # Chunks beyond the prompt's too: the cache reads more than the model has room for.
            chunks = [h.text for h in hits] + [text for _, text in request.extra_context]
            ngram = NgramCache.for_text(self.tokenizer, before, request.suffix, chunks,
                                        lambdas=self.ngram_lambdas)
        prompt_ms = (time.perf_counter() - t) * 1000
        deadline = None
        if settings.line_budget_ms is not None:
            deadline = time.perf_counter() + settings.line_budget_ms / 1000
        text, stats = self.decoder.generate(
            ids, max_new_tokens=settings.new_tokens(), stop=rule.apply, forced=fragment,
            line_deadline=deadline, ngram=ngram, beams=settings.beam_count(),
            length_penalty=settings.length_penalty, cancelled=cancelled,
        )
        return text, stats, prompt_ms

    def _retrieve(self, request, prefix: str, suffix: str, settings, notes: list[str], draft: str):
        if not settings.retrieval or self.index is None:
            return []
        lines = prefix.split("\n")
        query = "\n".join(lines[-settings.query_lines:])
        # The first draft stands in for the suffix's first line in the second round.
        query += draft if draft else "\n" + suffix.split("\n", 1)[0]
        if not query.strip():
            if "nothing before the cursor to retrieve with" not in notes:
                notes.append("nothing before the cursor to retrieve with")
            return []
        cursor_line = request.prefix.count("\n") + 1
        exclude_files = ()
        if request.path and self._stale(request.path, request.prefix, cursor_line):
            # Line numbers in the index no longer match this file: leave it out entirely.
            exclude_files = (request.path,)
            notes.append(f"the index is stale for {request.path} (changed since indexing): "
                         "left it out of retrieval; re-run `codeslm index`")
        from codeslm.index.store import TEACHER_KIND

        exclude = (request.path, cursor_line) if request.path else None
        try:
            found = self.index.search_code(
                query, k=settings.chunks_wanted() + 4, exclude=exclude,
                exclude_files=exclude_files, mode=settings.mode, exclude_kinds=(TEACHER_KIND,),
            )
            items = []
            if settings.teacher and settings.teacher_k > 0 and self.index.teacher_items:
                # The leak guard holds for items as for code: `exclude` leaves out every item
                # derived from the cursor's chunk or from after the cursor in its file.
                items = self.index.search_code(query, k=settings.teacher_k, exclude=exclude,
                                               exclude_files=exclude_files, mode=settings.mode,
                                               kind=TEACHER_KIND)
        except IndexFormatError as e:
            notes.append(f"completed without retrieval: {e}")
            return []
        # Chunks of this file that the prefix window already shows would only repeat it.
        window_start = cursor_line - prefix.count("\n")
        tail = cursor_tail(request.prefix)
        hits = [
            RetrievedChunk(h.chunk.path, h.chunk.start_line, h.chunk.end_line, h.chunk.symbol,
                           h.score, h.chunk.text)
            for h in found
            if not (h.chunk.path == request.path and h.chunk.end_line >= window_start)
            and not ends_at_cursor(h.chunk.text, tail)
        ]
        hits = hits[: settings.chunks_wanted()]
        for hit in hits[settings.k :]:
            hit.in_prompt = False
        spent = 0
        for h in items:
            cost = len(self.tokenizer(h.chunk.text, add_special_tokens=False)["input_ids"])
            if spent + cost > settings.teacher_tokens:
                break
            spent += cost
            hits.append(RetrievedChunk(h.chunk.path, h.chunk.start_line, h.chunk.end_line, h.chunk.symbol,
                                       h.score, h.chunk.text, kind="teacher"))
        return hits

    def _stale(self, path: str, prefix: str, cursor_line: int) -> bool:
        """Whether the indexed chunks of `path` above the cursor differ from the text before it.

        Only those chunks can be retrieved for this cursor, so they must still be what the file
        holds at their lines; otherwise the index's line numbers cannot be trusted.
        """
        rows = self.index.store.db.execute(
            "SELECT start_line, end_line, text FROM chunks WHERE path = ? AND end_line < ? AND kind != 'teacher'",
            (path, cursor_line),
        ).fetchall()
        if not rows:
            return False
        lines = prefix.split("\n")
        return any(
            "\n".join(lines[start - 1 : end]).rstrip() != text.rstrip() for start, end, text in rows
        )

    def _window_prefix(self, prefix: str, settings: CompletionSettings) -> str:
        """The last `prefix_tokens` of the prefix, from a line start when one is in reach."""
        # Cut by characters first so a long file is not tokenized whole on every keystroke.
        text = prefix[-settings.prefix_tokens * 8:]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= settings.prefix_tokens and len(text) == len(prefix):
            return prefix
        tail = self.tokenizer.decode(ids[-settings.prefix_tokens:])
        cut = tail.find("\n")
        return tail[cut + 1:] if 0 <= cut < len(tail) - 1 else tail

    def _window_suffix(self, suffix: str, settings: CompletionSettings) -> str:
        """The first `suffix_tokens` of the suffix, to a line end when one is in reach."""
        text = suffix[: settings.suffix_tokens * 8]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= settings.suffix_tokens:
            return text
        head = self.tokenizer.decode(ids[: settings.suffix_tokens])
        cut = head.rfind("\n")
        return head[: cut + 1] if cut > 0 else head

    # Keystroke cache ------------------------------------------------------------------------

    def _from_cache(self, request: CompletionRequest, multiline: bool) -> CompletionResult | None:
        """The rest of a remembered suggestion when the user typed its start since."""
        for key in reversed(self._recent):
            old = self._recent[key]
            if old.path != request.path or old.multiline != multiline or old.suffix != request.suffix:
                continue
            if not request.prefix.startswith(old.prefix):
                continue
            typed = request.prefix[len(old.prefix):]
            if typed and len(typed) < len(old.text) and old.text.startswith(typed):
                self._recent.move_to_end(key)
                rest = [a[len(typed):] for a in old.result.alternatives
                        if a.startswith(typed) and len(a) > len(typed)]
                return replace(old.result, text=old.text[len(typed):], from_cache=True,
                               notes=list(old.result.notes), timings_ms={}, alternatives=rest)
        return None

    def _remember(self, request: CompletionRequest, multiline: bool, result: CompletionResult) -> None:
        if not result.text or self.settings.cache_size <= 0:
            return
        self._n += 1
        self._recent[self._n] = _Remembered(request.prefix, request.suffix, request.path, multiline,
                                            result.text, result)
        while len(self._recent) > self.settings.cache_size:
            self._recent.popitem(last=False)


def cursor_tail(prefix: str, lines: int = 2) -> str:
    """The last `lines` lines before the cursor, stripped; "" when too short to tell a copy by."""
    tail = "\n".join(prefix.rstrip().rsplit("\n", lines)[-lines:]).strip()
    return tail if len(tail) >= 16 else ""


def ends_at_cursor(text: str, tail: str) -> bool:
    """Whether chunk `text` ends with the `cursor_tail` before the cursor (up to whitespace).

    Such a chunk is a copy of the file cut where the cursor stands (the file saved under another
    name, a buffer as it was): it shows nothing that follows, and a model that reads its chunks
    takes its end as the place to stop.
    """
    return bool(tail) and text.rstrip().endswith(tail)


def split_at_cursor(text: str, line: int, col: int, name: str = "the file") -> tuple[str, str]:
    """`(prefix, suffix)` of `text` at 1-based `line` and `col`; a clear error outside the text."""
    lines = text.split("\n")
    if line < 1 or line > len(lines):
        raise CodeslmError(f"line {line} is outside {name}, which has lines 1 to {len(lines)}")
    width = len(lines[line - 1])
    if col < 1 or col > width + 1:
        raise CodeslmError(f"column {col} is outside line {line} of {name}, which has columns 1 to {width + 1}")
    offset = sum(len(ln) + 1 for ln in lines[: line - 1]) + col - 1
    return text[:offset], text[offset:]
