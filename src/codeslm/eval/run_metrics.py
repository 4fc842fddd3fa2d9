"""The fixed evaluation of one trained model in a study: the same sets for every run.

Validation bits per byte on a fixed sample of the held-out packages' files; the mean log-probability
of HumanEval's canonical solution lines, each masked in turn and scored as the middle of an
infilling prompt (continuous, so it ranks small models more reliably than pass@1); optionally
HumanEval single-line infilling pass@1 and repository line completion EM / ES through the engine.
But: it scores one model; comparing runs is `codeslm.eval.study_report`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

# Metric name -> whether higher is better.
HIGHER_IS_BETTER = {"val_bpb": False, "middle_logprob": True, "infill_pass@1": True,
                    "repo_em": True, "repo_es": True}


@dataclass(frozen=True)
class EvalSettings:
    val_files: int = 200  # held-out files scored for bits per byte (at most, by sha256 order)
    val_max_bytes: int = 400_000  # and at most this much text (files that would overflow skipped)
    middle_problems: int = 164  # HumanEval problems whose solution lines are scored (0: none)
    infill_problems: int = 0  # HumanEval problems for single-line infilling pass@1 (0: off)
    repos: tuple[str, ...] = ()  # repositories for line completion through the engine
    repo_tasks: int = 100
    engine: str = "bm25"  # the engine variant (see `codeslm.eval.runs.ENGINE_VARIANTS`)


def validation_texts(corpus, n_files: int, max_bytes: int | None = None) -> list[str]:
    """Up to `n_files` validation texts and `max_bytes` bytes, in the order of their sha256.

    That order is fixed by the files' contents and spreads the sample over the held-out packages
    (document ids run package by package).
    """
    texts, total = [], 0
    for record in sorted(corpus.records("val"), key=lambda r: r["sha256"]):
        if len(texts) == n_files:
            break
        if max_bytes is not None and total + record["bytes"] > max_bytes:
            continue
        texts.append(record["text"])
        total += record["bytes"]
    return texts


def middle_examples(n_problems: int) -> list:
    """HumanEval's single-line infilling tasks of the first `n_problems` problems."""
    from codeslm.eval.humaneval import load_problems
    from codeslm.eval.infill import infill_examples

    return infill_examples(load_problems(n_problems), "single-line") if n_problems else []


@torch.inference_mode()
def middle_logprobs(model, tokenizer, examples, context_len: int = 512) -> list[float]:
    """log p(middle | infilling prompt) in nats, per example: the canonical line and its newline,
    after a prompt cut to fit `context_len` tokens in all (the length the model trained on)."""
    from codeslm.model.prompt import build_prompt, position_limit

    limit = min(position_limit(model), context_len)
    device = next(model.parameters()).device
    backend = tokenizer.backend_tokenizer
    scores = []
    for example in examples:
        previous = backend.encode_special_tokens
        backend.encode_special_tokens = True
        try:
            middle = tokenizer(example.reference, add_special_tokens=False)["input_ids"]
        finally:
            backend.encode_special_tokens = previous
        middle = middle[: limit // 2]
        prompt = build_prompt(tokenizer, example.prefix, example.suffix,
                              max_tokens=limit - len(middle))
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] + middle
        ids = ids[-limit:]
        x = torch.tensor([ids], device=device)
        logp = torch.log_softmax(model(input_ids=x[:, :-1]).logits.float(), dim=-1)
        targets = x[0, -len(middle):]
        picked = logp[0, -len(middle):].gather(1, targets[:, None])
        scores.append(float(picked.sum()))
    return scores


def evaluate_model(model_dir: Path, corpus, settings: EvalSettings, out: Path,
                   seq_len: int) -> dict:
    """Every metric of `settings` for the exported model in `model_dir` (details under `out`)."""
    import numpy as np

    from codeslm.model.generate import bits_per_byte
    from codeslm.model.loading import load_model

    model, tokenizer = load_model(model_dir, device="cpu")
    model.eval()
    metrics = {"val_bpb": bits_per_byte(model, tokenizer,
                                        validation_texts(corpus, settings.val_files,
                                                         settings.val_max_bytes),
                                        context_len=seq_len)}
    examples = middle_examples(settings.middle_problems)
    if examples:
        metrics["middle_logprob"] = float(np.mean(middle_logprobs(model, tokenizer, examples, seq_len)))
    if settings.infill_problems:
        from codeslm.eval.runs import run_infill

        _, results = run_infill("single-line", model=model_dir, limit=settings.infill_problems,
                                out=out, device="cpu", workers=1)
        metrics["infill_pass@1"] = float(results["scores"]["pass@1"])
    if settings.repos:
        from codeslm.eval.runs import run_repo

        ems, ess = [], []
        for repo in settings.repos:
            # An index of the run's own: runs in parallel processes never share one mid-build.
            _, results = run_repo(repo, model=model_dir, n_tasks=settings.repo_tasks, out=out,
                                  device="cpu", engines=(settings.engine,),
                                  index_dir=out / "index" / Path(repo).resolve().name)
            system = f"engine ({settings.engine})"
            ems.append(results["scores"][f"{system}: exact_match"])
            ess.append(results["scores"][f"{system}: edit_similarity"])
        metrics["repo_em"], metrics["repo_es"] = float(np.mean(ems)), float(np.mean(ess))
    return metrics
