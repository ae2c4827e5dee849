"""Embedded audit store: SQLite with an FTS5 full-text index and a NumPy column mirror.
Needs no server.

Schema (``PRAGMA user_version = 2``; a version-1 file is taken as fully indexed)
--------------------------------------------------------------------------------
* ``audit_records``: one narrow row per record, ``seq`` INTEGER PRIMARY KEY (1, 2, 3, …
  in commit order, never reused: records are append-only), ``action_id`` UNIQUE,
  ``ts_us``, ``agent_code``, ``region_code``, ``decision`` (index in
  :data:`~nethical_grpc.storage.audit.model.DECISIONS`), ``risk_score``, ``doc_len``.
* ``audit_seq_top``: the highest ``seq`` ever given (one row), so that a table emptied
  by the retention does not give its numbers again.
* ``audit_agents`` / ``audit_regions``: id ↔ integer code.  A code is never given twice:
  new codes go above the highest held, and the row of the highest is always kept.  Codes
  no kept record uses are deleted now and then (:func:`_forget_codes`), so a store whose
  records are bounded holds a bounded number of codes however many agents it has seen;
  an agent seen again after that gets a new code.
* ``audit_documents``: the texts and JSON violations, keyed by ``seq``.
* ``audit_fts``: a contentless FTS5 table (rowid = ``seq``) over ``stated_intent``,
  ``action_text`` and ``tags``, tokenizer ``unicode61 remove_diacritics 2`` (splits on
  anything but letters/digits, ignores case and diacritics).  ``tags`` holds internal
  tokens for the agent (``a<code>``), region (``g<code>``), decision (``d<code>``) and
  risk decile (``k0``..``k9``) so that selective filters become doclist intersections.
* ``audit_terms``: document frequency per term; ``audit_term_counts``: ``(term, seq, tf)``
  for each term that occurs twice or more in a record (most occur once).  Both use the
  tokens of :func:`~nethical_grpc.storage.audit.model.text_tokens` and feed BM25.
* ``audit_index_top``: the highest ``seq`` the full-text index and the ranking tables
  cover (one row): every record at or below it is in them, none above.

When records are indexed
------------------------
A write stores a record's row and texts; the full-text index and the ranking tables take
it later, in chunks, when one of these comes first: a search or a statistics call with
text (it indexes every record waiting, then reads), :meth:`SqliteFtsAuditStore.refresh`,
a second with no writes (:data:`_INDEX_IDLE_S`), or more than :data:`_INDEX_LAG` records
waiting (a write then indexes the oldest past that many).  A record that a bound or the
retention drops before it was indexed leaves without touching the index, so a busy
bounded store whose texts nobody searches spends nothing on indexing them (about two
thirds of a write's cost with the index kept up, measured in ``docs/performance.md``),
and the first text search after a busy spell first indexes what waits (at most
:data:`_INDEX_LAG` records).  A search finds what was written before it began.

How a search runs
-----------------
The filter columns of every record are mirrored in memory as NumPy arrays indexed by
``seq`` (about 27 bytes per record; loaded at open, topped up from the table before each
read), so non-text conditions, BM25 scoring, ordering, keyset paging and statistics are
vectorised.  With text, the conditions are evaluated on the mirror first; then one FTS5
query returns the rowids (as ``group_concat`` text, parsed by a compiled kernel) that
contain every term, lie in the seq range of the passing records, and carry the tags of
the conditions that pass at most half of the records.  User text never reaches FTS5
syntax: :func:`fts5_match_expression` quotes every term of
:func:`~nethical_grpc.storage.audit.model.query_terms` as an FTS5 string inside a
``{stated_intent action_text}`` column filter, so ``"``, ``AND(``, ``*``, ``NEAR`` or
``col:`` in user input are separators or plain words and can never match ``tags``.

Cost: O(rowids FTS5 returns) at roughly 0.15 µs each (FTS5's own ``bm25()`` costs
several µs per row), plus about 1 ms per condition per million records.  A page past
10,000 hits costs what page 1 does: paging is keyset on the sort key, never ``OFFSET``.

Ranking (``SearchOrder.RELEVANCE``) is Okapi BM25 over the record's two texts taken as one
field: ``sum_t idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg_len))`` with
``k1 = 1.2``, ``b = 0.75`` and Lucene's ``idf = ln(1 + (N - n + 0.5) / (n + 0.5))``
(``N`` records, ``n`` of them with the term).  Ties: timestamp descending, then
``action_id`` descending.  A page token carries the ``N``, ``n`` and average length its
first page scored with, and later pages score with them: a record's score is the same on
every page, so records written or deleted between pages neither end the paging early nor
serve hits again (a record written since is placed by the same scores).

Concurrency and durability
--------------------------
File databases use WAL with ``synchronous=NORMAL`` (a committed batch survives a process
crash; the last batches may be lost on power loss), one writer connection on its own
thread and ``read_threads`` reader connections on a pool, so searches do not wait for a
bulk write (a text search does when records wait: it indexes them first); each read runs
in one read transaction (a consistent snapshot).  An in-memory database (``memory://``)
is private to one connection on one thread.  Several processes may share one file:
schema creation runs in an ``IMMEDIATE`` transaction, statements wait up to
``busy_timeout_ms``, and each process's mirror tops itself up from the table.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import numpy as np
import numpy.typing as npt

from nethical_grpc.storage.audit._kernels import bm25_add, parse_ints
from nethical_grpc.storage.audit.model import (
    DECISIONS,
    AuditFilter,
    AuditHit,
    AuditRecord,
    AuditStatistics,
    AuditViolation,
    SearchOrder,
    SearchPage,
    SearchQuery,
    check_region_id,
    datetime_from_us,
    fold_token,
    text_tokens,
    to_utc_us,
)
from nethical_grpc.storage.audit.paging import PageCursor, decode_page_token, encode_page_token
from nethical_grpc.storage.audit.store import AuditStore, AuditStoreError
from nethical_grpc.storage.backend import check_retention_days, check_row_bound
from nethical_grpc.storage.sqlite_tx import (
    execute_rows,
    missing_columns,
    rollback_quietly,
    schema_columns,
    write_transaction,
)
from nethical_grpc.storage.sqlite_url import DEFAULT_CACHE_MIB, cache_size_pragma, check_cache_mib

__all__ = ["BM25_B", "BM25_K1", "SqliteFtsAuditStore", "fts5_match_expression"]

T = TypeVar("T")

log = logging.getLogger(__name__)
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

BM25_K1: Final = 1.2
BM25_B: Final = 0.75

_SCHEMA_VERSION: Final = 2
#: Versions a store opens: 0 (a new file), 1 (before ``audit_index_top``: every record
#: indexed as written) and this one.
_OPENS_VERSIONS: Final = (0, 1, _SCHEMA_VERSION)
_DECISION_CODE: Final = {d: i for i, d in enumerate(DECISIONS)}
_ID_CHUNK: Final = 500
#: Most records one transaction of apply_retention deletes.
_RETENTION_CHUNK: Final = 10_000
_INITIAL_CAPACITY: Final = 1024
_US_PER_DAY: Final = 86_400_000_000
#: Codes no kept record uses are deleted (:func:`_forget_codes`) once the records dropped
#: since the last time reach the number kept, and at least this many: each time reads
#: every kept record once, so it costs a constant per dropped record, and the codes held
#: stay under the records kept plus the records dropped since (twice ``max_records``).
_FORGET_AFTER_DROPS: Final = 64
#: Most records one transaction adds to the full-text index when it catches up.
_INDEX_CHUNK: Final = 8192
#: Most records that wait for the full-text index: past it, a write indexes the oldest
#: (so a text search never has more than this many to index first).  A store bounded at
#: or below it (the in-memory default) indexes only for searches and idle seconds.
_INDEX_LAG: Final = 100_000
#: Seconds without a write after which the records waiting are indexed.
_INDEX_IDLE_S: Final = 1.0

_RECORD_ROW: Final = "(?, ?, ?, ?, ?, ?, ?, ?)"
_DOCUMENT_ROW: Final = "(?, ?, ?, ?, ?)"
#: Rows of the full-text index: added as ``(NULL, rowid, texts, tags)``, removed as
#: ``('delete', rowid, texts, tags)`` (a contentless table is told the values it indexed).
_FTS_INSERT: Final = (
    "INSERT INTO audit_fts (audit_fts, rowid, stated_intent, action_text, tags) VALUES {rows}"
)
#: Adds to terms' document frequencies (new terms start at the count; negative: removed).
_DF_UPSERT: Final = (
    "INSERT INTO audit_terms VALUES {rows} ON CONFLICT (term) DO UPDATE SET df = df + excluded.df"
)

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS audit_agents (
        code INTEGER PRIMARY KEY, agent_id TEXT NOT NULL UNIQUE)""",
    """CREATE TABLE IF NOT EXISTS audit_regions (
        code INTEGER PRIMARY KEY, region_id TEXT NOT NULL UNIQUE)""",
    """CREATE TABLE IF NOT EXISTS audit_records (
        seq INTEGER PRIMARY KEY,
        action_id TEXT NOT NULL UNIQUE,
        ts_us INTEGER NOT NULL,
        agent_code INTEGER NOT NULL,
        region_code INTEGER NOT NULL,
        decision INTEGER NOT NULL,
        risk_score REAL NOT NULL,
        doc_len INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS audit_documents (
        seq INTEGER PRIMARY KEY,
        stated_intent TEXT NOT NULL,
        action_text TEXT NOT NULL,
        action_type TEXT NOT NULL,
        violations TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS audit_term_counts (
        term TEXT NOT NULL, seq INTEGER NOT NULL, tf INTEGER NOT NULL,
        PRIMARY KEY (term, seq)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS audit_terms (
        term TEXT PRIMARY KEY, df INTEGER NOT NULL
    ) WITHOUT ROWID""",
    # the highest seq ever given: with every record deleted (retention), MAX(seq) would
    # start again at 1
    """CREATE TABLE IF NOT EXISTS audit_seq_top (
        id INTEGER PRIMARY KEY CHECK (id = 1), top INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS audit_index_top (
        id INTEGER PRIMARY KEY CHECK (id = 1), upto INTEGER NOT NULL
    )""",
    """CREATE VIRTUAL TABLE IF NOT EXISTS audit_fts USING fts5 (
        stated_intent, action_text, tags,
        content = '', tokenize = 'unicode61 remove_diacritics 2'
    )""",
)


def fts5_match_expression(terms: Sequence[str], tags: Sequence[Sequence[str]] = ()) -> str:
    """An FTS5 MATCH expression requiring every term in ``stated_intent`` or
    ``action_text``, and for each group in ``tags`` one of its tag tokens in ``tags``.

    Each term is a quoted FTS5 string (embedded ``"`` doubled) inside a column filter, so
    user text can neither use FTS5 syntax nor match the internal tags column."""
    quoted = " ".join('"' + t.replace('"', '""') + '"' for t in terms)
    parts = [f"{{stated_intent action_text}} : ({quoted})"]
    parts += [f"tags : ({' OR '.join(group)})" for group in tags]
    return " AND ".join(parts)


def _risk_bucket(risk: float) -> int:
    """The risk decile of a record's tags (``risk`` in [0, 1])."""
    return min(int(risk * 10), 9)


#: :func:`_risk_bucket` in SQL, of ``audit_records.risk_score`` (the same double product,
#: truncated the same way: a drop must tell FTS5 exactly the tags it indexed).
_RISK_BUCKET_SQL: Final = "min(CAST(r.risk_score * 10 AS INTEGER), 9)"


def _tags(agent: int, region: int, decision: int, bucket: int) -> str:
    """A record's internal tag tokens in the ``tags`` column (see the module docstring)."""
    return f"a{agent} g{region} d{decision} k{bucket}"


def _terms(intent: str, text: str) -> tuple[int, set[str], list[tuple[str, int]]]:
    """A record's ranking terms: its length in tokens, its distinct terms, and the terms
    it holds more than once with their counts (kept in ``audit_term_counts``)."""
    tokens = text_tokens(f"{intent} {text}")
    distinct = set(tokens)
    if len(distinct) == len(tokens):
        return len(tokens), distinct, []
    return len(tokens), distinct, [(t, c) for t, c in Counter(tokens).items() if c > 1]


def _seq_range(conn: sqlite3.Connection) -> tuple[int, int]:
    """The oldest and the newest seq the table holds; ``(0, 0)`` when it is empty."""
    first, top = conn.execute(
        "SELECT (SELECT MIN(seq) FROM audit_records), (SELECT MAX(seq) FROM audit_records)"
    ).fetchone()
    return first or 0, top or 0


def _last_seq_given(conn: sqlite3.Connection) -> int:
    """The highest seq ever given, held or deleted since (0 before the first)."""
    row = conn.execute("SELECT top FROM audit_seq_top WHERE id = 1").fetchone()
    return max(_seq_range(conn)[1], row[0] if row else 0)


# ---------------------------------------------------------------------- connections


def _connect(path: str, busy_timeout_ms: int, cache_mib: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute(cache_size_pragma(cache_mib))
    if path != ":memory:":
        conn.execute("PRAGMA mmap_size = 1073741824")
    return conn


def _set_wal(conn: sqlite3.Connection, busy_timeout_ms: int) -> None:
    # journal_mode may answer "locked" without consulting the busy handler while another
    # process is switching it; retry for as long as the busy timeout.
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    if str(mode).lower() != "wal":
        raise AuditStoreError(f"could not switch the audit database to WAL (mode {mode!r})")
    conn.execute("PRAGMA synchronous = NORMAL")
    # Checkpoint every ~40 MiB of WAL rather than 4 MiB: bulk loads copy hot pages once.
    conn.execute("PRAGMA wal_autocheckpoint = 10000")


@functools.cache
def _schema_columns() -> dict[str, list[str]]:
    """Table → its columns, as :data:`_SCHEMA` makes them (the FTS index's own tables
    left out)."""
    return {
        table: columns
        for table, columns in schema_columns(_SCHEMA).items()
        if table.startswith("audit_") and not table.startswith("audit_fts_")
    }


def _check_version(conn: sqlite3.Connection) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version not in _OPENS_VERSIONS:
        raise AuditStoreError(
            f"audit database has schema version {version}; this build uses {_SCHEMA_VERSION}"
        )


def _check_file(conn: sqlite3.Connection, where: str) -> None:
    """Refuse, before anything is written, a file this store cannot use: another schema
    version, or a table of ours by name that is another application's."""
    _check_version(conn)
    problem = missing_columns(conn, _schema_columns())
    if problem is not None:
        table, why = problem
        raise AuditStoreError(
            f"table {table} in {where} exists but is not a Nethical mesh audit table ({why}); "
            "use another file"
        )


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        _check_version(conn)
        for statement in _SCHEMA:
            conn.execute(statement)
        # a new file starts at 0; a version-1 file indexed every record as it wrote it
        conn.execute(
            "INSERT OR IGNORE INTO audit_index_top VALUES (1, ?)", (_last_seq_given(conn),)
        )
        conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)
        raise


class _ConnectionPool:
    """Connections served to worker threads, one connection per call, never shared."""

    def __init__(self, connections: list[sqlite3.Connection], name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=len(connections), thread_name_prefix=name)
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._connections = connections
        for c in connections:
            self._idle.put(c)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._idle.get()
        try:
            return fn(conn)
        finally:
            self._idle.put(conn)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._call, fn)
        except sqlite3.Error as exc:
            raise AuditStoreError(f"SQLite audit store: {exc}") from exc

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        for c in self._connections:
            c.close()


# ---------------------------------------------------------------------- column mirror


@dataclass(frozen=True, slots=True)
class _View:
    """Mirror arrays as of one read snapshot: the records are seqs ``base + 1 .. n``, at
    index ``seq - base`` of every array (index 0 unused); ``base`` is 0 until the oldest
    records are dropped (:meth:`SqliteFtsAuditStore.open`'s ``max_records``)."""

    n: int
    base: int
    ts: IntArray
    decision: npt.NDArray[np.int8]
    risk: FloatArray
    agent: npt.NDArray[np.int32]
    region: npt.NDArray[np.int32]
    doc_len: npt.NDArray[np.int32]


class _Mirror:
    """In-memory copy of ``audit_records``' filter columns, indexed by ``seq - base``.

    Appended to like the table, and cut at the front when the table's oldest records are
    dropped.  :meth:`view` tops it up (and cuts it) inside the caller's read transaction
    and returns arrays valid for that snapshot: entries a view can read are never written
    again (appends go past every view's ``n``; arrays are replaced when they grow, are
    compacted or are emptied), so a view stays valid while others append.

    A cut costs no copy: the dropped records stay at the front of the arrays as a dead
    prefix of ``_dead`` entries (a view gets the arrays from past it, as numpy views), and
    the live records move down only when the arrays are full (:meth:`_grow`) or mostly dead
    (:meth:`_cut`).  A store that drops a few records on every write (``max_records``)
    thus copies its live records once per as many drops as it holds records, not on every
    search after a write.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._n = 0  # newest seq mirrored
        self._base = 0  # seqs up to this one are gone (dropped from the table)
        self._dead = 0  # array index of seq ``base + i`` is ``dead + i``
        cap = _INITIAL_CAPACITY
        self._ts = np.zeros(cap, np.int64)
        self._decision = np.zeros(cap, np.int8)
        self._risk = np.zeros(cap, np.float64)
        self._agent = np.zeros(cap, np.int32)
        self._region = np.zeros(cap, np.int32)
        self._doc_len = np.zeros(cap, np.int32)

    _ARRAYS: Final = ("_ts", "_decision", "_risk", "_agent", "_region", "_doc_len")

    @property
    def capacity(self) -> int:
        """Entries each array holds (dead prefix, live records and room to append)."""
        return len(self._ts)

    def _reallocate(self, cap: int, drop: int = 0) -> None:
        """New arrays of ``cap`` entries holding the mirrored records but the ``drop``
        oldest, from index 1 (views taken before keep the old arrays)."""
        live = self._n - self._base
        first = self._dead + drop + 1
        for name in self._ARRAYS:
            old = getattr(self, name)
            new = np.zeros(cap, old.dtype)
            new[1 : live - drop + 1] = old[first : self._dead + live + 1]
            setattr(self, name, new)
        self._base += drop
        self._dead = 0

    def _grow(self, needed: int) -> None:
        """Room for index ``needed`` (seq ``base + needed``)."""
        cap = self.capacity
        if self._dead + needed < cap:
            return
        # compacted, with room for as many records again as it holds: the next copy
        # comes only after that many appends or drops
        self._reallocate(max(cap, 2 * needed))

    def _cut(self, first: int) -> None:
        """Forget the seqs below ``first``, the oldest the table still holds."""
        if first > self._n:  # none of the mirrored records is left
            self._reallocate(_INITIAL_CAPACITY, self._n - self._base)
            self._base = self._n = first - 1
            return
        drop = first - 1 - self._base
        live = self._n - first + 1
        smaller = max(_INITIAL_CAPACITY, 2 * (live + 1))
        if 2 * smaller <= self.capacity:  # mostly dead: give the memory back
            self._reallocate(smaller, drop)
        else:
            self._dead += drop
            self._base += drop

    def view(self, conn: sqlite3.Connection) -> _View:
        """The mirror as of ``conn``'s current read transaction."""
        first, top = _seq_range(conn)
        # An empty table is either emptied (retention: every seq given so far is gone) or
        # a snapshot older than the first write, which must not cut what newer snapshots
        # mirrored: only the seqs this snapshot had given are known to be gone.
        given = _last_seq_given(conn) if top == 0 else 0
        with self._lock:
            if top == 0 and given > self._base:  # every record given so far deleted
                self._cut(given + 1)
            elif first > self._base + 1:
                self._cut(first)
            if top > self._n:
                self._grow(top - self._base)
                cur = conn.execute(
                    "SELECT seq, ts_us, decision, risk_score, agent_code, region_code, doc_len "
                    "FROM audit_records WHERE seq > ? AND seq <= ? ORDER BY seq",
                    (self._n, top),
                )
                while rows := cur.fetchmany(65536):
                    arr = np.array(rows, dtype=np.float64)
                    seqs = arr[:, 0].astype(np.int64)
                    expected = np.arange(self._n + 1, self._n + 1 + len(rows))
                    if not np.array_equal(seqs, expected):
                        raise AuditStoreError("audit_records.seq has gaps: not an audit store")
                    at = seqs - self._base + self._dead
                    # ts_us needs all 64 bits: take it again from the rows, not the floats.
                    self._ts[at] = np.fromiter((r[1] for r in rows), np.int64, len(rows))
                    self._decision[at] = arr[:, 2]
                    self._risk[at] = arr[:, 3]
                    self._agent[at] = arr[:, 4]
                    self._region[at] = arr[:, 5]
                    self._doc_len[at] = arr[:, 6]
                    self._n += len(rows)
            n = min(top, self._n)
            dead = self._dead
            return _View(
                n=max(n, self._base),
                base=self._base,
                ts=self._ts[dead:],
                decision=self._decision[dead:],
                risk=self._risk[dead:],
                agent=self._agent[dead:],
                region=self._region[dead:],
                doc_len=self._doc_len[dead:],
            )


# ---------------------------------------------------------------------- query helpers


def _sorted(seqs: IntArray) -> IntArray:
    if seqs.size > 1 and not bool(np.all(seqs[1:] > seqs[:-1])):
        return np.unique(seqs)
    return seqs


def _fts_rowids(
    conn: sqlite3.Connection,
    terms: Sequence[str],
    tags: Sequence[Sequence[str]],
    lo: int,
    hi: int,
) -> IntArray:
    """Sorted rowids in ``[lo, hi]`` of records with every term and a tag of each group."""
    (joined,) = conn.execute(
        "SELECT group_concat(rowid) FROM (SELECT rowid FROM audit_fts "
        "WHERE audit_fts MATCH ? AND rowid BETWEEN ? AND ? ORDER BY rowid)",
        (fts5_match_expression(terms, tags), lo, hi),
    ).fetchone()
    # group_concat + a compiled parse moves ~10x more rowids per ms than fetching rows.
    return _sorted(parse_ints(joined))


#: A condition's tags join the full-text query when at most this share of records pass it.
_TAG_SELECTIVITY: Final = 0.5


def _code(conn: sqlite3.Connection, table: str, column: str, name: str) -> int:
    """The code of an agent (``table`` audit_agents) or region in ``conn``'s snapshot, the
    one its records there use; -1 when it has none (no record of it is kept).

    Read from the table, not cached: codes no record uses are deleted (by this process's
    writer or another's), and a name seen again gets a new code."""
    row = conn.execute(f"SELECT code FROM {table} WHERE {column} = ?", (name,)).fetchone()
    return -1 if row is None else int(row[0])


def _filter_mask(
    conn: sqlite3.Connection, view: _View, flt: AuditFilter
) -> tuple[BoolArray | None, list[list[str]]]:
    """Which of the view's records pass ``flt``'s non-text conditions (index 0 is seq
    ``base + 1``; ``None`` when there are no such conditions), and the tag groups worth adding to a
    full-text query (selective conditions only: FTS5 then intersects doclists instead of
    returning rows that the mask would drop).  Vectorised over every record: about a
    millisecond per condition per million records."""
    n = view.n - view.base
    mask: BoolArray | None = None
    tags: list[list[str]] = []

    def both(cond: BoolArray, group: list[str] | None = None) -> None:
        nonlocal mask
        mask = cond if mask is None else mask & cond
        if group is not None and n and np.count_nonzero(cond) <= _TAG_SELECTIVITY * n:
            tags.append(group)

    if flt.agent_id is not None:
        code = _code(conn, "audit_agents", "agent_id", flt.agent_id)
        both(view.agent[1 : n + 1] == code, [f"a{code}"])
    if flt.region_id is not None:
        code = _code(conn, "audit_regions", "region_id", flt.region_id)
        both(view.region[1 : n + 1] == code, [f"g{code}"])
    if flt.decision is not None:
        code = _DECISION_CODE[flt.decision]
        both(view.decision[1 : n + 1] == code, [f"d{code}"])
    if flt.start_us is not None:
        both(view.ts[1 : n + 1] >= flt.start_us)
    if flt.end_us is not None:
        both(view.ts[1 : n + 1] < flt.end_us)
    if flt.min_risk_score is not None:
        # buckets of 0.1 from one below the threshold's: a superset, the mask is exact
        first = max(0, math.floor(flt.min_risk_score * 10) - 1)
        both(
            view.risk[1 : n + 1] >= flt.min_risk_score,
            [f"k{b}" for b in range(first, 10)],
        )
    return mask, tags


def _candidates(conn: sqlite3.Connection, view: _View, flt: AuditFilter) -> IntArray:
    """Sorted seqs of the records ``flt`` covers in ``view``'s snapshot.

    The non-text conditions are evaluated first on the mirror; the full-text query then
    reads only the seq range the passing records span (tight for time windows, since
    records mostly arrive in time order) and intersects with the tags of selective
    conditions, and the mask makes the result exact."""
    mask, tags = _filter_mask(conn, view, flt)
    first = view.base + 1
    passing = None if mask is None else np.flatnonzero(mask).astype(np.int64) + first
    if not flt.terms:
        if passing is None:
            return np.arange(first, view.n + 1, dtype=np.int64)
        return passing
    if passing is not None and passing.size == 0:
        return passing
    lo, hi = (first, view.n) if passing is None else (int(passing[0]), int(passing[-1]))
    matches = _fts_rowids(conn, flt.terms, tags, lo, hi)
    if mask is None or matches.size == 0:
        return matches
    return matches[mask[matches - first]]


#: What BM25 scores with besides a record's own terms and length: the number of records,
#: their average length and each distinct (folded) query term's document frequency.
_Stats = tuple[int, float, tuple[int, ...]]


def _ranked_terms(terms: Sequence[str]) -> list[str]:
    """The distinct folded terms BM25 sums over, in the query's order."""
    return list(dict.fromkeys(fold_token(t) for t in terms))


def _bm25(
    conn: sqlite3.Connection,
    view: _View,
    terms: Sequence[str],
    cand: IntArray,
    stats: _Stats | None = None,
) -> tuple[FloatArray, _Stats]:
    """BM25 scores of the candidate records (see the module docstring), and the
    statistics they were computed with: ``stats`` when given (a later page's, from its
    token), else the view's."""
    ranked = _ranked_terms(terms)
    if stats is None:
        n = view.n - view.base
        dfs = []
        for term in ranked:
            row = conn.execute("SELECT df FROM audit_terms WHERE term = ?", (term,)).fetchone()
            dfs.append(min(int(row[0]), n) if row else 0)
        stats = (n, float(view.doc_len[1 : n + 1].sum(dtype=np.int64)) / n, tuple(dfs))
    n_docs, avg_len, frozen_dfs = stats
    at = cand - view.base  # the candidates' index in the view's arrays
    score = np.zeros(cand.size, np.float64)
    for term, df in zip(ranked, frozen_dfs, strict=True):
        idf = math.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))
        seq_text, tf_text = conn.execute(
            "SELECT group_concat(seq), group_concat(tf) FROM audit_term_counts "
            "WHERE term = ? AND seq BETWEEN ? AND ?",
            (term, int(cand[0]), int(cand[-1])),
        ).fetchone()
        tf_seqs, tf_values = parse_ints(seq_text), parse_ints(tf_text)
        if tf_seqs.size > 1 and not bool(np.all(tf_seqs[1:] > tf_seqs[:-1])):
            order = np.argsort(tf_seqs, kind="stable")
            tf_seqs, tf_values = tf_seqs[order], tf_values[order]
        tf_at = tf_seqs - view.base
        bm25_add(score, at, view.doc_len, avg_len, idf, tf_at, tf_values, BM25_K1, BM25_B)
    return score, stats


def _top(primary: npt.NDArray[Any], secondary: IntArray, m: int) -> IntArray:
    """Indices of the ``m`` largest by (primary, secondary), plus any tied with the m-th."""
    size = primary.size
    if size <= m:
        return np.arange(size)
    kth = np.partition(primary, size - m)[size - m]
    above = np.flatnonzero(primary > kth)
    at = np.flatnonzero(primary == kth)
    need = m - above.size
    if at.size > need:
        sec = secondary[at]
        kth_sec = np.partition(sec, at.size - need)[at.size - need]
        at = at[sec >= kth_sec]
    return np.concatenate([above, at])


def _action_ids(conn: sqlite3.Connection, seqs: Sequence[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    for i in range(0, len(seqs), _ID_CHUNK):
        chunk = list(seqs[i : i + _ID_CHUNK])
        marks = ",".join("?" * len(chunk))
        out.update(
            conn.execute(
                f"SELECT seq, action_id FROM audit_records WHERE seq IN ({marks})", chunk
            ).fetchall()
        )
    return out


_Key = tuple[float | None, int, str]


def _page_keys(
    conn: sqlite3.Connection,
    cand: IntArray,
    score: FloatArray | None,
    ts: IntArray,
    position: _Key | None,
    m: int,
) -> list[tuple[int, _Key]]:
    """The first ``m`` candidates after ``position`` in (score desc, ts desc, id desc)
    order, as ``(seq, key)``."""
    if position is not None:
        p_score, p_ts, p_id = position
        if score is None:
            before, tie = ts < p_ts, ts == p_ts
        else:
            assert p_score is not None
            before = (score < p_score) | ((score == p_score) & (ts < p_ts))
            tie = (score == p_score) & (ts == p_ts)
        tied = np.flatnonzero(tie)
        if tied.size:
            ids = _action_ids(conn, cand[tied].tolist())
            before[tied] = np.fromiter(
                (ids[int(s)] < p_id for s in cand[tied]), np.bool_, tied.size
            )
        cand, ts = cand[before], ts[before]
        score = None if score is None else score[before]
    chosen = _top(ts if score is None else score, ts, m)
    seqs = cand[chosen].tolist()
    ids = _action_ids(conn, seqs)
    keys = [
        (
            seq,
            (None if score is None else float(score[i]), int(ts[i]), ids[seq]),
        )
        for seq, i in zip(seqs, chosen.tolist(), strict=True)
    ]
    # id descending, then (score, ts) descending: a stable sort per key, least significant first
    keys.sort(key=lambda k: k[1][2], reverse=True)
    keys.sort(key=lambda k: (k[1][0] or 0.0, k[1][1]), reverse=True)
    return keys[:m]


def _stats(values: list[Any], terms: Sequence[str]) -> _Stats:
    """The BM25 statistics a relevance page token carries (see :func:`_position`)."""
    n_docs, avg_len, dfs = values
    if not _count(n_docs) or n_docs < 1 or not isinstance(dfs, list):
        raise ValueError("page_token is not valid: bad position")
    if isinstance(avg_len, bool) or not isinstance(avg_len, int | float):
        raise ValueError("page_token is not valid: bad position")
    try:
        avg_len = float(avg_len)
    except OverflowError:
        raise ValueError("page_token is not valid: bad position") from None
    if not (math.isfinite(avg_len) and avg_len > 0.0):
        raise ValueError("page_token is not valid: bad position")
    if len(dfs) != len(_ranked_terms(terms)) or not all(_count(df) and df <= n_docs for df in dfs):
        raise ValueError("page_token is not valid: bad position")
    return n_docs, avg_len, tuple(dfs)


def _count(value: object) -> bool:
    """Whether ``value`` is a whole number a record count can be (JSON gives any size)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53


def _position(cursor: PageCursor, query: SearchQuery) -> tuple[_Key, _Stats | None]:
    """The sort key a page token resumes after, and for relevance the BM25 statistics of
    its first page: ``[score, ts_us, action_id, n_docs, avg_len, [df, ...]]`` (a token
    of three values, without them, scores with the store's current statistics)."""
    pos = cursor.position
    order = query.effective_order
    stats = None
    if order is SearchOrder.RELEVANCE and len(pos) == 6:
        stats = _stats(pos[3:], query.filter.terms)
    elif len(pos) != 3:
        raise ValueError("page_token is not valid: bad position")
    score, ts_us, action_id = pos[:3]
    if order is SearchOrder.RELEVANCE:
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise ValueError("page_token is not valid: bad position")
        try:
            score = float(score)
        except OverflowError:  # an integer past any double: not a score this store gave
            raise ValueError("page_token is not valid: bad position") from None
        if not math.isfinite(score):
            raise ValueError("page_token is not valid: bad position")
    elif score is not None:
        raise ValueError("page_token is not valid: bad position")
    if isinstance(ts_us, bool) or not isinstance(ts_us, int) or not isinstance(action_id, str):
        raise ValueError("page_token is not valid: bad position")
    if not -(2**63) <= ts_us < 2**63:  # the times it compares are 64-bit
        raise ValueError("page_token is not valid: bad position")
    return (score, ts_us, action_id), stats


def _fetch_records(conn: sqlite3.Connection, seqs: Sequence[int]) -> dict[int, AuditRecord]:
    marks = ",".join("?" * len(seqs))
    # names from the snapshot's own code tables: a code's row lives as long as a record
    # uses it
    rows = conn.execute(
        "SELECT r.seq, r.action_id, r.ts_us, coalesce(a.agent_id, ''), "
        "coalesce(g.region_id, ''), r.decision, "
        "r.risk_score, d.stated_intent, d.action_text, d.action_type, d.violations "
        "FROM audit_records AS r JOIN audit_documents AS d ON d.seq = r.seq "
        "LEFT JOIN audit_agents AS a ON a.code = r.agent_code "
        "LEFT JOIN audit_regions AS g ON g.code = r.region_code "
        f"WHERE r.seq IN ({marks})",
        list(seqs),
    ).fetchall()
    out: dict[int, AuditRecord] = {}
    for seq, action_id, ts_us, agent, region, decision, risk, intent, text, kind, viol in rows:
        out[seq] = AuditRecord(
            action_id=action_id,
            agent_id=agent,
            region_id=region,
            decision=DECISIONS[decision],
            risk_score=risk,
            timestamp=datetime_from_us(ts_us),
            stated_intent=intent,
            action_text=text,
            action_type=kind,
            violations=tuple(AuditViolation.from_dict(v) for v in json.loads(viol)),
        )
    return out


def _read(conn: sqlite3.Connection, fn: Callable[[], T]) -> T:
    """Run ``fn`` inside one read transaction (a consistent snapshot)."""
    conn.execute("BEGIN")
    try:
        return fn()
    finally:
        conn.execute("COMMIT")


# ---------------------------------------------------------------------- the store


class SqliteFtsAuditStore(AuditStore):
    """Audit store on SQLite FTS5: a file (``sqlite:///path``) or private memory.

    Open with :meth:`open` (or the factory); all methods are coroutines whose SQLite
    work runs on worker threads.  See the module docstring for schema, ranking, paging
    and durability.
    """

    region_scope = False

    def __init__(
        self,
        region_id: str,
        path: str | None,
        writer: _ConnectionPool,
        readers: _ConnectionPool | None,
        max_records: int | None = None,
        retention_days: int | None = None,
    ) -> None:
        super().__init__(region_id)
        self._retention_days = retention_days  # checked by open
        self.path = path
        self._writer = writer
        self._readers = readers if readers is not None else writer
        self._mirror = _Mirror()
        self._max_records = max_records  # checked by open
        self._dropped = 0
        self._dropped_since_forget = 0  # by the bound or the retention (writer thread)
        self._idle_index: asyncio.TimerHandle | None = None
        self._writes = 0  # writes begun: idle indexing stops at the next one
        self._indexing: asyncio.Task[None] | None = None

    @property
    def max_records(self) -> int | None:
        """Most records kept (the oldest are dropped past it); ``None``: no bound."""
        return self._max_records

    @property
    def records_dropped(self) -> int:
        """Records this store dropped for its ``max_records`` since it was opened."""
        return self._dropped

    @property
    def retention_days(self) -> int | None:
        """Days :meth:`apply_retention` keeps records; ``None``: forever."""
        return self._retention_days

    @property
    def backend(self) -> str:
        """``"sqlite"`` for a file, ``"memory"`` for a private in-memory database."""
        return "sqlite" if self.path is not None else "memory"

    @classmethod
    async def open(
        cls,
        region_id: str,
        path: str | None = None,
        *,
        read_threads: int = 2,
        busy_timeout_ms: int = 10_000,
        max_records: int | None = None,
        retention_days: int | None = None,
        cache_mib: int = DEFAULT_CACHE_MIB,
    ) -> SqliteFtsAuditStore:
        """Open (creating if needed) the store at ``path``, or a private in-memory one
        when ``path`` is ``None``, and load the column mirror (about 1-2 s per million
        records).  ``AuditStoreError`` when the file cannot be opened, has an unknown
        schema version, or this SQLite lacks FTS5.

        ``max_records`` bounds the records kept: a write that takes the store past it
        drops the oldest records (in commit order) in the same transaction, so the store
        holds the newest ``max_records`` (``None``: no bound; see :func:`_drop_oldest`).
        ``retention_days``: what :meth:`apply_retention` keeps (``None``: every record).
        ``cache_mib``: the page cache each of its connections may fill."""
        check_region_id("region_id", region_id, allow_empty=False)
        check_row_bound("max_records", max_records)
        if retention_days is not None:
            check_retention_days(retention_days)
        if path is not None and (not path or path == ":memory:"):
            raise ValueError("path must name a database file (None for memory)")
        if not 1 <= read_threads <= 16:
            raise ValueError("read_threads must be in 1..16")
        check_cache_mib(cache_mib)
        file_path = path if path is not None else ":memory:"

        where = path if path is not None else "(in memory)"

        def open_writer() -> sqlite3.Connection:
            conn = _connect(file_path, busy_timeout_ms, cache_mib)
            try:
                _check_file(conn, where)  # before WAL: a file we refuse stays as it was
                if path is not None:
                    _set_wal(conn, busy_timeout_ms)
                _create_schema(conn)
            except BaseException:
                conn.close()
                raise
            return conn

        try:
            writer_conn = await asyncio.to_thread(open_writer)
        except sqlite3.Error as exc:
            raise AuditStoreError(f"cannot open the SQLite audit store {where}: {exc}") from exc
        writer = _ConnectionPool([writer_conn], "audit-sqlite-w")
        readers = None
        if path is not None:
            try:
                conns = await asyncio.to_thread(
                    lambda: [
                        _connect(file_path, busy_timeout_ms, cache_mib) for _ in range(read_threads)
                    ]
                )
            except sqlite3.Error as exc:
                await asyncio.to_thread(writer.close)
                raise AuditStoreError(f"cannot open the SQLite audit store {where}: {exc}") from exc
            readers = _ConnectionPool(conns, "audit-sqlite-r")
        store = cls(region_id, path, writer, readers, max_records, retention_days)
        try:
            await store._readers.run(lambda conn: _read(conn, lambda: store._mirror.view(conn)))
        except BaseException:
            await store._close()
            raise
        return store

    # ------------------------------------------------------------------ writes

    async def _index(self, records: Sequence[AuditRecord]) -> int:
        self._writes += 1
        try:
            return await self._writer.run(lambda conn: self._index_sync(conn, records))
        finally:
            self._index_when_idle()

    def _index_when_idle(self) -> None:
        """(Re)start the idle second after which the records waiting are indexed."""
        if self._idle_index is not None:
            self._idle_index.cancel()
            self._idle_index = None
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        self._idle_index = loop.call_later(_INDEX_IDLE_S, self._start_idle_indexing)

    def _start_idle_indexing(self) -> None:
        self._idle_index = None
        if self._closed or (self._indexing is not None and not self._indexing.done()):
            return

        async def catch_up() -> None:
            try:
                await self._catch_up(until_write=self._writes)
            except AuditStoreError as exc:  # closed meanwhile, or SQLite failed
                if not self._closed:
                    log.warning(
                        "audit store (%s): indexing the records waiting: %s", self.backend, exc
                    )

        self._indexing = asyncio.get_running_loop().create_task(catch_up())

    async def _catch_up(self, until_write: int | None = None) -> None:
        """Index every record waiting when it begins, a chunk per write transaction (other
        writes go between them, and what they add waits for the next time: with writes
        faster than indexing, a search would otherwise never end); with ``until_write``
        (the idle indexing), only until a write begins after that many (the next idle
        second goes on)."""
        upto: int | None = None
        while until_write is None or self._writes == until_write:
            self._check_open()  # closed between chunks: its worker threads are gone
            more, top = await self._writer.run(functools.partial(_index_chunk, upto=upto))
            if not more:
                return
            upto = top if upto is None else upto

    async def _catch_up_to_read(self) -> None:
        """Index every record waiting before a text search or text statistics.

        Whether any wait is read first on a reader: :meth:`_catch_up` runs on the writer,
        where a read would queue behind this store's writes and take the file's write lock
        (failing as locked past ``busy_timeout_ms`` while another process writes) even
        with nothing to index."""
        if self._readers is not self._writer:  # a file: memory has one connection
            waiting = await self._readers.run(lambda conn: _read(conn, lambda: _waiting(conn)))
            if not waiting:
                return
        await self._catch_up()

    async def refresh(self) -> None:
        """Index every record written so far (searches with text do it themselves; see
        the module docstring's *When records are indexed*)."""
        self._check_open()
        await self._catch_up()

    @staticmethod
    def _codes(
        conn: sqlite3.Connection, table: str, column: str, names: set[str]
    ) -> dict[str, int]:
        """Code of each agent (``table`` audit_agents) or region name, adding missing ones,
        inside the caller's write transaction.

        Read from the table, not cached: codes no kept record uses are deleted (here or by
        another process sharing the file).  A new code is one above the highest held, and
        the highest is never deleted: never a code given before."""
        wanted = sorted(names)
        out: dict[str, int] = {}

        def read(part: list[str]) -> None:
            for i in range(0, len(part), _ID_CHUNK):
                chunk = part[i : i + _ID_CHUNK]
                marks = ",".join("?" * len(chunk))
                out.update(
                    conn.execute(
                        f"SELECT {column}, code FROM {table} WHERE {column} IN ({marks})", chunk
                    ).fetchall()
                )

        read(wanted)
        missing = [name for name in wanted if name not in out]
        if missing:
            insert = f"INSERT INTO {table} ({column}) VALUES {{rows}}"
            execute_rows(conn, insert, "(?)", [(name,) for name in missing])
            read(missing)
        return out

    def _forget_if_due(self, conn: sqlite3.Connection, dropped: int) -> None:
        """Count ``dropped`` records just dropped, and delete the codes no kept record
        uses once as many were dropped since the last time as the store keeps (see
        :data:`_FORGET_AFTER_DROPS`), inside the caller's write transaction."""
        self._dropped_since_forget += dropped
        first, top = _seq_range(conn)
        kept = top - first + 1 if top else 0
        if self._dropped_since_forget >= max(_FORGET_AFTER_DROPS, kept):
            _forget_codes(conn)
            self._dropped_since_forget = 0

    def _forget_if_due_sync(self, conn: sqlite3.Connection, dropped: int) -> None:
        with write_transaction(conn):
            self._forget_if_due(conn, dropped)

    def _index_sync(self, conn: sqlite3.Connection, records: Sequence[AuditRecord]) -> int:
        with write_transaction(conn):
            existing: set[str] = set()
            ids = [r.action_id for r in records]
            for i in range(0, len(ids), _ID_CHUNK):
                chunk = ids[i : i + _ID_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT action_id FROM audit_records WHERE action_id IN ({marks})", chunk
                )
                existing.update(aid for (aid,) in rows)
            fresh = [r for r in records if r.action_id not in existing]
            if fresh:
                agents = self._codes(conn, "audit_agents", "agent_id", {r.agent_id for r in fresh})
                regions = self._codes(
                    conn, "audit_regions", "region_id", {r.region_id for r in fresh}
                )
                top = _last_seq_given(conn)  # never a seq given before: records append
                conn.execute(
                    "INSERT INTO audit_seq_top VALUES (1, ?) "
                    "ON CONFLICT (id) DO UPDATE SET top = excluded.top",
                    (top + len(fresh),),
                )
                record_rows, document_rows = [], []
                for seq, r in enumerate(fresh, start=top + 1):
                    intent, text = r.stated_intent, r.action_text
                    record_rows.append(
                        (
                            seq,
                            r.action_id,
                            r.timestamp_us,
                            agents[r.agent_id],
                            regions[r.region_id],
                            _DECISION_CODE[r.decision],
                            r.risk_score,
                            len(text_tokens(f"{intent} {text}")),
                        )
                    )
                    document_rows.append(
                        (seq, intent, text, r.action_type, _violations_json(r.violations))
                    )
                execute_rows(
                    conn, "INSERT INTO audit_records VALUES {rows}", _RECORD_ROW, record_rows
                )
                execute_rows(
                    conn, "INSERT INTO audit_documents VALUES {rows}", _DOCUMENT_ROW, document_rows
                )
            dropped = 0
            if fresh and self._max_records is not None:
                dropped = _drop_oldest(conn, self._max_records)
                if dropped:
                    self._forget_if_due(conn, dropped)
            if fresh:
                _index_past_lag(conn)
        if dropped:
            if not self._dropped:
                log.info(
                    "audit store (%s) holds its limit of %d records: the oldest are dropped "
                    "from now on",
                    self.backend,
                    self._max_records,
                )
            self._dropped += dropped
        return len(fresh)

    async def apply_retention(self, now: datetime | None = None, limit: int | None = None) -> int:
        """Delete the records older than ``retention_days`` as of ``now`` (default: the
        current time), from every table and the full-text index, at most ``limit`` of them
        (``None``: all); the number deleted.

        Records leave in the order they were stored (the oldest ``seq`` first), as a
        bound drops them: the deletion stops at the first stored record still inside the
        retention, so a record stored after a newer one (a backfill of old records) stays
        until those stored before it are past the retention too.  Each transaction
        deletes at most :data:`_RETENTION_CHUNK` records, so other writes wait for one
        chunk at a time."""
        self._check_open()
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise ValueError(f"limit must be an int or None, got {type(limit).__name__}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        at_us = to_utc_us(now if now is not None else datetime.now(UTC), "now")
        if self._retention_days is None:
            return 0
        # in microseconds: a datetime near datetime.min would overflow
        cutoff_us = at_us - self._retention_days * _US_PER_DAY
        deleted = 0
        while limit is None or deleted < limit:
            self._check_open()  # closed between chunks: its worker threads are gone
            most = _RETENTION_CHUNK if limit is None else min(_RETENTION_CHUNK, limit - deleted)
            delete = functools.partial(_delete_expired, cutoff_us=cutoff_us, most=most)
            chunk = await self._writer.run(delete)
            deleted += chunk
            if chunk < most:
                break
        if deleted:
            self._check_open()
            forget = functools.partial(self._forget_if_due_sync, dropped=deleted)
            await self._writer.run(forget)
        return deleted

    # ------------------------------------------------------------------ reads

    async def _search(self, query: SearchQuery) -> SearchPage:
        cursor = decode_page_token(self.backend, query)
        position, frozen = (None, None) if cursor is None else _position(cursor, query)
        if query.filter.terms:
            await self._catch_up_to_read()
        hits, total, last, stats = await self._readers.run(
            lambda conn: _read(conn, lambda: self._search_sync(conn, query, position, frozen))
        )
        if cursor is not None:
            total = cursor.total
        token = None
        if last is not None:
            values: list[Any] = list(last)
            if stats is not None:  # later pages score as this one did
                values += [stats[0], stats[1], list(stats[2])]
            token = encode_page_token(self.backend, query, PageCursor(total=total, position=values))
        return SearchPage(hits=tuple(hits), total=total, next_page_token=token)

    def _search_sync(
        self,
        conn: sqlite3.Connection,
        query: SearchQuery,
        position: _Key | None,
        stats: _Stats | None,
    ) -> tuple[list[AuditHit], int, _Key | None, _Stats | None]:
        view = self._mirror.view(conn)
        flt = query.filter
        cand = _candidates(conn, view, flt)
        total = int(cand.size)
        if cand.size == 0:
            return [], 0, None, None
        score = None
        if query.effective_order is SearchOrder.RELEVANCE:
            score, stats = _bm25(conn, view, flt.terms, cand, stats)
        ts = view.ts[cand - view.base]
        keys = _page_keys(conn, cand, score, ts, position, query.page_size + 1)
        more = len(keys) > query.page_size
        keys = keys[: query.page_size]
        records = _fetch_records(conn, [seq for seq, _ in keys]) if keys else {}
        hits = [AuditHit(record=records[seq], score=key[0]) for seq, key in keys]
        return hits, total, keys[-1][1] if more else None, stats

    async def _statistics(self, flt: AuditFilter) -> AuditStatistics:
        if flt.terms:
            await self._catch_up_to_read()
        return await self._readers.run(
            lambda conn: _read(conn, lambda: self._statistics_sync(conn, flt))
        )

    def _statistics_sync(self, conn: sqlite3.Connection, flt: AuditFilter) -> AuditStatistics:
        view = self._mirror.view(conn)
        at = _candidates(conn, view, flt) - view.base
        decisions = np.bincount(view.decision[at], minlength=len(DECISIONS))
        codes = view.agent[at]
        agents = 0
        if at.size:
            # codes are never given twice, so they grow past the records kept: bincount
            # only while its array stays within a few times the records
            top = int(codes.max())
            small = top <= 4 * at.size + 4096
            agents = int(np.count_nonzero(np.bincount(codes)) if small else np.unique(codes).size)
        return AuditStatistics(
            total_actions=int(at.size),
            unique_agents=int(agents),
            avg_risk_score=float(view.risk[at].mean()) if at.size else None,
            decision_counts={d.value: int(c) for d, c in zip(DECISIONS, decisions, strict=True)},
        )

    async def _close(self) -> None:
        if self._idle_index is not None:
            self._idle_index.cancel()
        if self._indexing is not None:
            self._indexing.cancel()
            await asyncio.gather(self._indexing, return_exceptions=True)
        if self._readers is not self._writer:
            await asyncio.to_thread(self._readers.close)
        await asyncio.to_thread(self._writer.close)


def _delete_expired(conn: sqlite3.Connection, cutoff_us: int, most: int) -> int:
    """Delete, in one write transaction, the oldest records (by ``seq``) stored before
    ``cutoff_us``, up to the first that is not, at most ``most``."""
    with write_transaction(conn):
        first, top = _seq_range(conn)
        # the first kept: the oldest record inside the retention, or past ``most``
        (kept,) = conn.execute(
            "SELECT coalesce(min(seq), ?) FROM (SELECT seq FROM audit_records "
            "WHERE seq >= ? AND ts_us >= ? ORDER BY seq LIMIT 1)",
            (top + 1, first, cutoff_us),
        ).fetchone()
        last = min(kept - 1, first + most - 1)
        return _drop_range(conn, first, last) if top and last >= first else 0


def _drop_oldest(conn: sqlite3.Connection, keep: int) -> int:
    """Delete the oldest records (lowest seqs) past the newest ``keep``, from every table
    that holds them, inside the caller's write transaction; the number deleted.

    Seqs are contiguous, so the records are one range at the front.  The full-text index
    is contentless: each record leaves it by an FTS5 ``'delete'`` given the values it was
    indexed with (its texts, and tags remade from its row), and its terms' document
    frequencies go down by one.  Agent and region codes stay until :func:`_forget_codes`
    (the caller's, amortised over many drops)."""
    first, top = _seq_range(conn)
    if not top or top - first + 1 <= keep:
        return 0
    return _drop_range(conn, first, top - keep)


def _drop_range(conn: sqlite3.Connection, first: int, last: int) -> int:
    """Delete the records ``first..last`` (the oldest the table holds) from every table
    that holds them, inside the caller's write transaction (see :func:`_drop_oldest`);
    only those the index covers (``audit_index_top``) leave the index."""
    indexed_last = min(last, _indexed_upto(conn))
    if indexed_last >= first:
        fts_rows, doc_freq, counted = _index_rows(_documents(conn, first, indexed_last))
        execute_rows(conn, _FTS_INSERT, "('delete', ?, ?, ?, ?)", fts_rows)
        # the terms' document frequencies go down by the same upsert that raises them
        execute_rows(conn, _DF_UPSERT, "(?, ?)", [(t, -c) for t, c in doc_freq.items()])
        execute_rows(
            conn,
            "DELETE FROM audit_terms WHERE term IN (VALUES {rows}) AND df <= 0",
            "(?)",
            [(t,) for t in doc_freq],
        )
        # every row of the range's records, and no other: by term, then seq in the range
        # (the primary key's order; a ``(term, seq) IN (VALUES …)`` list made SQLite scan
        # the table)
        execute_rows(
            conn,
            "DELETE FROM audit_term_counts WHERE term IN (VALUES {rows}) AND seq BETWEEN ? AND ?",
            "(?)",
            sorted({(t,) for t, _, _ in counted}),
            (first, indexed_last),
        )
    conn.execute("DELETE FROM audit_documents WHERE seq BETWEEN ? AND ?", (first, last))
    return int(
        conn.execute("DELETE FROM audit_records WHERE seq BETWEEN ? AND ?", (first, last)).rowcount
    )


def _indexed_upto(conn: sqlite3.Connection) -> int:
    """The highest seq the full-text index and the ranking tables cover."""
    row = conn.execute("SELECT upto FROM audit_index_top WHERE id = 1").fetchone()
    return int(row[0]) if row else 0


def _documents(conn: sqlite3.Connection, first: int, last: int) -> list[list[Any]]:
    """``[seq, agent code, region code, decision, risk decile, intent, text]`` of each
    record held in ``first..last``, read as one JSON row (integers and texts: exact):
    fetching a row per record would ask for the interpreter lock once per record (see
    :func:`~nethical_grpc.storage.sqlite_tx.execute_rows`)."""
    (found,) = conn.execute(
        "SELECT json_group_array(json_array(r.seq, r.agent_code, r.region_code, r.decision, "
        f"{_RISK_BUCKET_SQL}, d.stated_intent, d.action_text)) FROM audit_records AS r "
        "JOIN audit_documents AS d ON d.seq = r.seq WHERE r.seq BETWEEN ? AND ?",
        (first, last),
    ).fetchone()
    rows: list[list[Any]] = json.loads(found)
    return rows


def _index_rows(
    documents: Sequence[Sequence[Any]],
) -> tuple[list[tuple[int, str, str, str]], Counter[str], list[tuple[str, int, int]]]:
    """What the records of :func:`_documents` put in the index: their full-text rows
    (``seq``, texts, tags), their terms' document frequencies, and ``(term, seq, tf)`` for
    each term a record holds more than once.  Indexing adds them, a drop takes the same
    values away (a contentless FTS5 table is told the values it indexed)."""
    fts_rows = []
    doc_freq: Counter[str] = Counter()
    counted: list[tuple[str, int, int]] = []
    for seq, agent, region, decision, bucket, intent, text in documents:
        _, distinct, repeated = _terms(intent, text)
        doc_freq.update(distinct)
        if repeated:
            counted += [(t, seq, c) for t, c in repeated]
        fts_rows.append((seq, intent, text, _tags(agent, region, decision, bucket)))
    return fts_rows, doc_freq, counted


def _waiting_after(conn: sqlite3.Connection) -> tuple[int, int]:
    """``(start, top)``: the records ``start + 1 .. top`` wait for the full-text index
    (none when ``top <= start``); those dropped unindexed are gone, so ``start`` is at
    least the seq before the oldest held."""
    first, top = _seq_range(conn)
    return max(first - 1, _indexed_upto(conn)), top


def _index_range(conn: sqlite3.Connection, start: int, last: int) -> None:
    """Add the records ``start + 1 .. last`` (``start`` from :func:`_waiting_after`) to
    the full-text index and the ranking tables, inside the caller's write transaction."""
    fts_rows, doc_freq, counted = _index_rows(_documents(conn, start + 1, last))
    execute_rows(conn, _FTS_INSERT, "(NULL, ?, ?, ?, ?)", fts_rows)
    execute_rows(conn, _DF_UPSERT, "(?, ?)", list(doc_freq.items()))
    execute_rows(conn, "INSERT INTO audit_term_counts VALUES {rows}", "(?, ?, ?)", counted)
    conn.execute("UPDATE audit_index_top SET upto = ? WHERE id = 1", (last,))


def _index_past_lag(conn: sqlite3.Connection) -> None:
    """Index the oldest records waiting past the newest :data:`_INDEX_LAG`, inside the
    caller's write transaction (after a write: as many as it added, in the steady state)."""
    start, top = _waiting_after(conn)
    if top - start > _INDEX_LAG:
        _index_range(conn, start, top - _INDEX_LAG)


def _waiting(conn: sqlite3.Connection) -> bool:
    """Whether records wait for the full-text index (read only)."""
    start, top = _waiting_after(conn)
    return top > start


def _index_chunk(conn: sqlite3.Connection, upto: int | None = None) -> tuple[bool, int]:
    """Index up to :data:`_INDEX_CHUNK` of the records waiting (those up to seq ``upto``,
    with one), in one write transaction; whether more of those wait, and the newest seq
    held."""
    with write_transaction(conn):
        start, top = _waiting_after(conn)
        end = top if upto is None else min(top, upto)
        if end <= start:
            return False, top
        last = min(end, start + _INDEX_CHUNK)
        _index_range(conn, start, last)
        return last < end, top


def _forget_codes(conn: sqlite3.Connection) -> int:
    """Delete the agent and region codes no kept record uses, but the highest of each
    table, inside the caller's write transaction; the number deleted.

    SQLite gives a new row the code one above the highest held: with that one kept, a
    code is never given twice, so a code that a reader (another connection, thread or
    process) or a page token saw never comes to mean another name.  Each table costs one
    pass over ``audit_records`` (its codes, into a temporary index) and one over itself."""
    deleted = 0
    for table, column in (("audit_agents", "agent_code"), ("audit_regions", "region_code")):
        cur = conn.execute(
            f"DELETE FROM {table} WHERE code < (SELECT max(code) FROM {table}) "
            f"AND code NOT IN (SELECT {column} FROM audit_records)"
        )
        deleted += cur.rowcount
    return deleted


@functools.lru_cache(maxsize=4096)
def _violations_json(violations: tuple[AuditViolation, ...]) -> str:
    """A record's findings as stored (cached: evaluations report few distinct sets)."""
    if not violations:
        return "[]"
    return json.dumps([v.to_dict() for v in violations], separators=(",", ":"))
