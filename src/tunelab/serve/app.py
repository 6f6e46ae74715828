"""The HTTP service: `POST /v1/predict`, the OpenAI-style `POST /v1/chat/completions` for generation runs,
`GET /v1/models`, `GET /health`, and FastAPI's `/openapi.json` and `/docs`.

Every client mistake is a 4xx whose body says what is wrong in one line, in OpenAI's error shape
(`{"error": {"message", "type", "code"}}`) so that OpenAI clients show the message; a 500 means a bug.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data import rows_to_examples
from ..errors import TunelabError
from ..version import __version__
from .batching import ModelQueue
from .models import Served, text_row


class Limits(BaseModel):
    """What one request may ask: sizes that keep one client from holding the model or the memory."""
    max_batch: int = 16  # inputs one forward batch collects (dynamic batching)
    max_wait_ms: float = 5.0  # how long a batch waits for more requests once it has one
    max_inputs: int = 256  # inputs in one request
    max_chars: int = 20_000  # characters in one input (all its texts together)
    max_body_bytes: int = 8 * 2**20


class RequestError(Exception):
    def __init__(self, status: int, message: str, code: str = "invalid_request"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: StrictStr | None = Field(None, description="A served model's name (`GET /v1/models`); may be left "
                                    "out when one model is served.")
    inputs: StrictStr | list[StrictStr] | list[dict[str, Any]] = Field(
        description="One text, a list of texts, or rows with the run's columns (as in a `tunelab predict` input "
        "file), e.g. {\"question\": ..., \"context\": ...} for extractive QA.")


class PredictResponse(BaseModel):
    model: str
    predictions: list[dict[str, Any]] = Field(description="One row per input, as `tunelab predict` writes them: "
                                              "`prediction` and `scores` per label, the generated text, or the "
                                              "answer and its `score`.")


class TextPart(BaseModel):
    type: Literal["text"]
    text: StrictStr


class Message(BaseModel):
    role: StrictStr
    content: StrictStr | list[TextPart] = Field(description="A text, or OpenAI's content parts (text parts only).")

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send fields we do not use (user, top_p, ...)
    model: StrictStr | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1, description="At most the run's generation.max_new_tokens.")
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    temperature: float | None = Field(None, description="0 (greedy) only.")
    n: StrictInt | None = 1
    stream: bool | None = False


def create_app(served: dict[str, Served], limits: Limits | None = None) -> FastAPI:
    limits = limits or Limits()
    queues: dict[str, ModelQueue] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunelab-model")
        worker = asyncio.Lock()
        for name, model in served.items():
            queues[name] = ModelQueue(model.predict, executor, worker, limits.max_batch, limits.max_wait_ms / 1000)
            queues[name].start()
        yield
        for queue in queues.values():
            await queue.stop()
        executor.shutdown(wait=True)

    app = FastAPI(title="tunelab serve", version=__version__, lifespan=lifespan,
                  description="Predictions of tunelab runs: labels and scores, answers, generated text.")
    app.state.queues = queues

    @app.middleware("http")
    async def body_limit(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limits.max_body_bytes):
            return _error(413, f"the request body is over {limits.max_body_bytes} bytes; send fewer inputs a "
                          f"request", "body_too_large")
        return await call_next(request)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, e: RequestError):
        return _error(e.status, e.message, e.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        return _error(422, "; ".join(_problem(p) for p in e.errors()[:5]), "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        message = str(e.detail)
        if e.status_code == 400 and "parsing the body" in message:  # FastAPI's words for bytes that are not UTF-8
            message = "the request body is not JSON text (UTF-8); send a JSON object"
        return _error(e.status_code, message, "not_found" if e.status_code == 404 else "http_error")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(served), "batches": {n: q.batches for n, q in queues.items()}}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [m.describe() for m in served.values()]}

    @app.post("/v1/predict", response_model=PredictResponse)
    async def predict(body: PredictRequest) -> dict[str, Any]:
        model = _model(served, body.model)
        items = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        if not items:
            raise RequestError(422, "`inputs` is empty; give a text or a list of them")
        if len(items) > limits.max_inputs:
            raise RequestError(413, f"{len(items)} inputs in one request; send at most {limits.max_inputs}",
                               "too_many_inputs")
        rows = []
        for i, item in enumerate(items, 1):
            _check_size(item, i, limits.max_chars)
            rows.append((f"request input {i}", _user(lambda: text_row(model.spec.cfg, model.task, item))
                         if isinstance(item, str) else item))
        examples = _user(lambda: rows_to_examples(rows, model.spec.cfg.data, model.task, need_label=False))
        return {"model": model.name, "predictions": await _submit(queues[model.name], examples)}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest) -> dict[str, Any]:
        model = _model(served, body.model)
        if model.spec.cfg.task != "generation":
            raise RequestError(400, f"model {model.name!r} is a {model.spec.cfg.task} model; chat completions "
                               f"come from generation runs only: use POST /v1/predict", "wrong_task")
        if body.stream:
            raise RequestError(400, "streaming is not supported; set stream to false", "unsupported")
        if body.n not in (None, 1):
            raise RequestError(400, f"n must be 1 (one choice a request), got {body.n}", "unsupported")
        if body.temperature not in (None, 0):
            raise RequestError(400, f"temperature {body.temperature}: only greedy decoding is served; set "
                               f"temperature to 0 or leave it out", "unsupported")
        budget = model.task.options.max_new_tokens
        wanted = body.max_completion_tokens or body.max_tokens or budget
        if wanted > budget:
            raise RequestError(400, f"max_tokens {wanted} is over this run's generation.max_new_tokens "
                               f"({budget}); ask for at most {budget}", "unsupported")
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        if messages[-1]["role"] == "assistant":
            raise RequestError(422, "the last message is the assistant's; end with the user's message to be "
                               "answered")
        _check_size({"messages": messages}, 1, limits.max_chars)
        # A conversation goes through the task as a `messages` row of a predict file: the same prompt rendering.
        examples = _user(lambda: model.task.examples([("request messages 1", {"messages": messages})],
                                                     {"messages": "messages"}, need_label=False))
        answer = (await _submit(queues[model.name], examples))[0]["prediction"]
        tokenizer = model.adapted.tokenizer
        tokens = tokenizer(answer, add_special_tokens=False)["input_ids"]
        finish = "stop"
        if wanted < budget and len(tokens) > wanted:  # greedy decoding: the first `wanted` tokens are what a shorter budget gives
            answer, tokens, finish = tokenizer.decode(tokens[:wanted], skip_special_tokens=True).strip(), \
                tokens[:wanted], "length"
        prompt_tokens = len(model.task.prompt_ids(tokenizer, examples[0]))
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": model.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                             "finish_reason": finish}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(tokens),
                          "total_tokens": prompt_tokens + len(tokens)}}

    return app


def _model(served: dict[str, Served], name: str | None) -> Served:
    if name is None:
        if len(served) == 1:
            return next(iter(served.values()))
        raise RequestError(422, f"several models are served; name one in `model`: {', '.join(served)}")
    if name not in served:
        raise RequestError(404, f"unknown model {name!r}; choose one of: {', '.join(served)}", "model_not_found")
    return served[name]


def _check_size(item: Any, i: int, max_chars: int) -> None:
    if isinstance(item, dict) and not item:
        raise RequestError(422, f"request input {i} is an empty row; give its columns")
    size = _chars(item)
    if size > max_chars:
        raise RequestError(413, f"request input {i} holds {size} characters; at most {max_chars} an input",
                           "input_too_long")


def _chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_chars(k) + _chars(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(_chars(v) for v in value)
    return len(str(value))


def _user(make):
    """A TunelabError while reading a request's rows is the client's mistake: a 422 with its message."""
    try:
        return make()
    except TunelabError as e:
        raise RequestError(422, str(e)) from None


async def _submit(queue: ModelQueue, examples) -> list[dict[str, Any]]:
    try:
        return await queue.submit(examples)
    except TunelabError as e:
        raise RequestError(422, str(e)) from None


def _problem(p: dict[str, Any]) -> str:
    where = ".".join(str(x) for x in p.get("loc", ()) if x != "body") or "body"
    return f"{where}: {p.get('msg', 'invalid')}"


def _error(status: int, message: str, code: str) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status)
