"""Decoding for completions (greedy or beam search): KV-cache reuse across requests, token
healing, stop rules.

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
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from codeslm.model.kv_cache import forward_cached
from codeslm.model.ngram_cache import NgramCache
from codeslm.model.prompt import fim_template


def stop_token_ids(tokenizer) -> set[int]:
    """End of text and the FIM template's tokens that end a middle (a new file, padding)."""
    vocab = tokenizer.get_vocab()
    names = set(fim_template(tokenizer).stop_tokens)
    if tokenizer.eos_token:
        names.add(tokenizer.eos_token)
    return {vocab[t] for t in names if t in vocab}


class CompletionCancelled(Exception):
    """The caller's `cancelled()` said to stop; raised between decode steps."""


@dataclass
class DecodeStats:
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose keys/values came from the previous call
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    stop_reason: str = ""
    # Other ended hypotheses of a beam search, best first, distinct (texts after `forced`).
    alternatives: list[str] = field(default_factory=list)


class CachedDecoder:
    """Greedy or beam-search decoding that reuses the KV cache of the prompt prefix shared with the
    last call.

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

    def _step(self, rows: list[list[int]]) -> torch.Tensor:
        """Next-token log-probabilities (B, V) after `rows` (one per cached sequence, equal lengths),
        with the kNN datastore mixed in."""
        out, self._cache = forward_cached(
            self.model, self._cache,
            input_ids=torch.tensor(rows, device=self.device),
            output_hidden_states=self.knn_lambda > 0,
            logits_to_keep=1,
        )
        log_probs = torch.log_softmax(out.logits[:, -1].float(), -1).cpu()
        if self.knn_lambda > 0:
            hidden = out.hidden_states[-1][:, -1].float().cpu()
            log_probs = torch.stack([self.knn.interpolate(row, h, self.knn_lambda)
                                     for row, h in zip(log_probs, hidden, strict=True)])
        return log_probs

    def _forward(self, ids: list[int]) -> torch.Tensor:
        log_probs = self._step([ids])[0]
        self._ids += ids
        return log_probs

    def _scores(self, log_probs: torch.Tensor, text: str, forced: str,
                ngram: NgramCache | None) -> torch.Tensor | None:
        """Log-probabilities of the token after `text`: the n-gram cache mixed in, tokens that
        break `forced` or that only prompts hold ruled out; None when no token fits `forced`."""
        if ngram is not None:
            log_probs = ngram.mix(log_probs)
        remaining = forced[len(text):] if len(text) < len(forced) else ""
        if remaining:
            allowed = self._allowed(remaining)
            if not allowed.any():
                return None
            log_probs = log_probs.masked_fill(~allowed, float("-inf"))
        log_probs[self.banned] = float("-inf")
        return log_probs

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
        beams: int = 1,
        length_penalty: float = 0.0,
        cancelled: Callable[[], bool] | None = None,
    ) -> tuple[str, DecodeStats]:
        """Text after prompt `ids`, starting with `forced`, cut where `stop` says it ends.

        `stop` sees the text after `forced`. Once `time.perf_counter()` passes `line_deadline`,
        generation ends at the next line end. `ngram`, whose history ends where the prompt's
        text before the cursor does, is mixed into every step and extended by each new token.
        `beams` > 1 searches that many hypotheses for the most probable text instead of taking
        the most probable token at each step. `cancelled()`, asked before every step, ends the
        call with `CompletionCancelled` (the KV cache stays usable for the next call). Returns
        the text after `forced`.
        """
        check = cancelled if cancelled is not None else _never
        stats = DecodeStats(prompt_tokens=len(ids))
        started = time.perf_counter()
        log_probs = self._prefill(ids, stats)
        stats.prefill_s = time.perf_counter() - started
        if beams > 1:
            text = self._beam_search(log_probs, beams, max_new_tokens, stop, forced, line_deadline,
                                     ngram, stats, length_penalty, check)
            stats.decode_s = time.perf_counter() - started - stats.prefill_s
            return text[len(forced):], stats
        new: list[int] = []
        text = ""
        stats.stop_reason = "max_new_tokens"
        for _ in range(max_new_tokens):
            if check():
                raise CompletionCancelled
            scores = self._scores(log_probs, text, forced, ngram)
            if scores is None:
                stats.stop_reason = "unhealable"
                break
            token = int(scores.argmax())
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
            log_probs = self._forward([token])
        stats.new_tokens = len(new)
        stats.decode_s = time.perf_counter() - started - stats.prefill_s
        return text[len(forced):], stats

    def _beam_search(self, log_probs, beams, max_new_tokens, stop, forced, line_deadline, ngram,
                     stats: DecodeStats, length_penalty: float, cancelled: Callable[[], bool]) -> str:
        """The most probable text (with `forced`) of `beams` hypotheses kept at each step.

        A hypothesis ends at an end-of-text token or where `stop` says; the search ends once no
        open one can beat the best ended one (scores are sums of log-probabilities, so they only
        fall). With `length_penalty` α > 0 ended hypotheses compete by score / tokens^α, and the
        search ends once the best open one, so scored, falls below the best ended one.
        Afterwards the KV cache holds the prompt alone again, for the next request.
        """

        def rank(score: float, tokens: int) -> float:
            return score / max(tokens, 1) ** length_penalty

        prompt = list(self._ids)
        open_ = [_Hypothesis([], 0.0, "", ngram)]
        rows = log_probs.unsqueeze(0)
        ended: list[_Ended] = []
        try:
            for step in range(max_new_tokens):
                if cancelled():
                    raise CompletionCancelled
                kept, parents = self._extend(open_, rows, beams, stop, forced, ended, rank)
                best = max(e.rank for e in ended) if ended else None
                if not kept or (best is not None and best >= rank(kept[0].score, len(kept[0].tokens))):
                    break
                if line_deadline is not None and time.perf_counter() > line_deadline:
                    lead = kept[0].text[len(forced):]
                    if best is None and "\n" in lead:
                        ended.append(_Ended(rank(kept[0].score, len(kept[0].tokens)),
                                            forced + lead.rsplit("\n", 1)[0], "time_budget", len(kept[0].tokens)))
                    if ended:
                        break
                open_ = kept
                if step + 1 < max_new_tokens:
                    self._cache.reorder_cache(torch.tensor(parents, device=self.device))
                    rows = self._step([[hyp.tokens[-1]] for hyp in kept])
            else:  # out of tokens: the open hypotheses compete as they are
                ended += [_Ended(rank(h.score, len(h.tokens)), h.text, "max_new_tokens", len(h.tokens))
                          for h in open_ if len(h.text) >= len(forced)]
        finally:
            self._cache.batch_select_indices(torch.tensor([0], device=self.device))
            extra = self._cache.get_seq_length() - len(prompt)
            if extra:
                self._cache.crop(-extra)  # a negative count removes that many
            self._ids = prompt
        best_ended = max(ended, key=lambda e: e.rank, default=_Ended(0.0, forced, "unhealable", 0))
        stats.stop_reason = best_ended.reason
        stats.new_tokens = best_ended.tokens
        seen = {best_ended.text}
        for e in sorted(ended, key=lambda e: e.rank, reverse=True):
            if e.text not in seen:
                seen.add(e.text)
                stats.alternatives.append(e.text[len(forced):])
        return best_ended.text

    def _extend(self, open_: list[_Hypothesis], rows: torch.Tensor, beams: int, stop, forced: str,
                ended: list[_Ended], rank) -> tuple[list[_Hypothesis], list[int]]:
        """One step of beam search: the `beams` best open continuations of `open_` (whose
        next-token log-probabilities are `rows`), best first, and the index of each one's parent.
        Continuations that end go to `ended`."""
        candidates = []
        for i, hyp in enumerate(open_):
            scores = self._scores(rows[i], hyp.text, forced, hyp.ngram)
            if scores is not None:
                top = torch.topk(scores, beams)
                candidates += [(hyp.score + v, i, t) for v, t in zip(top.values.tolist(), top.indices.tolist(),
                                                                     strict=True) if v > float("-inf")]
        candidates.sort(key=lambda c: c[0], reverse=True)
        kept, parents = [], []
        for score, i, token in candidates:
            if len(kept) == beams:
                break
            hyp = open_[i]
            if token in self.stop_ids:
                if len(hyp.text) >= len(forced):
                    ended.append(_Ended(rank(score, len(hyp.tokens) + 1), hyp.text, "end_of_text", len(hyp.tokens)))
                continue
            tokens = hyp.tokens + [token]
            text = self.tokenizer.decode(tokens, skip_special_tokens=False)
            body, done = stop(text[len(forced):]) if len(text) >= len(forced) else ("", False)
            if done:
                ended.append(_Ended(rank(score, len(tokens)), forced + body, "stop_rule", len(tokens)))
                continue
            cache = hyp.ngram.fork() if hyp.ngram is not None else None
            if cache is not None:
                cache.append(token)
            kept.append(_Hypothesis(tokens, score, text, cache))
            parents.append(i)
        return kept, parents


def _never() -> bool:
    return False


@dataclass
class _Hypothesis:
    tokens: list[int]
    score: float  # summed log-probability
    text: str
    ngram: NgramCache | None


class _Ended(NamedTuple):
    rank: float  # score / tokens^length_penalty
    text: str  # with the forced start
    reason: str
    tokens: int
