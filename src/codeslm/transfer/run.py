"""`codeslm transfer`: a teacher reads each code unit of an index and writes verified knowledge
items into it (RetriKT-style transfer by text), optionally also a token-level store.

Per unit: usage examples of its own public API, of the external callables it uses, and a
summary when it has no docstring; each asked best-of-n, each answer through the filter
(`codeslm.transfer.verify`), the best survivor kept with its provenance. Answers are cached per
request, so a re-run asks only about changed units and drops items whose unit is gone; a killed
run keeps what it wrote; `--budget` stops cleanly after N items or minutes.
But: it does not retrieve items at completion time (the engine does, see `codeslm.complete`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from codeslm.chunking import Chunk
from codeslm.errors import IndexFormatError, TransferError
from codeslm.index.store import TEACHER_KIND, MetadataStore
from codeslm.transfer.cache import CACHE_FILE, TeacherCache, request_key
from codeslm.transfer.prompts import ITEM_KINDS, Ask, PromptBuilder
from codeslm.transfer.teacher import Sampling, Teacher
from codeslm.transfer.units import (
    UNIT_KINDS,
    ModuleUnits,
    Unit,
    import_root,
    local_packages,
    parse_module,
)
from codeslm.transfer.verify import Check, Tally, Verifier, readable_by_others

MAX_SAMPLE_SECONDS = 60.0  # one request may take this long before the rest of it is cut


@dataclass(frozen=True)
class Budget:
    items: int | None = None  # new items written in this run
    minutes: float | None = None  # teacher time in this run

    @classmethod
    def parse(cls, text: str | None) -> Budget:
        """`"200"` or `"200items"`: items; `"15m"`/`"15min"`: minutes of teacher time."""
        if not text:
            return cls()
        raw = text.strip().lower().replace(" ", "")
        for suffix, minutes in (("minutes", True), ("min", True), ("m", True), ("items", False),
                                ("item", False), ("", False)):
            if raw.endswith(suffix):
                number = raw[: len(raw) - len(suffix)] if suffix else raw
                try:
                    value = float(number)
                except ValueError:
                    continue
                if value <= 0:
                    break
                return cls(minutes=value) if minutes else cls(items=int(value))
        raise TransferError(f"budget {text!r} is not a number of items (200) or minutes (15min)")

    def describe(self) -> str:
        if self.items is not None:
            return f"{self.items} items"
        return f"{self.minutes:g} min" if self.minutes is not None else "none"


@dataclass(frozen=True)
class TransferOptions:
    unit_kinds: tuple[str, ...] = UNIT_KINDS
    item_kinds: tuple[str, ...] = ITEM_KINDS
    sampling: Sampling = Sampling()
    budget: Budget = Budget()
    externals_per_unit: int = 2  # external callables asked about per unit (first uses in its file)
    sandbox: bool = True  # run examples of I/O-free callables
    replace_teacher: bool = False  # replace another teacher's items instead of refusing

    def __post_init__(self):
        bad = [k for k in self.unit_kinds if k not in UNIT_KINDS]
        if bad or not self.unit_kinds:
            raise TransferError(f"unit kinds must be some of {', '.join(UNIT_KINDS)} (got {', '.join(bad) or 'none'})")
        bad = [k for k in self.item_kinds if k not in ITEM_KINDS]
        if bad or not self.item_kinds:
            raise TransferError(f"item kinds must be some of {', '.join(ITEM_KINDS)} (got {', '.join(bad) or 'none'})")


@dataclass
class TransferReport:
    index_dir: Path
    teacher: dict
    units: int = 0
    requests: int = 0  # asks for this repository's units
    answered: int = 0  # of those, answered by the teacher in this run
    from_cache: int = 0  # answered by an earlier run
    left: int = 0  # not reached (budget or interruption)
    items: int = 0  # teacher items the index holds now
    new_items: int = 0  # kept from this run's answers
    removed_items: int = 0  # items of units that are gone or changed
    tally: Tally = field(default_factory=Tally)  # of this run's answers
    teacher_seconds: float = 0.0
    stopped: str = ""  # why it stopped before the end, "" when it did not
    upgraded: bool = False
    store_bytes: int = 0  # index files plus the answer cache
    token_store: dict | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["index_dir"] = str(self.index_dir)
        data["tally"] = self.tally.to_dict()
        return data


@dataclass
class _Request:
    unit: Unit
    ask: Ask
    key: str
    check: Callable[[str], Check]


def transfer(repo: str | Path, teacher_dir: str | Path | None, index_dir: str | Path | None = None, *,
             options: TransferOptions = TransferOptions(), device: str = "cpu",
             progress: bool = True, teacher: Teacher | None = None) -> TransferReport:
    """Have a teacher write knowledge items for the repository at `repo` into its index."""
    from tqdm.auto import tqdm

    from codeslm.index import build_index, default_index_dir
    from codeslm.index.build import write_teacher_items
    from codeslm.index.manifest import is_index_dir, read_manifest

    repo = Path(repo).expanduser()
    if not repo.is_dir():
        raise TransferError(f"{repo} is not a repository directory")
    repo = repo.resolve()
    index_dir = Path(index_dir) if index_dir is not None else default_index_dir(repo)
    dense, before, upgrade = True, set(), False
    if is_index_dir(index_dir):
        manifest = read_manifest(index_dir)
        if Path(manifest.repo) != repo:
            raise TransferError(f"{index_dir} indexes {manifest.repo}, not {repo}: give the index of "
                                f"{repo.name} with --index-dir (or none, to use {default_index_dir(repo)})")
        dense = manifest.dense
        before, upgrade = _held_items(index_dir)
    # Items name units by lines, so the index must hold the repository as it is now.
    build_index(repo, index_dir, dense=dense, progress=progress)
    manifest = read_manifest(index_dir)

    teacher = teacher or Teacher.load(teacher_dir, device=device)
    described = {"name": teacher.name, "sha256": teacher.sha256}
    held = manifest.stats.get("teacher")
    if held and held.get("sha256") != teacher.sha256 and not options.replace_teacher:
        raise TransferError(
            f"{index_dir} holds items written by teacher {held.get('name')} ({held.get('sha256', '')[:12]}), "
            f"not {teacher.name} ({teacher.sha256[:12]}); nothing was changed. Pass --replace-teacher "
            "to replace them")
    report = TransferReport(index_dir, teacher.describe())

    modules = _modules(repo, index_dir)
    units = [u for m in modules.values() for u in m.units if u.kind in options.unit_kinds]
    report.units = len(units)
    builder = PromptBuilder(teacher.tokenizer, repo.name)
    verifier = Verifier(modules, {m.module: import_root(repo, m.path) for m in modules.values()})
    runnable = options.sandbox and readable_by_others(repo)
    requests = _requests(modules, options, builder, verifier, teacher, runnable)
    report.requests = len(requests)

    cache = TeacherCache(index_dir)
    sandbox = None
    answers: dict[str, dict] = {}
    started = time.monotonic()
    try:
        todo = []
        for request in requests:
            cached = cache.get(request.key)
            if cached is None:
                todo.append(request)
            else:
                answers[request.key] = cached
                report.from_cache += 1
        bar = tqdm(todo, desc=f"teacher {teacher.name}", unit="request", disable=not progress or not todo)
        for request in bar:
            stop = _over_budget(options.budget, report, started) if report.answered else ""
            if stop:
                report.stopped = stop
                break
            t = time.monotonic()
            deadline = t + MAX_SAMPLE_SECONDS
            if options.budget.minutes is not None:
                deadline = min(deadline, started + options.budget.minutes * 60)
            samples = teacher.sample(request.ask.prompt, options.sampling, deadline=deadline,
                                     lstrip=request.ask.kind == "summary")
            if sandbox is None and samples and runnable:
                from codeslm.eval.sandbox import Limits, Sandbox

                sandbox = Sandbox(workers=1, limits=Limits(timeout_s=3.0, memory_mb=1024))
            answer = _judge(request, samples, sandbox, report.tally)
            seconds = time.monotonic() - t
            report.teacher_seconds += seconds
            if options.budget.minutes is not None and report.answered == 0 \
                    and seconds > options.budget.minutes * 60:
                report.stopped = (f"teacher too slow: its first request took {seconds:.0f} s, more than "
                                  f"the whole budget of {options.budget.describe()}")
                break
            cache.put(request.key, answer, seconds)
            answers[request.key] = answer
            report.answered += 1
            report.new_items += answer["item"] is not None
            bar.set_postfix(kept=report.new_items, dropped=sum(report.tally.dropped.values()))
        bar.close()
    except KeyboardInterrupt:
        report.stopped = "interrupted"
    finally:
        cache.close()
        if sandbox is not None:
            sandbox.close()
    report.left = report.requests - report.answered - report.from_cache

    items = []
    for request in requests:
        answer = answers.get(request.key)
        if answer is None or answer["item"] is None:
            continue
        items.append(_item_chunk(request, answer, described, options.sampling))
    now = {(c.text, c.path, c.start_line, c.symbol) for c, _ in items}
    report.removed_items = len(before - now)
    if now != _held_items(index_dir)[0] or not manifest.stats.get("teacher"):
        write_teacher_items(index_dir, items, described, progress=progress)
    report.upgraded = upgrade
    report.items = len(items)
    report.store_bytes = _store_bytes(index_dir)
    if report.stopped == "interrupted":
        raise KeyboardInterrupt
    return report


def _modules(repo: Path, index_dir: Path) -> dict[str, ModuleUnits]:
    """The parsed Python modules of the index's files, by dotted name."""
    from codeslm.index.manifest import read_manifest

    manifest = read_manifest(index_dir)
    store = MetadataStore.open(index_dir / manifest.file("meta"))
    try:
        paths = sorted(p for p, rec in store.files().items() if rec.language == "python")
    finally:
        store.close()
    packages = local_packages(paths)
    modules = {}
    for path in paths:
        try:
            text = (repo / path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        found = parse_module(path, text, packages)
        if found is not None and found.module:
            modules[found.module] = found
    return modules


def _requests(modules: dict[str, ModuleUnits], options: TransferOptions, builder: PromptBuilder,
              verifier: Verifier, teacher: Teacher, runnable: bool) -> list[_Request]:
    sampling = asdict(options.sampling)
    out = []

    def add(unit: Unit, ask: Ask, check):
        key = request_key(teacher.sha256, ask.template, unit.sha, ask.target, sampling)
        out.append(_Request(unit, ask, key, check))

    for module in modules.values():
        asked_externals = set()
        for unit in module.units:
            if unit.kind not in options.unit_kinds or unit.in_tests:
                continue
            if "usage" in options.item_kinds and unit.public:
                ask = builder.usage(unit)
                receiver = frozenset([ask.local.split(".")[0]]) if unit.kind == "method" else frozenset()
                add(unit, ask, partial(verifier.check_call, local=ask.local, signature=unit.signature,
                                       runnable=runnable and unit.pure,
                                       program=verifier.usage_program(unit.module), given=receiver))
            if "external" in options.item_kinds:
                for target, local in unit.externals[: options.externals_per_unit]:
                    if target in asked_externals:
                        continue
                    asked_externals.add(target)
                    add(unit, builder.external(unit, module, target, local),
                        partial(_check_external, verifier, local=local, target=target, runnable=runnable))
            if "summary" in options.item_kinds and not unit.name.startswith("__"):
                ask = builder.summary(unit)
                if ask is not None:
                    add(unit, ask, partial(Verifier.check_summary, symbol=unit.symbol))
    return out


def _check_external(verifier: Verifier, text: str, *, local: str, target: str, runnable: bool) -> Check:
    exists, signature = verifier.external(target)
    if not exists:
        return Check(f"calls a missing symbol ({target})")
    return verifier.check_call(text, local, signature, runnable and verifier.external_runs(target), "")


def _judge(request: _Request, samples, sandbox, tally: Tally) -> dict:
    """The best sample that passes the filter, as a cache answer; the rest counted by reason."""
    kind = request.ask.kind
    if not samples:
        tally.drop(kind, "the teacher wrote nothing")
        return {"item": None}
    passing = []
    for sample in samples:
        # A summary is judged as prose; an example as the code the item holds.
        answer = sample.text.strip() if kind == "summary" else sample.text
        text = request.ask.item_text(answer)
        check = request.check(answer if kind == "summary" else text)
        if check.reason:
            tally.drop(kind, check.reason)
        else:
            passing.append((sample, text, check))
    if passing and sandbox is not None and any(c.run for _, _, c in passing):
        jobs = [(c.program, t) for _, t, c in passing if c.run]
        outcomes = iter(sandbox.run_many(jobs))
        survivors = []
        for sample, text, check in passing:
            if not check.run:
                survivors.append((sample, text, False))
                continue
            outcome = next(outcomes)
            if outcome.passed:
                survivors.append((sample, text, True))
            else:
                reason = "timed out in the sandbox" if outcome.status == "timed out" else \
                    f"failed in the sandbox ({_first_error(outcome.error)})"
                tally.drop(kind, reason)
    else:
        survivors = [(s, t, False) for s, t, _ in passing]
    if not survivors:
        return {"item": None}
    best, text, ran = survivors[0]  # samples come most probable first
    for _ in survivors[1:]:
        tally.drop(kind, "best-of-n: a more probable sample was kept")
    tally.kept[kind] += 1
    if ran:
        tally.ran[kind] += 1
    return {"item": {"text": text, "log_prob": best.log_prob, "tokens": best.tokens, "ran": ran},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _first_error(error: str) -> str:
    line = error.strip().splitlines()[-1] if error.strip() else "error"
    name = line.split(":", 1)[0].strip()
    return name if name.isidentifier() else line[:60]


def _item_chunk(request: _Request, answer: dict, teacher: dict, sampling: Sampling) -> tuple[Chunk, dict]:
    unit, ask, item = request.unit, request.ask, answer["item"]
    text = item["text"] if item["text"].endswith("\n") else item["text"] + "\n"
    chunk = Chunk(unit.path, "python", TEACHER_KIND, f"{ask.kind}:{ask.target}", unit.start_line,
                  unit.end_line, text)
    provenance = {
        "teacher": teacher["name"], "teacher_sha256": teacher["sha256"],
        "item_kind": ask.kind, "target": ask.target, "template": ask.template,
        "source": {"path": unit.path, "symbol": unit.symbol, "start_line": unit.start_line,
                   "end_line": unit.end_line, "sha": unit.sha},
        "sampling": asdict(sampling), "log_prob": item["log_prob"], "tokens": item["tokens"],
        "verified": "ran in the sandbox" if item["ran"] else "static checks",
        "created": answer.get("created", ""),
    }
    return chunk, provenance


def _held_items(index_dir: Path) -> tuple[set[tuple], bool]:
    """The teacher items the index holds, and whether it predates them (it will be upgraded)."""
    from codeslm.index.manifest import read_manifest

    manifest = read_manifest(index_dir)
    store = MetadataStore.open(index_dir / manifest.file("meta"))
    try:
        if not store.has_teacher_items_table():
            return set(), True
        ids = store.ids_of_kind(TEACHER_KIND)
        return {(c.text, c.path, c.start_line, c.symbol) for c in store.chunks(list(ids)).values()}, False
    finally:
        store.close()


def _over_budget(budget: Budget, report: TransferReport, started: float) -> str:
    if budget.items is not None and report.new_items >= budget.items:
        return f"budget of {budget.describe()} reached"
    if budget.minutes is not None and time.monotonic() - started >= budget.minutes * 60:
        return f"budget of {budget.describe()} reached"
    return ""


def _store_bytes(index_dir: Path) -> int:
    try:
        from codeslm.index.manifest import read_manifest

        manifest = read_manifest(index_dir)
    except IndexFormatError:
        return 0
    names = [manifest.file(k) for k in ("meta", "bm25", "vocab", "dense")] + [CACHE_FILE]
    total = 0
    for name in names:
        path = index_dir / name
        if path.is_dir():
            total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        elif path.is_file():
            total += path.stat().st_size
    return total
