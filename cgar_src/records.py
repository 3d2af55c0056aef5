"""Every experiment writes its parameters as JSON next to its outputs (function_vectors style), atomically."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

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


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (:func:`atomic_path`)."""
    text = json.dumps(_plain(obj), indent=1, sort_keys=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_run(out_dir: str | os.PathLike, params: dict, results: dict) -> Path:
    """Write ``params.json`` and ``results.json`` into ``out_dir``; returns the directory."""
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / "params.json", params)
    write_json_atomic(out_dir / "results.json", results)
    return out_dir
