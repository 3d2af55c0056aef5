"""Named templates (cgar_src.tasks.templates): today's template unchanged by name, the literature's, the label-word
token check on the tiny test tokenizer and on the default model's, and the prefix/query split of demo sets."""
import random

import pytest
from test_lm import byte_tokenizer

from cgar_src.tasks import data
from cgar_src.tasks.demos import draw_demo_set
from cgar_src.tasks.templates import (
    DEFAULT_TEMPLATE,
    TEMPLATE_NAMES,
    TEMPLATES,
    Template,
    get_template,
    label_token_report,
)


def _demos(dataset, k=1, seed=0):
    pool = data.load_examples(dataset, data.TASKS[dataset].demo_split)
    return data.sample_demos(pool, k, len(data.TASKS[dataset].label_words), random.Random(seed))


@pytest.mark.parametrize("dataset", sorted(data.TASKS))
def test_book_template_is_todays_and_every_dataset_has_three(dataset):
    assert set(TEMPLATES[dataset]) >= set(TEMPLATE_NAMES) and len(TEMPLATES[dataset]) >= 3
    book = get_template(dataset)
    assert DEFAULT_TEMPLATE == "book" and book.header == ""
    assert book.task == data.TASKS[dataset]                      # same pattern, label words and splits
    demos = _demos(dataset, 2)
    for q in ["a query", "another {braced} query"]:
        assert book.prompt(q, demos) == data.icl_prompt(data.TASKS[dataset], q, demos)
        assert book.prompt(q, []) == data.icl_prompt(data.TASKS[dataset], q, [])
    # the three templates are different prompts of the same task
    prompts = {name: t.prompt("a query", demos) for name, t in TEMPLATES[dataset].items()}
    assert len(set(prompts.values())) == len(prompts)
    for name, t in TEMPLATES[dataset].items():
        assert t.name == name and t.dataset == dataset and t.source
        for ds in (demos, []):
            prefix, rest = t.split("a query", ds)
            assert prefix + rest == t.prompt("a query", ds) and rest.endswith(t.pattern.format(text="a query"))
            assert prefix.endswith(t.label_words[ds[-1].label] if ds else t.header.rstrip())
        p = t.prompt("a query", demos)
        assert p.startswith(t.header) and p.count(t.header or "\x00") == (1 if t.header else 0)
        assert all(f"{t.pattern.format(text=d.text)} {t.label_words[d.label]}" in p for d in demos)


def test_literature_templates_as_published():
    zhao = get_template("sst2", "zhao2021")
    assert zhao.prompt("x", [data.Example("y", 1)]) == "Review: y\nSentiment: Positive\n\nReview: x\nSentiment:"
    assert get_template("trec", "zhao2021").header.startswith("Classify the questions based on whether their answer")
    assert get_template("sst2", "min2022").prompt("x", []) == "x\nThe sentiment is:"
    with pytest.raises(ValueError, match="template"):
        get_template("sst2", "gpt3")
    with pytest.raises(ValueError, match="dataset"):
        get_template("imdb")
    with pytest.raises(ValueError, match="label_words"):
        Template("t", "sst2", "{text}:", ("a", "a"))
    with pytest.raises(ValueError, match="pattern"):
        Template("t", "sst2", "no slot:", ("a", "b"))


def test_label_token_report_on_the_tiny_tokenizer():
    """The byte-level test tokenizer has no merges: every label word is multi-token, and all start with the byte
    of the space, so the first tokens clash."""
    tok = byte_tokenizer()
    t = get_template("sst2")
    with pytest.raises(ValueError, match="share their first token"):
        label_token_report(tok, t)
    r = label_token_report(tok, t, require_distinct=False)
    assert r.multi_token == t.label_words and not r.single_token and not r.distinct
    assert r.token_ids[0] == tuple(tok(" negative", add_special_tokens=False)["input_ids"])
    assert len(r.token_ids[0]) == len(" negative") and r.clashes == t.label_words
    assert "first-token rule" in r.summary() and "clash" in r.summary()
    with pytest.raises(ValueError, match="template"):
        label_token_report(tok, [])


@pytest.fixture(scope="module")
def smol_tokenizer():
    from transformers import AutoTokenizer

    from cgar_src.lm.model import default_model_dir

    return AutoTokenizer.from_pretrained(default_model_dir())


def test_label_tokens_on_the_default_model(smol_tokenizer):
    """Every template's label words have distinct first tokens for SmolLM2; multi-token words are reported."""
    for dataset, ts in TEMPLATES.items():
        for name, t in ts.items():
            r = label_token_report(smol_tokenizer, t)
            assert r.distinct, (dataset, name)
            assert list(r.first_ids) == data.label_token_ids(smol_tokenizer, t.label_words)
            assert set(r.multi_token) == {w for w, ids in zip(t.label_words, r.token_ids) if len(ids) > 1}
            assert r.single_token == all(len(ids) == 1 for ids in r.token_ids)
    assert label_token_report(smol_tokenizer, get_template("sst2")).single_token
    assert "Abbreviation" in label_token_report(smol_tokenizer, get_template("trec")).multi_token


@pytest.mark.parametrize("dataset", sorted(data.TASKS))
def test_demo_set_prefix_tokenizes_apart_on_the_default_model(smol_tokenizer, dataset):
    """The tokenization rule of cgar_src.lm.prefix holds exactly (strict) for every template's split at 0 and 2
    shots: the prefix's own tokens start every full prompt, so nothing moves across the boundary."""
    from cgar_src.lm.prefix import shared_prefix_tokens

    queries = [q.text for q in data.load_examples(dataset, data.TASKS[dataset].query_split)[:16]]
    for name in TEMPLATES[dataset]:
        for shots in (0, 2):
            ds = draw_demo_set(dataset, template=name, shots=shots, exclude=queries)
            shared, rest, n_alone = shared_prefix_tokens(smol_tokenizer, ds.prefix(),
                                                         [ds.query_part(q) for q in queries], strict=True)
            assert len(shared) == n_alone
            assert all(shared + r == smol_tokenizer(ds.prompt(q))["input_ids"] for q, r in zip(queries, rest))
