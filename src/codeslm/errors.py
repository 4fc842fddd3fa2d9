"""Exceptions the library raises for problems a user can fix (bad input, bad files, bad state).

`cli.py` prints them as one-line messages with a non-zero exit; anything else is a bug.
"""


class CodeslmError(Exception):
    """A problem with the user's input or files, explained in the message."""


class IndexFormatError(CodeslmError):
    """An index directory is missing, corrupt, or written by an incompatible version."""


class ModelError(CodeslmError):
    """A model or tokenizer directory is missing, corrupt, or does not match."""


class CorpusError(CodeslmError):
    """A corpus directory is missing, empty, or unusable."""


class TrainingError(CodeslmError):
    """Training settings, a run directory or a checkpoint that cannot be used as asked."""


class EvalError(CodeslmError):
    """Evaluation input (samples, tasks, run directories) that is unusable, or a sandbox that cannot start."""


class TransferError(CodeslmError):
    """A knowledge transfer that cannot run as asked (teacher, index or store mismatch, budget)."""
