"""Zero-shot and in-context states of a classification task, in one call (book: the transformer chapters).

``task_states`` samples the queries, builds the zero-shot prompt and the k-shot prompt of every query (k
demonstrations per class, balanced, seeded, never the query itself), validates everything before any forward
pass, and returns cached last-token states of every layer.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import torch

from .cache import cached_states
from ._validate import int_in_range, positive_int
from .data import (TASKS, first_token_ids, icl_prompt, label_token_ids, lama_prompts, load_examples, load_facts,
                   sample_demos)
from .lm import LoadedModel

__all__ = ["TaskStates", "task_states", "LABEL_MODES", "FactStates", "fact_states"]

LABEL_MODES = ("true", "random")


@dataclass
class TaskStates:
    """States ``(P, L+1, d)`` of the zero-shot and k-shot prompts of P queries, their labels and label tokens."""

    h_zero: torch.Tensor
    h_icl: torch.Tensor | None
    labels: torch.Tensor
    label_ids: list[int]
    params: dict
    n_forward: int
    zero_prompts: list[str]
    icl_prompts: list[str] | None


def task_states(lm: LoadedModel, dataset: str, *, n_queries: int, shots: int, seed: int = 0,
                label_mode: str = "true", root=None, cache_root=None, batch_size: int = 8,
                progress: bool = True) -> TaskStates:
    """States for ``n_queries`` queries of ``dataset``; ``shots`` demonstrations per class (0: zero-shot only).
    ``label_mode="random"`` gives the demonstrations random labels (a control)."""
    if dataset not in TASKS:
        raise ValueError(f"dataset must be one of {sorted(TASKS)}, got {dataset!r}")
    positive_int(n_queries, "n_queries")
    int_in_range(shots, "shots", 0, note=" (demonstrations per class)")
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
    task = TASKS[dataset]
    label_ids = label_token_ids(lm.tokenizer, task.label_words)
    queries_all = load_examples(dataset, task.query_split, root=root)
    if n_queries > len(queries_all):
        raise ValueError(f"n_queries={n_queries} exceeds the {len(queries_all)} {task.query_split} examples of {dataset}")
    rng = random.Random(seed)
    queries = rng.sample(queries_all, n_queries)
    zero = [icl_prompt(task, q.text, []) for q in queries]
    icl = None
    if shots:
        pool = load_examples(dataset, task.demo_split, root=root)
        n_classes = len(task.label_words)
        icl = []
        for q in queries:  # every prompt's demonstrations are drawn (and validated) before any forward pass
            demos = sample_demos(pool, shots, n_classes, rng, exclude=q.text)
            if label_mode == "random":
                demos = [type(d)(d.text, rng.randrange(n_classes)) for d in demos]
            icl.append(icl_prompt(task, q.text, demos))
    params = {"dataset": dataset, "split": task.query_split, "demo_split": task.demo_split, "template": task.template,
              "label_words": list(task.label_words), "n_queries": n_queries, "shots": shots, "seed": seed,
              "label_mode": label_mode, "model_id": lm.model_id, "revision": lm.revision, "dtype": lm.dtype}
    zero_states = cached_states(lm, zero, {k: v for k, v in params.items() if k != "shots"} | {"kind": "zero"},
                                cache_root=cache_root, batch_size=batch_size, progress=progress)
    icl_states = (cached_states(lm, icl, params | {"kind": "icl"}, cache_root=cache_root, batch_size=batch_size,
                                progress=progress) if icl else None)
    return TaskStates(h_zero=zero_states.states, h_icl=icl_states.states if icl_states else None,
                      labels=torch.tensor([q.label for q in queries]), label_ids=label_ids, params=params,
                      n_forward=zero_states.n_forward + (icl_states.n_forward if icl_states else 0),
                      zero_prompts=zero, icl_prompts=icl)


@dataclass
class FactStates:
    """States ``(P, L+1, d)`` of LAMA cloze prompts: zero-shot, after ``shots`` true facts of the same relation
    (positive) and after the same subjects with wrong objects (negative); per fact its relation and the first token
    of its object."""

    h_zero: torch.Tensor
    h_pos: torch.Tensor
    h_neg: torch.Tensor
    relations: list[str]
    object_ids: torch.Tensor
    params: dict
    n_forward: int


def fact_states(lm: LoadedModel, relations: list[str], *, n_facts: int, shots: int, seed: int = 0, root=None,
                cache_root=None, batch_size: int = 8, progress: bool = True) -> FactStates:
    """States for ``n_facts`` seeded facts of each relation (book chapter ``09_factual_steering``)."""
    int_in_range(n_facts, "n_facts", 2, note=" (facts per relation)")
    positive_int(shots, "shots")
    if not relations or len(set(relations)) != len(relations):
        raise ValueError(f"relations must be a non-empty list of distinct LAMA relation ids, got {relations!r}")
    facts = load_facts(relations, root=root)
    rng = random.Random(seed)
    prompts = {"zero": [], "positive": [], "negative": []}
    rel_of, objs = [], []
    for r in relations:
        pool = [f for f in facts if f.relation == r]
        if n_facts > len(pool):
            raise ValueError(f"n_facts={n_facts} exceeds the {len(pool)} facts of relation {r}")
        queries = rng.sample(pool, n_facts)
        for kind, ps in lama_prompts(pool, queries, shots, rng).items():
            prompts[kind] += ps
        rel_of += [r] * n_facts
        objs += [q.obj for q in queries]
    object_ids = torch.tensor(first_token_ids(lm.tokenizer, objs))
    params = {"dataset": "lama-trex", "relations": list(relations), "n_facts": n_facts, "shots": shots, "seed": seed,
              "model_id": lm.model_id, "revision": lm.revision, "dtype": lm.dtype}
    states, n_forward = {}, 0
    for kind, ps in prompts.items():
        cs = cached_states(lm, ps, params | {"kind": kind}, cache_root=cache_root, batch_size=batch_size,
                           progress=progress)
        states[kind], n_forward = cs.states, n_forward + cs.n_forward
    return FactStates(h_zero=states["zero"], h_pos=states["positive"], h_neg=states["negative"], relations=rel_of,
                      object_ids=object_ids, params=params, n_forward=n_forward)
