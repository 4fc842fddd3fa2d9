"""Prompts in the repository-level fill-in-the-middle format, for our model and other families.

`<repo_name>NAME\\n`, one `<file_sep>PATH\\nTEXT` block per retrieved chunk (most relevant last,
nearest the cursor), then `<fim_prefix><fim_suffix>SUFFIX<fim_middle>PREFIX` (infilling, in
suffix-prefix-middle order, so the middle continues the prefix) or `<file_sep>PATH\\nPREFIX`
(left to right). Other families get their own tokens, in prefix-suffix-middle order where
that is the one they were trained on. Training builds its retrieval-augmented examples from
the same `FimTemplate`, so the model sees at run time exactly the layout it was trained on.
But: it does not retrieve (see `codeslm.index`) or generate (see `codeslm.model.generate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from codeslm.errors import ModelError


@dataclass(frozen=True)
class FimTemplate:
    """The special tokens of one model family; `file_sep`/`repo_name` are None where it has none.

    Families without repository tokens get retrieved chunks as plain text before the prefix,
    each headed by a comment line naming its file.
    """

    family: str
    prefix: str
    suffix: str
    middle: str
    eot: str
    file_sep: str | None = None
    repo_name: str | None = None
    pad: str | None = None
    # CodeLlama's infilling format puts a space after <PRE> and before <MID>.
    spaced: bool = False
    # Suffix-prefix-middle order: the prompt ends with the prefix, so the middle continues the
    # text it follows as in left-to-right code, and a keystroke only appends to the prompt.
    spm: bool = False

    @property
    def stop_tokens(self) -> tuple[str, ...]:
        """Tokens after which a completion is over (end of text, a new file, padding)."""
        return tuple(t for t in (self.eot, self.file_sep, self.pad) if t)

    def ids(self, tokenizer) -> dict[str, int]:
        """Token ids of this template's special tokens in `tokenizer`."""
        names = ("prefix", "suffix", "middle", "eot", "file_sep", "repo_name", "pad")
        return {
            n: tokenizer.convert_tokens_to_ids(getattr(self, n))
            for n in names
            if getattr(self, n) is not None
        }

    def fim_text(self, prefix: str, suffix: str) -> str:
        """The infilling prompt (prefix-suffix-middle, or suffix-prefix-middle for `spm`
        families); the model writes the middle next."""
        if self.spm:
            return f"{self.prefix}{self.suffix}{suffix}{self.middle}{prefix}"
        if self.spaced:
            return f"{self.prefix} {prefix} {self.suffix}{suffix} {self.middle}"
        return f"{self.prefix}{prefix}{self.suffix}{suffix}{self.middle}"

    def context_text(self, context: Sequence[tuple[str, str]], repo_name: str | None) -> str:
        """The repository header and the retrieved chunks, in the order given."""
        parts = []
        if repo_name and self.repo_name:
            parts.append(f"{self.repo_name}{repo_name}\n")
        for path, text in context:
            parts.append(self.block(path, text))
        return "".join(parts)

    def block(self, path: str, text: str) -> str:
        """One retrieved chunk (or the current file's header when `text` is empty)."""
        if text and not text.endswith("\n"):
            text += "\n"
        if self.file_sep:
            return f"{self.file_sep}{path}\n{text}"
        return f"# {path}\n{text}" if text else ""


OURS = FimTemplate(
    family="codeslm",
    prefix="<fim_prefix>",
    suffix="<fim_suffix>",
    middle="<fim_middle>",
    eot="<|endoftext|>",
    file_sep="<file_sep>",
    repo_name="<repo_name>",
    pad="<fim_pad>",
    spm=True,
)
QWEN = FimTemplate(
    family="qwen",
    prefix="<|fim_prefix|>",
    suffix="<|fim_suffix|>",
    middle="<|fim_middle|>",
    eot="<|endoftext|>",
    file_sep="<|file_sep|>",
    repo_name="<|repo_name|>",
    pad="<|fim_pad|>",
)
CODELLAMA = FimTemplate(
    family="codellama", prefix="<PRE>", suffix="<SUF>", middle="<MID>", eot="<EOT>", spaced=True
)
# StarCoder shares our tokens (and its end of text); the first family whose tokens all exist wins.
TEMPLATES = (OURS, QWEN, CODELLAMA)


def fim_template(tokenizer) -> FimTemplate:
    """The template whose FIM tokens `tokenizer` has; `ModelError` if it has none we know."""
    vocab = tokenizer.get_vocab()
    for template in TEMPLATES:
        if all(t in vocab for t in (template.prefix, template.suffix, template.middle)):
            return template
    known = ", ".join(f"{t.family} ({t.prefix})" for t in TEMPLATES)
    raise ModelError(f"the tokenizer has no fill-in-the-middle tokens of a known family: {known}")


def position_limit(model) -> int:
    """The positions `model` was trained on (4096 when its config does not say)."""
    return getattr(model.config, "max_position_embeddings", None) or 4096


def prompt_budget(model, wanted: int | None, reserve: int) -> int:
    """Prompt tokens to give `build_prompt`: at most `wanted` (None: no cap of its own), leaving
    `reserve` of the model's trained positions for new tokens, and never fewer than 64."""
    room = position_limit(model) - reserve
    return max(64, room if wanted is None else min(wanted, room))


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _tail(tokenizer, text: str, n: int) -> str:
    """The last `n` tokens' worth of `text`, starting at a line start when one is in reach."""
    if n <= 0:
        return ""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= n:
        return text
    tail = tokenizer.decode(ids[-n:])
    cut = tail.find("\n")
    return tail[cut + 1 :] if 0 <= cut < len(tail) - 1 else tail


def _head(tokenizer, text: str, n: int) -> str:
    """The first `n` tokens' worth of `text`, ending at a line end when one is in reach."""
    if n <= 0:
        return ""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= n:
        return text
    head = tokenizer.decode(ids[:n])
    cut = head.rfind("\n")
    return head[: cut + 1] if cut > 0 else head


def build_prompt(
    tokenizer,
    prefix: str,
    suffix: str | None = None,
    context: Sequence[tuple[str, str]] = (),
    repo_name: str | None = None,
    max_tokens: int = 1024,
    path: str | None = None,
    context_share: float = 0.5,
) -> str:
    """The prompt for completing at the cursor between `prefix` and `suffix`, within `max_tokens`.

    `context` holds `(path, text)` retrieved chunks, most relevant last. With `suffix=None` the
    prompt is left to right (context, then the current file's header naming `path` when given,
    then the prefix). Up to `context_share` of the budget is kept for context (as much as the
    blocks need); the rest goes first to the prefix nearest the cursor, then to the suffix (at
    most a quarter of it); what the file leaves over goes to context too. Context blocks are
    taken from the most relevant back; a block that does not fit whole is cut at its end, and
    blocks beyond that are left out. Without the reserve a long file would crowd out every
    retrieved chunk, and the model was trained with context and file sharing its window.

    Example:
        >>> build_prompt(tok, "def add(a, b):\\n    return", "\\n", [("m.py", "x = 1")], "demo")
        '<repo_name>demo\\n<file_sep>m.py\\nx = 1\\n<fim_prefix><fim_suffix>\\n<fim_middle>def add(a, b):\\n    return'
    """
    if max_tokens < 8:
        raise ModelError(f"max_tokens={max_tokens} leaves no room for a prompt")
    template = fim_template(tokenizer)
    infill = suffix is not None
    with_context = bool(context) or bool(repo_name)
    shell = template.fim_text("", "") if infill else ""
    if with_context and not infill:
        shell = template.block(path or "", "")
    if with_context:
        shell += template.context_text((), repo_name)
    budget = max_tokens - count_tokens(tokenizer, shell)
    blocks = [count_tokens(tokenizer, template.block(p, t)) for p, t in context]
    reserve = min(sum(blocks), int(budget * context_share))
    budget -= reserve

    suffix_text = ""
    if infill:
        suffix_budget = min(count_tokens(tokenizer, suffix), max(budget // 4, budget - count_tokens(tokenizer, prefix)))
        suffix_text = _head(tokenizer, suffix, suffix_budget)
        budget -= count_tokens(tokenizer, suffix_text)
    prefix_text = _tail(tokenizer, prefix, budget)
    budget -= count_tokens(tokenizer, prefix_text)
    budget += reserve

    kept: list[tuple[str, str]] = []
    for (chunk_path, text), cost in zip(reversed(context), reversed(blocks), strict=True):
        if cost <= budget:
            kept.append((chunk_path, text))
            budget -= cost
            continue
        header = count_tokens(tokenizer, template.block(chunk_path, "\n"))
        if budget - header >= 16:
            kept.append((chunk_path, _head(tokenizer, text, budget - header - 1)))
        break
    kept.reverse()

    head = template.context_text(kept, repo_name) if with_context else ""
    if infill:
        return head + template.fim_text(prefix_text, suffix_text)
    if with_context:
        return head + template.block(path or "", "") + prefix_text
    return prefix_text
