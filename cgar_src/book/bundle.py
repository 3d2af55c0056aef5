r"""Result bundles: one row per (model, dataset, template, seed, shots, label mode, query), for studies too large for
the book build (the ``robust`` profile: ``python -m cgar_src.book.run --profile robust``).

A *configuration* is (model, dataset, template, seed, shots, label mode); its queries share ONE demonstration set
(:func:`cgar_src.tasks.icl.shared_task_states`, the protocol of Zhao et al. 2021). Each row holds

- ``gold``: the query's class; ``query``: its row in the query split;
- four predictions (class indices; -1 = "other"): ``pred_full``, the full-vocabulary argmax of the last layer's
  logit lens, decoded to the label whose first token it is, else "other"; ``pred_label``, the label-restricted argmax
  :math:`\arg\max_y z_y`; ``pred_calibrated``, contextual calibration with the set's content-free prompt,
  :math:`\arg\max_y (z_y - z_{cf,y})` (:func:`cgar_src.analysis.baselines.calibrated_predictions`);
  ``pred_majority``, the demonstration pool's majority class (:func:`~cgar_src.analysis.baselines.majority_class`
  of the demonstration split's labels);
- per layer l of :data:`LAYER_FRACTIONS` (fixed before looking at any result: round(f L) of the L+1 residual
  states, L being the final norm's input): ``mass_<l>``, the lens' probability mass on the label tokens, and
  ``neff_<l>``, :math:`N_{eff} = \exp H(\mathrm{softmax}(W_U\,\mathrm{Norm}(h)))`, both as
  :func:`cgar_src.analysis.lens.decode_stats` computes them (the book's definitions, chapter ``07_memory_collapse``),
  stored as float16; below the last layer also ``pred_label_<l>``, that layer's label-restricted answer
  :math:`\arg\max_y z_y` (the ``robust`` profile stores the last layer only).

Format ``cgar-bundle-3`` (:data:`BUNDLE_FORMAT`) stores no logit vectors: the label-restricted logits
:math:`z_y = (W_U\,\mathrm{Norm}(h_l))_{t_y}` and the content-free prompt's :math:`z_{cf}` are computed (the answers
above come from them, and :func:`verify_bundle` takes its tie margins from the recomputed ones) but not written.
float32 logits do not compress (4 bytes each): at every stored layer they were 85 % of the file (format 1), at the
last layer alone still half of it (format 2, 12.0 MB for the full-size run's 525,000 rows), and nothing reads them.
Older files are converted exactly by :func:`convert_bundle` (format 1's ``pred_label_<l>`` is the argmax of the
stored ``z_<l>``).

The lens is float32 (``Unembed(model, float32=True)``) whatever the model's dtype. The file is parquet (zstd), with a
JSON sidecar beside it: the parameters, each model's id, revision, dtype and layers, the code version (package
version and git commit, "unknown" outside a clone), the parquet file's sha256 and row count, and per configuration
its demonstration set (rows in the demonstration split, labels shown, true labels, seed, key), tokens forwarded and
seconds. Both files are rewritten atomically after every configuration (``cgar_src.records.atomic_path``): an
interruption loses at most the configuration in progress, and a rerun skips the configurations already present.
:func:`verify_bundle` recomputes configurations from scratch and compares them with the stored rows.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .._validate import positive_int
from ..analysis.baselines import calibrated_predictions, majority_class
from ..analysis.lens import decode_stats
from ..analysis.robustness import CONFIG_COLUMNS, ROW_COLUMNS
from ..lm import LoadedModel, Unembed
from ..records import atomic_path, write_json_atomic
from ..tasks.data import TASKS, load_examples
from ..tasks.demos import LABEL_MODES, draw_demo_set
from ..tasks.icl import shared_task_states
from ..tasks.templates import get_template
from ..threads import torch_threads

__all__ = ["Config", "configurations", "bundle_layers", "configuration_rows", "write_bundle", "read_bundle",
           "verify_bundle", "bundle_frame", "stored_columns", "convert_bundle", "merge_bundles", "code_version", "file_sha256", "estimate_run", "LAYER_FRACTIONS", "CONFIG_COLUMNS",
           "BUNDLE_FORMAT"]

#: depth fractions of the stored layers, fixed before any result was seen; the last layer (1.0) is always stored
LAYER_FRACTIONS = (0.5, 0.67, 0.83, 1.0)
BUNDLE_FORMAT = "cgar-bundle-3"
#: parameters that determine the rows: a bundle resumes only under the same values
ROW_PARAMETERS = ("format", "max_queries", "query_seed", "dtype", "layer_fractions", "batch_size", "max_batch_tokens")


@dataclass(frozen=True, order=True)
class Config:
    """One configuration: the queries of ``dataset`` under one demonstration set."""

    model: str
    dataset: str
    template: str
    seed: int
    shots: int
    label_mode: str

    def key(self) -> str:
        return "|".join(str(v) for v in asdict(self).values())


def configurations(models: Sequence[str], datasets: Sequence[str], templates: Sequence[str], seeds: Sequence[int],
                   shots: Sequence[int], label_modes: Sequence[str]) -> list[Config]:
    """Every configuration, model-major; ``label_mode="random"`` only with shots > 0 (a zero-shot prompt shows no
    labels)."""
    for name, values in (("models", models), ("datasets", datasets), ("templates", templates), ("seeds", seeds),
                         ("shots", shots), ("label_modes", label_modes)):
        if isinstance(values, str) or not list(values) or len(set(values)) != len(list(values)):
            raise ValueError(f"{name} must be a non-empty list without repeats, got {values!r}")
    for m in label_modes:
        if m not in LABEL_MODES:
            raise ValueError(f"label_modes must be taken from {LABEL_MODES}, got {list(label_modes)!r}")
    for ds in datasets:
        for t in templates:
            get_template(ds, t)   # ValueError naming a bad dataset or template
    return [Config(m, ds, t, s, k, lm) for m in models for ds in datasets for t in templates for s in seeds
            for k in shots for lm in label_modes if k > 0 or lm == "true"]


def bundle_layers(n_layers: int, fractions: Sequence[float] = LAYER_FRACTIONS) -> list[int]:
    """The stored layers: ``round(f * n_layers)`` for each fraction (states 0..L, L the final norm's input), sorted,
    without repeats, always ending with L."""
    positive_int(n_layers, "n_layers")
    if not fractions or not all(0 < f <= 1 for f in fractions):
        raise ValueError(f"layer_fractions must be fractions of the depth in (0, 1], got {fractions!r}")
    return sorted({int(round(f * n_layers)) for f in fractions} | {n_layers})


def code_version() -> dict:
    """The package version and, in a git clone, the commit (with ``dirty`` when tracked files differ from it), else
    "unknown"."""
    from .. import __version__

    root = Path(__file__).resolve().parents[2]
    commit, dirty = "unknown", None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10,
                                check=True).stdout.strip() or "unknown"
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=10, check=True).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"package": __version__, "git_commit": commit, "dirty": dirty}


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@torch.no_grad()
def configuration_rows(lm: LoadedModel, unembed: Unembed, cfg: Config, *, max_queries: int, layers: Sequence[int],
                       query_seed: int = 0, batch_size: int = 8, max_batch_tokens: int | None = None,
                       cache_root=None, root=None, progress: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """The rows of one configuration (module docstring) as columns, and its record for the sidecar (demonstration
    set, tokens forwarded, seconds). The columns hold ``z_<l>`` at every stored layer and ``zcf`` (``verify_bundle``
    needs the margins); :func:`stored_columns` drops them before a file is written. ``max_queries``: the queries are ``min(max_queries, size of the query split)``
    rows sampled with ``query_seed`` (at 1000: all of TREC's 500, 1000 of SST-2's 1821 and of AG-News' 3800)."""
    if cfg.model != lm.model_id:
        raise ValueError(f"cfg.model {cfg.model!r} is not the loaded model {lm.model_id!r}")
    layers = list(layers)
    if not layers or layers[-1] != lm.n_layers:
        raise ValueError(f"layers must end with the last layer {lm.n_layers}, got {layers}")
    task = TASKS[cfg.dataset]
    n_total = len(load_examples(cfg.dataset, task.query_split, root=root))
    t0 = time.perf_counter()
    st = shared_task_states(lm, cfg.dataset, n_queries=min(max_queries, n_total), shots=cfg.shots, seed=cfg.seed,
                            template=cfg.template, label_mode=cfg.label_mode, query_seed=query_seed, root=root,
                            cache_root=cache_root, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                            progress=progress, content_free=True)
    seconds = time.perf_counter() - t0
    dec = decode_stats(unembed, st.h[:, layers], st.label_ids)             # (Q, n_layers)
    z_cf = decode_stats(unembed, st.h_cf[None, -1], st.label_ids).label_logits[0]
    z_last = dec.label_logits[:, -1]
    ids = torch.as_tensor(st.label_ids)
    hit = dec.argmax[:, -1, None] == ids[None, :]
    pred_full = torch.where(hit.any(-1), hit.float().argmax(-1), torch.full_like(st.labels, -1))
    pool = torch.tensor([e.label for e in load_examples(cfg.dataset, task.demo_split, root=root)])
    q = len(st.labels)
    cols: dict[str, np.ndarray] = {
        "query": np.asarray(st.query_rows, dtype=np.int32), "gold": st.labels.numpy().astype(np.int8),
        "pred_full": pred_full.numpy().astype(np.int8),
        "pred_label": z_last.argmax(-1).numpy().astype(np.int8),
        "pred_calibrated": calibrated_predictions(z_last, z_cf).numpy().astype(np.int8),
        "pred_majority": np.full(q, majority_class(pool), dtype=np.int8),
    }
    for j, layer in enumerate(layers):
        cols[f"z_{layer}"] = dec.label_logits[:, j].numpy().astype(np.float32)
        cols[f"mass_{layer}"] = dec.label_mass[:, j].numpy().astype(np.float16)
        cols[f"neff_{layer}"] = dec.n_eff[:, j].numpy().astype(np.float16)
        if layer != layers[-1]:
            cols[f"pred_label_{layer}"] = dec.label_logits[:, j].argmax(-1).numpy().astype(np.int8)
    cols["zcf"] = np.repeat(z_cf.numpy().astype(np.float32)[None], q, axis=0)
    ds = st.demo_set
    record = {"key": cfg.key(), **asdict(cfg), "n_queries": q, "demo_set_key": ds.key(), "demo_rows": list(ds.order),
              "labels_shown": list(ds.labels), "true_labels": list(ds.true_labels), "label_words":
              st.params["label_words"], "label_tokens": st.params["label_tokens"], "tokens": st.tokens,
              "seconds": round(seconds, 3), "forward_passes": st.n_forward,
              "torch_threads": torch.get_num_threads()}   # a bfloat16 sum's order depends on it: verify_bundle reuses it
    return cols, record


def stored_columns(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The columns a file stores (format ``cgar-bundle-3``): all but the logit vectors ``z_<l>`` and ``zcf``, which
    are kept as their answers (``pred_label``, ``pred_calibrated``, ``pred_label_<l>``)."""
    return {k: v for k, v in cols.items() if not _is_logits(k)}


def _is_logits(name: str) -> bool:
    return name == "zcf" or re.fullmatch(r"z_\d+", name) is not None


def _table(cfg: Config, cols: dict[str, np.ndarray]):
    import pyarrow as pa

    cols = stored_columns(cols)

    q = len(cols["query"])
    arrays = {"model": pa.array([cfg.model] * q).dictionary_encode(),
              "dataset": pa.array([cfg.dataset] * q).dictionary_encode(),
              "template": pa.array([cfg.template] * q).dictionary_encode(),
              "seed": pa.array(np.full(q, cfg.seed, np.int32)), "shots": pa.array(np.full(q, cfg.shots, np.int8)),
              "label_mode": pa.array([cfg.label_mode] * q).dictionary_encode()}
    for name, v in cols.items():
        arrays[name] = (pa.array(list(v), type=pa.list_(pa.from_numpy_dtype(v.dtype))) if v.ndim == 2
                        else pa.array(v))
    return pa.table(arrays)


def read_bundle(path: str | Path):
    """The bundle's rows (a ``pyarrow.Table``) and its sidecar (dict). ``path``: the ``.parquet`` file or the stem."""
    import pyarrow.parquet as pq

    path = Path(path).with_suffix(".parquet")
    side = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").exists() else None
    return pq.read_table(path), side




def bundle_frame(path: str | Path):
    """The bundle's rows as a pandas DataFrame (configuration columns, predictions, ``mass_<l>``, ``neff_<l>`` and
    ``pred_label_<l>``; the logit vectors are not read) and its sidecar. ``path``: the ``.parquet`` file or the stem. A missing file
    raises FileNotFoundError naming the command that writes it (:data:`cgar_src.analysis.robustness.ROBUST_COMMAND`)."""
    import pyarrow.parquet as pq

    if not isinstance(path, (str, Path)) or not str(path):
        raise ValueError(f"path must be a bundle path (the .parquet file or its stem), got {path!r}")
    file = Path(path).with_suffix(".parquet")
    if not file.is_file():
        raise FileNotFoundError(f"no bundle at {file}: write it with `python -m cgar_src.book.run --profile robust`")
    names = pq.read_schema(file).names
    table, side = read_bundle(file)
    keep = [n for n in names if n in ROW_COLUMNS or re.fullmatch(r"(mass|neff|pred_label)_\d+", n)]
    df = table.select(keep).to_pandas()
    for c in ("model", "dataset", "template", "label_mode"):
        df[c] = df[c].astype(str)
    return df, side


def _write(path: Path, table, sidecar: dict) -> None:
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", compression_level=9, use_dictionary=list(CONFIG_COLUMNS))
    sidecar["file"] = {"name": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size,
                       "rows": table.num_rows}
    write_json_atomic(path.with_suffix(".json"), sidecar)


@contextmanager
def _state_folder(cache_root) -> Iterator:
    """``cache_root`` when given, else a temporary folder removed on exit: a bundle keeps no hidden states by default
    (the full-size run's would fill about 30 GB, float32, every layer), and a recomputation starts from scratch."""
    if cache_root is not None:
        yield cache_root
        return
    with tempfile.TemporaryDirectory(prefix="cgar-bundle-states-") as tmp:
        yield tmp


def write_bundle(path: str | Path, *, models: Sequence[str], datasets: Sequence[str], templates: Sequence[str],
                 seeds: Sequence[int], shots: Sequence[int], label_modes: Sequence[str], max_queries: int,
                 query_seed: int = 0, dtype: str = "float32", device: str = "cpu", batch_size: int = 8,
                 max_batch_tokens: int | None = None, layer_fractions: Sequence[float] = LAYER_FRACTIONS,
                 load: Callable[[str], LoadedModel] | None = None, cache_root=None, root=None,
                 extra_params: dict | None = None, progress: bool = True, stop_after: int | None = None) -> dict:
    """Write (or resume) the bundle ``path`` (``.parquet``; the sidecar is the ``.json`` beside it): every
    configuration of :func:`configurations` not yet in the file is computed with :func:`configuration_rows` and
    appended, and both files are rewritten atomically. A file written under other row parameters
    (:data:`ROW_PARAMETERS`) is refused (ValueError naming it). ``load(model_id)`` loads a model (default
    ``cgar_src.lm.load_model(model_id, dtype=dtype, device=device)``); ``cache_root``: a state cache to keep the
    hidden states in (default: none, each configuration's states live in a temporary folder removed after it; the
    resume works per configuration); ``stop_after`` stops after that many new configurations (tests of the resume).
    Returns the sidecar."""
    import pyarrow as pa

    from ..lm import load_model

    path = Path(path).with_suffix(".parquet")
    configs = configurations(models, datasets, templates, seeds, shots, label_modes)
    positive_int(max_queries, "max_queries")
    params = {"format": BUNDLE_FORMAT, "models": list(models), "datasets": list(datasets),
              "templates": list(templates), "seeds": list(seeds), "shots": list(shots),
              "label_modes": list(label_modes), "max_queries": max_queries, "query_seed": query_seed, "dtype": dtype,
              "device": device, "batch_size": batch_size, "max_batch_tokens": max_batch_tokens,
              "layer_fractions": list(layer_fractions), "lens": "float32 (Unembed(model, float32=True))",
              "design": "one demonstration set per configuration, shared by its queries (Zhao et al. 2021)",
              **(extra_params or {})}
    table, side = None, None
    if path.exists():
        table, side = read_bundle(path)
        old = (side or {}).get("parameters", {})
        clash = [k for k in ROW_PARAMETERS if k in old and old[k] != params[k]]
        if side is None or clash:
            raise ValueError(f"bundle {path} was written with other parameters ({clash or 'no sidecar'}): "
                             "choose another path or delete it to start again")
    done = set()
    if table is not None:
        cols = {c: table.column(c).to_pylist() for c in CONFIG_COLUMNS}
        done = {Config(*v).key() for v in set(zip(*(cols[c] for c in CONFIG_COLUMNS)))}
    sidecar = {"parameters": params, "code_version": code_version(), "models": dict((side or {}).get("models", {})),
               "configurations": [r for r in (side or {}).get("configurations", []) if r["key"] in done]}
    recorded = {r["key"] for r in sidecar["configurations"]}
    for key in sorted(done - recorded):   # interrupted between the two files: the set is re-drawn (deterministic)
        cfg = next(c for c in configs if c.key() == key) if any(c.key() == key for c in configs) else None
        if cfg is None:
            continue
        rows = {q for d, q in zip(table.column("dataset").to_pylist(), table.column("query").to_pylist())
                if d == cfg.dataset}
        pool = load_examples(cfg.dataset, TASKS[cfg.dataset].query_split, root=root)
        ds = draw_demo_set(cfg.dataset, template=cfg.template, seed=cfg.seed, shots=cfg.shots,
                           label_mode=cfg.label_mode, root=root, exclude=[pool[i].text for i in sorted(rows)])
        sidecar["configurations"].append({"key": key, **asdict(cfg), "n_queries": None, "demo_set_key": ds.key(),
                                          "demo_rows": list(ds.order), "labels_shown": list(ds.labels),
                                          "true_labels": list(ds.true_labels), "tokens": None, "seconds": None})
    todo = [c for c in configs if c.key() not in done]
    load = load or (lambda m: load_model(m, dtype=dtype, device=device,
                                         **({"max_batch_tokens": max_batch_tokens} if max_batch_tokens else {})))
    from tqdm import tqdm

    bar = tqdm(total=len(configs), initial=len(configs) - len(todo), desc=f"bundle {path.name}", unit="config",
               disable=not progress)
    lm = unembed = layers = None
    n_new = 0
    try:
        for cfg in todo:
            if lm is None or lm.model_id != cfg.model:
                lm = load(cfg.model)
                unembed = Unembed(lm.model, float32=True)
                layers = bundle_layers(lm.n_layers, layer_fractions)
                sidecar["models"][cfg.model] = {**lm.identity, "n_layers": lm.n_layers, "layers": layers}
            with _state_folder(cache_root) as states:
                cols, record = configuration_rows(lm, unembed, cfg, max_queries=max_queries, layers=layers,
                                                  query_seed=query_seed, batch_size=batch_size,
                                                  max_batch_tokens=max_batch_tokens, cache_root=states, root=root)
            new = _table(cfg, cols)
            table = new if table is None else pa.concat_tables([table, new], promote_options="permissive")
            sidecar["configurations"].append(record)
            _write(path, table, sidecar)
            n_new += 1
            bar.update(1)
            if record["seconds"]:
                bar.set_postfix(tok_per_s=f"{record['tokens'] / record['seconds']:.0f}")
            if stop_after is not None and n_new >= stop_after:
                break
    finally:
        bar.close()
    if table is not None and not n_new and path.exists():
        stale = side is None or (side.get("file") or {}).get("sha256") != file_sha256(path) or recorded != done
        if stale:   # interrupted between the two files: the sidecar brought up to date, the rows left as they are
            sidecar["file"] = {"name": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size,
                               "rows": table.num_rows}
            write_json_atomic(path.with_suffix(".json"), sidecar)
        else:
            sidecar = side
    return sidecar


def verify_bundle(path: str | Path, load: Callable[[str], LoadedModel], *, n_configs: int = 2,
                  n_rows: int | None = None, seed: int | None = None, cache_root=None, root=None) -> list[dict]:
    """Recompute ``n_configs`` configurations of the bundle, drawn at random (``seed``; default: from the file's
    sha256), from scratch (``cache_root``: default a temporary folder, removed after each configuration) and compare their rows: every column of a random
    sample of ``n_rows`` rows (all rows when None). The whole configuration is recomputed, because the batches a
    query shares are part of its float path; predictions must be equal except where the recomputed label margin is
    within the tolerance (a near-tie), logits agree within ``cgar_src.lm.tolerance(dtype)`` times the configuration's
    largest absolute logit (1e-5 for float32 ... 0.0625 for bfloat16, relative), label mass within the same tolerance and
    N_eff within the same relative tolerance. Returns one report per configuration; raises AssertionError naming the
    first mismatch. ``load(model_id, dtype)`` loads the model."""
    from ..lm import tolerance

    table, side = read_bundle(path)
    if side is None:
        raise ValueError(f"bundle {path} has no sidecar")
    if side["file"]["sha256"] != file_sha256(Path(path).with_suffix(".parquet")):
        raise AssertionError(f"bundle {path}: the file's sha256 is not the sidecar's")
    p = side["parameters"]
    if p.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"bundle {path} is format {p.get('format')!r}, not {BUNDLE_FORMAT!r}: convert an older "
                         "file with cgar_src.book.bundle.convert_bundle")
    records = sorted(side["configurations"], key=lambda r: r["key"])
    rng = random.Random(int(side["file"]["sha256"][:8], 16) if seed is None else seed)
    picked = rng.sample(records, min(n_configs, len(records)))
    reports = []
    for rec in picked:
        cfg = Config(*(rec[c] for c in CONFIG_COLUMNS))
        lm = load(cfg.model, p["dtype"])
        if lm.revision != side["models"][cfg.model]["revision"]:
            raise AssertionError(f"{cfg.model}: revision {lm.revision} is not the bundle's "
                                 f"{side['models'][cfg.model]['revision']}")
        unembed = Unembed(lm.model, float32=True)
        # the thread count the configuration was written with: CPU kernels split their sums by thread, and in
        # bfloat16 a different split moves N_eff by up to ~10 % (measured); float32 is insensitive at the tolerance
        with torch_threads(int(rec.get("torch_threads") or torch.get_num_threads())), \
                _state_folder(cache_root) as states:
            cols, new_rec = configuration_rows(lm, unembed, cfg, max_queries=p["max_queries"],
                                               layers=side["models"][cfg.model]["layers"], query_seed=p["query_seed"],
                                               batch_size=p["batch_size"], max_batch_tokens=p["max_batch_tokens"],
                                               cache_root=states, root=root)
        if new_rec["demo_set_key"] != rec["demo_set_key"] or new_rec["demo_rows"] != rec["demo_rows"]:
            raise AssertionError(f"{cfg.key()}: the demonstration set drawn now is not the stored one")
        mask = np.ones(table.num_rows, dtype=bool)
        for c in CONFIG_COLUMNS:
            mask &= np.asarray(table.column(c).to_pylist()) == getattr(cfg, c)
        stored = table.filter(mask)
        n = stored.num_rows
        if n != len(cols["query"]):
            raise AssertionError(f"{cfg.key()}: {n} stored rows, {len(cols['query'])} recomputed")
        rows = sorted(rng.sample(range(n), min(n_rows, n))) if n_rows else list(range(n))
        tol = tolerance(p["dtype"])
        zl = f"z_{side['models'][cfg.model]['layers'][-1]}"
        scale = float(np.abs(np.stack(cols[zl])).max())
        worst = {}
        present = {c for c in stored.column_names if c not in CONFIG_COLUMNS and stored.column(c).null_count < n}
        missing = sorted(set(stored_columns(cols)) ^ present)     # another model's columns are null in these rows
        if missing:
            raise AssertionError(f"{cfg.key()}: the stored and the recomputed columns differ: {missing}")
        for name, new in stored_columns(cols).items():
            old = stored.column(name).to_pylist()
            a = np.asarray([old[i] for i in rows], dtype=np.float64)
            b = np.asarray(new[rows], dtype=np.float64)
            if name.startswith("pred_") or name in ("query", "gold"):
                bad = np.flatnonzero(a != b)
                if name.startswith("pred_") and name != "pred_majority" and bad.size:
                    at = f"z_{name.rsplit('_', 1)[1]}" if name.startswith("pred_label_") else zl
                    z = np.asarray(cols[at][rows], dtype=np.float64)
                    if name == "pred_calibrated":
                        z = z - np.asarray(cols["zcf"][rows], dtype=np.float64)
                    top = np.sort(z, axis=-1)
                    margin = top[:, -1] - top[:, -2] if name != "pred_full" else np.zeros(len(rows))
                    bad = bad[margin[bad] > tol * scale] if name != "pred_full" else bad[:0]
                    worst[name + "_changed"] = int((a != b).sum())
                if bad.size:
                    raise AssertionError(f"{cfg.key()}: column {name} differs at rows {[rows[i] for i in bad[:5]]}")
                continue
            if name.startswith("neff_"):
                err = float(np.max(np.abs(a - b) / np.abs(b)))
                limit = max(tol, 2e-3)          # float16 storage: 2^-11 relative
            elif name.startswith("mass_"):
                err, limit = float(np.max(np.abs(a - b))), max(tol, 1e-3)
            else:
                err, limit = float(np.max(np.abs(a - b))) / scale, tol
            worst[name] = err
            if err > limit:
                raise AssertionError(f"{cfg.key()}: column {name} differs by {err:.3g} > {limit:.3g}")
        reports.append({"config": cfg.key(), "rows_compared": len(rows), "worst": worst})
    return reports


def convert_bundle(path: str | Path, layer_fractions: Sequence[float] | None = None) -> dict:
    """Rewrite a ``cgar-bundle-1`` or ``cgar-bundle-2`` file as :data:`BUNDLE_FORMAT` in place, atomically, exactly:
    in a format 1 file (logit vectors ``z_<l>`` at every stored layer) each ``pred_label_<l>`` below the last layer is
    first the argmax of the stored float32 ``z_<l>`` (first index on ties, as ``torch.argmax``), computed as
    :func:`configuration_rows` computes it; then every logit vector (``z_<l>``, ``zcf``) is dropped. With
    ``layer_fractions`` only each model's layers ``bundle_layers(L, layer_fractions)`` are kept (they must be among
    its stored ones), and the parameters say so, so that the file resumes and verifies under them. The sidecar records
    the conversion; its ``code_version`` stays that of the run that computed the rows. Returns the new sidecar."""
    import pyarrow as pa

    table, side = read_bundle(path)
    fmt = (side or {}).get("parameters", {}).get("format")
    if fmt not in ("cgar-bundle-1", "cgar-bundle-2"):
        raise ValueError(f"bundle {path} is format {fmt!r}: only 'cgar-bundle-1' and 'cgar-bundle-2' convert")
    if fmt == "cgar-bundle-1" and any(c.startswith("pred_label_") for c in table.column_names):
        raise ValueError(f"bundle {path} already holds pred_label_<l> columns: not a format 1 file")
    model = np.asarray(table.column("model").to_pylist())
    below = {m: set(info["layers"][:-1]) for m, info in side["models"].items()}
    for name in [c for c in table.column_names if re.fullmatch(r"z_\d+", c)] if fmt == "cgar-bundle-1" else []:
        rows = np.isin(model, [m for m, ls in below.items() if int(name[2:]) in ls])   # layer below the last
        if rows.any():
            pred = np.array([np.argmax(v) if r else 0 for v, r in zip(table.column(name).to_pylist(), rows)],
                            dtype=np.int8)
            table = table.append_column(f"pred_label_{name[2:]}", pa.array(pred, mask=~rows))
    table = table.drop_columns([c for c in table.column_names if _is_logits(c)])
    if layer_fractions is not None:
        keep = {}
        for m, info in side["models"].items():
            keep[m] = bundle_layers(info["layers"][-1], layer_fractions)
            if not set(keep[m]) <= set(info["layers"]):
                raise ValueError(f"layer_fractions {list(layer_fractions)} ask for layers {keep[m]} of {m}, which "
                                 f"stores {info['layers']}")
            info["layers"] = keep[m]
        for c in list(table.column_names):
            if hit := re.fullmatch(r"(mass|neff|pred_label)_(\d+)", c):
                valid = np.asarray(table.column(c).is_valid())
                kept = valid & np.isin(model, [m for m, ls in keep.items() if int(hit.group(2)) in ls])
                if not kept.any():
                    table = table.drop_columns([c])
                elif (valid & ~kept).any():   # kept for one model, dropped for another: that model's values nulled
                    vals = table.column(c).to_pylist()
                    table = table.set_column(table.column_names.index(c), c, pa.array(
                        [v if r else None for v, r in zip(vals, kept)], type=table.schema.field(c).type))
        side["parameters"]["layer_fractions"] = list(layer_fractions)
    side["parameters"]["format"] = BUNDLE_FORMAT
    side["converted"] = {"from": fmt, "by": "cgar_src.book.bundle.convert_bundle",
                         "layer_fractions": None if layer_fractions is None else list(layer_fractions),
                         "code_version": code_version()}
    _write(Path(path).with_suffix(".parquet"), table, side)
    return side


def merge_bundles(out: str | Path, parts: Sequence[str | Path]) -> dict:
    """One bundle from bundles written apart (e.g. one process per model, each with its own ``--set models=[...]``
    and ``--set bundle=...``): the row parameters (:data:`ROW_PARAMETERS`) and the lists other than ``models`` must
    agree, no configuration may occur twice, and ``models`` becomes the parts' models in order. Rows and
    configuration records are concatenated unchanged; the sidecar keeps each part's ``code_version`` under
    ``parts``. Written atomically to ``out``. Returns its sidecar."""
    import pyarrow as pa

    if not parts:
        raise ValueError("parts must name at least one bundle")
    read = [read_bundle(p) for p in parts]
    if any(side is None for _, side in read):
        raise ValueError(f"every part needs its sidecar: {[str(p) for p, (_, s) in zip(parts, read) if s is None]}")
    first = read[0][1]["parameters"]
    for p, (_, side) in zip(parts, read):
        q = side["parameters"]
        clash = [k for k in sorted(set(first) | set(q)) if k != "models" and first.get(k) != q.get(k)]
        if clash:
            raise ValueError(f"bundle {p} was written with other parameters than {parts[0]}: {clash}")
    keys = [r["key"] for _, side in read for r in side["configurations"]]
    if len(keys) != len(set(keys)):
        raise ValueError("parts must not share a configuration")
    models = [m for _, side in read for m in side["parameters"]["models"]]
    sidecar = {"parameters": {**first, "models": models}, "code_version": read[-1][1]["code_version"],
               "parts": [{"name": Path(p).name, "code_version": side["code_version"], "sha256": side["file"]["sha256"]}
                         for p, (_, side) in zip(parts, read)],
               "models": {m: v for _, side in read for m, v in side["models"].items()},
               "configurations": [r for _, side in read for r in side["configurations"]]}
    table = pa.concat_tables([t for t, _ in read], promote_options="permissive")
    _write(Path(out).with_suffix(".parquet"), table, sidecar)
    return sidecar


def estimate_run(sidecar: dict, *, full_queries: dict[str, int], n_configs_full: dict[tuple[str, str], int]
                 ) -> dict:
    """Extrapolate the measured configurations of ``sidecar`` to a full run: per (model, dataset) the measured
    tokens per query and per prefix and the measured tokens/s; ``full_queries[dataset]`` queries per configuration,
    ``n_configs_full[(model, dataset)]`` configurations. All measured tokens (the prefix's included) are scaled by the
    ratio of queries, so the estimate errs high by the prefixes' share. Returns tokens and hours per (model, dataset)
    and in all."""
    out, total_tok, total_s = {}, 0.0, 0.0
    for (model, dataset), n_cfg in n_configs_full.items():
        recs = [r for r in sidecar["configurations"] if r["model"] == model and r["dataset"] == dataset
                and r.get("tokens") and r.get("seconds")]
        if not recs:
            continue
        tok, sec = sum(r["tokens"] for r in recs), sum(r["seconds"] for r in recs)
        per_cfg = tok / len(recs) * full_queries[dataset] / (sum(r["n_queries"] for r in recs) / len(recs))
        t = per_cfg * n_cfg
        out[f"{model}|{dataset}"] = {"tokens_per_s": tok / sec, "tokens": t, "hours": t / (tok / sec) / 3600}
        total_tok, total_s = total_tok + t, total_s + t / (tok / sec)
    out["total"] = {"tokens": total_tok, "hours": total_s / 3600}
    return out
