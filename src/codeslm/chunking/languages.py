"""Which language a file is, and the tree-sitter grammar and definition node types for it.

Grammars come from the per-language PyPI wheels, which carry them compiled; nothing is downloaded.
"""

from __future__ import annotations

from functools import cache
from pathlib import PurePosixPath

import tree_sitter

EXTENSIONS = {
    ".py": "python", ".pyi": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".mts": "typescript", ".cts": "typescript", ".tsx": "tsx",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp", ".hxx": "cpp",
    ".md": "markdown", ".markdown": "markdown",
    ".rst": "rst",
}
DOC_LANGUAGES = {"markdown", "rst"}

# Node type -> chunk kind, per grammar. Anything not listed is plain code.
DEFINITIONS: dict[str, dict[str, str]] = {
    "python": {
        "function_definition": "function",
        "class_definition": "class",
        "decorated_definition": "function",
    },
    "javascript": {
        "function_declaration": "function",
        "generator_function_declaration": "function",
        "class_declaration": "class",
        "method_definition": "method",
        "export_statement": "function",
        "lexical_declaration": "function",
        "variable_declaration": "function",
    },
    "go": {
        "function_declaration": "function",
        "method_declaration": "method",
        "type_declaration": "type",
    },
    "rust": {
        "function_item": "function",
        "impl_item": "impl",
        "struct_item": "struct",
        "enum_item": "enum",
        "trait_item": "trait",
        "mod_item": "module",
        "macro_definition": "macro",
    },
    "java": {
        "class_declaration": "class",
        "interface_declaration": "interface",
        "enum_declaration": "enum",
        "record_declaration": "class",
        "method_declaration": "method",
        "constructor_declaration": "method",
    },
    "c": {
        "function_definition": "function",
        "type_definition": "type",
        "struct_specifier": "struct",
        "enum_specifier": "enum",
    },
}
DEFINITIONS["typescript"] = DEFINITIONS["javascript"] | {
    "interface_declaration": "interface",
    "type_alias_declaration": "type",
    "enum_declaration": "enum",
    "abstract_class_declaration": "class",
    "internal_module": "module",
}
DEFINITIONS["tsx"] = DEFINITIONS["typescript"]
DEFINITIONS["cpp"] = DEFINITIONS["c"] | {
    "class_specifier": "class",
    "namespace_definition": "namespace",
    "template_declaration": "function",
}

# Kinds whose nested functions are methods.
CLASS_LIKE = {"class", "interface", "impl", "trait", "struct"}
# Wrappers that are definitions only through what they wrap (decorators, `export`, templates, `const f = () => …`).
WRAPPERS = {
    "decorated_definition", "export_statement", "template_declaration",
    "lexical_declaration", "variable_declaration",
}
FUNCTION_VALUES = {"arrow_function", "function_expression", "function", "generator_function"}


def language_for(path: str) -> str:
    """The language of `path` by its extension; "text" when no chunker knows it."""
    suffix = PurePosixPath(path).suffix.lower()
    return EXTENSIONS.get(suffix, "text")


@cache
def parser_for(language: str) -> tree_sitter.Parser | None:
    """A tree-sitter parser for `language`, or None when it has no grammar here."""
    grammar = _grammar(language)
    return tree_sitter.Parser(tree_sitter.Language(grammar)) if grammar is not None else None


def _grammar(language: str):
    if language == "python":
        import tree_sitter_python as m
    elif language == "javascript":
        import tree_sitter_javascript as m
    elif language in ("typescript", "tsx"):
        import tree_sitter_typescript as m

        return m.language_tsx() if language == "tsx" else m.language_typescript()
    elif language == "go":
        import tree_sitter_go as m
    elif language == "rust":
        import tree_sitter_rust as m
    elif language == "java":
        import tree_sitter_java as m
    elif language == "c":
        import tree_sitter_c as m
    elif language == "cpp":
        import tree_sitter_cpp as m
    else:
        return None
    return m.language()
