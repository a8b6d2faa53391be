"""Every task's formatter against hand-written expected strings (PAPER.md §4)."""

import pytest

from compacter.tasks import DataError, Example, get_task, round_to_step
from compacter.tasks.formats import clean_highlights, locate_span, remove_markup

# (task, raw row, source, target, label)
SINGLE = [
    ("cola", {"sentence": "The book was read.", "label": 1}, "sentence: The book was read.", "1", 1),
    ("sst2", {"sentence": "a dull , lifeless film ", "label": 0}, "sentence: a dull , lifeless film ", "0", 0),
    ("mrpc", {"sentence1": "He left.", "sentence2": "He went.", "label": 1},
     "sentence1: He left. sentence2: He went.", "1", 1),
    ("qqp", {"question1": "Why?", "question2": "How?", "label": 0}, "question1: Why? question2: How?", "0", 0),
    ("stsb", {"sentence1": "A cat.", "sentence2": "A dog.", "label": 3.9}, "sentence1: A cat. sentence2: A dog.", "4.0", 3.9),
    ("stsb", {"sentence1": "a", "sentence2": "b", "label": "2.500"}, "sentence1: a sentence2: b", "2.6", 2.5),
    ("mnli", {"premise": "P.", "hypothesis": "H.", "label": "neutral"}, "premise: P. hypothesis: H.", "1", 1),
    ("mnli", {"premise": "P.", "hypothesis": "H.", "label": 2}, "premise: P. hypothesis: H.", "2", 2),
    ("qnli", {"question": "Who?", "sentence": "Him.", "label": "not_entailment"}, "question: Who? sentence: Him.", "1", 1),
    ("rte", {"sentence1": "S1.", "sentence2": "S2.", "label": "entailment"}, "sentence1: S1. sentence2: S2.", "0", 0),
    ("wnli", {"sentence1": "S1.", "sentence2": "S2.", "label": "1"}, "sentence1: S1. sentence2: S2.", "1", 1),
    ("boolq", {"question": "is it?", "passage": "It is.", "label": True}, "question: is it? passage: It is.", "1", 1),
    ("cb", {"premise": "P.", "hypothesis": "H.", "label": "neutral"}, "premise: P. hypothesis: H.", "2", 2),
    ("cb", {"premise": "P.", "hypothesis": "H.", "label": "contradiction"}, "premise: P. hypothesis: H.", "1", 1),
    ("copa", {"premise": "It rained.", "choice1": "Wet.", "choice2": "Dry.", "question": "effect", "label": 0},
     "premise: It rained. choice1: Wet. choice2: Dry.", "0", 0),
    ("superglue-rte", {"premise": "P.", "hypothesis": "H.", "label": "not_entailment"}, "premise: P. hypothesis: H.", "1", 1),
    ("wic", {"sentence1": "A bank.", "sentence2": "The bank.", "word": "bank", "label": False},
     "sentence1: A bank. sentence2: The bank. word: bank", "0", 0),
    ("demo", {"sentence": "Not bad at all.", "label": 1}, "sentence: Not bad at all.", "1", 1),
]


@pytest.mark.parametrize("name, raw, source, target, label", SINGLE)
def test_plain_formats(name, raw, source, target, label):
    [example] = get_task(name).format(raw)
    assert (example.source, example.target, example.label) == (source, target, label)
    assert example.group is None and example.answers is None


def test_fields_hold_the_formatted_inputs():
    [example] = get_task("mrpc").format({"sentence1": "a", "sentence2": "b", "label": 0})
    assert example.fields == {"sentence1": "a", "sentence2": "b"}


@pytest.mark.parametrize("score, expected", [
    (0, "0.0"), (5, "5.0"), (3.8, "3.8"), (3.9, "4.0"), (2.5, "2.6"), (2.3, "2.4"), (4.1, "4.2"),
    (0.1, "0.2"), (0.09, "0.0"), (4.75, "4.8"), (1.29, "1.2"), (1.31, "1.4"), (4.999, "5.0"), ("3.800", "3.8"),
])
def test_stsb_rounds_to_nearest_fifth_ties_up(score, expected):
    assert round_to_step(score, 0.2) == expected


def test_stsb_float32_scores_from_the_hub_round_as_written():
    np = pytest.importorskip("numpy")
    for score, expected in [(4.1, "4.2"), (3.1, "3.2"), (0.9, "1.0"), (2.5, "2.6"), (3.8, "3.8")]:
        assert round_to_step(float(np.float32(score)), 0.2) == expected
    [example] = get_task("stsb").format({"sentence1": "a", "sentence2": "b", "label": float(np.float32(4.1))})
    assert example.target == "4.2"


# --- WSC ---

WSC_TEXT = "Mark told Pete many lies about himself, which Pete included in his book. He should have been more skeptical."
WSC_MARKED = ("text: * Mark * told Pete many lies about himself, which Pete included in his book. "
              "# He # should have been more skeptical.")


@pytest.mark.parametrize("raw", [
    {"text": WSC_TEXT, "label": False,  # release layout
     "target": {"span1_index": 0, "span1_text": "Mark", "span2_index": 13, "span2_text": "He"}},
    {"text": WSC_TEXT, "label": 0, "span1_index": 0, "span1_text": "Mark",  # hub layout
     "span2_index": 13, "span2_text": "He"},
])
def test_wsc_marks_noun_and_pronoun(raw):
    [example] = get_task("wsc").format(raw)
    assert (example.source, example.target, example.label) == (WSC_MARKED, "0", 0)


@pytest.mark.parametrize("text, span, index, marked", [
    ("The mothers scold them.", "mothers", 1, "The * mothers * scold them."),
    ("He fed him, then left.", "him", 2, "He fed * him *, then left."),  # trailing punctuation stays outside
    ("I saw the lawyer there.", "The lawyer", 2, "I saw * the lawyer * there."),  # case as in the text
    ("a b c d it e", "it", 5, "a b c d * it * e"),  # index off by one: nearest occurrence
    ("says  \" Canopy Hunter \" now", "Canopy\nHunter", 2, "says  \" * Canopy Hunter * \" now"),
    ("the himself him", "him", 1, "the himself * him *"),  # "him" is not a prefix match of "himself"
])
def test_wsc_span_location(text, span, index, marked):
    from compacter.tasks.formats import mark_spans

    start, end = locate_span(text, span, index)
    assert mark_spans(text, [(start, end, "*")]) == marked


def test_wsc_span_in_front_of_pronoun_and_after():
    raw = {"text": "She thanked Ann because Ann helped her .", "label": True,
           "target": {"span1_index": 4, "span1_text": "Ann", "span2_index": 0, "span2_text": "She"}}
    [example] = get_task("wsc").format(raw)
    assert example.source == "text: # She # thanked Ann because * Ann * helped her ."


def test_wsc_missing_span_is_an_error():
    raw = {"text": "No match here.", "label": True,
           "target": {"span1_index": 0, "span1_text": "Zebra", "span2_index": 1, "span2_text": "it"}}
    with pytest.raises(DataError, match="Zebra"):
        get_task("wsc").format(raw)


# --- MultiRC ---

PARAGRAPH = "<b>Sent 1: </b>Tom ran home.<br><b>Sent 2: </b>He ate.<br>"
PARAGRAPH_CLEAN = "Sent 1: Tom ran home. Sent 2: He ate. "
MULTIRC_RELEASE = {"idx": 7, "version": 1.1, "passage": {"text": PARAGRAPH, "questions": [
    {"idx": 30, "question": "Who ran?", "answers": [
        {"idx": 0, "text": "Tom", "label": 1}, {"idx": 1, "text": "<b>Ann</b>", "label": 0}]},
    {"idx": 31, "question": "What did he do?", "answers": [{"idx": 2, "text": "ate", "label": 1}]},
]}}


def test_multirc_one_example_per_answer_grouped_by_question():
    examples = get_task("multirc").format(MULTIRC_RELEASE)
    assert [(e.source, e.target, e.group) for e in examples] == [
        (f"question: Who ran? answer: Tom paragraph: {PARAGRAPH_CLEAN}", "1", "7-30"),
        (f"question: Who ran? answer: Ann paragraph: {PARAGRAPH_CLEAN}", "0", "7-30"),
        (f"question: What did he do? answer: ate paragraph: {PARAGRAPH_CLEAN}", "1", "7-31"),
    ]


def test_multirc_hub_layout_matches_release_layout():
    hub = {"paragraph": PARAGRAPH, "question": "Who ran?", "answer": "<b>Ann</b>", "label": 0,
           "idx": {"paragraph": 7, "question": 30, "answer": 1}}
    assert get_task("multirc").format(hub) == get_task("multirc").format(MULTIRC_RELEASE)[1:2]


def test_remove_markup():
    assert remove_markup("<b>a</b><br>b") == "a b"


# --- ReCoRD ---

PASSAGE = "Obama met Merkel in Berlin.\n@highlight\nObama visits\n@highlight\nTalks went well."
PASSAGE_CLEAN = "Obama met Merkel in Berlin. Obama visits. Talks went well."
RECORD_RELEASE = {"idx": 3, "source": "x", "passage": {"text": PASSAGE, "entities": [
    {"start": 10, "end": 15}, {"start": 0, "end": 4}, {"start": 20, "end": 25}, {"start": 39, "end": 43}]},
    "qas": [{"idx": 9, "query": "@placeholder hosted the talks.", "answers": [
        {"start": 10, "end": 15, "text": "Merkel"}, {"start": 10, "end": 15, "text": "Merkel"},
        {"start": 20, "end": 25, "text": "Berlin"}]}]}
# entities: unique and sorted as text, as the TFDS and older HF `super_glue` builders gave the released code
RECORD_SOURCE = f"query: @placeholder hosted the talks. entities: Berlin, Merkel, Obama passage: {PASSAGE_CLEAN}"


def test_record_one_example_per_unique_answer():
    examples = get_task("record").format(RECORD_RELEASE)
    assert [e.source for e in examples] == [RECORD_SOURCE] * 2
    assert [e.target for e in examples] == ["Berlin", "Merkel"]
    assert {e.answers for e in examples} == {("Berlin", "Merkel")}
    assert {e.group for e in examples} == {"3-9"}


def test_record_hub_layout():
    # whatever order (and repeats) the hub's entity list has, the prompt is the release layout's
    for entities in (["Obama", "Merkel", "Berlin"], ["Merkel", "Berlin", "Obama", "Merkel"]):
        hub = {"passage": PASSAGE, "query": "@placeholder hosted the talks.", "entities": entities,
               "answers": ["Merkel", "Berlin"], "idx": {"passage": 3, "query": 9}}
        assert get_task("record").format(hub) == get_task("record").format(RECORD_RELEASE)


def test_record_without_answers_gives_one_empty_target():
    hub = {"passage": "p", "query": "q", "entities": ["A"], "answers": [], "idx": {"passage": 0, "query": 0}}
    [example] = get_task("record").format(hub)
    assert (example.target, example.answers) == ("", ())


@pytest.mark.parametrize("passage, cleaned", [
    ("A.\n@highlight\nB", "A. B"),
    ("A\n@highlight\nB", "A. B"),
    ("Is it?\n@highlight\nB\n@highlight\nC", "Is it? B. C"),
])
def test_record_highlights(passage, cleaned):
    assert clean_highlights(passage) == cleaned


# --- bad rows ---

@pytest.mark.parametrize("name, raw, message", [
    ("rte", {"sentence1": "a", "sentence2": "b", "label": "maybe"}, "unknown label 'maybe'"),
    ("rte", {"sentence1": "a", "label": 0}, "missing field 'sentence2'"),
    ("rte", {"sentence1": "a", "sentence2": "b"}, "missing label field 'label'"),
    ("rte", {"sentence1": "a", "sentence2": None, "label": 0}, "'sentence2' is empty"),
    ("cola", {"sentence": "a", "label": 2}, "unknown label 2"),
    ("stsb", {"sentence1": "a", "sentence2": "b", "label": "high"}, "unparsable score 'high'"),
    ("stsb", {"sentence1": "a", "sentence2": "b", "label": "nan"}, "unparsable score 'nan'"),
    ("multirc", {"paragraph": "p", "question": "q", "answer": "a", "label": 1}, "missing field 'idx'"),
])
def test_bad_rows_raise_data_error(name, raw, message):
    with pytest.raises(DataError, match=message):
        get_task(name).format(raw)


def test_example_is_frozen_and_hashable():
    example = Example("s", "t", 1, fields={"a": "b"})
    assert hash(example) == hash(Example("s", "t", 1))
    with pytest.raises(AttributeError):
        example.source = "x"


# --- rows without labels (prediction) ---


@pytest.mark.parametrize("name, raw, source, target, label", SINGLE)
def test_unlabeled_rows_format_as_training_does(name, raw, source, target, label):
    from compacter.tasks.formats import format_unlabeled

    task = get_task(name)
    [example] = format_unlabeled(task, {k: v for k, v in raw.items() if k != task.label_field})
    assert (example.source, example.fields, example.target, example.label) == (source, task.format(raw)[0].fields, "", None)


def test_unlabeled_multirc_and_record_release_rows():
    from compacter.tasks.formats import format_unlabeled

    passage = {**MULTIRC_RELEASE["passage"], "questions": [
        {**q, "answers": [{k: v for k, v in a.items() if k != "label"} for a in q["answers"]]} for q in MULTIRC_RELEASE["passage"]["questions"]]}
    examples = format_unlabeled(get_task("multirc"), {**MULTIRC_RELEASE, "passage": passage})
    assert [(e.source, e.group) for e in examples] == [(e.source, e.group) for e in get_task("multirc").format(MULTIRC_RELEASE)]
    assert {(e.target, e.label) for e in examples} == {("", None)}
    # ReCoRD: one example per query, whatever answers the row holds
    [example] = format_unlabeled(get_task("record"), RECORD_RELEASE)
    assert (example.source, example.target, example.label, example.answers, example.group) == (RECORD_SOURCE, "", None, None, "3-9")


def test_unlabeled_hub_rows_need_no_idx_or_answers():
    from compacter.tasks.formats import format_unlabeled

    [example] = format_unlabeled(get_task("record"), {"passage": PASSAGE, "query": "@placeholder hosted the talks.",
                                                       "entities": ["Obama", "Merkel", "Berlin"]})
    assert (example.source, example.group) == (RECORD_SOURCE, None)
    [example] = format_unlabeled(get_task("multirc"), {"paragraph": PARAGRAPH, "question": "Who ran?", "answer": "Tom"})
    assert (example.source, example.group) == (f"question: Who ran? answer: Tom paragraph: {PARAGRAPH_CLEAN}", None)


@pytest.mark.parametrize("name, raw, message", [
    ("wsc", {"text": "Plain."}, "missing field 'span1_text'; wsc inputs need text, span1_text, span1_index, span2_text, span2_index"),
    ("rte", {"sentence1": "a"}, "missing field 'sentence2'.*rte inputs need sentence1, sentence2"),
    ("multirc", {"question": "q"}, "multirc inputs need question, answer, paragraph"),
    ("record", {"query": "q"}, "record inputs need query, entities, passage"),
    ("rte", ["a", "b"], "expected an object of fields, got list"),
])
def test_unlabeled_bad_rows_say_what_the_task_needs(name, raw, message):
    from compacter.tasks.formats import format_unlabeled

    with pytest.raises(DataError, match=message):
        format_unlabeled(get_task(name), raw)


@pytest.mark.parametrize("name, raw, keys", [
    ("demo", {"text": "great fun"}, "['text']"),  # it listed ['label', 'text']: 'label' is predict's placeholder
    ("wsc", {"sentence": "No text field."}, "['sentence']"),
    ("demo", {"text": "x", "label": "positive"}, "['label', 'text']"),  # a label the user gave is theirs
])
def test_unlabeled_rows_list_only_the_fields_given(name, raw, keys):
    from compacter.tasks.formats import format_unlabeled

    with pytest.raises(DataError) as err:
        format_unlabeled(get_task(name), raw)
    assert f"(row has {keys})" in str(err.value), err.value
