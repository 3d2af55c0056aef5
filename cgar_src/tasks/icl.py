"""Zero-shot and in-context states of a classification task, in one call (book: the transformer chapters).

One design, the protocol of Zhao et al. (2021): ONE balanced demonstration set per (dataset, template, seed, shots,
label mode) (``cgar_src.tasks.demos``), shared by all queries; the set's keys and values are computed once
(``cgar_src.lm.prefix``) and the content-free prompt is one prompt per set. The set is part of the cache key.
``task_states`` (the chapters) returns the zero-shot and k-shot states of the same queries; ``shared_task_states``
(the ``robust`` profile's bundles) returns one set's states. The queries are drawn with ``query_seed``, so that
every demonstration seed, template and shot count sees the same queries and results can be paired.

Both validate everything before any forward pass and return cached last-token states of every layer.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .._validate import boolean, int_in_range, positive_int
from ..lm import LoadedModel, check_context_window
from ..lm.cache import cached_prefix_states, cached_states
from .data import (
    TASKS,
    first_token_ids,
    lama_prompts,
    load_examples,
    load_facts,
)
from .demos import LABEL_MODES, PROTOCOL, DemoSet, check_no_leakage, draw_demo_set
from .templates import DEFAULT_TEMPLATE, get_template, label_token_report

__all__ = ["TaskStates", "task_states", "LABEL_MODES", "CONTENT_FREE_INPUT", "FactStates", "fact_states",
           "SharedTaskStates", "shared_task_states", "sample_query_rows"]

CONTENT_FREE_INPUT = "N/A"  #: the content-free input of contextual calibration (Zhao et al. 2021)


@dataclass
class TaskStates:
    """States ``(P, L+1, d)`` of the zero-shot and k-shot prompts of P queries, their labels and label tokens, under
    ONE demonstration set ``demo_set`` shared by all P queries (``None`` with zero shots). ``h_cf``: the set's
    content-free prompt, repeated over the P queries (``cf_prompts`` likewise), when asked for."""

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
    demo_set: DemoSet | None = None
    query_rows: list[int] | None = None


def task_states(lm: LoadedModel, dataset: str, *, n_queries: int, shots: int, seed: int = 0,
                label_mode: str = "true", template: str = DEFAULT_TEMPLATE, query_seed: int = 0, root=None,
                cache_root=None, batch_size: int = 8, max_batch_tokens: int | None = None, progress: bool = True,
                content_free: bool = False) -> TaskStates:
    """States of ``n_queries`` queries of ``dataset`` (the same queries for every ``seed``: drawn with
    ``query_seed``, :func:`sample_query_rows`), zero-shot and with ONE balanced demonstration set of ``shots`` per
    class drawn with ``seed`` and shared by all queries (the protocol of Zhao et al. 2021;
    :func:`cgar_src.tasks.demos.draw_demo_set`, queries excluded and checked for leakage). ``label_mode="random"``
    shows the set's texts with a random permutation of its true labels (a control: the same texts, label words and
    class balance). ``content_free=True`` also returns ``h_cf``: the states of the set's content-free prompt (its
    demonstrations, then the template with :data:`CONTENT_FREE_INPUT`), the one prompt per set that contextual
    calibration (Zhao et al. 2021) and the gate chapter read the context from, repeated over the queries.

    The set's keys and values are computed once (:func:`shared_task_states`), so a k-shot query costs about its own
    tokens. Both prompt sets are validated (dataset, sizes, template, label tokens, leakage, context window) before
    any forward pass; the content-free prompt is always computed with its set (one prompt more), so that calls with
    and without ``content_free`` share cache entries."""
    boolean(content_free, "content_free")
    common = dict(n_queries=n_queries, seed=seed, template=template, query_seed=query_seed, root=root)
    plans = [_plan(lm, dataset, shots=0, label_mode="true", **common)]
    if shots:
        plans.append(_plan(lm, dataset, shots=shots, label_mode=label_mode, **common))
    elif label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
    run = dict(cache_root=cache_root, batch_size=batch_size, max_batch_tokens=max_batch_tokens, progress=progress)
    zero, *icl = [_compute(lm, p, **run) for p in plans]
    icl = icl[0] if icl else None
    ctx = icl or zero
    p = len(zero.prompts)
    params = dict(ctx.params)
    if not shots:
        params["label_mode"] = label_mode
    return TaskStates(h_zero=zero.h, h_icl=icl.h if icl else None, labels=zero.labels, label_ids=ctx.label_ids,
                      params=params, n_forward=zero.n_forward + (icl.n_forward if icl else 0),
                      zero_prompts=zero.prompts, icl_prompts=icl.prompts if icl else None,
                      h_cf=ctx.h_cf.unsqueeze(0).repeat(p, 1, 1) if content_free else None,
                      cf_prompts=[ctx.cf_prompt] * p if content_free else None,
                      demo_set=icl.demo_set if icl else None, query_rows=zero.query_rows)


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


@dataclass
class _Plan:
    """Everything ``shared_task_states`` forwards, validated: the prefix, the queries' parts, the cache key's meta."""

    prefix: str
    parts: list[str]
    cf_part: str | None
    meta: dict
    params: dict
    labels: torch.Tensor
    rows: list[int]
    label_ids: list[int]
    demo_set: DemoSet


def _plan(lm: LoadedModel, dataset: str, *, n_queries: int, shots: int, seed: int, template: str, label_mode: str,
          query_seed: int, root, content_free: bool = True) -> _Plan:
    """Validate and build the prompts of :func:`shared_task_states` (no forward pass)."""
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
    params = {"dataset": dataset, "split": task.query_split, "demo_split": task.demo_split, "template": template,
              "label_words": list(tpl.label_words), "label_tokens": report.summary(), "n_queries": n_queries,
              "query_seed": query_seed, "shots": shots, "seed": seed, "label_mode": label_mode, "design": PROTOCOL,
              "demo_set_key": demo_set.key(), "demo_set": demo_set.identity(), **lm.identity}
    check_context_window(lm, [prefix + p for p in parts] + ([prefix + cf_part] if content_free else []),
                         f"{dataset}, {shots}-shot, {label_mode} labels, template {template}")
    meta = params | {"kind": "shared-prefix", "content_free_input": CONTENT_FREE_INPUT if content_free else None}
    if not shots:   # no demonstrations: the prompts do not depend on the seed or the label mode, one entry for all
        meta = {k: v for k, v in meta.items() if k not in ("seed", "label_mode", "demo_set_key", "demo_set")} | {
            "demo_set": {k: v for k, v in params["demo_set"].items() if k not in ("seed", "label_mode")}}
    return _Plan(prefix=prefix, parts=parts, cf_part=cf_part, meta=meta, params=params,
                 labels=torch.tensor([q.label for q in queries]), rows=rows, label_ids=list(report.first_ids),
                 demo_set=demo_set)


def _compute(lm: LoadedModel, plan: _Plan, *, cache_root, batch_size: int, max_batch_tokens: int | None,
             progress: bool) -> SharedTaskStates:
    """The states of a validated plan, from the cache or computed (``cache.cached_prefix_states``)."""
    n = len(plan.parts)
    extra = [plan.cf_part] if plan.cf_part is not None else []
    cs = cached_prefix_states(lm, plan.prefix, plan.parts + extra, plan.meta, cache_root=cache_root,
                              batch_size=batch_size, max_batch_tokens=max_batch_tokens, progress=progress)
    return SharedTaskStates(h=cs.states[:n], h_cf=cs.states[n] if extra else None, labels=plan.labels,
                            query_rows=plan.rows, label_ids=plan.label_ids, demo_set=plan.demo_set,
                            params=plan.params, n_forward=cs.n_forward, tokens=cs.tokens,
                            prompts=[plan.prefix + p for p in plan.parts],
                            cf_prompt=plan.prefix + plan.cf_part if extra else None)


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
    plan = _plan(lm, dataset, n_queries=n_queries, shots=shots, seed=seed, template=template, label_mode=label_mode,
                 query_seed=query_seed, root=root, content_free=content_free)
    return _compute(lm, plan, cache_root=cache_root, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                    progress=progress)


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

    Unlike :func:`task_states`, each fact draws its own demonstrations (the per-query design), kept here because the
    demonstrations must be answer-free for every fact: one set of true facts shared by all queries would contain
    the answers of the facts whose objects it names, and excluding those facts would bias the sample toward rare
    objects.

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
