"""Reading: consistent renames, reading rows in training streams, the reading stage's recipe and
its resumption, and the shipped checkpoint copying a line its verbatim chunk holds when prompted
as the engine prompts it."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import synthetic_documents, write_corpus

from codeslm.errors import TrainingError
from codeslm.train.reading_rows import KINDS, build_reading_examples
from codeslm.train.renames import rename_code
from codeslm.train.settings import TrainSettings, load_recipe
from codeslm.train.shards import Corpus
from codeslm.train.stream import StreamSettings, TrainingStream

RECIPES = Path(__file__).resolve().parent.parent / "src" / "codeslm" / "train" / "recipes"

SOURCE = '''class Parser(Base):
    LIMIT = 10

    def parse(self, text, sep=","):
        parts = text.split(sep)
        count = len(parts) + 2
        if count > self.LIMIT:
            raise ValueError("too many parts")
        return [Parser.clean(p, strip=True) for p in parts[:count]]
'''


def _names(tree: ast.AST) -> list[str]:
    """Every binding or use of a name, in source order."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            out.append((node.lineno, node.col_offset, node.id))
        elif isinstance(node, ast.arg):
            out.append((node.lineno, node.col_offset, node.arg))
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out.append((node.lineno, node.col_offset, node.name))
    return [name for *_, name in sorted(out)]


@pytest.mark.parametrize("seed", range(8))
def test_renames_are_consistent_and_the_code_still_parses(seed):
    from codeslm.chunking.languages import parser_for

    renamed = rename_code(SOURCE, np.random.default_rng(seed))
    assert renamed.names, "nothing was renamed"
    before, after = ast.parse(SOURCE), ast.parse(renamed.text)
    # Same tree shape, and each name maps through the rename map, every occurrence the same way.
    assert [type(n).__name__ for n in ast.walk(before)] == [type(n).__name__ for n in ast.walk(after)]
    assert [renamed.names.get(n, n) for n in _names(before)] == _names(after)
    assert len(set(renamed.names.values())) == len(renamed.names)
    # What code outside the piece fixes stays: attributes, keyword arguments, builtins, self.
    for kept in (".split(", "strip=", "len(", "self.LIMIT", "ValueError"):
        assert kept in renamed.text
    # Literals change consistently too.
    strings = [n.value for n in ast.walk(before) if isinstance(n, ast.Constant)]
    new_strings = [n.value for n in ast.walk(after) if isinstance(n, ast.Constant)]
    assert [renamed.literals.get(str(v), str(v)) for v in strings] == [str(v) for v in new_strings]
    assert not parser_for("python").parse(renamed.text.encode()).root_node.has_error


def test_renames_of_a_fragment_take_only_names_its_first_lines_show():
    lines = SOURCE.splitlines(keepends=True)[3:7]  # a piece of a method: no class line
    fragment = "".join(lines)
    renamed = rename_code(fragment, np.random.default_rng(0), visible_lines=2)
    shown = set("".join(lines[:2]).replace("(", " ").replace(")", " ").replace(",", " ").split())
    assert renamed.names and set(renamed.names) <= shown
    assert "count" not in renamed.names  # first bound on the third line
    assert len(renamed.text.splitlines()) == len(lines)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), synthetic_documents(60, 6))


def test_reading_rows_are_engine_prompts_with_loss_on_the_line_only(corpus_dir):
    corpus = Corpus.open(corpus_dir)
    tokenizer = corpus.load_tokenizer()
    examples = build_reading_examples(corpus, tokenizer, 1000, 3, 0, 192, progress=False)
    counts = np.bincount(examples.kinds, minlength=len(KINDS))
    assert len(examples) > 150 and counts[KINDS.index("verbatim")] > 30
    assert counts[KINDS.index("edited")] > 20 and counts[KINDS.index("ordinary")] > 30
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    for i in range(len(examples)):
        ids, start = examples.example(i)
        prompt, target = tokenizer.decode(ids[:start].tolist()), tokenizer.decode(ids[start:-1].tolist())
        assert ids[-1] == eot and target.endswith("\n") and target.count("\n") == 1
        assert prompt.startswith(("<repo_name>", "<file_sep>", "<fim_prefix>"))
        assert prompt.endswith(("\n", "<fim_middle>"))  # the cursor starts a line
        if KINDS[examples.kinds[i]] == "verbatim":
            chunks = prompt.split("<fim_prefix>")[0]
            assert target in chunks
    stream = TrainingStream(corpus.splits["train"], tokenizer,
                            StreamSettings(192, 0.5, 1.0, 0.0, 0, reading_rate=1.0), reading=examples)
    for _ in range(8):
        row, mask = stream.next_row()
        assert len(row) == len(mask) == 193
        start = int(np.argmax(mask))
        ids, target = next(examples.example(j) for j in range(len(examples))
                            if np.array_equal(examples.example(j)[0], row[: len(examples.example(j)[0])]))
        assert start == target and not mask[:start].any() and mask[start:].all()


def test_reading_targets_carry_their_share_of_each_batch_loss_and_may_leave_out_the_end(corpus_dir):
    corpus = Corpus.open(corpus_dir)
    tokenizer = corpus.load_tokenizer()
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    examples = build_reading_examples(corpus, tokenizer, 1000, 2, 0, 192, progress=False)
    for share in (0.0, 0.3, 0.6):
        stream = TrainingStream(corpus.splits["train"], tokenizer, StreamSettings(
            192, 0.5, 1.0, 0.0, 0, reading_rate=0.5, reading_loss_share=share,
            reading_end_loss=False), reading=examples)
        for _ in range(4):
            x, labels, weights, _ = stream.next_batch(8)
            targets = labels != -100
            assert torch.equal(weights > 0, targets)
            # Which targets are reading targets: those the rows' reading examples ask for.
            reading = torch.zeros_like(targets)
            for r in range(len(x)):
                for j in range(len(examples)):
                    ids, start = examples.example(j)
                    if np.array_equal(ids[:-1], x[r, : len(ids) - 1].numpy()):
                        reading[r, start - 1 : len(ids) - 2] = True
                        # The line's end of text is in the row but is not a target.
                        assert labels[r, len(ids) - 2] == -100 and x[r, len(ids) - 1] == eot
                        break
            assert torch.equal(reading & targets, reading)
            if share == 0.0:
                assert torch.all(weights[targets] == 1.0)
            elif reading.any() and (targets & ~reading).any():
                got = float(weights[reading].sum() / weights.sum())
                assert got == pytest.approx(share, abs=1e-5)
                assert torch.all(weights[targets & ~reading] == 1.0)


def test_the_reading_mix_sets_the_share_of_each_kind(corpus_dir):
    corpus = Corpus.open(corpus_dir)
    tokenizer = corpus.load_tokenizer()
    only = build_reading_examples(corpus, tokenizer, 1000, 2, 0, 192, progress=False,
                                  shares=(1.0, 0.0, 0.0, 0.0))
    assert len(only) > 50 and set(only.kinds.tolist()) == {KINDS.index("verbatim")}
    half = build_reading_examples(corpus, tokenizer, 1000, 2, 0, 192, progress=False,
                                  shares=(1.0, 0.0, 0.0, 1.0))
    counts = np.bincount(half.kinds, minlength=len(KINDS))
    assert counts[1] == counts[2] == 0 and 0.35 < counts[0] / len(half) < 0.65
    with pytest.raises(TrainingError, match="reading_mix"):
        TrainSettings(reading_mix=(1.0, 0.0)).check()
    with pytest.raises(TrainingError, match="reading_loss_share"):
        TrainSettings(reading_loss_share=1.0).check()
    # A recipe's list compares equal to the tuple a checkpoint recorded.
    assert TrainSettings(reading_mix=[0.5, 0.2, 0.1, 0.2]).identity()["reading_mix"] == (
        0.5, 0.2, 0.1, 0.2)


def test_a_stream_resumed_after_a_pass_over_its_reading_rows_sees_the_same_rows(corpus_dir):
    """The second pass over the reading examples has its own order, which a restored stream must
    take up again (it kept the first pass's order until a retrieval row came)."""
    corpus = Corpus.open(corpus_dir)
    tokenizer = corpus.load_tokenizer()
    examples = build_reading_examples(corpus, tokenizer, 1000, 1, 0, 192, progress=False)
    settings = StreamSettings(192, 0.5, 1.0, 0.0, 0, reading_rate=1.0)
    whole = TrainingStream(corpus.splits["train"], tokenizer, settings, reading=examples)
    for _ in range(len(examples) + 3):
        whole.next_row()
    assert whole.rd_epoch == 1
    resumed = TrainingStream(corpus.splits["train"], tokenizer, settings, reading=examples)
    resumed.restore(whole.state())
    for _ in range(8):
        assert np.array_equal(whole.next_row()[0], resumed.next_row()[0])


@pytest.mark.parametrize("stage", ["default-stage13", "default-stage14", "default-stage15",
                                   "default-stage16", "default-stage17", "default-stage18"])
def test_the_reading_recipes_load_and_their_runs_resume(corpus_dir, tmp_path, stage):
    from codeslm.train.pretrain import train

    recipe = load_recipe(RECIPES / f"{stage}.json").check()
    raw = json.loads((RECIPES / f"{stage}.json").read_text())
    assert recipe.reading_rate == raw["reading_rate"] > 0 and recipe.threads == 1
    assert recipe.reading_loss_share == raw.get("reading_loss_share", 0.0)
    assert recipe.reading_mix == tuple(raw.get("reading_mix", recipe.reading_mix))
    # Each starts from an earlier stage's export, not from whatever the shipped weights are now.
    assert re.fullmatch(r"runs/default-stage1[27]/export", recipe.init_from) and recipe.seq_len == 512
    assert recipe.trainable == tuple(raw.get("trainable", ()))
    small = recipe.with_overrides(
        corpus=str(corpus_dir), size="nano", seq_len=192, batch_size=4, max_steps=6,
        warmup_steps=2, retrieval_pool=200, retrieval_context_tokens=64, reading_pool=200,
        eval_every=1000, eval_rows=4, log_every=1, precision="fp32", init_from="",
        checkpoint_every_s=0.0)
    assert recipe.anchor_kl == raw.get("anchor_kl", 0.0)
    if recipe.anchor_kl > 0:  # the model it anchors to, of the test's size
        start = train(small.with_overrides(run_dir=str(tmp_path / "start"), anchor_kl=0.0,
                                           anchor_to="", max_steps=2), progress=False)
        small = small.with_overrides(init_from=str(start.export_dir),
                                     anchor_to=str(start.export_dir) if recipe.anchor_to else "")
    whole = train(small.with_overrides(run_dir=str(tmp_path / "whole")), progress=False)
    split = small.with_overrides(run_dir=str(tmp_path / "split"))
    assert train(split, until_step=3, progress=False).step == 3
    resumed = train(split, resume=True, progress=False)
    assert [h["loss"] for h in resumed.history if "loss" in h] == [
        h["loss"] for h in whole.history if "loss" in h]
    assert (tmp_path / "split" / "reading-examples.npz").is_file()


@pytest.mark.parametrize(("line", "after"), [
    ("def flatten_pairs(pairs):", "    for left, right in pairs:"),
    ("def count_words(lines):", "    counts = {}"),
])
def test_the_shipped_checkpoint_copies_a_line_its_verbatim_chunk_holds(line, after):
    """A function name the file never shows: the model alone (no n-gram cache, no kNN) writes it
    from a chunk of another file holding the line's surroundings, and not without that chunk."""
    from codeslm.complete import CompletionEngine, CompletionRequest, CompletionSettings
    from codeslm.model.loading import load_model

    model, tokenizer = load_model(None, device="cpu")
    engine = CompletionEngine(model, tokenizer, None, CompletionSettings(
        retrieval=False, ngram_cache=False, line_budget_ms=None))
    prefix = ("def unique(seq):\n    seen = set()\n    for item in seq:\n        if item not in seen:\n"
              "            seen.add(item)\n            yield item\n\n\n")
    chunk = "".join(prefix.splitlines(keepends=True)[-3:]) + f"{line}\n{after}\n"
    with_chunk = CompletionRequest(prefix, after + "\n", "lib/util.py",
                                   extra_context=(("lib/_compat.py", chunk),))
    assert engine.complete(with_chunk).text == line
    assert engine.complete(CompletionRequest(prefix, after + "\n", "lib/util.py")).text != line


@pytest.mark.slow
def test_reading_rows_teach_a_nano_model_to_copy_a_line_from_its_chunk(tmp_path):
    """Two nano models, trained alike but for reading rows, complete the `def` lines of
    validation packages whose function names (whole tokens, drawn from a pool, in combinations
    never seen in training) only a verbatim chunk of the file shows. The model trained on
    reading rows writes the line from its chunk; the one trained without them does not."""
    from codeslm.complete import CompletionEngine, CompletionRequest, CompletionSettings
    from codeslm.model.loading import load_model
    from codeslm.train.pretrain import train

    docs = synthetic_documents(300, 30, names_per_package=2, name_pool=100)
    corpus = write_corpus(tmp_path / "corpus", docs, vocab_size=700)
    # d_model 128: a 64-wide nano model did not learn to copy within 2,000 steps; at 128 wide
    # the copying comes in abruptly, between 1,500 and 2,500 steps.
    base = TrainSettings(
        corpus=str(corpus), size="nano", d_model=128, n_kv_heads=4, d_ff=384, seq_len=128,
        batch_size=8, max_steps=2500, warmup_steps=20, lr=3e-3, retrieval_rate=0.0,
        reading_pool=1000, eval_every=10_000, eval_rows=8, log_every=100, precision="fp32",
        threads=1)
    arms = {"reading": base.with_overrides(reading_rate=0.6, reading_mix=(0.8, 0.0, 0.0, 0.2),
                                           reading_loss_share=0.7),
            "plain": base}
    lines = []
    for d in docs:
        if d["split"] == "val" and d["path"].endswith("defs.py"):
            text = d["text"].splitlines(keepends=True)
            lines += [(d["path"], text, i) for i, line in enumerate(text) if line.startswith("def ")]
    exact = {}
    for name, settings in arms.items():
        result = train(settings.with_overrides(run_dir=str(tmp_path / name)), progress=False)
        model, tokenizer = load_model(result.export_dir, device="cpu")
        engine = CompletionEngine(model, tokenizer, None, CompletionSettings(
            retrieval=False, ngram_cache=False, line_budget_ms=None, beams=1))
        for chunked in (True, False):
            hits = 0
            for path, text, i in lines:
                chunk = "".join(text[max(0, i - 3) : i + 2])
                context = ((path.replace("defs.py", "_defs.py"), chunk),) if chunked else ()
                request = CompletionRequest("".join(text[:i]), "".join(text[i + 1 :]), path,
                                            extra_context=context)
                hits += engine.complete(request).text == text[i].rstrip("\n")
            exact[name, chunked] = hits / len(lines)
    # Measured: 0.88 with the chunk, 0.00 without it, against 0.02 for the plain model.
    assert exact["reading", True] >= exact["plain", True] + 0.5
    assert exact["reading", False] <= 0.1 and exact["plain", False] <= 0.1
