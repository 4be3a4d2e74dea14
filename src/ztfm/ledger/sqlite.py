"""SQLite ``LedgerStore``: WAL journal, full fsync, one transaction per batch of appends.

Tables: ``entries(idx, leaf_hash, data)``, ``nodes(level, idx, hash)`` for the interior nodes of
complete subtrees (so proofs read O(log n) rows), ``tree_heads`` and ``meta``. Triggers refuse
UPDATE and DELETE, so a bug cannot rewrite history; an attacker with the file can still drop
them, which is why clients check consistency proofs against heads they saw before.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from ztfm.errors import LedgerError
from ztfm.ledger.store import Leaf, Node, Subject

SCHEMA_VERSION = b"1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    idx INTEGER PRIMARY KEY,
    leaf_hash BLOB NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS subjects (
    subject TEXT NOT NULL,
    idx INTEGER NOT NULL,
    PRIMARY KEY (subject, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS subjects_by_idx ON subjects (idx);
CREATE TABLE IF NOT EXISTS tree_heads (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tree_size INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries
    BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries
    BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
CREATE TRIGGER IF NOT EXISTS nodes_no_update BEFORE UPDATE ON nodes
    BEGIN SELECT RAISE(ABORT, 'ledger nodes are append-only'); END;
CREATE TRIGGER IF NOT EXISTS nodes_no_delete BEFORE DELETE ON nodes
    BEGIN SELECT RAISE(ABORT, 'ledger nodes are append-only'); END;
CREATE TRIGGER IF NOT EXISTS subjects_no_update BEFORE UPDATE ON subjects
    BEGIN SELECT RAISE(ABORT, 'the subject index is append-only'); END;
CREATE TRIGGER IF NOT EXISTS subjects_no_delete BEFORE DELETE ON subjects
    BEGIN SELECT RAISE(ABORT, 'the subject index is append-only'); END;
CREATE TRIGGER IF NOT EXISTS heads_no_update BEFORE UPDATE ON tree_heads
    BEGIN SELECT RAISE(ABORT, 'tree heads are append-only'); END;
CREATE TRIGGER IF NOT EXISTS heads_no_delete BEFORE DELETE ON tree_heads
    BEGIN SELECT RAISE(ABORT, 'tree heads are append-only'); END;
"""


def _blob(value: object, what: str) -> bytes:
    """A BLOB column value; anything else means someone edited the file by hand."""
    if isinstance(value, bytes):
        return value
    raise LedgerError(
        f"{what} is stored as {type(value).__name__}, not bytes: the database was altered"
    )


class SqliteLedgerStore:
    """A ``LedgerStore`` in one SQLite file. One writer at a time (appends check the size)."""

    def __init__(self, path: str | Path, *, create: bool = True, durable: bool = True) -> None:
        """Open (and with ``create``, initialise) the ledger at ``path``.

        ``durable=False`` uses ``synchronous=NORMAL``: still crash-consistent under WAL, but the
        last transactions may be lost on power failure (benchmarks only).
        """
        p = Path(path)
        if not create and not p.is_file():
            raise LedgerError(f"no ledger database at {p}")
        # One connection shared by threads (gRPC handlers), serialised by this lock.
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(str(p), isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the ledger database {p}: {exc}") from exc
        try:
            self._db.execute("PRAGMA busy_timeout = 10000")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise LedgerError(f"could not switch {p} to WAL mode (got {mode})")
            self._db.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self._init_schema(create)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise LedgerError(f"{p} is not a usable ledger database: {exc}") from exc
        except LedgerError:
            self._db.close()
            raise

    def _init_schema(self, create: bool) -> None:
        have = self._db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        if have is None:
            if not create:
                raise LedgerError("database has no ledger schema")
            self._db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
            self.set_meta("schema", SCHEMA_VERSION)
        version = self.get_meta("schema")
        if version != SCHEMA_VERSION:
            raise LedgerError(f"unsupported ledger schema version {version!r}")

    class _Tx:
        def __init__(self, db: sqlite3.Connection, lock: threading.RLock) -> None:
            self._db = db
            self._lock = lock

        def __enter__(self) -> sqlite3.Connection:
            self._lock.acquire()
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except BaseException:
                self._lock.release()
                raise
            return self._db

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            try:
                self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
            finally:
                self._lock.release()

    def _tx(self) -> SqliteLedgerStore._Tx:
        return SqliteLedgerStore._Tx(self._db, self._lock)

    def _one(self, sql: str, args: tuple[object, ...] = ()) -> tuple[object, ...] | None:
        with self._lock:
            row: tuple[object, ...] | None = self._db.execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    def _size(self) -> int:
        row = self._one("SELECT MAX(idx) FROM entries")
        assert row is not None
        value = row[0]
        if value is None:
            return 0
        if not isinstance(value, int):
            raise LedgerError("entry index is not an integer: the database was altered")
        return value + 1

    def size(self) -> int:
        return self._size()

    def append(
        self,
        first_index: int,
        leaves: Sequence[Leaf],
        nodes: Sequence[Node],
        subjects: Sequence[Subject] = (),
    ) -> None:
        try:
            with self._tx() as db:
                size = self._size()
                if first_index != size:
                    raise LedgerError(
                        f"append at {first_index} but the ledger has {size} entries "
                        "(another writer? reopen the ledger)"
                    )
                db.executemany(
                    "INSERT INTO entries (idx, leaf_hash, data) VALUES (?, ?, ?)",
                    ((first_index + i, h, d) for i, (d, h) in enumerate(leaves)),
                )
                db.executemany(
                    "INSERT INTO nodes (level, idx, hash) VALUES (?, ?, ?)",
                    ((lv, ix, h) for lv, ix, h in nodes),
                )
                db.executemany(
                    "INSERT OR IGNORE INTO subjects (subject, idx) VALUES (?, ?)", subjects
                )
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"ledger append failed: {exc}") from exc

    def entry(self, index: int) -> bytes:
        row = self._one("SELECT data FROM entries WHERE idx = ?", (index,))
        if row is None:
            raise LedgerError(f"no entry {index} in the ledger")
        return _blob(row[0], f"entry {index}")

    def iter_leaves(self, start: int, stop: int) -> Iterator[Leaf]:
        chunk = 16384
        expect = start
        pos = start
        while pos < stop:
            end = min(pos + chunk, stop)
            rows = self._all(
                "SELECT idx, data, leaf_hash FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx",
                (pos, end),
            )
            for idx, data, h in rows:
                if idx != expect:
                    raise LedgerError(f"ledger entry {expect} is missing")
                expect += 1
                yield _blob(data, f"entry {idx}"), _blob(h, f"leaf hash {idx}")
            if len(rows) < end - pos:
                raise LedgerError(f"ledger entry {expect} is missing")
            pos = end

    def indices_for(self, subject: str) -> list[int]:
        rows = self._all("SELECT idx FROM subjects WHERE subject = ? ORDER BY idx", (subject,))
        out = [r[0] for r in rows]
        if not all(isinstance(i, int) for i in out):
            raise LedgerError("subject index is not an integer: the database was altered")
        return out  # type: ignore[return-value]

    def subjects_range(self, start: int, stop: int) -> list[Subject]:
        rows = self._all(
            "SELECT subject, idx FROM subjects WHERE idx >= ? AND idx < ?", (start, stop)
        )
        out: list[Subject] = []
        for subject, idx in rows:
            if not isinstance(subject, str) or not isinstance(idx, int):
                raise LedgerError("subject index has a wrong type: the database was altered")
            out.append((subject, idx))
        return out

    def node(self, level: int, index: int) -> bytes:
        if level == 0:
            row = self._one("SELECT leaf_hash FROM entries WHERE idx = ?", (index,))
        else:
            row = self._one("SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, index))
        if row is None:
            raise LedgerError(f"missing tree node ({level}, {index})")
        return _blob(row[0], f"tree node ({level}, {index})")

    def nodes(self, coords: Sequence[tuple[int, int]]) -> list[bytes]:
        found: dict[tuple[int, int], object] = {}
        for i in range(0, len(coords), 400):  # well under SQLite's bound-variable limit
            part = coords[i : i + 400]
            leaves = [ix for lv, ix in part if lv == 0]
            inner = [(lv, ix) for lv, ix in part if lv != 0]
            if leaves:
                marks = ",".join("?" * len(leaves))
                for idx, h in self._all(
                    f"SELECT idx, leaf_hash FROM entries WHERE idx IN ({marks})", tuple(leaves)
                ):
                    found[(0, idx)] = h  # type: ignore[index]
            if inner:
                marks = ",".join(["(?, ?)"] * len(inner))
                flat = tuple(x for c in inner for x in c)
                for level, idx, h in self._all(
                    f"WITH want (lv, ix) AS (VALUES {marks}) "
                    "SELECT n.level, n.idx, n.hash FROM want CROSS JOIN nodes AS n "
                    "ON n.level = want.lv AND n.idx = want.ix",
                    flat,
                ):
                    found[(level, idx)] = h  # type: ignore[index]
        out: list[bytes] = []
        for c in coords:
            if c not in found:
                raise LedgerError(f"missing tree node {c}")
            out.append(_blob(found[c], f"tree node {c}"))
        return out

    def node_range(self, level: int, start: int, stop: int) -> list[bytes]:
        rows = self._all(
            "SELECT hash FROM nodes WHERE level = ? AND idx >= ? AND idx < ? ORDER BY idx",
            (level, start, stop),
        )
        return [_blob(r[0], f"tree node at level {level}") for r in rows]

    def add_tree_head(self, tree_size: int, data: bytes) -> None:
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO tree_heads (tree_size, data) VALUES (?, ?)", (tree_size, data)
                )
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"could not store the tree head: {exc}") from exc

    def tree_heads(self) -> list[bytes]:
        rows = self._all("SELECT data FROM tree_heads ORDER BY seq")
        return [_blob(r[0], "tree head") for r in rows]

    def latest_tree_head(self) -> bytes | None:
        row = self._one("SELECT data FROM tree_heads ORDER BY seq DESC LIMIT 1")
        return None if row is None else _blob(row[0], "tree head")

    def get_meta(self, key: str) -> bytes | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else _blob(row[0], f"metadata {key}")

    def set_meta(self, key: str, value: bytes) -> None:
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"could not write ledger metadata: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()
