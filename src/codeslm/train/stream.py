"""Training rows: packed documents with FIM, plus rows that put retrieved context before a file.

A plain row is cut from a stream of document windows (each window of a shuffled epoch, with FIM at
`fim_rate`, SPM at `spm_rate` of those and cut at line ends at `fim_line_rate`) packed back to
back. A retrieval row starts with a file's retrieved context (no loss), then that file (FIM, or
`<file_sep>PATH\\n` and its text), then packed windows fill the rest. A copy row (at `copy_rate`)
starts with a block holding a span of the very text that follows it, so the model learns to copy
from its context: without such rows a model this small, trained on this few tokens, forms no
induction heads and ignores what its prompt and retrieved chunks hold; the repeated span can
carry a fixed share of each batch's loss (`copy_loss_share`). A reading row (at
`reading_rate`) is one engine-format prompt and the line it asks for (see
`codeslm.train.reading_rows`), loss on the line only, then packed text; its targets can carry a
fixed share of each batch's loss (`reading_loss_share`). Everything is drawn from one seeded
generator, and `state()` / `restore()` capture the exact position, so a resumed run sees
the same rows.
But: it does not retrieve (see `codeslm.train.retrieval_examples`) or train.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from codeslm.train.fim import FimIds, to_fim
from codeslm.train.reading_rows import ReadingExamples
from codeslm.train.retrieval_examples import RetrievalContexts
from codeslm.train.shards import Split

IGNORE = -100
# What a row's mask holds for each token: not a target, an ordinary target, a reading row's target,
# a copy row's repeated span.
PLAIN, READ, COPY = 1, 2, 3


@dataclass(frozen=True)
class StreamSettings:
    seq_len: int
    fim_rate: float
    spm_rate: float
    retrieval_rate: float
    seed: int
    fim_line_rate: float = 0.0
    copy_rate: float = 0.0
    # Share of copy rows whose span is random tokens written over the text: nothing but the
    # block predicts them, which is what makes a small model form induction heads.
    copy_random_share: float = 0.5
    # Share of rows that are reading rows (an engine prompt, loss on the line it asks for).
    reading_rate: float = 0.0
    # Share of each batch's loss the reading rows' targets carry (0: every target weighs the same).
    reading_loss_share: float = 0.0
    # Whether the end of text after a reading row's line is a target.
    reading_end_loss: bool = True
    # Share of each batch's loss the copy rows' repeated spans carry (0: every target the same).
    copy_loss_share: float = 0.0


# Length range of the span a copy row repeats from the text after it.
COPY_SPAN = (16, 128)


class TrainingStream:
    """Rows of `seq_len + 1` token ids with a loss mask, from one split of a corpus."""

    def __init__(
        self,
        split: Split,
        tokenizer,
        settings: StreamSettings,
        contexts: RetrievalContexts | None = None,
        paths: dict[int, str] | None = None,
        reading: ReadingExamples | None = None,
    ):
        self.split = split
        self.settings = settings
        self.contexts = contexts if contexts is not None and len(contexts) else None
        self.reading = reading if reading is not None and len(reading) else None
        self.eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self.fim_ids = FimIds.from_tokenizer(tokenizer)
        self.special = np.array(sorted(tokenizer.all_special_ids), dtype=np.int64)
        self.vocab = np.setdiff1d(np.arange(len(tokenizer), dtype=np.int64), self.special)
        self.row_of_doc = {int(d): i for i, d in enumerate(split.docs[:, 0])}
        self.headers: dict[int, np.ndarray] = {}
        from codeslm.model.prompt import fim_template

        template = fim_template(tokenizer)

        def encode(path: str) -> np.ndarray:
            text = template.block(path, "")
            return np.array(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)

        self.blank_header = encode("")
        if self.contexts is not None:
            for doc_id in self.contexts.doc_ids.tolist():
                self.headers[doc_id] = encode((paths or {}).get(doc_id, ""))
        self.rng = np.random.default_rng(settings.seed)
        self.epoch = self.pos = self.window = 0
        self.r_epoch = self.r_pos = 0
        self.rd_epoch = self.rd_pos = 0
        self.buffer = np.zeros(0, dtype=np.int64)
        self.buffer_mask = np.zeros(0, dtype=bool)
        self._order = self._permutation(len(split.docs), 0, 0)
        self._r_order = self._permutation(len(self.contexts) if self.contexts else 0, 1, 0)
        self._rd_order = self._permutation(len(self.reading) if self.reading else 0, 2, 0)

    def _permutation(self, n: int, stream: int, epoch: int) -> np.ndarray:
        return np.random.default_rng((self.settings.seed, stream, epoch)).permutation(n)

    # Plain stream -------------------------------------------------------------------------

    def _next_piece(self) -> tuple[np.ndarray, np.ndarray]:
        """The next document window, maybe FIM-transformed, ending in end of text if it ends one."""
        length = self.settings.seq_len
        while True:
            if self.pos == len(self._order):
                self.epoch, self.pos, self.window = self.epoch + 1, 0, 0
                self._order = self._permutation(len(self.split.docs), 0, self.epoch)
            _, start, end = self.split.docs[self._order[self.pos]]
            lo = start + self.window * length
            if lo >= end:
                self.pos, self.window = self.pos + 1, 0
                continue
            hi = min(end, lo + length)
            self.window += 1
            tokens = np.asarray(self.split.tokens[lo:hi], dtype=np.int64)
            last = hi == end
            if self.rng.random() < self.settings.fim_rate:
                spm = self.rng.random() < self.settings.spm_rate
                tokens = to_fim(tokens, self.fim_ids, self.rng, spm, self._by_line())
                last = True  # the end of text closes the middle, so generation learns to stop
            if last:
                tokens = np.append(tokens, self.eot)
            return tokens, np.ones(len(tokens), dtype=bool)

    def _take_plain(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        while len(self.buffer) < n:
            tokens, mask = self._next_piece()
            self.buffer = np.concatenate([self.buffer, tokens])
            self.buffer_mask = np.concatenate([self.buffer_mask, mask])
        out = self.buffer[:n], self.buffer_mask[:n]
        self.buffer, self.buffer_mask = self.buffer[n:], self.buffer_mask[n:]
        return out

    def _by_line(self) -> bool:
        # No draw at rate 0, so runs that predate line cuts keep their exact data order.
        rate = self.settings.fim_line_rate
        return rate > 0 and self.rng.random() < rate

    # Retrieval rows -----------------------------------------------------------------------

    def _retrieval_part(self) -> tuple[np.ndarray, np.ndarray]:
        """Retrieved context (masked) and then the file it was retrieved for."""
        if self.r_pos == len(self._r_order):
            self.r_epoch, self.r_pos = self.r_epoch + 1, 0
            self._r_order = self._permutation(len(self.contexts), 1, self.r_epoch)
        i = int(self._r_order[self.r_pos])
        self.r_pos += 1
        context = self.contexts.context(i).astype(np.int64)
        doc_id = int(self.contexts.doc_ids[i])
        _, start, end = self.split.docs[self.row_of_doc[doc_id]]
        space = self.settings.seq_len + 1 - len(context)
        fim = self.rng.random() < self.settings.fim_rate
        spm = self.rng.random() < self.settings.spm_rate
        # Half the files go unnamed, as they are when a caller does not pass the path.
        header = self.headers[doc_id] if self.rng.random() < 0.5 else self.blank_header
        room = space - 4 if fim else space - len(header) - 1
        n = min(end - start, room)
        # Drawn in both modes, so the row's later draws come from the same place in the stream.
        offset = int(self.rng.integers(0, end - start - n + 1))
        if self.contexts.starts is not None:  # the window the chunks were retrieved for
            offset = min(int(self.contexts.starts[i]), end - start - n)
        tokens = np.asarray(self.split.tokens[start + offset : start + offset + n], dtype=np.int64)
        if fim:
            target = np.append(
                to_fim(tokens, self.fim_ids, self.rng, spm, self._by_line()), self.eot
            )
        else:
            reaches_end = start + offset + n == end
            target = np.concatenate([header, tokens, [self.eot] if reaches_end else []]).astype(
                np.int64
            )
        row = np.concatenate([context, target])
        mask = np.concatenate(
            [np.zeros(len(context), dtype=bool), np.ones(len(target), dtype=bool)]
        )
        return row, mask

    # Copy rows ----------------------------------------------------------------------------

    def _copy_row(self, width: int) -> tuple[np.ndarray, np.ndarray]:
        """An unnamed context block holding a span of the packed text after it (no loss on it)."""
        lo, hi = COPY_SPAN
        span = int(self.rng.integers(lo, max(lo, min(hi, width // 4)) + 1))
        span = min(span, (width - len(self.blank_header)) // 2)
        rest, rest_mask = self._take_plain(width - len(self.blank_header) - span)
        start = int(self.rng.integers(0, len(rest) - span + 1))
        copied = rest[start : start + span]
        special = np.flatnonzero(np.isin(copied, self.special))
        if len(special):  # never a sentinel or end of text inside a context block
            copied = copied[: special[0]]
        if self.rng.random() < self.settings.copy_random_share:
            copied = self.rng.choice(self.vocab, size=len(copied))
            rest = rest.copy()
            rest[start : start + len(copied)] = copied
        rest_mask = rest_mask.astype(np.int8)
        rest_mask[start : start + len(copied)] *= COPY
        head = np.concatenate([self.blank_header, copied])
        # The plain text fills the room the cut sentinel left, so rows keep their width.
        more, more_mask = self._take_plain(width - len(head) - len(rest))
        row = np.concatenate([head, rest, more])
        mask = np.concatenate([np.zeros(len(head), dtype=bool), rest_mask, more_mask])
        return row, mask

    # Reading rows -------------------------------------------------------------------------

    def _reading_row(self, width: int) -> tuple[np.ndarray, np.ndarray]:
        """An engine prompt (no loss), the line it asks for (loss), then packed plain text."""
        if self.rd_pos == len(self._rd_order):
            self.rd_epoch, self.rd_pos = self.rd_epoch + 1, 0
            self._rd_order = self._permutation(len(self.reading), 2, self.rd_epoch)
        ids, target = self.reading.example(int(self._rd_order[self.rd_pos]))
        self.rd_pos += 1
        ids = ids.astype(np.int64)
        mask = np.where(np.arange(len(ids)) >= target, READ, 0).astype(np.int8)
        if not self.settings.reading_end_loss:
            mask[-1] = 0  # the example's last token is its end of text
        rest, rest_mask = self._take_plain(width - len(ids))
        return np.concatenate([ids, rest]), np.concatenate([mask, rest_mask])

    # Rows and batches ---------------------------------------------------------------------

    def next_row(self) -> tuple[np.ndarray, np.ndarray]:
        """`seq_len + 1` token ids and, for each, 0 (no target), PLAIN, READ or COPY."""
        width = self.settings.seq_len + 1
        # No draw at rate 0, so runs without reading rows keep their exact data order.
        if self.reading is not None and self.settings.reading_rate > 0 and (
                self.rng.random() < self.settings.reading_rate):
            return self._reading_row(width)
        if self.contexts is not None and self.rng.random() < self.settings.retrieval_rate:
            row, mask = self._retrieval_part()
            rest, rest_mask = self._take_plain(width - len(row))
            return np.concatenate([row, rest]), np.concatenate([mask, rest_mask])
        # No draw at rate 0, so runs without copy rows keep their exact data order.
        if self.settings.copy_rate > 0 and self.rng.random() < self.settings.copy_rate:
            return self._copy_row(width)
        return self._take_plain(width)

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """`(input_ids, labels, weights, plain)`, each (batch_size, seq_len): labels are -100
        where masked, and the loss is the weighted mean. Weights are 1 but for reading targets
        and copied spans, which get the weight that gives them `reading_loss_share` and
        `copy_loss_share` of the batch's loss (when the batch holds them and other targets).
        `plain` marks the ordinary targets (neither reading nor copying)."""
        rows, masks = zip(*(self.next_row() for _ in range(batch_size)), strict=True)
        rows_t = torch.from_numpy(np.stack(rows))
        kinds = np.stack(masks)[:, 1:].astype(np.int8)
        labels = rows_t[:, 1:].clone()
        labels[torch.from_numpy(kinds == 0)] = IGNORE
        weights = (kinds > 0).astype(np.float32)
        shares = {k: s for k, s in ((READ, self.settings.reading_loss_share),
                                    (COPY, self.settings.copy_loss_share))
                  if s > 0 and (kinds == k).any()}
        rest = float(weights[~np.isin(kinds, list(shares))].sum())
        if shares and rest > 0:
            # Each kind's weight w with w * n = share * total, the total being rest / (1 - shares).
            total = rest / (1 - sum(shares.values()))
            for k, s in shares.items():
                weights[kinds == k] = s * total / int((kinds == k).sum())
        return (rows_t[:, :-1].contiguous(), labels, torch.from_numpy(weights),
                torch.from_numpy(kinds == PLAIN))

    def state(self) -> dict:
        return {
            "rng": self.rng.bit_generator.state,
            "epoch": self.epoch,
            "pos": self.pos,
            "window": self.window,
            "r_epoch": self.r_epoch,
            "r_pos": self.r_pos,
            "rd_epoch": self.rd_epoch,
            "rd_pos": self.rd_pos,
            "buffer": torch.from_numpy(self.buffer.copy()),
            "buffer_mask": torch.from_numpy(self.buffer_mask.copy()),
        }

    def restore(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.epoch, self.pos, self.window = state["epoch"], state["pos"], state["window"]
        self.r_epoch, self.r_pos = state["r_epoch"], state["r_pos"]
        # Checkpoints from before reading rows have no reading position.
        self.rd_epoch, self.rd_pos = state.get("rd_epoch", 0), state.get("rd_pos", 0)
        self.buffer = state["buffer"].numpy().astype(np.int64)
        self.buffer_mask = state["buffer_mask"].numpy().astype(bool)
        self._order = self._permutation(len(self.split.docs), 0, self.epoch)
        if self.contexts is not None:
            self._r_order = self._permutation(len(self.contexts), 1, self.r_epoch)
        if self.reading is not None:
            self._rd_order = self._permutation(len(self.reading), 2, self.rd_epoch)


def validation_rows(
    split: Split, seq_len: int, n_rows: int, eot: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`n_rows` fixed windows spread evenly over a split: `(input_ids, labels)`.

    Labels skip end-of-text targets, so the loss counts only bytes of code (bits per byte).
    """
    total = split.n_tokens
    width = min(seq_len + 1, total)
    starts = np.linspace(0, total - width, num=n_rows).astype(np.int64)
    rows = torch.from_numpy(
        np.stack([np.asarray(split.tokens[s : s + width], dtype=np.int64) for s in starts])
    )
    labels = rows[:, 1:].clone()
    labels[labels == eot] = IGNORE
    return rows[:, :-1].contiguous(), labels
