"""`codeslm ablate STUDY`: run a data ablation study and write its report.

But: the study format, runner and report live in `codeslm.train.ablation` and
`codeslm.eval.study_report`; this is only the command line.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("ablate")
@click.argument("study_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--runs-root", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, help="Runs go to RUNS_ROOT/<study>/<arm>/seed<k>/.")
@click.option("--workers", type=int, default=None,
              help="Runs trained at once, one process and thread each [default: one per core].")
@click.option("--max-runs", type=int, default=None,
              help="Train at most this many missing runs now, then report what is done.")
@click.option("--report-only", is_flag=True, help="Train nothing; report the finished runs.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report directory [default: RUNS_ROOT/<study>/report].")
def ablate_cmd(study_file, runs_root, workers, max_runs, report_only, out_dir):
    """Train and evaluate every arm x seed of STUDY_FILE (TOML or JSON), resuming a killed study,
    then write study.json, study.md (table and summary), metrics.png and loss.png."""
    from codeslm.eval.study_report import write_report
    from codeslm.train.ablation import load_study, run_study

    study = load_study(study_file, runs_root)
    total = len(study.arms) * len(study.seeds)
    click.echo(f"study {study.name}: {len(study.arms)} arms x {len(study.seeds)} seeds = "
               f"{total} runs in {study.dir}")
    results = run_study(study, workers=workers, max_runs=0 if report_only else max_runs,
                        progress=click.echo)
    if not results:
        raise click.ClickException("no finished runs to report yet")
    paths = write_report(study, results, out_dir or study.dir / "report")
    click.echo(f"{len(results)}/{total} runs finished")
    click.echo(paths["table"].read_text(), nl=False)
    for name, path in paths.items():
        click.echo(f"{name}: {path}")
