"""The openai sampling backend against the project's real OpenAI-compatible server (a subprocess
serving a tiny model on 127.0.0.1, wrapped by tests/sampling/fault_server.py), including injected
429s, 500s, dropped connections and stalls; where the API key may go; the server's model loading."""

import logging
import random
import re
import secrets
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from tiny import REPO, make_tiny_model, tiny_overrides

from plad_core import stages
from plad_core.artifacts import ArtifactStore
from plad_core.config import ConfigError, load_config
from plad_core.models import load_tokenizer
from plad_core.sampling import check_backend
from plad_core.evaluation.judge import make_judge
from plad_core.sampling import server
from plad_core.sampling.api_settings import is_loopback
from plad_core.sampling.openai_api import (
    ApiError,
    ApiSettings,
    CharTokens,
    api_root,
    generate,
    parse_retry_after,
    retry_delay,
)
from plad_core.sampling.schema import SAMPLES_SCHEMA
from plad_core.sampling.shards import sample_sharded
from plad_core.stages import keys
from plad_core.stages import sampling as stage_sampling
from fault_server import serve, server_state
from pickle_model import make_bin_only_model

SERVER_KEY_ENV = "PLAD_TEST_SERVER_KEY"
PROMPTS = [f"SUBREDDIT: r/test\n\nTITLE: post {i}\n\nPOST: {'word ' * (3 + 2 * i)}\n\nTL;DR:" for i in range(8)]
IDS = [f"id{i}" for i in range(8)]


def api_generate(settings: ApiSettings, n: int = 1, max_new_tokens: int = 6):
    return lambda prompts, seed: generate(prompts, settings, n=n, temperature=0.8, top_p=0.95,
                                          max_new_tokens=max_new_tokens, seed=seed, stop=[])


def meta(model: str) -> dict:
    return {"backend": "openai", "model": model, "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 6}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def server_key() -> str:
    return "sk-plad-test-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def plain_server(tiny, server_key, tmp_path_factory):
    """No faults; requires the Bearer key from $PLAD_TEST_SERVER_KEY."""
    with serve(tiny, tmp_path_factory.mktemp("log") / "server.log", "--api-key-env", SERVER_KEY_ENV,
               env={SERVER_KEY_ENV: server_key}) as url:
        yield url


@pytest.fixture
def client_key(monkeypatch, server_key) -> str:
    monkeypatch.setenv("PLAD_TEST_KEY", server_key)
    return server_key


def settings_for(url: str, tiny: Path, **kw) -> ApiSettings:
    return ApiSettings(base_url=url, model=str(tiny), api_key_env="PLAD_TEST_KEY", concurrency=4,
                       backoff_base_s=0.001, backoff_max_s=0.01, timeout_s=30, **kw)


# -- fast checks, no server -----------------------------------------------------------------------------------------

def test_backoff_is_full_jitter_capped_and_retry_after_wins():
    rng = random.Random(0)
    delays = [retry_delay(a, 0.5, 4.0, None, rng) for a in range(8) for _ in range(200)]
    assert all(0 <= d <= 4.0 for d in delays)
    first = [retry_delay(0, 0.5, 4.0, None, rng) for _ in range(200)]
    assert max(first) <= 0.5 and min(first) < 0.1          # attempt 0: uniform(0, base)
    assert retry_delay(3, 0.5, 4.0, 7.5, rng) == 7.5        # the server's Retry-After
    assert parse_retry_after("2") == 2.0 and parse_retry_after("0.25") == 0.25
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0   # a date in the past: now
    assert parse_retry_after("99999") == 300.0


def test_base_url_settings_and_char_tokens():
    assert api_root("http://h:8000") == api_root("http://h:8000/") == api_root("http://h:8000/v1/") == "http://h:8000/v1"
    assert api_root("https://api.example.com/openai/v1") == "https://api.example.com/openai/v1"
    with pytest.raises(ValueError, match="model is empty"):
        ApiSettings(base_url="http://h:8000/v1", model="").check()
    with pytest.raises(ValueError, match="mode='stream'"):
        ApiSettings(base_url="http://h:8000/v1", model="m", mode="stream").check()
    with pytest.raises(ValueError, match="credentials"):
        ApiSettings(base_url="http://user:secret@h:8000/v1", model="m").check()
    tok = CharTokens()
    ids = tok("abcdefghij")["input_ids"]
    assert len(ids) == 3 and tok.decode(ids[:2]) == "abcdefgh"


def test_unknown_backend_lists_the_available_ones_and_the_student_has_no_api(tmp_path):
    with pytest.raises(ValueError, match=r"teacher.sampling.backend='gpt'.*available: auto .*; hf .*; vllm .*; openai "):
        check_backend("gpt", "teacher.sampling")
    with pytest.raises(ValueError, match="student.sampling.backend='openai' is not supported here; use one of auto, hf, vllm"):
        check_backend("openai", "student.sampling", ("auto", "hf", "vllm"))
    # a config names them at load, before any stage
    with pytest.raises(ConfigError, match=r"teacher.sampling.backend='gpt' is not one of: auto, hf, vllm, openai$"):
        load_config("base", ["teacher.sampling.backend=gpt"])
    with pytest.raises(ConfigError, match=r"student.sampling.backend='openai' is not one of: auto, hf, vllm$"):
        load_config("base", ["student.sampling.backend=openai"])


def test_artifact_key_slices():
    base = load_config("base")
    # hf: the backend is named and the api settings stay out
    hf_slice = keys.sampling_slice(load_config("base", ["teacher.sampling.api.model=x"]), "teacher", "hf")
    assert hf_slice == keys.sampling_slice(base, "teacher", "hf")
    assert hf_slice["teacher.sampling"]["backend"] == "hf" and "api" not in hf_slice["teacher.sampling"]
    # openai: the endpoint and served name identify the teacher; throughput knobs do not
    over = ["teacher.sampling.backend=openai", "teacher.sampling.api.model=served",
            "student.model=some/student", "eval.judge.enabled=false"]  # what an API teacher needs besides
    a = load_config("base", over)
    b = load_config("base", over + ["teacher.sampling.api.concurrency=64", "teacher.sampling.api.max_retries=1",
                                    "teacher.sampling.api.api_key_env=OTHER", "teacher.sampling.dtype=float32"])
    assert keys.sampling_slice(a, "teacher", "openai") == keys.sampling_slice(b, "teacher", "openai")
    ident = keys.api_identity(ApiSettings.from_config(a.teacher.sampling.api))
    assert ident["base_url"] == "http://127.0.0.1:8000/v1" and ident["model"] == "served"
    other = ApiSettings.from_config(load_config("base", over + ["teacher.sampling.api.base_url=http://h:1"]).teacher.sampling.api)
    assert keys.api_identity(other) != ident


def test_a_key_goes_over_plain_http_to_loopback_only():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.10", "::1", "localhost", "LOCALHOST", "localhost."))
    assert not any(is_loopback(h) for h in ("example.com", "10.0.0.5", "128.0.0.1", "::2", "localhost.example.com",
                                            "", None))
    keyed = dict(model="m", api_key_env="PLAD_TEST_KEY")
    for url in ("https://example.com/v1", "https://10.0.0.5:8443/v1", "http://127.0.0.1:8000/v1",
                "http://127.3.2.1:8000/v1", "http://[::1]:8000/v1", "http://localhost:8000/v1"):
        ApiSettings(base_url=url, **keyed).check()
    ApiSettings(base_url="http://example.com/v1", model="m", api_key_env="").check()  # no key: nothing to leak
    message = ("teacher.sampling.api.base_url='http://example.com/v1' is plain http:// to another host: the API "
               "key would cross the network unencrypted. Use https://")
    with pytest.raises(ValueError, match="^" + re.escape(message) + ".*teacher.sampling.api.api_key_env=''"):
        ApiSettings(base_url="http://example.com/v1", **keyed).check("teacher.sampling.api")
    # the stages and the judge check their endpoint under its own config path, before anything runs
    over = ["teacher.sampling.backend=openai", "teacher.sampling.api.model=m", "student.model=s",
            "eval.judge.enabled=false", "teacher.sampling.api.base_url=http://example.com/v1",
            "teacher.sampling.api.api_key_env=PLAD_TEST_KEY"]
    with pytest.raises(ValueError, match=re.escape("teacher.sampling.api.base_url='http://example.com/v1' is plain")):
        stage_sampling._sampling(load_config("base", over), "sample_teacher", None)
    judge = load_config("base", ["eval.judge.backend=openai", "eval.judge.api.model=m",
                                 "eval.judge.api.base_url=http://10.1.2.3:8000/v1",
                                 "eval.judge.api.api_key_env=PLAD_TEST_KEY"]).eval.judge
    with pytest.raises(ValueError, match=re.escape("eval.judge.api.base_url='http://10.1.2.3:8000/v1' is plain")):
        make_judge(judge, "data/cache", "cpu", "float32", 0)


def test_a_key_for_plain_http_to_another_host_is_refused_before_any_request(monkeypatch):
    sent = []
    monkeypatch.setattr(httpx.Client, "send", lambda self, request, **kw: sent.append(request))
    monkeypatch.setenv("PLAD_TEST_KEY", "sk-never-sent")
    with pytest.raises(ValueError, match=re.escape("sampling.api.base_url='http://example.com/v1' is plain http://")):
        generate(PROMPTS[:1], ApiSettings(base_url="http://example.com/v1", model="m", api_key_env="PLAD_TEST_KEY"))
    # a key handed over directly, with no api_key_env, is refused all the same
    with pytest.raises(ValueError, match="is plain http:// to another host"):
        generate(PROMPTS[:1], ApiSettings(base_url="http://example.com/v1", model="m", api_key_env=""),
                 api_key="sk-never-sent")
    assert sent == []


# -- against the real server ----------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("mode", ["completions", "chat"])
def test_completions_and_chat_write_the_shared_schema(tiny, plain_server, client_key, tmp_path, mode):
    settings = settings_for(plain_server, tiny, mode=mode)
    before = server_state(plain_server)["requests"]
    path = f"/v1/{'chat/' if mode == 'chat' else ''}completions"
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        stats = sample_sharded(IDS[:5], PROMPTS[:5], api_generate(settings, n=2), meta(str(tiny)), 7, 2,
                               tmp_path / run, tmp_path / f"{run}.parquet")
        assert stats["rows"] == 10 and stats["shards"] == 3
    table = pq.read_table(tmp_path / "a.parquet")
    assert table.schema.equals(SAMPLES_SCHEMA)
    rows = table.to_pylist()
    assert [(r["id"], r["sample_index"]) for r in rows] == [(i, j) for i in IDS[:5] for j in range(2)]
    assert any(r["text"] for r in rows) and all(r["backend"] == "openai" for r in rows)
    assert all(r["finish_reason"] in ("stop", "length") for r in rows)
    if mode == "completions":  # usage.prompt_tokens: the server's count with the model's own tokenizer
        tok = load_tokenizer(str(tiny))
        assert [r["prompt_tokens"] for r in rows] == [len(tok(p)["input_ids"]) for p in PROMPTS[:5] for _ in range(2)]
    else:  # the chat template wraps the prompt
        assert all(r["prompt_tokens"] > 10 for r in rows)
    # the same shard seeds give the same texts (the server seeds each request)
    assert [r["text"] for r in rows] == [r["text"] for r in pq.read_table(tmp_path / "b.parquet").to_pylist()]
    assert server_state(plain_server)["requests"].get(path, 0) - before.get(path, 0) == 10   # 5 prompts x 2 runs


@pytest.mark.slow
def test_sample_teacher_over_the_api_sends_the_key_and_never_stores_it(tiny, plain_server, client_key, tmp_path,
                                                                       caplog):
    caplog.set_level(logging.DEBUG)
    over = tiny_overrides(tmp_path, tiny) + [
        "teacher.model=/nonexistent/never-loaded",  # the api backend loads no model and no tokenizer
        "teacher.sampling.backend=openai", f"teacher.sampling.api.base_url={plain_server}",
        f"teacher.sampling.api.model={tiny}", "teacher.sampling.api.api_key_env=PLAD_TEST_KEY",
        "teacher.sampling.api.backoff_base_s=0.001", "teacher.sampling.shard_size=4",
        "teacher.prompt.fewshot_k=0", "teacher.prompt.max_tokens=48", f"student.model={tiny}",
        "eval.judge.enabled=false"]
    cfg = load_config("base", over)
    store = ArtifactStore(Path(cfg.artifacts_root))
    art = stages.run_stage("sample_teacher", cfg, store)
    rows = pq.read_table(art.file("samples.parquet")).to_pylist()
    assert len(rows) == 6 and {r["backend"] for r in rows} == {"openai"} and {r["model"] for r in rows} == {str(tiny)}
    assert all(len(r["prompt"]) <= 48 * 4 for r in rows)                   # truncated by characters
    assert art.manifest["stats"]["truncated_prompts"] >= 1 and art.manifest["stats"]["backend"] == "openai"
    teacher = art.manifest["config"]["teacher"]
    assert teacher["base_url"] == plain_server and teacher["model"] == str(tiny) and teacher["backend"] == "openai"
    assert server_state(plain_server)["last_authorization"] == f"Bearer {client_key}"
    # the key is nowhere: not in any file under the artifacts root, not in the log
    for f in Path(cfg.artifacts_root).rglob("*"):
        if f.is_file():
            assert client_key.encode() not in f.read_bytes(), f
    assert client_key not in caplog.text
    # reused on a second run
    assert stages.run_stage("sample_teacher", cfg, store).key == art.key


@pytest.mark.slow
def test_a_wrong_key_fails_at_once_naming_the_url(tiny, plain_server, monkeypatch):
    monkeypatch.setenv("PLAD_TEST_KEY", "sk-wrong")
    before = server_state(plain_server)["arrivals"]
    with pytest.raises(ApiError, match=re.escape(f"{plain_server}/completions: HTTP 401") + ".*not retried"):
        generate(PROMPTS[:1], settings_for(plain_server, tiny, max_retries=3), max_new_tokens=4)
    assert server_state(plain_server)["arrivals"] - before == 1


@pytest.mark.slow
def test_no_key_is_sent_unless_api_key_env_names_one(tiny, plain_server, server_key, monkeypatch):
    # the server's own key sits in OPENAI_API_KEY: were it read by default, the request would pass
    monkeypatch.setenv("OPENAI_API_KEY", server_key)
    monkeypatch.setenv("PLAD_TEST_KEY", server_key)
    for unset in ("", "PLAD_TEST_UNSET_KEY"):
        monkeypatch.delenv("PLAD_TEST_UNSET_KEY", raising=False)
        with pytest.raises(ApiError, match=r"HTTP 401.*not retried.*no key was sent"):
            generate(PROMPTS[:1], replace(settings_for(plain_server, tiny), api_key_env=unset), max_new_tokens=4)
        assert server_state(plain_server)["last_authorization"] is None
    assert len(generate(PROMPTS[:1], settings_for(plain_server, tiny), max_new_tokens=4)) == 1  # loopback http
    assert server_state(plain_server)["last_authorization"] == f"Bearer {server_key}"


@pytest.mark.slow
def test_429_500_drops_and_timeouts_are_retried_and_rows_are_complete(tiny, plain_server, client_key, tmp_path,
                                                                      caplog):
    caplog.set_level(logging.WARNING, logger="plad.sampling.openai")
    with serve(tiny, tmp_path / "faulty.log", "--faults", "429,500,drop,stall", "--retry-after", "0.2",
               "--stall-s", "8") as faulty:
        # 4 s: a tiny model's 8 rows answer well within it on a loaded 2-core machine; the stall outlasts it
        settings = replace(settings_for(faulty, tiny), timeout_s=4.0, max_retries=4)
        (tmp_path / "w").mkdir()
        stats = sample_sharded(IDS, PROMPTS, api_generate(settings), meta(str(tiny)), 3, 3, tmp_path / "w",
                               tmp_path / "faulty.parquet")
        state = server_state(faulty)
    rows = pq.read_table(tmp_path / "faulty.parquet").to_pylist()
    assert stats["rows"] == 8 and [r["id"] for r in rows] == IDS
    assert len({(r["id"], r["sample_index"]) for r in rows}) == len(rows)
    # every injected fault cost one more request, and nothing else did
    assert state["injected"] == {"429": 1, "500": 1, "drop": 1, "stall": 1}
    assert state["requests"] == {"/v1/completions": 8 + 4}
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 4
    assert sum("HTTP 429" in m and "in 0.20s" in m for m in retries) == 1      # Retry-After honoured
    assert sum("HTTP 500" in m and "in 0.20s" in m for m in retries) == 1
    assert sum("RemoteProtocolError" in m for m in retries) == 1                # the dropped connection
    assert sum("ReadTimeout" in m for m in retries) == 1                        # the stall
    # the retried rows are exactly what an undisturbed server gives for the same seeds
    (tmp_path / "c").mkdir()
    sample_sharded(IDS, PROMPTS, api_generate(settings_for(plain_server, tiny)), meta(str(tiny)), 3, 3,
                   tmp_path / "c", tmp_path / "clean.parquet")
    assert rows == pq.read_table(tmp_path / "clean.parquet").to_pylist()


@pytest.mark.slow
def test_exhausted_retries_name_the_url_and_the_last_status(tiny, tmp_path):
    with serve(tiny, tmp_path / "down.log", "--fail-first", "1000", "--fail-status", "503") as down:
        settings = replace(settings_for(down, tiny), max_retries=2, concurrency=1)
        with pytest.raises(ApiError) as err:
            generate(PROMPTS[:1], settings, max_new_tokens=4)
        assert server_state(down)["arrivals"] == 3
    message = str(err.value)
    assert f"{down}/completions" in message and "after 3 attempts" in message and "last: HTTP 503" in message


# -- the server loads the model as teacher.model is loaded ------------------------------------------------------------

@pytest.fixture(scope="module")
def bin_only(tmp_path_factory) -> Path:
    return make_bin_only_model(tmp_path_factory.mktemp("bin") / "tiny-bin", layers=2)


@pytest.mark.slow
def test_the_server_refuses_pickle_weights_unless_told_and_passes_the_load_settings(bin_only, tmp_path, monkeypatch):
    cli = subprocess.run([sys.executable, "-m", "plad_core.sampling.server", "--model", str(bin_only), "--port", "0",
                          "--dtype", "float32"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 2 and "serving" not in cli.stdout
    assert re.search(rf"{re.escape(str(bin_only))} holds no \*.safetensors weights, only pickle checkpoints "
                     r"\(pytorch_model.bin\).*set --no-use-safetensors to load them", cli.stderr), cli.stderr
    args = server.parser().parse_args(["--model", str(bin_only), "--dtype", "float32", "--revision", "main",
                                       "--trust-remote-code", "--no-use-safetensors"])
    loaded = []
    real = server.models.load_model
    monkeypatch.setattr(server.models, "load_model", lambda *a: loaded.append(a[2:]) or real(*a))
    model, tokenizer = server.load(args)
    assert loaded == [("main", True, False)] and model.dtype.is_floating_point and tokenizer("hi")["input_ids"]
    defaults = server.parser().parse_args(["--model", "m"])
    assert (defaults.revision, defaults.trust_remote_code, defaults.use_safetensors) == (None, False, True)
    with serve(bin_only, tmp_path / "bin.log", "--no-use-safetensors") as url:  # and it serves them
        answer = httpx.post(f"{url}/completions", json={"prompt": "hello", "max_tokens": 3, "seed": 1}, timeout=60)
    assert answer.status_code == 200 and answer.json()["choices"][0]["finish_reason"] in ("stop", "length")
