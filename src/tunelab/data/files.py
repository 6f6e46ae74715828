"""Read the user's files into raw rows, with the file and line of each row for error messages.

CSV and JSON Lines are read here rather than through `datasets`, because its parsers report a
broken row as a traceback without the line number; parquet and saved `datasets` folders are
columnar and go through pyarrow / `datasets`.
"""
from __future__ import annotations

import codecs
import csv
import io
import json
from pathlib import Path
from typing import Any

from ..errors import DataError

Row = tuple[str, dict[str, Any]]  # (origin like "file.csv line 3", the row's values)
SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


def read_rows(path: str | Path) -> list[Row]:
    path = Path(path)
    if path.is_dir():
        return _read_saved_dataset(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; check data.source")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'}; use one of: {', '.join(SUFFIXES)}")
    if suffix == ".parquet":
        return _read_parquet(path)
    text = _decode(path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty; add examples (CSV files need a header row)")
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, text, "\t" if suffix == ".tsv" else ",")
    if suffix == ".json" and text.lstrip().startswith(("[", "{")) and not _looks_like_json_lines(text):
        return _read_json(path, text)
    return _read_json_lines(path, text)


# No example needs more: a model reads a few thousand tokens of it at most. Longer lines are refused while the file
# is read, before a 2 GB line (a file without newlines, a binary file renamed .csv) fills the memory.
MAX_LINE_BYTES = 16 * 2**20
LINE_FILES = (".csv", ".tsv", ".jsonl")  # a .json file may be one long line of a list: it is bounded by memory only


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, read in chunks; a CSV/TSV/JSON Lines line over MAX_LINE_BYTES stops the reading."""
    if path.suffix.lower() not in LINE_FILES:
        return path.read_bytes()
    chunks, line, length = [], 1, 0  # length: bytes of the current line so far
    with path.open("rb") as f:
        # A chunk no longer than the limit holds no whole line over it: only the lines that span chunks can be.
        while chunk := f.read(MAX_LINE_BYTES):
            first = chunk.find(b"\n")
            length += len(chunk) if first < 0 else first
            if length > MAX_LINE_BYTES:
                raise DataError(f"{path} line {line}: the line is longer than {MAX_LINE_BYTES // 2**20} MB (is it "
                                f"a text file with one example per line?); split it, or shorten the text")
            if first >= 0:
                line += chunk.count(b"\n")
                length = len(chunk) - chunk.rfind(b"\n") - 1
            chunks.append(chunk)
    return b"".join(chunks)


def _decode(path: Path) -> str:
    raw = _read_bytes(path)
    if raw.startswith(codecs.BOM_UTF8):  # strip it first so that error offsets count from the text
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path} line {line}: byte 0x{raw[e.start]:02x} is not UTF-8 text; "
                        f"re-save the file as UTF-8") from None


def _read_csv(path: Path, text: str, delimiter: str) -> list[Row]:
    csv.field_size_limit(MAX_LINE_BYTES)  # the module's default, 128 kB, would refuse a long article as "malformed"
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if not reader.fieldnames or all(not f for f in reader.fieldnames):
        raise DataError(f"{path}: no header row; the first line must name the columns")
    twice = sorted({f for f in reader.fieldnames if reader.fieldnames.count(f) > 1})
    if twice:  # DictReader would keep the last of them silently
        raise DataError(f"{path}: the header names column(s) {', '.join(map(repr, twice))} more than once; rename "
                        f"them so that each column has its own name")
    if delimiter == "," and len(reader.fieldnames) == 1 and "\t" in reader.fieldnames[0]:
        raise DataError(f"{path}: the file looks tab-separated (its header is {reader.fieldnames[0]!r}); name it "
                        f".tsv, or separate the columns with commas")
    rows = []
    try:
        start = reader.line_num + 1
        for row in reader:
            if None in row:  # more cells than header names
                raise DataError(f"{path} line {start}: {len(reader.fieldnames) + len(row[None])} cells but "
                                f"{len(reader.fieldnames)} columns in the header; quote cells that contain "
                                f"'{delimiter}'")
            rows.append((f"{path} line {start}", row))
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"{path} line {reader.line_num}: malformed CSV ({e}); fix the quoting") from None
    if not rows:
        raise DataError(f"{path}: the header is there but no example rows follow; add examples")
    return rows


def _looks_like_json_lines(text: str) -> bool:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        return False
    try:
        json.loads(lines[0])
        return True
    except json.JSONDecodeError:
        return False


def _read_json_lines(path: Path, text: str) -> list[Row]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {number}: malformed JSON ({e.msg} at column {e.colno}); "
                            f"each line must be one JSON object") from None
        if not isinstance(value, dict):
            raise DataError(f"{path} line {number}: expected a JSON object like {{\"text\": ..., \"label\": ...}}, "
                            f"got {type(value).__name__}")
        rows.append((f"{path} line {number}", value))
    return rows


def _read_json(path: Path, text: str) -> list[Row]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {e.lineno}: malformed JSON ({e.msg}); fix the syntax") from None
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise DataError(f"{path}: expected a JSON list of objects (or one object per line); got "
                        f"{type(value).__name__}")
    if not value:
        raise DataError(f"{path}: the list is empty; add examples")
    return [(f"{path} item {i}", v) for i, v in enumerate(value, start=1)]


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq
    try:
        records = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable parquet file ({e}); re-export it") from None
    if not records:
        raise DataError(f"{path}: the file has no rows; add examples")
    return [(f"{path} row {i}", r) for i, r in enumerate(records, start=1)]


def _read_saved_dataset(path: Path) -> list[Row]:
    import datasets
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise DataError(f"{path}: not a folder saved by datasets' save_to_disk ({e}); give a file instead") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: a DatasetDict without a 'train' split; has {', '.join(ds)}")
        ds = ds["train"]
    return [(f"{path} row {i}", r) for i, r in enumerate(ds, start=1)]
