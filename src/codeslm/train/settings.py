"""Training settings: one dataclass, read from a JSON recipe and overridden from the command line.

Settings split into those that define the run (the model, the data mix, the schedule: a resumed
run must match them exactly) and those that only steer this process (device, paths, logging).
But: it does not train (see `codeslm.train.pretrain`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from codeslm.errors import TrainingError


@dataclass(frozen=True)
class TrainSettings:
    corpus: str = "runs/corpus-default"
    run_dir: str = "runs/default"
    # Model: a preset and optional overrides of its shape.
    size: str = "micro"
    d_model: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    d_ff: int | None = None
    # Data: packed rows of seq_len tokens; FIM and retrieval-augmented shares.
    seq_len: int = 512
    fim_rate: float = 0.5
    spm_rate: float = 0.5
    # Share of FIM examples whose middle ends at a line end (an editor's cursor), not anywhere.
    fim_line_rate: float = 0.0
    retrieval_rate: float = 0.25
    # Share of the other rows that start with a span of their own text as context (copying).
    copy_rate: float = 0.0
    # Share of copy rows whose span is random tokens (what forms induction heads).
    copy_random_share: float = 0.5
    # Share of each batch's loss that the copy rows' repeated spans carry; 0 weighs every target
    # token the same. Among as much ordinary text, a small model's attention goes to the text.
    copy_loss_share: float = 0.0
    # Share of rows that are reading rows: an engine-format prompt whose chunks may hold the line
    # it asks for, loss on that line only (see `codeslm.train.reading_rows`).
    reading_rate: float = 0.0
    reading_pool: int = 2000  # training files the reading examples are drawn from
    reading_per_file: int = 4  # held-out lines per file
    # Shares of the reading examples' kinds: verbatim, edited, near-duplicate, ordinary chunks
    # only (`codeslm.train.reading_rows.KINDS`); normalized to sum to 1.
    reading_mix: tuple[float, ...] = (0.35, 0.25, 0.15, 0.25)
    # Share of each batch's loss that the reading rows' target tokens carry; 0 weighs every target
    # token the same, which leaves a dozen tokens of a row of hundreds nearly no say.
    reading_loss_share: float = 0.0
    # Whether the end of text closing a reading row's line is a target. One target token in about
    # twelve, it teaches a model that middles end soon.
    reading_end_loss: bool = True
    retrieval_pool: int = 4000
    retrieval_k: int = 4
    retrieval_context_tokens: int = 256
    # What a training file's chunks are retrieved for: the whole file ("file"), or the window of
    # it that the row shows ("window"), as the engine retrieves for the text at the cursor.
    retrieval_query: str = "file"
    # Optimisation.
    batch_size: int = 16
    grad_accum: int = 1
    max_steps: int = 1000
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 1234
    # Start from the weights of this exported model (same shape and tokenizer) instead of random
    # ones: a second stage that continues an earlier run with a fresh schedule.
    init_from: str | None = None
    # The parameters trained: shell-style patterns over their names (`*.self_attn.*` for every
    # attention projection); empty trains them all. The others keep the weights they start with,
    # so a stage that should change one skill leaves what the rest of the model knows alone.
    trainable: tuple[str, ...] = ()
    # Weight of a term that keeps the model's next-token distribution near the `init_from`
    # model's on the ordinary targets, not reading lines or copied spans (KL divergence from the
    # starting model's, nats per token): a stage that teaches reading should not move what the
    # model predicts without a chunk. 0 leaves it out.
    anchor_kl: float = 0.0
    # The exported model `anchor_kl` holds the predictions of, when not `init_from`: a stage that
    # continues an anchored one keeps the same reference, so the drift does not add up.
    anchor_to: str | None = None
    # This process only: may differ between a run and its resumption.
    device: str = "auto"
    # CPU threads (0: torch's default). One thread per busy core: on a shared machine two
    # threads that wait on each other at every matmul ran 4x slower than one.
    threads: int = 0
    precision: str = "auto"
    compile: bool = False
    eval_every: int = 200
    eval_rows: int = 64
    checkpoint_every_s: float = 300.0
    log_every: int = 10

    RUN_ONLY = frozenset(
        {
            "corpus",
            "run_dir",
            "device",
            "compile",
            "eval_every",
            "eval_rows",
            "checkpoint_every_s",
            "log_every",
        }
    )

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.seq_len

    def __post_init__(self):
        # A recipe's JSON list, so that a resumed run compares equal to the run it resumes.
        object.__setattr__(self, "reading_mix", tuple(float(x) for x in self.reading_mix))
        trainable = (self.trainable,) if isinstance(self.trainable, str) else self.trainable
        object.__setattr__(self, "trainable", tuple(str(x) for x in trainable))

    def identity(self) -> dict:
        """The settings a resumed run must share with the run it resumes."""
        return {k: v for k, v in asdict(self).items() if k not in self.RUN_ONLY}

    def identity_changes(self, recorded: dict) -> list[str]:
        """The names of the settings in which `identity()` differs from a `recorded` one. A setting
        added since it was recorded had its default value then; tuples and JSON lists compare
        equal."""
        saved = json.loads(json.dumps({**TrainSettings().identity(), **recorded}))
        mine = json.loads(json.dumps(self.identity()))
        return sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, **overrides) -> TrainSettings:
        """A copy with every non-None override applied (unknown names refused)."""
        names = {f.name for f in fields(self)}
        unknown = set(overrides) - names
        if unknown:
            raise TrainingError(f"unknown training setting(s): {', '.join(sorted(unknown))}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def check(self) -> TrainSettings:
        """Refuse settings that cannot train; returns self."""
        problems = []
        for name in (
            "seq_len",
            "batch_size",
            "grad_accum",
            "max_steps",
            "eval_rows",
            "log_every",
            "eval_every",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        for name in ("fim_rate", "spm_rate", "fim_line_rate", "retrieval_rate", "copy_rate",
                     "copy_random_share", "reading_rate", "min_lr_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be between 0 and 1")
        if len(self.reading_mix) != 4 or min(self.reading_mix) < 0 or sum(self.reading_mix) <= 0:
            problems.append("reading_mix must be 4 shares (verbatim, edited, near, ordinary), "
                            "none negative, not all 0")
        if not 0.0 <= self.reading_loss_share < 1.0:
            problems.append("reading_loss_share must be at least 0 and below 1")
        if not 0.0 <= self.copy_loss_share < 1.0:
            problems.append("copy_loss_share must be at least 0 and below 1")
        if self.reading_loss_share + self.copy_loss_share >= 1.0:
            problems.append("reading_loss_share and copy_loss_share must sum to below 1")
        if self.anchor_kl < 0:
            problems.append("anchor_kl must be at least 0")
        if self.anchor_kl > 0 and not (self.anchor_to or self.init_from):
            problems.append("anchor_kl needs init_from or anchor_to (the model it keeps the predictions of)")
        if self.anchor_to and self.anchor_kl <= 0:
            problems.append("anchor_to is only read with anchor_kl above 0")
        if self.lr <= 0:
            problems.append("lr must be positive")
        if self.warmup_steps < 0:
            problems.append("warmup_steps must be >= 0")
        if self.retrieval_rate > 0 and not 16 <= self.retrieval_context_tokens <= self.seq_len // 2:
            problems.append(
                f"retrieval_context_tokens must be between 16 and seq_len/2 = {self.seq_len // 2}"
            )
        if self.reading_rate > 0 and self.seq_len <= 64 + 48:
            problems.append("reading rows need seq_len above 112 (the prompt and 48 new tokens)")
        if self.retrieval_query not in ("file", "window"):
            problems.append("retrieval_query must be file or window")
        if self.precision not in ("auto", "fp32", "bf16"):
            problems.append("precision must be auto, fp32 or bf16")
        if problems:
            raise TrainingError("bad training settings: " + "; ".join(problems))
        return self


def load_recipe(path: str | Path) -> TrainSettings:
    """Settings from a JSON recipe (keys are `TrainSettings` fields; `_comment` keys ignored)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise TrainingError(f"cannot read recipe {path}: {e}") from e
    except json.JSONDecodeError as e:
        raise TrainingError(f"recipe {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise TrainingError(f"recipe {path} must hold a JSON object")
    return TrainSettings().with_overrides(
        **{k: v for k, v in data.items() if not k.startswith("_")}
    )
