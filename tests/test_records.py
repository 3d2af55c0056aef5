import json

import pytest
import torch

from cgar_src.records import save_run, write_json_atomic


def test_save_run_writes_params_and_results(tmp_path):
    out = save_run(tmp_path / "run", {"beta": 2.0, "sigmas": (0.1, 0.2)}, {"acc": torch.tensor([0.5, 1.0])})
    assert json.loads((out / "params.json").read_text()) == {"beta": 2.0, "sigmas": [0.1, 0.2]}
    assert json.loads((out / "results.json").read_text()) == {"acc": [0.5, 1.0]}


def test_atomic_write_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "x.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}      # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temporary left behind
