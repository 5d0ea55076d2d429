"""The champion registry: one row per promotion decision, in SQLite beside the artifacts.

A champion belongs to a lineage: the config name, the data (``prepare_data``'s key) and the teacher
(a digest of its identity). A promoted model is copied into the registry's own ``models/`` folder,
so rebuilding or deleting the artifact it came from leaves the champion loadable.
"""

from __future__ import annotations

import math
import os
import shutil
import sqlite3
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional, Sequence

import pandas as pd

from plad_core.stats import paired_bootstrap

COLUMNS = {
    "recorded_at": "REAL", "run_id": "TEXT", "config": "TEXT", "metric": "TEXT",
    "challenger_score": "REAL", "champion_score": "REAL", "difference": "REAL", "ci_low": "REAL", "ci_high": "REAL",
    "promoted": "INTEGER", "reason": "TEXT", "model_path": "TEXT", "calibrate_key": "TEXT", "evaluate_key": "TEXT",
    "data_key": "TEXT", "teacher_key": "TEXT",
}
MODELS_DIR = "models"


class Lineage(NamedTuple):
    """What a champion is the champion of: runs compare only within one lineage."""
    config: str
    data_key: str
    teacher_key: str


def registry_path(cfg: Any, store_root: Path) -> Path:
    """``promotion.registry`` when set, else ``registry.sqlite`` beside the artifacts of ``store_root``."""
    return Path(cfg.promotion.registry) if cfg.promotion.registry else Path(store_root) / "registry.sqlite"


def _unusable(scores: Sequence[float]) -> str | None:
    """Why ``scores`` cannot be compared (none, or some not finite), or None."""
    if len(scores) == 0:
        return "has no scores"
    bad = sum(1 for s in scores if s is None or not math.isfinite(s))
    return f"has {bad} missing or NaN scores of {len(scores)}" if bad else None


def promotion_decision(challenger: Sequence[float], champion: Optional[Sequence[float]], n_resamples: int = 1000,
                       seed: int = 0) -> dict[str, Any]:
    """Promote only when the paired-bootstrap CI of (challenger - champion) lies above zero.

    ``champion`` None means there is no champion yet: a challenger with usable scores is promoted.
    A challenger with no or NaN scores is never promoted; a champion whose re-scores are NaN cannot
    be compared, so it is kept.
    """
    problem = _unusable(challenger)
    if problem:
        return {"promoted": False, "reason": f"not promoted: the challenger {problem}"}
    if champion is None:
        return {"promoted": True, "reason": "no champion yet"}
    problem = _unusable(champion)
    if problem:
        return {"promoted": False, "reason": f"cannot compare, champion kept: its re-scoring {problem}"}
    d = paired_bootstrap(challenger, champion, n_resamples, seed).difference
    promoted = d.low > 0
    verdict = "beats" if promoted else "does not beat"
    return {"promoted": promoted, "champion_score": sum(champion) / len(champion), "difference": d.estimate,
            "ci_low": d.low, "ci_high": d.high,
            "reason": f"{verdict} the champion: difference {d.estimate:+.4f}, 95% CI [{d.low:+.4f}, {d.high:+.4f}]"}


class Registry:
    """The SQLite file at ``path`` and its ``models/`` folder beside it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._transaction() as db:
            columns = ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
            db.execute(f"CREATE TABLE IF NOT EXISTS history (id INTEGER PRIMARY KEY AUTOINCREMENT, {columns})")
            present = {row["name"] for row in db.execute("PRAGMA table_info(history)")}
            for name, kind in COLUMNS.items():  # a registry written before the column existed
                if name not in present:
                    db.execute(f"ALTER TABLE history ADD COLUMN {name} {kind}")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)  # transactions are explicit
        db.row_factory = sqlite3.Row
        return db

    @contextmanager
    def _transaction(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction; ``write`` takes the write lock at BEGIN, so no other writer comes between
        what it reads and what it writes."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    @staticmethod
    def _insert(db: sqlite3.Connection, entry: dict[str, Any]) -> dict[str, Any]:
        row = {name: entry.get(name) for name in COLUMNS} | {"recorded_at": time.time()}
        row["promoted"] = int(bool(row["promoted"]))
        cursor = db.execute(f"INSERT INTO history ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
                            list(row.values()))
        return {"id": cursor.lastrowid, **entry, "promoted": bool(row["promoted"])}

    @staticmethod
    def _champion(db: sqlite3.Connection, lineage: Lineage) -> Optional[dict[str, Any]]:
        found = db.execute("SELECT * FROM history WHERE config = ? AND data_key = ? AND teacher_key = ? "
                           "AND promoted = 1 ORDER BY id DESC LIMIT 1", tuple(lineage)).fetchone()
        return dict(found) if found else None

    def record(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Append ``entry`` as it is (no decision); returns it with its id."""
        with self._transaction() as db:
            return self._insert(db, entry)

    def champion(self, lineage: Lineage) -> Optional[dict[str, Any]]:
        """The latest promoted entry of this lineage (rows without one, from older registries, never are)."""
        with self._transaction(write=False) as db:
            return self._champion(db, lineage)

    def decide_and_record(self, entry: dict[str, Any], lineage: Lineage, scored_against: Optional[int],
                          changed: Optional[dict[str, Any]] = None) -> Optional[dict[str, Any]]:
        """Record ``entry`` (a decision made against the champion with id ``scored_against``, None: no
        champion) in one transaction, if that is still the lineage's champion.

        If another run changed the champion since, ``entry | changed`` is recorded instead, or, with
        ``changed`` None, nothing is and None comes back (the caller re-scores against the new one).
        """
        with self._transaction() as db:
            current = self._champion(db, lineage)
            row = {**entry, "config": lineage.config, "data_key": lineage.data_key, "teacher_key": lineage.teacher_key}
            if (current["id"] if current else None) == scored_against:
                return self._insert(db, row)
            if changed is None:
                return None
            return self._insert(db, {**row, **changed, "promoted": False})

    def keep_model(self, source: Path, key: str) -> Path:
        """Copy the model folder ``source`` to ``models/<key>`` beside the registry, atomically
        (a temporary folder renamed into place); an existing copy of that key is kept."""
        models = self.path.parent / MODELS_DIR
        final = models / key
        if final.is_dir():
            return final
        models.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=models))
        try:
            shutil.copytree(source, work, dirs_exist_ok=True)
            try:
                os.rename(work, final)
            except OSError:
                if not final.is_dir():  # not a concurrent copy of the same key
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return final

    def history(self) -> pd.DataFrame:
        with self._transaction(write=False) as db:
            return pd.read_sql_query("SELECT * FROM history ORDER BY id", db)
