"""`tunelab serve` on tiny models: the service answers exactly as `tunelab predict` does, for two LoRA runs sharing
one base model, a full run and a generation run, alone, in dynamic batches and under a 1,000-request load on a
real server; every bad request is a 4xx with a message and the service goes on; bad RUN arguments end the command
with one line before any port is bound."""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import tiny_sentences
from tunelab.api import predict, train
from tunelab.cli import main

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from tunelab.serve import Limits, create_app, load, parse_specs  # noqa: E402

TEXTS = [text for text, _ in tiny_sentences(24, seed=7)] + ["a great lovely film", "an awful boring plot",
                                                             "déjà vu — 映画", "x"]
PROMPTS = ["repeat red cat", "repeat sun moon", "repeat dog tree", "repeat blue green dog sun"]


def _config(name, source, model, method, tmp, task="classification", **train_extra) -> dict:
    cfg = {"task": task, "model": str(model), "name": name,
           "data": {"source": str(source), "max_length": 16 if task == "classification" else 32,
                    "split": {"validation": 0.2, "test": 0.2}},
           "method": {"name": method},
           "train": {"epochs": 2, "batch_size": 8, "precision": "fp32", "log_every": 2,
                     "early_stopping": {"patience": 0}, **train_extra},
           "output": str(tmp / "runs")}
    if task == "generation":
        cfg["generation"] = {"max_new_tokens": 4}
        cfg["train"]["epochs"] = 1
    return cfg


@pytest.fixture(scope="module")
def runs(tiny_csv, tiny_bert, tiny_llama, tiny_generation_jsonl, tmp_path_factory) -> dict[str, Path]:
    """Two LoRA runs on one tiny BERT (seeds 0 and 1), a full run, and a LoRA generation run on a tiny Llama."""
    tmp = tmp_path_factory.mktemp("serve")
    quiet = lambda *_: None  # noqa: E731
    out = {}
    for name, method, seed in (("lora-a", "lora", 0), ("lora-b", "lora", 1), ("full", "full", 0)):
        cfg = _config(name, tiny_csv, tiny_bert, method, tmp, seed=seed, learning_rate=5e-3 if method == "lora"
                      else 5e-4)
        out[name] = Path(train(cfg, log=quiet)["run_folder"])
    cfg = _config("gen", tiny_generation_jsonl, tiny_llama, "lora", tmp, task="generation")
    out["gen"] = Path(train(cfg, log=quiet)["run_folder"])
    return out


def _predicted(run: Path, rows: list[dict], tmp: Path) -> list[dict]:
    """`tunelab predict`'s rows for `rows`."""
    source, output = tmp / f"{run.name}-in.jsonl", tmp / f"{run.name}-out.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    predict(run, source, output, overwrite=True)
    return [json.loads(line) for line in output.read_text().splitlines()]


@pytest.fixture(scope="module")
def expected(runs, tmp_path_factory) -> dict[str, dict[str, dict]]:
    """Per model, `tunelab predict`'s row for every test text (keyed by the text)."""
    tmp = tmp_path_factory.mktemp("expected")
    out = {name: {r["text"]: r for r in _predicted(runs[name], [{"text": t} for t in TEXTS], tmp)}
           for name in ("lora-a", "lora-b", "full")}
    out["gen"] = {r["prompt"]: r for r in _predicted(runs["gen"], [{"prompt": p} for p in PROMPTS], tmp)}
    return out


@pytest.fixture(scope="module")
def served(runs):
    return load(parse_specs([str(runs["lora-a"]), f"second={runs['lora-b']}", str(runs["full"]),
                             str(runs["gen"])]), log=lambda *_: None)


@pytest.fixture(scope="module")
def client(served):
    with TestClient(create_app(served, Limits(max_batch=8, max_inputs=32, max_chars=500))) as c:
        yield c


def same_row(got: dict, want: dict) -> None:
    """Labels and texts exactly; scores to 1e-5: a batch padded to a longer input than `predict`'s changes the
    order of float sums in the last bits (the scores are rounded to 6 decimals)."""
    assert got.keys() == want.keys()
    for key in want:
        if key == "scores":
            assert got[key] == pytest.approx(want[key], abs=1e-5)
        else:
            assert got[key] == want[key], key


def test_predictions_are_those_of_tunelab_predict(client, expected):
    for name, model in (("lora-a", "lora-a"), ("lora-b", "second"), ("full", "full")):
        whole = client.post("/v1/predict", json={"model": model, "inputs": TEXTS}).json()
        assert whole["model"] == model and len(whole["predictions"]) == len(TEXTS)
        for text, row in zip(TEXTS, whole["predictions"]):
            same_row(row, expected[name][text])
        one = client.post("/v1/predict", json={"model": model, "inputs": TEXTS[3]}).json()["predictions"]
        same_row(one[0], expected[name][TEXTS[3]])
        rows = client.post("/v1/predict", json={"model": model, "inputs": [{"text": TEXTS[5]}]}).json()
        same_row(rows["predictions"][0], expected[name][TEXTS[5]])
    # The two adapters share one base model and still answer as their own runs: their scores differ.
    assert expected["lora-a"][TEXTS[0]]["scores"] != expected["lora-b"][TEXTS[0]]["scores"]
    generated = client.post("/v1/predict", json={"model": "gen", "inputs": PROMPTS}).json()["predictions"]
    assert generated == [expected["gen"][p] for p in PROMPTS]


def test_models_share_a_base_and_the_schema_is_served(client, served):
    assert served["second"].adapted.model is served["lora-a"].adapted.model
    assert served["full"].adapted.model is not served["lora-a"].adapted.model
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert set(models) == {"lora-a", "second", "full", "gen"}
    assert models["second"]["shared_base"] and models["second"]["labels"] == ["negative", "positive"]
    assert models["gen"]["task"] == "generation" and models["full"]["inputs"] == ["text"]
    schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/chat/completions", "/v1/models", "/health"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


def test_chat_completions_answer_as_predict_does_for_a_conversation(client, runs, tmp_path):
    messages = [{"role": "user", "content": "repeat red cat"}]
    r = client.post("/v1/chat/completions", json={"model": "gen", "messages": messages, "temperature": 0,
                                                  "user": "someone"})
    assert r.status_code == 200, r.text
    body = r.json()
    want = _predicted(runs["gen"], [{"messages": messages}], tmp_path)[0]["prediction"]
    assert body["object"] == "chat.completion" and body["model"] == "gen" and body["id"].startswith("chatcmpl-")
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": want},
                                "finish_reason": "stop"}]
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    parts = [{"role": "user", "content": [{"type": "text", "text": "repeat "}, {"type": "text", "text": "red cat"}]}]
    assert client.post("/v1/chat/completions", json={"model": "gen", "messages": parts}).json()["choices"] == \
        body["choices"]
    short = client.post("/v1/chat/completions", json={"model": "gen", "messages": messages, "max_tokens": 1}).json()
    assert short["usage"]["completion_tokens"] <= 1


def test_requests_that_arrive_together_are_batched(served):
    async def scenario():
        app = create_app(served, Limits(max_batch=8, max_wait_ms=50))
        import httpx
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), \
                httpx.AsyncClient(transport=transport, base_url="http://serve") as c:
            replies = await asyncio.gather(*(c.post("/v1/predict", json={"model": "full", "inputs": t})
                                             for t in TEXTS[:8]))
            assert all(r.status_code == 200 for r in replies)
            return app.state.queues["full"].batches
    assert asyncio.run(scenario()) < 8  # eight concurrent requests took fewer forward batches than requests


BAD = [  # (request, status, words the message must hold)
    ("POST", "/v1/predict", {"inputs": "good"}, 422, "several models"),
    ("POST", "/v1/predict", {"model": "nope", "inputs": "good"}, 404, "unknown model 'nope'"),
    ("POST", "/v1/predict", {"model": "full"}, 422, "inputs"),
    ("POST", "/v1/predict", {"model": "full", "inputs": []}, 422, "empty"),
    ("POST", "/v1/predict", {"model": "full", "inputs": 5}, 422, "inputs"),
    ("POST", "/v1/predict", {"model": "full", "inputs": ["ok", 3]}, 422, "inputs"),
    ("POST", "/v1/predict", {"model": 7, "inputs": "good"}, 422, "model"),
    ("POST", "/v1/predict", {"model": "full", "inputs": "good", "input": "typo"}, 422, "input"),
    ("POST", "/v1/predict", {"model": "full", "inputs": ["x"] * 33}, 413, "at most 32"),
    ("POST", "/v1/predict", {"model": "full", "inputs": "word " * 200}, 413, "characters"),
    ("POST", "/v1/predict", {"model": "full", "inputs": [{"review": "good"}]}, 422, "no column 'text'"),
    ("POST", "/v1/predict", {"model": "full", "inputs": [{"text": "  "}]}, 422, "empty text"),
    ("POST", "/v1/predict", {"model": "full", "inputs": [{}]}, 422, "empty row"),
    ("POST", "/v1/predict", {"model": "full", "inputs": [{"text": ["a", "list"]}]}, 422, "not a text"),
    ("POST", "/v1/predict", b'{"model": "full", "inputs": ', 422, "json"),
    ("POST", "/v1/predict", b"\xff\xfe not json", 400, "json"),
    ("POST", "/v1/predict", [1, 2], 422, "body"),
    ("GET", "/v1/predict", None, 405, "not allowed"),
    ("GET", "/v2/nothing", None, 404, "not found"),
    ("POST", "/v1/chat/completions", {"model": "full", "messages": [{"role": "user", "content": "hi"}]}, 400,
     "classification model"),
    ("POST", "/v1/chat/completions", {"model": "gen", "messages": []}, 422, "messages"),
    ("POST", "/v1/chat/completions", {"model": "gen", "messages": [{"role": "user"}]}, 422, "content"),
    ("POST", "/v1/chat/completions", {"model": "gen", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}, 422, "content"),
    ("POST", "/v1/chat/completions", {"model": "gen", "messages": [{"role": "user", "content": "hi"}],
                                      "temperature": 0.7}, 400, "greedy"),
    ("POST", "/v1/chat/completions", {"model": "gen", "messages": [{"role": "user", "content": "hi"}],
                                      "max_tokens": 999}, 400, "max_new_tokens"),
    ("POST", "/v1/chat/completions", {"model": "gen", "messages": [{"role": "user", "content": "hi"}],
                                      "stream": True}, 400, "streaming"),
    ("POST", "/v1/chat/completions", {"model": "gen", "messages": [{"role": "assistant", "content": "hi"}]}, 422,
     "user's message"),
    ("POST", "/v1/chat/completions", {"model": "gen", "messages": [{"role": "user", "content": "hi"}],
                                      "n": 3}, 400, "n must be 1"),
]


@pytest.mark.parametrize("method,path,body,status,words", BAD, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD)])
def test_a_bad_request_is_a_4xx_with_a_message(client, method, path, body, status, words):
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) \
        else ({"json": body} if body is not None else {})
    r = client.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    assert words.lower() in message.lower() and "\n" not in message
    assert client.get("/health").status_code == 200  # and the service goes on


def test_an_oversize_body_is_refused_before_it_is_read(client):
    r = client.post("/v1/predict", content=b"{}", headers={"content-type": "application/json",
                                                             "content-length": str(64 * 2**20)})
    assert r.status_code == 413 and "bytes" in r.json()["error"]["message"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_real_server_answers_1000_requests_at_concurrency_16(served, expected):
    import httpx
    import uvicorn
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(served), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 20
        while not server.started:
            assert time.time() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        jobs = [(("lora-a", "lora-a"), ("lora-b", "second"))[i % 2] + (TEXTS[i % len(TEXTS)],) for i in range(1000)]

        async def load():
            limits = httpx.Limits(max_connections=16)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60) as c:
                queue = asyncio.Queue()
                for job in jobs:
                    queue.put_nowait(job)
                results = []

                async def worker():
                    while not queue.empty():
                        run, model, text = queue.get_nowait()
                        r = await c.post("/v1/predict", json={"model": model, "inputs": text})
                        results.append((run, text, r.status_code, r.json()))
                await asyncio.gather(*(worker() for _ in range(16)))
                return results, (await c.get("/health")).json()
        results, health = asyncio.run(load())
    finally:
        server.should_exit = True
        thread.join(timeout=20)
    assert len(results) == 1000 and [r for r in results if r[2] != 200] == []
    for run, text, _, body in results:
        same_row(body["predictions"][0], expected[run][text])
    batches = health["batches"]["lora-a"] + health["batches"]["second"]
    assert batches < 1000  # requests were batched together


def test_bad_run_arguments_end_with_one_line_before_the_port_is_bound(runs, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((runs["full"] / "config.yaml").read_text())
    port = _free_port()
    cases = [([str(tmp_path / "missing")], "not a tunelab run folder"),
             ([str(unfinished)], "did not finish"),
             ([str(runs["full"]), f"full={runs['lora-a']}"], "two runs are named 'full'"),
             ([f"bad name={runs['full']}"], "model name"),
             ([str(runs["full"]), "--port", "0"], "--port"),
             ([str(runs["full"]), "--max-batch", "0"], "--max-batch")]
    for argv, words in cases:
        assert main(["serve", *argv] + ([] if "--port" in argv else ["--port", str(port)])) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and err.count("\n") == 1, err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        assert main(["serve", str(runs["full"]), "--port", str(port)]) == 2
        assert "in use" in capsys.readouterr().err


def test_sigterm_stops_the_service_as_a_service_stops(runs):
    """`kill` (or Ctrl-C) is how a service is meant to stop: a plain line and exit status 0, not an error."""
    import signal
    import subprocess
    import sys
    import time

    import httpx
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "serve", str(runs["full"]), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, out
    assert out.strip().splitlines()[-1] == "stopped serving", out
