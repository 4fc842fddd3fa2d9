"""The `codeslm` command line: parses options, calls the library, prints results.

Library code raises `CodeslmError` subclasses; only this module turns them into messages and
exit codes. Heavy imports (torch, transformers, faiss) happen inside commands, so `--help` and
commands that do not need them stay fast.
"""

from __future__ import annotations

import os
import sys

import click

from codeslm.errors import CodeslmError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="codeslm")
def cli() -> None:
    """Retrieval-augmented tiny code model: knowledge in the index, reasoning in the weights."""


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
