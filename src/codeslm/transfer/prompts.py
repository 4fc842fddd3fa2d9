"""What the teacher is asked to write, per item kind, and the item text built from its answer.

Three kinds, each a named, versioned template (the version is part of every item's provenance
and of the cache key, so changing a template regenerates its items):
- `usage`: a call of the repository's own unit, as a test file of the repository would write it;
- `external`: a call of an external callable the unit uses, written after that unit;
- `summary`: the first docstring line of an undocumented unit, filled in at the docstring's place.

Prompts use the teacher's repository-level FIM format when its tokenizer has one, else plain text.
But: it does not sample (see `codeslm.transfer.teacher`) or judge (see `codeslm.transfer.verify`).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from codeslm.errors import ModelError
from codeslm.transfer.units import ModuleUnits, Unit, import_line

ITEM_KINDS = ("usage", "external", "summary")
# Version 2: the teacher re-writes the prompt's last token (token healing).
TEMPLATE_VERSIONS = {"usage": "usage-v2", "external": "external-v2", "summary": "summary-v2"}
SOURCE_TOKENS = 320  # of the unit's own text shown to the teacher


@dataclass(frozen=True)
class Ask:
    """One request to the teacher: the prompt, and how its answer becomes an item."""

    kind: str
    target: str  # the symbol the item is about ("pkg.mod.name" or "re.compile")
    prompt: str
    head: str  # the item's text before the teacher's answer
    tail: str = ""  # and after it
    local: str = ""  # the called name as the item's code writes it

    def item_text(self, answer: str) -> str:
        return f"{self.head}{answer}{self.tail}"

    @property
    def template(self) -> str:
        return TEMPLATE_VERSIONS[self.kind]


def _snake(name: str) -> str:
    out = "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
    return out or "obj"


class PromptBuilder:
    """Builds `Ask`s for one teacher tokenizer and repository name."""

    def __init__(self, tokenizer, repo_name: str):
        from codeslm.model.prompt import fim_template

        self.tokenizer = tokenizer
        self.repo_name = repo_name
        try:
            self.template = fim_template(tokenizer)
        except ModelError:
            self.template = None  # a plain causal LM: plain-text prompts, no infilling

    def _source(self, unit: Unit) -> str:
        ids = self.tokenizer(unit.text, add_special_tokens=False)["input_ids"]
        if len(ids) <= SOURCE_TOKENS:
            return unit.text
        return self.tokenizer.decode(ids[:SOURCE_TOKENS]).rsplit("\n", 1)[0] + "\n"

    def _left_to_right(self, context: list[tuple[str, str]], path: str, text: str) -> str:
        if self.template is not None:
            from codeslm.model.prompt import build_prompt

            return build_prompt(self.tokenizer, text, None, context, self.repo_name, max_tokens=960,
                                path=path, context_share=0.6)
        blocks = "".join(f"# {p}\n{t if t.endswith(chr(10)) else t + chr(10)}\n" for p, t in context)
        return f"{blocks}# {path}\n{text}"

    def usage(self, unit: Unit) -> Ask:
        """A call of `unit` (a public function, class or method of the repository)."""
        top = unit.symbol.split(".")[0]
        imports = f"from {unit.module} import {top}\n\n" if unit.module else ""
        if unit.kind == "method":
            cls, meth = unit.symbol.split(".", 1)
            call = f"{_snake(cls)}.{meth}("
            head = f"{imports}{call}"
        elif unit.kind == "class":
            call = f"{_snake(unit.name)} = {unit.name}("
            head = f"{imports}{call}"
        else:
            call = f"result = {unit.name}("
            head = f"{imports}{call}"
        test_path = f"tests/test_{(unit.module or unit.path).rsplit('.', 1)[-1]}.py"
        prompt = self._left_to_right([(unit.path, self._source(unit))], test_path, head)
        return Ask("usage", f"{unit.module}.{unit.symbol}" if unit.module else unit.symbol, prompt,
                   head, local=call.split("=")[-1].strip().rstrip("("))

    def external(self, unit: Unit, module: ModuleUnits, target: str, local: str) -> Ask:
        """A call of the external callable `target`, written as the unit's file writes it."""
        imports = import_line(local, module.imports)
        head = f"{imports}\n\nresult = {local}("
        prompt = self._left_to_right([(unit.path, self._source(unit))],
                                     f"examples/{target.split('.')[0]}_usage.py", head)
        return Ask("external", target, prompt, head, local=local)

    def summary(self, unit: Unit) -> Ask | None:
        """The first docstring line of an undocumented unit; None when it has a docstring."""
        if unit.docstring:
            return None
        lines = unit.text.split("\n")
        header = "\n".join(lines[: unit.header_lines])
        body = "\n".join(lines[unit.header_lines :])
        body_indent = unit.indent + "    "
        for line in lines[unit.header_lines :]:
            if line.strip():
                body_indent = line[: len(line) - len(line.lstrip())]
                break
        prefix = f"{header}\n{body_indent}\"\"\""
        suffix = f"\n{body_indent}\"\"\"\n{body}"
        target = f"{unit.module}.{unit.symbol}" if unit.module else unit.symbol
        head = f"{textwrap.dedent(header).strip()}\n    \"\"\""
        if self.template is not None:
            from codeslm.model.prompt import build_prompt

            prompt = build_prompt(self.tokenizer, prefix, suffix, (), self.repo_name, max_tokens=900)
        else:
            prompt = f"# {unit.path}\n{prefix}"
        return Ask("summary", target, prompt, head, tail='"""\n')
