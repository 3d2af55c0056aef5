"""Run the transformer experiments under a parameter profile: ``python -m cgar_src.book.run --profile cpu``.

For every dataset and shot count of the profile it extracts (or reuses from the cache) the zero-shot and k-shot
states, writes the per-layer logit-lens summary (accuracy, N_eff, label mass) with its parameters as JSON into
``<out>/<dataset>_k<shots>/``, then executes the profile's chapters with papermill into ``<out>/chapters/``.
Profiles live in ``params/<name>.yaml``; ``--set key=value`` overrides one entry (YAML syntax for the value).
Optional engine entries: ``max_batch_tokens`` (padded tokens per forward batch; default
:data:`cgar_src.lm.MAX_BATCH_TOKENS`, tuned for 2 CPU cores), ``attn_implementation``, ``local_files_only``,
``revision``; the model loads with ``cgar_src.lm.load_model`` and every chapter that declares one of these
parameters receives it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from .._validate import positive_int

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = ("model_id", "dtype", "device", "batch_size", "n_queries", "shots", "datasets", "seed", "chapters")
ENGINE = ("device_map", "revision", "attn_implementation", "local_files_only", "max_batch_tokens")  # load_model options


def load_profile(name_or_path: str, overrides: list[str] = ()) -> dict:
    path = Path(name_or_path)
    if not path.suffix:
        path = ROOT / "params" / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (ROOT / "params").glob("*.yaml"))
        raise ValueError(f"profile must be one of {known} or a YAML file, got {name_or_path!r}")
    prof = yaml.safe_load(path.read_text())
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        prof[key] = yaml.safe_load(value)
    missing = [k for k in REQUIRED if k not in prof]
    if missing:
        raise ValueError(f"profile {path} lacks {missing}")
    from ..tasks.data import TASKS

    bad = [d for d in prof["datasets"] if d not in TASKS]
    if bad:
        raise ValueError(f"datasets must be among {sorted(TASKS)}, got {bad}")
    if not all(isinstance(k, int) and k >= 0 for k in prof["shots"]):
        raise ValueError(f"shots must be integers >= 0, got {prof['shots']}")
    for key in ("batch_size", "max_batch_tokens"):
        if key in prof:
            positive_int(prof[key], key)
    for ch in prof["chapters"]:
        if not (ROOT / "chapters" / f"{ch}.ipynb").exists():
            raise ValueError(f"chapter {ch!r} of the profile does not exist in chapters/")
    return prof


def profile_model(prof: dict):
    """The profile's model, loaded with its engine options (:data:`ENGINE`) by :func:`cgar_src.lm.load_model`."""
    from ..lm import load_model

    return load_model(prof["model_id"], dtype=prof["dtype"], device=prof["device"],
                      **{k: prof[k] for k in ENGINE if prof.get(k) is not None})


def extract_stage(lm, unembed, prof: dict, dataset: str, shots: int, out: Path, *, progress: bool = True):
    """One stage of a profile: the states of ``dataset`` with ``shots`` demonstrations per class (from the cache or
    computed) and their per-layer logit-lens summary (accuracy, median N_eff, mean label mass), written with the
    parameters as JSON into ``<out>/<dataset>_k<shots>/``. Returns the :class:`~cgar_src.tasks.icl.TaskStates`, the
    summary and the folder."""
    from ..analysis import lens
    from ..tasks.icl import task_states
    from ..records import save_run

    ts = task_states(lm, dataset, n_queries=prof["n_queries"], shots=shots, seed=prof["seed"],
                     batch_size=prof["batch_size"], progress=progress)
    h = ts.h_icl if shots else ts.h_zero
    st = lens.decode_stats(unembed, h, ts.label_ids)
    summary = {"accuracy": st.accuracy(ts.label_ids, ts.labels).round(decimals=4),
               "median_n_eff": st.n_eff.median(0).values.round(decimals=3),
               "mean_label_mass": st.label_mass.mean(0).round(decimals=4),
               "forward_passes": ts.n_forward}
    where = save_run(out / f"{dataset}_k{shots}", {**prof, **ts.params, "max_batch_tokens": lm.max_batch_tokens},
                     summary)
    return ts, summary, where


def chapter_parameters(prof: dict, chapter: str, out: Path) -> dict:
    """The papermill parameters of ``chapter`` under a profile: the profile's entries that the chapter's parameters
    cell declares (nothing else), and ``out_dir`` = ``<out>/<chapter>``."""
    import papermill as pm

    declared = pm.inspect_notebook(str(ROOT / "chapters" / f"{chapter}.ipynb"))  # the chapter's parameters cell
    params = {k: prof[k] for k in declared if k in prof and k != "chapters"}      # only what it declares
    params["out_dir"] = str((Path(out) / chapter).resolve())
    return params


def run_chapter(prof: dict, chapter: str, out: Path, *, progress_bar: bool = True) -> Path:
    """Execute ``chapter`` with papermill under the profile into ``<out>/chapters/<chapter>.ipynb``."""
    import papermill as pm

    target = Path(out) / "chapters" / f"{chapter}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(ROOT / "chapters" / f"{chapter}.ipynb"), str(target),
                        parameters=chapter_parameters(prof, chapter, out), cwd=str(ROOT / "chapters"),
                        progress_bar=progress_bar)
    return target


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu", help="name in params/ or a YAML path (default: cpu)")
    ap.add_argument("--out", default=None, help="output folder (default: results/<profile>)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a profile entry")
    args = ap.parse_args(argv)
    try:
        prof = load_profile(args.profile, args.set)
    except ValueError as err:
        ap.error(str(err))
    out = Path(args.out or ROOT / "results" / prof.get("profile", Path(args.profile).stem))

    from ..lm import Unembed

    lm = profile_model(prof)
    unembed = Unembed(lm.model)
    for dataset in prof["datasets"]:
        for shots in prof["shots"]:
            _, summary, where = extract_stage(lm, unembed, prof, dataset, shots, out)
            print(f"{dataset} k={shots}: final-layer accuracy {summary['accuracy'][-1].item():.3f}, "
                  f"median N_eff {summary['median_n_eff'][-1].item():.1f} -> {where}")
    for ch in prof["chapters"]:
        print(f"executed {ch} -> {run_chapter(prof, ch, out)}")


if __name__ == "__main__":
    main()
