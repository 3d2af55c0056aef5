"""Every experiment writes its parameters as JSON next to its outputs (function_vectors style), atomically."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_path", "write_json_atomic", "save_run"]


def _plain(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` (``os.replace``), on error it is
    removed. Readers see the old file or the new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _json_text(obj: Any) -> str:
    return json.dumps(_plain(obj), indent=1, sort_keys=True)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (:func:`atomic_path`)."""
    text = _json_text(obj)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_run(out_dir: str | os.PathLike, params: dict, results: dict) -> Path:
    """Write ``params.json`` and ``results.json`` into ``out_dir`` (created if missing); returns the directory.

    Both are serialised before anything touches the disk, then each file is written atomically
    (:func:`atomic_path`): a reader sees the old file or the new one, never half of one. The chapters check
    ``out_dir`` at the start (``cgar_src.book.params.check_output_folder``, run by ``validate_parameters``), so a
    bad folder fails before any work; should the folder still fail here (removed or made read-only meanwhile), the
    computed results are not lost: both files go to a new folder under the system's temporary directory, and the
    ``OSError`` raised names it.
    """
    out_dir = Path(out_dir)
    texts = {"params.json": _json_text(params), "results.json": _json_text(results)}
    try:
        for name, text in texts.items():
            with atomic_path(out_dir / name) as tmp:
                tmp.write_text(text)
    except OSError as err:
        rescue = Path(tempfile.mkdtemp(prefix="cgar_src-rescued-"))
        for name, text in texts.items():
            (rescue / name).write_text(text)
        raise OSError(f"could not write into out_dir {str(out_dir)!r} ({type(err).__name__}: {err}); the parameters "
                      f"and results were saved to {rescue} instead") from err
    return out_dir
