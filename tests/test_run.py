import pytest

from cgar_src.book.run import load_profile


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
    with pytest.raises(ValueError, match="shots"):
        load_profile("cpu", ["shots=[-1]"])
    with pytest.raises(ValueError, match="key=value"):
        load_profile("cpu", ["n_queries"])


def test_profile_chapters_declare_the_engine_parameters():
    """Every transformer chapter of a profile has a papermill parameters cell that takes the model settings and an
    output folder, so `python -m cgar_src.book.run --profile paper` can re-point it to Llama-3 on a GPU."""
    import papermill as pm

    from cgar_src.book.run import ROOT

    for name in ("cpu", "paper"):
        for ch in load_profile(name)["chapters"]:
            declared = pm.inspect_notebook(str(ROOT / "chapters" / f"{ch}.ipynb"))
            missing = {"model_id", "dtype", "device", "device_map", "batch_size", "seed", "out_dir"} - set(declared)
            assert not missing, f"{ch} lacks parameters {missing}"


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
