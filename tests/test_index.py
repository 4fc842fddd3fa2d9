"""Building, updating and searching real indexes (tree-sitter, BM25, FAISS, MiniLM) on small repos."""

import json
import os
import sqlite3
import textwrap
from pathlib import Path

import pytest

from codeslm.errors import CodeslmError, IndexFormatError
from codeslm.index import Index, build_index

FILES = {
    "app/config.py": '''\
        """Settings."""
        import json


        def parse_config_file(path):
            """Read the JSON configuration file and return its settings."""
            with open(path) as f:
                return json.load(f)


        def default_port():
            return 8080
        ''',
    "app/network.py": '''\
        import socket


        def open_connection(host, port):
            """Open a TCP socket to host:port with a timeout."""
            sock = socket.create_connection((host, port), timeout=5)
            return sock


        def close_connection(sock):
            sock.close()
        ''',
    "app/images.py": '''\
        def resize_thumbnail(image, width, height):
            """Scale an image down to a thumbnail keeping its aspect ratio."""
            ratio = min(width / image.width, height / image.height)
            return image.resize((int(image.width * ratio), int(image.height * ratio)))
        ''',
    "web/client.js": '''\
        export function fetchUserProfile(userId) {
          return fetch(`/api/users/${userId}`).then((r) => r.json());
        }
        ''',
    "docs/guide.md": '''\
        # Deploying

        Build the container image and push it to the registry before rolling out.
        ''',
}


def make_repo(root: Path, files=FILES) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def repo(tmp_path):
    return make_repo(tmp_path / "repo")


def paths(hits):
    return [h.chunk.path for h in hits]


def test_bm25_relevance_and_identifier_splitting(repo, tmp_path):
    summary = build_index(repo, tmp_path / "ix", dense=False, progress=False)
    assert (summary.files, summary.added) == (5, 5)
    index = Index.open(tmp_path / "ix")
    assert paths(index.search("parseConfig", k=1, mode="bm25")) == ["app/config.py"]
    top = index.search("fetch user profile", k=1, mode="bm25")[0]
    assert (top.chunk.path, top.chunk.symbol) == ("web/client.js", "fetchUserProfile")
    assert index.search("zzzz qqqq", k=3, mode="bm25") == []
    # hybrid on an index without embeddings is BM25; dense is refused clearly
    assert paths(index.search("parseConfig", k=1)) == ["app/config.py"]
    with pytest.raises(IndexFormatError, match="--no-dense"):
        index.search("config", mode="dense")


def test_dense_and_hybrid_find_by_meaning(repo, tmp_path):
    build_index(repo, tmp_path / "ix", progress=False)
    index = Index.open(tmp_path / "ix")
    # no words in common with the function's identifiers: only meaning connects them
    assert paths(index.search("shrink a picture", k=1, mode="dense")) == ["app/images.py"]
    assert paths(index.search("how do I ship to production", k=1, mode="dense")) == ["docs/guide.md"]
    hybrid = index.search("read settings from the configuration file", k=2, mode="hybrid")
    assert hybrid[0].chunk.path == "app/config.py"
    assert hybrid[0].score > hybrid[1].score


def test_incremental_edit_add_delete(repo, tmp_path):
    ix = tmp_path / "ix"
    build_index(repo, ix, progress=False)
    assert build_index(repo, ix, progress=False).up_to_date

    (repo / "app/images.py").write_text("def crop_avatar(img):\n    return img.crop((0, 0, 64, 64))\n")
    (repo / "app/cache.py").write_text("def lru_cache_evict(cache):\n    cache.popitem(last=False)\n")
    (repo / "web/client.js").unlink()
    s = build_index(repo, ix, progress=False)
    assert (s.added, s.changed, s.removed, s.unchanged) == (1, 1, 1, 3)
    assert s.embedded == 2  # only the new chunks were embedded
    index = Index.open(ix)
    assert index.search("resize thumbnail", k=3, mode="bm25") == []
    assert paths(index.search("crop avatar", k=1, mode="bm25")) == ["app/images.py"]
    assert paths(index.search("evict cache", k=1, mode="bm25")) == ["app/cache.py"]
    assert "web/client.js" not in paths(index.search("fetch user profile", k=10, mode="hybrid"))
    assert paths(index.search("cropping a profile picture", k=1, mode="dense")) == ["app/images.py"]
    # the result equals a fresh build
    fresh = build_index(repo, tmp_path / "fresh", progress=False)
    assert (fresh.files, fresh.chunks) == (s.files, s.chunks)


def test_touched_file_is_not_rechunked(repo, tmp_path):
    ix = tmp_path / "ix"
    build_index(repo, ix, dense=False, progress=False)
    os.utime(repo / "app/config.py", ns=(1, 1))
    s = build_index(repo, ix, dense=False, progress=False)
    assert s.up_to_date and s.unchanged == 5


def test_search_code_never_returns_cursor_chunk_or_later(tmp_path):
    lines = [f"def step_{i}(state):\n    return state.advance_widget({i})\n\n\n" for i in range(6)]
    repo = make_repo(tmp_path / "repo", {"pkg/steps.py": "".join(lines),
                                        "pkg/other.py": "def helper(state):\n    return state.advance_widget(99)\n"})
    build_index(repo, tmp_path / "ix", dense=False, progress=False)
    index = Index.open(tmp_path / "ix")
    all_hits = index.search_code("state.advance_widget", k=20)
    assert len(all_hits) == 7
    cursor_line = 10  # inside step_2 (lines 9-12)
    hits = index.search_code("state.advance_widget", k=20, exclude=("pkg/steps.py", cursor_line))
    for h in hits:
        assert h.chunk.path != "pkg/steps.py" or h.chunk.end_line < cursor_line
    assert {h.chunk.symbol for h in hits} == {"step_0", "step_1", "helper"}
    only_other = index.search_code("advance_widget", k=20, exclude_files=["pkg/steps.py"])
    assert paths(only_other) == ["pkg/other.py"]


def test_skips_are_counted_by_reason(tmp_path):
    repo = make_repo(tmp_path / "repo", {"keep.py": "def kept():\n    return 1\n"})
    (repo / ".gitignore").write_text("build/\n*.log\n")
    (repo / "build").mkdir()
    (repo / "build/gen.py").write_text("x = 1\n")
    (repo / "debug.log").write_text("log line\n")
    (repo / "sub").mkdir()
    (repo / "sub/.codeslmignore").write_text("secret.py\n")
    (repo / "sub/secret.py").write_text("token = 1\n")
    (repo / "node_modules/lib").mkdir(parents=True)
    (repo / "node_modules/lib/index.js").write_text("module.exports = 1;\n")
    (repo / ".git").mkdir()
    (repo / ".git/config").write_text("[core]\n")
    (repo / "venv").mkdir()
    (repo / "venv/pyvenv.cfg").write_text("home = /usr\n")
    (repo / "logo.png").write_bytes(b"\x89PNG\r\n")
    (repo / "data.dat").write_bytes(b"abc\x00def")
    (repo / "big.py").write_text("x = 1\n" * 1000)
    (repo / "latin1.py").write_bytes("name = 'caf\xe9'\n".encode("latin-1"))
    (repo / "loop").symlink_to(repo, target_is_directory=True)
    (repo / "dangling.py").symlink_to(repo / "missing.py")
    s = build_index(repo, tmp_path / "ix", dense=False, max_file_size=2000, progress=False)
    assert s.files == 1
    assert s.skipped == {
        "ignored by .gitignore/.codeslmignore": 3, "vcs or dependency folder": 2,
        "virtual environment": 1, "binary": 2, "too large": 1, "not UTF-8": 1, "symlink": 2,
    }


def test_bad_inputs_have_clear_errors(tmp_path):
    with pytest.raises(CodeslmError, match="does not exist"):
        build_index(tmp_path / "nope", tmp_path / "ix", progress=False)
    (tmp_path / "file.py").write_text("x = 1\n")
    with pytest.raises(CodeslmError, match="is a file, not a repository"):
        build_index(tmp_path / "file.py", tmp_path / "ix", progress=False)
    notindex = tmp_path / "notindex"
    notindex.mkdir()
    (notindex / "precious.txt").write_text("keep me")
    repo = make_repo(tmp_path / "repo")
    with pytest.raises(IndexFormatError, match="not a codeslm index"):
        build_index(repo, notindex, progress=False)
    assert (notindex / "precious.txt").read_text() == "keep me"
    with pytest.raises(IndexFormatError, match="not a codeslm index"):
        Index.open(notindex)
    with pytest.raises(IndexFormatError, match="does not exist"):
        Index.open(tmp_path / "missing")


def test_empty_repo_gives_a_valid_empty_index(tmp_path):
    (tmp_path / "empty").mkdir()
    s = build_index(tmp_path / "empty", tmp_path / "ix", progress=False)
    assert (s.files, s.chunks) == (0, 0)
    index = Index.open(tmp_path / "ix")
    assert index.search("anything", mode="hybrid") == []
    assert index.search_code("x = 1", exclude=("a.py", 1)) == []


def test_corrupt_or_incompatible_index_says_rebuild(repo, tmp_path):
    ix = tmp_path / "ix"
    build_index(repo, ix, dense=False, progress=False)
    manifest = json.loads((ix / "manifest.json").read_text())
    meta = ix / f"meta-{manifest['generation']}.sqlite"
    meta.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(IndexFormatError, match="corrupt.*rebuild"):
        Index.open(ix)
    with pytest.raises(IndexFormatError, match="rebuild"):
        build_index(repo, ix, dense=False, progress=False)
    s = build_index(repo, ix, dense=False, rebuild=True, progress=False)
    assert s.files == 5 and len(Index.open(ix)) == s.chunks

    manifest = json.loads((ix / "manifest.json").read_text())
    manifest["format_version"] = 999
    (ix / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="format 999.*--rebuild"):
        Index.open(ix)
    (ix / "manifest.json").write_text("{ broken json")
    with pytest.raises(IndexFormatError, match="corrupt"):
        Index.open(ix)


def test_index_of_another_repo_is_not_overwritten(repo, tmp_path):
    build_index(repo, tmp_path / "ix", dense=False, progress=False)
    other = make_repo(tmp_path / "other", {"x.py": "y = 2\n"})
    with pytest.raises(IndexFormatError, match="--rebuild"):
        build_index(other, tmp_path / "ix", dense=False, progress=False)
    assert Index.open(tmp_path / "ix").search("parseConfig", mode="bm25")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_files_are_skipped(tmp_path):
    repo = make_repo(tmp_path / "repo", {"a.py": "x = 1\n", "b.py": "y = 2\n"})
    (repo / "b.py").chmod(0)
    s = build_index(repo, tmp_path / "ix", dense=False, progress=False)
    assert s.files == 1 and s.skipped["unreadable"] == 1


def test_metadata_holds_hashes_and_chunk_records(repo, tmp_path):
    build_index(repo, tmp_path / "ix", dense=False, progress=False)
    index = Index.open(tmp_path / "ix")
    db = sqlite3.connect(index.store.path)
    sha = db.execute("SELECT sha FROM files WHERE path = 'app/config.py'").fetchone()[0]
    assert len(sha) == 32
    row = db.execute(
        "SELECT language, kind, symbol, start_line, end_line FROM chunks WHERE symbol = 'parse_config_file'"
    ).fetchone()
    assert row == ("python", "function", "parse_config_file", 3, 8)
