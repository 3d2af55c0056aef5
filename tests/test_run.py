import pytest

from cgar_src.run import load_profile


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
