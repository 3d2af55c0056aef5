"""On-disk cache of last-token hidden states, keyed by everything that determines them.

Key = sha256 of (model id, revision, dtype, the caller's description: dataset, split, template, shots, seed, ...)
and the prompt texts. States are stored in chunks written atomically as safetensors files (the tensor, with the
sha256 of each prompt in the file's metadata; nothing is ever unpickled); an interrupted run resumes from the chunks
already written; a chunk that does not load, or whose prompts or shape do not match, is recomputed, never used. A
chunk of the old pickled format (``chunk_*.pt``) is never read: its states are recomputed into a ``.safetensors``.
Entries live under the caller's ``cache_root``, else under :func:`state_cache_dir` (``$CGAR_STATE_CACHE``, else
``user_cache_dir() / "states"``).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..records import atomic_path, write_json_atomic
from .model import LoadedModel, user_cache_dir
from .states import Patch, batch_budget, hidden_states

__all__ = ["CachedStates", "cached_states", "cached_prefix_states", "state_cache_dir",
           "CHUNK_SIZE", "PREFIX_CHUNK_SIZE", "CHUNK_SUFFIX", "STATE_CACHE_ENV"]

CHUNK_SIZE = 64  # prompts per cache file; each chunk is one call of hidden_states
#: queries per cache file of a shared prefix; each chunk is one call of prefix_states, which forwards the prefix once,
#: so large chunks keep the prefix's cost amortised (TREC's 500 test questions are one chunk)
PREFIX_CHUNK_SIZE = 512
#: the float path of :func:`cached_prefix_states`, part of its key
PREFIX_ENGINE = ("prefix_states: the prefix's keys and values computed once per chunk, then the queries' own tokens "
                 "attending to them through shared_prefix_attention")
CHUNK_SUFFIX = ".safetensors"  # chunk files; the old pickled ".pt" chunks are never read
STATE_CACHE_ENV = "CGAR_STATE_CACHE"  # environment variable: the state cache's folder, apart from the converted models


def state_cache_dir() -> Path:
    """The folder of the state cache when a call names none (``cache_root=None``): ``$CGAR_STATE_CACHE`` when set
    and non-empty, else ``user_cache_dir() / "states"`` (beside the converted models). Pointing only the state cache
    at an empty folder reproduces a newcomer's first run (every state computed in-process) without converting the
    model again; the CI and tests/test_reproducible.py do so."""
    folder = os.environ.get(STATE_CACHE_ENV)
    return Path(folder) if folder else user_cache_dir() / "states"


@dataclass
class CachedStates:
    states: torch.Tensor      # (P, L+1, d) float32, one row per prompt given (duplicates share a forward pass)
    n_forward: int            # forward passes performed in this call (0 with a warm cache)
    path: Path
    tokens: int = 0           # real tokens forwarded in this call (filled by cached_prefix_states; 0 elsewhere)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _entry(lm: LoadedModel, prompts: list[str], meta: dict, cache_root, chunk_size: int, batch_size: int,
           budget: int, patch: Patch | None = None) -> tuple[list[str], Path]:
    """The distinct prompts and the directory of one cache entry (its meta.json written if new)."""
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty strings")
    if not isinstance(meta, dict):
        raise ValueError(f"meta must be a dict describing the prompts (dataset, split, template, shots, seed), got {meta!r}")
    unique = list(dict.fromkeys(prompts))
    # "batching" names how hidden_states groups prompts: batch composition moves float results at the 1e-5 level,
    # so states computed with another grouping are a different entry. With the defaults (float32, batch_size 8,
    # 2048 tokens) this JSON is exactly what it has been since the cache was created: tests/test_lm.py guards it
    ident = {**lm.identity, "batching": f"length-sorted, right-padded, <= {budget} tokens", "batch_size": batch_size,
             **meta}
    if patch is not None:
        vec = torch.as_tensor(patch.vectors, dtype=torch.float32)
        if vec.ndim != 1:
            raise ValueError(f"patch.vectors must be one vector (d,) for cached states, got shape {tuple(vec.shape)}")
        ident["patch"] = {"layer": patch.layer, "mode": patch.mode,
                          "vector_sha256": hashlib.sha256(vec.contiguous().numpy().tobytes()).hexdigest()}
    try:
        ident_json = json.dumps(ident, sort_keys=True)
    except TypeError as err:
        raise ValueError(f"meta must be JSON-serialisable: {err}") from err
    key = _sha(ident_json + "\n" + "\n".join(_sha(p) for p in unique))
    root = Path(cache_root) if cache_root is not None else state_cache_dir()
    path = root / key[:2] / key
    if not (path / "meta.json").exists():
        write_json_atomic(path / "meta.json", {**ident, "n_prompts": len(unique), "chunk_size": chunk_size})
    return unique, path


def _load_chunk(file: Path, hashes: list[str], shape: tuple[int, int, int]) -> torch.Tensor | None:
    """A chunk's states, or None when it is missing, damaged or for other prompts (then it is recomputed)."""
    if not file.exists():
        return None
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            if json.loads((f.metadata() or {}).get("prompt_sha", "null")) != hashes:
                return None
            states = f.get_tensor("states")
        ok = tuple(states.shape) == shape and bool(torch.isfinite(states).all())
        return states if ok else None
    except Exception:  # damaged file: recompute
        return None


def _save_chunk(file: Path, hashes: list[str], states: torch.Tensor) -> None:
    with atomic_path(file) as tmp:
        save_file({"states": states.contiguous()}, str(tmp), metadata={"prompt_sha": json.dumps(hashes)})


def _gather(chunks: list[torch.Tensor], unique: list[str], prompts: list[str]) -> torch.Tensor:
    table = torch.cat(chunks)
    index = {p: i for i, p in enumerate(unique)}
    return table[[index[p] for p in prompts]]


def cached_states(lm: LoadedModel, prompts: list[str], meta: dict, *, cache_root: str | os.PathLike | None = None,
                  chunk_size: int = CHUNK_SIZE, batch_size: int = 8, progress: bool = True,
                  patch: Patch | None = None, max_batch_tokens: int | None = None) -> CachedStates:
    """States of ``prompts`` from the cache, computing (one forward pass per distinct prompt) what is missing.
    With a ``patch`` (one vector for all prompts), its layer, mode and the vector's bytes are part of the key.
    ``max_batch_tokens`` (default ``lm.max_batch_tokens``) is the padded-token budget of a forward batch; it is part
    of the key, but how a batch was split after an out-of-memory error (see :func:`~cgar_src.lm.hidden_states`)
    is not."""
    budget = batch_budget(lm, max_batch_tokens)
    unique, path = _entry(lm, prompts, meta, cache_root, chunk_size, batch_size, budget, patch)
    shape = (lm.n_layers + 1, lm.model.config.hidden_size)
    chunks, n_forward = [], 0
    for i, start in enumerate(range(0, len(unique), chunk_size)):
        part = unique[start:start + chunk_size]
        hashes = [_sha(p) for p in part]
        file = path / f"chunk_{i:05d}{CHUNK_SUFFIX}"
        states = _load_chunk(file, hashes, (len(part), *shape))
        if states is None:
            states = hidden_states(lm, part, batch_size=batch_size, progress=progress, patch=patch,
                                   max_batch_tokens=budget)
            n_forward += len(part)
            _save_chunk(file, hashes, states)
        chunks.append(states)
    return CachedStates(states=_gather(chunks, unique, prompts), n_forward=n_forward, path=path)


def cached_prefix_states(lm: LoadedModel, prefix: str, queries: list[str], meta: dict, *,
                         cache_root: str | os.PathLike | None = None, chunk_size: int = PREFIX_CHUNK_SIZE,
                         batch_size: int = 8, progress: bool = True,
                         max_batch_tokens: int | None = None) -> CachedStates:
    """States of the prompts ``prefix + q`` for each q of ``queries`` from the cache, computing what is missing with
    :func:`cgar_src.lm.prefix.prefix_states` (the prefix forwarded once per chunk of at most ``chunk_size`` distinct
    queries, then only the queries' own tokens). The key holds ``meta`` (e.g. the demonstration set's identity), the
    sha256 of ``prefix``, the sha256 of every query and the float path (:data:`PREFIX_ENGINE`), so these entries never
    mix with those of :func:`cached_states` (another float path). Written atomically chunk by chunk like
    :func:`cached_states`: an interruption loses at most the chunk in progress. ``tokens`` of the result counts the
    real tokens forwarded in this call."""
    from .prefix import prefix_states

    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a string, got {type(prefix).__name__}")
    if not isinstance(meta, dict):
        raise ValueError(f"meta must be a dict describing the prompts (dataset, template, demonstration set), got {meta!r}")
    budget = batch_budget(lm, max_batch_tokens)
    key_meta = {**meta, "engine": PREFIX_ENGINE, "prefix_sha256": _sha(prefix)}
    unique, path = _entry(lm, queries, key_meta, cache_root, chunk_size, batch_size, budget)
    shape = (lm.n_layers + 1, lm.model.config.hidden_size)
    chunks, n_forward, tokens = [], 0, 0
    for i, start in enumerate(range(0, len(unique), chunk_size)):
        part = unique[start:start + chunk_size]
        hashes = [_sha(p) for p in part]
        file = path / f"chunk_{i:05d}{CHUNK_SUFFIX}"
        states = _load_chunk(file, hashes, (len(part), *shape))
        if states is None:
            res = prefix_states(lm, prefix, part, batch_size=batch_size, max_batch_tokens=budget, progress=progress)
            states = res.states
            n_forward += len(part)
            tokens += res.tokens_forwarded
            _save_chunk(file, hashes, states)
        chunks.append(states)
    return CachedStates(states=_gather(chunks, unique, queries), n_forward=n_forward, path=path, tokens=tokens)
