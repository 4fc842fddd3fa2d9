"""Knowledge transfer end to end: a nano teacher trained in the test writes verified items about a
tiny library into its index, and a nano student that never saw the API completes a call of it
from the teacher's item; the filter, the leak guard, incremental re-runs, provenance and the
bad-input paths are checked on the same real components."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from completion_fixtures import train_nano_model
from transfer_fixtures import (
    CALL,
    MAIN,
    MAIN_AFTER,
    PAINT,
    teacher_texts,
    train_teacher,
    write_library,
)

from codeslm.complete import CompletionEngine, CompletionRequest, CompletionSettings
from codeslm.errors import ModelError, TransferError
from codeslm.index import Index, build_index
from codeslm.transfer.cache import CACHE_FILE
from codeslm.transfer.run import Budget, TransferOptions, transfer
from codeslm.transfer.teacher import Sampling, Teacher
from codeslm.transfer.units import local_packages, parse_module
from codeslm.transfer.verify import Verifier

OPTIONS = TransferOptions(sampling=Sampling(samples=3, max_new_tokens=16))


@pytest.fixture(scope="module")
def student():
    return train_nano_model(steps=30)


@pytest.fixture(scope="module")
def library():
    # World-readable, so the sandbox's user can import it and run the examples.
    root = Path(tempfile.mkdtemp(prefix="codeslm-shapes-"))
    os.chmod(root, 0o755)
    write_library(root / "shapes-lib")
    yield root / "shapes-lib"
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def teacher_dir(student, tmp_path_factory):
    return train_teacher(student[1], teacher_texts(student[1], "shapes-lib"),
                         tmp_path_factory.mktemp("teacher") / "nano-teacher")


@pytest.fixture(scope="module")
def transferred(library, teacher_dir, tmp_path_factory):
    index_dir = tmp_path_factory.mktemp("index") / "shapes"
    build_index(library, index_dir, dense=False, progress=False)
    report = transfer(library, teacher_dir, index_dir, options=OPTIONS, progress=False)
    return index_dir, report


def _teacher_items(index_dir):
    index = Index.open(index_dir)
    ids = index.ids_of_kind("teacher")
    chunks = index.store.chunks(list(ids))
    provenance = index.store.provenance(list(ids))
    index.close()
    return {int(i): (chunks[int(i)], provenance[int(i)]) for i in ids}


def _complete(student, index_dir, teacher: bool):
    model, tokenizer = student
    index = Index.open(index_dir)
    engine = CompletionEngine(model, tokenizer, index, CompletionSettings(teacher=teacher, line_budget_ms=None))
    return engine.complete(CompletionRequest(MAIN, MAIN_AFTER, "app/main.py"))


def test_teacher_knows_the_call_and_writes_it_as_a_verified_item(transferred):
    index_dir, report = transferred
    items = _teacher_items(index_dir)
    usage = [(c, p) for c, p in items.values() if c.symbol == "usage:shapes.paint.paint_widget"]
    assert len(usage) == 1
    chunk, provenance = usage[0]
    assert CALL in chunk.text and "from shapes.paint import paint_widget" in chunk.text
    # The item belongs to its source unit's file and lines (the leak guard relies on it).
    assert (chunk.path, chunk.start_line, chunk.end_line) == ("shapes/paint.py", 1, 2)
    assert provenance["verified"] == "ran in the sandbox"
    assert report.tally.kept["usage"] >= 1 and report.tally.ran["usage"] >= 1
    assert report.items == len(items) and report.answered == report.requests


def test_provenance_names_teacher_source_template_and_sampling(transferred, teacher_dir):
    index_dir, report = transferred
    sha = Teacher.load(teacher_dir).sha256
    for chunk, p in _teacher_items(index_dir).values():
        assert p["teacher"] == "nano-teacher" and p["teacher_sha256"] == sha
        assert p["source"]["path"] == chunk.path and p["source"]["start_line"] == chunk.start_line
        assert p["template"].startswith(p["item_kind"]) and p["sampling"]["samples"] == 3
        assert p["created"].endswith("Z")
    runner = CliRunner()
    from codeslm.cli import cli

    out = runner.invoke(cli, ["search", "paint widget", "--index-dir", str(index_dir), "--kind", "teacher",
                              "--mode", "bm25", "--json"])
    assert out.exit_code == 0, out.output
    hits = json.loads(out.output)
    assert hits and all(h["kind"] == "teacher" and h["provenance"]["teacher"] == "nano-teacher" for h in hits)
    out = runner.invoke(cli, ["search", "paint widget", "--index-dir", str(index_dir), "--no-teacher",
                              "--mode", "bm25", "--json"])
    assert all(h["kind"] != "teacher" for h in json.loads(out.output))


def test_student_completes_the_call_from_the_teacher_item_and_not_without_it(student, transferred):
    index_dir, _ = transferred
    with_store = _complete(student, index_dir, teacher=True)
    without = _complete(student, index_dir, teacher=False)
    assert with_store.teacher_items >= 1
    assert "usage:shapes.paint.paint_widget" in with_store.teacher_summary()
    assert with_store.text.startswith('"teal", 7')
    assert without.teacher_items == 0 and "teal" not in without.text


def test_leak_guard_never_retrieves_an_item_of_the_cursor_chunk(student, transferred):
    index_dir, _ = transferred
    model, tokenizer = student
    engine = CompletionEngine(model, tokenizer, Index.open(index_dir), CompletionSettings(line_budget_ms=None))
    # A cursor inside paint_widget's own body: its items (lines 1-2) must stay out, and so must
    # everything derived from lines after the cursor in that file.
    cut = PAINT.index("return") + len("return ")
    result = engine.complete(CompletionRequest(PAINT[:cut], PAINT[cut:], "shapes/paint.py"))
    for hit in result.retrieved:
        assert not (hit.path == "shapes/paint.py" and hit.end_line >= 2), hit
    # The same item is retrieved for a cursor in another file.
    other = engine.complete(CompletionRequest(MAIN, MAIN_AFTER, "app/main.py"))
    assert any(h.kind == "teacher" and h.path == "shapes/paint.py" for h in other.retrieved)


def test_filter_drops_unparsable_and_missing_symbol_examples():
    module = parse_module("shapes/paint.py", PAINT, local_packages(["shapes/paint.py"]))
    unit = next(u for u in module.units if u.symbol == "paint_widget")
    verifier = Verifier({module.module: module}, {})
    imp = "from shapes.paint import paint_widget\n"
    ok = verifier.check_call(imp + 'result = paint_widget("teal", 7)', "paint_widget", unit.signature, False, "")
    assert ok.reason == ""
    assert verifier.check_call(imp + "result = paint_widget(7,", "paint_widget", unit.signature, False, "").reason \
        == "does not parse"
    missing = verifier.check_call(imp + "result = paint_widget(blend(1), 2)", "paint_widget", unit.signature, False, "")
    assert missing.reason.startswith("calls a missing symbol (blend")
    arity = verifier.check_call(imp + "result = paint_widget(1, 2, 3)", "paint_widget", unit.signature, False, "")
    assert arity.reason.startswith("wrong arity")
    assert verifier.check_call(imp + "result = paint_widget(colour=1, size=2)", "paint_widget", unit.signature,
                               False, "").reason.startswith("wrong arity (no parameter named colour")
    exists, _ = verifier.external("re.compile")
    assert exists and not verifier.external("re.no_such_function")[0]
    assert Verifier.check_summary("Paint a widget in a color.", "paint_widget").reason == ""
    assert Verifier.check_summary("paint widget", "paint_widget").reason != ""
    undefined = verifier.check_call(imp + "result = paint_widget(color, 2)", "paint_widget", unit.signature,
                                    False, "")
    assert undefined.reason == "uses undefined names (color)"
    assert Verifier.check_summary("Returns the result of the result of the result", "f").reason == "repeats itself"
    assert Verifier.check_summary("1.2.2.2.2.2.2.2.2.2.2 and so", "paint_widget").reason != ""


def test_sandbox_failure_drops_the_item(library, tmp_path):
    from codeslm.eval.sandbox import Sandbox

    module = parse_module("shapes/paint.py", PAINT, local_packages(["shapes/paint.py"]))
    unit = next(u for u in module.units if u.symbol == "scale")
    verifier = Verifier({module.module: module}, {module.module: library})
    program = verifier.usage_program(module.module)
    good = verifier.check_call("from shapes.paint import scale\nresult = scale(3)", "scale", unit.signature,
                               unit.pure, program)
    bad = verifier.check_call("from shapes.paint import scale\nresult = scale(None)", "scale",
                              unit.signature, unit.pure, program)
    assert good.run and bad.run
    with Sandbox(workers=1) as box:
        outcomes = box.run_many([(good.program, "from shapes.paint import scale\nresult = scale(3)"),
                                 (bad.program, "from shapes.paint import scale\nresult = scale(None)")])
    assert outcomes[0].passed and not outcomes[1].passed and "TypeError" in outcomes[1].error


def test_rerun_asks_only_about_changed_units_and_drops_items_of_removed_ones(library, teacher_dir, tmp_path):
    repo = tmp_path / "shapes-lib"
    shutil.copytree(library, repo)
    index_dir = tmp_path / "index"
    build_index(repo, index_dir, dense=False, progress=False)
    first = transfer(repo, teacher_dir, index_dir, options=OPTIONS, progress=False)
    assert first.answered == first.requests > 0 and first.from_cache == 0
    again = transfer(repo, teacher_dir, index_dir, options=OPTIONS, progress=False)
    assert again.answered == 0 and again.from_cache == first.requests and again.items == first.items
    # Change scale (its requests are asked again) and delete Palette (its items go).
    text = PAINT.replace("return value * factor", "return value * factor + 1").split("\n\nclass Palette")[0] + "\n"
    (repo / "shapes" / "paint.py").write_text(text)
    third = transfer(repo, teacher_dir, index_dir, options=OPTIONS, progress=False)
    scale_requests = 2  # its usage example and its summary
    assert third.answered == scale_requests
    assert third.requests < first.requests
    symbols = {c.symbol for c, _ in _teacher_items(index_dir).values()}
    assert not any("Palette" in s for s in symbols)
    assert third.removed_items >= 1


def test_budget_stops_cleanly_and_a_rerun_continues(library, teacher_dir, tmp_path):
    index_dir = tmp_path / "index"
    build_index(library, index_dir, dense=False, progress=False)
    options = TransferOptions(sampling=OPTIONS.sampling, budget=Budget(items=1))
    first = transfer(library, teacher_dir, index_dir, options=options, progress=False)
    assert first.stopped.startswith("budget of 1 items") and first.left > 0 and first.new_items == 1
    assert first.items == 1 and (index_dir / CACHE_FILE).is_file()
    rest = transfer(library, teacher_dir, index_dir, options=OPTIONS, progress=False)
    assert rest.from_cache == first.answered and rest.left == 0 and rest.items >= first.items
    build_index(library, tmp_path / "index-2", dense=False, progress=False)
    slow = transfer(library, teacher_dir, tmp_path / "index-2", progress=False,
                    options=TransferOptions(sampling=OPTIONS.sampling, budget=Budget(minutes=1e-5)))
    assert slow.stopped.startswith("teacher too slow") and slow.answered == 0 and slow.items == 0
    assert Budget.parse("15min") == Budget(minutes=15) and Budget.parse("200") == Budget(items=200)
    with pytest.raises(TransferError, match="not a number of items"):
        Budget.parse("lots")


def test_bad_teachers_are_refused_with_the_reason(student, tmp_path):
    not_causal = tmp_path / "bert"
    not_causal.mkdir()
    (not_causal / "model.safetensors").write_bytes(b"")
    (not_causal / "tokenizer.json").write_text("{}")
    # A sentence encoder (all-MiniLM's config), and a vision model.
    for config in ({"model_type": "bert", "architectures": ["BertModel"]}, {"model_type": "vit"}):
        (not_causal / "config.json").write_text(json.dumps(config))
        with pytest.raises(ModelError, match="not a causal LM"):
            Teacher.load(not_causal)
    broken = tmp_path / "broken"
    model, tokenizer = student
    model.save_pretrained(broken)
    tokenizer.save_pretrained(broken)
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelError, match="tokenizer"):
        Teacher.load(broken)


def test_another_repository_index_and_another_teacher_are_refused(library, teacher_dir, student, tmp_path,
                                                                  transferred):
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.py").write_text("def f():\n    return 1\n")
    index_dir, _ = transferred
    held = json.loads((index_dir / "manifest.json").read_text())
    with pytest.raises(TransferError, match="indexes .*shapes-lib"):
        transfer(other, teacher_dir, index_dir, options=OPTIONS, progress=False)
    second = tmp_path / "teacher-2"
    model, tokenizer = student
    model.save_pretrained(second)
    tokenizer.save_pretrained(second)
    with pytest.raises(TransferError, match="--replace-teacher"):
        transfer(library, second, index_dir, options=OPTIONS, progress=False)
    assert json.loads((index_dir / "manifest.json").read_text()) == held  # nothing was changed


def test_an_index_from_before_teacher_items_is_upgraded(library, teacher_dir, tmp_path):
    import sqlite3

    index_dir = tmp_path / "old-index"
    build_index(library, index_dir, dense=False, progress=False)
    meta = next(index_dir.glob("meta-*.sqlite"))
    with sqlite3.connect(meta) as db:
        db.execute("DROP TABLE teacher_items")
    report = transfer(library, teacher_dir, index_dir, options=TransferOptions(
        sampling=OPTIONS.sampling, item_kinds=("usage",)), progress=False)
    assert report.upgraded and report.items >= 1
    assert Index.open(index_dir).teacher_items == report.items


def test_reindexing_a_changed_file_drops_its_items(library, teacher_dir, tmp_path):
    repo = tmp_path / "lib"
    shutil.copytree(library, repo)
    index_dir = tmp_path / "index"
    build_index(repo, index_dir, dense=False, progress=False)
    transfer(repo, teacher_dir, index_dir, options=OPTIONS, progress=False)
    (repo / "shapes" / "paint.py").write_text(PAINT + "\n\nEXTRA = 1\n")
    summary = build_index(repo, index_dir, dense=False, progress=False)
    assert summary.teacher_dropped >= 1 and summary.teacher_items == 0
    # The next transfer restores them from its cache: no unit's text changed.
    report = transfer(repo, teacher_dir, index_dir, options=OPTIONS, progress=False)
    assert report.answered == 0 and report.items >= 1


def test_cli_transfer_with_token_level_store_raises_the_teachers_token(library, teacher_dir, student, tmp_path):
    import torch

    from codeslm.cli import cli
    from codeslm.model.knn import KnnDatastore
    from codeslm.model.loading import load_model

    student_dir = tmp_path / "student"
    student[0].save_pretrained(student_dir)
    student[1].save_pretrained(student_dir)
    index_dir = tmp_path / "index"
    build_index(library, index_dir, dense=False, progress=False)
    out = CliRunner().invoke(cli, ["transfer", str(library), "--teacher", str(teacher_dir), "--index-dir",
                                   str(index_dir), "--samples", "3", "--token-level", "--student",
                                   str(student_dir), "--json", "-q"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["items"] >= 1 and report["token_store"]["teacher"] == "nano-teacher"
    assert report["tally"]["kept"]["usage"] >= 1

    model, tokenizer = load_model(student_dir, device="cpu")
    teacher, _ = load_model(teacher_dir, device="cpu")
    store = KnnDatastore.load(index_dir, model)
    assert store.meta["teacher"]["name"] == "nano-teacher"
    # Where the teacher's next token differs from the repository's, the store makes the student
    # likelier to write the teacher's.
    block = "<file_sep>app/main.py\n" + MAIN + MAIN_AFTER
    ids = tokenizer(block, add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids])
    with torch.inference_mode():
        out_s = model(input_ids=x, output_hidden_states=True)
        guesses = teacher(input_ids=x).logits[0].argmax(-1).tolist()
    start = len(tokenizer("<file_sep>app/main.py\n" + MAIN.split("paint_widget(")[0] + "    result",
                          add_special_tokens=False)["input_ids"])
    position = next(i for i in range(start, len(ids) - 1) if guesses[i] != ids[i + 1])
    wanted = guesses[position]
    log_p = torch.log_softmax(out_s.logits[0, position].float(), -1)
    hidden = out_s.hidden_states[-1][0, position]
    mixed = store.interpolate(log_p, hidden, lam=0.5)
    assert float(mixed.exp().sum()) == pytest.approx(1.0, abs=1e-4)
    assert float(mixed[wanted].exp()) > 5 * float(log_p[wanted].exp())
    store.teacher_share = 0.0  # the one-hot values alone do not hold it
    assert float(store.interpolate(log_p, hidden, lam=0.5)[wanted].exp()) < 0.5 * float(mixed[wanted].exp())

    # A re-run with the same models keeps the store (the code did not change) and asks nothing.
    rerun = CliRunner().invoke(cli, ["transfer", str(library), "--teacher", str(teacher_dir), "--index-dir",
                                     str(index_dir), "--samples", "3", "--token-level", "--student",
                                     str(student_dir), "--json", "-q"])
    again_report = json.loads(rerun.output)
    assert again_report["token_store"]["up_to_date"] and again_report["answered"] == 0
    assert not report["token_store"]["up_to_date"]

    # A second run with another teacher is refused, and the store is kept.
    again = CliRunner().invoke(cli, ["transfer", str(library), "--teacher", str(student_dir), "--index-dir",
                                     str(index_dir), "-q"])
    assert again.exit_code != 0 and "--replace-teacher" in str(again.exception)
