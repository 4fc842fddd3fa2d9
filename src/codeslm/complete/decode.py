"""Greedy decoding for completions: KV-cache reuse across requests, token healing, stop rules.

Consecutive requests share most of their prompt (retrieved chunks, the start of the file), so
the decoder keeps the KV cache of its last call and prefills only the tokens after the longest
shared prefix. A word fragment cut from the prompt is re-generated under a constraint (token
healing), so a cursor in the middle of an identifier gets the tokens the model was trained on.
A token n-gram cache (`codeslm.model.ngram_cache`) may be mixed into every step.
But: it does not build prompts or decide where text ends (see `codeslm.complete.postprocess`).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from codeslm.model.ngram_cache import NgramCache
from codeslm.model.prompt import fim_template


def stop_token_ids(tokenizer) -> set[int]:
    """End of text and the FIM template's tokens that end a middle (a new file, padding)."""
    vocab = tokenizer.get_vocab()
    names = set(fim_template(tokenizer).stop_tokens)
    if tokenizer.eos_token:
        names.add(tokenizer.eos_token)
    return {vocab[t] for t in names if t in vocab}


@dataclass
class DecodeStats:
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose keys/values came from the previous call
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    stop_reason: str = ""


class CachedDecoder:
    """Greedy decoding that reuses the KV cache of the prompt prefix shared with the last call.

    `knn` (a `codeslm.model.knn.KnnDatastore`) with `knn_lambda > 0` mixes the datastore's
    next-token distribution into the model's at every step.
    """

    def __init__(self, model, tokenizer, knn=None, knn_lambda: float = 0.0):
        self.model = model
        self.tokenizer = tokenizer
        self.knn = knn
        self.knn_lambda = knn_lambda if knn is not None else 0.0
        self.device = next(model.parameters()).device
        self.stop_ids = stop_token_ids(tokenizer)
        # Sentinels that only prompts hold: a completion that writes one has lost its place.
        ids = fim_template(tokenizer).ids(tokenizer)
        self.banned = [ids[n] for n in ("prefix", "suffix", "middle", "repo_name") if n in ids]
        self._ids: list[int] = []  # tokens whose keys/values `_cache` holds
        self._cache = None
        self._token_texts: list[str] | None = None
        self._sorted_texts: list[str] | None = None

    def reset(self) -> None:
        self._ids, self._cache = [], None

    @property
    def token_texts(self) -> list[str]:
        """Decoded text of every token id ('' for special tokens), built once."""
        if self._token_texts is None:
            special = set(self.tokenizer.all_special_ids)
            texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
            self._token_texts = ["" if i in special else t for i, t in enumerate(texts)]
        return self._token_texts

    def extends(self, text: str) -> bool:
        """Whether some token is `text` plus more: a prompt ending in `text` may be cut mid-token."""
        if self._sorted_texts is None:
            self._sorted_texts = sorted(set(self.token_texts))
        i = bisect.bisect_right(self._sorted_texts, text)
        return i < len(self._sorted_texts) and self._sorted_texts[i].startswith(text)

    def _allowed(self, remaining: str) -> torch.Tensor:
        """Mask of tokens consistent with the forced text `remaining` (V,)."""
        ok = [bool(t) and (remaining.startswith(t) or t.startswith(remaining)) for t in self.token_texts]
        return torch.tensor(ok)

    def _forward(self, ids: list[int]):
        out = self.model(
            input_ids=torch.tensor([ids], device=self.device),
            past_key_values=self._cache,
            use_cache=True,
            output_hidden_states=self.knn_lambda > 0,
            logits_to_keep=1,
        )
        self._cache = out.past_key_values
        self._ids += ids
        logits = out.logits[0, -1].float()
        if self.knn_lambda > 0:
            hidden = out.hidden_states[-1][0, -1].float()
            return self.knn.interpolate(torch.log_softmax(logits, -1).cpu(), hidden.cpu(), self.knn_lambda)
        return logits.cpu()

    def _prefill(self, ids: list[int], stats: DecodeStats) -> torch.Tensor:
        from transformers import DynamicCache

        shared = 0
        limit = min(len(self._ids), len(ids) - 1)  # at least one token must run to get logits
        while shared < limit and self._ids[shared] == ids[shared]:
            shared += 1
        if self._cache is None or shared == 0:
            self._cache, self._ids = DynamicCache(), []
            shared = 0
        elif shared < len(self._ids):
            self._cache.crop(shared - len(self._ids))  # a negative count removes that many
            self._ids = self._ids[:shared]
        stats.reused_tokens = shared
        return self._forward(ids[shared:])

    @torch.inference_mode()
    def generate(
        self,
        ids: list[int],
        *,
        max_new_tokens: int,
        stop: Callable[[str], tuple[str, bool]],
        forced: str = "",
        line_deadline: float | None = None,
        ngram: NgramCache | None = None,
    ) -> tuple[str, DecodeStats]:
        """Text after prompt `ids`, starting with `forced`, cut where `stop` says it ends.

        `stop` sees the text after `forced`. Once `time.perf_counter()` passes `line_deadline`,
        generation ends at the next line end. `ngram`, whose history ends where the prompt's
        text before the cursor does, is mixed into every step and extended by each new token.
        Returns the text after `forced`.
        """
        stats = DecodeStats(prompt_tokens=len(ids))
        started = time.perf_counter()
        logits = self._prefill(ids, stats)
        stats.prefill_s = time.perf_counter() - started
        new: list[int] = []
        text = ""
        stats.stop_reason = "max_new_tokens"
        for _ in range(max_new_tokens):
            remaining = forced[len(text):] if len(text) < len(forced) else ""
            if ngram is not None:
                logits = ngram.mix(torch.log_softmax(logits, -1))
            if remaining:
                allowed = self._allowed(remaining)
                if not allowed.any():
                    stats.stop_reason = "unhealable"
                    break
                logits = logits.masked_fill(~allowed, float("-inf"))
            logits[self.banned] = float("-inf")
            token = int(logits.argmax())
            if token in self.stop_ids:
                stats.stop_reason = "end_of_text"
                break
            new.append(token)
            if ngram is not None:
                ngram.append(token)
            text = self.tokenizer.decode(new, skip_special_tokens=False)
            if len(text) >= len(forced):
                body, done = stop(text[len(forced):])
                if done:
                    text = forced + body
                    stats.stop_reason = "stop_rule"
                    break
                if line_deadline is not None and time.perf_counter() > line_deadline and "\n" in text[len(forced):]:
                    text = forced + text[len(forced):].rsplit("\n", 1)[0]
                    stats.stop_reason = "time_budget"
                    break
            logits = self._forward([token])
        stats.new_tokens = len(new)
        stats.decode_s = time.perf_counter() - started - stats.prefill_s
        return text[len(forced):], stats
