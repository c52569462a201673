"""Read exported event logs into string columns that remember where every row came from.

Every reader returns a :class:`RawSource`: a lazy frame whose data columns are *strings* (so
nothing is lost to an eager type guess; :mod:`shoprec.data.validate` casts them and quarantines
what does not parse) plus :data:`schema.SOURCE_FILE` and the 1-based physical line
:data:`schema.SOURCE_LINE` (a header is line 1), and the file facts the manifest records (size,
sha256, line count).

A problem with a *file* (missing, empty, header only, not UTF-8, a configured column that is not
there) is a :class:`~shoprec.errors.DataError` naming the file (and line/column where it
applies). A problem with a *row* (too many or too few fields, malformed JSON) is not an error
here: the row is kept with a :data:`READ_ERROR` text and validation quarantines it, so the
invariant ``rows_read == accepted + quarantined + duplicates`` holds. Values are raw text:
empty strings and ``read.null_values`` become missing, and blanks are stripped, in validation
(which skips the strip when :func:`inspect_file` found no blank in the file).

Formats (``read.format``):

* ``csv``: any single-character separator, header or ``column_names``. Files without a quote
  character whose separator count proves every line holds exactly the expected fields go
  through Polars' multithreaded CSV parser (line number = row number + header); other files
  without quotes are split line by line (exact line numbers and field counts); files with
  quotes go through Polars' CSV parser, and through Python's ``csv`` module when a quoted
  field spans lines or a row is ragged, so line numbers stay physical.
* ``whitespace``: runs of blanks separate fields (CDNOW); leading blanks and CRLF are fine.
* ``parquet``: columns keep their stored types (already typed: validation accepts them as
  they are); "line" is the 1-based row number.
* ``jsonl``: one JSON object a line; ``explode`` names a nested list of events (OTTO) and
  ``session_key`` a top-level key copied into each event.
* ``benchmark_split``: :func:`read_benchmark_train` (``train_sessions.txt``) and
  :func:`read_benchmark_test` (``test.tsv``).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import polars as pl

from shoprec import schema
from shoprec.data.config import DataConfig, ReadConfig
from shoprec.errors import DataError

__all__ = [
    "BENCHMARK_EPOCH",
    "READ_ERROR",
    "RawSource",
    "SourceFile",
    "input_files",
    "inspect_file",
    "raw_lines",
    "read_benchmark_test",
    "read_benchmark_train",
    "read_events",
    "source_columns",
]

READ_ERROR: Final = "_read_error"  # why a row could not be split into fields (null when fine)
_LINE: Final = "_line"  # the physical line text while a line-based reader splits it
_EXTRA: Final = "_extra"  # the field after the last expected one (too many fields)
_CHUNK: Final = 1 << 23  # 8 MiB: streaming hash/line count without holding the file
_SAMPLE_RECORDS: Final = 1000  # JSONL records sampled to check that configured keys exist
RAW_MAX_CHARS: Final = 1000  # raw line text kept in the quarantine, at most

# Benchmark splits have no time; session n starts n hours after this, its k-th click k seconds
# later, so the session order of the file is the time order and the manifest marks it synthetic.
BENCHMARK_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
BENCHMARK_TEST_HEADER: Final = ("prefix", "target")


@dataclass(frozen=True)
class SourceFile:
    """Facts about one input file, measured in one streaming pass (hash, size, lines)."""

    path: str  # as given (relative to the working directory, or absolute)
    resolved: str
    size: int
    sha256: str
    lines: int  # physical lines (a last line without a newline counts)
    has_quotes: bool  # contains a double quote (CSV: quoted fields may span lines)
    has_blanks: bool = True  # may hold blanks a field could start or end with (see below)
    is_text: bool = True  # a text file (raw lines can be quoted in the quarantine)
    separators: int = -1  # occurrences of the separator asked for (-1: not counted)
    plain_lines: bool = False  # no BOM and every CR ends a line (CRLF): lines split alike

    def to_manifest(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "resolved": self.resolved,
            "size": self.size,
            "sha256": self.sha256,
            "lines": self.lines,
        }


_BLANKS: Final = (b" ", b"\t", b"\x0b", b"\x0c")
_NEWLINE: Final = ord("\n")


@dataclass
class RawSource:
    """Rows read from one or more files: string columns + source file/line (+ read errors)."""

    frame: pl.LazyFrame
    files: list[SourceFile] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)  # data columns available in ``frame``
    # False only when no field can carry blanks to strip (validation then skips stripping)
    needs_strip: bool = True
    null_values: list[str] = field(default_factory=list)  # source spellings of "missing"
    # The same rows through an exact (slower) reader, for a fast ``frame`` that may fail
    # when collected (see ``_read_csv``); validation switches to it on such a failure.
    fallback: Callable[[], RawSource] | None = None


def input_files(path: str | Path) -> list[Path]:
    """The files behind an input path: the file itself, or a folder's visible files by name."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(
            f
            for f in p.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.name.lower() != "readme.md"
        )
        if not files:
            raise DataError(f"{p}: input folder has no files")
        return files
    raise DataError(f"{p}: input file not found (relative paths resolve against {Path.cwd()})")


def inspect_file(path: Path, text: bool = True, separator: str | None = None) -> SourceFile:
    """Hash the file, count its lines and (``text``) check it is UTF-8, in one streaming pass.

    ``separator``: also count its occurrences (the CSV reader's field-count proof).

    Why one pass of our own: Polars reports bad UTF-8 without a position; here the error names
    the line and byte column, and the hash/size/lines are needed for the manifest anyway.
    The hash (the costliest part) runs in a second thread while this one counts (both
    release the GIL); bytes are counted with numpy (vectorized, ~3x ``bytes.count``).
    """
    digest = hashlib.sha256()
    size = newlines = 0
    last = b""
    has_quotes = False
    has_blanks = not text
    decoder = codecs.getincrementaldecoder("utf-8")()
    sep = separator.encode("utf-8") if separator is not None else None
    # a one-byte separator is counted with numpy; a longer one (never a valid CSV one) not
    separators = 0 if sep is not None and len(sep) == 1 else -1
    carriage = crlf = 0
    bom = False
    hashing: Future[None] | None = None
    try:
        with open(path, "rb") as f, ThreadPoolExecutor(1) as pool:
            while chunk := f.read(_CHUNK):
                if hashing is not None:
                    hashing.result()
                hashing = pool.submit(digest.update, chunk)
                if size == 0:
                    bom = chunk.startswith(codecs.BOM_UTF8)
                data = np.frombuffer(chunk, dtype=np.uint8)
                if separators >= 0 and sep is not None:
                    separators += int(np.count_nonzero(data == sep[0]))
                if b"\r" in chunk or (last == b"\r" and chunk[:1] == b"\n"):
                    carriage += chunk.count(b"\r")
                    crlf += chunk.count(b"\r\n") + (last == b"\r" and chunk[:1] == b"\n")
                if text and not chunk.isascii():
                    pending = len(decoder.getstate()[0])
                    try:
                        decoder.decode(chunk)
                    except UnicodeDecodeError as exc:
                        _raise_not_utf8(path, size - pending + exc.start)
                has_quotes = has_quotes or b'"' in chunk
                has_blanks = has_blanks or _has_blanks(chunk)
                newlines += int(np.count_nonzero(data == _NEWLINE))
                size += len(chunk)
                last = chunk[-1:]
            if hashing is not None:
                hashing.result()
            if text:
                try:
                    decoder.decode(b"", final=True)
                except UnicodeDecodeError:
                    _raise_not_utf8(path, size - len(decoder.getstate()[0]))
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    lines = newlines + (1 if size and last != b"\n" else 0)
    return SourceFile(
        path=str(path),
        resolved=str(path.resolve()),
        size=size,
        sha256=digest.hexdigest(),
        lines=lines,
        has_quotes=has_quotes,
        has_blanks=has_blanks,
        separators=separators,
        plain_lines=not bom and carriage == crlf,
    )


def _has_blanks(chunk: bytes) -> bool:
    """Whether a chunk holds whitespace other than line ends (non-ASCII counts: NBSP...).

    A file without any lets validation skip stripping every field, its costliest string step.
    """
    if not chunk.isascii() or any(b in chunk for b in _BLANKS):
        return True
    return b"\r" in chunk and chunk.count(b"\r") != chunk.count(b"\r\n")


def _raise_not_utf8(path: Path, offset: int) -> None:
    with open(path, "rb") as f:
        head = f.read(max(offset, 0) + 1)
    line = head.count(b"\n", 0, offset) + 1
    column = offset - (head.rfind(b"\n", 0, offset) + 1) + 1
    bad = head[offset : offset + 1]
    raise DataError(
        f"{path}:{line}: not UTF-8 text (byte {bad!r} at column {column}); "
        "re-export the file as UTF-8"
    )


def source_columns(cfg: DataConfig) -> list[str]:
    """Source columns a preset reads, in a stable order (the reader checks they exist)."""
    names: list[str] = list(cfg.columns.values())
    if cfg.timestamp is not None:
        names.append(cfg.timestamp.column)
        if cfg.timestamp.offset_column:
            names.append(cfg.timestamp.offset_column)
    if cfg.event_type.column:
        names.append(cfg.event_type.column)
    names.extend(cfg.extra_columns.values())
    return list(dict.fromkeys(names))


def read_events(cfg: DataConfig, path: str | Path) -> RawSource:
    """Read the event export at ``path`` (file or folder) per ``cfg.read`` as strings."""
    if cfg.read.format == "benchmark_split":
        return read_benchmark_train(path)
    required = source_columns(cfg)
    parts: list[RawSource] = []
    for f in input_files(path):
        if cfg.read.format == "csv":
            parts.append(_read_csv(f, cfg.read, required))
        elif cfg.read.format == "whitespace":
            parts.append(_read_whitespace(f, cfg.read, required))
        elif cfg.read.format == "parquet":
            parts.append(_read_parquet(f, required))
        elif cfg.read.format == "jsonl":
            parts.append(_read_jsonl(f, cfg.read, required))
        else:  # pragma: no cover - Literal in ReadConfig
            raise DataError(f"unknown read.format {cfg.read.format!r}")
    return _concat(parts, required)


def _concat(parts: list[RawSource], columns: list[str]) -> RawSource:
    if len(parts) == 1:
        return parts[0]
    frames = [p.frame for p in parts]
    fallback = None
    if any(p.fallback is not None for p in parts):

        def fallback() -> RawSource:
            return _concat([p.fallback() if p.fallback else p for p in parts], columns)

    return RawSource(
        frame=pl.concat(frames, how="diagonal_relaxed"),
        files=[f for p in parts for f in p.files],
        columns=columns,
        needs_strip=any(p.needs_strip for p in parts),
        null_values=parts[0].null_values,
        fallback=fallback,
    )


# --- delimited text -------------------------------------------------------------------------


def _check_not_empty(info: SourceFile, header_lines: int) -> None:
    if info.size == 0:
        raise DataError(f"{info.path}: empty file (0 bytes)")
    if header_lines and info.lines <= header_lines:
        raise DataError(f"{info.path}: header only, no data rows")


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8", newline="") as f:
        line = f.readline()
    return line.rstrip("\r\n").removeprefix("\ufeff")


def _header_names(info: SourceFile, read: ReadConfig, split: Any) -> list[str]:
    """Column names: ``column_names`` if given, else the header line (``split`` splits it)."""
    path = Path(info.path)
    if read.has_header:
        header = [str(n).strip() for n in split(_first_line(path))]
        names = read.column_names or header
    elif read.column_names:
        names = read.column_names
    else:
        raise DataError(f"{path}: read.has_header is false, so read.column_names is required")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"{path}: duplicate column name(s) {dupes} in the header")
    return names


def _check_columns(path: str, names: Sequence[str], required: Iterable[str]) -> None:
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(
            f"{path}: column(s) {missing} not found; the file has {list(names)} "
            "(check the preset's columns/timestamp/event_type)"
        )


def _field_errors(n_fields: pl.Expr, expected: int) -> pl.Expr:
    return (
        pl.when(n_fields == 0)
        .then(pl.lit("empty row"))
        .when(n_fields != expected)
        .then(pl.lit(f"wrong number of fields (expected {expected})"))
        .otherwise(pl.lit(None, pl.String))
    )


def _scan_lines(info: SourceFile, header_lines: int) -> pl.LazyFrame:
    """Physical lines with their 1-based number, header lines skipped."""
    lf = pl.scan_lines(info.path, name=_LINE, row_index_name=schema.SOURCE_LINE, row_index_offset=1)
    lf = lf.with_columns(pl.col(schema.SOURCE_LINE).cast(pl.Int64))
    if header_lines:
        lf = lf.filter(pl.col(schema.SOURCE_LINE) > header_lines)
    return lf


def _finish(
    lf: pl.LazyFrame,
    info: SourceFile,
    names: Sequence[str],
    required: Sequence[str],
    read: ReadConfig | None = None,
    needs_strip: bool = True,
) -> RawSource:
    cols = [c for c in names if c in required]
    frame = lf.select(
        pl.lit(info.path, pl.String).alias(schema.SOURCE_FILE),
        schema.SOURCE_LINE,
        READ_ERROR,
        *cols,
    )
    nulls = list(read.null_values) if read is not None else []
    return RawSource(
        frame=frame, files=[info], columns=cols, needs_strip=needs_strip, null_values=nulls
    )


def _read_csv(path: Path, read: ReadConfig, required: Sequence[str]) -> RawSource:
    sep = read.separator
    if len(sep) != 1:
        raise DataError(f"{path}: read.separator must be one character, got {sep!r}")
    info = inspect_file(path, separator=sep)
    header = 1 if read.has_header else 0
    _check_not_empty(info, header)
    if info.has_quotes:
        names = _header_names(info, read, lambda s: next(csv.reader([s], delimiter=sep), []))
        _check_columns(info.path, names, required)
        return _read_quoted_csv(info, read, names, required)
    names = _header_names(info, read, lambda s: s.split(sep))
    _check_columns(info.path, names, required)
    if _fields_proven(info, read, len(names)):
        return _read_plain_csv(info, read, names, required)
    return _split_lines(info, read, names, required)


def _fields_proven(info: SourceFile, read: ReadConfig, n: int) -> bool:
    """Whether Polars' CSV parser yields exactly the rows and fields of a line-by-line split.

    Without quotes a field never spans lines, so it does when every line (header included)
    holds exactly ``n - 1`` separators: the file holds ``(n - 1) * lines`` of them, and no
    line holds more (Polars' parser fails on such a line when it parses every column, which
    validation makes it do, and then falls back to the line split). An empty line holds
    none, so it fails the count too.
    Byte-order marks and carriage returns other than CRLF line ends keep the line split.
    """
    if n < 2 or not info.plain_lines or info.separators != (n - 1) * info.lines:
        return False
    return not read.has_header or _first_line(Path(info.path)).count(read.separator) == n - 1


def _read_plain_csv(
    info: SourceFile, read: ReadConfig, names: list[str], required: Sequence[str]
) -> RawSource:
    """Polars' multithreaded CSV parser, for files :func:`_fields_proven` vouches for.

    Fields stay text (empty ones are null, as validation reads an empty field anyway); the
    physical line is the row number plus the header. ``fallback`` is the line split, for a
    line with too many fields, which only the parse itself finds, and only when it parses
    every column: a query that prunes unused columns silently drops extra fields, so
    collect ``frame`` without projection pushdown (validation does).
    """
    cols = [c for c in names if c in required]
    lf = _scan_csv(info, read, names, quote_char=None).select(
        schema.SOURCE_LINE,
        pl.lit(None, pl.String).alias(READ_ERROR),
        *cols,
    )
    lf = lf.with_columns(pl.col(schema.SOURCE_LINE).cast(pl.Int64))
    source = _finish(lf, info, names, required, read, info.has_blanks)
    source.fallback = lambda: _split_lines(info, read, names, required)
    return source


def _scan_csv(info: SourceFile, read: ReadConfig, names: list[str], **options: Any) -> pl.LazyFrame:
    """Polars' CSV scan of ``info`` as text columns ``names``, each row numbered with its
    physical line (``schema.SOURCE_LINE``, header counted); ``options`` go to ``scan_csv``."""
    return pl.scan_csv(
        info.path,
        separator=read.separator,
        has_header=read.has_header,
        new_columns=names,
        infer_schema=False,
        row_index_name=schema.SOURCE_LINE,
        row_index_offset=2 if read.has_header else 1,
        raise_if_empty=False,
        **options,
    )


def _split_lines(
    info: SourceFile, read: ReadConfig, names: list[str], required: Sequence[str]
) -> RawSource:
    """Split every physical line at the separator (exact line numbers and field counts)."""
    sep = read.separator
    header = 1 if read.has_header else 0
    n = len(names)
    parts = pl.col(_LINE).str.splitn(sep, n + 1).struct.rename_fields([*names, _EXTRA])
    lf = _scan_lines(info, header).with_columns(parts.alias("_parts")).unnest("_parts")
    n_fields = (
        pl.when(pl.col(_LINE) == "")
        .then(0)
        .when(pl.col(_EXTRA).is_not_null())
        .then(n + 1)
        .when(pl.col(names[-1]).is_null())
        .then(-1)
        .otherwise(n)
    )
    lf = lf.with_columns(_field_errors(n_fields, n).alias(READ_ERROR))
    return _finish(lf, info, names, required, read, info.has_blanks)


def _read_quoted_csv(
    info: SourceFile, read: ReadConfig, names: list[str], required: Sequence[str]
) -> RawSource:
    """Polars' CSV parser when every record is one line; Python's csv module otherwise."""
    header = 1 if read.has_header else 0
    lf = _scan_csv(info, read, names, null_values=read.null_values or None)
    try:
        # eager: a ragged row only fails when the fields are parsed, not when rows are counted
        df = lf.collect()
    except pl.exceptions.PolarsError:
        df = None  # ragged rows and the like: the exact path below finds them
    if df is not None and df.height + header == info.lines:
        lf = df.lazy().with_columns(
            pl.col(schema.SOURCE_LINE).cast(pl.Int64),
            pl.when(pl.all_horizontal(pl.col(names).is_null()))
            .then(pl.lit("empty row"))
            .otherwise(pl.lit(None, pl.String))
            .alias(READ_ERROR),
        )
        return _finish(lf, info, names, required, read, info.has_blanks)
    return _finish(_python_csv(info, read, names), info, names, required, read, info.has_blanks)


def _python_csv(info: SourceFile, read: ReadConfig, names: list[str]) -> pl.LazyFrame:
    """Exact but slow: quoted fields spanning lines, ragged rows. Rare, so a Python loop."""
    n = len(names)
    nulls = set(read.null_values) | {""}
    lines: list[int] = []
    errors: list[str | None] = []
    columns: list[list[str | None]] = [[] for _ in names]
    with open(info.path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=read.separator)
        if read.has_header:
            next(reader, None)
        start = reader.line_num + 1
        for row in reader:
            lines.append(start)
            start = reader.line_num + 1
            if not row:
                errors.append("empty row")
            elif len(row) != n:
                errors.append(f"wrong number of fields (expected {n})")
            else:
                errors.append(None)
            for i, col in enumerate(columns):
                v = row[i] if i < len(row) else None
                col.append(None if v is None or v in nulls else v)
    data: dict[str, Any] = {schema.SOURCE_LINE: pl.Series(lines, dtype=pl.Int64)}
    data[READ_ERROR] = pl.Series(errors, dtype=pl.String)
    for name, col in zip(names, columns, strict=True):
        data[name] = pl.Series(col, dtype=pl.String)
    return pl.DataFrame(data).lazy()


def _read_whitespace(path: Path, read: ReadConfig, required: Sequence[str]) -> RawSource:
    info = inspect_file(path)
    header = 1 if read.has_header else 0
    _check_not_empty(info, header)
    names = _header_names(info, read, str.split)
    _check_columns(info.path, names, required)
    n = len(names)
    tokens = pl.col(_LINE).str.extract_all(r"\S+")
    lf = (
        _scan_lines(info, header)
        .with_columns(tokens.alias("_tokens"))
        .with_columns(
            _field_errors(pl.col("_tokens").list.len(), n).alias(READ_ERROR),
            *[
                pl.col("_tokens").list.get(i, null_on_oob=True).alias(c)
                for i, c in enumerate(names)
                if c in required
            ],
        )
    )
    return _finish(lf, info, names, required, read, needs_strip=False)


# --- parquet -----------------------------------------------------------------------------------


def _read_parquet(path: Path, required: Sequence[str]) -> RawSource:
    """Parquet keeps its stored types (they are already typed; validation accepts them)."""
    info = inspect_file(path, text=False)
    _check_not_empty(info, 0)
    lf = pl.scan_parquet(path)
    try:
        names = list(lf.collect_schema().names())
        n_rows = lf.select(pl.len()).collect().item()
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{path}: not a readable Parquet file: {_first_line_of(exc)}") from None
    if n_rows == 0:
        raise DataError(f"{path}: Parquet file has no rows")
    _check_columns(info.path, names, required)
    info = SourceFile(
        path=info.path,
        resolved=info.resolved,
        size=info.size,
        sha256=info.sha256,
        lines=n_rows,
        has_quotes=False,
        is_text=False,
    )
    frame = lf.with_row_index(schema.SOURCE_LINE, offset=1).with_columns(
        pl.col(schema.SOURCE_LINE).cast(pl.Int64),
        pl.lit(None, pl.String).alias(READ_ERROR),
    )
    return _finish(frame, info, names, required)


def _first_line_of(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# --- JSON lines ---------------------------------------------------------------------------------


def _read_jsonl(path: Path, read: ReadConfig, required: Sequence[str]) -> RawSource:
    """One JSON object a line, optionally exploding a nested event list (OTTO).

    Leaves are decoded as strings (numbers too), so a type clash never aborts the read;
    a line that is not a JSON object of the expected shape is a ``malformed JSON`` row.
    """
    info = inspect_file(path)
    _check_not_empty(info, 0)
    top = [read.session_key] if read.explode and read.session_key else []
    nested = [c for c in required if c not in top]
    _check_json_keys(info, read, top, nested)
    leaf = pl.Struct({c: pl.String for c in nested})
    if read.explode:
        dtype = pl.Struct({**{c: pl.String for c in top}, read.explode: pl.List(leaf)})
    else:
        dtype = leaf
    lf = _scan_lines(info, 0).filter(pl.col(_LINE).str.strip_chars() != "")
    decoded = pl.col(_LINE).str.json_decode(dtype).alias("_rec")
    bad_lines: list[int] = []
    try:  # a counting pass: decodes every line but keeps nothing
        lf.select(decoded.is_null().sum()).collect(engine="streaming")
    except pl.exceptions.PolarsError:
        bad_lines = _malformed_json_lines(info, read)
    is_bad = pl.col(schema.SOURCE_LINE).is_in(bad_lines)
    lf = lf.with_columns(
        pl.when(is_bad).then(None).otherwise(pl.col(_LINE)).str.json_decode(dtype).alias("_rec"),
        pl.when(is_bad)
        .then(pl.lit("malformed JSON"))
        .otherwise(pl.lit(None, pl.String))
        .alias(READ_ERROR),
    ).unnest("_rec")
    if read.explode:
        missing_list = pl.col(read.explode).is_null() & pl.col(READ_ERROR).is_null()
        lf = (
            lf.with_columns(
                pl.when(missing_list)
                .then(pl.lit(f"missing '{read.explode}' list"))
                .otherwise(pl.col(READ_ERROR))
                .alias(READ_ERROR)
            )
            .explode(read.explode)
            .unnest(read.explode)
        )
    return _finish(lf, info, [*top, *nested], required, read)


def _check_json_keys(info: SourceFile, read: ReadConfig, top: list[str], nested: list[str]) -> None:
    """A configured key absent from every sampled record is a config error, not bad rows."""
    seen_top: set[str] = set()
    seen_nested: set[str] = set()
    sampled = 0
    with open(info.path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not isinstance(rec, dict):
                continue
            sampled += 1
            seen_top.update(rec)
            events = rec.get(read.explode) if read.explode else [rec]
            if isinstance(events, list):
                for ev in events[:_SAMPLE_RECORDS]:
                    if isinstance(ev, dict):
                        seen_nested.update(ev)
            if sampled >= _SAMPLE_RECORDS:
                break
    if sampled == 0:
        raise DataError(f"{info.path}: no JSON object found in the file")
    if read.explode and read.explode not in seen_top:
        raise DataError(f"{info.path}: key {read.explode!r} (read.explode) not found")
    missing = [k for k in top if k not in seen_top] + [k for k in nested if k not in seen_nested]
    if missing:
        raise DataError(
            f"{info.path}: key(s) {missing} not found in the first {sampled} records; "
            f"the records have {sorted(seen_top | seen_nested)}"
        )


def _malformed_json_lines(info: SourceFile, read: ReadConfig) -> list[int]:
    """Line numbers of records Polars cannot decode into the expected shape (error path only)."""
    bad: list[int] = []
    with open(info.path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                bad.append(n)
                continue
            ok = isinstance(rec, dict)
            if ok and read.explode:
                events = rec.get(read.explode)
                ok = events is None or (
                    isinstance(events, list) and all(isinstance(e, dict) for e in events)
                )
            if ok:
                values = list(rec.values())
                if read.explode and isinstance(rec.get(read.explode), list):
                    values = [v for k, v in rec.items() if k != read.explode]
                    values += [v for e in rec[read.explode] for v in e.values()]
                ok = all(not isinstance(v, dict | list) for v in values)
            if not ok:
                bad.append(n)
    return bad


# --- benchmark split ---------------------------------------------------------------------------


def read_benchmark_train(path: str | Path) -> RawSource:
    """``train_sessions.txt``: one session a line, item ids separated by blanks.

    The session id is the line number; timestamps are synthetic (see :data:`BENCHMARK_EPOCH`).
    A blank line holds no session and yields no rows. A folder means ``folder/train_sessions.txt``.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "train_sessions.txt"
    if not p.is_file():
        raise DataError(f"{p}: benchmark train file not found")
    info = inspect_file(p)
    _check_not_empty(info, 0)
    epoch_us = int(BENCHMARK_EPOCH.timestamp()) * 1_000_000
    lf = (
        _scan_lines(info, 0)
        .with_columns(pl.col(_LINE).str.extract_all(r"\S+").alias(schema.ITEM_ID))
        .filter(pl.col(schema.ITEM_ID).list.len() > 0)
        .with_columns(pl.int_ranges(0, pl.col(schema.ITEM_ID).list.len()).alias("_pos"))
        .explode(schema.ITEM_ID, "_pos")
        .with_columns(
            pl.col(schema.SOURCE_LINE).cast(pl.String).alias(schema.SESSION_ID),
            (
                pl.lit(epoch_us)
                + pl.col(schema.SOURCE_LINE) * 3_600_000_000
                + pl.col("_pos").cast(pl.Int64) * 1_000_000
            )
            .cast(pl.Datetime("us"))
            .dt.replace_time_zone("UTC")
            .alias(schema.TIMESTAMP),
            pl.lit(None, pl.String).alias(READ_ERROR),
        )
    )
    cols = [schema.SESSION_ID, schema.ITEM_ID, schema.TIMESTAMP]
    return _finish(lf, info, cols, cols, needs_strip=False)


def read_benchmark_test(path: str | Path) -> RawSource:
    """``test.tsv``: header ``prefix<TAB>target``; prefix = blank-separated item ids.

    Rows carry :data:`schema.PREFIX_IDS` (a list of strings) and :data:`schema.TARGET_ID`;
    a line without exactly two fields is a read error (quarantined), never skipped silently.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "test.tsv"
    if not p.is_file():
        raise DataError(f"{p}: benchmark test file not found")
    info = inspect_file(p)
    _check_not_empty(info, 0)
    header = tuple(h.strip() for h in _first_line(p).split("\t"))
    if header != BENCHMARK_TEST_HEADER:
        raise DataError(
            f"{p}:1: expected the header 'prefix<TAB>target', got {_first_line(p)[:80]!r}"
        )
    _check_not_empty(info, 1)
    parts = pl.col(_LINE).str.splitn("\t", 3).struct.rename_fields(["_prefix", "_target", _EXTRA])
    n_fields = (
        pl.when(pl.col(_LINE).str.strip_chars() == "")
        .then(0)
        .when(pl.col(_EXTRA).is_not_null())
        .then(3)
        .when(pl.col("_target").is_null())
        .then(1)
        .otherwise(2)
    )
    lf = (
        _scan_lines(info, 1)
        .with_columns(parts.alias("_parts"))
        .unnest("_parts")
        .with_columns(
            _field_errors(n_fields, 2).alias(READ_ERROR),
            pl.col("_prefix").str.extract_all(r"\S+").alias(schema.PREFIX_IDS),
            pl.col("_target").str.strip_chars().replace("", None).alias(schema.TARGET_ID),
        )
    )
    cols = [schema.PREFIX_IDS, schema.TARGET_ID]
    return _finish(lf, info, cols, cols)


# --- raw text for the quarantine ---------------------------------------------------------------


def raw_lines(path: str | Path, lines: Sequence[int]) -> dict[int, str]:
    """The text of the given physical lines (1-based), each cut to :data:`RAW_MAX_CHARS`.

    Only quarantined lines are looked up, so this stays cheap even on a large file.
    """
    if not lines:
        return {}
    wanted = pl.Series(sorted(set(lines)), dtype=pl.Int64)
    df = (
        pl.scan_lines(str(path), name=_LINE, row_index_name="_n", row_index_offset=1)
        .filter(pl.col("_n").cast(pl.Int64).is_in(wanted.implode()))
        .select(pl.col("_n").cast(pl.Int64), pl.col(_LINE).str.slice(0, RAW_MAX_CHARS))
        .collect()
    )
    return dict(zip(df.get_column("_n").to_list(), df.get_column(_LINE).to_list(), strict=True))
