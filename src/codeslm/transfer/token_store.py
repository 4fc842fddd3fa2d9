"""The token-level half of the transfer: the index's kNN datastore with the teacher's next-token
distribution at every position of the repository's code, keyed by the student's hidden states.

A store written by another student or teacher is not replaced unless asked: its keys or values
belong to those models, and rebuilding it costs a pass of both over the whole repository.
But: the datastore itself (search, mixing) is `codeslm.model.knn`.
"""

from __future__ import annotations

from pathlib import Path

from codeslm.errors import TransferError


def build_token_store(index_dir: str | Path, teacher_dir: str | Path | None, student_dir: str | Path | None,
                      *, replace: bool = False, device: str = "cpu", progress: bool = True,
                      max_tokens: int = 2_000_000) -> dict:
    """Build and save the datastore; returns what it holds and which models built it."""
    from codeslm.model.knn import KnnDatastore, build_index_datastore, model_fingerprint
    from codeslm.model.loading import load_model

    index_dir = Path(index_dir)
    student, student_tok = load_model(student_dir, device=device)
    teacher, teacher_tok = load_model(teacher_dir, device=device)
    teacher_name = _name(teacher_dir)
    old = KnnDatastore.describe(index_dir)
    student_print, teacher_print = model_fingerprint(student), model_fingerprint(teacher)
    if old is not None and old.get("model_fingerprint") == student_print \
            and (old.get("teacher") or {}).get("fingerprint") == teacher_print:
        # `codeslm index` removes the store when the code changes, so one that is there is current.
        return _describe(old, student_dir, up_to_date=True)
    if old is not None and not replace:
        held_teacher = (old.get("teacher") or {}).get("fingerprint")
        if old.get("model_fingerprint") != student_print:
            raise TransferError(
                f"{index_dir} holds a kNN datastore of another student model (fingerprint "
                f"{old.get('model_fingerprint')}); nothing was changed. Pass --replace-teacher to rebuild "
                "it for this student")
        if held_teacher is not None and held_teacher != teacher_print:
            raise TransferError(
                f"{index_dir} holds a token-level store of teacher {(old.get('teacher') or {}).get('name')}; "
                "nothing was changed. Pass --replace-teacher to rebuild it with this teacher")
    store = build_index_datastore(index_dir, loaded=(student, student_tok), max_tokens=max_tokens,
                                  teacher_loaded=(teacher, teacher_tok, teacher_name), progress=progress)
    return _describe(store.meta, student_dir, up_to_date=False)


def _describe(meta: dict, student_dir, up_to_date: bool) -> dict:
    return {"entries": meta["entries"], "files": meta["files"], "student": _name(student_dir),
            "student_fingerprint": meta["model_fingerprint"], "teacher": meta["teacher"]["name"],
            "teacher_fingerprint": meta["teacher"]["fingerprint"], "top_k": meta["teacher"]["top_k"],
            "up_to_date": up_to_date}


def _name(model_dir) -> str:
    return "default-model" if model_dir is None else Path(model_dir).resolve().name
