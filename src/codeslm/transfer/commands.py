"""`codeslm transfer`: options, progress and the report; the work is `codeslm.transfer.run`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from codeslm.transfer.prompts import ITEM_KINDS
from codeslm.transfer.units import UNIT_KINDS


def _csv(choices):
    def convert(ctx, param, value):
        if value is None:
            return tuple(choices)
        picked = tuple(v.strip() for v in value.split(",") if v.strip())
        bad = [v for v in picked if v not in choices]
        if bad or not picked:
            raise click.BadParameter(f"choose from {', '.join(choices)} (got {value!r})")
        return picked
    return convert


@click.command("transfer")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--teacher", "teacher_dir", type=click.Path(path_type=Path), default=None,
              help="A local HF causal-LM directory that writes the items [default: the shipped model].")
@click.option("--index-dir", type=click.Path(path_type=Path), default=None,
              help="The repository's index [default: index/<repo-name>/]; built or refreshed first.")
@click.option("--kinds", "unit_kinds", default=None, callback=_csv(UNIT_KINDS), metavar="LIST",
              help=f"Code units to write about, comma-separated [default: {','.join(UNIT_KINDS)}].")
@click.option("--items", "item_kinds", default=None, callback=_csv(ITEM_KINDS), metavar="LIST",
              help=f"Items to write, comma-separated [default: {','.join(ITEM_KINDS)}]: usage examples "
                   "of the repository's API, of the external APIs it calls, summaries of undocumented units.")
@click.option("--budget", default=None, metavar="N|Nmin",
              help="Stop after N new items, or after N minutes of teacher time (15min); a re-run continues.")
@click.option("--samples", type=click.IntRange(min=1), default=4, show_default=True,
              help="Best-of-n: answers sampled per request before the filter picks one.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=0.7, show_default=True)
@click.option("--no-sandbox", is_flag=True, help="Do not run examples of I/O-free callables in the sandbox.")
@click.option("--replace-teacher", is_flag=True,
              help="Replace items (and a token-level store) written by another teacher.")
@click.option("--token-level", is_flag=True,
              help="Also build the kNN datastore with the teacher's next-token distributions, keyed "
                   "by the student's hidden states (needs a shared tokenizer).")
@click.option("--student", "student_dir", type=click.Path(path_type=Path), default=None,
              help="With --token-level: the model that completes [default: the shipped model].")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda[:N] or auto.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def transfer_cmd(path, teacher_dir, index_dir, unit_kinds, item_kinds, budget, samples, temperature,
                 no_sandbox, replace_teacher, token_level, student_dir, device, as_json, quiet):
    """A teacher model writes verified knowledge items about the code at PATH into its index.

    The tiny model then retrieves them beside the code while completing. Each item keeps its
    provenance; re-runs ask only about changed units.
    """
    from codeslm.transfer.run import Budget, TransferOptions, transfer
    from codeslm.transfer.teacher import Sampling
    from codeslm.transfer.token_store import build_token_store

    options = TransferOptions(unit_kinds=unit_kinds, item_kinds=item_kinds,
                              sampling=Sampling(samples=samples, temperature=temperature),
                              budget=Budget.parse(budget), sandbox=not no_sandbox,
                              replace_teacher=replace_teacher)
    try:
        report = transfer(path, teacher_dir, index_dir, options=options, device=device, progress=not quiet)
    except KeyboardInterrupt:
        click.echo("interrupted: the items written so far are in the index and the answers in its "
                   "cache; run the same command again to continue", err=True)
        raise SystemExit(130) from None
    if token_level:
        report.token_store = build_token_store(report.index_dir, teacher_dir, student_dir,
                                               replace=replace_teacher, device=device, progress=not quiet)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    t = report.teacher
    click.echo(f"teacher {t['name']} ({t['parameters'] / 1e6:.1f}M parameters, sha256 {t['sha256'][:12]})")
    click.echo(f"{report.units} units, {report.requests} requests: {report.answered} answered now in "
               f"{report.teacher_seconds / 60:.1f} min, {report.from_cache} from earlier runs"
               + (f", {report.left} left" if report.left else ""))
    tally = report.tally
    click.echo(f"kept {sum(tally.kept.values())} new items ({', '.join(f'{k} {v}' for k, v in sorted(tally.kept.items())) or 'none'}); "
               f"{sum(tally.ran.values())} of them ran in the sandbox")
    if tally.dropped:
        click.echo(f"dropped {sum(tally.dropped.values())}:")
        for reason, count in tally.dropped.most_common():
            click.echo(f"  {count:5d}  {reason}")
    click.echo(f"index {report.index_dir}: {report.items} teacher items"
               + (f", {report.removed_items} removed (their units changed or are gone)" if report.removed_items else "")
               + f", store {report.store_bytes / 1e6:.1f} MB")
    if report.upgraded:
        click.echo("  upgraded the index, written before teacher items existed")
    if report.token_store:
        ts = report.token_store
        click.echo(f"  token-level store: {ts['entries']} positions, teacher top-{ts['top_k']} for student "
                   f"{ts['student']}" + (" (up to date)" if ts["up_to_date"] else ""))
    if report.stopped:
        click.echo(f"stopped early: {report.stopped}; run again to continue", err=True)
