"""LAMA prompts and baselines of chapter 09 (factual steering): answer-free demonstrations, majority shares, the
leave-one-out majority baseline; on constructed facts, on the shipped data, and through fact_states on a tiny model."""
import random

import pytest
import torch
from test_lm import tiny  # noqa: F401  (the tiny-model fixture)

from cgar_src.tasks import data
from cgar_src.tasks.data import Fact, lama_prompts, majority_share, mentions


def _facts(rel: str, pairs: list[tuple[str, str]]) -> list[Fact]:
    return [Fact(rel, "[X] is located in [Y] .", s, o, "test") for s, o in pairs]


def _demo_lines(prompt: str) -> list[str]:
    return prompt.split("\n")[:-1]   # every line but the query's cloze


def test_majority_share_known_answers():
    assert majority_share(["a", "b", "a", "c"]) == ("a", 0.5)
    assert majority_share([3, 3, 3]) == (3, 1.0)
    assert majority_share(["x", "y"]) == ("x", 0.5)          # ties: the value seen first
    for bad in ([], None, "abc"):
        with pytest.raises(ValueError, match="values"):
            majority_share(bad)


def test_mentions_is_word_level_and_case_insensitive():
    assert mentions("The English Patient was written in", "English")
    assert mentions("written in english.", "English")
    assert not mentions("An Englishman in New York", "English")
    assert mentions("New York Times", "New York") and not mentions("New Yorker", "New York")
    with pytest.raises(ValueError, match="obj"):
        mentions("text", " ")


def test_demonstrations_never_contain_the_query_object_constructed():
    # 6 of 10 facts share the object "Asia": a query about Asia may only see the four other facts as demonstrations
    facts = _facts("P1", [(f"City{i}", "Asia") for i in range(6)]
                   + [("Lyon", "Europe"), ("Lima", "America"), ("Asia Minor Town", "Europe"), ("Cairo", "Africa")])
    rng = random.Random(0)
    queries = facts[:6] + facts[6:]
    out = lama_prompts(facts, queries, 3, rng)
    for q, pos, neg in zip(queries, out["positive"], out["negative"]):
        assert pos.endswith(f"{q.subject} is located in") and neg.endswith(f"{q.subject} is located in")
        for line in _demo_lines(pos) + _demo_lines(neg):
            assert not mentions(line, q.obj), (q, line)
        # the same subjects, in the same order, with a different object in every negative line
        ps, ns = _demo_lines(pos), _demo_lines(neg)
        assert [p.rsplit(" ", 1)[0] for p in ps] == [n.rsplit(" ", 1)[0] for n in ns]
        assert all(p != n for p, n in zip(ps, ns))
    asia = [p for q, p in zip(queries, out["positive"]) if q.obj == "Asia"]
    assert all("Asia Minor Town" not in p for p in asia)       # a subject that mentions the answer is excluded too
    with pytest.raises(ValueError, match="fewer than shots"):
        lama_prompts(facts, facts[:1], 4, random.Random(0))     # only 4 eligible facts for an Asia query, and one
    with pytest.raises(ValueError, match="shots"):               # of them mentions Asia
        lama_prompts(facts, facts[:1], 0, random.Random(0))
    with pytest.raises(ValueError, match="answer_key"):
        lama_prompts(facts, facts[:1], 1, random.Random(0), answer_key="first token")
    with pytest.raises(ValueError, match="P2"):
        lama_prompts(facts, _facts("P2", [("Oslo", "Europe")]), 1, random.Random(0))


def test_answer_key_excludes_objects_with_the_same_first_token():
    facts = _facts("P1", [("A", "New York"), ("B", "New Zealand"), ("C", "Paris"), ("D", "Rome"), ("E", "Oslo")])
    first_word = lambda o: o.split()[0]
    out = lama_prompts(facts, facts[:1], 3, random.Random(0), answer_key=first_word)
    assert "New Zealand" not in out["positive"][0] and "New" not in out["negative"][0].rsplit("\n", 1)[0]
    plain = [lama_prompts(facts, facts[:1], 3, random.Random(s))["positive"][0] for s in range(20)]
    assert any("New Zealand" in p for p in plain)               # without the key, the other "New ..." may appear


def test_shipped_relations_prompts_are_answer_free():
    if data.data_dir() is None:
        pytest.skip("no local data directory")
    facts = data.load_facts(["P30", "P140", "P407", "P1412"])   # heavy majorities: Antarctica, Islam, English
    rng = random.Random(0)
    for rel in ("P30", "P140", "P407", "P1412"):
        pool = [f for f in facts if f.relation == rel]
        queries = rng.sample(pool, 25)
        out = lama_prompts(pool, queries, 4, rng)
        for q, pos, neg in zip(queries, out["positive"], out["negative"]):
            lines = _demo_lines(pos) + _demo_lines(neg)
            assert len(lines) == 8 and not any(mentions(line, q.obj) for line in lines), (rel, q.obj)


def test_fact_states_majority_baseline_and_prompts(tiny, tmp_path):  # noqa: F811
    from cgar_src.tasks.data import first_token_ids
    from cgar_src.tasks.icl import fact_states

    if data.data_dir() is None:
        pytest.skip("no local data directory")
    rels = ["P30", "P1412"]
    fs = fact_states(tiny, rels, n_facts=4, shots=2, seed=3, cache_root=tmp_path, progress=False)
    assert fs.objects is not None and len(fs.objects) == 8 and fs.majority_ids.shape == (8,)
    assert fs.object_ids.tolist() == first_token_ids(tiny.tokenizer, fs.objects)
    facts = data.load_facts(rels)
    for i, (rel, obj) in enumerate(zip(fs.relations, fs.objects)):
        # no demonstration line mentions the query's object, in either prompt
        for kind in ("positive", "negative"):
            assert not any(mentions(line, obj) for line in _demo_lines(fs.prompts[kind][i]))
        # the majority answer is the most frequent first token of the relation's facts without this one
        toks = first_token_ids(tiny.tokenizer, [f.obj for f in facts if f.relation == rel])
        counts = torch.bincount(torch.tensor(toks), minlength=int(max(toks)) + 1)
        counts[fs.object_ids[i]] -= 1
        assert counts[fs.majority_ids[i]] == counts.max()
    # the context mask: other facts of the same relation whose demonstrations never mention fact i's object
    for i in range(8):
        for j in range(8):
            demo = _demo_lines(fs.prompts["positive"][j]) + _demo_lines(fs.prompts["negative"][j])
            free = fs.relations[i] == fs.relations[j] and i != j and not any(mentions(x, fs.objects[i]) for x in demo)
            assert bool(fs.context_mask[i, j]) == free
    assert fs.context_mask.any(1).all()
