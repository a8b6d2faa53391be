"""Formatters for the tasks whose rows are not plain `"<field>: <text>"` (PAPER.md §4).

Each accepts both the benchmark's release layout (SuperGLUE jsonl) and the Hugging Face
hub layout of the same row.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

from .base import DataError, Example, Task, join_fields, text_field

# --- WSC ---------------------------------------------------------------------------------


def _span_words(span: str) -> list[str]:
    """The span's words, cleaned as HF's `wsc.fixed` does (newlines, trailing period)."""
    return span.replace("\n", " ").strip().rstrip(".").split()


def _matches_at(words: list[re.Match], i: int, span: list[str]) -> bool:
    """Do the text's words from i on spell `span` (case-insensitive; the last word may carry trailing punctuation)?"""
    if i + len(span) > len(words):
        return False
    found = [w.group().casefold() for w in words[i : i + len(span)]]
    wanted = [w.casefold() for w in span]
    last, rest = found[-1], found[-1][len(wanted[-1]) :]
    # "him" matches "him," but not "himself"
    return found[:-1] == wanted[:-1] and last.startswith(wanted[-1]) and not rest[:1].isalnum()


def locate_span(text: str, span: str, index: int) -> tuple[int, int]:
    """Character range of `span` starting at word `index` of `text`.

    Like the released code (T5's regex) the span is looked up at its word index; like HF's
    `wsc.fixed` the match ignores the case of the text and a trailing period or newline in
    the span. If the index is off, the occurrence with the nearest word index is taken.
    """
    words = list(re.finditer(r"\S+", text))
    span_words = _span_words(span)
    if not span_words:
        raise DataError(f"empty WSC span {span!r}")
    starts = [i for i in range(len(words)) if _matches_at(words, i, span_words)]
    if not starts:
        raise DataError(f"WSC span {span!r} (word {index}) not found in text {text!r}")
    i = min(starts, key=lambda s: (abs(s - index), s))
    last = words[i + len(span_words) - 1]
    return words[i].start(), last.start() + len(span_words[-1])


def mark_spans(text: str, spans: list[tuple[int, int, str]]) -> str:
    """Put `mark` around each (start, end) range: `"a * noun * b # it # c"`."""
    for start, end, mark in sorted(spans, reverse=True):
        text = f"{text[:start]}{mark} {text[start:end]} {mark}{text[end:]}"
    return text


def _span_index(spans: Mapping[str, Any], key: str) -> int:
    value = spans[key]
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).lstrip("-").isdigit():
        raise DataError(f"WSC {key} must be a word index, got {value!r}")
    return int(value)


def format_wsc(task: Task, raw: Mapping[str, Any]) -> list[Example]:
    """WSC: `text: ...` with ` * ` around the noun (span1) and ` # ` around the pronoun (span2)."""
    spans = raw["target"] if isinstance(raw.get("target"), Mapping) else raw
    text = text_field(raw, "text")
    noun = locate_span(text, spans["span1_text"], _span_index(spans, "span1_index"))
    pronoun = locate_span(text, spans["span2_text"], _span_index(spans, "span2_index"))
    fields = {"text": mark_spans(text, [(*noun, "*"), (*pronoun, "#")])}
    label = task.parse_label(raw[task.label_field])
    return [Example(join_fields(fields), str(label), label, fields=fields)]


# --- MultiRC -------------------------------------------------------------------------------


def remove_markup(text: str) -> str:
    """Drop MultiRC's HTML: `<br>` becomes a space, `<b>`/`</b>` disappear."""
    return re.sub(r"<(/)?b>", "", re.sub(r"<br>", " ", text))


def _multirc_example(task: Task, question: str, answer: str, paragraph: str, label: Any, group: str) -> Example:
    fields = {
        "question": remove_markup(question),
        "answer": remove_markup(answer),
        "paragraph": remove_markup(paragraph),
    }
    index = task.parse_label(label)
    return Example(join_fields(fields), str(index), index, group=group, fields=fields)


def format_multirc(task: Task, raw: Mapping[str, Any]) -> list[Example]:
    """MultiRC: one example per answer, grouped by question (group = "paragraph-question").

    Release layout: one row per passage with nested questions and answers. Hub layout:
    one row per answer with `idx = {paragraph, question, answer}`.
    """
    if not isinstance(raw.get("passage"), Mapping):  # hub layout
        idx = raw["idx"]
        group = f"{idx['paragraph']}-{idx['question']}"
        return [_multirc_example(task, raw["question"], raw["answer"], raw["paragraph"], raw["label"], group)]
    paragraph = raw["passage"]["text"]
    return [
        _multirc_example(task, q["question"], a["text"], paragraph, a["label"], f"{raw['idx']}-{q['idx']}")
        for q in raw["passage"]["questions"]
        for a in q["answers"]
    ]


# --- ReCoRD --------------------------------------------------------------------------------


def clean_highlights(passage: str) -> str:
    """Join ReCoRD's `@highlight` lines into the passage as the released code does."""
    passage = re.sub(r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ", passage)
    return re.sub(r"\n@highlight\n", ". ", passage)


def _record_entities(passage: Mapping[str, Any]) -> list[str]:
    """Entity strings of a release-layout passage, duplicates removed, sorted as text: the order
    the TFDS and older Hugging Face `super_glue` builders gave the released code (`sorted(set(...))`;
    newer hub rows keep a set's arbitrary order, so the hub layout is sorted too)."""
    text = passage["text"]
    return sorted({text[e["start"] : e["end"] + 1] for e in passage["entities"]})


def _record_queries(raw: Mapping[str, Any]) -> tuple[str, list[str], list[tuple[str, list[str], str]]]:
    """(passage, entities, [(query, answers, group)]) for either layout."""
    if isinstance(raw.get("passage"), Mapping):  # release layout: one passage, many queries
        queries = [
            (qa["query"], [a["text"] for a in qa.get("answers", [])], f"{raw['idx']}-{qa['idx']}")
            for qa in raw["qas"]
        ]
        return raw["passage"]["text"], _record_entities(raw["passage"]), queries
    idx = raw["idx"]
    group = f"{idx['passage']}-{idx['query']}"
    return raw["passage"], sorted(set(raw["entities"])), [(raw["query"], list(raw["answers"]), group)]


def format_record(task: Task, raw: Mapping[str, Any]) -> list[Example]:
    """ReCoRD: `query: .. entities: a, b passage: ..`, one example per (unique) answer.

    A query without answers (hidden test labels) gives one example with target "".
    """
    passage, entities, queries = _record_queries(raw)
    fields_base = {"entities": ", ".join(entities), "passage": clean_highlights(passage)}
    examples = []
    for query, answers, group in queries:
        answers = sorted(set(answers))
        fields = {"query": query, **fields_base}
        for target in answers or [""]:
            examples.append(Example(join_fields(fields), target, target, group, tuple(answers), fields))
    return examples


# --- rows without labels (prediction) ------------------------------------------------------


def several_per_row(task: Task) -> bool:
    """Can one row of `task` give several examples (MultiRC: one per answer, ReCoRD: one per query)?"""
    return task.formatter in (format_multirc, format_record)


def input_description(task: Task) -> str:
    """What an input row of `task` must hold, for error messages."""
    if task.formatter is format_wsc:
        return (f"{task.name} inputs need text, span1_text, span1_index, span2_text, span2_index "
                "(the spans may also sit under 'target', as in the release files)")
    if task.formatter is format_multirc:
        return (f"{task.name} inputs need question, answer, paragraph (one answer per row), or the release layout: "
                "idx and passage {text, questions [{idx, question, answers [{text}]}]}")
    if task.formatter is format_record:
        return (f"{task.name} inputs need query, entities, passage (one query per row), or the release layout: "
                "idx, passage {text, entities [{start, end}]} and qas [{idx, query}]")
    return f"{task.name} inputs need {', '.join(task.input_fields)}"


def _placeholder_label(task: Task) -> Any:
    if task.kind == "classification":
        return task.label_names[0]
    return 0.0 if task.kind == "regression" else ""


def _without_labels(task: Task, raw: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """A copy of `raw` with a placeholder wherever the formatter reads a label, and whether a
    hub-layout MultiRC/ReCoRD row lacked its `idx` (then given a placeholder too)."""
    row, label = dict(raw), _placeholder_label(task)
    if task.label_field not in task.input_fields:
        row[task.label_field] = label
    release = isinstance(row.get("passage"), Mapping)
    if task.formatter is format_multirc and release:
        questions = row["passage"].get("questions")
        if isinstance(questions, list):
            row["passage"] = {**row["passage"], "questions": [
                {**q, "answers": [{**a, "label": label} if isinstance(a, Mapping) else a for a in q["answers"]]}
                if isinstance(q, Mapping) and isinstance(q.get("answers"), list) else q
                for q in questions]}
    elif task.formatter is format_record:
        if not release:
            row["answers"] = []
        elif isinstance(row.get("qas"), list):
            row["qas"] = [{**qa, "answers": []} if isinstance(qa, Mapping) else qa for qa in row["qas"]]
    no_group = several_per_row(task) and not release and "idx" not in row
    if no_group:
        keys = ("paragraph", "question") if task.formatter is format_multirc else ("passage", "query")
        row["idx"] = dict.fromkeys(keys, "")
    return row, no_group


def format_unlabeled(task: Task, raw: Mapping[str, Any]) -> list[Example]:
    """Examples of a row without labels (prediction inputs), formatted exactly as training formats them.

    Training's `Task.format` needs a label, so the row goes through it with placeholders: the
    label field (any value given there is ignored), every nested answer's label of a
    release-layout MultiRC passage, and ReCoRD's answers (none, so each query gives one
    example). A hub-layout MultiRC/ReCoRD row may also omit `idx`; its examples then have
    group None. The examples come back with target "" and label None (and no `answers`);
    `source` and `fields` are training's. One row may give several examples (MultiRC: one
    per answer; ReCoRD: one per query), in the formatter's order.

    A row the formatter cannot read raises `DataError` saying what is missing and what the
    task's inputs need.
    """
    if not isinstance(raw, Mapping):
        raise DataError(f"expected an object of fields, got {type(raw).__name__}; {input_description(task)}")
    row, no_group = _without_labels(task, raw)
    try:
        examples = task.format(row)
    except DataError as err:
        # "missing field 'sentence' (row has ['label', 'text'])": the keys listed are the row the user
        # gave, not the placeholders added here (a label the user never wrote)
        message = str(err).replace(f"(row has {sorted(row)})", f"(row has {sorted(raw)})")
        raise DataError(f"{message}; {input_description(task)}") from err
    if not examples:
        raise DataError(f"the row gives no examples (no questions or answers?); {input_description(task)}")
    return [dataclasses.replace(e, target="", label=None, answers=None, group=None if no_group else e.group)
            for e in examples]
