"""Datasets and prompts for the transformer chapters: SST-2, AG-News, TREC (6 coarse classes), LAMA T-REx.

Records come from a local directory (``data_dir`` argument, else ``$CGAR_DATA_DIR``, else ``../shared/data`` beside
the repository) when it exists, and from the Hugging Face hub with ``datasets`` otherwise; both give the same
records for the classification sets (same texts, same label order). Templates map a text to a prompt whose
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
           "icl_prompt", "sample_demos", "lama_prompts"]


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
    """The local data directory if one is configured or present, else None (then the hub is used)."""
    if path is not None:
        p = Path(path)
        if not p.is_dir():
            raise ValueError(f"data_dir {str(p)!r} is not a directory")
        return p
    env = os.environ.get("CGAR_DATA_DIR")
    if env:
        if not Path(env).is_dir():
            raise ValueError(f"CGAR_DATA_DIR={env!r} is not a directory")
        return Path(env)
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    return default if default.is_dir() else None


def _task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"dataset must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name]


def _local(task: Task, split: str, root: Path) -> list[Example]:
    if task.name == "sst2":
        fname = {"train": "stsa.binary.train", "test": "stsa.binary.test", "validation": "stsa.binary.dev"}[split]
        rows = (line.rstrip("\n").split(" ", 1) for line in open(root / "sst2" / fname, encoding="utf-8"))
        return [Example(text, int(lab)) for lab, text in rows]
    if task.name == "agnews":
        with open(root / "agnews" / "test.csv", newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = [Example(f"{r['Title']} {r['Description']}".replace("\\", " "), int(r["Class Index"]) - 1)
                    for r in reader]
        return _parity(rows, split)
    out = []
    for line in open(root / "trec" / f"{split}.txt", encoding="latin-1"):
        label, text = line.rstrip("\n").split(" ", 1)
        out.append(Example(text, _TREC_COARSE.index(label.split(":")[0])))
    return out


def _parity(rows: list[Example], split: str) -> list[Example]:
    """AG-News has only a test split offline: demonstrations from its even rows, queries from its odd rows."""
    return rows[0::2] if split == "test-even" else rows[1::2]


def _hub(task: Task, split: str) -> list[Example]:
    from datasets import load_dataset

    hub_split = {"test-even": "test", "test-odd": "test"}.get(split, split)
    ds = load_dataset(task.hub_id, split=hub_split)
    rows = [Example(r[task.hub_text].replace("\\", " "), int(r[task.hub_label])) for r in ds]
    return _parity(rows, split) if task.name == "agnews" else rows


def load_examples(name: str, split: str, *, root: str | os.PathLike | None = None) -> list[Example]:
    """Records of ``name`` (sst2, agnews, trec) for ``split`` (the task's demo_split or query_split)."""
    task = _task(name)
    if split not in (task.demo_split, task.query_split):
        raise ValueError(f"split for {name} must be {task.demo_split!r} or {task.query_split!r}, got {split!r}")
    root = data_dir(root)
    return _local(task, split, root) if root is not None else _hub(task, split)


def load_facts(relations: list[str] | None = None, *, root: str | os.PathLike | None = None) -> list[Fact]:
    """LAMA T-REx facts (local copy, or ``facebook/lama`` config ``trex`` from the hub)."""
    root = data_dir(root)
    if root is not None:
        rel = {r["relation"]: r["template"] for r in map(json.loads, open(root / "lama" / "relations.jsonl"))}
        rows = [json.loads(line) for line in open(root / "lama" / "triples.jsonl", encoding="utf-8")]
        facts = [Fact(r["relation"], rel[r["relation"]], r["sub_label"], r["obj_label"], r["split"]) for r in rows]
    else:
        from datasets import load_dataset

        ds = load_dataset("facebook/lama", "trex", split="train")
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


def lama_prompts(facts: list[Fact], queries: list[Fact], shots: int, rng: random.Random) -> dict[str, list[str]]:
    """Cloze prompts for each query fact: zero-shot, with ``shots`` true facts of its relation (positive), and with
    the same demonstration subjects paired with wrong objects of the relation (negative)."""
    by_rel: dict[str, list[Fact]] = {}
    for f in facts:
        by_rel.setdefault(f.relation, []).append(f)
    out = {"zero": [], "positive": [], "negative": []}
    for q in queries:
        pool = [f for f in by_rel[q.relation] if f.subject != q.subject]
        if len(pool) < shots + 1:
            raise ValueError(f"relation {q.relation} has {len(pool)} other facts, fewer than shots + 1 = {shots + 1}")
        demos = rng.sample(pool, shots)
        wrong = []
        for d in demos:
            objs = [f.obj for f in pool if f.obj != d.obj]
            wrong.append(rng.choice(objs) if objs else d.obj)
        cloze = _cloze(q.template, q.subject)
        pos = [f"{_cloze(d.template, d.subject)} {d.obj}." for d in demos]
        neg = [f"{_cloze(d.template, d.subject)} {w}." for d, w in zip(demos, wrong)]
        out["zero"].append(cloze)
        out["positive"].append("\n".join(pos + [cloze]))
        out["negative"].append("\n".join(neg + [cloze]))
    return out
