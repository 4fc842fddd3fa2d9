"""Knowledge transfer: a larger teacher writes verified items into an index for a tiny model.

`transfer(repo, teacher_dir)` runs it; `codeslm transfer` is its command.
"""

from codeslm.transfer.run import Budget, TransferOptions, TransferReport, transfer

__all__ = ["Budget", "TransferOptions", "TransferReport", "transfer"]
