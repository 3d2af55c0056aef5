from pathlib import Path

import pytest

from cgar_src.book import run
from cgar_src.book.run import load_profile

ROOT = Path(__file__).resolve().parents[1]


def test_profiles_load_and_validate():
    cpu = load_profile("cpu")
    assert cpu["model_id"] == "smollm2-135m-instruct" and cpu["device"] == "cpu"
    paper = load_profile("paper")
    assert paper["model_id"] == "meta-llama/Meta-Llama-3-8B" and paper["dtype"] == "bfloat16"
    assert load_profile("cpu", ["n_queries=7"])["n_queries"] == 7
    with pytest.raises(ValueError, match="profile"):
        load_profile("gpu")
    with pytest.raises(ValueError, match="datasets"):
        load_profile("cpu", ["datasets=[imdb]"])
    with pytest.raises(ValueError, match="^parameter datasets must be a list .*got 'sst2'"):
        load_profile("cpu", ["datasets=sst2"])      # a string is not a list of one dataset
    with pytest.raises(ValueError, match="shots"):
        load_profile("cpu", ["shots=[-1]"])
    with pytest.raises(ValueError, match="key=value"):
        load_profile("cpu", ["n_queries"])


def test_profile_chapters_declare_the_engine_parameters():
    """Every transformer chapter of a profile has a papermill parameters cell that takes the model settings and an
    output folder, so `python -m cgar_src.book.run --profile paper` can re-point it to Llama-3 on a GPU. That
    includes `max_batch_tokens`: the budget is part of the state-cache key, so a chapter that did not take the
    profile's budget would miss the states its extraction stage wrote and compute them all again."""
    import papermill as pm

    for name in ("cpu", "paper"):
        for ch in load_profile(name)["chapters"]:
            declared = pm.inspect_notebook(str(ROOT / "chapters" / f"{ch}.ipynb"))
            missing = {"model_id", "dtype", "device", "device_map", "max_batch_tokens", "batch_size",
                       "out_dir"} - set(declared)
            assert not missing, f"{ch} lacks parameters {missing}"
            assert {"seed", "seeds"} & set(declared), f"{ch} declares neither seed nor seeds (demonstration sets)"


def test_engine_settings_of_the_profiles():
    """The token budget per forward batch is a profile setting: the CPU value (the engine's default, so the CPU
    profile's state-cache keys are those of the default settings) and a GPU value for the paper profile."""
    from cgar_src.lm import MAX_BATCH_TOKENS

    cpu, paper = load_profile("cpu"), load_profile("paper")
    assert cpu["max_batch_tokens"] == MAX_BATCH_TOKENS == 2048 and cpu["batch_size"] == 8
    assert paper["max_batch_tokens"] >= 8 * MAX_BATCH_TOKENS and paper["device"] == "cuda"
    for bad in ("max_batch_tokens=0", "max_batch_tokens=1.5", "batch_size=-2", "max_batch_tokens=true"):
        with pytest.raises(ValueError, match=bad.split("=")[0]):
            load_profile("cpu", [bad])


def test_profiles_are_package_data_read_through_importlib_resources():
    """The profiles come from cgar_src.book.profiles (importlib.resources), which is the repository's params/ in
    this editable install: the same files, the same parsed profiles."""
    import importlib.resources

    import yaml

    folder = importlib.resources.files(run.PROFILES)
    assert Path(str(folder)).resolve() == (ROOT / "params").resolve()
    assert run.profile_names() == sorted(p.stem for p in (ROOT / "params").glob("*.yaml")) == ["cpu", "paper",
                                                                                                  "robust"]
    for name in run.profile_names():
        raw = yaml.safe_load((ROOT / "params" / f"{name}.yaml").read_text())
        assert load_profile(name) == {**raw, "chapters": raw.get("chapters", [])}   # a bundle profile runs none
    assert load_profile(str(ROOT / "params" / "cpu.yaml")) == load_profile("cpu")   # a YAML path works too
    with pytest.raises(ValueError, match=r"profile must be one of \['cpu', 'paper', 'robust'\]"):
        load_profile("no_such_profile.yaml")


def test_installed_without_a_clone_loads_profiles_and_names_chapters(tmp_path, monkeypatch):
    """Without a clone's chapters/ (an installed package), profiles still load; the chapter stage fails at once,
    before any model, naming --chapters (or chapters=[]); --chapters points at a clone's chapters."""
    monkeypatch.setattr(run, "clone_chapters", lambda: None)
    paper = load_profile("paper")
    cpu = load_profile("cpu")
    with pytest.raises(ValueError, match=r"installed cgar_src does not carry: pass --chapters DIR.*chapters=\[\]"):
        run.check_profile(cpu, tmp_path / "out")
    assert run.check_profile(cpu, tmp_path / "out", ROOT / "chapters") == ROOT / "chapters"
    assert run.check_profile(load_profile("cpu", ["chapters=[]"]), tmp_path / "out") is None
    assert not (tmp_path / "out").exists()
    declared = run.chapter_parameters(paper, "07_memory_collapse", tmp_path / "res", ROOT / "chapters")
    assert declared["model_id"] == paper["model_id"] and declared["out_dir"] == str(tmp_path / "res" /
                                                                                 "07_memory_collapse")
    with pytest.raises(ValueError, match="--chapters"):
        run.chapter_parameters(paper, "07_memory_collapse", tmp_path / "res")
    with pytest.raises(ValueError, match=r"^parameter --chapters must be a folder with the profile's chapter "
                                         r"notebooks, got .*missing \['06_attention_first_order.ipynb'"):
        load_profile("cpu", chapters=tmp_path)
    with pytest.raises(ValueError, match="parameter chapters must be a list"):
        load_profile("cpu", ["chapters=07_memory_collapse"])


def test_profile_command_checks_the_machine_before_any_model(tmp_path, monkeypatch, capsys):
    """check_profile: device on this machine, model found, --out writable; main turns its ValueError into a usage
    error (exit 2) naming the parameter, and never reaches the model."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(run, "profile_model", lambda prof: pytest.fail("the model was loaded"))
    paper = load_profile("paper")                          # loads anywhere: it is checked against a GPU machine later
    with pytest.raises(ValueError, match=r"^parameter device must be a device of this machine, one of \['cpu'\], "
                                         r"got 'cuda'"):
        run.check_profile(paper, tmp_path / "out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"^parameter --out must be a folder that can be created and written"):
        run.check_profile(load_profile("cpu"), tmp_path / "file" / "out")
    cases = {("--set", "device=cuda"): "parameter device", ("--out", str(tmp_path / "file" / "out")): "parameter --out",
             ("--profile", "paper"): "parameter device", ("--set", "model_id=no/such-model"): "parameter model_id",
             ("--chapters", str(tmp_path)): "parameter --chapters"}
    for argv, named in cases.items():
        with pytest.raises(SystemExit) as exit_:
            run.main(["--out", str(tmp_path / "out"), *argv])
        assert exit_.value.code == 2
        assert named in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_robust_profile_is_a_bundle_profile(tmp_path, monkeypatch):
    """The robust profile writes a result bundle (no chapters): its lists are settable with --set, bad values fail
    naming the entry, bfloat16 is refused on a CPU without native bfloat16, and a run writes (and resumes) the
    bundle at --out."""
    from cgar_src.book import params

    prof = load_profile("robust")
    assert run.is_bundle(prof) and prof["chapters"] == [] and prof["dtype"] == "bfloat16"
    assert prof["models"] == ["smollm2-135m-instruct", "gemma-3-270m"] and prof["seeds"] == [0, 1, 2, 3, 4]
    assert prof["label_modes"] == ["true", "random"] and prof["templates"] == ["book", "zhao2021", "min2022"]
    assert run.default_out(prof, "robust") == ROOT / "bundles" / "robust"
    small = load_profile("robust", ["seeds=[0]", "max_queries=3", "templates=[book]", "models=[smollm2-135m-instruct]"])
    assert small["seeds"] == [0] and small["max_queries"] == 3
    for bad in ("seeds=[0, 0]", "templates=[nope]", "label_modes=[flipped]", "max_queries=0",
                "layer_fractions=[0, 1]", "models=[]"):
        with pytest.raises(ValueError, match=bad.split("=")[0]):
            load_profile("robust", [bad])
    with pytest.raises(ValueError, match="lacks"):
        run.load_profile(str(_without(tmp_path, "seeds")))
    monkeypatch.setattr(params, "cpu_supports_bfloat16", lambda: False)
    with pytest.raises(ValueError, match="parameter dtype must be 'float32' on this CPU"):
        run.check_profile(small, tmp_path / "b")
    run.check_profile({**small, "dtype": "float32"}, tmp_path / "b")
    monkeypatch.undo()
    monkeypatch.setenv("CGAR_STATE_CACHE", str(tmp_path / "states"))   # a fresh state cache, not the user's
    prof = {**small, "dtype": "float32", "datasets": ["sst2"], "shots": [0, 1], "label_modes": ["true"]}
    side = run.run_bundle(prof, tmp_path / "b", progress=False)
    assert side["file"]["rows"] == 2 * 3 and (tmp_path / "b.parquet").is_file() and (tmp_path / "b.json").is_file()
    again = run.run_bundle(prof, tmp_path / "b", progress=False)
    assert again["file"]["sha256"] == side["file"]["sha256"]


def _without(tmp_path, key):
    import yaml

    raw = yaml.safe_load((ROOT / "params" / "robust.yaml").read_text())
    raw.pop(key)
    path = tmp_path / "partial.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path
