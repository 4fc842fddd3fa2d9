"""Chunk boundaries per language with the real tree-sitter grammars."""

import textwrap

import pytest

from codeslm.chunking import chunk_file_text, chunk_text


def _by_symbol(chunks):
    return {c.symbol: c for c in chunks}


def _assert_tiles(chunks, text):
    lines = text.splitlines(keepends=True)
    assert chunks[0].start_line == 1 and chunks[-1].end_line == len(lines)
    for a, b in zip(chunks, chunks[1:]):
        assert b.start_line == a.end_line + 1
    assert "".join(c.text for c in chunks) == text


PYTHON = textwrap.dedent('''\
    import os
    import sys

    LIMIT = 10


    def top_level(x):
        return x + 1


    class Config:
        """Settings."""

        def load(self, path):
            return open(path).read()

        @staticmethod
        def parse(text):
            return text.split()
    ''')


def test_python_functions_classes_and_merged_imports():
    chunks = chunk_text("pkg/config.py", PYTHON)
    _assert_tiles(chunks, PYTHON)
    kinds = [(c.kind, c.symbol) for c in chunks]
    assert kinds == [("code", ""), ("function", "top_level"), ("class", "Config")]
    header = chunks[0]
    assert "import os" in header.text and "LIMIT = 10" in header.text  # neighbours merged
    assert all(c.language == "python" and c.path == "pkg/config.py" for c in chunks)


def test_python_class_over_budget_splits_into_methods():
    chunks = chunk_text("pkg/config.py", PYTHON, max_chars=120)
    _assert_tiles(chunks, PYTHON)
    symbols = _by_symbol(chunks)
    assert symbols["Config.load"].kind == "method"
    assert symbols["Config.parse"].kind == "method"
    assert "@staticmethod" in symbols["Config.parse"].text  # decorator stays with its method
    assert symbols["Config"].text.lstrip().startswith("class Config:")


def test_large_function_split_at_statement_boundaries_keeps_its_name():
    body = "".join(f"    value_{i} = compute({i})\n" for i in range(80))
    text = f"def big():\n{body}    return value_0\n"
    chunks = chunk_text("big.py", text, max_chars=600)
    _assert_tiles(chunks, text)
    assert len(chunks) > 3
    assert {c.symbol for c in chunks} == {"big"}
    assert all(len(c.text) <= 600 for c in chunks)


@pytest.mark.parametrize(
    "path, source, expected",
    [
        ("a.js", "import x from 'y';\nfunction parseArgs(a) {\n  return a;\n}\nclass Server {\n  start() { return 1; }\n}\nexport const handler = (req) => req.body;\n",
         {("function", "parseArgs"), ("class", "Server"), ("function", "handler")}),
        ("a.ts", "interface Options { port: number }\nexport function serve(o: Options): void {\n  console.log(o.port);\n}\ntype Id = string;\n",
         {("interface", "Options"), ("function", "serve"), ("type", "Id")}),
        ("a.go", "package main\n\nimport \"fmt\"\n\ntype Server struct{ port int }\n\nfunc (s *Server) Start() error {\n\tfmt.Println(s.port)\n\treturn nil\n}\n\nfunc main() {}\n",
         {("type", "Server"), ("method", "Start"), ("function", "main")}),
        ("a.rs", "use std::io;\n\nstruct Point { x: i32 }\n\nimpl Point {\n    fn norm(&self) -> i32 { self.x }\n}\n\nfn main() {}\n",
         {("struct", "Point"), ("impl", "Point"), ("function", "main")}),
        ("A.java", "import java.util.List;\n\npublic class Parser {\n    public int parse(String s) { return s.length(); }\n}\n",
         {("class", "Parser")}),
        ("a.c", "#include <stdio.h>\n\nstatic int parse_line(const char *s) {\n    return s[0];\n}\n\nint main(void) { return parse_line(\"x\"); }\n",
         {("function", "parse_line"), ("function", "main")}),
        ("a.cpp", "#include <string>\n\nnamespace net {\nclass Socket {\n public:\n  int fd() const { return fd_; }\n private:\n  int fd_;\n};\n}\n",
         {("namespace", "net")}),
    ],
)
def test_definitions_per_language(path, source, expected):
    chunks, parse_error = chunk_file_text(path, source)
    assert not parse_error
    _assert_tiles(chunks, source)
    assert expected <= {(c.kind, c.symbol) for c in chunks}


def test_cpp_namespace_over_budget_yields_qualified_class():
    source = "namespace net {\nclass Socket {\n public:\n  int fd() const { return fd_; }\n  int port() const { return port_; }\n private:\n  int fd_;\n  int port_;\n};\n}\n"
    chunks = chunk_text("a.cpp", source, max_chars=100)
    assert "net.Socket" in {c.symbol for c in chunks}


def test_markdown_split_by_headings_ignores_fenced_hashes():
    text = "# Title\n\nintro " + "x" * 250 + "\n\n## Install\n\n```sh\n# not a heading\npip install x\n```\n\n" + "then configure " * 20 + "\n\n## Usage\n\nrun " + "y" * 250 + "\n"
    chunks = chunk_text("README.md", text)
    assert [c.symbol for c in chunks] == ["Title", "Install", "Usage"]
    assert "# not a heading" in chunks[1].text
    assert all(c.kind == "section" for c in chunks)


def test_tiny_markdown_sections_join_the_next():
    chunks = chunk_text("NOTES.md", "# A\n\nshort\n\n# B\n\n" + "long text " * 40 + "\n")
    assert len(chunks) == 1 and chunks[0].symbol == "A"


def test_rst_split_by_underlined_titles():
    text = "Guide\n=====\n\n" + "a " * 150 + "\n\nSetup\n-----\n\n" + "b " * 150 + "\n"
    chunks = chunk_text("docs/guide.rst", text)
    assert [c.symbol for c in chunks] == ["Guide", "Setup"]


def test_unparseable_code_falls_back_to_windows():
    text = "def broken(:\n    pass\n" + "x = 1\n" * 200
    chunks, parse_error = chunk_file_text("bad.py", text)
    assert parse_error
    assert all(c.kind == "window" for c in chunks)
    covered = set()
    for c in chunks:
        covered.update(range(c.start_line, c.end_line + 1))
    assert covered == set(range(1, 203))


def test_text_files_get_overlapping_windows():
    text = "".join(f"line {i} " + "z" * 40 + "\n" for i in range(200))
    chunks = chunk_text("notes.txt", text, max_chars=1000)
    assert len(chunks) > 5 and all(c.language == "text" for c in chunks)
    assert chunks[1].start_line <= chunks[0].end_line  # windows overlap
    assert chunks[-1].end_line == 200


def test_empty_file_has_no_chunks():
    assert chunk_text("empty.py", "") == []
    assert chunk_text("empty.md", "") == []
