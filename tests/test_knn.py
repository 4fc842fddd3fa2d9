"""The kNN-LM datastore: it raises the probability of a repository's own next token, survives a
save/load round trip, and refuses a model that did not build it."""

from __future__ import annotations

import json

import pytest
import torch
from completion_fixtures import CONFIG_FILE, train_nano_model, write_repo

from codeslm.complete.engine import DEFAULT_KNN_LAMBDA
from codeslm.errors import ModelError
from codeslm.model.knn import KnnDatastore, model_fingerprint


@pytest.fixture(scope="module")
def nano():
    return train_nano_model(steps=30)


@pytest.fixture(scope="module")
def store(nano, tmp_path_factory):
    root = write_repo(tmp_path_factory.mktemp("repo") / "demo")
    files = [(p.name, p.read_text()) for p in sorted(root.glob("*.py"))]
    return KnnDatastore.build(nano[0], nano[1], files, progress=False)


@torch.inference_mode()
def next_token_probs(model, tokenizer, text: str):
    """`(log p_LM (V,), final hidden state (d,))` after `text`."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return torch.log_softmax(out.logits[0, -1].float(), -1), out.hidden_states[-1][0, -1]


def test_datastore_raises_the_probability_of_a_repository_token(nano, store):
    model, tokenizer = nano
    # config.py's policy name appears nowhere in the model's training data.
    cut = CONFIG_FILE.index("quixotic")
    context = "<file_sep>config.py\n" + CONFIG_FILE[:cut]
    target = tokenizer(CONFIG_FILE[:cut] + "quixotic", add_special_tokens=False)["input_ids"][
        len(tokenizer(CONFIG_FILE[:cut], add_special_tokens=False)["input_ids"])
    ]
    log_p, hidden = next_token_probs(model, tokenizer, context)
    mixed = store.interpolate(log_p, hidden, lam=0.5)
    assert float(mixed.exp().sum()) == pytest.approx(1.0, abs=1e-4)
    p_lm, p_mix = float(log_p[target].exp()), float(mixed[target].exp())
    assert p_mix > 0.3 and p_mix > 5 * p_lm
    assert torch.equal(store.interpolate(log_p, hidden, lam=0.0), torch.log(log_p.exp() + 1e-30))


def test_cursor_file_is_left_out_from_the_cursor_line_on(nano, store):
    model, tokenizer = nano
    cut = CONFIG_FILE.index("quixotic")
    target = tokenizer(CONFIG_FILE[:cut] + "quixotic", add_special_tokens=False)["input_ids"][
        len(tokenizer(CONFIG_FILE[:cut], add_special_tokens=False)["input_ids"])
    ]
    log_p, hidden = next_token_probs(model, tokenizer, "<file_sep>config.py\n" + CONFIG_FILE[:cut])
    try:
        # The cursor on line 2: the policy name is the text a completion must not see.
        store.exclude_after("config.py", 2)
        hidden_from_cursor = float(store.interpolate(log_p, hidden, lam=0.5)[target].exp())
        store.exclude_after("config.py", 3)
        after_the_line = float(store.interpolate(log_p, hidden, lam=0.5)[target].exp())
    finally:
        store.exclude_after("", 0)
    assert hidden_from_cursor < 0.05
    assert after_the_line > 0.3
    assert (store.lines[: store.meta["file_starts"][1]] <= 2).all()


def test_graph_search_finds_the_exhaustive_neighbours_and_flat_datastores_still_work(nano, store):
    import faiss
    import numpy as np

    model, tokenizer = nano
    assert hasattr(store.index, "hnsw")
    keys = store.index.reconstruct_n(0, store.index.ntotal)
    flat = faiss.IndexFlatL2(keys.shape[1])
    flat.add(keys)
    queries = keys[:: max(1, len(keys) // 50)] + 0.01
    _, exact = flat.search(queries, store.k)
    _, graph = store.index.search(queries, store.k, params=store._params)
    recall = np.mean([len(set(a) & set(b)) / store.k for a, b in zip(exact, graph, strict=True)])
    assert recall > 0.9
    # A datastore written before graphs (an exhaustive index) gives the same distribution.
    old = KnnDatastore(flat, store.values, store.meta, store.lines)
    log_p, hidden = next_token_probs(model, tokenizer, "<file_sep>config.py\n" + CONFIG_FILE[:40])
    assert torch.allclose(old.interpolate(log_p, hidden, 0.5), store.interpolate(log_p, hidden, 0.5),
                          atol=1e-4)
    old.exclude_after("config.py", 2)
    assert float(old.interpolate(log_p, hidden, 0.5).exp().sum()) == pytest.approx(1.0, abs=1e-4)


def test_round_trip_and_refusal_of_another_model(nano, store, tmp_path):
    from transformers import LlamaForCausalLM

    model, tokenizer = nano
    store.save(tmp_path)
    loaded = KnnDatastore.load(tmp_path, model)
    assert loaded.meta == store.meta and loaded.index.ntotal == store.meta["entries"]
    assert (loaded.lines == store.lines).all()
    other = LlamaForCausalLM(model.config)
    assert model_fingerprint(other) != model_fingerprint(model)
    with pytest.raises(ModelError, match="built by another model"):
        KnnDatastore.load(tmp_path, other)
    with pytest.raises(ModelError, match="no kNN datastore"):
        KnnDatastore.load(tmp_path / "elsewhere", model)


def test_cli_index_knn_then_complete_with_it_and_refuse_another_model(nano, tmp_path):
    from click.testing import CliRunner
    from transformers import LlamaForCausalLM

    from codeslm.cli import cli
    from codeslm.model.tokenizer import save_tokenizer

    model, tokenizer = nano
    model_dir, other_dir = tmp_path / "model", tmp_path / "other"
    for m, d in ((model, model_dir), (LlamaForCausalLM(model.config), other_dir)):
        m.save_pretrained(d)
        save_tokenizer(tokenizer, d)
    root = write_repo(tmp_path / "demo")
    index_dir = tmp_path / "ix"
    runner = CliRunner()
    out = runner.invoke(cli, ["index", str(root), "--index-dir", str(index_dir), "--no-dense", "-q",
                              "--knn", "--model", str(model_dir)])
    assert out.exit_code == 0, out.output
    assert "kNN datastore:" in out.output
    args = ["complete", str(root / "main.py"), "--line", "3", "--col", "11", "--index-dir",
            str(index_dir), "--knn-lambda", "0.5", "--json"]
    ok = runner.invoke(cli, args + ["--model", str(model_dir)])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["knn_lambda"] == 0.5
    refused = runner.invoke(cli, args + ["--model", str(other_dir)])
    assert isinstance(refused.exception, ModelError)
    assert "built by another model" in str(refused.exception)
    # Without --knn-lambda the datastore is used at the default weight when this model built it,
    # and left out with a note when another did; 0 turns it off.
    auto = args[:-3] + ["--json"]
    found = json.loads(runner.invoke(cli, auto + ["--model", str(model_dir)]).output)
    assert found["knn_lambda"] == DEFAULT_KNN_LAMBDA and not found["notes"]
    foreign = runner.invoke(cli, auto + ["--model", str(other_dir)])
    assert foreign.exit_code == 0, foreign.output
    foreign = json.loads(foreign.output)
    assert foreign["knn_lambda"] == 0.0
    assert any("without the kNN datastore" in n and "another model" in n for n in foreign["notes"])
    off = json.loads(runner.invoke(cli, auto + ["--knn-lambda", "0", "--model", str(model_dir)]).output)
    assert off["knn_lambda"] == 0.0 and not off["notes"]
    # Re-indexing unchanged code keeps the datastore; changed code drops it, since its entries
    # name lines that no longer hold what they held.
    again = ["index", str(root), "--index-dir", str(index_dir), "--no-dense", "-q"]
    assert "removed the kNN datastore" not in runner.invoke(cli, again).output
    assert (index_dir / "knn" / "knn.json").is_file()
    (root / "other.py").write_text((root / "other.py").read_text() + "\n\nSPARE = 1\n")
    changed = runner.invoke(cli, again)
    assert changed.exit_code == 0, changed.output
    assert "removed the kNN datastore" in changed.output and not (index_dir / "knn").exists()
    stale = runner.invoke(cli, args + ["--model", str(model_dir)])
    assert isinstance(stale.exception, ModelError) and "no kNN datastore" in str(stale.exception)
    gone = json.loads(runner.invoke(cli, auto + ["--model", str(model_dir)]).output)
    assert gone["knn_lambda"] == 0.0 and not gone["notes"]
