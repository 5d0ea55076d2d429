"""Content-addressed, atomic artifact store: the contract between pipeline stages.

Layout: ``<root>/<stage>/<key>/`` holds the payload (Parquet files, a model folder) and
``manifest.json`` (key, config slice, upstream keys, row counts, per-file sha256, timings,
library versions). The key hashes (stage name, the fingerprint of the code that builds it, the
config slice the stage reads, upstream keys), so the same inputs give the same key and any change gives a new key for
that stage and, through the upstream keys, for everything downstream.

A build writes into ``.tmp-<key>-<nonce>/`` and is renamed into place only once complete, so a
crash never leaves a finished-looking artifact. Sharded stages keep partial progress in
``.work-<key>/`` between attempts; it is removed once the artifact is committed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional

log = logging.getLogger("plad.artifacts")

MANIFEST = "manifest.json"
_VERSIONED_LIBS = ("plad", "torch", "transformers", "pyarrow", "pandas", "rouge-score", "omegaconf")


@dataclass(frozen=True)
class Artifact:
    stage: str
    key: str
    path: Path
    manifest: dict[str, Any]

    def file(self, name: str) -> Path:
        return self.path / name


def artifact_key(stage: str, code: str, config: dict[str, Any], upstream: dict[str, str]) -> str:
    """Hash of everything that determines a stage's output (16 hex chars of sha256); ``code`` is the
    fingerprint of the code that builds it (``plad_core.stages.code_version``)."""
    blob = json.dumps({"stage": stage, "code": code, "config": config, "upstream": upstream},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _checksums(folder: Path) -> dict[str, dict[str, Any]]:
    return {str(p.relative_to(folder)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def _library_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED_LIBS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


Builder = Callable[[Path, Path], Optional[dict[str, Any]]]


class ArtifactStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def work_dir(self, stage: str, key: str) -> Path:
        """Scratch space that survives a crash, for stages that resume from shards."""
        return self.root / stage / f".work-{key}"

    def verify(self, stage: str, key: str) -> Optional[str]:
        """Why the committed artifact is unusable (missing file, size or checksum mismatch), or None."""
        folder = self.path(stage, key)
        manifest = json.loads((folder / MANIFEST).read_text())
        for rel, expected in manifest["files"].items():
            target = folder / rel
            if not target.is_file():
                return f"{rel} is missing"
            if target.stat().st_size != expected["bytes"]:
                return f"{rel} has {target.stat().st_size} bytes, manifest says {expected['bytes']}"
            if sha256_file(target) != expected["sha256"]:
                return f"{rel} does not match its sha256 in the manifest"
        return None

    def get(self, stage: str, key: str) -> Optional[Artifact]:
        """The committed artifact if present and intact. A damaged one is reported and removed."""
        folder = self.path(stage, key)
        if not (folder / MANIFEST).is_file():
            return None
        problem = self.verify(stage, key)
        if problem:
            log.warning("artifact %s/%s is damaged (%s); recomputing it", stage, key, problem)
            shutil.rmtree(folder)
            return None
        return Artifact(stage, key, folder, json.loads((folder / MANIFEST).read_text()))

    def materialize(self, stage: str, code: str, config: dict[str, Any], upstream: dict[str, str],
                    build: Builder, force: bool = False) -> Artifact:
        """Return the artifact for these inputs, building and committing it if needed.

        ``build(out_dir, work_dir)`` writes the payload into ``out_dir`` and may return stats
        (row counts and the like) recorded in the manifest.
        """
        key = artifact_key(stage, code, config, upstream)
        (self.root / stage).mkdir(parents=True, exist_ok=True)
        with self._lock(stage, key):
            if not force and (found := self.get(stage, key)) is not None:
                log.info("%s: reusing %s", stage, found.path)
                return found
            return self._build(stage, key, code, config, upstream, build)

    @contextlib.contextmanager
    def _lock(self, stage: str, key: str):
        """One writer per artifact key across processes: a second run waits, then reuses the result."""
        with open(self.root / stage / f".lock-{key}", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _build(self, stage: str, key: str, code: str, config: dict[str, Any], upstream: dict[str, str],
               build: Builder) -> Artifact:
        tmp = self.root / stage / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        work = self.work_dir(stage, key)
        work.mkdir(exist_ok=True)
        log.info("%s: building %s", stage, key)
        started = time.time()
        try:
            stats = build(tmp, work) or {}
            manifest = {
                "stage": stage, "key": key, "code": code, "config": config, "upstream": upstream,
                "stats": stats, "files": _checksums(tmp),
                "started_at": started, "seconds": round(time.time() - started, 3),
                "libraries": _library_versions(),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
            final = self.path(stage, key)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        log.info("%s: committed %s in %.1fs", stage, final, manifest["seconds"])
        return Artifact(stage, key, final, manifest)

    def find(self, stage: str, config: dict[str, Any], upstream: dict[str, str]) -> list[Artifact]:
        """Committed, intact artifacts of ``stage`` built from this config and these upstream keys
        (upstreams not named may differ): earlier results a new build can reuse row by row."""
        found = []
        as_stored = json.loads(json.dumps(config, default=str))  # the form manifests record configs in
        for manifest_path in sorted((self.root / stage).glob("*/" + MANIFEST)):
            manifest = json.loads(manifest_path.read_text())
            same_upstream = all(manifest["upstream"].get(k) == v for k, v in upstream.items())
            if manifest["config"] == as_stored and same_upstream:
                if (artifact := self.get(stage, manifest["key"])) is not None:
                    found.append(artifact)
        return found

    def latest(self, stage: str) -> Optional[Artifact]:
        """The most recently committed artifact of a stage (for inspection commands)."""
        candidates = [p for p in (self.root / stage).glob("*/" + MANIFEST)] if (self.root / stage).is_dir() else []
        if not candidates:
            return None
        newest = max(candidates, key=lambda p: p.stat().st_mtime).parent
        return Artifact(stage, newest.name, newest, json.loads((newest / MANIFEST).read_text()))
