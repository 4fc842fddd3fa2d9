"""The code units a teacher writes about: Python functions, methods and classes of a repository.

Each unit carries what the filter needs to judge an example of it: its module path, its
signature (which argument counts and keywords a call may use), whether it is public and
documented, whether its body looks free of I/O (so an example may run in the sandbox), and the
external symbols (standard library and third party) it calls.
But: it does not generate (see `codeslm.transfer.teacher`) or judge items (`codeslm.transfer.verify`).
"""

from __future__ import annotations

import ast
import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

UNIT_KINDS = ("function", "method", "class")
# Calls that reach outside the process (files, clocks, the network, other processes): a unit
# that makes one is not run in the sandbox.
_IMPURE_NAMES = {"open", "print", "input", "exec", "eval", "compile", "breakpoint", "exit", "quit",
                 "__import__", "globals", "setattr", "delattr"}
_IMPURE_MODULES = {"os", "sys", "io", "subprocess", "socket", "shutil", "pathlib", "tempfile",
                   "threading", "multiprocessing", "asyncio", "time", "logging", "signal", "select",
                   "urllib", "http", "requests", "ctypes", "glob", "sqlite3", "pickle", "random",
                   "datetime", "uuid", "webbrowser", "warnings", "gc", "atexit", "importlib"}


@dataclass(frozen=True)
class Signature:
    """What calls a callable accepts, as far as its `def` line tells."""

    positional: tuple[str, ...]  # names of parameters that may be passed by position
    required: int  # how many of those have no default
    keyword: frozenset[str]  # names that may be passed by keyword
    required_keyword: frozenset[str]  # keyword-only names without a default
    var_positional: bool = False
    var_keyword: bool = False

    def accepts(self, n_positional: int, keywords: set[str], starred: bool = False) -> str | None:
        """None when a call with these arguments fits; else why it does not."""
        if n_positional > len(self.positional) and not self.var_positional:
            return f"{n_positional} positional arguments, at most {len(self.positional)} allowed"
        unknown = keywords - self.keyword
        if unknown and not self.var_keyword:
            return f"no parameter named {', '.join(sorted(unknown))}"
        if starred:
            return None  # *args/**kwargs at the call: the counts cannot be checked
        filled = set(self.positional[:n_positional]) | keywords
        missing = [p for p in self.positional[: self.required] if p not in filled]
        missing += sorted(self.required_keyword - keywords)
        if missing:
            return f"missing required argument {', '.join(missing)}"
        twice = set(self.positional[:n_positional]) & keywords
        if twice:
            return f"argument {', '.join(sorted(twice))} given twice"
        return None

    @classmethod
    def of(cls, args: ast.arguments, drop_first: bool = False) -> Signature:
        positional = [a.arg for a in args.posonlyargs + args.args]
        n_defaults = len(args.defaults)
        required = len(positional) - n_defaults
        posonly = {a.arg for a in args.posonlyargs}
        if drop_first and positional:
            positional = positional[1:]
            required = max(required - 1, 0)
        kwonly = [a.arg for a in args.kwonlyargs]
        required_kw = {a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is None}
        return cls(tuple(positional), required,
                   frozenset((set(positional) - posonly) | set(kwonly)), frozenset(required_kw),
                   args.vararg is not None, args.kwarg is not None)

    def render(self) -> str:
        parts = list(self.positional)
        if self.var_positional:
            parts.append("*args")
        parts += sorted(self.keyword - set(self.positional))
        if self.var_keyword:
            parts.append("**kwargs")
        return ", ".join(parts)


@dataclass(frozen=True)
class Unit:
    path: str  # repository-relative
    module: str  # dotted import path ("pkg.sub.mod")
    kind: str  # "function", "method" or "class"
    symbol: str  # "name" or "Class.name"
    start_line: int  # 1-based, inclusive, decorators included
    end_line: int
    text: str
    signature: Signature | None  # None for a class without an __init__ of its own
    docstring: str  # its first line, "" when undocumented
    pure: bool  # no I/O in its body, so an example of it may run in the sandbox
    # External callables it calls: (dotted target, the name as the unit writes it), e.g.
    # ("collections.OrderedDict", "OrderedDict") or ("numpy.asarray", "np.asarray").
    externals: tuple[tuple[str, str], ...] = ()
    header_lines: int = 1  # lines up to the end of its `def`/`class` line, decorators included
    indent: str = ""

    @property
    def name(self) -> str:
        return self.symbol.rsplit(".", 1)[-1]

    @property
    def public(self) -> bool:
        return not any(part.startswith("_") for part in self.symbol.split("."))

    @property
    def in_tests(self) -> bool:
        """Test code is no one's API: the teacher writes nothing about it."""
        return _is_test(self.path)

    @property
    def sha(self) -> str:
        """Identity of what the teacher reads: the unit's text and where it lives."""
        return hashlib.sha256(f"{self.module}\0{self.symbol}\0{self.text}".encode()).hexdigest()[:24]


@dataclass
class ModuleUnits:
    path: str
    module: str
    units: list[Unit] = field(default_factory=list)
    imports: dict[str, str] = field(default_factory=dict)  # local name -> dotted target
    names: set[str] = field(default_factory=set)  # top-level names the module defines


def module_name(path: str) -> str:
    """The dotted import path of a repository-relative `.py` file (a leading `src/` dropped)."""
    parts = list(Path(path).with_suffix("").parts)
    if parts and parts[0] in ("src", "lib"):
        parts = parts[1:]
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_root(repo: Path, path: str) -> Path:
    """The directory to put on `sys.path` so that `module_name(path)` imports."""
    first = Path(path).parts[0] if Path(path).parts else ""
    return repo / first if first in ("src", "lib") else repo


def _is_test(path: str) -> bool:
    parts = Path(path).parts
    name = Path(path).name
    return any(p in ("tests", "test", "testing") for p in parts[:-1]) or name.startswith("test_") \
        or name.endswith("_test.py") or name == "conftest.py"


def parse_module(path: str, text: str, local_packages: set[str]) -> ModuleUnits | None:
    """The units of one Python file; None when it does not parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    lines = text.splitlines()
    found = ModuleUnits(path, module_name(path))
    found.imports = _imports(tree, found.module, path.endswith("__init__.py"))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found.names.update(t.id for t in targets if isinstance(t, ast.Name))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.units.append(_unit(found, node, "function", node.name, lines, local_packages))
        elif isinstance(node, ast.ClassDef):
            found.units.append(_unit(found, node, "class", node.name, lines, local_packages))
            for child in node.body:
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    found.units.append(
                        _unit(found, child, "method", f"{node.name}.{child.name}", lines, local_packages))
    return found


def _imports(tree: ast.Module, module: str, is_package: bool) -> dict[str, str]:
    imports = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    imports[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    imports[top] = top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[: max(keep, 0)] + ([base] if base else []))
            for alias in node.names:
                if alias.name != "*":
                    imports[alias.asname or alias.name] = f"{base}.{alias.name}" if base else alias.name
    return imports


def _unit(found: ModuleUnits, node, kind: str, symbol: str, lines: list[str],
          local_packages: set[str]) -> Unit:
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    end = node.end_lineno or node.lineno
    body_start = node.body[0].lineno if node.body else end
    header = max(body_start - start, 1)
    if isinstance(node, ast.ClassDef):
        init = next((c for c in node.body if isinstance(c, ast.FunctionDef) and c.name == "__init__"), None)
        signature = Signature.of(init.args, drop_first=True) if init is not None else None
        pure_node = init
    else:
        is_method = kind == "method" and not any(
            isinstance(d, ast.Name) and d.id == "staticmethod" for d in node.decorator_list)
        signature = Signature.of(node.args, drop_first=is_method)
        pure_node = node if not isinstance(node, ast.AsyncFunctionDef) else None
    doc = ast.get_docstring(node) or ""
    return Unit(
        path=found.path, module=found.module, kind=kind, symbol=symbol, start_line=start, end_line=end,
        text="\n".join(lines[start - 1 : end]) + "\n", signature=signature,
        docstring=doc.strip().split("\n", 1)[0].strip() if doc else "",
        pure=pure_node is not None and _looks_pure(pure_node, found.imports) if kind != "method" else False,
        externals=tuple(_external_calls(node, found.imports, local_packages)),
        header_lines=header, indent=lines[node.lineno - 1][: node.col_offset] if node.lineno <= len(lines) else "",
    )


def dotted_name(node) -> str | None:
    """`a.b.c` for a name or attribute chain, None for anything else (a call, a subscript)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _looks_pure(node, imports: dict[str, str]) -> bool:
    for child in ast.walk(node):
        if isinstance(child, (ast.Global, ast.Nonlocal, ast.Await, ast.Yield, ast.YieldFrom)):
            return False
        if isinstance(child, ast.Call):
            name = dotted_name(child.func)
            if name is None:
                continue
            head = name.split(".")[0]
            target = imports.get(head, head).split(".")[0]
            if name in _IMPURE_NAMES or target in _IMPURE_MODULES:
                return False
    return True


def _external_calls(node, imports: dict[str, str], local_packages: set[str]) -> list[tuple[str, str]]:
    """The callables from outside the repository that `node` calls, in order of appearance."""
    seen = []
    for child in ast.walk(node):
        if not isinstance(child, ast.Call):
            continue
        name = dotted_name(child.func)
        if name is None:
            continue
        head, _, rest = name.partition(".")
        if head not in imports:
            continue
        target = imports[head] + (f".{rest}" if rest else "")
        if target.split(".")[0] in local_packages or "." not in target:
            continue
        if all(target != t for t, _ in seen):
            seen.append((target, name))
    return seen


def local_packages(paths: list[str]) -> set[str]:
    """Top-level import names the repository itself provides."""
    names = set()
    for path in paths:
        module = module_name(path)
        if module:
            names.add(module.split(".")[0])
    return names


def import_line(local: str, imports: dict[str, str]) -> str:
    """The import statement that binds the first name of `local` as the module does."""
    head = local.split(".")[0]
    target = imports.get(head, head)
    if "." in target:
        parent, last = target.rsplit(".", 1)
        return f"from {parent} import {last}" + (f" as {head}" if last != head else "")
    return f"import {target}" + (f" as {head}" if target != head else "")


def is_stdlib(dotted: str) -> bool:
    return dotted.split(".")[0] in sys.stdlib_module_names
