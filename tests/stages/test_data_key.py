"""prepare_data is keyed by the content of ``data.path``, wherever it lies: a local file by its sha256,
a URL (fsspec) by the store's content identity when its listing has one, else by its bytes."""

from __future__ import annotations

import hashlib
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec
import pytest
from tiny import TLDR

from plad_core.artifacts import ArtifactStore
from plad_core.config import load_config
from plad_core.data import DataError, source_fingerprint
from plad_core.stages import run_prepare_data

SIZES = ["data.n_labeled=6", "data.n_unlabeled=6", "data.n_dev=4"]


def prepared_key(tmp_path: Path, path: str) -> str:
    cfg = load_config("base", [f"data.path={path}", f"artifacts_root={tmp_path / 'store'}", *SIZES])
    return run_prepare_data(cfg, ArtifactStore(cfg.artifacts_root)).key


def test_a_moved_file_keeps_its_key_and_an_edited_one_gets_a_new_one(tmp_path):
    first, moved = tmp_path / "a" / "rows.jsonl", tmp_path / "b" / "other-name.jsonl"
    for path in (first, moved):
        path.parent.mkdir()
        shutil.copy(TLDR, path)
    assert source_fingerprint(str(first)) == {"sha256": hashlib.sha256(TLDR.read_bytes()).hexdigest()}
    key = prepared_key(tmp_path, str(first))
    assert prepared_key(tmp_path, str(moved)) == key
    assert prepared_key(tmp_path, f"file://{moved}") == key  # the same bytes through fsspec
    moved.write_text("".join(TLDR.read_text().splitlines(keepends=True)[:-1]))  # one row fewer
    assert prepared_key(tmp_path, str(moved)) != key


def test_a_url_whose_content_changes_gets_a_new_key(tmp_path):
    url = "memory://plad-test/rows.jsonl"
    fs = fsspec.filesystem("memory")
    lines = TLDR.read_text().splitlines(keepends=True)
    try:
        fs.pipe(url, "".join(lines).encode())
        key = prepared_key(tmp_path, url)
        assert prepared_key(tmp_path, url) == key
        fs.pipe(url, "".join(lines[:-1]).encode())  # one row fewer, same URL
        assert prepared_key(tmp_path, url) != key
    finally:
        fs.rm(url)


class _Served(BaseHTTPRequestHandler):
    body, etag, gets = b"", '"v1"', []

    def _head(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.send_header("ETag", self.etag)
        self.end_headers()

    def do_HEAD(self) -> None:  # noqa: N802
        self._head()

    def do_GET(self) -> None:  # noqa: N802
        type(self).gets.append(self.path)
        self._head()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Served)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/rows.jsonl"
    finally:
        server.shutdown()
        server.server_close()


def test_an_http_source_is_keyed_by_its_etag_and_size_without_a_download(http_url):
    _Served.body, _Served.etag, _Served.gets = TLDR.read_bytes(), '"v1"', []
    assert source_fingerprint(http_url) == {"ETag": '"v1"', "size": len(_Served.body)}
    assert _Served.gets == []
    _Served.etag = '"v2"'
    assert source_fingerprint(http_url) == {"ETag": '"v2"', "size": len(_Served.body)}


def test_a_missing_or_unreadable_source_names_data_path(tmp_path):
    with pytest.raises(DataError, match=r"memory://plad-test/none.jsonl: data file not found \(set data.path\)"):
        source_fingerprint("memory://plad-test/none.jsonl")
    with pytest.raises(DataError, match=r"^nosuch://x/rows.jsonl: cannot read data.path \(ValueError: "):
        source_fingerprint("nosuch://x/rows.jsonl")
    with pytest.raises(DataError, match="data file not found"):
        prepared_key(tmp_path, str(tmp_path / "none.jsonl"))
