"""Datasets and prompts for the transformer chapters: SST-2, AG-News, TREC (6 coarse classes), LAMA T-REx.

Records come from the repository's ``data/`` folder (``cgar_src.tasks.datafiles``: every file checked against its sha256
on first use), or from another copy with the same layout (``root`` argument, else ``$CGAR_DATA_DIR``). The Hugging
Face hub is an explicit option only (``root="hub"`` or ``CGAR_DATA_DIR=hub``, parquet at the revisions of
``cgar_src.tasks.datafiles.HUB``); its copies come from other sources in another order, so samples differ. Templates map a text to a prompt whose
continuation is a label word; each label word's first token must be distinct for the model's tokenizer.
"""
from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Example", "Fact", "TASKS", "Task", "data_dir", "load_examples", "load_facts", "first_token_ids", "label_token_ids",
           "icl_prompt", "sample_demos", "lama_prompts", "majority_share", "mentions",
           "LAMA_MAX_MAJORITY_SHARE"]


@dataclass(frozen=True)
class Example:
    text: str
    label: int


@dataclass(frozen=True)
class Fact:
    relation: str
    template: str
    subject: str
    obj: str
    split: str


@dataclass(frozen=True)
class Task:
    """A classification task: its template (``{text}`` then the label word), label words and splits."""

    name: str
    template: str
    label_words: tuple[str, ...]
    demo_split: str
    query_split: str
    hub_id: str
    hub_text: str
    hub_label: str


TASKS = {
    "sst2": Task("sst2", "Review: {text}\nSentiment:", ("negative", "positive"), "train", "test",
                 "SetFit/sst2", "text", "label"),
    "agnews": Task("agnews", "Article: {text}\nTopic:", ("World", "Sports", "Business", "Technology"),
                   "test-even", "test-odd", "fancyzhx/ag_news", "text", "label"),
    "trec": Task("trec", "Question: {text}\nAnswer type:",
                 ("Abbreviation", "Entity", "Description", "Person", "Location", "Number"), "train", "test",
                 "CogComp/trec", "text", "coarse_label"),
}
_TREC_COARSE = ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")  # the hub's coarse_label order


def data_dir(path: str | os.PathLike | None = None) -> Path | None:
    """The data directory to read: ``path``, else ``$CGAR_DATA_DIR``, else the repository's ``data/`` (the copies
    the book's outputs come from). ``"hub"`` (as ``path`` or ``$CGAR_DATA_DIR``) returns None: the Hugging Face hub,
    whose copies give other samples."""
    from cgar_src.tasks.datafiles import bundled_dir

    for name, value in (("root", path), ("CGAR_DATA_DIR", os.environ.get("CGAR_DATA_DIR") or None)):
        if value is None:
            continue
        if str(value).strip().lower() == "hub":
            return None
        if not Path(value).is_dir():
            raise ValueError(f"{name}={str(value)!r} is not a directory (a copy of data/, or 'hub')")
        return Path(value)
    return bundled_dir()


def _task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"dataset must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name]


def _local(task: Task, split: str, root: Path) -> list[Example]:
    from cgar_src.tasks.datafiles import open_text  # checks each file's sha256 (once per process)

    if task.name == "sst2":
        fname = {"train": "stsa.binary.train", "test": "stsa.binary.test", "validation": "stsa.binary.dev"}[split]
        rows = (line.rstrip("\n").split(" ", 1) for line in open_text(root, f"sst2/{fname}", encoding="utf-8"))
        return [Example(text, int(lab)) for lab, text in rows]
    if task.name == "agnews":
        with open_text(root, "agnews/test.csv", newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = [Example(f"{r['Title']} {r['Description']}".replace("\\", " "), int(r["Class Index"]) - 1)
                    for r in reader]
        return _parity(rows, split)
    out = []
    for line in open_text(root, f"trec/{split}.txt", encoding="latin-1"):
        label, text = line.rstrip("\n").split(" ", 1)
        out.append(Example(text, _TREC_COARSE.index(label.split(":")[0])))
    return out


def _parity(rows: list[Example], split: str) -> list[Example]:
    """AG-News has only a test split offline: demonstrations from its even rows, queries from its odd rows."""
    return rows[0::2] if split == "test-even" else rows[1::2]


def _hub(task: Task, split: str) -> list[Example]:
    """The explicit online path: the hub's parquet copy at ``cgar_src.tasks.datafiles.HUB``'s revision (other samples)."""
    from datasets import load_dataset

    from cgar_src.tasks.datafiles import HUB

    src = HUB[task.name]
    hub_split = {"test-even": "test", "test-odd": "test"}.get(split, split)
    ds = load_dataset(src.repo, src.config, split=hub_split, revision=src.revision)
    label = next((c for c in (task.hub_label, task.hub_label.replace("_", "-"), "label-coarse")
                  if c in ds.column_names), task.hub_label)  # TREC's parquet names it coarse_label or label-coarse
    rows = [Example(r[task.hub_text].replace("\\", " "), int(r[label])) for r in ds]
    return _parity(rows, split) if task.name == "agnews" else rows


def load_examples(name: str, split: str, *, root: str | os.PathLike | None = None) -> list[Example]:
    """Records of ``name`` (sst2, agnews, trec) for ``split`` (the task's demo_split or query_split)."""
    task = _task(name)
    if split not in (task.demo_split, task.query_split):
        raise ValueError(f"split for {name} must be {task.demo_split!r} or {task.query_split!r}, got {split!r}")
    root = data_dir(root)
    return _local(task, split, root) if root is not None else _hub(task, split)


def load_facts(relations: list[str] | None = None, *, root: str | os.PathLike | None = None) -> list[Fact]:
    """LAMA T-REx facts (``data/lama``; with ``root="hub"``, ``facebook/lama`` config ``trex`` from the hub)."""
    root = data_dir(root)
    if root is not None:
        from cgar_src.tasks.datafiles import open_text  # checks each file's sha256 (once per process)

        rel = {r["relation"]: r["template"]
               for r in map(json.loads, open_text(root, "lama/relations.jsonl", encoding="utf-8"))}
        rows = [json.loads(line) for line in open_text(root, "lama/triples.jsonl", encoding="utf-8")]
        facts = [Fact(r["relation"], rel[r["relation"]], r["sub_label"], r["obj_label"], r["split"]) for r in rows]
    else:
        from datasets import load_dataset

        from cgar_src.tasks.datafiles import HUB

        src = HUB["lama"]
        ds = load_dataset(src.repo, src.config, split="train", revision=src.revision)
        facts = [Fact(r["predicate_id"], r["template"], r["sub_label"], r["obj_label"], "train") for r in ds]
    if relations is not None:
        known = {f.relation for f in facts}
        missing = sorted(set(relations) - known)
        if missing:
            raise ValueError(f"relations not in LAMA T-REx: {missing}")
        facts = [f for f in facts if f.relation in set(relations)]
    return facts


def first_token_ids(tokenizer, words: tuple[str, ...] | list[str]) -> list[int]:
    """First token of " word" (the word as a continuation after a space) for each word."""
    return [tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in words]


def label_token_ids(tokenizer, words: tuple[str, ...] | list[str]) -> list[int]:
    """:func:`first_token_ids` of the label words; raises if two words share their first token."""
    ids = first_token_ids(tokenizer, words)
    if len(set(ids)) != len(ids):
        clash = [w for w, i in zip(words, ids) if ids.count(i) > 1]
        raise ValueError(f"label words {clash} share their first token for this tokenizer; choose other label words")
    return ids


def sample_demos(pool: list[Example], k_per_class: int, n_classes: int, rng: random.Random,
                 exclude: str | None = None) -> list[Example]:
    """Balanced demonstrations: ``k_per_class`` of each class, shuffled, never the query text itself."""
    if k_per_class < 0:
        raise ValueError(f"shots must be >= 0, got {k_per_class}")
    demos = []
    for c in range(n_classes):
        cands = [e for e in pool if e.label == c and e.text != exclude]
        if len(cands) < k_per_class:
            raise ValueError(f"shots={k_per_class} per class exceeds the {len(cands)} demonstrations of class {c}")
        demos += rng.sample(cands, k_per_class)
    rng.shuffle(demos)
    return demos


def icl_prompt(task: Task, query: str, demos: list[Example]) -> str:
    """Demonstrations (each followed by its label word), then the query with the label left blank."""
    shots = [f"{task.template.format(text=d.text)} {task.label_words[d.label]}" for d in demos]
    return "\n\n".join(shots + [task.template.format(text=query)])


def _cloze(template: str, subject: str) -> str:
    head = template.split("[Y]")[0].rstrip()
    return head.replace("[X]", subject)


LAMA_MAX_MAJORITY_SHARE = 0.30  # chapter 09's rule: no object may hold more than this share of a relation's facts


def majority_share(values: list) -> tuple[object, float]:
    r"""The most frequent value of ``values`` (objects of a relation, or their first tokens) and its share
    :math:`\max_o \#\{i : v_i = o\} / n` (ties: the value seen first). A relation whose majority share is high
    rewards always answering that object, whatever the context (book chapter ``09_factual_steering``)."""
    from collections import Counter

    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"values must be a non-empty list, got {values!r}")
    value, count = Counter(values).most_common(1)[0]
    return value, count / len(values)


def mentions(text: str, obj: str) -> bool:
    """True when ``obj`` occurs in ``text`` as a whole word or phrase, case-insensitively ("English" in "The
    English Patient", not in "Englishman"): the test that a demonstration line leaks a query's answer."""
    import re

    if not isinstance(obj, str) or not obj.strip():
        raise ValueError(f"obj must be a non-empty string, got {obj!r}")
    return re.search(r"(?<!\w)" + re.escape(obj.strip()) + r"(?!\w)", text, flags=re.IGNORECASE) is not None


def lama_prompts(facts: list[Fact], queries: list[Fact], shots: int, rng: random.Random, *,
                 answer_key=None) -> dict[str, list[str]]:
    """Cloze prompts for each query fact: zero-shot, with ``shots`` true facts of its relation (positive), and with
    the same demonstration subjects paired with wrong objects of the relation (negative).

    No demonstration contains the query's answer. A fact of the relation may serve as a demonstration of query q
    only if its answer differs from q's (``answer_key(obj)``, default the object string; the chapter passes the
    object's first token, so that "New York" and "New Zealand" count as the same answer under first-token scoring)
    and neither its subject nor its object :func:`mentions` q's object. A negative demonstration's wrong object is
    drawn uniformly from the relation's distinct objects whose answer differs from both the demonstration's own and
    the query's, and that do not mention q's object."""
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"shots must be an integer >= 1, got {shots!r}")
    key = answer_key if answer_key is not None else (lambda o: o)
    if not callable(key):
        raise ValueError(f"answer_key must be a callable mapping an object string to its answer, got {answer_key!r}")
    by_rel: dict[str, list[Fact]] = {}
    for f in facts:
        by_rel.setdefault(f.relation, []).append(f)
    missing = sorted({q.relation for q in queries} - set(by_rel))
    if missing:
        raise ValueError(f"queries of relations {missing} have no facts to draw demonstrations from")
    keys = {o: key(o) for o in {f.obj for f in facts} | {q.obj for q in queries}}
    objects = {r: sorted({f.obj for f in fs}) for r, fs in by_rel.items()}
    out = {"zero": [], "positive": [], "negative": []}
    for q in queries:
        qk = keys[q.obj]
        pool = [f for f in by_rel[q.relation] if f.subject != q.subject and keys[f.obj] != qk
                and not mentions(f.subject, q.obj) and not mentions(f.obj, q.obj)]
        if len(pool) < shots:
            raise ValueError(f"relation {q.relation} has {len(pool)} facts whose answer differs from the query's "
                             f"({q.obj!r}), fewer than shots = {shots}")
        demos = rng.sample(pool, shots)
        # wrong-object candidates that never give the query's answer away (once per query; same order as before)
        safe = [o for o in objects[q.relation] if keys[o] != qk and not mentions(o, q.obj)]
        wrong = []
        for d in demos:
            objs = [o for o in safe if keys[o] != keys[d.obj]]
            if not objs:
                raise ValueError(f"relation {q.relation} has no wrong object for demonstration {d.subject!r} "
                                 f"(answers other than {d.obj!r} and the query's {q.obj!r})")
            wrong.append(rng.choice(objs))
        cloze = _cloze(q.template, q.subject)
        pos = [f"{_cloze(d.template, d.subject)} {d.obj}." for d in demos]
        neg = [f"{_cloze(d.template, d.subject)} {w}." for d, w in zip(demos, wrong)]
        out["zero"].append(cloze)
        out["positive"].append("\n".join(pos + [cloze]))
        out["negative"].append("\n".join(neg + [cloze]))
    return out
