"""Reading probe: does the model use a retrieved chunk that holds the very line it must write?

For held-out lines of a repository (`codeslm eval repo`'s tasks) the prompt's retrieved context
is set by hand, in four conditions: `verbatim` (the target's surroundings, 3 lines before and 1
after, as a chunk of another file), `edited` (the same lines with names and literals renamed;
the file keeps its own, so adapting is right and copying wrong), `distractors` (the verbatim
chunk at a random place among 3 chunks BM25 retrieves for the cursor) and `none`. Each is
completed by the engine with the model alone (no n-gram cache, no kNN) and with its n-gram
cache, both without retrieval of their own, and scored by exact match, edit similarity and the
model's teacher-forced bits per byte on the target line.
But: it measures reading, not completion quality on ordinary cursors (see `eval/proof_repo.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np

CONDITIONS = ("verbatim", "edited", "distractors", "none")
LINES_BEFORE, LINES_AFTER = 3, 1
DISTRACTORS = 3
# Lines kept of each distractor chunk, so all four chunks fit the prompt's share for context.
DISTRACTOR_LINES = 6


@dataclass
class ReadingCase:
    """One held-out line and the retrieved context of each condition (`(path, text)` chunks)."""

    task_id: str
    path: str
    prefix: str
    suffix: str
    reference: str
    contexts: dict[str, tuple[tuple[str, str], ...]]
    renames: dict[str, str] = field(default_factory=dict)
    # Whether renaming changed the target's own line in the edited chunk (else copying is right).
    edited_target_changed: bool = False


def surroundings(lines: list[str], i: int, before: int = LINES_BEFORE, after: int = LINES_AFTER):
    """The text of lines `i - before` to `i + after` (0-based `i`) and the target's row in it."""
    lo = max(0, i - before)
    return "".join(lines[lo : i + after + 1]), i - lo


def build_cases(task, index, seed: int = 0, query_lines: int = 10) -> list[ReadingCase]:
    """The probe's cases for a `RepoLines` task, its repository's index and a seed."""
    from codeslm.train.renames import rename_code

    rng = np.random.default_rng(seed)
    paths = sorted(task.files)
    cases = []
    for example in task.examples():
        lines = task.files[example.path]
        i = example.meta["line"] - 1
        chunk, row = surroundings(lines, i)
        others = [p for p in paths if p != example.path] or [example.path]
        # Named as another file of the repository, so nothing but its text says it is this one.
        where = others[int(rng.integers(0, len(others)))]
        where = str(PurePosixPath(where).with_name("_" + PurePosixPath(where).name))
        renamed = rename_code(chunk, rng, visible_lines=row)
        edited_lines = renamed.text.split("\n")
        changed = row < len(edited_lines) and edited_lines[row].rstrip() != example.reference.rstrip()
        prefix_lines = example.prefix.split("\n")
        query = "\n".join(prefix_lines[-query_lines:]) + "\n" + example.suffix.split("\n", 1)[0]
        hits = index.search_code(query, k=DISTRACTORS, exclude=(example.path, i + 1))
        mixed = [(h.chunk.path, "".join(h.chunk.text.splitlines(keepends=True)[:DISTRACTOR_LINES]))
                 for h in hits]
        mixed.insert(int(rng.integers(0, len(mixed) + 1)), (where, chunk))
        cases.append(ReadingCase(
            example.task_id, example.path, example.prefix, example.suffix, example.reference,
            {"verbatim": ((where, chunk),), "edited": ((where, renamed.text),),
             "distractors": tuple(mixed), "none": ()},
            renamed.names, changed))
    return cases


def engine_prompt(engine, case: ReadingCase, context) -> str:
    """The prompt `engine` builds for `case`'s cursor with `context` as its only chunks."""
    from codeslm.model.prompt import build_prompt, prompt_budget

    settings = engine.settings
    # The engine's own cursor window; a held-out line starts a line, so no token healing.
    prefix = engine._window_prefix(case.prefix, settings)
    suffix = engine._window_suffix(case.suffix, settings)
    budget = prompt_budget(engine.model, settings.max_prompt_tokens, settings.new_tokens())
    return build_prompt(engine.tokenizer, prefix, suffix, list(context), engine.repo_name,
                        max_tokens=budget, context_share=settings.context_share)


def target_bits(model, tokenizer, prompt: str, target: str) -> float:
    """Teacher-forced bits of `target` after `prompt` (tokenized apart, as the engine does)."""
    import torch

    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    tail = tokenizer(target, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([head + tail])).logits[0, len(head) - 1 : -1]
        nll = torch.nn.functional.cross_entropy(logits.float(), torch.tensor(tail), reduction="sum")
    return float(nll) / np.log(2)


def reading_diagnosis(model, tokenizer, prompt: str, chunk_block: str, target: str) -> dict:
    """Where the model looks and what it loses while writing `target` after `prompt`: per layer,
    the share of attention (mean over heads and target tokens) on the tokens of `chunk_block`
    (one retrieved block of the prompt), and the bits of each target token."""
    import torch

    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    tail = tokenizer(target, add_special_tokens=False)["input_ids"]
    start = prompt.find(chunk_block)
    lo = len(tokenizer(prompt[:start], add_special_tokens=False)["input_ids"]) if start >= 0 else 0
    hi = lo + len(tokenizer(chunk_block, add_special_tokens=False)["input_ids"]) if start >= 0 else 0
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")  # only eager attention returns its weights
    try:
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([head + tail]), output_attentions=True)
    finally:
        model.set_attn_implementation(previous)
    rows = slice(len(head) - 1, len(head) + len(tail) - 1)  # positions that predict the target
    share = [float(a[0, :, rows, lo:hi].sum(-1).mean()) for a in out.attentions]
    logits = out.logits[0, rows].float()
    bits = torch.nn.functional.cross_entropy(logits, torch.tensor(tail), reduction="none") / np.log(2)
    return {"chunk_attention_by_layer": [round(x, 4) for x in share],
            "target_tokens": [tokenizer.decode([t]) for t in tail],
            "token_bits": [round(float(b), 3) for b in bits]}


def diagnose_cases(cases: list[ReadingCase], engine, conditions=("verbatim", "edited")) -> list[dict]:
    """`reading_diagnosis` of each case in `conditions`, on the prompt `engine` builds."""
    from codeslm.model.prompt import fim_template

    template = fim_template(engine.tokenizer)
    records = []
    for case in cases:
        for condition in conditions:
            context = case.contexts[condition]
            path, text = next(c for c in context if c[0] == case.contexts["verbatim"][0][0])
            prompt = engine_prompt(engine, case, context)
            records.append({"task_id": case.task_id, "condition": condition,
                            **reading_diagnosis(engine.model, engine.tokenizer, prompt,
                                                template.block(path, text), case.reference + "\n")})
    return records


def probe_engines(model, tokenizer, index) -> dict:
    """The two systems probed: the model alone, and the engine with its n-gram cache; neither
    retrieves, so the probe's chunks are the only ones, and neither has a time budget."""
    from codeslm.complete import CompletionEngine, CompletionSettings

    alone = CompletionSettings(retrieval=False, ngram_cache=False, line_budget_ms=None)
    full = CompletionSettings(retrieval=False, line_budget_ms=None)
    return {"model": CompletionEngine(model, tokenizer, index, alone),
            "engine": CompletionEngine(model, tokenizer, index, full)}


def run_cases(cases: list[ReadingCase], engines: dict, progress=None) -> list[dict]:
    """One record per case and condition: each system's completion, EM and ES, the model's bits
    on the target line, and whether the prompt holds the target line."""
    from codeslm.complete import CompletionRequest
    from codeslm.eval.metrics import edit_similarity, exact_match

    alone = engines["model"]
    records = []
    for case in cases:
        target = case.reference + "\n"
        for condition in CONDITIONS:
            context = case.contexts[condition]
            prompt = engine_prompt(alone, case, context)
            record = {"task_id": case.task_id, "condition": condition,
                      "reference": case.reference,
                      "prompt_holds_target": case.reference.strip() in prompt if context else None,
                      "bits": target_bits(alone.model, alone.tokenizer, prompt, target),
                      "bytes": len(target.encode("utf-8"))}
            if condition == "edited":
                record["target_changed"] = case.edited_target_changed
            for name, engine in engines.items():
                request = CompletionRequest(case.prefix, case.suffix, case.path,
                                            extra_context=context)
                text = engine.complete(request).text.split("\n", 1)[0]
                record[f"{name}_prediction"] = text
                record[f"{name}_em"] = exact_match(text, case.reference)
                record[f"{name}_es"] = round(edit_similarity(text, case.reference), 4)
            records.append(record)
        if progress is not None:
            progress(1)
    return records


def summarize(records: list[dict]) -> dict[str, dict[str, float]]:
    """Per condition: EM and ES of each system, bits per byte, share of prompts holding the line."""
    out = {}
    for condition in CONDITIONS:
        rows = [r for r in records if r["condition"] == condition]
        if not rows:
            continue
        held = [r["prompt_holds_target"] for r in rows if r["prompt_holds_target"] is not None]
        out[condition] = {
            "lines": len(rows),
            "model_em": float(np.mean([r["model_em"] for r in rows])),
            "model_es": float(np.mean([r["model_es"] for r in rows])),
            "engine_em": float(np.mean([r["engine_em"] for r in rows])),
            "engine_es": float(np.mean([r["engine_es"] for r in rows])),
            "bits_per_byte": sum(r["bits"] for r in rows) / sum(r["bytes"] for r in rows),
            "prompt_holds_target": float(np.mean(held)) if held else None,
        }
    return out


def table(summaries: dict[str, dict[str, dict[str, float]]]) -> str:
    """A Markdown table: one row per condition, the mean over repositories of each measure."""
    header = ("| condition | model alone EM / ES | engine (n-gram cache) EM / ES | "
              "model bits/byte on the line | prompts holding the line |")
    lines = [header, "|---|---|---|---|---|"]
    for condition in CONDITIONS:
        cells = [s[condition] for s in summaries.values() if condition in s]
        if not cells:
            continue
        mean = {k: float(np.mean([c[k] for c in cells])) for k in
                ("model_em", "model_es", "engine_em", "engine_es", "bits_per_byte")}
        held = [c["prompt_holds_target"] for c in cells if c["prompt_holds_target"] is not None]
        lines.append(
            f"| {condition} | {mean['model_em']:.3f} / {mean['model_es']:.3f} | "
            f"{mean['engine_em']:.3f} / {mean['engine_es']:.3f} | {mean['bits_per_byte']:.3f} | "
            + (f"{np.mean(held):.2f}" if held else "") + " |")
    return "\n".join(lines)
