"""A loopback OpenAI-compatible chat-completions server for tests.

The server speaks the part of the OpenAI HTTP API that ``dspy.LM("openai/<model>",
api_base=..., api_key=...)`` uses (DSPy 3.4.1 sends ``POST <api_base>/chat/completions``
through its own stdlib HTTP transport), so tests exercise DSPy's real client, retries
and pricing instead of a mock of them.

It is bounded so a failing test cannot leave it running or let it grow:

- it binds 127.0.0.1 on an ephemeral port and runs only inside ``with LoopbackProvider()``;
- it stops itself after ``max_lifetime_seconds`` even if the context never exits;
- a request body above ``max_body_bytes`` is refused with 413 before it is read;
- a hang lasts at most ``max_hang_seconds`` (then the connection is closed without an
  answer), at most ``max_concurrent_hangs`` requests hang at once (others get 503), and
  stopping the server releases every hang at once.

Each request's behaviour is chosen by its model name: a script queued with
:meth:`LoopbackProvider.script` is consumed first, then the model's default from
:meth:`LoopbackProvider.set_behaviour`, then a normal :class:`Answer`. Every request is
recorded (time, path, model, headers including ``Authorization``, body).

Example::

    with LoopbackProvider() as provider:
        provider.script("gpt-4o-mini", RateLimited(retry_after=1), Answer())
        with dspy.context(lm=provider.lm("gpt-4o-mini")):
            dspy.Predict("question -> answer")(question="2 + 2?")
        assert len(provider.requests) == 2
"""

from __future__ import annotations

import collections
import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import dspy

__all__ = [
    "DEFAULT_API_KEY",
    "Answer",
    "Behaviour",
    "Hang",
    "LoopbackProvider",
    "RateLimited",
    "RecordedRequest",
    "ServerError",
    "Unauthorized",
    "answers",
]

DEFAULT_API_KEY = "sk-loopback-0123456789abcdef"

# ChatAdapter lists output fields in the system message as "Your output fields are:\n1. `name` (type)...".
_OUTPUT_SECTION = re.compile(r"Your output fields are:\n(.*?)(?:\nAll interactions will be structured|\Z)", re.S)
_FIELD_NAME = re.compile(r"^\d+\. `([^`]+)`", re.M)


@dataclass(frozen=True)
class Answer:
    """Answer normally, in DSPy's ChatAdapter format for the request's output fields.

    Attributes:
        fields: values for named output fields; any other output field gets ``"loopback <name>"``.
        content: the whole completion text verbatim (overrides ``fields``).
        latency: seconds to wait before answering.
        input_tokens: reported prompt tokens; None estimates 1 token per 4 prompt characters.
        output_tokens: reported completion tokens; None estimates 1 token per 4 completion characters.
        report_usage: False leaves ``usage`` out of the response, as some compatible servers do.
    """

    fields: dict[str, str] = field(default_factory=dict)
    content: str | None = None
    latency: float = 0.0
    input_tokens: int | None = None
    output_tokens: int | None = None
    report_usage: bool = True


@dataclass(frozen=True)
class RateLimited:
    """Answer 429 with a ``Retry-After`` header (seconds), as a rate-limited provider does."""

    retry_after: float = 1.0
    latency: float = 0.0


@dataclass(frozen=True)
class ServerError:
    """Answer with a server error status (500 by default)."""

    status: int = 500
    latency: float = 0.0


@dataclass(frozen=True)
class Unauthorized:
    """Answer 401 whose message quotes the API key it was given, as OpenAI's does."""

    latency: float = 0.0


@dataclass(frozen=True)
class Hang:
    """Accept the request and never answer; the server closes the connection after ``seconds``.

    ``seconds`` is capped by the server's ``max_hang_seconds``.
    """

    seconds: float = 20.0


Behaviour = Answer | RateLimited | ServerError | Unauthorized | Hang


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received.

    Attributes:
        time: ``time.monotonic()`` when the request was read.
        method: the HTTP method.
        path: the request path (``/v1/chat/completions``).
        model: the body's ``model`` field, when there was one.
        headers: the request headers (names lower-cased), ``authorization`` included.
        body: the decoded JSON body, or None when it was not JSON.
    """

    time: float
    method: str
    path: str
    model: str | None
    headers: dict[str, str]
    body: Any

    @property
    def authorization(self) -> str | None:
        """The ``Authorization`` header exactly as sent."""
        return self.headers.get("authorization")


def _output_fields(messages: Any) -> list[str]:
    if not isinstance(messages, list):
        return []
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "system" and isinstance(message.get("content"), str):
            section = _OUTPUT_SECTION.search(message["content"])
            if section:
                return _FIELD_NAME.findall(section.group(1))
    return []


def _prompt_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    parts = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "\n".join(parts)


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    provider: LoopbackProvider


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    # An idle keep-alive connection is dropped after this long, so no handler thread lingers.
    timeout = 30.0

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without this, Nagle's algorithm meets the
        # client's delayed ACK and every answer takes ~40 ms longer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.provider._track(self.connection, opened=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.provider._track(self.connection, opened=False)

    def log_message(self, format: str, *args: Any) -> None:  # the base class names it "format"
        """Stay quiet: tests read :attr:`LoopbackProvider.requests` instead of a log."""

    def do_GET(self) -> None:
        """Answer ``GET /v1/models`` with the models the server has seen; anything else is 404."""
        self.server.provider._record(self, None)
        if self.path.rstrip("/").endswith("/models"):
            models = sorted({request.model for request in self.server.provider.requests if request.model})
            self._send_json(200, {"object": "list", "data": [{"id": name, "object": "model"} for name in models]})
        else:
            self._send_error(404, f"no route for GET {self.path}")

    def do_POST(self) -> None:
        """Answer ``POST .../chat/completions`` with the behaviour chosen for the request's model."""
        provider = self.server.provider
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            provider._record(self, None)
            self._send_error(411, "a Content-Length header is required")
            return
        length = int(length_header)
        if length > provider.max_body_bytes:
            provider._record(self, None)
            self.close_connection = True
            self._send_error(413, f"request body of {length} bytes exceeds {provider.max_body_bytes}")
            return
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        request = provider._record(self, body)
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send_error(404, f"no route for POST {self.path}")
            return
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            self._send_error(400, "the body must be a JSON object with a 'model' string")
            return
        self._respond(request, provider._behaviour_for(body["model"]))

    def _respond(self, request: RecordedRequest, behaviour: Behaviour) -> None:
        provider = self.server.provider
        if isinstance(behaviour, Hang):
            self._hang(behaviour)
            return
        if behaviour.latency > 0 and provider._stopped.wait(behaviour.latency):
            self.close_connection = True
            return
        api_key = (request.authorization or "").removeprefix("Bearer ").strip()
        if isinstance(behaviour, Unauthorized) or (provider.api_key is not None and api_key != provider.api_key):
            message = f"Incorrect API key provided: {api_key}. You can find your API key in your account settings."
            self._send_error(401, message, code="invalid_api_key")
        elif isinstance(behaviour, RateLimited):
            error = {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit_exceeded"}
            self._send_json(429, {"error": error}, headers={"Retry-After": f"{behaviour.retry_after:g}"})
        elif isinstance(behaviour, ServerError):
            error = {"message": "The server had an error while processing your request.", "type": "server_error"}
            self._send_json(behaviour.status, {"error": error})
        else:
            self._send_json(200, self._completion(request.body, behaviour))

    def _hang(self, behaviour: Hang) -> None:
        provider = self.server.provider
        self.close_connection = True
        if not provider._hang_slots.acquire(blocking=False):
            self._send_error(503, f"more than {provider.max_concurrent_hangs} requests hanging", kind="server_error")
            return
        try:
            provider._stopped.wait(min(behaviour.seconds, provider.max_hang_seconds))
        finally:
            provider._hang_slots.release()

    def _completion(self, body: dict[str, Any], answer: Answer) -> dict[str, Any]:
        messages = body.get("messages")
        if answer.content is not None:
            content = answer.content
        else:
            names = _output_fields(messages) or list(answer.fields) or ["answer"]
            sections = [f"[[ ## {name} ## ]]\n{answer.fields.get(name, f'loopback {name}')}" for name in names]
            content = "\n\n".join([*sections, "[[ ## completed ## ]]"])
        input_tokens = answer.input_tokens
        if input_tokens is None:
            input_tokens = _estimate_tokens(_prompt_text(messages))
        output_tokens = answer.output_tokens if answer.output_tokens is not None else _estimate_tokens(content)
        completion: dict[str, Any] = {
            "id": f"chatcmpl-loopback-{len(self.server.provider.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": input_tokens,
                "completion_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens,
            },
        }
        if not answer.report_usage:
            del completion["usage"]
        return completion

    def _send_error(
        self, status: int, message: str, *, kind: str = "invalid_request_error", code: str | None = None
    ) -> None:
        error: dict[str, Any] = {"message": message, "type": kind}
        if code is not None:
            error["code"] = code
        self._send_json(status, {"error": error})

    def _send_json(self, status: int, payload: Any, *, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            # The client gave up (its timeout fired): nothing left to answer.
            self.close_connection = True


class LoopbackProvider:
    """An OpenAI-compatible server on 127.0.0.1, alive inside its ``with`` block.

    Args:
        api_key: the key the server accepts; any other gets a 401 that quotes it. None accepts any key.
        max_body_bytes: larger request bodies are refused with 413.
        max_hang_seconds: the longest any :class:`Hang` lasts.
        max_concurrent_hangs: hangs beyond this many at once are answered 503.
        max_lifetime_seconds: the server stops itself this long after it started.

    Thread safety: every method may be called from any thread while the server runs.
    """

    def __init__(
        self,
        *,
        api_key: str | None = DEFAULT_API_KEY,
        max_body_bytes: int = 1_000_000,
        max_hang_seconds: float = 20.0,
        max_concurrent_hangs: int = 8,
        max_lifetime_seconds: float = 300.0,
    ) -> None:
        if max_body_bytes <= 0 or max_hang_seconds <= 0 or max_concurrent_hangs <= 0 or max_lifetime_seconds <= 0:
            raise ValueError("the loopback provider's bounds must all be positive")
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.max_hang_seconds = max_hang_seconds
        self.max_concurrent_hangs = max_concurrent_hangs
        self.max_lifetime_seconds = max_lifetime_seconds
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._scripts: dict[str, collections.deque[Behaviour]] = {}
        self._defaults: dict[str, Behaviour] = {}
        self._connections: set[socket.socket] = set()
        self._stopped = threading.Event()
        self._hang_slots = threading.BoundedSemaphore(max_concurrent_hangs)
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        """The ``api_base`` to give ``dspy.LM`` (``http://127.0.0.1:<port>/v1``)."""
        if self._server is None:
            raise RuntimeError("the loopback provider is not running; use it inside 'with LoopbackProvider() as p:'")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def running(self) -> bool:
        """Whether the server is accepting requests."""
        return self._server is not None and not self._stopped.is_set()

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def requests_for(self, model: str) -> list[RecordedRequest]:
        """Return the requests whose body named ``model`` (without the ``openai/`` prefix)."""
        return [request for request in self.requests if request.model == model]

    def script(self, model: str, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next requests naming ``model``, consumed one per request, in order."""
        with self._lock:
            self._scripts.setdefault(model, collections.deque()).extend(behaviours)

    def set_behaviour(self, model: str, behaviour: Behaviour) -> None:
        """Answer every request naming ``model`` with ``behaviour`` once its script is used up."""
        with self._lock:
            self._defaults[model] = behaviour

    def lm(self, model: str = "gpt-4o-mini", *, api_key: str | None = None, **kwargs: Any) -> dspy.LM:
        """Build ``dspy.LM("openai/<model>")`` pointed at this server.

        Args:
            model: the model name the server sees.
            api_key: the key to send; the server's own key when omitted.
            **kwargs: more ``dspy.LM`` arguments; ``cache=False`` unless given.

        Returns:
            The LM, using DSPy's real HTTP client.
        """
        kwargs.setdefault("cache", False)
        key = api_key if api_key is not None else (self.api_key or DEFAULT_API_KEY)
        return dspy.LM(f"openai/{model}", api_base=self.url, api_key=key, **kwargs)

    def start(self) -> LoopbackProvider:
        """Start serving (what ``__enter__`` does)."""
        if self._server is not None:
            raise RuntimeError("the loopback provider was already started; build a new one")
        server = _Server(("127.0.0.1", 0), _Handler)
        server.provider = self
        self._server = server
        serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        watchdog = threading.Thread(target=self._stop_after_lifetime, daemon=True)
        self._threads = [serving, watchdog]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, release every hang and close every open connection; idempotent."""
        if self._server is None or self._stopped.is_set():
            return
        self._stopped.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> LoopbackProvider:
        return self.start()

    def __exit__(
        self, error_type: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5.0)

    def _stop_after_lifetime(self) -> None:
        if not self._stopped.wait(self.max_lifetime_seconds):
            self.stop()

    def _track(self, connection: socket.socket, *, opened: bool) -> None:
        with self._lock:
            if opened:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def _record(self, handler: _Handler, body: Any) -> RecordedRequest:
        model = body.get("model") if isinstance(body, dict) and isinstance(body.get("model"), str) else None
        headers = {name.lower(): value for name, value in handler.headers.items()}
        request = RecordedRequest(time.monotonic(), handler.command, handler.path, model, headers, body)
        with self._lock:
            self._requests.append(request)
        return request

    def _behaviour_for(self, model: str) -> Behaviour:
        with self._lock:
            script = self._scripts.get(model)
            if script:
                return script.popleft()
            return self._defaults.get(model, Answer())


def answers(values: Iterable[str], *, field_name: str = "answer") -> list[Answer]:
    """Return one :class:`Answer` per value, each setting ``field_name``; handy for :meth:`LoopbackProvider.script`."""
    return [Answer(fields={field_name: value}) for value in values]
