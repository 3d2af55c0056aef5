"""One shared demonstration set per (dataset, template, seed, shots, label mode): cgar_src.tasks.demos."""
import random
from collections import Counter

import pytest

from cgar_src.tasks import data
from cgar_src.tasks.demos import (
    DemoSet,
    check_no_leakage,
    demo_set_from_pool,
    draw_demo_set,
    leaked_queries,
    normalise_text,
)

DATASETS = sorted(data.TASKS)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("shots", [1, 4])
def test_balanced_seeded_and_from_the_demonstration_split(dataset, shots):
    task = data.TASKS[dataset]
    ds = draw_demo_set(dataset, seed=3, shots=shots)
    n = len(task.label_words)
    assert isinstance(ds, DemoSet) and len(ds.examples) == n * shots
    assert Counter(ds.labels) == {c: shots for c in range(n)} and ds.labels == ds.true_labels and ds.n_kept == n * shots
    pool = data.load_examples(dataset, task.demo_split)
    assert ds.split == task.demo_split and [pool[i] for i in ds.order] == list(ds.examples)
    assert len(set(ds.order)) == len(ds.order)                                   # no example twice
    again = draw_demo_set(dataset, seed=3, shots=shots)
    assert again == ds and again.key() == ds.key() and again.identity() == ds.identity()
    other = draw_demo_set(dataset, seed=4, shots=shots)
    assert other.order != ds.order and other.key() != ds.key()
    # the order is shuffled, not grouped by class (sample_demos shuffles): some seed interleaves the classes
    assert any(draw_demo_set(dataset, seed=s, shots=shots).labels != tuple(sorted(ds.labels)) for s in range(10))


@pytest.mark.parametrize("dataset", DATASETS)
def test_random_labels_permute_the_true_labels_of_the_same_texts(dataset):
    true = draw_demo_set(dataset, seed=1, shots=4)
    rand = draw_demo_set(dataset, seed=1, shots=4, label_mode="random")
    assert [e.text for e in rand.examples] == [e.text for e in true.examples] and rand.order == true.order
    assert rand.true_labels == true.labels
    assert sorted(rand.labels) == sorted(true.labels)                           # a permutation: same label words
    assert rand.labels != true.labels and rand.n_kept < len(rand.labels)
    assert rand.key() != true.key() and rand.identity()["label_mode"] == "random"
    assert draw_demo_set(dataset, seed=1, shots=4, label_mode="random") == rand   # seeded
    # over seeds the permutation is uniform: the share of labels left in place is about 1/n_classes, not 0 or 1
    kept = [draw_demo_set(dataset, seed=s, shots=4, label_mode="random").n_kept for s in range(20)]
    share = sum(kept) / (20 * len(rand.labels))
    assert 0.05 < share < 0.75, share


def test_the_template_formats_but_does_not_draw():
    book = draw_demo_set("agnews", template="book", seed=0, shots=2)
    zhao = draw_demo_set("agnews", template="zhao2021", seed=0, shots=2)
    assert zhao.examples == book.examples and zhao.order == book.order and zhao.key() != book.key()
    q = "Stocks rallied on Friday."
    assert book.prompt(q) == data.icl_prompt(data.TASKS["agnews"], q, list(book.examples))   # today's prompts
    assert zhao.prompt(q).startswith("Classify the news articles") and zhao.prompt(q).count("Classify") == 1
    for ds in (book, zhao):
        assert ds.prefix() + ds.query_part(q) == ds.prompt(q)
        assert ds.prefix().endswith(ds.template_obj.label_words[ds.labels[-1]])
    zero = draw_demo_set("sst2", shots=0)
    assert zero.examples == () and zero.prefix() == "" and zero.prompt("x") == "Review: x\nSentiment:"


def test_no_query_in_its_own_demonstration_set():
    task = data.TASKS["sst2"]
    queries = random.Random(0).sample(data.load_examples("sst2", task.query_split), 64)
    ds = draw_demo_set("sst2", seed=0, shots=4, exclude=[q.text for q in queries])
    check_no_leakage(ds, queries)
    assert leaked_queries(ds, queries) == []
    # a query that is a demonstration (up to case and spacing) is caught, by position
    planted = queries[:3] + [data.Example("  " + ds.examples[2].text.upper(), 0)] + queries[3:5]
    assert leaked_queries(ds, planted) == [3]
    with pytest.raises(ValueError, match="queries appear in the demonstration set"):
        check_no_leakage(ds, planted)
    assert leaked_queries(ds, [e.text for e in ds.examples]) == list(range(len(ds.examples)))
    # exclude really removes texts from the draw: exclude the set's own texts and none comes back
    again = draw_demo_set("sst2", seed=0, shots=4, exclude=[e.text for e in ds.examples])
    assert not {normalise_text(e.text) for e in again.examples} & {normalise_text(e.text) for e in ds.examples}


def test_pool_draws_and_bad_input():
    pool = [data.Example(f"text {i}", i % 2) for i in range(10)]
    ds = demo_set_from_pool(pool, dataset="sst2", split="train", seed=0, shots=2, exclude=["TEXT 0", "text 1"])
    assert Counter(ds.labels) == {0: 2, 1: 2} and not {0, 1} & set(ds.order)
    with pytest.raises(ValueError, match="shots"):
        demo_set_from_pool(pool, dataset="sst2", split="train", shots=6)        # 5 per class in the pool
    with pytest.raises(ValueError, match="exclude"):
        demo_set_from_pool(pool, dataset="sst2", split="train", shots=1, exclude="text 0")
    for kwargs, name in [(dict(label_mode="shuffled"), "label_mode"), (dict(template="gpt3"), "template"),
                         (dict(seed=-1), "seed"), (dict(shots=1.5), "shots")]:
        with pytest.raises(ValueError, match=name):
            demo_set_from_pool(pool, dataset="sst2", split="train", **({"shots": 1} | kwargs))
    with pytest.raises(ValueError, match="dataset"):
        draw_demo_set("imdb", shots=1)
