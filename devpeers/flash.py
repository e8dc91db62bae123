"""Contract peer for timepoint-flash v2.4.0 (see /work/shared/upstreams.md, part A).

It reproduces the documented wire behaviour, bugs included, so gateway tests can prove the gateway
defends against them. Nothing here is production code.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from devpeers._asgi import (
    ErrorList,
    Headers,
    Receive,
    RecordedRequest,
    Request,
    RequestLog,
    Response,
    Router,
    Scope,
    Send,
    abort_connection,
    add_unknown_fields,
    cancel_task,
    coerce_bool,
    coerce_float,
    coerce_int,
    coerce_str,
    err,
    json_response,
    missing,
    parse_json_body,
    read_request,
    record,
    send_response,
    validation_error,
    wait_disconnect,
    with_unknown_fields,
)

VERSION = "2.4.0"

# A2/A3: exactly the 18 keys Flash publishes on /credits/costs.
COSTS: dict[str, int] = {
    "generate_balanced": 5,
    "generate_hd": 10,
    "generate_hyper": 5,
    "generate_gemini3": 5,
    "chat": 1,
    "temporal_jump": 2,
    "conductor_base": 5,
    "conductor_generate": 5,
    "conductor_pro_sim": 15,
    "conductor_pro_capitalization_portfolio": 5,
    "conductor_compare": 10,
    "conductor_campaign_sim": 15,
    "conductor_campaign_survey": 5,
    "conductor_compare_campaigns": 10,
    "quick_sim_per_opportunity": 2,
    "meeting_generation": 1,
    "clockchain_ingest": 1,
    "clockchain_index": 1,
}

TRANSACTION_TYPES = frozenset(
    {
        "signup_bonus",
        "generation",
        "chat",
        "temporal",
        "admin_grant",
        "apple_iap",
        "stripe_purchase",
        "subscription_grant",
        "refund",
    }
)
PRESETS = frozenset({"hd", "hyper", "balanced", "gemini3", "free_distillable", "frontier"})
STATUSES = frozenset({"pending", "processing", "completed", "failed"})
OPEN_PATHS = frozenset({"/health", "/health/deep", "/", "/docs", "/redoc", "/openapi.json"})
HEALTH_PATHS = frozenset({"/health", "/health/deep"})
SIGNATURE_SKEW_S = 300

# 1x1 PNG; Flash inlines the whole image as a data: URI (pitfall 15).
_PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
# What the contract leaves free-form (A3, A4): the cost table (a map), the client's echoed
# `request_context`, and a full read's generated content (`metadata`'s parts, `characters`,
# `scene`, `dialog`, `grounding`, `moment`). The characters route's `characters` is a list of
# fixed records, so only an object under that name is free-form.
_FREE_FORM = frozenset(
    {"costs", "request_context", "graph", "camera", "image_prompt_data", "scene", "dialog"}
    | {"grounding", "moment"}
)


def free_form(key: str, value: Any) -> bool:
    return key in _FREE_FORM or (key == "characters" and isinstance(value, dict))


_PROPRIETARY_HINTS = ("gpt", "claude", "gemini", "openai/", "anthropic/", "google/")

# Deterministic fake "historical" content, chosen by a hash of the query.
_SCENES: tuple[tuple[int, int, int, str, str, str, str], ...] = (
    (-44, 3, 15, "spring", "morning", "Roman Republic", "Rome, Italy"),
    (1776, 7, 4, "summer", "afternoon", "American Revolution", "Philadelphia, USA"),
    (1889, 3, 31, "spring", "noon", "Belle Epoque", "Paris, France"),
    (1969, 7, 20, "summer", "night", "Space Age", "Sea of Tranquility, Moon"),
    (1666, 9, 2, "autumn", "night", "Restoration", "London, England"),
)


def sign_gateway_request(
    secret: str, method: str, path: str, user_id: str | None, timestamp: str | int
) -> str:
    """A1 signature: HMAC-SHA256 over ``v1\\nMETHOD\\nPATH\\nUSERID\\nTS`` -> ``v1=<hex>``."""
    message = "\n".join(["v1", method.upper(), path, user_id or "", str(timestamp)])
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()
    return "v1=" + digest


def gateway_headers(
    secret: str,
    method: str,
    path: str,
    user_id: str | None = None,
    timestamp: int | None = None,
) -> dict[str, str]:
    """Headers a well-behaved gateway sends (for tests that talk to the peer directly)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    headers = {
        "X-Gateway-Timestamp": ts,
        "X-Gateway-Signature": sign_gateway_request(secret, method, path, user_id, ts),
    }
    if user_id:
        headers["X-User-Id"] = user_id
    return headers


def _now_iso() -> str:
    # Postgres-style timestamps (with offset), as production returns.
    return datetime.now(UTC).isoformat()


def _error(status: int, message: str, headers: Headers | None = None) -> Response:
    # Shape of Flash's HTTPException handler.
    return json_response(status, {"error": message, "detail": None}, headers)


def _server_error() -> Response:
    return _error(500, "Internal server error")


def _slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:50].strip("-") or "timepoint"


@dataclass(slots=True)
class User:
    id: str
    external_id: str
    email: str | None
    display_name: str | None
    active: bool = True
    created_at: str = field(default_factory=_now_iso)


@dataclass(slots=True)
class CreditAccount:
    balance: int
    lifetime_earned: int
    lifetime_spent: int = 0


@dataclass(slots=True)
class LedgerRow:
    amount: int
    balance_after: int
    type: str
    description: str | None
    created_at: str = field(default_factory=_now_iso)

    def as_dict(self) -> dict[str, Any]:
        return {
            "amount": self.amount,
            "balance_after": self.balance_after,
            "type": self.type,
            "description": self.description,
            "created_at": self.created_at,
        }


@dataclass(slots=True)
class Timepoint:
    id: str
    query: str
    user_id: str | None
    visibility: str
    status: str
    preset_used: str
    slug: str
    generate_image: bool = False
    request_context: Any = None
    error: str | None = None
    is_deleted: bool = False
    generation_time_ms: int | None = None
    created_at: str = field(default_factory=_now_iso)

    @property
    def scene(self) -> tuple[int, int, int, str, str, str, str]:
        return _SCENES[int(hashlib.sha1(self.query.encode()).hexdigest(), 16) % len(_SCENES)]


@dataclass(slots=True)
class GenerateRequest:
    query: str
    generate_image: bool
    preset: str | None
    visibility: str | None
    request_context: Any


@dataclass(slots=True)
class _Charge:
    """A charge taken at the start of a generation; committed per ``lost_updates``."""

    user_id: str
    cost: int
    description: str
    snap_balance: int
    snap_spent: int
    deferred: bool  # written back at the end as absolute values (pitfall 11)


class FlashPeer:
    """ASGI app imitating timepoint-flash. Knobs are plain attributes tests may set at any time."""

    def __init__(
        self,
        *,
        service_key: str | None = "flash-service-key",
        admin_key: str | None = "flash-admin-key",
        signing_secret: str | None = "flash-signing-secret",
        require_signed: bool = True,
        allow_legacy_service_key: bool = True,
        auth_enabled: bool = False,
        signup_credits: int = 50,
    ) -> None:
        self.service_key = service_key or ""
        self.admin_key = admin_key or ""
        self.signing_secret = signing_secret or ""
        self.require_signed = require_signed
        self.allow_legacy_service_key = allow_legacy_service_key
        self.auth_enabled = auth_enabled
        self.signup_credits = signup_credits
        # Flash decides this once at import time (A1); the peer decides it at construction.
        self.middleware_installed = bool(self.service_key or self.signing_secret)

        self.url: str | None = None  # set by whoever serves the peer (tests' convenience)

        # --- test knobs ---
        self.generation_outcome: str = "completed"  # "completed" | "failed" | "error"
        self.generation_delay: float = 0.0
        self.stream_step_delay: float = 0.0
        self.stream_cut_after: int | None = None
        # SSE framing (the grammar allows CRLF, LF or CR line ends); each byte sent as its own
        # body chunk splits every event boundary; how many line ends follow the last event (2:
        # its empty line; 1: none; 0: not even the end of its `data:` line).
        self.stream_line_end: bytes = b"\n"
        self.stream_bytewise: bool = False
        self.stream_final_line_ends: int = 2
        self.fail_next: int = 0
        self.grant_then_drop: int = 0
        self.grant_delay: float = 0.0
        self.delay: float = 0.0  # before every non-health request
        # Pitfall 11: sync/stream write the balance back as an absolute value when they finish.
        self.lost_updates: bool = True
        self.image_payload_bytes: int = 0  # pad image data: URIs to this size (pitfall 15)
        # Every JSON answer and stream event gets `UNKNOWN_FIELDS` in each of its objects.
        self.unknown_fields: bool = False

        # --- observations ---
        self.stream_disconnects: int = 0
        self.stream_disconnect_times: list[float] = []  # time.monotonic() when noticed
        self.active_streams: int = 0

        # --- state (guarded by self.lock: tests mutate it from another thread) ---
        self.lock = threading.Lock()
        self.users: dict[str, User] = {}
        self.users_by_external: dict[str, str] = {}
        self.accounts: dict[str, CreditAccount] = {}
        self.ledger: dict[str, list[LedgerRow]] = {}
        self.timepoints: dict[str, Timepoint] = {}
        self._log = RequestLog()
        self._tasks: set[asyncio.Task[None]] = set()

        r = Router()
        r.add("GET", "/", self._root)
        r.add("GET", "/health", self._health)
        r.add("GET", "/health/deep", self._health)
        r.add("POST", "/api/v1/users/resolve", self._resolve)
        r.add("GET", "/api/v1/credits/balance", self._balance)
        r.add("GET", "/api/v1/credits/history", self._history)
        r.add("GET", "/api/v1/credits/costs", self._costs)
        r.add("POST", "/api/v1/credits/admin/grant", self._grant)
        r.add("POST", "/api/v1/timepoints/generate/sync", self._generate_sync)
        r.add("POST", "/api/v1/timepoints/generate/stream", self._generate_stream)
        r.add("POST", "/api/v1/timepoints/generate", self._generate_async)
        r.add("GET", "/api/v1/timepoints", self._list)
        r.add("GET", "/api/v1/timepoints/slug/{slug}", self._get_by_slug)
        r.add("GET", "/api/v1/timepoints/{timepoint_id}", self._get)
        r.add("DELETE", "/api/v1/timepoints/{timepoint_id}", self._delete)
        r.add("PATCH", "/api/v1/timepoints/{timepoint_id}/visibility", self._visibility)
        r.add("GET", "/api/v1/timepoints/{timepoint_id}/tdf", self._tdf)
        r.add("GET", "/api/v1/timepoints/{timepoint_id}/characters", self._characters)
        r.add("GET", "/api/v1/users/me/timepoints", self._my_timepoints)
        r.add("GET", "/api/v1/content/today", self._content_items)
        r.add("GET", "/api/v1/content/featured", self._content_items)
        r.add("GET", "/api/v1/content/weekly-prompt", self._content_prompt)
        for method in ("GET", "POST", "DELETE"):
            r.add(method, "/mcp", self._mcp)
            r.add(method, "/mcp/{rest:path}", self._mcp)
        self.router = r

    # ------------------------------------------------------------------ ASGI entry point

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not part of the contract
        req = await read_request(scope, receive, send)
        self._log.add(record(req))
        extra: Headers = []
        request_id = req.headers.get("x-request-id")
        if request_id is not None:
            extra.append((b"x-request-id", request_id.encode("latin-1")))
        req.state["extra_headers"] = extra
        resp = await self._handle(req)
        if resp is not None:
            if self.unknown_fields:
                add_unknown_fields(resp, free_form)
            resp.headers.extend(extra)
            await send_response(send, resp, head_only=req.method == "HEAD")

    async def _handle(self, req: Request) -> Response | None:
        if req.path not in HEALTH_PATHS:
            if self.delay > 0:
                await asyncio.sleep(self.delay)
            if self._take("fail_next"):
                return _server_error()
        rejected = self._gateway_check(req)
        if rejected is not None:
            return rejected
        return await self.router.dispatch(req)

    def _take(self, knob: str) -> bool:
        """Atomically consume one unit of a countdown knob."""
        with self.lock:
            left = int(getattr(self, knob))
            if left > 0:
                setattr(self, knob, left - 1)
                return True
            return False

    # ------------------------------------------------------------------ A1 gateway trust

    def _gateway_check(self, req: Request) -> Response | None:
        if not self.middleware_installed:
            return None
        if req.path in OPEN_PATHS or req.path.startswith("/mcp"):
            return None
        signature = req.headers.get("x-gateway-signature")
        timestamp = req.headers.get("x-gateway-timestamp")
        if signature and timestamp and self.signing_secret:
            if self._signature_ok(req, signature, timestamp):
                req.state["verified"] = True
                return None
            return json_response(403, {"error": "Invalid gateway signature"})
        if self.service_key:
            if self.require_signed:
                return json_response(403, {"error": "Gateway signature required"})
            sent = req.headers.get("x-service-key", "")
            if self.allow_legacy_service_key and _consteq(sent, self.service_key):
                return None  # system call: any X-User-Id is ignored (not verified)
            return json_response(403, {"error": "Invalid or missing service key"})
        return None  # REQUIRE_SIGNED_GATEWAY is not enforced without a service key

    def _signature_ok(self, req: Request, signature: str, timestamp: str) -> bool:
        try:
            ts = int(timestamp)
        except ValueError:
            return False
        if abs(time.time() - ts) > SIGNATURE_SKEW_S:
            return False
        user = req.headers.get("x-user-id", "")
        expected = sign_gateway_request(self.signing_secret, req.method, req.path, user, timestamp)
        return _consteq(signature, expected)

    def _resolve_user(self, req: Request, required: bool) -> tuple[User | None, Response | None]:
        header = req.headers.get("x-user-id", "")
        if header and req.state.get("verified"):
            with self.lock:
                user = self._find_user(header)
            if user is None or not user.active:
                msg = f"User {header} not found. Call POST /api/v1/users/resolve first."
                return None, _error(404, msg)
            return user, None
        if not header and self.auth_enabled:
            auth = req.headers.get("authorization", "")
            if not auth.lower().startswith("bearer ") or not auth[7:].strip():
                return None, _error(401, "Missing or invalid Authorization header")
            # The peer has no JWT issuer, so every Bearer token is a bad token.
            return None, _error(401, "Invalid token")
        if required:
            return None, _error(401, "Authentication required")
        return None, None

    def _find_user(self, ident: str) -> User | None:
        user = self.users.get(ident)
        if user is None:
            uid = self.users_by_external.get(ident)
            user = self.users.get(uid) if uid else None
        return user

    # ------------------------------------------------------------------ misc routes

    async def _root(self, req: Request) -> Response:
        body = {"name": "TIMEPOINT Flash", "version": VERSION, "docs": "/docs", "health": "/health"}
        return json_response(200, body)

    async def _health(self, req: Request) -> Response:
        body = {
            "status": "healthy",
            "version": VERSION,
            "database": True,
            "providers": {"google": False, "openrouter": False},
        }
        return json_response(200, body)

    async def _content_items(self, req: Request) -> Response:
        return json_response(200, {"items": []})

    async def _content_prompt(self, req: Request) -> Response:
        return json_response(200, {"prompt": None})

    async def _mcp(self, req: Request) -> Response:
        return json_response(
            401,
            {
                "error": "Unauthorized",
                "message": "Missing or invalid bearer token",
                "www_authenticate": 'Bearer realm="timepoint-flash-mcp"',
            },
        )

    # ------------------------------------------------------------------ A2 users/resolve

    async def _resolve(self, req: Request) -> Response:
        if not self.service_key:
            return _error(503, "FLASH_SERVICE_KEY not configured")
        if not _consteq(req.headers.get("x-service-key", ""), self.service_key):
            return _error(403, "Invalid service key")
        errors: ErrorList = []
        data = parse_json_body(req.body, errors)
        if data is None:
            return validation_error(errors)
        external_id: str | None = None
        if "external_id" not in data:
            errors.append(missing(["body", "external_id"], data))
        else:
            external_id = coerce_str(data["external_id"], ["body", "external_id"], errors)
        email = self._optional_str(data, "email", errors)
        display_name = self._optional_str(data, "display_name", errors)
        if errors or external_id is None:
            return validation_error(errors)
        with self.lock:
            existing = self.users_by_external.get(external_id)
            if existing is not None:
                return json_response(200, {"user_id": existing, "created": False})
            user_id = self._create_user(external_id, email, display_name, self.signup_credits)
        return json_response(200, {"user_id": user_id, "created": True})

    @staticmethod
    def _optional_str(data: dict[str, Any], key: str, errors: ErrorList) -> str | None:
        value = data.get(key)
        if value is None:
            return None
        return coerce_str(value, ["body", key], errors)

    def _create_user(
        self,
        external_id: str,
        email: str | None,
        display_name: str | None,
        credits: int | None,
    ) -> str:
        # Caller holds self.lock. Signup credits leave no ledger row (A2).
        user = User(str(uuid.uuid4()), external_id, email, display_name)
        self.users[user.id] = user
        self.users_by_external[external_id] = user.id
        if credits is not None:
            self.accounts[user.id] = CreditAccount(credits, credits, 0)
        self.ledger[user.id] = []
        return user.id

    # ------------------------------------------------------------------ A3 credits

    async def _balance(self, req: Request) -> Response:
        user, problem = self._resolve_user(req, required=True)
        if problem or user is None:
            return problem or _error(401, "Authentication required")
        with self.lock:
            acct = self.accounts.get(user.id)
            if acct is None:
                return _error(404, "Credit account not found")
            body = {
                "balance": acct.balance,
                "lifetime_earned": acct.lifetime_earned,
                "lifetime_spent": acct.lifetime_spent,
            }
        return json_response(200, body)

    async def _history(self, req: Request) -> Response:
        user, problem = self._resolve_user(req, required=True)
        if problem or user is None:
            return problem or _error(401, "Authentication required")
        errors: ErrorList = []
        q = req.query
        limit = coerce_int(q.get("limit", 20), ["query", "limit"], errors, ge=1, le=100)
        offset = coerce_int(q.get("offset", 0), ["query", "offset"], errors, ge=0)
        if errors or limit is None or offset is None:
            return validation_error(errors)
        with self.lock:
            if user.id not in self.accounts:
                return _error(404, "Credit account not found")
            rows = list(reversed(self.ledger.get(user.id, [])))[offset : offset + limit]
            body = [row.as_dict() for row in rows]
        return json_response(200, body)

    async def _costs(self, req: Request) -> Response:
        return json_response(200, {"costs": dict(COSTS)})

    async def _grant(self, req: Request) -> Response | None:
        if not self.admin_key:
            return _error(403, "Admin endpoints are disabled (ADMIN_API_KEY not set)")
        if not _consteq(req.headers.get("x-admin-key", ""), self.admin_key):
            return _error(403, "Invalid admin key")
        errors: ErrorList = []
        data = parse_json_body(req.body, errors)
        if data is None:
            return validation_error(errors)
        user_id: str | None = None
        amount: int | None = None
        if "user_id" not in data:
            errors.append(missing(["body", "user_id"], data))
        else:
            user_id = coerce_str(data["user_id"], ["body", "user_id"], errors)
        if "amount" not in data:
            errors.append(missing(["body", "amount"], data))
        else:
            amount = coerce_int(data["amount"], ["body", "amount"], errors, gt=0)
        tx_type = self._optional_str(data, "transaction_type", errors)
        description = (
            self._optional_str(data, "description", errors)
            if "description" in data
            else "Manual top-up"
        )
        if errors or user_id is None or amount is None:
            return validation_error(errors)
        if self.grant_delay > 0:
            await asyncio.sleep(self.grant_delay)
        with self.lock:
            if user_id not in self.users:  # UUID only; external_id is not accepted
                return _error(404, "User not found")
            acct = self.accounts.get(user_id)
            if acct is None:
                return _server_error()
            # Not idempotent: every call adds credits (pitfall 12).
            acct.balance += amount
            acct.lifetime_earned += amount
            kind = tx_type if tx_type in TRANSACTION_TYPES else "admin_grant"
            self.ledger[user_id].append(LedgerRow(amount, acct.balance, kind, description))
            new_balance = acct.balance
        if self._take("grant_then_drop"):
            # Applied, but the client never learns it: drop the connection.
            if abort_connection(req.send):
                return None
        return json_response(200, {"balance": new_balance, "granted": amount})

    # ------------------------------------------------------------------ A4 generation

    def _parse_generate(self, req: Request) -> tuple[GenerateRequest | None, Response | None]:
        errors: ErrorList = []
        data = parse_json_body(req.body, errors)
        if data is None:
            return None, validation_error(errors)
        query: str | None = None
        if "query" not in data:
            errors.append(missing(["body", "query"], data))
        else:
            query = coerce_str(data["query"], ["body", "query"], errors, 3, 500)
        generate_image = False
        if data.get("generate_image") is not None:
            generate_image = bool(
                coerce_bool(data["generate_image"], ["body", "generate_image"], errors)
            )
        preset = self._optional_str(data, "preset", errors)
        visibility = self._optional_str(data, "visibility", errors)
        text_model = self._optional_str(data, "text_model", errors)
        image_model = self._optional_str(data, "image_model", errors)
        policy = self._optional_str(data, "model_policy", errors)
        self._check_llm_params(data.get("llm_params"), errors)
        context = data.get("request_context")
        if context is not None and not isinstance(context, dict):
            errors.append(
                err(
                    "dict_type",
                    ["body", "request_context"],
                    "Input should be a valid dictionary",
                    context,
                )
            )
        if errors or query is None:
            return None, validation_error(errors)
        if policy is not None and policy.lower() == "permissive":
            for model in (text_model, image_model):
                if model and any(hint in model.lower() for hint in _PROPRIETARY_HINTS):
                    msg = f"Model '{model}' is not open-weight and model_policy is 'permissive'"
                    return None, _error(422, msg)
        return GenerateRequest(query, generate_image, preset, visibility, context), None

    @staticmethod
    def _check_llm_params(params: Any, errors: ErrorList) -> None:
        if params is None:
            return
        base: list[str | int] = ["body", "llm_params"]
        if not isinstance(params, dict):
            msg = "Input should be a valid dictionary or object to extract fields from"
            errors.append(err("model_attributes_type", base, msg, params))
            return
        floats = {
            "temperature": (0.0, 2.0),
            "top_p": (0.0, 1.0),
            "frequency_penalty": (-2.0, 2.0),
            "presence_penalty": (-2.0, 2.0),
            "repetition_penalty": (0.0, 2.0),
        }
        for key, (lo, hi) in floats.items():
            if params.get(key) is not None:
                coerce_float(params[key], [*base, key], errors, ge=lo, le=hi)
        if params.get("max_tokens") is not None:
            coerce_int(params["max_tokens"], [*base, "max_tokens"], errors, ge=1, le=32768)
        if params.get("top_k") is not None:
            coerce_int(params["top_k"], [*base, "top_k"], errors, ge=1)

    def _precheck(self, user: User | None) -> Response | None:
        """require_credits(5): only with AUTH_ENABLED, always 5 whatever the preset."""
        if not self.auth_enabled:
            return None
        if user is None:
            return _error(401, "Authentication required")
        with self.lock:
            acct = self.accounts.get(user.id)
            balance = acct.balance if acct else 0
        if balance < 5:
            return _error(402, "Insufficient credits. This operation costs 5 credits.")
        return None

    @staticmethod
    def cost_for(preset: str | None) -> int:
        # Raw preset string, no lowercasing (pitfall 8): "HD" costs 5, "hd" costs 10.
        return COSTS.get("generate_" + (preset if preset is not None else "balanced"), 5)

    def _new_timepoint(
        self, gen: GenerateRequest, user_id: str | None, visibility: str
    ) -> Timepoint:
        tp_id = str(uuid.uuid4())
        tp = Timepoint(
            id=tp_id,
            query=gen.query,
            user_id=user_id,
            visibility=visibility,
            status="processing",
            preset_used=gen.preset if gen.preset is not None else "balanced",
            slug=f"{_slugify(gen.query)}-{tp_id[:8]}",
            generate_image=gen.generate_image,
            request_context=gen.request_context,
        )
        with self.lock:
            self.timepoints[tp_id] = tp
        return tp

    def _take_charge(
        self, user: User, cost: int, preset: str, defer: bool, description: str | None = None
    ) -> _Charge | None:
        """Check the balance and deduct now, or (``defer``) only snapshot it for a later write-back.

        None means insufficient balance or no credit account. Descriptions as Flash writes them:
        ``Generate (<preset>): <query[:60]>``, refunds ``Refund (<why>): <query[:60]>``.
        """
        desc = description or f"Timepoint generation ({preset})"
        with self.lock:
            acct = self.accounts.get(user.id)
            if acct is None or acct.balance < cost:
                return None
            charge = _Charge(user.id, cost, desc, acct.balance, acct.lifetime_spent, defer)
            if not defer:
                self._apply_delta(user.id, -cost, "generation", desc)
        return charge

    def _apply_delta(self, user_id: str, amount: int, kind: str, desc: str) -> None:
        # Caller holds self.lock.
        acct = self.accounts[user_id]
        acct.balance += amount
        if kind == "generation":
            acct.lifetime_spent -= amount
        self.ledger.setdefault(user_id, []).append(LedgerRow(amount, acct.balance, kind, desc))

    def _settle(
        self,
        charge: _Charge,
        refunded: bool,
        refund_lost: bool = False,
        refund_description: str | None = None,
    ) -> None:
        """Finish a charge; a deferred charge is written back only now, as absolute values.

        With lost_updates the session that read the balance at charge time writes
        ``snapshot - cost`` when the run ends, wiping any grant made meanwhile; the ledger
        keeps every row (pitfall 11). ``refund_lost``: the refund was committed by another
        session *before* that write-back (the stream case), so it is overwritten too.
        """
        # Flash's own words, ending with the query as the charge does.
        query = charge.description.split("): ", 1)[-1]
        refund_desc = refund_description or f"Refund (generation failed): {query}"
        with self.lock:
            acct = self.accounts.get(charge.user_id)
            if acct is None:
                return
            rows = self.ledger.setdefault(charge.user_id, [])
            if not charge.deferred:
                if refunded:
                    self._apply_delta(charge.user_id, charge.cost, "refund", refund_desc)
                return
            if refunded and refund_lost:
                acct.balance += charge.cost
                rows.append(LedgerRow(charge.cost, acct.balance, "refund", refund_desc))
            acct.balance = charge.snap_balance - charge.cost
            acct.lifetime_spent = charge.snap_spent + charge.cost
            rows.append(LedgerRow(-charge.cost, acct.balance, "generation", charge.description))
            if refunded and not refund_lost:
                acct.balance = charge.snap_balance
                rows.append(LedgerRow(charge.cost, acct.balance, "refund", refund_desc))

    def _finish_timepoint(self, tp: Timepoint, outcome: str, started: float) -> None:
        with self.lock:
            tp.generation_time_ms = int((time.monotonic() - started) * 1000)
            if outcome == "completed":
                tp.status = "completed"
            else:
                tp.status = "failed"
                tp.error = (
                    "Pipeline exception: simulated failure"
                    if outcome == "error"
                    else "Query rejected by judge"
                )

    async def _generate_sync(self, req: Request) -> Response:
        user, problem = self._resolve_user(req, required=False)
        if problem:
            return problem
        problem = self._precheck(user)
        if problem:
            return problem
        gen, problem = self._parse_generate(req)
        if problem or gen is None:
            return problem or _server_error()
        cost = self.cost_for(gen.preset)
        charge: _Charge | None = None
        if user is not None:
            preset = gen.preset or "balanced"
            charge = self._take_charge(
                user,
                cost,
                preset,
                self.lost_updates,
                description=f"Generate ({preset}): {gen.query[:60]}",
            )
            if charge is None:
                return self._sync_insufficient(user, cost, gen.query)
        visibility = gen.visibility if gen.visibility in ("public", "private") else "public"
        tp = self._new_timepoint(gen, user.id if user else None, visibility)
        started = time.monotonic()
        if self.generation_delay > 0:
            await asyncio.sleep(self.generation_delay)
        outcome = self.generation_outcome
        self._finish_timepoint(tp, outcome, started)
        if charge is not None:
            # A "failed" run is charged and not refunded; an exception is refunded.
            self._settle(charge, refunded=outcome == "error")
        if outcome == "error":
            return _error(500, "Pipeline exception: simulated failure")
        with self.lock:
            body = self._tp_dict(tp, full=True, viewer=user.id if user else None)
        return json_response(200, body)

    def _sync_insufficient(self, user: User, cost: int, query: str = "") -> Response:
        # Pitfall 7: the error handler "refunds" the cost it never took, and commits.
        with self.lock:
            acct = self.accounts.get(user.id)
            if acct is None:
                return _server_error()
            have = acct.balance
            acct.balance += cost
            row = LedgerRow(
                cost, acct.balance, "refund", f"Refund (generation failed): {query[:60]}"
            )
            self.ledger.setdefault(user.id, []).append(row)
        return _error(500, f"Insufficient credits: have {have}, need {cost}")

    async def _generate_async(self, req: Request) -> Response:
        user, problem = self._resolve_user(req, required=False)
        if problem:
            return problem
        problem = self._precheck(user)
        if problem:
            return problem
        gen, problem = self._parse_generate(req)
        if problem or gen is None:
            return problem or _server_error()
        charge: _Charge | None = None
        if user is not None:
            # Charged up front and committed at once (no deferred write-back here), with the
            # description Flash writes for this route.
            cost = self.cost_for(gen.preset)
            preset = gen.preset or "balanced"
            description = f"Generate ({preset}): {gen.query[:60]}"
            charge = self._take_charge(user, cost, preset, defer=False, description=description)
            if charge is None:
                return _server_error()
        visibility = gen.visibility if gen.visibility in ("public", "private") else "public"
        tp = self._new_timepoint(gen, user.id if user else None, visibility)
        task = asyncio.create_task(self._background(tp, charge))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        body = {
            "id": tp.id,
            "status": "processing",
            "message": f"Generation started. Poll GET /api/v1/timepoints/{tp.id} for status.",
            "request_context": gen.request_context,
        }
        return json_response(200, body)

    async def _background(self, tp: Timepoint, charge: _Charge | None) -> None:
        started = time.monotonic()
        if self.generation_delay > 0:
            await asyncio.sleep(self.generation_delay)
        outcome = self.generation_outcome
        if charge is not None and outcome == "error":
            # Refunded only when the background task raises (a "failed" run is not). Flash
            # commits the refund with the `failed` status, so nobody sees one without the other.
            description = f"Refund (background generation failed): {tp.query[:60]}"
            self._settle(charge, refunded=True, refund_description=description)
        self._finish_timepoint(tp, outcome, started)

    def _stream_events(self, tp: Timepoint, gen: GenerateRequest) -> list[dict[str, Any]]:
        preset = gen.preset if gen.preset and gen.preset.lower() in PRESETS else "balanced"
        outcome = self.generation_outcome

        def event(
            name: str, step: str | None, data: Any, progress: int, error: Any = None
        ) -> dict[str, Any]:
            return {"event": name, "step": step, "data": data, "progress": progress, "error": error}

        start_data = {"query": gen.query, "generate_image": gen.generate_image, "preset": preset}
        events = [event("start", "initialization", start_data, 0)]
        steps = [
            ("judge", 10),
            ("timeline", 20),
            ("scene", 30),
            ("characters", 50),
            ("moment", 65),
            ("camera", 65),
            ("dialog", 80),
            ("image_prompt", 90),
        ]
        if gen.generate_image:
            steps.append(("image_generation", 100))
        if outcome == "failed":
            # A failing judge stops the run, but the stream still ends with done/failed.
            events.append(event("step_error", "judge", None, 10, "Query rejected by judge"))
        else:
            for i, (step, progress) in enumerate(steps):
                if outcome == "error" and i == 2:
                    events.append(
                        event("error", None, None, 0, "Pipeline exception: simulated failure")
                    )
                    return events
                model = (
                    "gemini-2.5-flash-image" if step == "image_generation" else "gemini-2.5-flash"
                )
                data = {"latency_ms": 120 + 10 * i, "model_used": model}
                events.append(event("step_complete", step, data, progress))
        year, _, _, _, _, _, location = tp.scene
        done = {
            "timepoint_id": tp.id,
            "slug": tp.slug,
            "status": "failed" if outcome == "failed" else "completed",
            "year": year,
            "location": location,
            "total_latency_ms": 1500,
            "has_image": gen.generate_image and outcome != "failed",
            "saved": True,
        }
        events.append(event("done", "complete", done, 100))
        return events

    async def _generate_stream(self, req: Request) -> Response | None:
        user, problem = self._resolve_user(req, required=False)
        if problem:
            return problem
        problem = self._precheck(user)
        if problem:
            return problem
        gen, problem = self._parse_generate(req)
        if problem or gen is None:
            return problem or _server_error()
        # X-Gateway-Metered is honoured here only, and it is not signed (pitfall 1).
        metered = req.headers.get("x-gateway-metered", "").strip().lower() == "true"
        charge: _Charge | None = None
        if user is not None and not metered:
            cost = self.cost_for(gen.preset)
            preset = gen.preset or "balanced"
            charge = self._take_charge(
                user,
                cost,
                preset,
                self.lost_updates,
                description=f"Generate ({preset}): {gen.query[:60]}",
            )
            if charge is None:
                return _server_error()
        # Visibility is ignored and the timepoint is orphaned (pitfall 10).
        tp = self._new_timepoint(gen, None, "public")
        outcome = self.generation_outcome
        events = self._stream_events(tp, gen)
        headers: Headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"connection", b"keep-alive"),
            (b"x-accel-buffering", b"no"),
            *req.state.get("extra_headers", []),
        ]
        send = req.send
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        watcher = asyncio.create_task(wait_disconnect(req.receive))
        started = time.monotonic()
        sent = 0
        completed = False
        disconnected = False
        with self.lock:
            self.active_streams += 1
        try:
            for ev in events:
                cut_after = self.stream_cut_after
                if cut_after is not None and sent >= cut_after:
                    abort_connection(send)
                    break
                if sent and self.stream_step_delay > 0:
                    await asyncio.wait({watcher}, timeout=self.stream_step_delay)
                if watcher.done():
                    disconnected = True
                    break
                end = self.stream_line_end
                ends = 2 if sent < len(events) - 1 else self.stream_final_line_ends
                if self.unknown_fields:
                    ev = with_unknown_fields(ev, free_form)
                chunk = b"data: " + json.dumps(ev).encode() + end * ends
                if self.stream_bytewise:
                    for i in range(len(chunk)):
                        body = chunk[i : i + 1]
                        await send({"type": "http.response.body", "body": body, "more_body": True})
                        await asyncio.sleep(0)
                else:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                sent += 1
            else:
                completed = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            # Forced server shutdown: drop the connection rather than have uvicorn log a traceback.
            abort_connection(send)
        finally:
            cancel_task(watcher)
            with self.lock:
                self.active_streams -= 1
                if disconnected:
                    self.stream_disconnects += 1
                    self.stream_disconnect_times.append(time.monotonic())
            reached_done = completed and outcome != "error"
            self._finish_timepoint(tp, outcome if reached_done else "error", started)
            if charge is not None:
                # No done -> refund attempted, except that a client disconnect skips it; with
                # lost_updates the charge is committed after the stream closes, over the refund.
                refunded = not reached_done and not disconnected
                self._settle(charge, refunded=refunded, refund_lost=True)
        return None

    # ------------------------------------------------------------------ A5 timepoints

    def _tp_dict(
        self,
        tp: Timepoint,
        *,
        full: bool = False,
        include_image: bool = False,
        viewer: str | None = None,
    ) -> dict[str, Any]:
        """TimepointResponse. Caller holds self.lock."""
        year, month, day, season, time_of_day, era, location = tp.scene
        done = tp.status == "completed"
        has_image = done and tp.generate_image
        image_b64 = _PNG_B64
        if self.image_payload_bytes > len(image_b64):
            image_b64 += "A" * ((self.image_payload_bytes - len(image_b64)) // 4 * 4)
        text_model = "gemini-2.5-flash" if done else None
        body: dict[str, Any] = {
            "id": tp.id,
            "query": tp.query,
            "slug": tp.slug,
            "status": tp.status,
            "year": year if done else None,
            "month": month if done else None,
            "day": day if done else None,
            "season": season if done else None,
            "time_of_day": time_of_day if done else None,
            "era": era if done else None,
            "location": location if done else None,
            "has_image": has_image,
            "image_url": f"data:image/png;base64,{image_b64}" if has_image else None,
            "text_model_used": text_model,
            "image_model_used": "gemini-2.5-flash-image" if has_image else None,
            "model_provider": "google" if done else None,
            "model_permissiveness": "proprietary" if done else None,
            "created_at": tp.created_at,
            "error": tp.error,
            "blob_folder_name": None,
            "blob_path": None,
            "blob_written_at": None,
            "is_deleted": tp.is_deleted,
            "sequence_id": None,
            "render_type": "image",
            "generation_version": 2,
            "tags": [],
            "visibility": tp.visibility,
            "share_url": None,
            "preset_used": tp.preset_used,
            "generation_time_ms": tp.generation_time_ms,
            "request_context": tp.request_context,
        }
        if full:
            body["image_prompt"] = f"A historically accurate scene: {tp.query}" if done else None
            body["metadata"] = (
                {"graph": {}, "camera": {}, "image_prompt_data": {}} if done else None
            )
            body["characters"] = {"characters": []} if done else None
            body["scene"] = {"setting": location, "atmosphere": "tense"} if done else None
            body["dialog"] = [] if done else None
            body["grounding"] = {} if done else None
            body["moment"] = {"summary": tp.query} if done else None
        if include_image:
            body["image_base64"] = image_b64 if has_image else None
        if tp.visibility == "private" and viewer != tp.user_id:
            # A private timepoint shown to a non-owner: content, images and models nulled.
            for key in (
                "year", "month", "day", "season", "time_of_day", "era", "location", "image_url",
                "image_base64", "image_prompt", "metadata", "characters", "scene", "dialog",
                "grounding", "moment", "text_model_used", "image_model_used", "model_provider",
                "model_permissiveness",
            ):  # fmt: skip
                if key in body:
                    body[key] = None
        return body

    def _bool_query(self, req: Request, name: str, errors: ErrorList) -> bool:
        raw = req.query.get(name)
        if raw is None:
            return False
        return bool(coerce_bool(raw, ["query", name], errors))

    async def _get(self, req: Request) -> Response:
        return await self._read_one(req, lambda tp: tp.id == req.params["timepoint_id"])

    async def _get_by_slug(self, req: Request) -> Response:
        return await self._read_one(req, lambda tp: tp.slug == req.params["slug"])

    async def _read_one(self, req: Request, pick: Any) -> Response:
        user, problem = self._resolve_user(req, required=False)
        if problem:
            return problem
        errors: ErrorList = []
        full = self._bool_query(req, "full", errors)
        include_image = self._bool_query(req, "include_image", errors)
        if errors:
            return validation_error(errors)
        viewer = user.id if user else None
        with self.lock:
            # Soft-deleted rows are still returned (pitfall 14).
            tp = next((t for t in self.timepoints.values() if pick(t)), None)
            if tp is None:
                return _error(404, "Timepoint not found")
            if tp.visibility == "private" and (viewer is None or tp.user_id != viewer):
                return _error(403, "This timepoint is private")
            body = self._tp_dict(tp, full=full, include_image=include_image, viewer=viewer)
        return json_response(200, body)

    def _paging(self, req: Request, errors: ErrorList) -> tuple[int, int]:
        page = coerce_int(req.query.get("page", 1), ["query", "page"], errors, ge=1)
        size = coerce_int(
            req.query.get("page_size", 20), ["query", "page_size"], errors, ge=1, le=100
        )
        return page or 1, size or 20

    async def _list(self, req: Request) -> Response:
        user, problem = self._resolve_user(req, required=False)
        if problem:
            return problem
        errors: ErrorList = []
        page, size = self._paging(req, errors)
        if errors:
            return validation_error(errors)
        status = req.query.get("status")
        vis = req.query.get("visibility")
        viewer = user.id if user else None
        with self.lock:
            rows = [t for t in reversed(list(self.timepoints.values())) if not t.is_deleted]
            if status in STATUSES:  # an invalid filter value is ignored
                rows = [t for t in rows if t.status == status]
            if vis == "private":
                rows = [
                    t for t in rows if t.visibility == "private" and viewer and t.user_id == viewer
                ]
            elif vis == "public":
                rows = [t for t in rows if t.visibility == "public"]
            else:
                rows = [
                    t for t in rows if t.visibility == "public" or (viewer and t.user_id == viewer)
                ]
            items = [self._tp_dict(t, viewer=viewer) for t in rows[(page - 1) * size : page * size]]
        return json_response(
            200, {"items": items, "total": len(rows), "page": page, "page_size": size}
        )

    async def _my_timepoints(self, req: Request) -> Response:
        user, problem = self._resolve_user(req, required=True)
        if problem or user is None:
            return problem or _error(401, "Authentication required")
        errors: ErrorList = []
        page, size = self._paging(req, errors)
        if errors:
            return validation_error(errors)
        status = req.query.get("status")
        with self.lock:
            rows = [
                t
                for t in reversed(list(self.timepoints.values()))
                if t.user_id == user.id and not t.is_deleted
            ]
            if status in STATUSES:
                rows = [t for t in rows if t.status == status]
            items = []
            for t in rows[(page - 1) * size : page * size]:
                done = t.status == "completed"
                items.append(
                    {
                        "id": t.id,
                        "query": t.query,
                        "slug": t.slug,
                        "status": t.status,
                        "year": t.scene[0] if done else None,
                        "location": t.scene[6] if done else None,
                        "has_image": done and t.generate_image,
                        "created_at": t.created_at,
                    }
                )
        return json_response(
            200, {"items": items, "total": len(rows), "page": page, "page_size": size}
        )

    async def _visibility(self, req: Request) -> Response:
        user, problem = self._resolve_user(req, required=False)
        if problem:
            return problem
        errors: ErrorList = []
        data = parse_json_body(req.body, errors)
        if data is None:
            return validation_error(errors)
        if "visibility" not in data:
            return validation_error([missing(["body", "visibility"], data)])
        value = coerce_str(data["visibility"], ["body", "visibility"], errors)
        if errors:
            return validation_error(errors)
        if value not in ("public", "private"):
            return _error(400, "Invalid visibility value. Must be 'public' or 'private'.")
        viewer = user.id if user else None
        with self.lock:
            tp = self.timepoints.get(req.params["timepoint_id"])
            if tp is None:
                return _error(404, "Timepoint not found")
            # The owner check is skipped when there is no user (pitfall 5).
            if user is not None and tp.user_id != user.id:
                return _error(403, "Only the owner can change visibility")
            tp.visibility = value
            body = self._tp_dict(tp, viewer=viewer)
        return json_response(200, body)

    async def _delete(self, req: Request) -> Response:
        user, problem = self._resolve_user(req, required=False)
        if problem:
            return problem
        errors: ErrorList = []
        permanent = self._bool_query(req, "permanent", errors)
        if errors:
            return validation_error(errors)
        tp_id = req.params["timepoint_id"]
        with self.lock:
            tp = self.timepoints.get(tp_id)
            if tp is None:
                return _error(404, "Timepoint not found")
            if user is not None and tp.user_id != user.id:
                return _error(403, "Only the owner can delete this timepoint")
            if permanent:
                del self.timepoints[tp_id]
                message = f"Timepoint {tp_id} permanently deleted"
            else:
                tp.is_deleted = True
                message = f"Timepoint {tp_id} soft-deleted"
        return json_response(200, {"id": tp_id, "deleted": True, "message": message})

    async def _characters(self, req: Request) -> Response:
        user, problem = self._resolve_user(req, required=False)
        if problem:
            return problem
        viewer = user.id if user else None
        with self.lock:
            # Soft-deleted rows are served here too (pitfall 14).
            tp = self.timepoints.get(req.params["timepoint_id"])
            if tp is None:
                return _error(404, "Timepoint not found")
            if tp.visibility == "private" and (viewer is None or tp.user_id != viewer):
                return _error(403, "This timepoint is private")
            if tp.status != "completed":
                return _error(
                    404, "Timepoint has no character data. Generation may still be in progress."
                )
            year, _, _, _, _, era, location = tp.scene
            names = ("Narrator of " + tp.query[:40], "A witness", "A bystander")
            characters = [
                {
                    "name": name,
                    "role": "primary" if i == 0 else "secondary",
                    "system_prompt": f"You are {name}, in {location} in {year}.",
                    "dialog_context": f"**{name}** ({'primary' if i == 0 else 'secondary'})",
                    "speaks_in_scene": i < 2,
                    "personality": "observant",
                    "speaking_style": "plain",
                    "emotional_state": "tense",
                    "historical_note": None,
                }
                for i, name in enumerate(names)
            ]
            body = {
                "timepoint_id": tp.id,
                "query": tp.query,
                "year": year,
                "location": location,
                "era": era,
                "total_characters": len(characters),
                "speaking_characters": sum(1 for c in characters if c["speaks_in_scene"]),
                "characters": characters,
            }
        return json_response(200, body)

    async def _tdf(self, req: Request) -> Response:
        # Privacy bypass kept on purpose (pitfall 14): no visibility or owner check.
        with self.lock:
            tp = self.timepoints.get(req.params["timepoint_id"])
            if tp is None:
                return _error(404, "Timepoint not found")
            payload = self._tp_dict(tp, full=True, viewer=tp.user_id)
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        body = {
            "id": tp.id,
            "version": "1.0.0",
            "source": "flash",
            "timestamp": tp.created_at,
            "provenance": {
                "generator": f"timepoint-flash/{VERSION}",
                "run_id": tp.id,
                "confidence": 0.9,
                "flash_id": tp.id,
            },
            "payload": payload,
            "tdf_hash": digest,
            "entity_ids": [],
        }
        return json_response(200, body)

    # ------------------------------------------------------------------ test helpers

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received (oldest first), recorded before any auth or routing."""
        return self._log.snapshot()

    def reset_requests(self) -> None:
        self._log.clear()

    def requests_to(self, path_prefix: str) -> list[RecordedRequest]:
        return [r for r in self._log.snapshot() if r.path.startswith(path_prefix)]

    def add_user(
        self,
        external_id: str,
        *,
        email: str | None = None,
        display_name: str | None = None,
        credits: int | None = None,
        with_account: bool = True,
        active: bool = True,
    ) -> str:
        """Create a user as /users/resolve would; ``with_account=False`` gives no credit account."""
        with self.lock:
            existing = self.users_by_external.get(external_id)
            if existing is not None:
                return existing
            amount = (self.signup_credits if credits is None else credits) if with_account else None
            user_id = self._create_user(external_id, email, display_name, amount)
            self.users[user_id].active = active
            return user_id

    def user_id_for(self, external_id: str) -> str | None:
        with self.lock:
            return self.users_by_external.get(external_id)

    def set_user_active(self, user_id: str, active: bool) -> None:
        with self.lock:
            user = self._find_user(user_id)
            if user is not None:
                user.active = active

    def user_balance(self, user_id: str) -> int | None:
        """Committed balance (accepts UUID or external_id); None without an account."""
        with self.lock:
            user = self._find_user(user_id)
            acct = self.accounts.get(user.id) if user else None
            return acct.balance if acct else None

    def account(self, user_id: str) -> dict[str, int] | None:
        with self.lock:
            user = self._find_user(user_id)
            acct = self.accounts.get(user.id) if user else None
            if acct is None:
                return None
            return {
                "balance": acct.balance,
                "lifetime_earned": acct.lifetime_earned,
                "lifetime_spent": acct.lifetime_spent,
            }

    def ledger_for(self, user_id: str) -> list[dict[str, Any]]:
        """Ledger rows, oldest first (the /credits/history endpoint is newest first)."""
        with self.lock:
            user = self._find_user(user_id)
            rows = self.ledger.get(user.id, []) if user else []
            return [row.as_dict() for row in rows]

    def set_balance(self, user_id: str, balance: int) -> None:
        """Overwrite the balance directly (creates the account if missing; no ledger row)."""
        with self.lock:
            user = self._find_user(user_id)
            if user is None:
                raise KeyError(user_id)
            acct = self.accounts.get(user.id)
            if acct is None:
                self.accounts[user.id] = CreditAccount(balance, balance, 0)
            else:
                acct.balance = balance

    def add_timepoint(
        self,
        owner: str | None,
        visibility: str = "public",
        *,
        query: str = "The signing of the Declaration of Independence",
        status: str = "completed",
        preset_used: str = "balanced",
        generate_image: bool = False,
        is_deleted: bool = False,
        request_context: Any = None,
    ) -> str:
        """Insert a timepoint directly; ``owner`` is a Flash user UUID or external_id (or None)."""
        with self.lock:
            owner_id: str | None = None
            if owner is not None:
                user = self._find_user(owner)
                owner_id = user.id if user else owner
            tp_id = str(uuid.uuid4())
            self.timepoints[tp_id] = Timepoint(
                id=tp_id,
                query=query,
                user_id=owner_id,
                visibility=visibility,
                status=status,
                preset_used=preset_used,
                slug=f"{_slugify(query)}-{tp_id[:8]}",
                generate_image=generate_image,
                request_context=request_context,
                is_deleted=is_deleted,
                generation_time_ms=1234,
            )
            return tp_id

    def timepoint(self, timepoint_id: str) -> dict[str, Any] | None:
        """The stored timepoint as its owner would see it (None if missing)."""
        with self.lock:
            tp = self.timepoints.get(timepoint_id)
            if tp is None:
                return None
            body = self._tp_dict(tp, full=True, viewer=tp.user_id)
            body["owner"] = tp.user_id
            return body


def _consteq(a: str, b: str) -> bool:
    # Byte comparison so odd (non-ASCII) header values cannot raise.
    return hmac.compare_digest(
        a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape")
    )
