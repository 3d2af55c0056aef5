r"""One demonstration set shared by every query: the protocol of Zhao et al. (2021).

A design where each query draws its own demonstrations forwards all of them again with every k-shot prompt. Here
(``cgar_src.tasks.icl.task_states``, the book's chapters, and the ``robust`` profile's bundles), for each (dataset, template, seed, shots, label mode), ONE balanced set of
``shots`` demonstrations per class is drawn from the dataset's demonstration split and shared by all queries, as in
Zhao et al. (2021), "Calibrate before use" (ICML), section 5: a prompt is the set's prefix followed by the query, so
the prefix's keys and values can be computed once (``cgar_src.lm.prefix.prefix_states``).

The draw uses ``cgar_src.tasks.data.sample_demos`` (``shots`` of each class, shuffled) with a generator seeded by
(dataset, shots, seed) only: every template sees the same texts in the same order, so templates are compared on the
same evidence. ``label_mode="random"`` shows the same texts with a uniformly random permutation
:math:`\pi` of the set's true labels, :math:`\tilde y_j = y_{\pi(j)}`: the same label words, the same class balance,
the same texts (a control in the spirit of Min et al. 2022; for small sets the permutation may leave some labels, or
all, in place, and :attr:`DemoSet.n_kept` says how many). Texts given as ``exclude`` (the queries) are never drawn;
:func:`leaked_queries` and :func:`check_no_leakage` verify it.
"""
from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass

from .._validate import int_in_range
from .data import TASKS, Example, load_examples, sample_demos
from .templates import DEFAULT_TEMPLATE, Template, get_template

__all__ = ["DemoSet", "draw_demo_set", "demo_set_from_pool", "leaked_queries", "check_no_leakage", "normalise_text",
           "PROTOCOL", "LABEL_MODES"]

#: how demonstrations are labelled: their true labels, or a random permutation of them (a control)
LABEL_MODES = ("true", "random")

PROTOCOL = "one balanced demonstration set shared by all queries (Zhao et al. 2021)"


def normalise_text(text: str) -> str:
    """Whitespace collapsed and case folded: two texts that differ only there are the same example for the
    leakage check and for ``exclude``."""
    return " ".join(text.split()).casefold()


@dataclass(frozen=True)
class DemoSet:
    """A demonstration set: ``examples`` in prompt order with the labels shown (``true_labels``: their true
    labels), ``order`` their row numbers in the demonstration split ``split``, drawn with ``seed``; ``shots`` per
    class. :meth:`prefix` and :meth:`prompt` format it with the template ``template`` of ``dataset``."""

    dataset: str
    template: str
    split: str
    seed: int
    shots: int
    label_mode: str
    examples: tuple[Example, ...]
    true_labels: tuple[int, ...]
    order: tuple[int, ...]

    @property
    def template_obj(self) -> Template:
        return get_template(self.dataset, self.template)

    @property
    def labels(self) -> tuple[int, ...]:
        """The labels shown in the prompt, in prompt order."""
        return tuple(e.label for e in self.examples)

    @property
    def n_kept(self) -> int:
        """How many shown labels equal the true ones (all of them for ``label_mode="true"``)."""
        return sum(a == b for a, b in zip(self.labels, self.true_labels))

    def identity(self) -> dict:
        """Everything that determines the prompts built from this set, as JSON-ready values, for a cache key: the
        protocol, dataset, split, template (name, pattern, header, label words), seed, shots, label mode, the rows
        drawn in prompt order, the labels shown and the sha256 of the texts."""
        t = self.template_obj
        texts = hashlib.sha256("\x00".join(e.text for e in self.examples).encode("utf-8")).hexdigest()
        return {"protocol": PROTOCOL, "dataset": self.dataset, "demo_split": self.split, "template": self.template,
                "pattern": t.pattern, "header": t.header, "label_words": list(t.label_words), "seed": self.seed,
                "shots": self.shots, "label_mode": self.label_mode, "order": list(self.order),
                "labels": list(self.labels), "texts_sha256": texts}

    def key(self) -> str:
        """A stable short key: the first 16 hex digits of the sha256 of :meth:`identity` as sorted JSON."""
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    def prompt(self, query: str) -> str:
        """The full prompt of ``query``: the template's header, the demonstrations with their shown labels, the query
        (``Template.prompt``; for the ``book`` template, ``data.icl_prompt``)."""
        return self.template_obj.prompt(query, self.examples)

    def prefix(self) -> str:
        """The part of every prompt before the query's own part: ``prefix() + query_part(q) == prompt(q)``."""
        return self.template_obj.split("", self.examples)[0]

    def query_part(self, query: str) -> str:
        """The query's own part of its prompt (see :meth:`~cgar_src.tasks.templates.Template.split`)."""
        return self.template_obj.split(query, self.examples)[1]


def demo_set_from_pool(pool: list[Example], *, dataset: str, split: str, template: str = DEFAULT_TEMPLATE,
                       seed: int = 0, shots: int, label_mode: str = "true",
                       exclude: Iterable[str] = ()) -> DemoSet:
    """Draw the set from ``pool`` (the rows of the demonstration split ``split``; see :func:`draw_demo_set`)."""
    if dataset not in TASKS:
        raise ValueError(f"dataset must be one of {sorted(TASKS)}, got {dataset!r}")
    get_template(dataset, template)
    int_in_range(seed, "seed", 0)
    int_in_range(shots, "shots", 0, note=" (demonstrations per class)")
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
    if isinstance(exclude, str):
        raise ValueError("exclude must be an iterable of texts (e.g. the queries' texts), not one string")
    banned = {normalise_text(t) for t in exclude}
    row = {id(e): i for i, e in enumerate(pool)}
    allowed = [e for e in pool if normalise_text(e.text) not in banned]
    # one generator per (dataset, shots, seed): independent of the template and of the label mode
    rng = random.Random(f"cgar-demo-set|{dataset}|{shots}|{seed}")
    try:
        drawn = sample_demos(allowed, shots, len(TASKS[dataset].label_words), rng)
    except ValueError as err:
        raise ValueError(f"shots={shots} for {dataset}: {err}") from err
    true = tuple(e.label for e in drawn)
    shown = list(true)
    if label_mode == "random":
        random.Random(f"cgar-demo-labels|{dataset}|{shots}|{seed}").shuffle(shown)
    return DemoSet(dataset=dataset, template=template, split=split, seed=seed, shots=shots, label_mode=label_mode,
                   examples=tuple(Example(e.text, y) for e, y in zip(drawn, shown)), true_labels=true,
                   order=tuple(row[id(e)] for e in drawn))


def draw_demo_set(dataset: str, *, template: str = DEFAULT_TEMPLATE, seed: int = 0, shots: int,
                  label_mode: str = "true", exclude: Iterable[str] = (), root=None) -> DemoSet:
    """ONE balanced demonstration set of ``dataset``: ``shots`` examples of each class from its demonstration split
    (``data.load_examples``; ``root`` as there), shuffled (``data.sample_demos``), never a text of ``exclude`` (pass
    the queries' texts; compared by :func:`normalise_text`). Deterministic given (dataset, shots, seed); the
    template only formats. ``label_mode="random"`` permutes the set's true labels (module docstring)."""
    if dataset not in TASKS:
        raise ValueError(f"dataset must be one of {sorted(TASKS)}, got {dataset!r}")
    split = TASKS[dataset].demo_split
    return demo_set_from_pool(load_examples(dataset, split, root=root), dataset=dataset, split=split,
                              template=template, seed=seed, shots=shots, label_mode=label_mode, exclude=exclude)


def leaked_queries(demo_set: DemoSet, queries: Iterable[Example | str]) -> list[int]:
    """Positions of the queries whose text (by :func:`normalise_text`) is one of the set's demonstrations."""
    texts = {normalise_text(e.text) for e in demo_set.examples}
    return [i for i, q in enumerate(queries) if normalise_text(q.text if isinstance(q, Example) else q) in texts]


def check_no_leakage(demo_set: DemoSet, queries: Iterable[Example | str]) -> None:
    """Raise ValueError when a query appears in its own demonstration set (every query shares the set)."""
    queries = list(queries)
    bad = leaked_queries(demo_set, queries)
    if bad:
        q = queries[bad[0]]
        text = q.text if isinstance(q, Example) else q
        raise ValueError(f"{len(bad)} queries appear in the demonstration set {demo_set.key()}, e.g. query {bad[0]}: "
                         f"{text[:60]!r}; draw the set with exclude=the queries' texts")
