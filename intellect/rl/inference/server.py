"""The embedded inference server: the HTTP API of ``intellect.rl`` over the continuous-batching ``Engine``.

Beyond the OpenAI fields, each choice carries ``token_ids``, ``prompt_token_ids``, ``logprobs`` as
``{"tokens", "token_logprobs"}`` and ``weight_steps`` ([first, last] trainer step of the weights that sampled it).
A string prompt is encoded with a leading BOS; a list of ids is used as given. ``token_ids`` keep the eos and
stop-string tokens (their logprobs are real samples); ``text`` drops them. ``max_tokens`` defaults to
``model.max_new_tokens`` and is cut to what fits in ``model.max_seq_len`` (finish_reason 'length').
Extra request fields: ``ignore_eos`` (as vLLM: keep going after eos). Streaming, top_p < 1, top_k > 0, min_p > 0 and
repetition_penalty != 1 are refused.

Chat template (the char tokenizer has no chat tokens): each message renders as ``"{role}: {content}\\n"``, then
``"assistant: "`` opens the reply, e.g. ``[{"role": "user", "content": "12+3="}]`` -> ``"user: 12+3=\\nassistant: "``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from intellect.rl.inference.metrics import InferenceMetrics

if TYPE_CHECKING:
    from intellect.recipe import Recipe
    from intellect.rl.inference.engine import Completion, Engine, SamplingParams
    from intellect.rl.model import CharTokenizer

log = logging.getLogger(__name__)
T = TypeVar("T")
THREADS_ENV = "INTELLECT_INFERENCE_THREADS"
KV_ENV = "INTELLECT_INFERENCE_KV_ON_UPDATE"


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(
        -1, ge=-1, description="vLLM's 'no top-k' is -1 (or 0); the embedded server has no other"
    )
    min_p: float = Field(0.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    n: int = Field(1, ge=1, le=1024)
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: int | bool | None = None
    return_token_ids: bool = True
    ignore_eos: bool = False
    stream: bool = False


class CompletionRequest(_Sampling):
    prompt: str | list[int]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)


class UpdateRequest(BaseModel):
    path: str
    step: int


def render_chat(messages: list[ChatMessage]) -> str:
    """The documented chat template of the char tokenizer (see the module docstring)."""
    return "".join(f"{m.role}: {m.content}\n" for m in messages) + "assistant: "


# ------------------------------------------------------------------------------------------------- app


class _Api:
    """The request handlers, bound to one engine."""

    def __init__(
        self, engine: Engine, metrics: InferenceMetrics, model_name: str, max_new_tokens: int
    ) -> None:
        self.engine, self.metrics = engine, metrics
        self.tok: CharTokenizer = engine.tokenizer
        self.model_name, self.max_new_tokens = model_name, max_new_tokens

    def params(self, req: _Sampling) -> SamplingParams:
        from intellect.rl.inference.engine import SamplingParams

        if req.stream:
            raise ApiError(400, "stream=true is not supported by the embedded server; ask without streaming")
        if req.top_p < 1 or req.top_k > 0 or req.min_p > 0 or req.repetition_penalty != 1:
            raise ApiError(
                400,
                "top_p < 1, top_k > 0, min_p > 0 and repetition_penalty != 1 are not supported by the embedded "
                "server (sampling is full-vocabulary softmax(logits / temperature))",
            )
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        return SamplingParams(
            max_tokens=req.max_tokens or req.max_completion_tokens or self.max_new_tokens,
            temperature=req.temperature,
            stop=tuple(s for s in stop if s),
            seed=req.seed,
            ignore_eos=req.ignore_eos,
        )

    def encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            try:
                return self.tok.encode(prompt, bos=True)
            except ValueError as exc:
                raise ApiError(400, str(exc)) from exc
        bad = [i for i in prompt if not 0 <= i < self.tok.vocab_size]
        if bad:
            raise ApiError(400, f"token ids outside the vocabulary (size {self.tok.vocab_size}): {bad[:5]}")
        return list(prompt)

    async def generate(self, prompt: list[int], params: SamplingParams, n: int) -> list[Completion]:
        try:
            futures = [self.engine.submit(prompt, params, choice=i) for i in range(n)]
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc
        return await await_all(futures)

    def choice(self, index: int, done: Completion) -> dict[str, Any]:
        return {
            "index": index,
            "finish_reason": done.finish_reason,
            "token_ids": done.token_ids,
            "prompt_token_ids": done.prompt_token_ids,
            "logprobs": {
                "tokens": [self.tok.vocab[i] for i in done.token_ids],
                "token_logprobs": done.logprobs,
            },
            "weight_steps": list(done.weight_steps),
        }

    def envelope(self, kind: str, prompt: list[int], choices: list[dict[str, Any]]) -> dict[str, Any]:
        completion = sum(len(c["token_ids"]) for c in choices)
        return {
            "id": f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": self.model_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": len(prompt),
                "completion_tokens": completion,
                "total_tokens": len(prompt) + completion,
            },
        }

    async def completions(self, req: CompletionRequest) -> dict[str, Any]:
        params, prompt = self.params(req), self.encode(req.prompt)
        done = await self.generate(prompt, params, req.n)
        choices = [{**self.choice(i, d), "text": d.text} for i, d in enumerate(done)]
        return self.envelope("text_completion", prompt, choices)

    async def chat(self, req: ChatRequest) -> dict[str, Any]:
        params, prompt = self.params(req), self.encode(render_chat(req.messages))
        done = await self.generate(prompt, params, req.n)
        choices = []
        for i, d in enumerate(done):
            c = self.choice(i, d)
            tokens, lps = c["logprobs"]["tokens"], c["logprobs"]["token_logprobs"]
            c["logprobs"]["content"] = [
                {"token": t, "logprob": lp} for t, lp in zip(tokens, lps, strict=True)
            ]
            choices.append({**c, "message": {"role": "assistant", "content": d.text}})
        return self.envelope("chat.completion", prompt, choices)

    async def update_weights(self, req: UpdateRequest) -> dict[str, Any]:
        from intellect.rl.layout import STABLE, is_stable

        start = time.perf_counter()
        path = Path(req.path)
        if not path.is_dir():
            raise ApiError(404, f"{path}: no such weights folder", "not_found")
        if not is_stable(path):
            raise ApiError(
                409,
                f"{path}: no {STABLE} marker, the weights are incomplete; post again once the trainer wrote it",
            )
        try:  # the decode loop reads and checks the file between two decode steps: the event loop never blocks
            step = await asyncio.wrap_future(self.engine.update_weights(path, req.step))
        except (ValueError, OSError) as exc:
            raise ApiError(400, f"{path}: {exc}") from exc
        self.metrics.update_seconds.observe(time.perf_counter() - start)
        log.info("weights of step %d applied from %s", step, path)
        return {"step": step}


def create_app(engine: Engine, metrics: InferenceMetrics, model_name: str, max_new_tokens: int) -> FastAPI:
    """The FastAPI app; its lifespan starts and stops the engine's decode thread."""
    api = _Api(engine, metrics, model_name, max_new_tokens)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)

    app = FastAPI(title="intellect embedded inference", lifespan=lifespan)
    app.state.engine, app.state.metrics = engine, metrics

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        metrics.requests.labels(request.url.path, str(exc.status)).inc()
        body = {"error": {"message": exc.message, "type": exc.kind, "code": exc.status}}
        return JSONResponse(body, status_code=exc.status)

    # JSONResponse directly: FastAPI's jsonable_encoder walks every logprob and costs more than a decode step.
    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> JSONResponse:
        out = await api.completions(req)
        metrics.requests.labels("/v1/completions", "200").inc()
        return JSONResponse(out)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest) -> JSONResponse:
        out = await api.chat(req)
        metrics.requests.labels("/v1/chat/completions", "200").inc()
        return JSONResponse(out)

    @app.post("/update_weights")
    async def update_weights(req: UpdateRequest) -> JSONResponse:
        return JSONResponse(await api.update_weights(req))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "weight_step": engine.weight_step, "in_flight": engine.in_flight}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "intellect"}]}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


# --------------------------------------------------------------------------------------------- startup


def latest_weights(run_dir: str | Path) -> tuple[int, Path] | None:
    """The newest STABLE ``weights/step_N`` of a run, or None."""
    from intellect.rl import layout

    found = layout.step_folders(run_dir, layout.WEIGHTS)
    return max(found.items()) if found else None


def build_engine(recipe: Recipe, metrics: InferenceMetrics | None = None) -> Engine:
    """The model from the recipe; the newest STABLE weights of the run if any (weight_step -1 otherwise).

    ``$INTELLECT_INFERENCE_KV_ON_UPDATE=recompute`` makes in-flight weight updates rebuild the KV cache of the
    sequences in flight (default ``keep``: they go on decoding over their cache; see ``engine.py``)."""
    import torch

    from intellect.rl.inference.engine import Engine
    from intellect.rl.inference.weights import WeightLoader
    from intellect.rl.model import build_model

    torch.manual_seed(recipe.model.seed)
    model, tok = build_model(recipe.model)
    kv_mode = os.environ.get(KV_ENV, "keep")
    if kv_mode not in ("keep", "recompute"):
        raise ValueError(f"${KV_ENV} must be 'keep' or 'recompute' (got {kv_mode!r})")
    step = -1
    latest = latest_weights(recipe.run_dir)
    if latest is not None:
        step, path = latest
        WeightLoader(model).load(path)
        log.info("serving weights of step %d from %s", step, path)
    return Engine(
        model,
        tok,
        max_batch=recipe.roles.inference.max_batch,
        max_seq_len=recipe.model.max_seq_len,
        weight_step=step,
        seed=recipe.model.seed,
        metrics=metrics,
        kv_on_update=kv_mode,  # type: ignore[arg-type]
    )


async def await_all(futures: list[Future[T]]) -> list[T]:
    """The results of engine futures, with one wake-up of the event loop when the last one is done.

    ``asyncio.wrap_future`` costs a cross-thread call (a write to the loop's self-pipe, and a handover of the
    GIL from the decode loop to the event loop) per future: with n choices per request, n per request. Cancelling
    the wait (the client went away) cancels the futures, so the engine drops their sequences. The first failure,
    if any, is raised once all are done.
    """
    if not futures:
        return []
    loop = asyncio.get_running_loop()
    all_done: asyncio.Future[None] = loop.create_future()
    left = [len(futures)]
    lock = threading.Lock()

    def finish() -> None:
        if not all_done.done():
            all_done.set_result(None)

    def one_done(_: Future[T]) -> None:  # in the engine's thread, or here if already done
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting any more
                loop.call_soon_threadsafe(finish)

    for fut in futures:
        fut.add_done_callback(one_done)
    try:
        await all_done
    except asyncio.CancelledError:
        for fut in futures:
            fut.cancel()
        raise
    return [fut.result() for fut in futures]


def app_for(recipe: Recipe) -> FastAPI:
    metrics = InferenceMetrics()
    engine = build_engine(recipe, metrics)
    return create_app(engine, metrics, recipe.model.name, recipe.model.max_new_tokens)


def configure_threads() -> int:
    """torch intra-op threads of this process: ``$INTELLECT_INFERENCE_THREADS``, default 1.

    Decode steps of a tiny model are many small matmuls: on a shared 2-core node a second OpenMP thread spins
    against the trainer and slows each op 10-50x (measured: 2 ms instead of 40 us per linear).
    """
    import torch

    threads = int(os.environ.get(THREADS_ENV, "1"))
    torch.set_num_threads(threads)
    return threads


def serve(recipe: Recipe, host: str, port: int) -> None:
    """Run the embedded server in the foreground until interrupted."""
    import uvicorn

    from intellect.rl.heap import freeze_heap

    log.info("torch threads: %d", configure_threads())
    app = app_for(recipe)
    freeze_heap("inference")
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)


class BackgroundServer:
    """uvicorn in a thread on a socket bound up front (port 0 = a free one): for tests and benchmarks."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.app = app
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = host, self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="inference-http", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the inference server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(30)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
