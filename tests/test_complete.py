"""The completion engine on a small repository with a nano model trained here to copy retrieved
names; stop rules and suffix trimming on hand-written generations; bad input."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from completion_fixtures import caller_prefix, chunk_text, train_nano_model, write_repo

from codeslm.complete import (
    CompletionEngine,
    CompletionRequest,
    CompletionSettings,
    split_at_cursor,
)
from codeslm.complete.engine import cursor_tail, ends_at_cursor
from codeslm.complete.postprocess import StopRule, trim_suffix_overlap, word_fragment
from codeslm.errors import CodeslmError, ModelError

CURSOR = ("main.py", 3, 11)  # after `    return` in run(), which only helpers.py can finish


@pytest.fixture(scope="module")
def nano():
    return train_nano_model()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    from codeslm.index import Index, build_index

    root = write_repo(tmp_path_factory.mktemp("repo") / "demo")
    index_dir = tmp_path_factory.mktemp("index") / "demo"
    build_index(root, index_dir, dense=False, progress=False)
    index = Index.open(index_dir)
    yield root, index_dir, index
    index.close()


@pytest.fixture(scope="module")
def model_dir(nano, tmp_path_factory):
    from codeslm.model.tokenizer import save_tokenizer

    model, tokenizer = nano
    path = tmp_path_factory.mktemp("model")
    model.save_pretrained(path)
    save_tokenizer(tokenizer, path)
    return path


def engine_for(nano, index, **settings):
    # The retrieved chunk repeats the caller's lines word for word, so the n-gram cache would
    # copy the chunk's own body; these tests are about what the model reads from its prompt.
    model, tokenizer = nano
    settings = {"k": 1, "ngram_cache": False, **settings}
    return CompletionEngine(model, tokenizer, index, CompletionSettings(**settings))


# Engine on the nano model -------------------------------------------------------------------


def test_completion_uses_an_identifier_only_a_retrieved_chunk_holds(nano, repo):
    root, _, index = repo
    file, line, col = CURSOR
    result = engine_for(nano, index).complete_file(root / file, line, col)
    assert [c.path for c in result.retrieved] == ["helpers.py"]
    assert "frobnicate" in result.retrieved[0].text
    assert result.text == " frobnicate(widget)"
    blind = engine_for(nano, index, retrieval=False).complete_file(root / file, line, col)
    assert "frobnicate" not in blind.text and blind.retrieved == []


def test_beam_search_finds_the_most_probable_text_and_keeps_the_prompt_cache(nano, repo):
    """With as many beams as tokens, two steps of beam search are exhaustive: its text is the most
    probable of all one- and two-token continuations, found here by brute force."""
    import torch

    from codeslm.complete.decode import CachedDecoder
    from codeslm.model.prompt import build_prompt

    model, tokenizer = nano
    root, _, index = repo
    file, line, col = CURSOR
    assert CompletionSettings().beam_count() == 4  # lines: beam search
    assert CompletionSettings(multiline=True).beam_count() == 1  # blocks: greedy unless asked
    greedy = engine_for(nano, index, beams=1).complete_file(root / file, line, col)
    beam = engine_for(nano, index, beams=4).complete_file(root / file, line, col)
    assert greedy.text == beam.text == " frobnicate(widget)" and beam.stop_reason == "end_of_text"

    prompt = build_prompt(tokenizer, caller_prefix("sort", "gadget"), "\n",
                          [("helpers.py", chunk_text("zanzibar", "sort", "gadget"))], "demo", max_tokens=256)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    decoder = CachedDecoder(model, tokenizer)
    vocab = len(tokenizer)
    text, stats = decoder.generate(ids, max_new_tokens=2, stop=lambda t: (t, False), beams=vocab)

    with torch.inference_mode():
        first = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
        rows = torch.tensor([ids + [t] for t in range(vocab)])
        second = torch.log_softmax(model(input_ids=rows).logits[:, -1].float(), -1)
        first[decoder.banned] = second[:, decoder.banned] = float("-inf")
    best = (float("-inf"), None)
    for t1 in range(vocab):
        if t1 in decoder.stop_ids:
            best = max(best, (float(first[t1]), []), key=lambda b: b[0])
            continue
        t2 = int(second[t1].argmax())
        best = max(best, (float(first[t1] + second[t1, t2]), [t1] if t2 in decoder.stop_ids else [t1, t2]),
                   key=lambda b: b[0])
    assert text == tokenizer.decode(best[1]) and stats.new_tokens == len(best[1])

    # The search leaves the prompt's keys and values for the next call, and nothing else.
    after, again = decoder.generate(ids, max_new_tokens=8, stop=lambda t: (t, False))
    assert again.reused_tokens == len(ids) - 1
    assert after == CachedDecoder(model, tokenizer).generate(ids, max_new_tokens=8, stop=lambda t: (t, False))[0]


def test_engine_plugs_into_the_evaluation_harness_as_a_completer(nano, repo):
    root, _, index = repo
    prefix, suffix = split_at_cursor((root / "main.py").read_text(), 3, 11)
    example = SimpleNamespace(prefix=prefix, suffix=suffix, path="main.py", context=())
    assert engine_for(nano, index)(example) == " frobnicate(widget)"


def test_repocoder_second_round_retrieves_with_the_draft(nano, repo):
    root, _, index = repo
    file, line, col = CURSOR
    result = engine_for(nano, index, repocoder=True).complete_file(root / file, line, col)
    # The draft names frobnicate, so the second query still finds its definition first.
    assert [c.path for c in result.retrieved] == ["helpers.py"]
    assert result.text == " frobnicate(widget)"


def test_never_retrieves_the_cursor_chunk_or_what_follows(nano, repo):
    root, _, index = repo
    file, line, col = CURSOR
    result = engine_for(nano, index, k=10).complete_file(root / file, line, col)
    # The query is run()'s own text: without the exclusion main.py would rank first.
    assert result.retrieved and all(c.path != "main.py" for c in result.retrieved)
    assert "glorpified" not in result.text


def test_a_copy_of_the_file_cut_at_the_cursor_is_left_out(nano, tmp_path):
    from codeslm.index import Index, build_index

    root = write_repo(tmp_path / "demo")
    prefix = caller_prefix("polish", "widget")
    (root / "draft.py").write_text(prefix)  # main.py saved under another name, cut at the cursor
    build_index(root, tmp_path / "index", dense=False, progress=False)
    index = Index.open(tmp_path / "index")
    try:
        engine = engine_for(nano, index, k=10)
        file, line, col = CURSOR
        result = engine.complete_file(root / file, line, col)
        assert "draft.py" not in [c.path for c in result.retrieved]
        assert "helpers.py" in [c.path for c in result.retrieved]
        # The same holds for a chunk a client sends: it does not reach the prompt.
        plain = engine.complete(CompletionRequest(prefix, "\n", "main.py"))
        sent = engine.complete(CompletionRequest(prefix, "\n", "main.py", extra_context=[("buf.py", prefix)]))
        assert sent.prompt_tokens == plain.prompt_tokens
    finally:
        index.close()


def test_ends_at_cursor_needs_the_chunk_to_stop_where_the_prefix_does():
    prefix = "def drain(queue):\n    while len(queue):\n        yield queue."
    tail = cursor_tail(prefix)
    assert ends_at_cursor("x = 1\n\n" + prefix + "\n", tail)
    assert not ends_at_cursor(prefix + "pop()\n", tail)
    assert not ends_at_cursor("yield queue.", tail)  # only the cursor line, not the one above
    assert not ends_at_cursor("x = 1\n", cursor_tail("x = 1\n"))  # too little to tell a copy


def test_chunks_beyond_the_prompts_feed_only_the_ngram_cache(nano, repo):
    root, _, index = repo
    file, line, col = CURSOR
    wide = engine_for(nano, index, ngram_cache=True, cache_k=3).complete_file(root / file, line, col)
    narrow = engine_for(nano, index, ngram_cache=True, cache_k=1).complete_file(root / file, line, col)
    assert [c.in_prompt for c in wide.retrieved] == [True, False, False]
    assert wide.retrieved[0].path == "helpers.py" and len(narrow.retrieved) == 1
    # The prompt holds the best chunk only, whatever the cache reads.
    assert wide.prompt_tokens == narrow.prompt_tokens


def test_keystroke_cache_returns_the_rest_of_the_suggestion_without_the_model(nano, repo):
    root, _, index = repo
    engine = engine_for(nano, index)
    prefix, suffix = split_at_cursor((root / "main.py").read_text(), 3, 11)
    first = engine.complete(CompletionRequest(prefix, suffix, "main.py"))
    assert first.text == " frobnicate(widget)" and not first.from_cache
    calls = engine.decoder.model.forward
    engine.decoder.model.forward = None  # any model call now fails
    try:
        typed = engine.complete(CompletionRequest(prefix + " frob", suffix, "main.py"))
    finally:
        engine.decoder.model.forward = calls
    assert typed.from_cache and typed.text == "nicate(widget)"
    # Typing something else is a new request; the shared prompt prefix comes from the KV cache.
    other = engine.complete(CompletionRequest(prefix + " x", suffix, "main.py"))
    assert not other.from_cache and other.reused_tokens > 0


def test_token_healing_completes_a_half_typed_identifier(nano, repo):
    root, _, index = repo
    engine = engine_for(nano, index, cache_size=0)
    prefix, suffix = split_at_cursor((root / "main.py").read_text(), 3, 11)
    result = engine.complete(CompletionRequest(prefix + " frobn", suffix, "main.py"))
    assert result.text == "icate(widget)"


def test_stale_file_is_left_out_of_retrieval_and_said_so(nano, repo):
    root, _, index = repo
    prefix, suffix = split_at_cursor((root / "main.py").read_text(), 3, 11)
    result = engine_for(nano, index, k=10).complete(CompletionRequest("# edited\n" + prefix, suffix, "main.py"))
    assert any("stale" in n for n in result.notes)
    assert all(c.path != "main.py" for c in result.retrieved)


def test_multiline_mode_never_runs_past_a_blank_line(nano, repo):
    root, _, index = repo
    file, line, col = CURSOR
    result = engine_for(nano, index, multiline=True).complete_file(root / file, line, col)
    assert "\n\n" not in result.text and result.stop_reason in ("end_of_text", "stop_rule", "time_budget")


def test_cli_complete_json_and_missing_index(nano, repo, model_dir, tmp_path):
    from codeslm.cli import cli

    root, index_dir, _ = repo
    file, line, col = CURSOR
    runner = CliRunner()
    out = runner.invoke(cli, ["complete", str(root / file), "--line", str(line), "--col", str(col),
                              "--index-dir", str(index_dir), "--model", str(model_dir), "--json",
                              "--no-ngram-cache"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert "frobnicate" in data["text"]
    assert set(data["timings_ms"]) >= {"retrieval", "prompt", "prefill", "decode", "total"}
    assert data["retrieved"][0]["path"] == "helpers.py" and data["prompt_tokens"] > 0

    missing = runner.invoke(cli, ["complete", str(root / file), "--line", str(line), "--col", str(col),
                                  "--index-dir", str(tmp_path / "nope"), "--model", str(model_dir), "--json"])
    assert missing.exit_code == 0, missing.output
    data = json.loads(missing.output)
    assert data["retrieved"] == [] and any("without retrieval" in n for n in data["notes"])


def test_bad_cursor_empty_file_and_unknown_language(nano, repo, tmp_path):
    _, _, index = repo
    engine = engine_for(nano, index)
    source = tmp_path / "a.py"
    source.write_text("x = 1\n")
    with pytest.raises(CodeslmError, match="line 9 is outside"):
        engine.complete_file(source, 9, 1)
    with pytest.raises(CodeslmError, match="column 40 is outside line 1"):
        engine.complete_file(source, 1, 40)
    with pytest.raises(CodeslmError, match="does not exist"):
        engine.complete_file(tmp_path / "missing.py", 1, 1)
    empty = tmp_path / "empty.py"
    empty.write_text("")
    assert any("nothing before the cursor" in n for n in engine.complete_file(empty, 1, 1).notes)
    odd = tmp_path / "notes.zzz"
    odd.write_text("alpha beta\n")
    assert any("no grammar for .zzz" in n for n in engine.complete_file(odd, 1, 6).notes)


def test_tokenizer_without_fim_tokens_is_refused_by_name(nano):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    plain = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<unk>")
    with pytest.raises(ModelError, match="<fim_prefix>.*<\\|fim_prefix\\|>.*<PRE>"):
        CompletionEngine(nano[0], plain)


# Stop rules and trimming on hand-written text ---------------------------------------------


def test_single_line_stops_at_the_end_of_the_line():
    rule = StopRule(False, "    x = ")
    assert rule.apply("compute(a)") == ("compute(a)", False)
    assert rule.apply("compute(a)\n    y = 2") == ("compute(a)", True)


def test_block_stops_at_a_blank_line():
    rule = StopRule(True, "    ", "python")
    assert rule.apply("a = 1\n    b = 2\n\n    c = 3") == ("a = 1\n    b = 2", True)


def test_block_stops_at_a_dedent_back_to_the_cursor_level():
    opening = StopRule(True, "    for x in xs:", "python")
    text = "\n        total += x\n        n += 1\n    return total"
    assert opening.apply(text) == ("\n        total += x\n        n += 1", True)
    inside = StopRule(True, "        ", "python")
    assert inside.apply("a = 1\n        b = 2\n    return b") == ("a = 1\n        b = 2", True)
    # A line still growing at the cursor's level inside the block is not an end.
    assert inside.apply("a = 1\n        ") == ("a = 1\n        ", False)


def test_block_stops_when_brackets_balance_or_overclose():
    js = StopRule(True, "function f(a) ", "javascript")
    assert js.apply("{\n  return a;\n}\nfunction g() {") == ("{\n  return a;\n}", True)
    call = StopRule(True, "    total = compute(", "python")
    assert call.apply("a,\n        b)\n    more()") == ("a,\n        b)", True)


def test_trims_what_the_suffix_already_has():
    assert trim_suffix_overlap("x, y)", ")\n", False) == "x, y"
    assert trim_suffix_overlap("foo()", ")\n", False) == "foo()"  # balanced: not a repeat
    assert trim_suffix_overlap("value", "e.strip()\n", False) == "value"  # not a whole token
    block = "a = 1\n    return a\n    b = 2"
    assert trim_suffix_overlap(block, "\n    return a\n", True) == "a = 1"


def test_word_fragment_is_only_the_piece_right_before_the_cursor():
    assert word_fragment("x = self.appe") == ".appe"
    assert word_fragment("return frobn") == " frobn"
    # A cursor at the start of a line has no fragment, whatever ended the line above.
    assert word_fragment("self.attribute = attribute\n") == ""
    assert word_fragment("name\n    ") == ""


def test_split_at_cursor_columns_are_one_based():
    assert split_at_cursor("ab\ncd\n", 2, 2) == ("ab\nc", "d\n")
    assert split_at_cursor("ab\ncd\n", 3, 1) == ("ab\ncd\n", "")
