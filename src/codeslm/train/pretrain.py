"""Pretraining loop: packed FIM and retrieval-augmented rows, AdamW with warmup and cosine decay.

One screen of loop: gradient accumulation, clipping, bf16 autocast where it pays (CUDA, and CPUs
with AMX or AVX-512 BF16 units), periodic validation loss and bits per byte, tokens/s and MFU,
crash-safe checkpoints with exact resume, a loss-curve PNG and a `save_pretrained` export at the end.
Under torchrun it trains with DistributedDataParallel (`codeslm.train.distributed`).
But: it does not build the corpus or tokenizer (see `codeslm corpus build`).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np
import torch

from codeslm.errors import TrainingError
from codeslm.model.config import count_parameters, llama_config, model_shape
from codeslm.train.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from codeslm.train.distributed import barrier, global_sum, join_world, leave, shard, wrap
from codeslm.train.settings import TrainSettings
from codeslm.train.shards import Corpus, token_byte_lengths
from codeslm.train.stream import StreamSettings, TrainingStream, validation_rows
from codeslm.train.throughput import cpu_has_bf16, flops_per_token, peak_flops


@dataclass
class TrainResult:
    run_dir: Path
    export_dir: Path | None
    step: int
    tokens: int
    params: int
    val_loss: float
    val_bpb: float
    wall_s: float
    history: list[dict]


def use_bf16(precision: str, device: str) -> bool:
    """bf16 autocast on CUDA and on CPUs with bf16 units (AMX measured 1.6x faster, AVX-512 BF16
    1.3-1.45x); fp32 elsewhere."""
    if precision == "auto":
        return device.startswith("cuda") or cpu_has_bf16()
    return precision == "bf16"


def build_model(settings: TrainSettings, tokenizer):
    from transformers import LlamaForCausalLM

    shape = model_shape(
        settings.size,
        d_model=settings.d_model,
        n_layers=settings.n_layers,
        n_heads=settings.n_heads,
        n_kv_heads=settings.n_kv_heads,
        d_ff=settings.d_ff,
        max_seq_len=settings.seq_len,
    )
    torch.manual_seed(settings.seed)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return LlamaForCausalLM(llama_config(shape, len(tokenizer), eos))


def lr_factor(step: int, settings: TrainSettings) -> float:
    """Linear warmup to 1, then cosine decay to `min_lr_ratio` at `max_steps`."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    span = max(settings.max_steps - settings.warmup_steps, 1)
    progress = min((step - settings.warmup_steps) / span, 1.0)
    floor = settings.min_lr_ratio
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model, settings: TrainSettings):
    """AdamW over the parameters `settings.trainable` names (all when empty; the others are
    frozen) and its warmup-cosine schedule."""
    named = list(model.named_parameters())
    unmatched = [pattern for pattern in settings.trainable
                 if not any(fnmatchcase(name, pattern) for name, _ in named)]
    if unmatched:
        raise TrainingError(f"trainable: {', '.join(map(repr, unmatched))} names no parameter of "
                            f"the model (its names look like {named[0][0]!r})")
    decay, no_decay = [], []
    for name, p in named:
        trained = not settings.trainable or any(fnmatchcase(name, pattern)
                                                for pattern in settings.trainable)
        p.requires_grad_(trained)
        if trained:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": settings.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=settings.lr, betas=(settings.beta1, settings.beta2))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, settings))
    return optimizer, scheduler


def model_logits(model, input_ids: torch.Tensor, bf16: bool) -> torch.Tensor:
    with torch.autocast(device_type=input_ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        return model(input_ids=input_ids).logits


def token_loss(model, input_ids: torch.Tensor, labels: torch.Tensor, bf16: bool, reduction="mean",
               weights: torch.Tensor | None = None):
    """Cross-entropy of the model's next tokens (see `logits_loss`)."""
    return logits_loss(model_logits(model, input_ids, bf16), labels, reduction, weights)


def logits_loss(logits: torch.Tensor, labels: torch.Tensor, reduction="mean",
                weights: torch.Tensor | None = None):
    """Cross-entropy of next tokens (labels already shifted; -100 ignored), in fp32; with
    `weights`, each token's loss is weighted and "mean" divides by the weights' sum."""
    losses = torch.nn.functional.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100,
        reduction=reduction if weights is None else "none",
    )
    if weights is None:
        return losses
    total = (losses * weights.flatten()).sum()
    return total / weights.sum() if reduction == "mean" else total


def anchor_divergence(logits: torch.Tensor, reference: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
    """Mean KL divergence of the model's next-token distributions from the reference model's
    (nats per token) over the positions `mask` marks; 0 when it marks none."""
    if not bool(mask.any()):
        return logits.sum() * 0.0
    log_p = torch.log_softmax(logits[mask].float(), dim=-1)
    log_ref = torch.log_softmax(reference[mask].float(), dim=-1)
    return torch.nn.functional.kl_div(log_p, log_ref, log_target=True, reduction="batchmean")


@torch.no_grad()
def evaluate(model, rows, byte_lengths: np.ndarray, batch_size: int, bf16: bool, device: str):
    """Validation loss (nats/token) and bits per byte over fixed rows."""
    inputs, labels = rows
    model.eval()
    nll = 0.0
    n_tokens = 0
    for i in range(0, len(inputs), batch_size):
        x, y = inputs[i : i + batch_size].to(device), labels[i : i + batch_size].to(device)
        nll += float(token_loss(model, x, y, bf16, reduction="sum"))
        n_tokens += int((y != -100).sum())
    model.train()
    kept = labels[labels != -100].numpy()
    n_bytes = int(byte_lengths[kept].sum())
    return nll / max(n_tokens, 1), nll / math.log(2) / max(n_bytes, 1)


def load_initial_weights(model, model_dir: Path, tokenizer) -> None:
    """Copy the weights of an exported model of the same shape and tokenizer into `model`."""
    from safetensors.torch import load_file

    from codeslm.model.loading import check_model_dir

    config = check_model_dir(model_dir)
    mine = model.config.to_dict()
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads")
    diff = [f"{k}: {config.get(k)} vs {mine[k]}" for k in keys if config.get(k) != mine[k]]
    if diff:
        raise TrainingError(f"cannot start from {model_dir}: its shape differs ({', '.join(diff)})")
    from codeslm.model.tokenizer import load_tokenizer

    if load_tokenizer(model_dir).get_vocab() != tokenizer.get_vocab():
        raise TrainingError(f"cannot start from {model_dir}: its tokenizer is not the corpus tokenizer")
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        raise TrainingError(f"cannot start from {model_dir}: no model.safetensors")
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # The output projection is tied to the embeddings, so it may be absent from the file.
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise TrainingError(f"cannot start from {model_dir}: weights do not match ({missing + unexpected})")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_resume(state: dict, settings: TrainSettings, corpus: Corpus) -> None:
    saved = {**TrainSettings().identity(), **state["identity"]}
    mine = settings.identity()
    diff = settings.identity_changes(state["identity"])
    if diff:
        changes = ", ".join(f"{k}: {saved.get(k)!r} -> {mine.get(k)!r}" for k in diff)
        raise TrainingError(
            f"cannot resume: the checkpoint was made with other settings ({changes})"
        )
    if state["tokenizer_sha256"] != corpus.tokenizer_fingerprint():
        raise TrainingError(
            "cannot resume: the corpus tokenizer does not match the one the checkpoint was trained with"
        )
    if state["manifest_sha256"] != _sha256(corpus.root / "manifest.json"):
        raise TrainingError(
            f"cannot resume: corpus {corpus.root} is not the corpus the checkpoint was trained on"
        )


def export_model(model, tokenizer, export_dir: Path, info: dict) -> Path:
    """`save_pretrained` (safetensors) plus tokenizer and a training summary, swapped in whole."""
    from transformers.utils import logging as hf_logging

    from codeslm.model.tokenizer import save_tokenizer

    hf_logging.disable_progress_bar()
    tmp = export_dir.with_name(export_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    save_tokenizer(tokenizer, tmp)
    (tmp / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    old = export_dir.with_name(export_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if export_dir.exists():
        export_dir.replace(old)
    tmp.replace(export_dir)
    shutil.rmtree(old, ignore_errors=True)
    return export_dir


def train(
    settings: TrainSettings,
    *,
    resume: bool = False,
    until_step: int | None = None,
    progress: bool = True,
    on_log: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train (or resume) the run in `settings.run_dir`; export when `max_steps` is reached.

    `until_step` stops early after that step with a checkpoint (to split a run over sessions).
    """
    from tqdm.auto import tqdm

    from codeslm.model.loading import resolve_device
    from codeslm.train.retrieval_examples import cached_retrieval_contexts

    settings.check()
    run_dir = Path(settings.run_dir)
    if has_checkpoint(run_dir) and not resume:
        raise TrainingError(
            f"{run_dir} already holds a training run; resume it or pick another run directory"
        )
    state = load_checkpoint(run_dir) if resume else None
    corpus = Corpus.open(settings.corpus)
    if state is not None:
        _check_resume(state, settings, corpus)
    tokenizer = corpus.load_tokenizer()
    world, device = join_world(resolve_device(settings.device), settings.batch_size)
    bf16 = use_bf16(settings.precision, device)
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)

    model = build_model(settings, tokenizer)
    if settings.init_from and state is None:
        load_initial_weights(model, Path(settings.init_from), tokenizer)
    model = model.to(device).train()
    optimizer, scheduler = make_optimizer(model, settings)
    reference = None
    if settings.anchor_kl > 0:
        reference = build_model(settings, tokenizer)
        load_initial_weights(reference, Path(settings.anchor_to or settings.init_from), tokenizer)
        reference = reference.to(device).eval().requires_grad_(False)
    if not world.main:
        barrier(world)  # rank 0 builds the run's cached rows first; the others read them
    contexts = None
    if settings.retrieval_rate > 0:
        contexts = cached_retrieval_contexts(
            run_dir,
            corpus,
            tokenizer,
            settings.retrieval_pool,
            settings.retrieval_k,
            settings.retrieval_context_tokens,
            settings.seed,
            progress,
            window_tokens=(
                settings.seq_len - settings.retrieval_context_tokens
                if settings.retrieval_query == "window"
                else None
            ),
        )
    paths = {i: d.path for i, d in corpus.documents().items()} if contexts is not None else None
    reading = None
    if settings.reading_rate > 0:
        from codeslm.train.reading_rows import cached_reading_examples

        reading = cached_reading_examples(run_dir, corpus, tokenizer, settings.reading_pool,
                                          settings.reading_per_file, settings.seed,
                                          settings.seq_len, progress, settings.reading_mix)
    if world.main:
        barrier(world)
    progress = progress and world.main
    stream = TrainingStream(
        corpus.splits["train"],
        tokenizer,
        # Every stream setting is a training setting of the same name.
        StreamSettings(**{f.name: getattr(settings, f.name) for f in fields(StreamSettings)}),
        contexts,
        paths,
        reading,
    )
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    val_rows = validation_rows(corpus.splits["val"], settings.seq_len, settings.eval_rows, eot)
    byte_lengths = token_byte_lengths(tokenizer)

    step, history, wall_s = 0, [], 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        stream.restore(state["stream"])
        torch.set_rng_state(state["torch_rng"])
        step, history, wall_s = state["step"], state["history"], state["wall_s"]

    ddp = wrap(model, world, device)
    forward = torch.compile(ddp) if settings.compile else ddp
    n_params = count_parameters(model)
    flops_tok = flops_per_token(model, settings.seq_len)
    peak = peak_flops(device, bf16)

    def checkpoint() -> None:
        save_checkpoint(
            run_dir,
            step,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "stream": stream.state(),
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "history": history,
                "wall_s": wall_s + time.perf_counter() - started,
                "identity": settings.identity(),
                "settings": settings.to_dict(),
                "model_config": model.config.to_dict(),
                "tokenizer_sha256": corpus.tokenizer_fingerprint(),
                "manifest_sha256": _sha256(corpus.root / "manifest.json"),
            },
        )

    def log(entry: dict) -> None:
        if not world.main:
            return
        history.append(entry)
        with (run_dir / "log.jsonl").open("a") as f:
            f.write(json.dumps(entry) + "\n")
        if on_log:
            on_log(entry)

    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    last_checkpoint = started
    stop = min(until_step or settings.max_steps, settings.max_steps)
    bar = tqdm(
        total=settings.max_steps, initial=step, disable=not progress, unit="step", desc="train"
    )
    interval_start, interval_tokens, losses, divergences = time.perf_counter(), 0, [], []
    while step < stop:
        for _ in range(settings.grad_accum):
            x, y, w, plain = stream.next_batch(settings.batch_size)
            x, y, w, plain = (shard(t, world).to(device) for t in (x, y, w, plain))
            logits = model_logits(forward, x, bf16)
            if world.distributed:
                # Summed over this rank's targets, over the global batch's weight, times the ranks
                # DDP averages over: the gradient of the global batch's weighted mean loss.
                total = logits_loss(logits, y, reduction="sum", weights=w)
                count = global_sum(w.sum().reshape(1), world)
                loss = total * world.size / count / settings.grad_accum
                mean = global_sum(total.detach().reshape(1), world) / count
                losses.append(float(mean))
            else:
                loss = logits_loss(logits, y, weights=w)
                losses.append(float(loss.detach()))
                loss = loss / settings.grad_accum
            if reference is not None:
                with torch.no_grad():
                    fixed = model_logits(reference, x, bf16)
                divergence = anchor_divergence(logits, fixed, plain)
                divergences.append(float(divergence.detach()))
                loss = loss + settings.anchor_kl * divergence / settings.grad_accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        interval_tokens += settings.tokens_per_step
        bar.update(1)
        if step % settings.log_every == 0 or step == stop:
            seconds = time.perf_counter() - interval_start
            tok_s = interval_tokens / max(seconds, 1e-9)
            entry = {
                "step": step,
                "tokens": step * settings.tokens_per_step,
                "loss": float(np.mean(losses)),
                "lr": scheduler.get_last_lr()[0],
                "tok_s": tok_s,
                "mfu": tok_s * flops_tok / peak if peak else None,
            }
            if divergences:
                entry["anchor_kl"] = float(np.mean(divergences))
                divergences.clear()
            log(entry)
            bar.set_postfix(loss=f"{entry['loss']:.3f}", tok_s=f"{tok_s:.0f}")
            losses.clear()
        if world.main and (step % settings.eval_every == 0 or step == settings.max_steps):
            val_loss, val_bpb = evaluate(
                model, val_rows, byte_lengths, settings.batch_size, bf16, device
            )
            log(
                {
                    "step": step,
                    "tokens": step * settings.tokens_per_step,
                    "val_loss": val_loss,
                    "val_bpb": val_bpb,
                }
            )
            bar.set_postfix(
                loss=f"{history[-2]['loss']:.3f}" if len(history) > 1 else "",
                val_bpb=f"{val_bpb:.3f}",
            )
        due = time.perf_counter() - last_checkpoint >= settings.checkpoint_every_s or step == stop
        if world.distributed:  # rank 0's clock decides, for every rank
            due = bool(global_sum(torch.tensor([float(due and world.main)], device=device), world))
        if due:
            if world.main:
                checkpoint()
            last_checkpoint = time.perf_counter()
        if step % settings.log_every == 0 or step == stop:
            interval_start, interval_tokens = time.perf_counter(), 0
    bar.close()
    wall_s += time.perf_counter() - started

    evals = [h for h in history if "val_loss" in h]
    val_loss, val_bpb = (
        (evals[-1]["val_loss"], evals[-1]["val_bpb"]) if evals else (math.nan, math.nan)
    )
    export_dir = None
    barrier(world)
    leave(world)
    if step >= settings.max_steps and world.main:
        from codeslm.train.loss_curve import plot_loss_curve

        plot_loss_curve(
            history, run_dir / "loss-curve.png", f"{settings.size} ({n_params / 1e6:.1f}M params)"
        )
        info = {
            "params": n_params,
            "steps": step,
            "tokens_seen": step * settings.tokens_per_step,
            "val_loss": val_loss,
            "val_bpb": val_bpb,
            "wall_s": wall_s,
            "device": device,
            "bf16": bf16,
            "settings": settings.to_dict(),
            "corpus_manifest_sha256": _sha256(corpus.root / "manifest.json"),
        }
        export_dir = export_model(model, tokenizer, run_dir / "export", info)
    return TrainResult(
        run_dir,
        export_dir,
        step,
        step * settings.tokens_per_step,
        n_params,
        val_loss,
        val_bpb,
        wall_s,
        history,
    )


def export_latest_checkpoint(run_dir: str | Path, export_dir: str | Path) -> Path:
    """Export the run's latest checkpoint as a model directory, e.g. to ship a run still going."""
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir)
    settings = TrainSettings().with_overrides(**state["settings"])
    corpus = Corpus.open(settings.corpus)
    _check_resume(state, settings, corpus)
    tokenizer = corpus.load_tokenizer()
    model = build_model(settings, tokenizer)
    model.load_state_dict(state["model"])
    evals = [h for h in state["history"] if "val_loss" in h]
    info = {
        "params": count_parameters(model),
        "steps": state["step"],
        "tokens_seen": state["step"] * settings.tokens_per_step,
        "val_loss": evals[-1]["val_loss"] if evals else None,
        "val_bpb": evals[-1]["val_bpb"] if evals else None,
        "wall_s": state["wall_s"],
        "settings": settings.to_dict(),
        "corpus_manifest_sha256": state["manifest_sha256"],
        "partial": state["step"] < settings.max_steps,
    }
    return export_model(model, tokenizer, Path(export_dir), info)
