"""The champion registry: one row per promotion decision, in SQLite beside the artifacts."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd

from plad_core.stats import paired_bootstrap

COLUMNS = {
    "recorded_at": "REAL", "run_id": "TEXT", "config": "TEXT", "metric": "TEXT",
    "challenger_score": "REAL", "champion_score": "REAL", "difference": "REAL", "ci_low": "REAL", "ci_high": "REAL",
    "promoted": "INTEGER", "reason": "TEXT", "model_path": "TEXT", "calibrate_key": "TEXT", "evaluate_key": "TEXT",
}


def registry_path(cfg: Any, store_root: Path) -> Path:
    """``promotion.registry`` when set, else ``registry.sqlite`` beside the artifacts of ``store_root``."""
    return Path(cfg.promotion.registry) if cfg.promotion.registry else Path(store_root) / "registry.sqlite"


def promotion_decision(challenger: Sequence[float], champion: Sequence[float], n_resamples: int = 1000,
                       seed: int = 0) -> dict[str, Any]:
    """Promote only when the paired-bootstrap CI of (challenger - champion) lies above zero."""
    comparison = paired_bootstrap(challenger, champion, n_resamples, seed)
    d = comparison.difference
    promoted = d.low > 0
    verdict = "beats" if promoted else "does not beat"
    return {"promoted": promoted, "champion_score": sum(champion) / len(champion), "difference": d.estimate,
            "ci_low": d.low, "ci_high": d.high,
            "reason": f"{verdict} the champion: difference {d.estimate:+.4f}, 95% CI [{d.low:+.4f}, {d.high:+.4f}]"}


class Registry:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            columns = ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
            db.execute(f"CREATE TABLE IF NOT EXISTS history (id INTEGER PRIMARY KEY AUTOINCREMENT, {columns})")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60)
        db.row_factory = sqlite3.Row
        return db

    def record(self, entry: dict[str, Any]) -> None:
        row = {name: entry.get(name) for name in COLUMNS} | {"recorded_at": time.time()}
        row["promoted"] = int(bool(row["promoted"]))
        with self._connect() as db:
            db.execute(f"INSERT INTO history ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
                       list(row.values()))

    def champion(self, config: str) -> Optional[dict[str, Any]]:
        """The latest promoted entry for this config name."""
        with self._connect() as db:
            found = db.execute("SELECT * FROM history WHERE config = ? AND promoted = 1 ORDER BY id DESC LIMIT 1",
                               (config,)).fetchone()
        return dict(found) if found else None

    def history(self) -> pd.DataFrame:
        with self._connect() as db:
            return pd.read_sql_query("SELECT * FROM history ORDER BY id", db)
