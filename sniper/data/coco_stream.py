"""Streaming read of COCO instances JSON: bounded memory whatever the file's size.

``json.load`` of a 15M-box file holds every record as Python objects (well over 15 GB).
:func:`load_coco_json` instead reads the file in chunks of :data:`CHUNK_SIZE` bytes and walks
the top-level object itself: ``images`` and ``annotations`` (in any order, other keys decoded
and ignored) are cut into runs of whole elements that are decoded in one C call each
(``json`` on ``"[" + run + "]"``), and each run becomes columns right away
(:func:`sniper.data.coco._parse_records`, :func:`~sniper.data.coco._parse_images`); the decoded
records, segmentations included, are dropped after their run. What messages need of a record
later (its ``id``, ``image_id``, ``category_id`` and bbox as written) is kept as columns.

The result, every message included, is the one :func:`sniper.data.coco.load_coco` gives for the
same file parsed in memory; a syntax error is the same one-line ``ValueError`` naming the file,
line and column (``read_json``'s), a file that is not UTF-8 the same byte offset, and errors keep
their precedence (syntax, then the top-level keys, then images, categories, annotations).

Runs are found without a tokenizer: a cut is a ``}`` followed by ``,`` or ``]``; the decode of
``"[" + run + "]"`` only succeeds when the cut is a real element boundary (a cut inside a string
or a nested value leaves it unbalanced), and otherwise the elements up to that cut are decoded
one at a time (``raw_decode``), which also pins down the position of a real syntax error.

Parsed files are cached (:mod:`sniper.data.annotation_cache`).
"""

from __future__ import annotations

import codecs
import contextlib
import gc
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from json.decoder import scanstring
from pathlib import Path
from typing import Any, BinaryIO

from sniper.data import annotation_cache
from sniper.data.coco import (
    CocoDataset,
    ImageRecord,
    LoadReport,
    _assemble,
    _check_top,
    _ColumnBuilder,
    _ColumnRecords,
    _parse_categories,
    _parse_images,
)
from sniper.errors import CocoFormatError
from sniper.io import read_json

__all__ = ["CHUNK_SIZE", "load_coco_json"]

CHUNK_SIZE = 4 << 20  # bytes read at a time
_WS = re.compile(r"[ \t\n\r]*")
# A decode error this close to the end of the text read so far may be the text's end, not the file's.
_MARGIN = 64
_BOM = codecs.BOM_UTF8
_STREAMED = ("images", "annotations")


class _Stream:
    """A sliding window of the file's text: UTF-8 (BOM dropped), newlines translated as text mode does."""

    def __init__(self, f: BinaryIO, path: Path, chunk_size: int) -> None:
        self.f = f
        self.path = path
        self.chunk = max(1, int(chunk_size))
        self.buf = ""
        self.pos = 0  # in buf
        self.base = 0  # absolute character offset of buf[0]
        self.eof = False
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._newlines = io.IncrementalNewlineDecoder(None, translate=True)
        self._consumed = 0  # bytes the UTF-8 decoder has turned into text (after the BOM)
        self._head = True
        self.decoder = json.JSONDecoder()
        self.scan_once = self.decoder.scan_once
        self.syntax_error: ValueError | None = None
        self._slow_until = -1  # absolute offset up to which array elements are decoded one at a time

    # ---------------------------------------------------------------- reading

    def _read_text(self, n: int) -> str:
        """At least one character, or '' at the end of the file."""
        while True:
            data = self.f.read(n)
            final = not data
            if self._head:
                self._head = False
                while 0 < len(data) < 3:  # the BOM check needs 3 bytes (or the whole file)
                    more = self.f.read(3 - len(data))
                    if not more:
                        break
                    data += more
                if data.startswith(_BOM):
                    data = data[3:]
                elif 0 < len(data) < 3 and _BOM.startswith(data):
                    # what the utf-8-sig codec makes of a file that is a bare BOM prefix: no text
                    data, final = b"", True
            pending = len(self._utf8.getstate()[0])
            try:
                text = self._utf8.decode(data, final=final)
            except UnicodeDecodeError as e:
                at = self._consumed + e.start  # (pending + data) starts at the first unconverted byte
                raise ValueError(
                    f"{self.path}: not UTF-8 text (byte {at}); JSON files must be UTF-8"
                ) from None
            self._consumed += len(data) + pending - len(self._utf8.getstate()[0])
            text = self._newlines.decode(text, final=final)
            if text or final:
                if final:
                    self.eof = True
                return text

    def more(self, keep: int | None = None, grow: bool = False) -> bool:
        """Append the next chunk, dropping the text before ``pos`` (or before absolute ``keep``);
        ``grow``: read at least as much as is kept (a value longer than a chunk)."""
        if self.eof:
            return False
        drop = self.pos if keep is None else min(self.pos, keep - self.base)
        n = max(self.chunk, len(self.buf) - drop) if grow else self.chunk
        text = self._read_text(n)
        self.buf = self.buf[drop:] + text
        self.base += drop
        self.pos -= drop
        return True

    def at(self) -> int:
        return self.base + self.pos

    def skip_ws(self, keep: int | None = None) -> str:
        """Skip whitespace; the next character, or '' at the end of the file."""
        keep = self.at() if keep is None else keep
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more(keep):
                return ""

    # ---------------------------------------------------------------- errors

    def error(self, msg: str, at: int) -> ValueError:
        """``read_json``'s message for a syntax error at absolute offset ``at``."""
        line, col = _line_col(self.path, at)
        err = ValueError(f"{self.path}: not valid JSON ({msg} at line {line}, column {col})")
        self.syntax_error = err
        return err

    def drain(self) -> None:
        """Read the rest of the file: ``read_json`` decodes it all first, so a UTF-8 error anywhere wins."""
        while not self.eof:
            self.buf, self.pos = "", 0
            self._read_text(self.chunk)

    def fail(self, prefix: str, start: int) -> ValueError:
        """The error ``json`` gives at the current position, in the context that ``prefix`` stands for.

        ``prefix`` is a tiny document that ends where the file's text from absolute ``start`` goes
        on (``"[null"`` after an array element, ``'{""'`` after a key, ...): decoding it plus that
        text up to the current character gives the message ``json.load`` of the whole file gives,
        whatever this Python's wording."""
        text = prefix + self.buf[start - self.base : self.pos + 1]
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            return self.error(e.msg, start + e.pos - len(prefix))
        return self.error("Expecting value", self.at())  # not reached for a real syntax error

    # ---------------------------------------------------------------- values

    def value(self) -> Any:
        """Decode the value at ``pos`` (reading on as long as it may be incomplete)."""
        while True:
            try:
                v, end = self.scan_once(self.buf, self.pos)
            except StopIteration as e:
                err_msg, err_at = "Expecting value", e.value
            except json.JSONDecodeError as e:
                err_msg, err_at = e.msg, e.pos
            else:
                if end < len(self.buf) or self.eof or type(v) not in (int, float):
                    self.pos = end
                    return v
                self.more(grow=True)  # a number at the end of the window may go on
                continue
            maybe_cut = err_msg.startswith("Unterminated string") or len(self.buf) - err_at < _MARGIN
            if self.eof or not maybe_cut:
                raise self.error(err_msg, self.base + err_at) from None
            self.more(grow=True)

    def key(self) -> str:
        """Decode the object key whose opening quote is at ``pos``."""
        while True:
            try:
                k, end = scanstring(self.buf, self.pos + 1, True)
            except json.JSONDecodeError as e:
                maybe_cut = e.msg.startswith("Unterminated string") or len(self.buf) - e.pos < _MARGIN
                if self.eof or not maybe_cut:
                    raise self.error(e.msg, self.base + e.pos) from None
                self.more(grow=True)
                continue
            self.pos = end
            return k

    def _run(self) -> list | None:
        """Decode the longest run of whole elements from ``pos`` in one call, or None (see the module doc)."""
        buf = self.buf
        end = len(buf)
        for _ in range(2):
            cut = buf.rfind("}", self.pos, end)
            while cut >= 0:
                nxt = _WS.match(buf, cut + 1).end()
                if nxt < len(buf) and buf[nxt] in ",]":
                    break
                cut = buf.rfind("}", self.pos, cut)
            if cut < 0:
                break
            doc = "[" + buf[self.pos : cut + 1] + "]"
            try:
                items, stop = self.decoder.raw_decode(doc)
            except json.JSONDecodeError:
                end = cut  # one more try before this cut
                continue
            # stop < len(doc): the array itself ended inside the run, at the "]" doc[stop - 1]
            self.pos = cut + 1 if stop == len(doc) else self.pos + stop - 2
            return items
        self._slow_until = self.base + len(buf)  # one element at a time through this window
        return None

    def array(self, on_run: Callable[[list], None]) -> None:
        """Stream the array at ``pos``: ``on_run(elements)`` for consecutive runs of its elements."""
        self.pos += 1
        start = self.at()
        c = self.skip_ws()
        if c == "]":
            self.pos += 1
            return
        if c == "":
            raise self.fail("[", start)
        self._slow_until = -1
        pending: list = []
        while True:
            if len(self.buf) - self.pos < self.chunk // 2 and not self.eof:
                self.more()  # a full window makes long runs
            items = self._run() if self.at() >= self._slow_until else None
            if items is not None:
                if pending:
                    on_run(pending)
                    pending = []
                on_run(items)
            else:
                pending.append(self.value())
                if len(pending) >= 4096:
                    on_run(pending)
                    pending = []
            after = self.at()
            c = self.skip_ws()
            if c == ",":
                comma = self.at()
                self.pos += 1
                c = self.skip_ws(keep=comma)
                if c in ("]", ""):
                    raise self.fail("[null", comma)
                continue
            if c == "]":
                self.pos += 1
                if pending:
                    on_run(pending)
                return
            raise self.fail("[null", after)


def _line_col(path: Path, at: int) -> tuple[int, int]:
    """Line and column (as ``json`` counts them) of absolute text offset ``at``: the file is read
    again up to there, so the stream itself never counts newlines."""
    with open(path, "rb") as f:
        s = _Stream(f, path, 1 << 20)
        start, lines, last = 0, 0, -1
        while True:
            text = s._read_text(s.chunk)
            upto = min(at - start, len(text))
            lines += text.count("\n", 0, upto)
            k = text.rfind("\n", 0, upto)
            if k >= 0:
                last = start + k
            start += len(text)
            if at <= start or s.eof:
                return lines + 1, at - last


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic GC while decoding: the records are acyclic and short-lived, the scans pure cost."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class _Images:
    def __init__(self, source: str) -> None:
        self.source = source
        self.records: list[ImageRecord] = []
        self.seen: dict[int, int] = {}
        self.n = 0
        self.error: CocoFormatError | None = None

    def __call__(self, items: list) -> None:
        if self.error is None:
            try:
                self.records += _parse_images(self.source, items, self.n, self.seen)
            except CocoFormatError as e:  # raised after the whole file is read: syntax errors come first
                self.error = e
                self.records, self.seen = [], {}
        self.n += len(items)


def _stream_top(
    s: _Stream, source: str
) -> tuple[dict[str, Any], _Images | None, _ColumnBuilder | None] | None:
    """Walk the top-level object; None when the file does not start with one."""
    c = s.skip_ws()
    if c != "{":
        return None
    s.pos += 1
    values: dict[str, Any] = {}
    images: _Images | None = None
    anns: _ColumnBuilder | None = None
    start = s.at()
    c = s.skip_ws()
    if c == "}":
        s.pos += 1
    else:
        prefix = "{"
        while True:
            if c != '"':
                raise s.fail(prefix, start)
            key = s.key()
            after_key = s.at()
            if s.skip_ws() != ":":
                raise s.fail('{""', after_key)
            s.pos += 1
            c = s.skip_ws()
            if key in _STREAMED and c == "[":
                values[key] = []  # a list: the type check passes; the content is in the handler
                if key == "images":
                    images = _Images(source)
                    s.array(images)
                    images.seen = {}  # the duplicate check is done: free its table
                else:
                    anns = _ColumnBuilder(LoadReport(source=source))
                    s.array(anns.add)
            else:
                values[key] = s.value()
                if key == "images":
                    images = None
                elif key == "annotations":
                    anns = None
            after = s.at()
            c = s.skip_ws()
            if c == ",":
                start = s.at()
                s.pos += 1
                c = s.skip_ws(keep=start)
                prefix = '{"":null'
                continue
            if c == "}":
                s.pos += 1
                break
            raise s.fail('{"":null', after)
    after = s.at()
    if s.skip_ws() != "":
        raise s.fail("{}", after)
    return values, images, anns


def load_coco_json(
    path: str | os.PathLike[str],
    *,
    strict: bool = False,
    chunk_size: int = CHUNK_SIZE,
    cache: bool = True,
) -> CocoDataset:
    """:func:`sniper.data.coco.load_coco` of a JSON file, streamed; the parse is cached (see the module doc).

    ``chunk_size``: bytes read at a time (tests use tiny ones). ``cache=False`` neither reads
    nor writes the cache (as ``SNIPER_CACHE=off``).
    """
    path = Path(path)
    source = str(path)
    key = annotation_cache.key_for([path], {"kind": "coco-json"}) if cache else None
    if key is not None:
        hit = annotation_cache.load(key, source, strict=strict)
        if hit is not None:
            return hit
    with _gc_paused():
        ds = _stream_parse(path, source, chunk_size=chunk_size)
    if key is not None:
        annotation_cache.store(key, ds)
    if strict:
        ds.report.raise_first_skip()
    return ds


def _stream_parse(path: Path, source: str, *, chunk_size: int) -> CocoDataset:
    """Non-strict load (the report remembers the first skip for strict callers)."""
    with open(path, "rb") as f:
        s = _Stream(f, path, chunk_size)
        try:
            top = _stream_top(s, source)
        except ValueError as e:
            if e is s.syntax_error:
                s.drain()  # a UTF-8 error further on is the one to report, as read_json does
            raise
    if top is None:  # not an object: the in-memory reader gives the exact error (or the type one)
        _check_top(source, read_json(path))
        raise AssertionError("unreachable: a file that does not start with '{' is not an object")
    values, images, anns = top
    _check_top(source, values)
    if images is not None and images.error is not None:
        raise images.error
    image_records = images.records if images is not None else _parse_images(source, values["images"])
    categories = _parse_categories(source, values["categories"])
    if anns is None:  # "annotations" held something else that passed as a list: an empty one
        anns = _ColumnBuilder(LoadReport(source=source))
    report = anns.report
    cols = anns.columns()
    return _assemble(image_records, categories, cols, _ColumnRecords(cols), report, strict=False)
