"""The teacher: any local Hugging Face causal LM, loaded once, that samples short texts.

It is checked before use (a causal LM, a tokenizer that round-trips code), named by its
directory and the SHA-256 of its weight files (the provenance every item carries), and samples
`n` continuations of one prompt in a single batch with a KV cache.
But: it does not build prompts (see `codeslm.transfer.prompts`) or judge what it writes.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from codeslm.errors import ModelError
from codeslm.model.kv_cache import forward_cached
from codeslm.model.loading import WEIGHT_FILES, check_model_dir, default_model_dir

_ROUND_TRIP = 'def area(radius: float) -> float:\n    """Circle area."""\n    return 3.14159 * radius ** 2\n'


@dataclass(frozen=True)
class Sampling:
    samples: int = 4  # best-of-n: continuations drawn per prompt
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 48
    seed: int = 0

    def __post_init__(self):
        if self.samples < 1 or self.max_new_tokens < 1:
            raise ModelError("sampling needs at least one sample and one new token")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ModelError(f"need temperature > 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")


@dataclass(frozen=True)
class Sample:
    text: str
    log_prob: float  # summed over its tokens, untempered
    tokens: int

    @property
    def mean_log_prob(self) -> float:
        return self.log_prob / max(self.tokens, 1)


def weights_sha256(path: Path) -> str:
    """SHA-256 over the weight files of a model directory, in name order."""
    h = hashlib.sha256()
    for name in sorted(p.name for p in path.iterdir()):
        if name in WEIGHT_FILES or name.endswith((".safetensors", ".bin")):
            with (path / name).open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


class Teacher:
    """A loaded teacher model.

    Example:
        >>> teacher = Teacher.load("path/to/Qwen2.5-Coder-1.5B")
        >>> [s.text for s in teacher.sample("import re\\npattern = re.compile(", Sampling(), "\\n")]
    """

    def __init__(self, model, tokenizer, path: Path, sha256: str):
        self.model = model
        self.tokenizer = tokenizer
        self.path = path
        self.sha256 = sha256
        self.name = "default-model" if path == default_model_dir() else path.name
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        self._eos = {tokenizer.eos_token_id}
        self._banned = sorted(set(tokenizer.all_special_ids) - self._eos)
        self._token_texts: list[str] | None = None

    @classmethod
    def load(cls, path: str | Path | None, device: str = "cpu") -> Teacher:
        """Load and check a teacher directory (None: the shipped model)."""
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        from codeslm.model.loading import load_model

        path = (Path(path) if path is not None else default_model_dir()).resolve()
        config = check_model_dir(path)
        model_type = config.get("model_type")
        architectures = config.get("architectures") or []
        if architectures and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
            raise ModelError(f"{path} holds a {', '.join(architectures)}, which is not a causal LM: "
                             "a teacher must generate text")
        if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            kind = f"a {model_type!r} model" if model_type else "a model without a model_type"
            raise ModelError(f"{path} holds {kind}, which is not a causal LM: a teacher must generate text")
        model, tokenizer = load_model(path, device=device)
        try:
            ids = tokenizer(_ROUND_TRIP, add_special_tokens=False)["input_ids"]
            back = tokenizer.decode(ids)
        except Exception as e:  # a broken tokenizer fails in many ways
            raise ModelError(f"the tokenizer in {path} is broken: it cannot encode code ({e})") from e
        if back != _ROUND_TRIP:
            raise ModelError(f"the tokenizer in {path} is broken: code does not survive encoding and "
                             f"decoding (got {back[:60]!r})")
        return cls(model, tokenizer, path, weights_sha256(path))

    def describe(self) -> dict:
        return {"name": self.name, "path": str(self.path), "sha256": self.sha256,
                "parameters": sum(p.numel() for p in self.model.parameters())}

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def token_texts(self) -> list[str]:
        """The text of every token id, for token healing."""
        if self._token_texts is None:
            self._token_texts = [self.tokenizer.decode([i]) for i in range(len(self.tokenizer))]
        return self._token_texts

    def _heal_mask(self, remaining: str, width: int) -> torch.Tensor:
        """True for tokens that a text still to be written as `remaining` may start with."""
        ok = torch.zeros(width, dtype=torch.bool)
        for i, t in enumerate(self.token_texts[:width]):
            if t and (remaining.startswith(t) or t.startswith(remaining)):
                ok[i] = True
        return ok

    @torch.inference_mode()
    def sample(self, prompt: str, sampling: Sampling, stop: str = "\n",
               deadline: float | None = None, lstrip: bool = False) -> list[Sample]:
        """`sampling.samples` continuations of `prompt`, each cut before `stop` (distinct ones,
        most probable first). With `lstrip`, leading whitespace is dropped and does not stop it
        (a docstring may start on the next line). Sampling stops early at `deadline` (a
        `time.monotonic()` value).

        The prompt's last token is taken back and re-written (token healing): a prompt that ends
        in `name(` ends mid-token for a tokenizer that merges `("` or `()`, and after a lone `(`
        token the teacher has mostly seen a line break.
        """
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        room = self.max_positions - sampling.max_new_tokens
        if room < 8:
            raise ModelError(f"{self.name} has only {self.max_positions} positions: too few to write anything")
        ids = ids[-room:]
        heal = ""
        if len(ids) > 1 and ids[-1] not in self.tokenizer.all_special_ids:
            heal = self.token_texts[ids[-1]]
            ids = ids[:-1]
        device = next(self.model.parameters()).device
        n = sampling.samples
        generator = torch.Generator().manual_seed(sampling.seed)
        rows: list[list[int]] = [[] for _ in range(n)]
        log_probs = [0.0] * n
        done = [False] * n
        texts = [""] * n
        written = [""] * n  # decoded rows, the healed text included
        # The prompt is read once and its cache copied to every row.
        out, past = forward_cached(self.model, None, input_ids=torch.tensor([ids], device=device),
                                   logits_to_keep=1)
        past.batch_repeat_interleave(n)
        logits = out.logits[:, -1].float().cpu().expand(n, -1).clone()
        for _ in range(sampling.max_new_tokens):
            logits[:, self._banned] = -math.inf
            for r in range(n):
                if len(written[r]) < len(heal):
                    allowed = self._heal_mask(heal[len(written[r]):], logits.shape[1])
                    logits[r, ~allowed] = -math.inf
            chosen = _sample_rows(logits, sampling, generator)
            natural = torch.log_softmax(logits, dim=-1)
            for r in range(n):
                if done[r]:
                    continue
                token = int(chosen[r])
                if token in self._eos:
                    done[r] = True
                    continue
                rows[r].append(token)
                log_probs[r] += float(natural[r, token])
                written[r] = self.tokenizer.decode(rows[r])
                if len(written[r]) < len(heal):
                    continue
                texts[r] = written[r][len(heal):]
                if lstrip:
                    texts[r] = texts[r].lstrip()
                if stop and stop in texts[r]:
                    texts[r] = texts[r][: texts[r].index(stop)]
                    done[r] = True
            if all(done) or (deadline is not None and time.monotonic() > deadline):
                break
            out, past = forward_cached(self.model, past, input_ids=chosen.view(n, 1).to(device),
                                       logits_to_keep=1)
            logits = out.logits[:, -1].float().cpu()
        unique: dict[str, Sample] = {}
        for r in range(n):
            sample = Sample(texts[r], log_probs[r], len(rows[r]))
            if texts[r].strip() and (texts[r] not in unique or sample.log_prob > unique[texts[r]].log_prob):
                unique[texts[r]] = sample
        return sorted(unique.values(), key=lambda s: -s.mean_log_prob)


def _sample_rows(logits: torch.Tensor, sampling: Sampling, generator) -> torch.Tensor:
    """One token per row of `logits` (n, V) by temperature and nucleus sampling."""
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < sampling.top_p
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(-1, keepdim=True), 1, generator=generator)
        return order.gather(1, choice).view(-1)
    return torch.multinomial(probs, 1, generator=generator).view(-1)
