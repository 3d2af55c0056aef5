"""Run the transformer experiments under a parameter profile: ``python -m cgar_src.book.run --profile cpu``.

For every dataset and shot count of the profile it extracts (or reuses from the cache) the zero-shot and k-shot
states, writes the per-layer logit-lens summary (accuracy, N_eff, label mass) with its parameters as JSON into
``<out>/<dataset>_k<shots>/``, then executes the profile's chapters with papermill into ``<out>/chapters/``.
Profiles are the package data ``cgar_src.book.profiles`` (the repository's ``params/<name>.yaml``, read through
``importlib.resources`` in a clone and in an installed package alike); ``--set key=value`` overrides one entry (YAML
syntax for the value). Optional engine entries: ``max_batch_tokens`` (padded tokens per forward batch; default
:data:`cgar_src.lm.MAX_BATCH_TOKENS`, tuned for 2 CPU cores), ``attn_implementation``, ``local_files_only``,
``revision``; the model loads with ``cgar_src.lm.load_model`` and every chapter that declares one of these
parameters receives it.

Everything is checked before any model is loaded (:func:`check_profile`): each entry's value
(:func:`cgar_src.book.params.validate_parameters`), the output folder (``--out``: created, written and cleaned by a
probe), the device (``--set device=cuda`` on a machine without CUDA fails at once, listing the devices there), the
model (found locally or on the hub) and the chapters' folder. The chapters are the book's notebooks, which only a
clone carries: in a clone they are found beside the package; an installed ``cgar_src`` needs ``--chapters DIR`` (a
clone's ``chapters/``), or ``--set chapters=[]`` to run the extraction stages alone.

A *bundle profile* (one with a ``bundle`` entry, e.g. ``robust``) runs no chapters: it writes a result bundle
(:func:`cgar_src.book.bundle.write_bundle`), one row per (model, dataset, template, seed, shots, label mode,
query), to ``<bundle>.parquet`` with its ``.json`` sidecar (relative paths from the repository root in a clone;
``--out PATH`` replaces the profile's path). It resumes: a rerun skips the configurations already written. Its
entries: :data:`BUNDLE_REQUIRED`. After the run it prints the measured tokens/s and the time a run of the profile's
lists at full size (``max_queries`` 1000) would take at that rate.
"""
from __future__ import annotations

import argparse
import importlib.resources
from pathlib import Path

import yaml

from .params import check_output_folder, validate_parameters

ROOT = Path(__file__).resolve().parents[2]   # the repository root in a clone (site-packages when installed)
PROFILES = "cgar_src.book.profiles"          # package data: the repository's params/*.yaml
REPOSITORY = "https://github.com/cgar-book/context-gated-retrieval"
REQUIRED = ("model_id", "dtype", "device", "batch_size", "n_queries", "shots", "datasets", "seed", "chapters")
#: the entries of a bundle profile (``bundle`` given), instead of :data:`REQUIRED`
BUNDLE_REQUIRED = ("bundle", "models", "dtype", "device", "batch_size", "max_queries", "query_seed", "datasets",
                   "templates", "seeds", "shots", "label_modes", "layer_fractions")
#: the options of :func:`cgar_src.lm.load_model` that a profile may set
ENGINE = ("device_map", "revision", "attn_implementation", "local_files_only", "max_batch_tokens")


def profile_names() -> list[str]:
    """The names of the profiles shipped with the package (``cgar_src.book.profiles``, the repository's params/)."""
    return sorted(p.name[:-len(".yaml")] for p in importlib.resources.files(PROFILES).iterdir()
                  if p.name.endswith(".yaml"))


def clone_chapters() -> Path | None:
    """The chapters of the clone this package runs from (``<repository>/chapters``), or None when installed."""
    folder = ROOT / "chapters"
    return folder if folder.is_dir() else None


def chapters_dir(prof: dict, chapters: str | Path | None = None) -> Path:
    """The folder of the profile's chapter notebooks: ``chapters`` if given, else the clone's ``chapters/``.

    ``ValueError`` naming ``--chapters`` when the folder lacks one of the profile's chapters, or, for an installed
    package without a clone, naming how to point at one.
    """
    if chapters is None:
        folder = clone_chapters()
        if folder is None:
            raise ValueError(
                f"the profile's chapters {prof['chapters']} are notebooks of the book's repository, which an installed "
                f"cgar_src does not carry: pass --chapters DIR, the chapters/ folder of a clone (git clone "
                f"{REPOSITORY}), or --set chapters=[] to run the extraction stages alone")
    else:
        folder = Path(chapters).expanduser()
    missing = [ch for ch in prof["chapters"] if not (folder / f"{ch}.ipynb").is_file()]
    if missing:
        raise ValueError(f"parameter --chapters must be a folder with the profile's chapter notebooks, got "
                         f"{str(folder)!r} (missing {[f'{ch}.ipynb' for ch in missing]})")
    return folder


def load_profile(name_or_path: str, overrides: list[str] = (), *, chapters: str | Path | None = None) -> dict:
    """A profile by name (``cgar_src.book.profiles``: ``cpu``, ``paper``) or YAML path, with ``key=value``
    overrides (YAML values), checked on its own: the required entries, every value by the chapters' rules
    (:func:`cgar_src.book.params.validate_parameters` with ``machine=False``), and, where a chapters folder is known
    (``chapters``, or the clone's), that it holds the profile's chapters. Nothing here depends on this machine's
    devices, so every profile loads anywhere; :func:`check_profile` checks the machine."""
    path = Path(name_or_path)
    if path.suffix:
        if not path.is_file():
            raise ValueError(f"profile must be one of {profile_names()} or a YAML file, got {name_or_path!r}")
        text = path.read_text()
    else:
        resource = importlib.resources.files(PROFILES) / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise ValueError(f"profile must be one of {profile_names()} or a YAML file, got {name_or_path!r}")
        text = resource.read_text()
    prof = yaml.safe_load(text)
    if not isinstance(prof, dict):
        raise ValueError(f"profile {name_or_path!r} must be a YAML mapping of parameters, got {type(prof).__name__}")
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        prof[key.strip()] = yaml.safe_load(value)
    missing = [k for k in (BUNDLE_REQUIRED if is_bundle(prof) else REQUIRED) if k not in prof]
    if missing:
        raise ValueError(f"profile {name_or_path!r} lacks {missing}")
    chs = prof.setdefault("chapters", [])
    if not isinstance(chs, list) or not all(isinstance(c, str) and c for c in chs) or len(set(chs)) != len(chs):
        raise ValueError(f"parameter chapters must be a list of chapter names without repeats, got {chs!r}")
    validate_parameters(prof, machine=False)
    if chs and (chapters is not None or clone_chapters() is not None):
        chapters_dir(prof, chapters)
    return prof


def is_bundle(prof: dict) -> bool:
    """True for a bundle profile (one with a ``bundle`` entry): it writes a result bundle, not chapters."""
    return prof.get("bundle") is not None


def default_out(prof: dict, name_or_path: str) -> Path:
    """``results/<profile>`` at the repository root in a clone, else under the current folder; for a bundle profile,
    its ``bundle`` path (relative to the repository root in a clone)."""
    if is_bundle(prof):
        path = Path(prof["bundle"]).expanduser()
        return path if path.is_absolute() or clone_chapters() is None else ROOT / path
    name = prof.get("profile", Path(name_or_path).stem)
    return (ROOT / "results" if clone_chapters() is not None else Path("results")) / name


def check_profile(prof: dict, out: str | Path, chapters: str | Path | None = None) -> Path | None:
    """Everything that can fail before the model loads, against this machine: the values
    (:func:`cgar_src.book.params.validate_parameters`: device present, model found), the output folder (``--out``,
    :func:`cgar_src.book.params.check_output_folder`) and, when the profile has chapters, their folder
    (:func:`chapters_dir`). ``ValueError`` naming the parameter; nothing is left behind. Returns the chapters'
    folder (None without chapters)."""
    validate_parameters(prof)
    check_output_folder(Path(out).parent if is_bundle(prof) else out, "--out")
    return chapters_dir(prof, chapters) if prof["chapters"] else None


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
    from ..records import save_run
    from ..tasks.icl import task_states

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


def chapter_parameters(prof: dict, chapter: str, out: Path, chapters: str | Path | None = None) -> dict:
    """The papermill parameters of ``chapter`` under a profile: the profile's entries that the chapter's parameters
    cell declares (nothing else), and ``out_dir`` = ``<out>/<chapter>``. ``chapters``: the notebooks' folder
    (:func:`chapters_dir`)."""
    import papermill as pm

    folder = chapters_dir({**prof, "chapters": [chapter]}, chapters)
    declared = pm.inspect_notebook(str(folder / f"{chapter}.ipynb"))              # the chapter's parameters cell
    params = {k: prof[k] for k in declared if k in prof and k != "chapters"}      # only what it declares
    params["out_dir"] = str((Path(out) / chapter).resolve())
    return params


def run_chapter(prof: dict, chapter: str, out: Path, *, chapters: str | Path | None = None,
                progress_bar: bool = True) -> Path:
    """Execute ``chapter`` with papermill under the profile into ``<out>/chapters/<chapter>.ipynb`` (the notebook
    from ``chapters``, else the clone's chapters/; :func:`chapters_dir`)."""
    import papermill as pm

    folder = chapters_dir({**prof, "chapters": [chapter]}, chapters)
    target = Path(out) / "chapters" / f"{chapter}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(folder / f"{chapter}.ipynb"), str(target),
                        parameters=chapter_parameters(prof, chapter, out, folder), cwd=str(folder),
                        progress_bar=progress_bar)
    return target


def run_bundle(prof: dict, out: Path, *, progress: bool = True, stop_after: int | None = None) -> dict:
    """Write (or resume) the bundle of a bundle profile at ``out`` (``.parquet`` and ``.json``), then print the
    measured tokens/s per model and dataset and the estimated time of the same lists at full size (``max_queries``
    1000: all 500 of TREC's query split, 1000 of SST-2's 1821 and of AG-News' 3800). Returns the sidecar."""
    from ..lm import load_model
    from ..tasks.data import TASKS, load_examples
    from .bundle import configurations, estimate_run, write_bundle

    engine = {k: prof[k] for k in ENGINE if prof.get(k) is not None and k != "max_batch_tokens"}
    side = write_bundle(out, models=prof["models"], datasets=prof["datasets"], templates=prof["templates"],
                        seeds=prof["seeds"], shots=prof["shots"], label_modes=prof["label_modes"],
                        max_queries=prof["max_queries"], query_seed=prof["query_seed"], dtype=prof["dtype"],
                        device=prof["device"], batch_size=prof["batch_size"],
                        max_batch_tokens=prof.get("max_batch_tokens"), layer_fractions=prof["layer_fractions"],
                        load=lambda m: load_model(m, dtype=prof["dtype"], device=prof["device"], **engine,
                                                  **({"max_batch_tokens": prof["max_batch_tokens"]}
                                                     if prof.get("max_batch_tokens") else {})),
                        extra_params={"profile": prof.get("profile")}, progress=progress, stop_after=stop_after)
    f = side["file"]
    print(f"bundle {Path(out).with_suffix('.parquet')}: {f['rows']} rows, {f['bytes'] / 1e6:.2f} MB, "
          f"sha256 {f['sha256'][:16]}")
    full = {ds: min(1000, len(load_examples(ds, TASKS[ds].query_split))) for ds in prof["datasets"]}
    cfgs = configurations(prof["models"], prof["datasets"], prof["templates"], prof["seeds"], prof["shots"],
                          prof["label_modes"])
    counts = {(m, ds): sum(c.model == m and c.dataset == ds for c in cfgs) for m in prof["models"]
              for ds in prof["datasets"]}
    est = estimate_run(side, full_queries=full, n_configs_full=counts)
    for key, e in est.items():
        if key != "total":
            print(f"{key}: {e['tokens_per_s']:.0f} tokens/s measured; full size {e['tokens'] / 1e6:.2f} M tokens, "
                  f"{e['hours']:.2f} h")
    print(f"estimated full run ({prof['dtype']}, max_queries 1000, measured models only): "
          f"{est['total']['tokens'] / 1e6:.1f} M tokens, {est['total']['hours']:.2f} h")
    return side


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu",
                    help=f"a profile shipped with the package ({', '.join(profile_names())}) or a YAML path "
                         "(default: cpu)")
    ap.add_argument("--out", default=None,
                    help="output folder (default: results/<profile>, at the repository root in a clone)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a profile entry")
    ap.add_argument("--chapters", default=None, metavar="DIR",
                    help="folder of the chapter notebooks (default: the clone's chapters/; needed when cgar_src is "
                         "installed without a clone, unless --set chapters=[])")
    args = ap.parse_args(argv)
    try:   # every check before the model loads: a bad value costs seconds, never a finished extraction
        prof = load_profile(args.profile, args.set, chapters=args.chapters)
        out = Path(args.out) if args.out is not None else default_out(prof, args.profile)
        folder = check_profile(prof, out, args.chapters)
    except ValueError as err:
        ap.error(str(err))

    from ..lm import Unembed

    if is_bundle(prof):
        run_bundle(prof, out)
        return
    lm = profile_model(prof)
    unembed = Unembed(lm.model, float32=True)   # the lens in float32 whatever the model's dtype
    for dataset in prof["datasets"]:
        for shots in prof["shots"]:
            _, summary, where = extract_stage(lm, unembed, prof, dataset, shots, out)
            print(f"{dataset} k={shots}: final-layer accuracy {summary['accuracy'][-1].item():.3f}, "
                  f"median N_eff {summary['median_n_eff'][-1].item():.1f} -> {where}")
    for ch in prof["chapters"]:
        print(f"executed {ch} -> {run_chapter(prof, ch, out, chapters=folder)}")


if __name__ == "__main__":
    main()
