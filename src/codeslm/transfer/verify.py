"""The verifiable filter every teacher-written item passes before it reaches the index.

A usage example must parse, call the symbol it is about, call no name that exists nowhere, and
pass arguments its signature accepts; where the callee looks free of I/O, it must also run
without error in the sandbox (`codeslm.eval.sandbox`: generated code never runs anywhere else).
A summary must be one line of prose that says more than the name. A rejected item is given a
reason, and reasons are counted.
But: it does not generate items or write them anywhere (see `codeslm.transfer.run`).
"""

from __future__ import annotations

import ast
import builtins
import importlib
import importlib.util
import inspect
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from codeslm.transfer.units import ModuleUnits, Signature, dotted_name, is_stdlib

# Standard-library modules whose callables compute without side effects: their examples run.
PURE_STDLIB = {"re", "math", "cmath", "string", "itertools", "functools", "collections", "json",
               "textwrap", "operator", "decimal", "fractions", "statistics", "heapq", "bisect",
               "keyword", "unicodedata", "base64", "hashlib", "binascii", "copy", "enum", "typing",
               "dataclasses", "posixpath", "fnmatch", "difflib", "html", "shlex", "struct", "zlib",
               "calendar", "colorsys", "numbers", "array", "ipaddress", "urllib.parse", "os.path",
               "reprlib", "pprint", "inspect", "types", "abc", "contextlib", "codecs", "locale"}
_BUILTINS = set(dir(builtins))


@dataclass(frozen=True)
class Check:
    """The static verdict on one item: `reason` is "" when it passes; `run` says whether it
    should also run in the sandbox, with `program` as the setup and the item as the test."""

    reason: str = ""
    run: bool = False
    program: str = ""


@dataclass
class Tally:
    """Items kept and dropped, by kind and reason."""

    kept: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)  # "kind: reason", details left out
    ran: Counter = field(default_factory=Counter)  # kept items that also ran in the sandbox
    examples: dict = field(default_factory=dict)  # "kind: reason" -> a few full reasons

    def drop(self, kind: str, reason: str) -> None:
        general, _, detail = reason.partition(" (")
        key = f"{kind}: {general}"
        self.dropped[key] += 1
        if detail and len(self.examples.setdefault(key, [])) < 3:
            self.examples[key].append(detail.rstrip(")"))

    def to_dict(self) -> dict:
        return {"kept": dict(self.kept), "dropped": dict(self.dropped.most_common()),
                "ran_in_sandbox": dict(self.ran), "examples": self.examples}


def _call_shape(call: ast.Call) -> tuple[int, set[str], bool]:
    positional = [a for a in call.args if not isinstance(a, ast.Starred)]
    starred = len(positional) != len(call.args) or any(k.arg is None for k in call.keywords)
    return len(positional), {k.arg for k in call.keywords if k.arg}, starred


def _bound_names(tree: ast.Module) -> set[str]:
    """Names the item itself binds (imports, assignments, definitions, comprehension targets)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return names


def readable_by_others(path: Path) -> bool:
    """Whether a user other than the owner can reach and read `path` (the sandbox's user)."""
    path = path.resolve()
    for part in [path, *path.parents]:
        try:
            mode = part.stat().st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True


class Verifier:
    """Judges items of one repository, whose modules are `modules` (by dotted name)."""

    def __init__(self, modules: dict[str, ModuleUnits], import_roots: dict[str, Path]):
        self.modules = modules
        self.import_roots = import_roots  # module -> the directory to put on sys.path
        self._externals: dict[str, tuple[bool, Signature | None]] = {}

    # Static checks ------------------------------------------------------------------------

    def check_call(self, text: str, local: str, signature: Signature | None, runnable: bool,
                   program: str, given: frozenset[str] = frozenset()) -> Check:
        """Judge a usage example `text` that must call `local` with `signature`'s arguments;
        `given` names variables the example may use unbound (a method's receiver)."""
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            return Check("does not parse")
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
        own = [c for c in calls if dotted_name(c.func) == local]
        if not own:
            return Check(f"does not call {local}")
        bound = _bound_names(tree) | given
        for call in calls:
            name = dotted_name(call.func)
            if name is None or call in own:
                continue
            head = name.split(".")[0]
            if head not in bound and head not in _BUILTINS:
                return Check(f"calls a missing symbol ({name})")
        if signature is not None:
            problem = signature.accepts(*_call_shape(own[0]))
            if problem:
                return Check(f"wrong arity ({problem})")
        free = self._free_names(tree, bound)
        if free:
            # Undefined variables: it cannot run, and it names things that do not exist.
            return Check(f"uses undefined names ({', '.join(sorted(free)[:3])})")
        return Check("", runnable, program)

    @staticmethod
    def _free_names(tree: ast.Module, bound: set[str]) -> set[str]:
        return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
                and n.id not in bound and n.id not in _BUILTINS}

    def usage_program(self, module: str) -> str:
        root = self.import_roots.get(module)
        return f"import sys\nsys.path.insert(0, {str(root)!r})\n" if root is not None else ""

    def external(self, target: str) -> tuple[bool, Signature | None]:
        """Whether external callable `target` exists, and its signature where it can be read."""
        if target not in self._externals:
            self._externals[target] = self._resolve_external(target)
        return self._externals[target]

    def _resolve_external(self, target: str) -> tuple[bool, Signature | None]:
        module, _, name = target.rpartition(".")
        if is_stdlib(target):
            # The standard library is trusted code already on this machine: import it here.
            for cut in range(target.count("."), 0, -1):
                parts = target.split(".")
                try:
                    obj = importlib.import_module(".".join(parts[:cut]))
                except ImportError:
                    continue
                try:
                    for attr in parts[cut:]:
                        obj = getattr(obj, attr)
                except AttributeError:
                    return False, None
                return callable(obj), _signature_of(obj)
            return False, None
        # Third-party code is never imported here: read its source.
        source = _module_source(module)
        if source is None:
            return False, None
        return _signature_in_source(source, name, module)

    def external_runs(self, target: str) -> bool:
        module = target.rpartition(".")[0]
        return module in PURE_STDLIB or module.split(".")[0] in PURE_STDLIB

    # Summaries ----------------------------------------------------------------------------

    @staticmethod
    def check_summary(answer: str, symbol: str) -> Check:
        text = answer.strip().strip('"').strip()
        if not text:
            return Check("empty")
        words = re.findall(r"[A-Za-z]+", text)
        if len(words) < 3:
            return Check("too short to say anything")
        if len(text) > 160:
            return Check("longer than a line")
        if sum(c.isalpha() or c == " " for c in text) < 0.75 * len(text):
            return Check("not prose (mostly digits or symbols)")
        if any(s in text for s in ("def ", "return ", "(self", "import ", "==", "):")):
            return Check("code, not prose")
        lowered = [w.lower() for w in words]
        trigrams = list(zip(lowered, lowered[1:], lowered[2:]))
        if len(set(trigrams)) < len(trigrams):
            return Check("repeats itself")
        name_words = set(re.findall(r"[a-z]+", symbol.lower().replace("_", " ")))
        if {w.lower() for w in words} <= name_words:
            return Check("only repeats the name")
        return Check("")


def _signature_of(obj) -> Signature | None:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    positional, keyword, required_kw = [], set(), set()
    required = 0
    var_pos = var_kw = False
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional.append(p.name)
            if p.default is p.empty:
                required = len(positional)
            if p.kind is p.POSITIONAL_OR_KEYWORD:
                keyword.add(p.name)
        elif p.kind is p.KEYWORD_ONLY:
            keyword.add(p.name)
            if p.default is p.empty:
                required_kw.add(p.name)
        elif p.kind is p.VAR_POSITIONAL:
            var_pos = True
        else:
            var_kw = True
    return Signature(tuple(positional), required, frozenset(keyword), frozenset(required_kw), var_pos, var_kw)


def _module_source(module: str) -> str | None:
    """The source text of a third-party module, found without importing anything."""
    parts = module.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if len(parts) == 1:
        origin = spec.origin
    else:
        locations = list(spec.submodule_search_locations or [])
        origin = None
        for location in locations:
            base = Path(location, *parts[1:])
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    origin = str(candidate)
                    break
    if not origin or not origin.endswith(".py"):
        return None
    try:
        return Path(origin).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _signature_in_source(source: str, name: str, module: str, hops: int = 3) -> tuple[bool, Signature | None]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return False, None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return True, Signature.of(node.args)
        if isinstance(node, ast.ClassDef) and node.name == name:
            init = next((c for c in node.body if isinstance(c, ast.FunctionDef) and c.name == "__init__"), None)
            return True, Signature.of(init.args, drop_first=True) if init else None
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return True, None
        if isinstance(node, ast.ImportFrom) and hops > 0:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    base = node.module or ""
                    if node.level:
                        parent = module.split(".")[: len(module.split(".")) - node.level + 1]
                        base = ".".join(parent + ([base] if base else []))
                    inner = _module_source(base)
                    if inner is None:
                        return True, None
                    return _signature_in_source(inner, alias.name, base, hops - 1)
    return False, None
