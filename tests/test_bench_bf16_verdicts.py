"""benchmarks/bench_bf16_verdicts.py on two synthetic results folders: a moved decision is found and counted."""
import json
from pathlib import Path

import pytest
from _bench import ROOT, load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_bf16_verdicts")


def _write(folder: Path, p_second: float) -> None:
    tests = [{"row": "gate", "role": "gap", "setting": "sst2", "name": "probe minus lens", "test": "sign",
              "p_value": 1e-6, "diff": 0.2, "lo": 0.1, "hi": 0.3, "n": 100, "n_pos": 80, "n_neg": 20},
             {"row": "gate", "role": "gap", "setting": "trec", "name": "probe minus lens", "test": "sign",
              "p_value": p_second, "diff": 0.05, "lo": -0.01, "hi": 0.1, "n": 100, "n_pos": 55, "n_neg": 45}]
    (folder / "gate_in_transformer").mkdir(parents=True)
    (folder / "gate_in_transformer" / "results.json").write_text(json.dumps({"ledger_tests": tests}))


def test_a_moved_decision_is_counted(bench, tmp_path, capsys):
    _write(tmp_path / "a", 0.01)
    _write(tmp_path / "b", 0.3)
    out = bench.main([str(tmp_path / "a"), str(tmp_path / "b")])
    assert out["chapters"] == ["12_gate_in_transformer"] and len(out["tests"]) == 2
    assert out["same_raw"] == 1 and out["same_holm"] == 1 and out["same_direction"] == 2
    printed = capsys.readouterr().out
    assert "<- decision moves" in printed
    assert printed.strip().splitlines()[-1].startswith("verdicts unchanged: ")
    same = bench.compare_folders(tmp_path / "a", tmp_path / "a")
    assert same["same_holm"] == 2 and all(v["same"] for v in same["rows"].values())
    with pytest.raises(ValueError, match="holds no chapter results"):
        bench.compare_folders(tmp_path / "nothing", tmp_path / "a")


def test_bundle_mode_on_the_stored_bundle_against_itself(bench, capsys):
    """The stored bundle compared with itself: every cell's verdict and direction agree and no effect moves; the
    last line is the one the docstring promises."""
    stored = ROOT / "bundles" / "robust_reduced.parquet"
    out = bench.main([str(stored), str(stored)])
    assert out["n_cells"] > 0 and out["same_verdict"] == out["n_cells"] == out["same_direction"]
    assert out["max_abs_diff_change"] == 0 and out["moved"] == []
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("cell verdicts unchanged: ")
