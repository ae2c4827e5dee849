"""The model's input contract: one ``float32`` row of width :data:`FEATURE_WIDTH` per action.

:func:`action_features` turns a batch of actions (action text + stated intent) into an
``(n, FEATURE_WIDTH)`` ``float32`` matrix.  Column layout (version :data:`FEATURE_VERSION`):

=====================  ======  =============================================================
columns                width   content
=====================  ======  =============================================================
``[0, 512)``           512     hashed character 3-grams of the lower-cased action text
``[512, 576)``         64      hashed character 3-grams of the lower-cased stated intent
``[576, 590)``         14      numeric features of the raw text, in :data:`NUMERIC_FEATURES`
=====================  ======  =============================================================

N-gram blocks come from :func:`nethical_grpc.jit_optimizations.extract_ngram_features_batch`
(32-bit FNV-1a of each window of 3 code points, bucket ``h % dim``; Numba or NumPy, the
same counts on both paths).  Each block is transformed as ``log1p(count)`` and then scaled
to unit L2 norm per row (an all-zero block, e.g. an empty intent or a text shorter than 3
characters, stays zero).  Lower-casing uses :meth:`str.lower`.

Numeric features (all in ``[0, 1]``; "chars" are Unicode code points of the raw text; a
count feature is ``min(log1p(count) / log1p(64), 1)``; fractions are of the text length
and ``0`` for an empty text):

======  ======================  =========================================================
index   name                    definition
======  ======================  =========================================================
0       ``log_length``          ``min(log1p(len(text)) / log1p(65536), 1)``
1       ``frac_upper``          fraction of ASCII ``A``-``Z``
2       ``frac_digit``          fraction of ASCII ``0``-``9``
3       ``frac_space``          fraction of space, tab, CR, LF
4       ``frac_punct``          fraction of other printable ASCII (not alphanumeric/space)
5       ``frac_non_ascii``      fraction of code points above 127
6       ``shell_meta``          count of shell metacharacters ``; | & $ ` < >``
7       ``slashes``             count of ``/``
8       ``quotes``              count of ``'`` and ``"``
9       ``has_url``             1 if ``://`` occurs, else 0
10      ``has_dotted_numbers``  1 if at least 3 "digit ``.`` digit" windows occur (IPv4-like)
11      ``intent_log_length``   ``min(log1p(len(intent)) / log1p(65536), 1)``
12      ``intent_empty``        1 if the intent is empty or only whitespace
13      ``intent_overlap``      cosine similarity of the text's and the intent's 3-gram
                                counts, both folded to 64 buckets (0 if either is empty)
======  ======================  =========================================================

With Numba, one compiled pass computes every column of every row (:func:`_features_kernel`);
per item, only :meth:`str.lower`, ``len`` and :meth:`str.isspace` run in Python.  Without
Numba the same columns come from NumPy over the batch's concatenated code points
(:func:`_features_numpy`).  The two paths count the same n-grams and characters with the
same formulas; only the rounding of sums may differ (a parity test holds them within
``1e-5``).  On either path the output is deterministic: the same texts give bit-identical
rows, in any batch and in any process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from nethical_grpc.jit import is_jit_available, maybe_njit
from nethical_grpc.jit_optimizations import _ngram_row, extract_ngram_features_batch

__all__ = [
    "FEATURE_VERSION",
    "FEATURE_WIDTH",
    "INTENT_NGRAM_DIM",
    "NGRAM_N",
    "NUMERIC_FEATURES",
    "NUMERIC_OFFSET",
    "TEXT_NGRAM_DIM",
    "action_features",
]

Float32Array = npt.NDArray[np.float32]
Int64Array = npt.NDArray[np.int64]

#: Version of the column layout; a model trained on another version must not be loaded.
FEATURE_VERSION: Final = "ngram3-512-64-num14-v1"
#: Characters per n-gram.
NGRAM_N: Final = 3
#: Hash buckets of the action-text block.
TEXT_NGRAM_DIM: Final = 512
#: Hash buckets of the stated-intent block (divides :data:`TEXT_NGRAM_DIM`).
INTENT_NGRAM_DIM: Final = 64
#: Names of the numeric columns, in order (see the module docstring).
NUMERIC_FEATURES: Final = (
    "log_length",
    "frac_upper",
    "frac_digit",
    "frac_space",
    "frac_punct",
    "frac_non_ascii",
    "shell_meta",
    "slashes",
    "quotes",
    "has_url",
    "has_dotted_numbers",
    "intent_log_length",
    "intent_empty",
    "intent_overlap",
)
#: First numeric column.
NUMERIC_OFFSET: Final = TEXT_NGRAM_DIM + INTENT_NGRAM_DIM
#: Width ``D`` of one feature row.
FEATURE_WIDTH: Final = NUMERIC_OFFSET + len(NUMERIC_FEATURES)

_LOG_LEN_SCALE: Final = float(np.log1p(65536.0))
_LOG_COUNT_SCALE: Final = float(np.log1p(64.0))
# Character classes of code points 0..127 as bit flags; index 128 stands for "above 127".
# The bit order is the column order used by _numeric (upper, digit, space, punct, non-ASCII,
# shell meta, slash, quote).
_UPPER, _DIGIT, _SPACE, _PUNCT, _NON_ASCII, _META, _SLASH, _QUOTE = (1 << i for i in range(8))
_COLON: Final = ord(":")
_SLASH_CP: Final = ord("/")
_DOT: Final = ord(".")


def _class_table() -> npt.NDArray[np.uint8]:
    table = np.zeros(129, dtype=np.uint8)
    for cp in range(128):
        c = chr(cp)
        if "A" <= c <= "Z":
            table[cp] |= _UPPER
        elif "0" <= c <= "9":
            table[cp] |= _DIGIT
        elif c in " \t\r\n":
            table[cp] |= _SPACE
        elif 33 <= cp <= 126 and not "a" <= c <= "z":
            table[cp] |= _PUNCT
        if c in ";|&$`<>":
            table[cp] |= _META
        if c == "/":
            table[cp] |= _SLASH
        if c in "'\"":
            table[cp] |= _QUOTE
    table[128] = _NON_ASCII
    return table


_CLASSES: Final = _class_table()


def _check_texts(values: Sequence[str], name: str) -> list[str]:
    if isinstance(values, str | bytes):
        raise ValueError(f"{name} must be a sequence of str, not a single {type(values).__name__}")
    items = list(values)
    if not all(isinstance(v, str) for v in items):
        bad = next(i for i, v in enumerate(items) if not isinstance(v, str))
        raise ValueError(f"{name}[{bad}] must be a str, got {type(items[bad]).__name__}")
    return items


def _code_points(texts: list[str]) -> tuple[Int64Array, Int64Array]:
    """Concatenated code points of ``texts`` and each text's length."""
    joined = "".join(texts)
    raw = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    return raw.astype(np.int64), lengths


def _log_ngrams(texts: list[str], dim: int) -> tuple[Float32Array, Float32Array]:
    """``(raw counts, log1p counts scaled to unit L2 norm per row)``."""
    counts = extract_ngram_features_batch(texts, n=NGRAM_N, dim=dim)
    logs = np.log1p(counts)
    norms = np.sqrt(np.add.reduce(logs * logs, axis=1))
    np.divide(logs, norms[:, None], out=logs, where=norms[:, None] > 0.0)
    return counts, logs


def _char_counts_numpy(
    cps: Int64Array, starts: Int64Array, ends: Int64Array
) -> tuple[npt.NDArray[np.float64], Int64Array]:
    """Per row: the count of each character class ``1 << k`` (``k < 8``, by the table) and
    of ``://`` and "digit ``.`` digit" windows that start and end inside the row.

    From prefix sums of per-character flags (columns 8 and 9 mark a window starting at
    that position); a row's count is the difference of the prefix sums at its ends
    (windows: at its last start that still fits, ``end - 3``), so nothing leaks between
    rows.
    """
    total = int(cps.shape[0])
    cls = _CLASSES[np.minimum(cps, 128)]
    flags = np.zeros((total, 10), dtype=np.uint8)
    flags[:, :8] = np.unpackbits(cls[:, None], axis=1, bitorder="little")
    m = max(total - 2, 0)
    digit = flags[:, 1]
    flags[:m, 8] = (cps[:m] == _COLON) & (cps[1 : m + 1] == _SLASH_CP) & (cps[2:] == _SLASH_CP)
    flags[:m, 9] = digit[:m] & (cps[1 : m + 1] == _DOT) & digit[2:]
    prefix = np.zeros((total + 1, 10), dtype=np.int64)
    np.cumsum(flags, axis=0, dtype=np.int64, out=prefix[1:])
    chars = (prefix[ends, :8] - prefix[starts, :8]).astype(np.float64)
    last = np.maximum(ends - 2, starts)
    return chars, prefix[last, 8:] - prefix[starts, 8:]


@maybe_njit()
def _char_counts_numba(
    cps: Int64Array, starts: Int64Array, ends: Int64Array
) -> tuple[npt.NDArray[np.float64], Int64Array]:  # pragma: no cover (compiled)
    """:func:`_char_counts_numpy` in one pass over the characters (same counts)."""
    n = starts.shape[0]
    chars = np.zeros((n, 8), dtype=np.float64)
    windows = np.zeros((n, 2), dtype=np.int64)
    for r in range(n):
        end = ends[r]
        for i in range(starts[r], end):
            c = cps[i]
            cls = _CLASSES[c if c < 128 else 128]
            for k in range(8):
                if (cls >> k) & 1:
                    chars[r, k] += 1.0
            if i + 2 < end:
                nxt, after = cps[i + 1], cps[i + 2]
                if c == _COLON and nxt == _SLASH_CP and after == _SLASH_CP:
                    windows[r, 0] += 1
                if (
                    (cls >> 1) & 1
                    and nxt == _DOT
                    and (_CLASSES[after if after < 128 else 128] >> 1) & 1
                ):
                    windows[r, 1] += 1
    return chars, windows


@maybe_njit()
def _unit_log_block(counts: Float32Array, row: Float32Array, offset: int) -> None:
    """``row[offset:offset + len(counts)] = log1p(counts)`` scaled to unit L2 norm (zeros
    stay zero)."""
    dim = counts.shape[0]
    total = 0.0
    for j in range(dim):
        c = counts[j]
        if c == 0.0:  # most buckets: log1p(0) is 0, and stays 0 when scaled
            row[offset + j] = 0.0
            continue
        v = np.log1p(c)
        row[offset + j] = v
        total += float(v) * float(v)
    if total > 0.0:
        scale = 1.0 / np.sqrt(total)
        for j in range(dim):
            row[offset + j] = row[offset + j] * scale


@maybe_njit()
def _features_kernel(
    cps: Int64Array, ends: Int64Array, intent_blank: npt.NDArray[np.bool_], out: Float32Array
) -> None:  # pragma: no cover (compiled)
    """Every column of every row in one pass (the compiled path of :func:`action_features`).

    ``cps`` holds, concatenated, the ``n`` raw texts, then the ``n`` lower-cased texts, the
    ``n`` lower-cased intents and the ``n`` raw intents; ``ends`` (``4n``) where each ends.
    """
    n = intent_blank.shape[0]
    starts = np.empty(4 * n, dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1]
    chars, windows = _char_counts_numba(cps, starts[:n], ends[:n])
    text_counts = np.zeros(TEXT_NGRAM_DIM, dtype=np.float32)
    intent_counts = np.zeros(INTENT_NGRAM_DIM, dtype=np.float32)
    folds = TEXT_NGRAM_DIM // INTENT_NGRAM_DIM
    num = np.empty(14, dtype=np.float64)
    for r in range(n):
        row = out[r]
        text_counts[:] = 0.0
        _ngram_row(cps[starts[n + r] : ends[n + r]], NGRAM_N, TEXT_NGRAM_DIM, text_counts)
        intent_counts[:] = 0.0
        _ngram_row(
            cps[starts[2 * n + r] : ends[2 * n + r]], NGRAM_N, INTENT_NGRAM_DIM, intent_counts
        )
        _unit_log_block(text_counts, row, 0)
        _unit_log_block(intent_counts, row, TEXT_NGRAM_DIM)

        length = ends[r] - starts[r]
        intent_length = ends[3 * n + r] - starts[3 * n + r]
        num[0] = np.log1p(float(length)) / _LOG_LEN_SCALE
        per_char = 1.0 / max(length, 1)
        for k in range(5):  # upper .. non-ASCII
            num[1 + k] = chars[r, k] * per_char
        for k in range(3):  # meta, slashes, quotes
            num[6 + k] = np.log1p(chars[r, 5 + k]) / _LOG_COUNT_SCALE
        num[9] = 1.0 if windows[r, 0] > 0 else 0.0
        num[10] = 1.0 if windows[r, 1] >= 3 else 0.0
        num[11] = np.log1p(float(intent_length)) / _LOG_LEN_SCALE
        num[12] = 1.0 if intent_blank[r] else 0.0
        aa = 0.0
        ab = 0.0
        bb = 0.0
        for j in range(INTENT_NGRAM_DIM):
            a = 0.0
            for f in range(folds):
                a += float(text_counts[f * INTENT_NGRAM_DIM + j])
            b = float(intent_counts[j])
            aa += a * a
            ab += a * b
            bb += b * b
        denom = np.sqrt(aa * bb)
        num[13] = ab / denom if denom > 0.0 else 0.0
        for k in range(14):
            row[NUMERIC_OFFSET + k] = min(max(num[k], 0.0), 1.0)


def _features_compiled(texts: list[str], intents: list[str]) -> Float32Array:
    n = len(texts)
    parts = [*texts, *(t.lower() for t in texts), *(t.lower() for t in intents), *intents]
    raw = np.frombuffer("".join(parts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    ends = np.cumsum(np.fromiter(map(len, parts), dtype=np.int64, count=4 * n))
    blank = np.fromiter((not t or t.isspace() for t in intents), dtype=np.bool_, count=n)
    out = np.empty((n, FEATURE_WIDTH), dtype=np.float32)
    _features_kernel(raw.astype(np.int64), ends, blank, out)
    return out


#: Characters (texts and intents) the NumPy path takes at once: it holds about 170 bytes
#: per character (n-gram codes, class flags and their prefix sums: 172 MB for a batch of
#: a million), so a batch is done in row chunks of about this many characters (the rows
#: are independent: the same features).
NUMPY_CHUNK_CHARS: Final = 1 << 18


def _features_numpy(texts: list[str], intents: list[str]) -> Float32Array:
    sizes = np.fromiter(
        (len(t) + len(i) for t, i in zip(texts, intents, strict=True)), np.int64, len(texts)
    )
    if len(texts) <= 1 or int(sizes.sum()) <= NUMPY_CHUNK_CHARS:
        return _features_numpy_rows(texts, intents)
    # each chunk ends at the first row that takes it to the bound (at least one row)
    reach = np.cumsum(sizes)
    out = np.empty((len(texts), FEATURE_WIDTH), dtype=np.float32)
    start = 0
    while start < len(texts):
        before = int(reach[start - 1]) if start else 0
        end = int(np.searchsorted(reach, before + NUMPY_CHUNK_CHARS, side="right"))
        end = max(end, start + 1)
        out[start:end] = _features_numpy_rows(texts[start:end], intents[start:end])
        start = end
    return out


def _features_numpy_rows(texts: list[str], intents: list[str]) -> Float32Array:
    n = len(texts)
    out = np.empty((n, FEATURE_WIDTH), dtype=np.float32)
    text_counts, text_block = _log_ngrams([t.lower() for t in texts], TEXT_NGRAM_DIM)
    intent_counts, intent_block = _log_ngrams([t.lower() for t in intents], INTENT_NGRAM_DIM)
    out[:, :TEXT_NGRAM_DIM] = text_block
    out[:, TEXT_NGRAM_DIM:NUMERIC_OFFSET] = intent_block
    out[:, NUMERIC_OFFSET:] = _numeric(texts, intents, text_counts, intent_counts)
    return out


_features = _features_compiled if is_jit_available() else _features_numpy


def _numeric(
    texts: list[str], intents: list[str], text_counts: Float32Array, intent_counts: Float32Array
) -> Float32Array:
    """The :data:`NUMERIC_FEATURES` columns (character classes and windows per row from
    :func:`_char_counts_numpy`, the rest from lengths and the n-gram counts)."""
    n = len(texts)
    cps, lengths = _code_points(texts)
    ends = np.cumsum(lengths)
    chars, windows = _char_counts_numpy(cps, ends - lengths, ends)

    out = np.zeros((n, len(NUMERIC_FEATURES)), dtype=np.float64)
    out[:, 0] = np.log1p(lengths) / _LOG_LEN_SCALE
    out[:, 1:6] = chars[:, 0:5] / np.maximum(lengths, 1)[:, None]  # upper .. non-ASCII
    out[:, 6:9] = np.log1p(chars[:, 5:8]) / _LOG_COUNT_SCALE  # meta, slashes, quotes
    out[:, 9] = windows[:, 0] > 0
    out[:, 10] = windows[:, 1] >= 3
    intent_lengths = np.fromiter((len(t) for t in intents), dtype=np.int64, count=n)
    out[:, 11] = np.log1p(intent_lengths) / _LOG_LEN_SCALE
    out[:, 12] = np.fromiter((not t or t.isspace() for t in intents), dtype=np.bool_, count=n)

    folded = text_counts.reshape(n, TEXT_NGRAM_DIM // INTENT_NGRAM_DIM, INTENT_NGRAM_DIM)
    a = folded.sum(axis=1, dtype=np.float64)
    b = intent_counts.astype(np.float64)
    denom = np.sqrt(np.add.reduce(a * a, axis=1) * np.add.reduce(b * b, axis=1))
    dots = np.add.reduce(a * b, axis=1)
    np.divide(dots, denom, out=out[:, 13], where=denom > 0.0)

    np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32)


def action_features(texts: Sequence[str], intents: Sequence[str]) -> Float32Array:
    """Feature rows for a batch of actions: ``(len(texts), FEATURE_WIDTH)`` ``float32``.

    ``texts[i]`` is the action text and ``intents[i]`` its stated intent (``""`` when there
    is none).  Layout and definitions are in the module docstring; every value is finite and
    in ``[0, 1]``.  An empty batch gives a ``(0, FEATURE_WIDTH)`` array.

    Raises ``ValueError`` when either argument is a single string instead of a sequence,
    holds a non-``str`` item, or the two lengths differ.
    """
    text_list = _check_texts(texts, "texts")
    intent_list = _check_texts(intents, "intents")
    if len(text_list) != len(intent_list):
        raise ValueError(
            f"texts and intents must have the same length, got {len(text_list)} "
            f"and {len(intent_list)}"
        )
    if not text_list:
        return np.empty((0, FEATURE_WIDTH), dtype=np.float32)
    return _features(text_list, intent_list)
