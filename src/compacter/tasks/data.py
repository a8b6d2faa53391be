"""Reading task data: benchmark release files, the Hugging Face hub, the demo, user files.

Layout under `data_dir` (the benchmarks' own releases):

    data_dir/glue/<CoLA|SST-2|MRPC|STS-B|QQP|MNLI|QNLI|RTE|WNLI>/{train,dev}.tsv
        (MNLI: dev_matched.tsv, dev_mismatched.tsv)
    data_dir/superglue/<BoolQ|CB|COPA|MultiRC|ReCoRD|RTE|WiC|WSC>/{train,val,train32,dev32}.jsonl

`data_dir` may also be the benchmark folder or the task's own folder. GLUE tsv files are
read with `csv.QUOTE_NONE` (their sentences contain unbalanced quotes). Every row must
parse: a malformed one raises `DataError` naming `file:line`; nothing is dropped.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from .base import DataError, Example, Task
from .registry import get_task

Rows = Iterator[tuple[str, dict[str, Any]]]  # (location "file:line", raw row)

_GLUE_FILES = {"train": "train.tsv", "validation": "dev.tsv"}
_MNLI_FILES = {
    "train": "train.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
}
_SUPERGLUE_FILES = {
    "train": "train.jsonl", "validation": "val.jsonl", "train32": "train32.jsonl", "dev32": "dev32.jsonl",
}
_OWN_FILES = {"train": "train.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"}


@dataclass(frozen=True)
class TsvLayout:
    """A GLUE tsv: its folder, row key -> file column, and fixed columns if headerless."""

    folder: str
    columns: dict[str, str]
    header: tuple[str, ...] | None = None
    files: dict[str, str] = field(default_factory=lambda: dict(_GLUE_FILES))


_PAIR = {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"}
GLUE_LAYOUTS: dict[str, TsvLayout] = {
    "cola": TsvLayout("CoLA", {"sentence": "sentence", "label": "label"},
                      header=("source", "label", "original_mark", "sentence")),
    "sst2": TsvLayout("SST-2", {"sentence": "sentence", "label": "label"}),
    "mrpc": TsvLayout("MRPC", {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"}),
    "stsb": TsvLayout("STS-B", {"sentence1": "sentence1", "sentence2": "sentence2", "label": "score"}),
    "qqp": TsvLayout("QQP", {"question1": "question1", "question2": "question2", "label": "is_duplicate"}),
    "mnli": TsvLayout("MNLI", {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"},
                      files=_MNLI_FILES),
    "qnli": TsvLayout("QNLI", {"question": "question", "sentence": "sentence", "label": "label"}),
    "rte": TsvLayout("RTE", _PAIR),
    "wnli": TsvLayout("WNLI", _PAIR),
}
SUPERGLUE_FOLDERS = {
    "boolq": "BoolQ", "cb": "CB", "copa": "COPA", "multirc": "MultiRC", "record": "ReCoRD",
    "superglue-rte": "RTE", "wic": "WiC", "wsc": "WSC",
}


# --- raw readers --------------------------------------------------------------------------------


def _open(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    return open(path, encoding="utf-8-sig", newline="")


def read_table(path: Path, delimiter: str, quoting: int, header: tuple[str, ...] | None = None,
               required: Iterable[str] = ()) -> Rows:
    """Rows of a CSV/TSV file as dicts; the header (or `header`) must name `required`."""
    with _open(path) as handle:
        reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
        try:
            columns = header or next(reader, None)
        except (csv.Error, UnicodeDecodeError) as err:
            raise DataError(f"{path}:1: unreadable header ({err})") from None
        if columns is None:
            raise DataError(f"{path}: empty file")
        required = tuple(required)
        # a column read twice would silently be the last of them (dict(zip(...))); repeats of blank
        # names (spreadsheet exports) and of columns that are never read are harmless
        twice = sorted({c for c in columns if c and columns.count(c) > 1 and (not required or c in required)})
        if twice:
            raise DataError(f"{path}:1: column(s) {twice} named more than once in the header (columns: {list(columns)}); "
                            "name each column once")
        missing = [c for c in required if c not in columns]
        if missing:
            raise DataError(f"{path}:1: missing column(s) {missing} (columns: {list(columns)})")
        try:
            for row in reader:
                if not row:  # a blank line is not a row
                    continue
                if len(row) != len(columns):
                    expected = f"expected {len(columns)} {list(columns)}"
                    raise DataError(f"{path}:{reader.line_num}: {len(row)} fields, {expected}")
                yield f"{path}:{reader.line_num}", dict(zip(columns, row))
        except (csv.Error, UnicodeDecodeError) as err:
            raise DataError(f"{path}:{reader.line_num + 1}: unreadable row ({err})") from None


def read_jsonl(path: Path) -> Rows:
    """Rows of a JSON-lines file (blank lines skipped); a `.json` array is accepted too."""
    try:
        with _open(path) as handle:
            text = handle.read()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from None
    if path.suffix == ".json" and text.lstrip().startswith("["):
        yield from _read_json_array(path, text)
        return
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield f"{path}:{number}", _json_object(line, f"{path}:{number}")


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook``: json.loads keeps the last of two equal keys, silently."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen.add(key)
    return dict(pairs)


def _json_object(line: str, where: str) -> dict[str, Any]:
    try:
        row = json.loads(line, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: bad JSON ({err.msg} at column {err.colno})") from None
    except _DuplicateKey as err:
        raise DataError(f"{where}: key {err.args[0]!r} appears twice in one object; give each field once") from None
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


def _read_json_array(path: Path, text: str) -> Rows:
    try:
        rows = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: bad JSON ({err.msg})") from None
    except _DuplicateKey as err:
        raise DataError(f"{path}: key {err.args[0]!r} appears twice in one object; give each field once") from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}: item {i}: expected a JSON object, got {type(row).__name__}")
        yield f"{path}: item {i}", row


def _glue_rows(layout: TsvLayout, path: Path, labels: bool = True) -> Rows:
    """GLUE tsv rows renamed to the hub's field names (without ``labels``, the label column may
    be absent, as in GLUE's test files)."""
    needed = {key: column for key, column in layout.columns.items() if labels or key != "label"}
    header = layout.header
    if header is not None and not labels and _first_line_names(path, needed.values()):
        header = None  # CoLA's test.tsv has a header ("index\tsentence"); its train/dev files have none
    rows = read_table(path, "\t", csv.QUOTE_NONE, header, needed.values())
    for where, row in rows:
        yield where, {key: row[column] for key, column in layout.columns.items() if column in row}


def _first_line_names(path: Path, columns: Iterable[str]) -> bool:
    """Whether the first line of a tsv is a header naming every one of `columns`."""
    with _open(path) as handle:
        first = handle.readline().rstrip("\r\n").split("\t")
    return all(column in first for column in columns)


def file_rows(task: Task, path: str | Path, labels: bool = True) -> Rows:
    """Raw rows of one file, read by the task's layout (GLUE tsv) or the file's suffix;
    ``labels=False`` (prediction inputs): a table need not have the label column."""
    path = Path(path)
    if task.name in GLUE_LAYOUTS and path.suffix == ".tsv":
        return _glue_rows(GLUE_LAYOUTS[task.name], path, labels)
    if path.suffix in (".jsonl", ".json"):
        return read_jsonl(path)
    if path.suffix in (".csv", ".tsv"):
        required = (*task.input_fields, *[task.label_field] * labels) if task.benchmark == "custom" else ()
        if path.suffix == ".csv":
            return read_table(path, ",", csv.QUOTE_MINIMAL, required=required)
        return read_table(path, "\t", csv.QUOTE_NONE, required=required)
    raise ValueError(f"{path}: unsupported file type {path.suffix!r} (use .jsonl, .json, .csv or .tsv)")


def format_rows(task: Task, rows: Rows, source: str) -> list[Example]:
    """Format every row; a bad row raises DataError prefixed with its location."""
    examples: list[Example] = []
    for where, row in rows:
        try:
            examples.extend(task.format(row))
        except DataError as err:
            raise DataError(f"{where}: {err}") from err
    if not examples:
        raise DataError(f"{source}: no examples (empty file?)")
    return examples


# --- where the files are -------------------------------------------------------------------------


def split_files(task: Task) -> dict[str, str]:
    """Split name -> file name in the task's release folder."""
    if task.name in GLUE_LAYOUTS:
        return GLUE_LAYOUTS[task.name].files
    return _SUPERGLUE_FILES if task.benchmark == "superglue" else _OWN_FILES


def _folder_name(task: Task) -> str | None:
    if task.name in GLUE_LAYOUTS:
        return GLUE_LAYOUTS[task.name].folder
    return SUPERGLUE_FOLDERS.get(task.name, task.name if task.benchmark == "demo" else None)


def locate_file(task: Task, split: str, data_dir: str | Path) -> Path:
    """The file of `split` under `data_dir` (benchmark root, benchmark folder or task folder)."""
    files = split_files(task)
    if split not in files:
        raise ValueError(f"task {task.name!r} has no split {split!r}; choose one of {list(files)}")
    root, folder = Path(data_dir), _folder_name(task)
    candidates = [root / task.benchmark / folder, root / folder] if folder else []
    candidates.append(root)
    names = _custom_names(split) if task.benchmark == "custom" else [files[split]]
    for directory in candidates:
        for name in names:
            if (directory / name).is_file():
                return directory / name
    raise FileNotFoundError(f"no {' / '.join(names)} for task {task.name!r}; looked in {[str(c) for c in candidates]}")


def _custom_names(split: str) -> list[str]:
    stems = {"validation": ["validation", "val", "dev"]}.get(split, [split])
    return [f"{stem}{suffix}" for stem in stems for suffix in (".jsonl", ".json", ".csv", ".tsv")]


# --- public loaders --------------------------------------------------------------------------------


def load_split(task: str | Task, split: str, data_dir: str | Path | None = None) -> list[Example]:
    """Examples of one official split ("train", "validation"; MNLI "validation_matched" /
    "validation_mismatched"; SuperGLUE "train32" / "dev32"; demo/custom "test").

    With `data_dir` the release files are read; without it the demo task reads its packaged
    files and GLUE/SuperGLUE tasks come from the Hugging Face hub (needs `datasets`).
    """
    task = get_task(task)
    if data_dir is not None:
        path = locate_file(task, split, data_dir)
        return format_rows(task, file_rows(task, path), str(path))
    if task.benchmark == "demo":
        return _load_demo(task, split)
    if task.hub is None:
        raise ValueError(f"task {task.name!r} has no hub data set; pass data_dir= or use load_files()")
    return format_rows(task, hub_rows(task, split), f"{task.hub[0]}/{task.hub[1]}[{split}]")


def _load_demo(task: Task, split: str) -> list[Example]:
    if split not in _OWN_FILES:
        raise ValueError(f"task {task.name!r} has no split {split!r}; choose one of {list(_OWN_FILES)}")
    with resources.as_file(resources.files(__package__) / "demo" / _OWN_FILES[split]) as path:
        return format_rows(task, read_jsonl(path), str(path))


def hub_rows(task: Task, split: str) -> Rows:
    """Rows of a GLUE/SuperGLUE split from the Hugging Face hub (`datasets` imported lazily)."""
    allowed = [s for s in split_files(task) if s not in ("train32", "dev32")]
    if split not in allowed:
        raise ValueError(f"task {task.name!r} has no hub split {split!r}; choose one of {allowed}")
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f"loading {task.name!r} from the Hugging Face hub needs the `datasets` package "
            "(pip install 'compacter[hub]'); or pass data_dir= with the benchmark files"
        ) from err
    repo, config = task.hub
    try:
        rows = datasets.load_dataset(repo, config, split=split)
    except Exception as err:  # network, cache or hub errors: say what to do instead
        # network and not-found errors are OSErrors (ConnectionError, datasets' DatasetNotFoundError); others
        # (a config the repository no longer has: ValueError) are not a connection problem
        hint = " Offline? Pass data_dir= with the benchmark files." if isinstance(err, OSError) else \
            " Pass data_dir= with the benchmark files to use your own copy."
        raise RuntimeError(f"could not load {repo} ({config}, {split}) from the hub: {type(err).__name__}: {err}.{hint}") from err
    return ((f"{repo}/{config}[{split}] row {i}", dict(row)) for i, row in enumerate(rows))


def load_file(task: str | Task, path: str | Path) -> list[Example]:
    """Examples of one file (.jsonl/.json, .csv, .tsv) formatted by `task`."""
    task = get_task(task)
    return format_rows(task, file_rows(task, path), str(path))


def load_files(task: str | Task, **paths: str | Path | None) -> dict[str, list[Example]]:
    """`load_files(task, train="a.csv", validation="b.csv", test=None)` -> split -> examples."""
    return {split: load_file(task, path) for split, path in paths.items() if path is not None}


def rows_to_examples(task: str | Task, rows: Iterable[Mapping[str, Any]]) -> list[Example]:
    """Format in-memory rows (e.g. a `datasets.Dataset`); errors name the row number."""
    task = get_task(task)
    return format_rows(task, ((f"row {i}", dict(r)) for i, r in enumerate(rows)), "rows")
