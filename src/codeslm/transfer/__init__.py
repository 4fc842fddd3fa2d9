"""Knowledge transfer: a larger teacher writes verified items into an index for a tiny model.

`codeslm.transfer.run.transfer(repo, teacher_dir)` runs it; `codeslm transfer` is its command.
Nothing is imported here, so the command line starts without loading torch.
"""
