"""The two records every task speaks in: `Example` (one text-to-text pair) and `Task`.

A `Task` knows how to turn one raw row (a dict, as read from a benchmark file or the hub)
into `Example`s, which target strings are valid, and how to score predicted target strings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Callable, Mapping, Sequence

KINDS = ("classification", "regression", "generation")
BENCHMARKS = ("glue", "superglue", "custom", "demo")

#: Score given to a regression prediction that does not parse as a finite number
#: (the released code's `string_to_float` default). STS-B scores lie in [0, 5].
UNPARSABLE_REGRESSION_VALUE = -1.0


class DataError(ValueError):
    """Malformed task data; the message names the file (or hub split) and line."""


@dataclass(frozen=True)
class Example:
    """One text-to-text example.

    `source` is `"<field>: <text> <field>: <text> ..."`, `target` the string a generator
    must produce (the class index as a string, the rounded STS-B score, or an answer).
    `label` is what an encoder head is trained on: the class index (int), the raw score
    (float, regression) or the answer text (generation). `group` ties together the
    examples of one MultiRC question / ReCoRD query; `answers` holds all gold answers of a
    ReCoRD query. `fields` maps each input field to its formatted text (handy for encoders
    that take text pairs); it is not part of equality or hashing.
    """

    source: str
    target: str
    label: int | float | str | None
    group: int | str | None = None
    answers: tuple[str, ...] | None = None
    fields: dict[str, str] = field(default_factory=dict, compare=False)


Formatter = Callable[["Task", Mapping[str, Any]], list[Example]]


@dataclass(frozen=True)
class Task:
    """A task: its input fields, labels, metrics and row formatter.

    `label_names` are the raw label values as the data spells them (index = class id,
    e.g. `("entailment", "not_entailment")`); targets are the class ids as strings.
    `target_step` rounds regression targets (STS-B: 0.2). `formatter` overrides the default
    `"<field>: <text>"` formatting (WSC, MultiRC, ReCoRD).
    """

    name: str
    benchmark: str
    input_fields: tuple[str, ...]
    metric_names: tuple[str, ...]
    kind: str = "classification"
    label_names: tuple[str, ...] | None = None
    label_field: str = "label"
    target_step: float | None = None
    hub: tuple[str, str] | None = None
    formatter: Formatter | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in KINDS:
            problems.append(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.benchmark not in BENCHMARKS:
            problems.append(f"benchmark must be one of {BENCHMARKS}, got {self.benchmark!r}")
        if self.kind == "classification" and not self.label_names:
            problems.append("a classification task needs label_names")
        if not self.input_fields:
            problems.append("input_fields is empty")
        if not self.metric_names:
            problems.append("metric_names is empty")
        if problems:
            raise ValueError(f"invalid task {self.name!r}: " + "; ".join(problems))

    @property
    def is_regression(self) -> bool:
        return self.kind == "regression"

    @property
    def label_texts(self) -> tuple[str, ...] | None:
        """The valid target strings ("0", "1", ...); None for regression/generation."""
        if self.kind != "classification":
            return None
        return tuple(str(i) for i in range(len(self.label_names)))

    @property
    def num_labels(self) -> int | None:
        """Output size of an encoder head: #classes, 1 for regression, None for generation."""
        if self.kind == "classification":
            return len(self.label_names)
        return 1 if self.kind == "regression" else None

    def format(self, raw: Mapping[str, Any]) -> list[Example]:
        """Turn one raw row into examples (several for MultiRC passages and ReCoRD)."""
        formatter = self.formatter or format_fields
        try:
            return formatter(self, raw)
        except KeyError as err:
            raise DataError(f"missing field {err}") from err
        except (TypeError, AttributeError, IndexError) as err:
            raise DataError(f"malformed row for task {self.name!r}: {err}") from err

    def compute_metrics(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        """Score predicted target strings; every metric and `score` (their mean) on 0-100."""
        from .metrics import compute_metrics

        return compute_metrics(self, predictions, examples)

    def to_target(self, output: int | float) -> str:
        """Map an encoder head's output (class index or float) to a target string."""
        if self.kind == "classification":
            index = int(output)
            if index != output or not 0 <= index < len(self.label_names):
                raise ValueError(f"class index {output!r} out of range for {self.name}")
            return str(index)
        if self.kind == "regression":
            return repr(float(output))
        raise ValueError(f"task {self.name!r} is generative; it has no head outputs")

    def to_targets(self, outputs: Sequence[int | float]) -> list[str]:
        """`to_target` over a sequence (accepts numpy arrays)."""
        return [self.to_target(o.item() if hasattr(o, "item") else o) for o in outputs]

    def parse_label(self, value: Any) -> int | float | str:
        """Raw label value -> class index / float score / answer string (DataError if bad)."""
        if self.kind == "classification":
            return label_index(value, self.label_names)
        if self.kind == "regression":
            return parse_score(value)
        if value is None:
            raise DataError("missing target text")
        return str(value)

    def target_for(self, label: int | float | str) -> str:
        """The target string of a parsed label."""
        if self.kind == "regression":
            return round_to_step(label, self.target_step) if self.target_step else repr(float(label))
        return str(label)


def label_index(value: Any, names: Sequence[str]) -> int:
    """Class index of a raw label: its name, a bool (by name, "True"/"true", else False=0, True=1)
    or an index."""
    names = [str(n) for n in names]
    if isinstance(value, bool):  # a JSON true/false: its name first, as the names may list "true" before "false"
        for spelling in (str(value), str(value).lower()):
            if spelling in names:
                return names.index(spelling)
        value = int(value)
    text = str(value).strip()
    if text in names:
        return names.index(text)
    if isinstance(value, int) or text.isdigit():
        index = int(text)
        if 0 <= index < len(names):
            return index
    raise DataError(f"unknown label {value!r} (expected one of {names} or an index below {len(names)})")


def parse_score(value: Any) -> float:
    """A finite float from a raw score, else DataError."""
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise DataError(f"unparsable score {value!r}") from None
    if not math.isfinite(score):
        raise DataError(f"unparsable score {value!r}")
    return score


def round_to_step(value: float | str, step: float = 0.2) -> str:
    """Round to the nearest multiple of `step`, ties upward, e.g. 2.5 -> "2.6", 3.9 -> "4.0".

    Exact decimal arithmetic on the value as written, so 4.1 (a tie on the 0.2 grid) goes
    to "4.2" and never to "4.0" through binary floating-point error. A float is read to 6
    decimals first: the hub's STS-B scores are float32 (4.1 arrives as 4.099999904632568).
    """
    if isinstance(value, float) and math.isfinite(value):
        value = repr(round(value, 6))
    try:
        exact, grid = Decimal(str(value)), Decimal(str(step))
    except InvalidOperation:
        raise DataError(f"unparsable score {value!r}") from None
    multiple = (exact / grid).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    decimals = max(1, -grid.as_tuple().exponent)
    return f"{multiple * grid:.{decimals}f}"


def text_field(raw: Mapping[str, Any], name: str) -> str:
    """The text of one input field (DataError when missing or null)."""
    if name not in raw:
        raise DataError(f"missing field {name!r} (row has {sorted(raw)})")
    value = raw[name]
    if value is None:
        raise DataError(f"field {name!r} is empty")
    return str(value)


def join_fields(fields: Mapping[str, str]) -> str:
    """`"<field>: <text> <field>: <text>"` (the released code's `" ".join`)."""
    return " ".join(f"{name}: {text}" for name, text in fields.items())


def format_fields(task: Task, raw: Mapping[str, Any]) -> list[Example]:
    """Default formatter: the task's input fields in order, one example per row."""
    fields = {name: text_field(raw, name) for name in task.input_fields}
    if task.label_field not in raw:
        raise DataError(f"missing label field {task.label_field!r} (row has {sorted(raw)})")
    label = task.parse_label(raw[task.label_field])
    return [Example(join_fields(fields), task.target_for(label), label, fields=fields)]
