r"""Named prompt templates for the classification tasks, and the label-word token check.

A template maps an input text x to the prompt :math:`\mathrm{header} + \mathrm{pattern}(x)` whose continuation is a
label word :math:`w_y` (after a space); a k-shot prompt is the header, then the demonstrations
:math:`\mathrm{pattern}(x_j)\ w_{y_j}` and the query's pattern, joined by a blank line
(``cgar_src.tasks.data.icl_prompt`` formats everything after the header, so every template shares the book's
demonstration layout). Each dataset has three templates:

- ``book``: today's template, exactly ``cgar_src.tasks.data.TASKS[dataset]`` (pattern and label words, no header):
  selecting it by name gives the prompts, and so the numbers, of the transformer chapters (chapter 07 onwards).
- ``zhao2021``: the templates of Zhao et al. (2021), "Calibrate before use: improving few-shot performance of
  language models" (ICML), Table 14 and their released prompts: SST-2 "Review: x / Sentiment:" with capitalised
  label words (Negative, Positive); AG-News "Article: x / Answer:" after the instruction "Classify the news articles
  into the categories of World, Sports, Business, and Technology."; TREC "Question: x / Answer Type:" after
  "Classify the questions based on whether their answer type is a Number, Location, Person, Description, Entity, or
  Abbreviation." with those words as labels (their code shortens Abbreviation; we keep the word of the instruction
  and let the first-token rule score it).
- ``min2022``: the manual templates of Min et al. (2022), "Rethinking the role of demonstrations: what makes
  in-context learning work?" (EMNLP), appendix templates: the input alone on its line, then "The sentiment is:"
  and the label word, as for their sentiment datasets (SST-2: negative, positive). Their templates table has no
  entry for AG-News or TREC; ours follow the same pattern ("The topic is:" with AG-News's own class names World,
  Sports, Business, Sci/Tech; "The answer type is:" with lower-case TREC class names, "human" for HUM). Min et al.
  separate examples by three newlines; we keep the book's blank line for every template.

Label words are scored by the first token of " word" (``cgar_src.tasks.data.first_token_ids``);
:func:`label_token_report` says which label words are single tokens for a tokenizer, which are scored by their
first token only (the first-token rule), and whether the first tokens are distinct (required).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .data import TASKS, Example, Task, first_token_ids, icl_prompt

__all__ = ["Template", "TEMPLATES", "TEMPLATE_NAMES", "DEFAULT_TEMPLATE", "get_template", "LabelTokenReport",
           "label_token_report"]

DEFAULT_TEMPLATE = "book"
TEMPLATE_NAMES = ("book", "zhao2021", "min2022")


@dataclass(frozen=True)
class Template:
    """A named template of one dataset: ``header`` (an instruction, once at the start of every prompt, or ""),
    ``pattern`` (with ``{text}``; the label word follows after a space) and ``label_words`` (one per class, in the
    dataset's label order), with ``source`` citing where it comes from."""

    name: str
    dataset: str
    pattern: str
    label_words: tuple[str, ...]
    header: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if self.dataset not in TASKS:
            raise ValueError(f"dataset must be one of {sorted(TASKS)}, got {self.dataset!r}")
        if "{text}" not in self.pattern:
            raise ValueError(f"pattern must contain '{{text}}', got {self.pattern!r}")
        n = len(TASKS[self.dataset].label_words)
        if len(self.label_words) != n or len(set(self.label_words)) != n:
            raise ValueError(f"label_words must be {n} distinct words for {self.dataset}, got {self.label_words!r}")

    @property
    def task(self) -> Task:
        """The dataset's :class:`~cgar_src.tasks.data.Task` with this template's pattern and label words (same
        splits), so that ``data.icl_prompt`` formats the demonstrations and the query."""
        return dataclasses.replace(TASKS[self.dataset], template=self.pattern, label_words=self.label_words)

    def prompt(self, query: str, demos: list[Example] | tuple[Example, ...]) -> str:
        """The header, then ``data.icl_prompt``: the demonstrations, each followed by its label word, and the query
        with the label left blank. For ``book`` this is exactly ``data.icl_prompt(TASKS[dataset], query, demos)``."""
        return self.header + icl_prompt(self.task, query, list(demos))

    def split(self, query: str, demos: list[Example] | tuple[Example, ...]) -> tuple[str, str]:
        """The prompt cut into the part shared by every query (header and demonstrations) and the query's own part:
        ``prefix + rest == prompt(query, demos)``. Whitespace at the cut (the blank line after the last
        demonstration, or after the header) goes to the query's part, so the prefix ends with a label word or the
        header's last word, whose tokens do not merge with what follows (``cgar_src.lm.prefix``'s tokenization rule
        then holds exactly for the default model: tests/test_templates.py)."""
        full = self.prompt(query, demos)
        rest = self.pattern.format(text=query)
        if not full.endswith(rest):  # icl_prompt's layout changed: refuse rather than cut in the wrong place
            raise ValueError("the prompt does not end with the query's pattern; cannot split it")
        prefix = full[:len(full) - len(rest)]
        shared = prefix.rstrip()
        return shared, prefix[len(shared):] + rest


def _book(name: str) -> Template:
    t = TASKS[name]
    return Template("book", name, t.template, t.label_words, "", "cgar_src.tasks.data.TASKS (the book's chapters)")


_ZHAO = "Zhao et al. 2021, Calibrate before use, Table 14"
_MIN = "Min et al. 2022, Rethinking the role of demonstrations, appendix templates"
TEMPLATES: dict[str, dict[str, Template]] = {
    "sst2": {
        "book": _book("sst2"),
        "zhao2021": Template("zhao2021", "sst2", "Review: {text}\nSentiment:", ("Negative", "Positive"), "", _ZHAO),
        "min2022": Template("min2022", "sst2", "{text}\nThe sentiment is:", ("negative", "positive"), "", _MIN),
    },
    "agnews": {
        "book": _book("agnews"),
        "zhao2021": Template("zhao2021", "agnews", "Article: {text}\nAnswer:",
                             ("World", "Sports", "Business", "Technology"),
                             "Classify the news articles into the categories of World, Sports, Business, and "
                             "Technology.\n\n", _ZHAO),
        "min2022": Template("min2022", "agnews", "{text}\nThe topic is:", ("World", "Sports", "Business", "Sci/Tech"),
                            "", _MIN + " (pattern adapted: no AG-News entry)"),
    },
    "trec": {
        "book": _book("trec"),
        "zhao2021": Template("zhao2021", "trec", "Question: {text}\nAnswer Type:",
                             ("Abbreviation", "Entity", "Description", "Person", "Location", "Number"),
                             "Classify the questions based on whether their answer type is a Number, Location, "
                             "Person, Description, Entity, or Abbreviation.\n\n", _ZHAO),
        "min2022": Template("min2022", "trec", "{text}\nThe answer type is:",
                            ("abbreviation", "entity", "description", "human", "location", "number"),
                            "", _MIN + " (pattern adapted: no TREC entry)"),
    },
}


def get_template(dataset: str, name: str = DEFAULT_TEMPLATE) -> Template:
    """The template ``name`` (one of :data:`TEMPLATE_NAMES`) of ``dataset``; ValueError naming the bad one."""
    if dataset not in TEMPLATES:
        raise ValueError(f"dataset must be one of {sorted(TEMPLATES)}, got {dataset!r}")
    if name not in TEMPLATES[dataset]:
        raise ValueError(f"template must be one of {sorted(TEMPLATES[dataset])} for {dataset}, got {name!r}")
    return TEMPLATES[dataset][name]


@dataclass(frozen=True)
class LabelTokenReport:
    """How a tokenizer splits a template's label words (each as the continuation " word"): their token ids, the
    first token of each (what is scored), the words that are multi-token (scored by their first token only) and
    whether the first tokens are distinct (required for scoring)."""

    label_words: tuple[str, ...]
    token_ids: tuple[tuple[int, ...], ...]
    first_ids: tuple[int, ...]

    @property
    def multi_token(self) -> tuple[str, ...]:
        """The label words that take more than one token: scored by the first-token rule."""
        return tuple(w for w, ids in zip(self.label_words, self.token_ids) if len(ids) > 1)

    @property
    def single_token(self) -> bool:
        """True when every label word is exactly one token (the first-token rule is then exact)."""
        return not self.multi_token

    @property
    def distinct(self) -> bool:
        """True when no two label words share their first token."""
        return len(set(self.first_ids)) == len(self.first_ids)

    @property
    def clashes(self) -> tuple[str, ...]:
        """The label words whose first token another label word shares."""
        return tuple(w for w, i in zip(self.label_words, self.first_ids) if self.first_ids.count(i) > 1)

    def summary(self) -> str:
        """One line: single-token, or which words fall under the first-token rule (and any clash)."""
        if self.single_token:
            text = "every label word is a single token"
        else:
            text = f"first-token rule for {', '.join(self.multi_token)} (multi-token)"
        return text + ("" if self.distinct else f"; first tokens clash: {', '.join(self.clashes)}")


def label_token_report(tokenizer, template: Template | tuple[str, ...] | list[str], *,
                       require_distinct: bool = True) -> LabelTokenReport:
    """Tokenize each label word of ``template`` (a :class:`Template` or the words themselves) as " word", without
    special tokens. With ``require_distinct`` (default), raise ValueError naming the words when two share their
    first token (``data.label_token_ids``'s check); multi-token words are reported, not refused: they are scored by
    their first token (``data.first_token_ids``)."""
    words = tuple(template.label_words if isinstance(template, Template) else template)
    if not words or not all(isinstance(w, str) and w for w in words):
        raise ValueError(f"template must be a Template or a non-empty list of label words, got {template!r}")
    ids = tuple(tuple(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in words)
    report = LabelTokenReport(words, ids, tuple(first_token_ids(tokenizer, words)))
    if require_distinct and not report.distinct:
        raise ValueError(f"label words {list(report.clashes)} share their first token for this tokenizer; "
                         "choose other label words")
    return report
