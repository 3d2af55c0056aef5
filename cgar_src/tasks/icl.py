"""Zero-shot and in-context states of a classification task, in one call (book: the transformer chapters).

Two designs:

- ``task_states`` (the per-query design, used by the book's chapters 07-12, whose stored outputs depend on it):
  every query draws its own k demonstrations per class (balanced, seeded, never the query itself), so each k-shot
  prompt is forwarded whole, and its content-free "twin" reuses its keys and values. Kept because the chapters'
  context vectors average over many demonstration sets, one per query.
- ``shared_task_states`` (the protocol of Zhao et al. 2021, for studies at scale such as the ``robust`` profile's
  bundles): ONE balanced demonstration set per (dataset, template, seed, shots, label mode)
  (``cgar_src.tasks.demos``), shared by all queries; the set's keys and values are computed once
  (``cgar_src.lm.prefix``) and the content-free prompt is one prompt per set. The set is part of the cache key.

Both validate everything before any forward pass and return cached last-token states of every layer.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .._validate import boolean, int_in_range, positive_int
from ..lm import LoadedModel, check_context_window
from ..lm.cache import cached_prefix_states, cached_states, cached_twin_states
from .data import (
    TASKS,
    first_token_ids,
    icl_prompt,
    label_token_ids,
    lama_prompts,
    load_examples,
    load_facts,
    sample_demos,
)
from .demos import LABEL_MODES, PROTOCOL, DemoSet, check_no_leakage, draw_demo_set
from .templates import DEFAULT_TEMPLATE, get_template, label_token_report

__all__ = ["TaskStates", "task_states", "LABEL_MODES", "CONTENT_FREE_INPUT", "FactStates", "fact_states",
           "SharedTaskStates", "shared_task_states", "sample_query_rows"]

CONTENT_FREE_INPUT = "N/A"  #: the content-free input of contextual calibration (Zhao et al. 2021)


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
    h_cf: torch.Tensor | None = None
    cf_prompts: list[str] | None = None


def task_states(lm: LoadedModel, dataset: str, *, n_queries: int, shots: int, seed: int = 0,
                label_mode: str = "true", root=None, cache_root=None, batch_size: int = 8,
                progress: bool = True, content_free: bool = False) -> TaskStates:
    """States for ``n_queries`` queries of ``dataset``; ``shots`` demonstrations per class (0: zero-shot only).
    ``label_mode="random"`` gives the demonstrations random labels (a control). ``content_free=True`` also returns
    ``h_cf``: per query, the states of the *content-free* prompt made of that query's own demonstrations followed by
    the template with the input :data:`CONTENT_FREE_INPUT` (one shared prompt when ``shots=0``), the prompt that
    contextual calibration (Zhao et al. 2021) and the gate chapter read the context from. With shots, the content-free
    prompts reuse the in-context prompts' keys and values over the shared demonstrations
    (:func:`cgar_src.lm.cache.cached_twin_states`): their cost is a few tokens each, not a second pass over the
    demonstrations."""
    if dataset not in TASKS:
        raise ValueError(f"dataset must be one of {sorted(TASKS)}, got {dataset!r}")
    positive_int(n_queries, "n_queries")
    int_in_range(shots, "shots", 0, note=" (demonstrations per class)")
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
    boolean(content_free, "content_free")
    task = TASKS[dataset]
    label_ids = label_token_ids(lm.tokenizer, task.label_words)
    queries_all = load_examples(dataset, task.query_split, root=root)
    if n_queries > len(queries_all):
        raise ValueError(f"n_queries={n_queries} exceeds the {len(queries_all)} {task.query_split} examples of {dataset}")
    rng = random.Random(seed)
    queries = rng.sample(queries_all, n_queries)
    zero = [icl_prompt(task, q.text, []) for q in queries]
    icl, cf = None, [icl_prompt(task, CONTENT_FREE_INPUT, [])] * n_queries if content_free else None
    if shots:
        pool = load_examples(dataset, task.demo_split, root=root)
        n_classes = len(task.label_words)
        icl, cf = [], [] if content_free else None
        for q in queries:  # every prompt's demonstrations are drawn (and validated) before any forward pass
            demos = sample_demos(pool, shots, n_classes, rng, exclude=q.text)
            if label_mode == "random":
                demos = [type(d)(d.text, rng.randrange(n_classes)) for d in demos]
            icl.append(icl_prompt(task, q.text, demos))
            if content_free:
                cf.append(icl_prompt(task, CONTENT_FREE_INPUT, demos))
    params = {"dataset": dataset, "split": task.query_split, "demo_split": task.demo_split, "template": task.template,
              "label_words": list(task.label_words), "n_queries": n_queries, "shots": shots, "seed": seed,
              "label_mode": label_mode, **lm.identity}
    check_context_window(lm, zero + (icl or []) + (cf if content_free and shots else []),
                         f"{dataset}, {shots}-shot, {label_mode} labels")
    # zero-shot prompts do not depend on the shots or on how demonstrations are labelled: one entry for all of them
    zero_meta = {k: v for k, v in params.items() if k not in ("shots", "label_mode")} | {"kind": "zero"}
    zero_states = cached_states(lm, zero, zero_meta,
                                cache_root=cache_root, batch_size=batch_size, progress=progress)
    icl_states = cf_states = None
    cf_meta = (params if shots else zero_meta) | {"kind": "content-free", "content_free_input": CONTENT_FREE_INPUT}
    if content_free and icl and len(set(icl)) == len(icl) and len(set(cf)) == len(cf):
        # each content-free prompt shares its query's demonstrations: computed from the in-context prompt's keys and
        # values over that prefix (cache.cached_twin_states), so the demonstrations run once
        icl_states, cf_states = cached_twin_states(lm, icl, params | {"kind": "icl"}, cf, cf_meta,
                                                   cache_root=cache_root, batch_size=batch_size, progress=progress)
    else:
        icl_states = (cached_states(lm, icl, params | {"kind": "icl"}, cache_root=cache_root, batch_size=batch_size,
                                    progress=progress) if icl else None)
        if content_free:
            cf_states = cached_states(lm, cf, cf_meta, cache_root=cache_root, batch_size=batch_size,
                                      progress=progress)
    n_forward = sum(s.n_forward for s in (zero_states, icl_states, cf_states) if s is not None)
    return TaskStates(h_zero=zero_states.states, h_icl=icl_states.states if icl_states else None,
                      labels=torch.tensor([q.label for q in queries]), label_ids=label_ids, params=params,
                      n_forward=n_forward, zero_prompts=zero, icl_prompts=icl,
                      h_cf=cf_states.states if cf_states else None, cf_prompts=cf)


def sample_query_rows(n_total: int, n_queries: int, seed: int) -> list[int]:
    """Rows of the query split: ``random.Random(seed).sample(range(n_total), n_queries)``, the same queries, in the
    same order, as :func:`task_states` samples with that seed (``random.sample`` draws positions whatever the
    population holds)."""
    return random.Random(seed).sample(range(n_total), n_queries)


@dataclass
class SharedTaskStates:
    """States ``(Q, L+1, d)`` of the prompts ``demo_set.prompt(q)`` of Q queries, all sharing ``demo_set``; ``h_cf``
    ``(L+1, d)``: the set's content-free prompt (its demonstrations, then the template with
    :data:`CONTENT_FREE_INPUT`). ``query_rows``: the queries' rows in the query split; ``label_ids``: the first tokens
    of the template's label words; ``tokens``: real tokens forwarded in this call (0 with a warm cache)."""

    h: torch.Tensor
    h_cf: torch.Tensor | None
    labels: torch.Tensor
    query_rows: list[int]
    label_ids: list[int]
    demo_set: DemoSet
    params: dict
    n_forward: int
    tokens: int
    prompts: list[str]
    cf_prompt: str | None


def shared_task_states(lm: LoadedModel, dataset: str, *, n_queries: int, shots: int, seed: int = 0,
                       template: str = DEFAULT_TEMPLATE, label_mode: str = "true", query_seed: int = 0, root=None,
                       cache_root=None, batch_size: int = 8, max_batch_tokens: int | None = None,
                       progress: bool = True, content_free: bool = True) -> SharedTaskStates:
    """States of ``n_queries`` queries of ``dataset`` (sampled with ``query_seed``: :func:`sample_query_rows`, the
    same queries for every seed, template and shot count, so that they can be paired) under ONE demonstration set
    (:func:`cgar_src.tasks.demos.draw_demo_set` with ``seed``, ``shots`` per class, ``label_mode``, the queries
    excluded and checked for leakage) formatted by the template ``template``. The set's prefix is forwarded once
    (:func:`cgar_src.lm.cache.cached_prefix_states`; with ``shots=0`` the prefix is the template's header, or
    nothing); with ``content_free`` the set's content-free prompt rides in the same call as one more query. The cache
    key holds the set's identity (rows, shown labels, seed, template) and the model's. Label words are scored by
    their first token (``templates.label_token_report``: refused when two share it; the report is in ``params``)."""
    if dataset not in TASKS:
        raise ValueError(f"dataset must be one of {sorted(TASKS)}, got {dataset!r}")
    positive_int(n_queries, "n_queries")
    int_in_range(shots, "shots", 0, note=" (demonstrations per class)")
    int_in_range(seed, "seed", 0)
    int_in_range(query_seed, "query_seed", 0)
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
    boolean(content_free, "content_free")
    tpl = get_template(dataset, template)
    report = label_token_report(lm.tokenizer, tpl)
    task = TASKS[dataset]
    queries_all = load_examples(dataset, task.query_split, root=root)
    if n_queries > len(queries_all):
        raise ValueError(f"n_queries={n_queries} exceeds the {len(queries_all)} {task.query_split} examples of {dataset}")
    rows = sample_query_rows(len(queries_all), n_queries, query_seed)
    queries = [queries_all[i] for i in rows]
    demo_set = draw_demo_set(dataset, template=template, seed=seed, shots=shots, label_mode=label_mode,
                             exclude=[q.text for q in queries], root=root)
    check_no_leakage(demo_set, queries)
    prefix = demo_set.prefix()
    parts = [demo_set.query_part(q.text) for q in queries]
    cf_part = demo_set.query_part(CONTENT_FREE_INPUT) if content_free else None
    prompts = [prefix + p for p in parts]
    params = {"dataset": dataset, "split": task.query_split, "demo_split": task.demo_split, "template": template,
              "label_words": list(tpl.label_words), "label_tokens": report.summary(), "n_queries": n_queries,
              "query_seed": query_seed, "shots": shots, "seed": seed, "label_mode": label_mode, "design": PROTOCOL,
              "demo_set_key": demo_set.key(), "demo_set": demo_set.identity(), **lm.identity}
    check_context_window(lm, prompts + ([prefix + cf_part] if content_free else []),
                         f"{dataset}, {shots}-shot, {label_mode} labels, template {template}")
    meta = params | {"kind": "shared-prefix", "content_free_input": CONTENT_FREE_INPUT if content_free else None}
    if not shots:   # no demonstrations: the prompts do not depend on the seed or the label mode, one entry for all
        meta = {k: v for k, v in meta.items() if k not in ("seed", "label_mode", "demo_set_key", "demo_set")} | {
            "demo_set": {k: v for k, v in params["demo_set"].items() if k not in ("seed", "label_mode")}}
    cs = cached_prefix_states(lm, prefix, parts + ([cf_part] if content_free else []), meta, cache_root=cache_root,
                              batch_size=batch_size, max_batch_tokens=max_batch_tokens, progress=progress)
    return SharedTaskStates(h=cs.states[:n_queries], h_cf=cs.states[n_queries] if content_free else None,
                            labels=torch.tensor([q.label for q in queries]), query_rows=rows,
                            label_ids=list(report.first_ids), demo_set=demo_set, params=params,
                            n_forward=cs.n_forward, tokens=cs.tokens, prompts=prompts,
                            cf_prompt=prefix + cf_part if content_free else None)


@dataclass
class FactStates:
    """States ``(P, L+1, d)`` of LAMA cloze prompts: zero-shot, after ``shots`` true facts of the same relation
    (positive) and after the same subjects with wrong objects (negative); per fact its relation, object and the
    first token of its object, and the majority baseline's answer (the most frequent first token of the relation's
    other facts in the data, the demonstration pool)."""

    h_zero: torch.Tensor
    h_pos: torch.Tensor
    h_neg: torch.Tensor
    relations: list[str]
    object_ids: torch.Tensor
    params: dict
    n_forward: int
    objects: list[str] | None = None
    majority_ids: torch.Tensor | None = None     # (P,) the pool majority's first token, never counting the fact itself
    prompts: dict[str, list[str]] | None = None  # "zero", "positive", "negative": the prompts of the P facts
    context_mask: torch.Tensor | None = None     # (P, P) bool: fact j's prompts may enter fact i's context vector


def fact_states(lm: LoadedModel, relations: list[str], *, n_facts: int, shots: int, seed: int = 0, root=None,
                cache_root=None, batch_size: int = 8, progress: bool = True) -> FactStates:
    r"""States for ``n_facts`` seeded facts of each relation (book chapter ``09_factual_steering``).

    Demonstrations never contain the query's answer (:func:`cgar_src.tasks.data.lama_prompts` with the object's first
    token as the answer key, or the object itself where that token is only whitespace). ``majority_ids[i]`` is
    :math:`\arg\max_t \#\{f' \ne f_i : \mathrm{tok}(f') = t\}` over the facts of fact i's relation: the constant
    answer a reader would guess from the demonstration pool. ``context_mask[i, j]`` is True when fact j is another
    fact of i's relation and no demonstration line of j's positive or negative prompt mentions i's object
    (:func:`cgar_src.tasks.data.mentions`): a context vector for fact i averaged over those j,
    :math:`\bar c_i = \sum_j M_{ij}(h_j - h_{zero,j}) / \sum_j M_{ij}`, has never seen i's answer either."""
    from collections import Counter

    from .data import mentions

    int_in_range(n_facts, "n_facts", 2, note=" (facts per relation)")
    positive_int(shots, "shots")
    if not relations or len(set(relations)) != len(relations):
        raise ValueError(f"relations must be a non-empty list of distinct LAMA relation ids, got {relations!r}")
    facts = load_facts(relations, root=root)
    distinct = sorted({f.obj for f in facts})
    tok_of = dict(zip(distinct, first_token_ids(lm.tokenizer, distinct)))
    # two objects are the same answer when they share a first token that carries text (a bare-space first token,
    # as from a byte-level tokenizer without merges, says nothing about the answer: then the object string decides)
    answer_of = {o: t if lm.tokenizer.decode([t]).strip() else o for o, t in tok_of.items()}
    rng = random.Random(seed)
    prompts = {"zero": [], "positive": [], "negative": []}
    rel_of, objs, majority = [], [], []
    for r in relations:
        pool = [f for f in facts if f.relation == r]
        if n_facts > len(pool):
            raise ValueError(f"n_facts={n_facts} exceeds the {len(pool)} facts of relation {r}")
        queries = rng.sample(pool, n_facts)
        for kind, ps in lama_prompts(pool, queries, shots, rng, answer_key=answer_of.__getitem__).items():
            prompts[kind] += ps
        counts = Counter(tok_of[f.obj] for f in pool)
        for q in queries:
            counts[tok_of[q.obj]] -= 1           # leave the query fact out of its own baseline
            majority.append(max(sorted(counts), key=counts.__getitem__))
            counts[tok_of[q.obj]] += 1
        rel_of += [r] * n_facts
        objs += [q.obj for q in queries]
    object_ids = torch.tensor([tok_of[o] for o in objs])
    demo_text = ["\n".join(prompts["positive"][j].split("\n")[:-1] + prompts["negative"][j].split("\n")[:-1])
                 for j in range(len(objs))]
    mask = torch.tensor([[rel_of[i] == rel_of[j] and i != j and not mentions(demo_text[j], objs[i])
                          for j in range(len(objs))] for i in range(len(objs))])
    empty = [i for i in range(len(objs)) if not mask[i].any()]
    if empty:
        i = empty[0]
        raise ValueError(f"n_facts={n_facts} is too small: for fact {objs[i]!r} ({rel_of[i]}) every other fact's "
                         f"demonstrations mention its object, so no answer-free context vector exists")
    for kind, ps in prompts.items():
        check_context_window(lm, ps, f"LAMA {kind} prompts, {shots} shots")
    params = {"dataset": "lama-trex", "relations": list(relations), "n_facts": n_facts, "shots": shots, "seed": seed,
              "demonstrations": "answer-free", **lm.identity}
    states, n_forward = {}, 0
    for kind, ps in prompts.items():
        cs = cached_states(lm, ps, params | {"kind": kind}, cache_root=cache_root, batch_size=batch_size,
                           progress=progress)
        states[kind], n_forward = cs.states, n_forward + cs.n_forward
    return FactStates(h_zero=states["zero"], h_pos=states["positive"], h_neg=states["negative"], relations=rel_of,
                      object_ids=object_ids, params=params, n_forward=n_forward, objects=objs,
                      majority_ids=torch.tensor(majority), prompts=prompts, context_mask=mask)
