"""A kNN datastore whose values hold a teacher's next-token distribution: it moves the student
toward what the teacher predicts where the repository's own next token says otherwise, round-trips
its teacher arrays, refuses a teacher with another tokenizer, and still reads format-2 stores.

The teacher is a nano model with the student's tokenizer that has read another version of
config.py, where the policy is "zanzibar" rather than the repository's "quixotic"."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from completion_fixtures import CONFIG_FILE, train_nano_model, write_repo

from codeslm.errors import ModelError
from codeslm.model.knn import KnnDatastore, model_fingerprint, top_k_logprobs

TEACHER_TEXT = "<file_sep>config.py\n" + CONFIG_FILE.replace("quixotic", "zanzibar")
CUT = CONFIG_FILE.index("quixotic")
CONTEXT = "<file_sep>config.py\n" + CONFIG_FILE[:CUT]  # the datastore's view of config.py up to the policy


def first_token_of(tokenizer, word: str) -> int:
    """The token that starts `word` right after config.py's text up to the policy name."""
    before = tokenizer(CONFIG_FILE[:CUT], add_special_tokens=False)["input_ids"]
    return tokenizer(CONFIG_FILE[:CUT] + word, add_special_tokens=False)["input_ids"][len(before)]


@pytest.fixture(scope="module")
def nano():
    return train_nano_model(steps=30)


@pytest.fixture(scope="module")
def teacher(nano):
    """`(model, tokenizer, name)`: a nano Llama that has learned TEACHER_TEXT by heart."""
    from transformers import LlamaForCausalLM

    model, tokenizer = nano
    torch.manual_seed(1)
    taught = LlamaForCausalLM(model.config)
    optimizer = torch.optim.AdamW(taught.parameters(), lr=3e-3)
    x = torch.tensor([tokenizer(TEACHER_TEXT, add_special_tokens=False)["input_ids"]])
    for _ in range(60):
        taught(input_ids=x, labels=x).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return taught.eval(), tokenizer, "zanzibar-teacher"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = write_repo(tmp_path_factory.mktemp("repo") / "demo")
    return [(p.name, p.read_text()) for p in sorted(root.glob("*.py"))]


@pytest.fixture(scope="module")
def plain(nano, files):
    return KnnDatastore.build(nano[0], nano[1], files, progress=False)


@pytest.fixture(scope="module")
def taught(nano, teacher, files):
    return KnnDatastore.build(nano[0], nano[1], files, progress=False, teacher=teacher, teacher_top_k=8,
                              teacher_share=0.5)


@torch.inference_mode()
def next_token_probs(model, tokenizer, text: str):
    """`(log p_LM (V,), final hidden state (d,))` after `text`."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return torch.log_softmax(out.logits[0, -1].float(), -1), out.hidden_states[-1][0, -1]


def test_top_k_logprobs_match_one_forward_pass(teacher):
    model, tokenizer, _ = teacher
    ids = tokenizer(TEACHER_TEXT, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        reference = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1).topk(4)
    top, logprobs = top_k_logprobs(model, ids, window=len(ids), k=4)
    assert top.shape == logprobs.shape == (len(ids), 4) and top.dtype == np.int32
    assert (top == reference.indices.numpy()).all()
    assert np.allclose(logprobs, reference.values.numpy(), atol=1e-5)
    # In windows of 16 the first window's positions see the same text; every position gets a row.
    windowed, windowed_logprobs = top_k_logprobs(model, ids, window=16, k=4)
    assert (windowed[:16] == top[:16]).all()
    assert (np.diff(windowed_logprobs, axis=1) <= 0).all() and (windowed_logprobs <= 0).all()


def test_teacher_values_raise_the_teachers_token_where_the_repository_says_otherwise(nano, teacher,
                                                                                    plain, taught):
    model, tokenizer = nano
    wanted, written = first_token_of(tokenizer, "zanzibar"), first_token_of(tokenizer, "quixotic")
    assert wanted != written
    entry = len(tokenizer(CONTEXT, add_special_tokens=False)["input_ids"]) - 1
    assert taught.values[entry] == written and taught.teacher_ids[entry, 0] == wanted
    assert taught.meta["teacher"]["top_k"] == 8 and taught.teacher_ids.shape == (len(taught.values), 8)

    log_p, hidden = next_token_probs(model, tokenizer, CONTEXT)
    p_lm = float(log_p[wanted].exp())
    p_plain = float(plain.interpolate(log_p, hidden, lam=0.5)[wanted].exp())
    mixed = taught.interpolate(log_p, hidden, lam=0.5)
    p_taught = float(mixed[wanted].exp())
    assert p_taught > 0.15 and p_taught > 5 * p_lm and p_taught > 5 * p_plain
    assert float(mixed.exp().sum()) == pytest.approx(1.0, abs=1e-4)
    # The repository's own token keeps half the datastore's weight.
    assert float(mixed[written].exp()) > 0.15

    try:
        taught.teacher_share = 1.0  # the teacher's distribution replaces the one-hot value
        replaced = taught.interpolate(log_p, hidden, lam=0.5)
        taught.teacher_share = 0.0  # the one-hot value alone: the store without a teacher
        one_hot = taught.interpolate(log_p, hidden, lam=0.5)
    finally:
        taught.teacher_share = taught.meta["teacher"]["share"]
    assert float(replaced[wanted].exp()) > p_taught and float(replaced[written].exp()) < 0.05
    assert float(replaced.exp().sum()) == pytest.approx(1.0, abs=1e-4)
    assert torch.equal(one_hot, plain.interpolate(log_p, hidden, lam=0.5))
    with pytest.raises(ValueError, match="teacher_share"):
        taught.teacher_share = 1.5


def test_round_trip_keeps_the_teacher_and_describe_names_it(nano, teacher, taught, tmp_path):
    model, tokenizer = nano
    assert KnnDatastore.describe(tmp_path) is None
    taught.save(tmp_path)
    described = KnnDatastore.describe(tmp_path)
    assert described["teacher"] == {"name": "zanzibar-teacher", "fingerprint": model_fingerprint(teacher[0]),
                                    "top_k": 8, "share": 0.5}
    assert described["model_fingerprint"] == model_fingerprint(model)
    loaded = KnnDatastore.load(tmp_path, model)
    assert loaded.meta == taught.meta and loaded.teacher_share == 0.5
    assert (loaded.teacher_ids == taught.teacher_ids).all()
    assert loaded.teacher_logprobs.dtype == np.float16
    assert (loaded.teacher_logprobs == taught.teacher_logprobs).all()
    log_p, hidden = next_token_probs(model, tokenizer, CONTEXT)
    assert torch.equal(loaded.interpolate(log_p, hidden, 0.5), taught.interpolate(log_p, hidden, 0.5))

    (tmp_path / "knn" / "knn.json").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable"):
        KnnDatastore.describe(tmp_path)


def test_corrupt_teacher_arrays_are_refused(nano, taught, tmp_path):
    model = nano[0]
    taught.save(tmp_path)
    ids_file = tmp_path / "knn" / "teacher_ids.npy"
    np.save(ids_file, taught.teacher_ids[:-1])
    with pytest.raises(ModelError, match="corrupt"):
        KnnDatastore.load(tmp_path, model)
    ids_file.unlink()
    with pytest.raises(ModelError, match="corrupt.*teacher files"):
        KnnDatastore.load(tmp_path, model)


def test_a_teacher_with_another_tokenizer_is_refused(nano, files):
    model, tokenizer = nano
    other = copy.deepcopy(tokenizer)
    other.add_tokens(["<|teacher-only|>"])
    with pytest.raises(ModelError, match="teacher other-vocab .*token-level transfer needs a shared tokenizer"):
        KnnDatastore.build(model, tokenizer, files, progress=False, teacher=(model, other, "other-vocab"))


def test_a_format_2_store_loads_without_a_teacher(nano, plain, tmp_path):
    model, tokenizer = nano
    plain.save(tmp_path)
    meta_file = tmp_path / "knn" / "knn.json"
    meta = json.loads(meta_file.read_text())
    del meta["teacher"]
    meta["format_version"] = 2
    meta_file.write_text(json.dumps(meta))
    assert KnnDatastore.describe(tmp_path)["teacher"] is None
    loaded = KnnDatastore.load(tmp_path, model)
    assert loaded.teacher_ids is None and loaded.teacher_share == 0.0
    log_p, hidden = next_token_probs(model, tokenizer, CONTEXT)
    assert torch.equal(loaded.interpolate(log_p, hidden, 0.5), plain.interpolate(log_p, hidden, 0.5))


def test_cli_index_knn_teacher(nano, teacher, tmp_path):
    from click.testing import CliRunner

    from codeslm.cli import cli
    from codeslm.model.tokenizer import save_tokenizer

    model, tokenizer = nano
    student_dir, teacher_dir = tmp_path / "student", tmp_path / "zanzibar-teacher"
    for m, d in ((model, student_dir), (teacher[0], teacher_dir)):
        m.save_pretrained(d)
        save_tokenizer(tokenizer, d)
    root = write_repo(tmp_path / "demo")
    index_dir = tmp_path / "ix"
    runner = CliRunner()
    base = ["index", str(root), "--index-dir", str(index_dir), "--no-dense", "-q"]
    alone = runner.invoke(cli, base + ["--knn-teacher", str(teacher_dir)])
    assert alone.exit_code == 2 and "--knn-teacher needs --knn" in alone.output
    out = runner.invoke(cli, base + ["--knn", "--model", str(student_dir), "--knn-teacher", str(teacher_dir)])
    assert out.exit_code == 0, out.output
    assert "with teacher zanzibar-teacher's top-8 next tokens" in out.output
    assert KnnDatastore.describe(index_dir)["teacher"]["fingerprint"] == model_fingerprint(teacher[0])
    done = runner.invoke(cli, ["complete", str(root / "config.py"), "--line", "2", "--col", "16",
                               "--index-dir", str(index_dir), "--knn-lambda", "0.5", "--json",
                               "--model", str(student_dir)])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["knn_lambda"] == 0.5
