"""Minimal ASGI plumbing shared by the peers: request parsing, recording, routing, responses.

Both upstreams are FastAPI apps, so routing, 404/405/307 and 422 bodies mimic Starlette/FastAPI.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON_CT = b"application/json"


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the peer received it (before any auth), for test assertions."""

    method: str
    raw_path: str  # as sent on the wire, percent-encoding kept, no query string
    path: str  # percent-decoded (what Starlette routes and Flash signs)
    query_string: str
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes
    client_ip: str


@dataclass(slots=True)
class Request:
    method: str
    path: str
    raw_path: str
    query_string: str
    headers: dict[str, str]
    body: bytes
    client_ip: str
    scope: Scope
    receive: Receive
    send: Send
    params: dict[str, str] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)  # per-request scratch (auth result etc.)
    _query: dict[str, str] | None = None

    @property
    def query(self) -> dict[str, str]:
        # Starlette's QueryParams.get() returns the last value of a repeated key.
        if self._query is None:
            self._query = dict(parse_qsl(self.query_string, keep_blank_values=True))
        return self._query


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: Headers = field(default_factory=list)


def dumps(obj: Any) -> bytes:
    # Same settings as Starlette's JSONResponse.render.
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def json_response(status: int, obj: Any, headers: Headers | None = None) -> Response:
    hdrs: Headers = [(b"content-type", JSON_CT)]
    if headers:
        hdrs.extend(headers)
    return Response(status, dumps(obj), hdrs)


# Fields neither upstream has: a peer told to (`unknown_fields = True`) adds them to every object
# of every JSON answer and stream event, as an upstream release might add an owner id, an internal
# score or a private flag tomorrow; tests prove the gateway lets none of them out.
UNKNOWN_FIELDS: dict[str, Any] = {
    "owner_id": "0badf00d-0000-4000-8000-0000000000ff",
    "internal_score": 0.8125,
    "private_flag": True,
}


def with_unknown_fields(value: Any, free_form: Callable[[str, Any], bool]) -> Any:
    """`value` with `UNKNOWN_FIELDS` added to every object at every level, except inside the
    values `free_form(key, value)` names: those the contract leaves free-form (a map such as the
    cost table, the client's echoed `request_context`, generated content), whose keys are data,
    not fields an upstream could add."""
    if isinstance(value, dict):
        result = {
            key: item if free_form(key, item) else with_unknown_fields(item, free_form)
            for key, item in value.items()
        }
        result.update(UNKNOWN_FIELDS)
        return result
    if isinstance(value, list):
        return [with_unknown_fields(item, free_form) for item in value]
    return value


def add_unknown_fields(resp: Response, free_form: Callable[[str, Any], bool]) -> None:
    """A JSON answer given `UNKNOWN_FIELDS` at every level (see `with_unknown_fields`)."""
    if (b"content-type", JSON_CT) in resp.headers and resp.body:
        resp.body = dumps(with_unknown_fields(json.loads(resp.body), free_form))


def text_response(status: int, text: str) -> Response:
    return Response(status, text.encode(), [(b"content-type", b"text/plain; charset=utf-8")])


async def send_response(send: Send, resp: Response, head_only: bool = False) -> None:
    headers = list(resp.headers)
    headers.append((b"content-length", str(len(resp.body)).encode()))
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head_only else resp.body})


async def read_request(scope: Scope, receive: Receive, send: Send) -> Request:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        else:  # http.disconnect before the body was complete
            break
    headers: dict[str, str] = {}
    for name, value in scope.get("headers", []):
        key = name.decode("latin-1").lower()
        val = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {val}" if key in headers else val
    raw = scope.get("raw_path")
    raw_path = raw.decode("latin-1") if raw else scope["path"]
    client = scope.get("client")
    return Request(
        method=scope["method"],
        path=scope["path"],
        raw_path=raw_path.split("?", 1)[0],
        query_string=scope.get("query_string", b"").decode("latin-1"),
        headers=headers,
        body=b"".join(chunks),
        client_ip=client[0] if client else "",
        scope=scope,
        receive=receive,
        send=send,
    )


def record(req: Request) -> RecordedRequest:
    return RecordedRequest(
        method=req.method,
        raw_path=req.raw_path,
        path=req.path,
        query_string=req.query_string,
        headers=dict(req.headers),
        body=req.body,
        client_ip=req.client_ip,
    )


class RequestLog:
    """Thread-safe list of recorded requests (tests read it from another thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[RecordedRequest] = []

    def add(self, item: RecordedRequest) -> None:
        with self._lock:
            self._items.append(item)

    def snapshot(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def abort_connection(send: Send) -> bool:
    """Close the TCP connection without (finishing) a response.

    ASGI has no "drop the connection" message, and raising would make uvicorn answer 500
    (or log an error), so reach the protocol's transport through the bound ``send`` method.
    Marking the cycle disconnected stops uvicorn from writing its own 500 afterwards.
    """
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if cycle is None or transport is None:
        return False
    cycle.disconnected = True
    transport.close()
    return True


Handler = Callable[[Request], Awaitable[Response | None]]


@dataclass(frozen=True, slots=True)
class Route:
    methods: frozenset[str]
    regex: re.Pattern[str]
    handler: Handler
    name: str


_PARAM = re.compile(r"{([a-zA-Z_][a-zA-Z0-9_]*)(:path)?}")


def compile_path(template: str) -> re.Pattern[str]:
    # Starlette: "{x}" matches one segment ([^/]+), "{x:path}" matches anything (.*).
    out = "^"
    pos = 0
    for m in _PARAM.finditer(template):
        out += re.escape(template[pos : m.start()])
        out += f"(?P<{m.group(1)}>.*)" if m.group(2) else f"(?P<{m.group(1)}>[^/]+)"
        pos = m.end()
    return re.compile(out + re.escape(template[pos:]) + "$")


class Router:
    """Starlette's Router.app algorithm: first full match wins, else 405, else 307, else 404."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, method: str, template: str, handler: Handler) -> None:
        methods = {method}
        if method == "GET":
            methods.add("HEAD")  # Starlette adds HEAD to every GET route
        self.routes.append(Route(frozenset(methods), compile_path(template), handler, template))

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], Route | None]:
        partial: Route | None = None
        for route in self.routes:
            m = route.regex.match(path)
            if m is None:
                continue
            if method in route.methods:
                return route, m.groupdict(), None
            if partial is None:
                partial = route
        return None, {}, partial

    def any_match(self, path: str) -> bool:
        return any(r.regex.match(path) for r in self.routes)

    async def dispatch(self, req: Request) -> Response | None:
        route, params, partial = self.match(req.method, req.path)
        if route is not None:
            req.params = params
            return await route.handler(req)
        if partial is not None:
            allow = ", ".join(sorted(partial.methods)).encode()
            return json_response(405, {"detail": "Method Not Allowed"}, [(b"allow", allow)])
        if req.path != "/":
            alt = req.path.rstrip("/") if req.path.endswith("/") else req.path + "/"
            if self.any_match(alt):
                return redirect_307(req, alt)
        return json_response(404, {"detail": "Not Found"})


def redirect_307(req: Request, path: str) -> Response:
    # Mirrors Starlette's URL(scope=...) + RedirectResponse quoting.
    scheme = req.scope.get("scheme", "http")
    host = req.headers.get("host")
    if not host:
        server = req.scope.get("server") or ("127.0.0.1", 80)
        host = f"{server[0]}:{server[1]}"
    url = f"{scheme}://{host}{req.scope.get('root_path', '')}{path}"
    if req.query_string:
        url += "?" + req.query_string
    location = quote(url, safe=":/%#?=@[]!$&'()*+,;")
    return Response(307, b"", [(b"location", location.encode("latin-1"))])


# --- FastAPI/pydantic style 422 errors -------------------------------------------------------

Loc = list[str | int]
ErrorList = list[dict[str, Any]]


def err(
    kind: str, loc: Loc, msg: str, value: Any, ctx: dict[str, Any] | None = None
) -> dict[str, Any]:
    item: dict[str, Any] = {"type": kind, "loc": loc, "msg": msg, "input": value}
    if ctx is not None:
        item["ctx"] = ctx
    return item


def missing(loc: Loc, value: Any = None) -> dict[str, Any]:
    return err("missing", loc, "Field required", value)


def validation_error(errors: ErrorList) -> Response:
    return json_response(422, {"detail": errors})


_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"0", "off", "f", "false", "n", "no"}


def _bounds(
    num: float, loc: Loc, value: Any, ge: float | None, le: float | None, gt: float | None
) -> dict[str, Any] | None:
    if gt is not None and not num > gt:
        return err("greater_than", loc, f"Input should be greater than {gt}", value, {"gt": gt})
    if ge is not None and num < ge:
        return err(
            "greater_than_equal",
            loc,
            f"Input should be greater than or equal to {ge}",
            value,
            {"ge": ge},
        )
    if le is not None and num > le:
        return err(
            "less_than_equal", loc, f"Input should be less than or equal to {le}", value, {"le": le}
        )
    return None


def coerce_int(
    value: Any,
    loc: Loc,
    errors: ErrorList,
    ge: int | None = None,
    le: int | None = None,
    gt: int | None = None,
) -> int | None:
    """Pydantic v2 lax-mode int: ints, integral floats, numeric strings (and bools)."""
    num: int
    if isinstance(value, bool | int):
        num = int(value)
    elif isinstance(value, float):
        if not value.is_integer():
            msg = "Input should be a valid integer, got a number with a fractional part"
            errors.append(err("int_from_float", loc, msg, value))
            return None
        num = int(value)
    elif isinstance(value, str):
        try:
            num = int(value.strip())
        except ValueError:
            msg = "Input should be a valid integer, unable to parse string as an integer"
            errors.append(err("int_parsing", loc, msg, value))
            return None
    else:
        errors.append(err("int_type", loc, "Input should be a valid integer", value))
        return None
    problem = _bounds(num, loc, value, ge, le, gt)
    if problem:
        errors.append(problem)
        return None
    return num


def coerce_float(
    value: Any, loc: Loc, errors: ErrorList, ge: float | None = None, le: float | None = None
) -> float | None:
    num: float
    if isinstance(value, bool | int | float):
        num = float(value)
    elif isinstance(value, str):
        try:
            num = float(value.strip())
        except ValueError:
            msg = "Input should be a valid number, unable to parse string as a number"
            errors.append(err("float_parsing", loc, msg, value))
            return None
    else:
        errors.append(err("float_type", loc, "Input should be a valid number", value))
        return None
    problem = _bounds(num, loc, value, ge, le, None)
    if problem:
        errors.append(problem)
        return None
    return num


def coerce_bool(value: Any, loc: Loc, errors: ErrorList) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        msg = "Input should be a valid boolean, unable to interpret input"
        errors.append(err("bool_parsing", loc, msg, value))
        return None
    errors.append(err("bool_type", loc, "Input should be a valid boolean", value))
    return None


def coerce_str(
    value: Any,
    loc: Loc,
    errors: ErrorList,
    min_length: int | None = None,
    max_length: int | None = None,
) -> str | None:
    if not isinstance(value, str):
        errors.append(err("string_type", loc, "Input should be a valid string", value))
        return None
    if min_length is not None and len(value) < min_length:
        unit = "character" if min_length == 1 else "characters"
        msg = f"String should have at least {min_length} {unit}"
        errors.append(err("string_too_short", loc, msg, value, {"min_length": min_length}))
        return None
    if max_length is not None and len(value) > max_length:
        unit = "character" if max_length == 1 else "characters"
        msg = f"String should have at most {max_length} {unit}"
        errors.append(err("string_too_long", loc, msg, value, {"max_length": max_length}))
        return None
    return value


def parse_json_body(body: bytes, errors: ErrorList) -> dict[str, Any] | None:
    """FastAPI's handling of a required JSON object body."""
    if not body:
        errors.append(missing(["body"]))
        return None
    try:
        data = json.loads(body)
    except ValueError as exc:
        pos = getattr(exc, "pos", 0)
        msg = getattr(exc, "msg", str(exc))
        errors.append(err("json_invalid", ["body", pos], "JSON decode error", {}, {"error": msg}))
        return None
    if not isinstance(data, dict):
        msg = "Input should be a valid dictionary or object to extract fields from"
        errors.append(err("model_attributes_type", ["body"], msg, data))
        return None
    return data


async def wait_disconnect(receive: Receive) -> None:
    """Return once the client has gone away (ASGI ``http.disconnect``)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def cancel_task(task: asyncio.Task[Any] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
