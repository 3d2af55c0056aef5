"""Shared demonstration sets in the engine (cgar_src.tasks.icl.shared_task_states) and result bundles
(cgar_src.book.bundle): states equal the full prompts', the set is in the cache key, a bundle's rows follow from
its states, it resumes after an interruption, and a stored bundle recomputes from scratch."""
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from cgar_src.book import bundle as B
from cgar_src.lm import LoadedModel, hidden_states
from cgar_src.tasks.data import TASKS, load_examples
from cgar_src.tasks.icl import CONTENT_FREE_INPUT, shared_task_states, task_states

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    """A tiny random Llama (4 layers, d=64) with the default model's tokenizer, so that label words are real tokens."""
    from cgar_src.lm import default_model_dir

    tok = AutoTokenizer.from_pretrained(default_model_dir())
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=2048)
    return LoadedModel(model=LlamaForCausalLM(cfg).eval(), tokenizer=tok, model_id="tiny-llama", revision="none",
                       dtype="float32")


def test_shared_states_equal_the_full_prompts_and_the_set_keys_the_cache(tiny, tmp_path):
    st = shared_task_states(tiny, "trec", n_queries=9, shots=1, seed=2, template="zhao2021", cache_root=tmp_path,
                            progress=False)
    assert st.h.shape == (9, 5, 64) and st.h_cf.shape == (5, 64)
    queries = load_examples("trec", TASKS["trec"].query_split)
    assert st.prompts == [st.demo_set.prompt(queries[i].text) for i in st.query_rows]
    assert st.cf_prompt == st.demo_set.prompt(CONTENT_FREE_INPUT)
    assert len({p[:len(st.demo_set.prefix())] for p in st.prompts}) == 1             # one prefix for all queries
    torch.testing.assert_close(st.h, hidden_states(tiny, st.prompts, progress=False), atol=1e-4, rtol=0)
    torch.testing.assert_close(st.h_cf, hidden_states(tiny, [st.cf_prompt], progress=False)[0], atol=1e-4, rtol=0)
    # the prefix ran once: tokens forwarded = prefix + every query's own part (+ the content-free part)
    n_prefix = len(tiny.tokenizer(st.demo_set.prefix())["input_ids"])
    own = sum(len(tiny.tokenizer(p)["input_ids"]) - n_prefix for p in st.prompts + [st.cf_prompt])
    assert st.tokens == n_prefix + own
    assert st.params["demo_set"]["order"] == list(st.demo_set.order) and st.params["seed"] == 2
    # the same queries as the per-query design samples with that seed (paired across designs)
    per_query = task_states(tiny, "trec", n_queries=9, shots=0, cache_root=tmp_path / "pq", progress=False)
    assert torch.equal(per_query.labels, st.labels)
    again = shared_task_states(tiny, "trec", n_queries=9, shots=1, seed=2, template="zhao2021", cache_root=tmp_path,
                               progress=False)
    assert again.n_forward == 0 and again.tokens == 0 and torch.equal(again.h, st.h)      # served from the cache
    other = shared_task_states(tiny, "trec", n_queries=9, shots=1, seed=3, template="zhao2021", cache_root=tmp_path,
                               progress=False)
    assert other.n_forward == 10 and other.demo_set.order != st.demo_set.order            # another set, another key
    rnd = shared_task_states(tiny, "trec", n_queries=9, shots=1, seed=2, template="zhao2021", label_mode="random",
                             cache_root=tmp_path, progress=False)
    assert rnd.n_forward == 10 and rnd.demo_set.order == st.demo_set.order
    zero = [shared_task_states(tiny, "sst2", n_queries=4, shots=0, seed=s, cache_root=tmp_path, progress=False)
            for s in (0, 1)]
    assert zero[0].n_forward == 5 and zero[1].n_forward == 0     # zero-shot prompts do not depend on the seed
    with pytest.raises(ValueError, match="template"):
        shared_task_states(tiny, "trec", n_queries=2, shots=1, template="nope", cache_root=tmp_path)
    with pytest.raises(ValueError, match="label_mode"):
        shared_task_states(tiny, "trec", n_queries=2, shots=1, label_mode="flipped", cache_root=tmp_path)


def _write(tiny, path, cache, **kw):
    return B.write_bundle(path, models=["tiny-llama"], datasets=["sst2", "trec"], templates=["book", "min2022"],
                          seeds=[0], shots=[0, 1], label_modes=["true", "random"], max_queries=6, batch_size=4,
                          load=lambda m: tiny, cache_root=cache, progress=False, **kw)


def test_tiny_bundle_rows_follow_from_the_states(tiny, tmp_path):
    side = _write(tiny, tmp_path / "b", tmp_path / "cache")
    table, stored = B.read_bundle(tmp_path / "b.parquet")
    cfgs = B.configurations(["tiny-llama"], ["sst2", "trec"], ["book", "min2022"], [0], [0, 1], ["true", "random"])
    assert len(cfgs) == 2 * 2 * 3 and table.num_rows == 6 * len(cfgs)       # no random labels at 0 shots
    assert stored == side and side["file"]["sha256"] == B.file_sha256(tmp_path / "b.parquet")
    assert side["models"]["tiny-llama"]["layers"] == B.bundle_layers(4) == [2, 3, 4]
    assert {r["key"] for r in side["configurations"]} == {c.key() for c in cfgs}
    assert side["code_version"]["package"] and "git_commit" in side["code_version"]
    df = table.to_pandas()
    for ds, n_labels in (("sst2", 2), ("trec", 6)):
        part = df[df["dataset"] == ds]
        for c in ("gold", "pred_label", "pred_calibrated", "pred_label_2", "pred_label_3"):
            assert part[c].between(0, n_labels - 1).all(), (ds, c)
    assert set(df["pred_full"]) <= {-1, 0, 1, 2, 3, 4, 5}
    assert (df["mass_4"] >= 0).all() and (df["mass_4"] <= 1).all() and (df["neff_4"] >= 1).all()
    # format 3: no logit vectors, their answers at every stored layer
    assert not [c for c in table.column_names if c.startswith("z")] and {"pred_label_2", "pred_label_3"} <= set(df)
    assert "pred_label_4" not in df and side["parameters"]["format"] == B.BUNDLE_FORMAT == "cgar-bundle-3"
    # the rows of one configuration are its states decoded by the lens
    cfg = cfgs[1]
    st = shared_task_states(tiny, cfg.dataset, n_queries=6, shots=cfg.shots, seed=cfg.seed, template=cfg.template,
                            label_mode=cfg.label_mode, batch_size=4, cache_root=tmp_path / "cache", progress=False,
                            content_free=True)
    rows = df[(df["template"] == cfg.template) & (df["dataset"] == cfg.dataset) & (df["shots"] == cfg.shots)
              & (df["label_mode"] == cfg.label_mode)]
    assert list(rows["query"]) == st.query_rows and list(rows["gold"]) == st.labels.tolist()
    from cgar_src.analysis.baselines import calibrated_predictions
    from cgar_src.analysis.lens import decode_stats
    from cgar_src.lm import Unembed

    dec = decode_stats(Unembed(tiny.model, float32=True), st.h[:, -1], st.label_ids)
    z_cf = decode_stats(Unembed(tiny.model, float32=True), st.h_cf[None, -1], st.label_ids).label_logits[0]
    assert (rows["pred_label"].to_numpy() == dec.label_logits.argmax(-1).numpy()).all()
    assert (rows["pred_calibrated"].to_numpy() == calibrated_predictions(dec.label_logits, z_cf).numpy()).all()
    np.testing.assert_allclose(rows["neff_4"].to_numpy(np.float64), dec.n_eff.numpy(), rtol=2e-3)
    low = decode_stats(Unembed(tiny.model, float32=True), st.h[:, 3], st.label_ids)
    assert (rows["pred_label_3"].to_numpy() == low.label_logits.argmax(-1).numpy()).all()
    # recomputed from scratch, the stored bundle agrees; a tampered row does not
    reports = B.verify_bundle(tmp_path / "b", lambda m, dt: tiny, n_configs=3, cache_root=tmp_path / "fresh")
    assert len(reports) == 3 and all(r["rows_compared"] == 6 for r in reports)
    import pyarrow as pa
    import pyarrow.parquet as pq

    col = table.column("neff_3").to_numpy().copy()
    col[:] = col * np.float16(1.1)
    bad = table.set_column(table.schema.get_field_index("neff_3"), "neff_3", pa.array(col))
    pq.write_table(bad, tmp_path / "b.parquet")
    with pytest.raises(AssertionError, match="sha256"):
        B.verify_bundle(tmp_path / "b", lambda m, dt: tiny, n_configs=1, cache_root=tmp_path / "fresh2")
    side["file"]["sha256"] = B.file_sha256(tmp_path / "b.parquet")     # a forged sidecar: the values still fail
    import json

    (tmp_path / "b.json").write_text(json.dumps(side))
    with pytest.raises(AssertionError, match="neff_3"):
        B.verify_bundle(tmp_path / "b", lambda m, dt: tiny, n_configs=1, cache_root=tmp_path / "fresh3")


def test_bundle_resumes_after_an_interruption(tiny, tmp_path):
    first = _write(tiny, tmp_path / "r", tmp_path / "cache", stop_after=1)
    assert len(first["configurations"]) == 1 and first["file"]["rows"] == 6
    t1, _ = B.read_bundle(tmp_path / "r")
    calls = []

    def load(m):
        calls.append(m)
        return tiny

    done = B.write_bundle(tmp_path / "r", models=["tiny-llama"], datasets=["sst2", "trec"],
                          templates=["book", "min2022"], seeds=[0], shots=[0, 1], label_modes=["true", "random"],
                          max_queries=6, batch_size=4, load=load, cache_root=tmp_path / "cache2", progress=False)
    assert len(done["configurations"]) == 12 and done["file"]["rows"] == 72 and calls == ["tiny-llama"]
    t2, _ = B.read_bundle(tmp_path / "r")
    assert t2.slice(0, 6).to_pylist() == t1.to_pylist()    # the first configuration was kept, not recomputed
    # a complete bundle reruns without work; a temporary file left by a kill is never read
    (tmp_path / ".r.parquet.xyz.tmp").write_bytes(b"half a file")
    again = B.write_bundle(tmp_path / "r", models=["tiny-llama"], datasets=["sst2", "trec"],
                           templates=["book", "min2022"], seeds=[0], shots=[0, 1], label_modes=["true", "random"],
                           max_queries=6, batch_size=4, load=load, cache_root=tmp_path / "cache2", progress=False)
    assert calls == ["tiny-llama"] and again["file"]["sha256"] == done["file"]["sha256"]
    # killed between the parquet file and its sidecar: the missing record is rebuilt from the deterministic draw
    lost = dict(done, configurations=done["configurations"][:-1])
    import json

    (tmp_path / "r.json").write_text(json.dumps(lost))
    rebuilt = B.write_bundle(tmp_path / "r", models=["tiny-llama"], datasets=["sst2", "trec"],
                             templates=["book", "min2022"], seeds=[0], shots=[0, 1], label_modes=["true", "random"],
                             max_queries=6, batch_size=4, load=load, cache_root=tmp_path / "cache2", progress=False)
    last = done["configurations"][-1]
    again_rec = next(r for r in rebuilt["configurations"] if r["key"] == last["key"])
    assert again_rec["demo_rows"] == last["demo_rows"] and again_rec["labels_shown"] == last["labels_shown"]
    with pytest.raises(ValueError, match="other parameters"):
        _write(tiny, tmp_path / "r", tmp_path / "cache2", layer_fractions=[0.25, 1.0])


def test_configurations_and_layers():
    cfgs = B.configurations(["m"], ["sst2"], ["book"], [0, 1], [0, 4], ["true", "random"])
    assert [(c.seed, c.shots, c.label_mode) for c in cfgs] == [(0, 0, "true"), (0, 4, "true"), (0, 4, "random"),
                                                               (1, 0, "true"), (1, 4, "true"), (1, 4, "random")]
    assert B.bundle_layers(30) == [15, 20, 25, 30] and B.bundle_layers(18) == [9, 12, 15, 18]
    with pytest.raises(ValueError, match="template"):
        B.configurations(["m"], ["sst2"], ["nope"], [0], [0], ["true"])
    with pytest.raises(ValueError, match="label_modes"):
        B.configurations(["m"], ["sst2"], ["book"], [0], [0], ["flipped"])
    with pytest.raises(ValueError, match="seeds"):
        B.configurations(["m"], ["sst2"], ["book"], [0, 0], [0], ["true"])
    with pytest.raises(ValueError, match="layer_fractions"):
        B.bundle_layers(30, [0.0, 1.0])


def test_stored_bundle_recomputes_from_scratch(tmp_path):
    """A random sample of the tracked bundles' configurations, recomputed with an empty state cache, equals the
    stored rows within the dtype's tolerance (cgar_src.book.bundle.verify_bundle)."""
    files = sorted((ROOT / "bundles").glob("*.parquet"))
    if not files:
        pytest.skip("no bundle in bundles/ (python -m cgar_src.book.run --profile robust writes one)")
    from cgar_src.lm import DEFAULT_MODEL, load_model

    for path in files:
        _, side = B.read_bundle(path)
        models = sorted(side["models"])
        if DEFAULT_MODEL not in models:
            try:
                load_model(models[0], dtype=side["parameters"]["dtype"], local_files_only=True)
            except ValueError as err:
                pytest.skip(f"{path.name}: its model {models[0]} is not installed here ({err})")
        if side["parameters"]["dtype"] == "bfloat16":
            from cgar_src.book.params import cpu_supports_bfloat16

            if not cpu_supports_bfloat16():
                pytest.skip(f"{path.name} is bfloat16 and this CPU has no native bfloat16")
        reports = B.verify_bundle(path, lambda m, dt: load_model(m, dtype=dt), n_configs=2,
                                  cache_root=tmp_path / path.stem)
        assert reports and all(r["rows_compared"] > 0 for r in reports)


@pytest.fixture(scope="module")
def tiny6(tiny):
    """A second tiny random Llama with 6 layers (stored layers 3, 4, 5, 6): its layer 4 is the first model's last."""
    torch.manual_seed(1)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tiny.tokenizer), max_position_embeddings=2048)
    return LoadedModel(model=LlamaForCausalLM(cfg).eval(), tokenizer=tiny.tokenizer, model_id="tiny-six",
                       revision="none", dtype="float32")


def _two(path, cache, models, loaded, **kw):
    return B.write_bundle(path, models=models, datasets=["trec"], templates=["book"], seeds=[0], shots=[0, 1],
                          label_modes=["true", "random"], max_queries=5, batch_size=4,
                          load=lambda m: loaded[m], cache_root=cache, progress=False, **kw)


def _sorted_rows(table):
    return sorted((tuple(sorted(r.items())) for r in table.to_pylist()), key=repr)


def test_older_formats_convert_exactly_and_parts_merge(tiny, tiny6, tmp_path, monkeypatch):
    loaded = {"tiny-llama": tiny, "tiny-six": tiny6}
    both = ["tiny-llama", "tiny-six"]
    direct = _two(tmp_path / "direct", tmp_path / "cache", both, loaded)
    t2, _ = B.read_bundle(tmp_path / "direct")
    assert {"pred_label_4", "mass_4", "mass_6"} <= set(t2.column_names) and "z_6" not in t2.column_names
    p4 = t2.column("pred_label_4").to_pylist()
    assert all((v is None) == (m == "tiny-llama") for v, m in zip(p4, t2.column("model").to_pylist()))
    # files of the same rows in format 1 (every layer's logits) and format 2 (the last layer's logits and zcf),
    # converted in place, equal the direct file
    older = {"cgar-bundle-1": lambda cols: {k: v for k, v in cols.items() if "pred_label_" not in k},
             "cgar-bundle-2": lambda cols: {k: v for k, v in cols.items()
                                            if not (k.startswith("z_") and f"pred_label_{k[2:]}" in cols)}}
    for fmt, columns in older.items():
        with monkeypatch.context() as mp:
            mp.setattr(B, "BUNDLE_FORMAT", fmt)
            mp.setattr(B, "stored_columns", columns)
            old = _two(tmp_path / fmt, tmp_path / "cache", both, loaded)
        t1, _ = B.read_bundle(tmp_path / fmt)
        assert old["parameters"]["format"] == fmt and {"z_6", "zcf"} <= set(t1.column_names)
        with pytest.raises(ValueError, match="format"):
            B.verify_bundle(tmp_path / fmt, lambda m, dt: loaded[m], n_configs=1, cache_root=tmp_path / "v0")
        with pytest.raises(ValueError, match="other parameters"):      # an older file never resumes as format 3
            _two(tmp_path / fmt, tmp_path / "cache", both, loaded)
        conv = B.convert_bundle(tmp_path / fmt)
        t1, _ = B.read_bundle(tmp_path / fmt)
        assert conv["parameters"]["format"] == B.BUNDLE_FORMAT and conv["converted"]["from"] == fmt
        assert sorted(t1.column_names) == sorted(t2.column_names) and _sorted_rows(t1) == _sorted_rows(t2)
        with pytest.raises(ValueError, match="only 'cgar-bundle-1' and 'cgar-bundle-2' convert"):
            B.convert_bundle(tmp_path / fmt)
    # keeping the last layer only equals a run with layer_fractions [1.0], and that file verifies and resumes
    with monkeypatch.context() as mp:
        mp.setattr(B, "BUNDLE_FORMAT", "cgar-bundle-2")
        mp.setattr(B, "stored_columns", older["cgar-bundle-2"])
        _two(tmp_path / "last", tmp_path / "cache", both, loaded)
    with pytest.raises(ValueError, match="ask for layers"):
        B.convert_bundle(tmp_path / "last", layer_fractions=[0.1, 1.0])
    conv = B.convert_bundle(tmp_path / "last", layer_fractions=[1.0])
    only = _two(tmp_path / "only", tmp_path / "cache", both, loaded, layer_fractions=[1.0])
    tl, _ = B.read_bundle(tmp_path / "last")
    to, _ = B.read_bundle(tmp_path / "only")
    assert conv["models"] == only["models"] and conv["parameters"]["layer_fractions"] == [1.0]
    assert sorted(tl.column_names) == sorted(to.column_names) and _sorted_rows(tl) == _sorted_rows(to)
    assert not [c for c in tl.column_names if c.startswith("pred_label_")]
    assert _two(tmp_path / "last", tmp_path / "cache", both, loaded, layer_fractions=[1.0])["file"] == conv["file"]
    assert B.verify_bundle(tmp_path / "last", lambda m, dt: loaded[m], n_configs=2, cache_root=tmp_path / "v2")
    # one process per model, merged: the same rows as one run of both, and it verifies from scratch
    for m in both:
        _two(tmp_path / m, tmp_path / "cache", [m], loaded)
    merged = B.merge_bundles(tmp_path / "merged", [tmp_path / m for m in both])
    tm, _ = B.read_bundle(tmp_path / "merged")
    assert merged["parameters"]["models"] == both and len(merged["parts"]) == 2
    assert merged["file"]["rows"] == direct["file"]["rows"] and _sorted_rows(tm) == _sorted_rows(t2)
    reports = B.verify_bundle(tmp_path / "merged", lambda m, dt: loaded[m], n_configs=10, cache_root=tmp_path / "v1")
    assert {r["config"].split("|")[0] for r in reports} == set(both)
    with pytest.raises(ValueError, match="share a configuration"):
        B.merge_bundles(tmp_path / "twice", [tmp_path / "tiny-llama", tmp_path / "tiny-llama"])
    _two(tmp_path / "q4", tmp_path / "cache", ["tiny-six"], loaded, query_seed=4)
    with pytest.raises(ValueError, match="query_seed"):
        B.merge_bundles(tmp_path / "mixed", [tmp_path / "tiny-llama", tmp_path / "q4"])


def test_a_bundle_keeps_no_hidden_states_unless_asked(tiny, tmp_path, monkeypatch):
    """Without ``cache_root`` each configuration's states live in a temporary folder: the state cache stays empty
    (the full-size run's states would take about 30 GB), and the rows equal those computed through a cache."""
    monkeypatch.setenv("CGAR_STATE_CACHE", str(tmp_path / "user-states"))
    kw = dict(models=["tiny-llama"], datasets=["trec"], templates=["book"], seeds=[0], shots=[0, 1],
              label_modes=["true"], max_queries=5, batch_size=4, load=lambda m: tiny, progress=False)
    B.write_bundle(tmp_path / "plain", **kw)
    assert not (tmp_path / "user-states").exists() or not any((tmp_path / "user-states").rglob("*"))
    B.write_bundle(tmp_path / "cached", cache_root=tmp_path / "kept", **kw)
    assert any((tmp_path / "kept").rglob("*.safetensors"))
    assert B.read_bundle(tmp_path / "plain")[0].equals(B.read_bundle(tmp_path / "cached")[0])
