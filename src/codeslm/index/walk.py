"""Finding the files of a repository worth indexing.

Honours `.gitignore` and `.codeslmignore` at every level, skips version-control and dependency
folders, virtual environments, symbolic links (so link loops cannot trap the walk), binaries and
files over the size limit, and counts every skip by its reason. Reading and decoding happen in
`read_source`, which says why a file cannot be used.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pathspec

IGNORE_FILES = (".gitignore", ".codeslmignore")
SKIP_DIRS = {
    ".git", ".hg", ".svn", "node_modules", "__pycache__", ".tox", ".nox", ".mypy_cache",
    ".pytest_cache", ".ruff_cache", ".eggs", ".idea", ".vscode",
}
BINARY_SUFFIXES = {
    ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".ico", ".webp", ".pdf", ".zip", ".gz", ".bz2",
    ".xz", ".tar", ".tgz", ".7z", ".whl", ".egg", ".jar", ".class", ".so", ".dll", ".dylib",
    ".o", ".a", ".pyc", ".pyo", ".exe", ".bin", ".npy", ".npz", ".pt", ".pth", ".safetensors",
    ".onnx", ".sqlite", ".db", ".woff", ".woff2", ".ttf", ".otf", ".mp3", ".mp4", ".wav",
    ".avi", ".mov", ".pkl", ".parquet", ".faiss",
}
DEFAULT_MAX_FILE_SIZE = 1_000_000


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative to the repository root, with "/" separators
    abspath: Path
    size: int
    mtime_ns: int


class UnusableFile(Exception):
    """A file that was found but cannot be indexed; the message is the skip reason."""


def walk_repo(
    root: Path, max_file_size: int = DEFAULT_MAX_FILE_SIZE
) -> tuple[list[SourceFile], Counter]:
    """The indexable files under `root`, sorted by path, and the count of skips by reason."""
    files: list[SourceFile] = []
    skipped: Counter = Counter()
    specs: list[tuple[str, pathspec.PathSpec]] = []  # (directory relative to root, its rules)

    def on_error(err: OSError) -> None:
        skipped["unreadable directory"] += 1

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir
        specs = [(d, s) for d, s in specs if _is_within(rel_dir, d)]
        for name in IGNORE_FILES:
            if name in filenames:
                spec = _read_ignore_file(Path(dirpath) / name)
                if spec is not None:
                    specs.append((rel_dir, spec))

        kept_dirs = []
        for name in sorted(dirnames):
            full, rel = os.path.join(dirpath, name), _join(rel_dir, name)
            if os.path.islink(full):
                skipped["symlink"] += 1
            elif name in SKIP_DIRS:
                skipped["vcs or dependency folder"] += 1
            elif os.path.exists(os.path.join(full, "pyvenv.cfg")):
                skipped["virtual environment"] += 1
            elif _ignored(specs, rel, is_dir=True):
                skipped["ignored by .gitignore/.codeslmignore"] += 1
            else:
                kept_dirs.append(name)
        dirnames[:] = kept_dirs

        for name in sorted(filenames):
            full, rel = Path(dirpath) / name, _join(rel_dir, name)
            if name in IGNORE_FILES:
                continue
            if full.is_symlink():
                skipped["symlink"] += 1
                continue
            if _ignored(specs, rel, is_dir=False):
                skipped["ignored by .gitignore/.codeslmignore"] += 1
                continue
            if full.suffix.lower() in BINARY_SUFFIXES:
                skipped["binary"] += 1
                continue
            try:
                st = full.stat()
            except OSError:
                skipped["unreadable"] += 1
                continue
            if st.st_size > max_file_size:
                skipped["too large"] += 1
                continue
            files.append(SourceFile(rel, full, st.st_size, st.st_mtime_ns))
    files.sort(key=lambda f: f.path)
    return files, skipped


def read_source(file: SourceFile) -> tuple[bytes, str]:
    """The bytes and text of `file`; raises UnusableFile naming why it cannot be indexed."""
    try:
        data = file.abspath.read_bytes()
    except OSError as e:
        raise UnusableFile("unreadable") from e
    if b"\0" in data[:8192]:
        raise UnusableFile("binary")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UnusableFile("not UTF-8") from e
    if not text.strip():
        raise UnusableFile("empty")
    return data, text


def _read_ignore_file(path: Path) -> pathspec.PathSpec | None:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    return pathspec.GitIgnoreSpec.from_lines(lines)


def _ignored(specs, rel: str, is_dir: bool) -> bool:
    for base, spec in specs:
        sub = rel[len(base) + 1 :] if base else rel
        if spec.match_file(sub + "/" if is_dir else sub):
            return True
    return False


def _is_within(rel_dir: str, base: str) -> bool:
    return base == "" or rel_dir == base or rel_dir.startswith(base + "/")


def _join(rel_dir: str, name: str) -> str:
    return f"{rel_dir}/{name}" if rel_dir else name
