"""Contract peer for timepoint-clockchain v0.2.0 (see /work/shared/upstreams.md, part B).

Reproduces the documented leaks on purpose (private detail with a key, unfiltered neighbors and
detail edges, stats counting private nodes, one rate-limit bucket per key hash or peer IP).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import re
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from devpeers._asgi import (
    ErrorList,
    Receive,
    RecordedRequest,
    Request,
    RequestLog,
    Response,
    Router,
    Scope,
    Send,
    add_unknown_fields,
    coerce_float,
    coerce_int,
    coerce_str,
    json_response,
    missing,
    read_request,
    record,
    send_response,
    text_response,
    validation_error,
)

VERSION = "0.2.0"
API = "/api/v1"
HEALTH_PATHS = frozenset({"/health"})
MONTHS = (
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
)  # fmt: skip
MONTH_TO_NUM = {name: i + 1 for i, name in enumerate(MONTHS)}

# Owners of the seeded private nodes (Flash-style user UUIDs).
PRIVATE_OWNER_A = "5b0c1f8e-7a31-4c2d-9e55-0a11ce000001"
PRIVATE_OWNER_B = "9d4e2a7c-1b6f-4f80-8c3a-0b0b00000002"

Node = dict[str, Any]
Edge = dict[str, Any]


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def normalize_path(raw: str) -> str:
    """How Clockchain turns a ``{path:path}`` param into a node id (no other validation)."""
    return "/" + raw.strip("/")


def make_node(
    path: str,
    name: str,
    *,
    one_liner: str = "",
    visibility: str = "public",
    created_by: str = "system",
    layer: int = 1,
    tags: list[str] | None = None,
    figures: list[str] | None = None,
    confidence: float | None = 0.9,
    source_type: str = "historical",
    status: str = "proposed",
    image_url: str | None = None,
    era: str = "",
    created_at: str | None = None,
) -> Node:
    """A full node row; 8-segment paths fill the date/place fields, other ids leave them blank."""
    segs = path.strip("/").split("/")
    year: int | None = None
    month = ""
    day = 0
    time_ = country = region = city = slug = ""
    if len(segs) == 8:
        try:
            year = int(segs[0])
        except ValueError:
            year = None
        month = segs[1]
        day = int(segs[2]) if segs[2].isdigit() else 0
        time_, country, region, city, slug = segs[3:8]
    else:
        slug = segs[-1]
    created = created_at or _now_iso()
    return {
        "path": path,
        "type": "event",
        "name": name,
        "year": year,
        "month": month,
        "month_num": MONTH_TO_NUM.get(month, 0),
        "day": day,
        "time": time_,
        "country": country,
        "region": region,
        "city": city,
        "slug": slug,
        "layer": layer,
        "visibility": visibility,
        "created_by": created_by,
        "tags": list(tags or []),
        "one_liner": one_liner,
        "figures": list(figures or []),
        "flash_timepoint_id": None,
        "flash_slug": "",
        "flash_share_url": "",
        "era": era,
        "image_url": image_url,
        "created_at": created,
        "published_at": created if visibility == "public" else "",
        "source_type": source_type,
        "confidence": confidence,
        "source_run_id": "",
        "tdf_hash": hashlib.sha256(path.encode()).hexdigest(),
        "schema_version": "0.2",
        "text_model": "deepseek/deepseek-chat-v3-0324",
        "image_model": "",
        "model_provider": "openrouter",
        "model_permissiveness": "permissive",
        "generation_id": "",
        "graph_state_hash": "",
        "proposed_by": "system",
        "challenged_by": [],
        "status": status,
    }


CAESAR = "/-44/march/15/1030/italy/lazio/rome/assassination-of-julius-caesar"
RUBICON = "/-49/january/10/0600/italy/emilia-romagna/rimini/crossing-of-the-rubicon"
DECLARATION = (
    "/1776/july/4/1400/united-states/pennsylvania/philadelphia/"
    "signing-of-the-declaration-of-independence"
)
BASTILLE = "/1789/july/14/1530/france/ile-de-france/paris/storming-of-the-bastille"
HASTINGS = "/1066/october/14/0900/england/east-sussex/hastings/battle-of-hastings"
MOON = "/1969/july/20/2017/united-states/florida/cape-canaveral/apollo-11-moon-landing"
BERLIN = "/1989/november/9/1853/germany/berlin/berlin/fall-of-the-berlin-wall"
PRIVATE_CAESAR = "/-44/march/17/0900/italy/lazio/rome/brutus-private-letter-to-cicero"
PRIVATE_MOON = "/1969/july/16/0832/united-states/florida/cape-canaveral/private-launch-day-diary"


def seed_graph() -> tuple[list[Node], list[Edge]]:
    """Seven public moments, two private ones owned by users, and edges crossing the boundary."""
    base = "2026-01-0{}T12:00:00+00:00"
    nodes = [
        make_node(
            CAESAR,
            "Assassination of Julius Caesar",
            one_liner="Caesar is stabbed in the Theatre of Pompey on the Ides of March.",
            tags=["rome", "politics"],
            figures=["Julius Caesar", "Marcus Junius Brutus", "Gaius Cassius Longinus"],
            era="Roman Republic",
            confidence=0.97,
            status="verified",
            created_at=base.format(1),
        ),
        make_node(
            RUBICON,
            "Crossing of the Rubicon",
            one_liner="Caesar leads the 13th Legion across the Rubicon.",
            tags=["rome", "civil-war"],
            figures=["Julius Caesar"],
            era="Roman Republic",
            confidence=0.92,
            created_at=base.format(2),
        ),
        make_node(
            DECLARATION,
            "Signing of the Declaration of Independence",
            one_liner="Delegates of the Second Continental Congress adopt the Declaration.",
            tags=["revolution", "usa"],
            figures=["Thomas Jefferson", "John Adams", "Benjamin Franklin"],
            era="American Revolution",
            confidence=0.95,
            created_at=base.format(3),
        ),
        make_node(
            BASTILLE,
            "Storming of the Bastille",
            one_liner="Parisians seize the Bastille fortress and its gunpowder.",
            tags=["revolution", "france"],
            figures=["Bernard-Rene de Launay"],
            era="French Revolution",
            confidence=0.94,
            image_url="https://images.example/bastille.png",
            created_at=base.format(4),
        ),
        make_node(
            HASTINGS,
            "Battle of Hastings",
            one_liner="William of Normandy defeats Harold II.",
            tags=["england", "battle"],
            figures=["William the Conqueror", "Harold Godwinson"],
            era="Middle Ages",
            confidence=0.9,
            created_at=base.format(5),
        ),
        make_node(
            MOON,
            "Apollo 11 Moon Landing",
            one_liner="Armstrong and Aldrin land the Eagle in the Sea of Tranquility.",
            tags=["space", "usa"],
            figures=["Neil Armstrong", "Buzz Aldrin", "Michael Collins"],
            era="Space Age",
            confidence=0.99,
            status="verified",
            created_at=base.format(6),
        ),
        make_node(
            BERLIN,
            "Fall of the Berlin Wall",
            one_liner="Border crossings open and crowds climb the Wall.",
            tags=["cold-war", "germany"],
            figures=["Gunter Schabowski"],
            era="Cold War",
            confidence=0.96,
            created_at=base.format(7),
        ),
        make_node(
            PRIVATE_CAESAR,
            "Brutus's private letter to Cicero",
            one_liner="A private draft: Brutus justifies the conspiracy to Cicero.",
            visibility="private",
            created_by=PRIVATE_OWNER_A,
            layer=2,
            tags=["rome", "private-draft"],
            figures=["Marcus Junius Brutus", "Cicero"],
            source_type="generated",
            confidence=0.6,
            created_at=base.format(8),
        ),
        make_node(
            PRIVATE_MOON,
            "Private launch-day diary",
            one_liner="A private draft: a flight controller's diary on launch morning.",
            visibility="private",
            created_by=PRIVATE_OWNER_B,
            layer=2,
            tags=["space", "private-draft"],
            figures=["Gene Kranz"],
            source_type="generated",
            confidence=0.55,
            created_at=base.format(9),
        ),
    ]
    edges = [
        make_edge(
            RUBICON, CAESAR, "causes", 0.9, "power", "The civil war ends with Caesar as dictator."
        ),
        make_edge(
            CAESAR,
            PRIVATE_CAESAR,
            "causes",
            0.8,
            "aftermath",
            "Private follow-up draft.",
            PRIVATE_OWNER_A,
        ),
        make_edge(
            PRIVATE_MOON, MOON, "precedes", 0.7, "space", "Private prequel draft.", PRIVATE_OWNER_B
        ),
        make_edge(
            DECLARATION, BASTILLE, "influences", 0.6, "revolution", "Ideas cross the Atlantic."
        ),
        make_edge(BASTILLE, BERLIN, "thematic", 0.4, "revolution", "Crowds topple a symbol."),
    ]
    return nodes, edges


def make_edge(
    source: str,
    target: str,
    edge_type: str = "causes",
    weight: float = 1.0,
    theme: str = "",
    description: str = "",
    created_by: str = "system",
) -> Edge:
    return {
        "source": source,
        "target": target,
        "edge_type": edge_type,
        "weight": weight,
        "theme": theme,
        "description": description,
        "created_by": created_by,
    }


def _list_item(n: Node) -> dict[str, Any]:
    # List items: month as a name, and four fields that are never filled in (B2).
    return {
        "path": n["path"],
        "name": n["name"],
        "one_liner": n["one_liner"],
        "year": n["year"],
        "month": n["month"],
        "day": n["day"],
        "country": n["country"],
        "region": n["region"],
        "city": n["city"],
        "source_type": n["source_type"],
        "confidence": n["confidence"],
        "status": n["status"],
        "image_url": None,
        "schema_version": "0.1",
        "text_model": "",
        "image_model": "",
    }


def _summary(n: Node) -> dict[str, Any]:
    return {
        "path": n["path"],
        "name": n["name"],
        "one_liner": n["one_liner"],
        "year": n["year"],
        "month": n["month_num"],
        "day": n["day"],
        "layer": n["layer"],
        "visibility": n["visibility"],
        "source_type": n["source_type"],
        "image_url": n["image_url"],
    }


def _ilike(pattern: str) -> re.Pattern[str]:
    # SQL ILIKE '%q%': % and _ in the user's query act as wildcards too.
    body = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.compile(".*" + body + ".*", re.IGNORECASE | re.DOTALL)


class ClockchainPeer:
    """ASGI app imitating timepoint-clockchain. Knobs are plain attributes."""

    def __init__(
        self,
        *,
        service_key: str | None = "clockchain-service-key",
        rate_limit_public: int = 60,
        rate_limit_auth_read: int = 300,
        rate_limit_shared: bool = False,
        seed: bool = True,
    ) -> None:
        self.service_key = service_key or ""
        self.rate_limit_public = rate_limit_public  # per minute; <= 0 disables
        self.rate_limit_auth_read = rate_limit_auth_read
        # slowapi keeps one counter per decorated route; True = one counter for all of them.
        self.rate_limit_shared = rate_limit_shared

        self.url: str | None = None  # set by whoever serves the peer (tests' convenience)

        # --- test knobs ---
        self.fail_next: int = 0
        self.delay: float = 0.0
        # Not v0.2.0's behaviour (upstreams.md B4: today and random always filter to public):
        # a regression that draws them from every node, so a test exercises the gateway's own
        # filter rather than the peer's. See also `add_private_moment_today`.
        self.leak_private_summaries: bool = False
        # Every JSON answer gets `UNKNOWN_FIELDS` in each of its objects (no part of the
        # contract is free-form).
        self.unknown_fields: bool = False

        self.lock = threading.Lock()
        self.nodes: dict[str, Node] = {}
        self.edges: list[Edge] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.agents: dict[str, dict[str, Any]] = {}
        self._buckets: dict[tuple[str, str], tuple[float, int]] = {}
        self._log = RequestLog()
        if seed:
            nodes, edges = seed_graph()
            for node in nodes:
                self.nodes[node["path"]] = node
            self.edges.extend(edges)

        r = Router()
        r.add("GET", "/", self._root)
        r.add("GET", "/health", self._health)
        r.add("GET", "/openapi.json", self._openapi)
        r.add("GET", "/docs", self._docs)
        r.add("GET", "/redoc", self._docs)
        for method in ("GET", "POST", "DELETE"):
            r.add(method, "/mcp", self._mcp)
            r.add(method, "/mcp/{rest:path}", self._mcp)
        # Same order as the real app: public router first, so GET /moments/{path:path}
        # shadows /moments/{p}/history and /challenges (pitfall 20).
        r.add("GET", API + "/moments", self._list)
        r.add("GET", API + "/moments/{path:path}", self._detail)
        r.add("GET", API + "/stats", self._stats)
        r.add("POST", API + "/moments/propose", self._write_ok)
        r.add("POST", API + "/moments/{path:path}/challenge", self._write_ok)
        r.add("POST", API + "/moments/{path:path}/verify", self._write_ok)
        r.add("POST", API + "/moments/{path:path}/reconcile", self._write_ok)
        r.add("GET", API + "/moments/{path:path}/challenges", self._write_ok)
        r.add("GET", API + "/moments/{path:path}/history", self._write_ok)
        r.add("GET", API + "/browse", self._browse)
        r.add("GET", API + "/browse/{path:path}", self._browse)
        r.add("GET", API + "/today", self._today)
        r.add("GET", API + "/random", self._random)
        r.add("GET", API + "/search", self._search)
        r.add("GET", API + "/graph/neighbors/{path:path}", self._neighbors)
        r.add("POST", API + "/generate", self._generate)
        r.add("GET", API + "/jobs/{job_id}", self._job)
        r.add("POST", API + "/moments/{path:path}/publish", self._publish)
        r.add("POST", API + "/bulk-generate", self._bulk_generate)
        r.add("POST", API + "/expand-once", self._write_ok)
        r.add("POST", API + "/index", self._write_ok)
        r.add("POST", API + "/ingest/subgraph", self._write_ok)
        r.add("POST", API + "/ingest/tdf", self._write_ok)
        r.add("POST", API + "/agents/register", self._agent_register)
        r.add("GET", API + "/agents", self._agents)
        r.add("DELETE", API + "/agents/{agent_id}", self._agent_delete)
        self.router = r

    # ------------------------------------------------------------------ ASGI entry point

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        req = await read_request(scope, receive, send)
        self._log.add(record(req))
        resp = await self._handle(req)
        if resp is not None:
            if self.unknown_fields:
                add_unknown_fields(resp, lambda key, value: False)
            await send_response(send, resp, head_only=req.method == "HEAD")

    async def _handle(self, req: Request) -> Response | None:
        if req.path not in HEALTH_PATHS:
            if self.delay > 0:
                await asyncio.sleep(self.delay)
            with self.lock:
                failing = self.fail_next > 0
                if failing:
                    self.fail_next -= 1
            if failing:
                # No custom handler: Starlette's plain-text 500.
                return text_response(500, "Internal Server Error")
        return await self.router.dispatch(req)

    # ------------------------------------------------------------------ B1 auth, B5 limits

    def _check_key(
        self, req: Request, required: bool, errors: ErrorList
    ) -> tuple[bool, Response | None]:
        """Returns (a valid key was sent, early response). A missing required key is a 422 item."""
        key = req.headers.get("x-service-key")
        if key is None:
            if required:
                errors.append(missing(["header", "X-Service-Key"]))
            return False, None
        if not self.service_key:
            return False, json_response(503, {"detail": "Service key not configured"})
        if not key.isascii():
            # hmac.compare_digest raises on non-ASCII str -> unhandled -> plain 500.
            return False, text_response(500, "Internal Server Error")
        if not hmac.compare_digest(key, self.service_key):
            return False, json_response(403, {"detail": "Invalid service key"})
        return True, None

    def _limited(self, req: Request, route: str, limit: int) -> Response | None:
        if limit <= 0:
            return None
        key = req.headers.get("x-service-key")
        if key is not None:
            ident = hashlib.sha256(key.encode("latin-1")).hexdigest()
        else:
            ident = req.client_ip  # X-Forwarded-For is ignored
        bucket = (ident, "*" if self.rate_limit_shared else route)
        now = time.monotonic()
        with self.lock:
            start, count = self._buckets.get(bucket, (now, 0))
            if now - start >= 60.0:  # fixed one-minute window from the first hit
                start, count = now, 0
            count += 1
            self._buckets[bucket] = (start, count)
        if count > limit:
            return json_response(429, {"detail": f"{limit} per 1 minute"})
        return None

    # ------------------------------------------------------------------ system routes

    async def _root(self, req: Request) -> Response:
        if "text/html" in req.headers.get("accept", ""):
            return Response(302, b"", [(b"location", b"https://timepointai.com")])
        return json_response(200, {"service": "timepoint-clockchain", "version": VERSION})

    async def _health(self, req: Request) -> Response:
        with self.lock:
            body = {
                "status": "healthy",
                "service": "timepoint-clockchain",
                "nodes": len(self.nodes),
                "edges": len(self.edges),
            }
        return json_response(200, body)

    async def _openapi(self, req: Request) -> Response:
        info = {"title": "TIMEPOINT Clockchain", "version": VERSION}
        return json_response(200, {"openapi": "3.1.0", "info": info, "paths": {}})

    async def _docs(self, req: Request) -> Response:
        html = b"<!DOCTYPE html><html><head><title>TIMEPOINT Clockchain</title></head></html>"
        return Response(200, html, [(b"content-type", b"text/html; charset=utf-8")])

    async def _mcp(self, req: Request) -> Response:
        # Unauthenticated in the real app (B3); only here so tests can see it is never reached.
        return json_response(200, {"jsonrpc": "2.0", "id": None, "result": {}})

    # ------------------------------------------------------------------ B2 public routes

    async def _list(self, req: Request) -> Response:
        errors: ErrorList = []
        _, early = self._check_key(req, False, errors)
        if early:
            return early
        q = req.query
        limit = coerce_int(q.get("limit", 20), ["query", "limit"], errors, ge=1, le=100)
        offset = coerce_int(q.get("offset", 0), ["query", "offset"], errors, ge=0)
        year_from = self._opt_int(q, "year_from", errors)
        year_to = self._opt_int(q, "year_to", errors)
        min_conf = None
        if q.get("min_confidence") is not None:
            min_conf = coerce_float(q["min_confidence"], ["query", "min_confidence"], errors)
        if errors or limit is None or offset is None:
            return validation_error(errors)
        limited = self._limited(req, "list_moments", self.rate_limit_public)
        if limited:
            return limited
        entity = (q.get("entity") or "").lower()
        text = (q.get("q") or "").lower()
        status = q.get("status")
        with self.lock:
            rows = [n for n in self.nodes.values() if n["visibility"] == "public"]
        if year_from is not None:
            rows = [n for n in rows if n["year"] is not None and n["year"] >= year_from]
        if year_to is not None:
            rows = [n for n in rows if n["year"] is not None and n["year"] <= year_to]
        if entity:
            rows = [n for n in rows if entity in n["name"].lower()]
        if text:
            rows = [n for n in rows if text in n["name"].lower() or text in n["one_liner"].lower()]
        if min_conf is not None:
            rows = [n for n in rows if n["confidence"] is not None and n["confidence"] >= min_conf]
        if status:
            rows = [n for n in rows if n["status"] == status]
        if q.get("sort", "year") == "year":
            rows.sort(key=lambda n: (n["year"] is None, n["year"] or 0, n["path"]))
        else:
            rows.sort(key=lambda n: n["created_at"], reverse=True)
        items = [_list_item(n) for n in rows[offset : offset + limit]]
        return json_response(
            200, {"items": items, "total": len(rows), "limit": limit, "offset": offset}
        )

    @staticmethod
    def _opt_int(q: dict[str, str], name: str, errors: ErrorList) -> int | None:
        if q.get(name) is None:
            return None
        return coerce_int(q[name], ["query", name], errors)

    async def _detail(self, req: Request) -> Response:
        errors: ErrorList = []
        has_key, early = self._check_key(req, False, errors)
        if early:
            return early
        limited = self._limited(req, "get_moment_detail", self.rate_limit_public)
        if limited:
            return limited
        path = normalize_path(req.params["path"])
        with self.lock:
            node = self.nodes.get(path)
            if node is None or (node["visibility"] != "public" and not has_key):
                return json_response(404, {"detail": "Moment not found"})
            # With a valid key every node is returned, whoever owns it (pitfall 18).
            body = dict(node)
            neighbors = self._neighbors_of(path)
        if req.query.get("format") == "tdf":
            return json_response(200, self._tdf(body))
        body["month"] = body["month_num"] or MONTH_TO_NUM.get(body["month"], 0)
        # Edges are not filtered by visibility and always name this node as source (pitfall 19).
        body["edges"] = [
            {
                "source": path,
                "target": e["path"],
                "edge_type": e["edge_type"],
                "weight": e["weight"],
                "theme": e["theme"],
            }
            for e in neighbors
        ]
        return json_response(200, body)

    @staticmethod
    def _tdf(node: Node) -> dict[str, Any]:
        payload = {k: v for k, v in node.items() if k != "edges"}
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        return {
            "id": node["path"],
            "version": "1.0.0",
            "source": "clockchain",
            "timestamp": node["created_at"],
            "provenance": {
                "generator": f"timepoint-clockchain/{VERSION}",
                "run_id": node["source_run_id"] or None,
                "confidence": node["confidence"],
                "flash_id": node["flash_timepoint_id"],
            },
            "payload": payload,
            "tdf_hash": digest,
        }

    def _neighbors_of(self, path: str) -> list[dict[str, Any]]:
        # Caller holds self.lock. Both directions; direction is not reported.
        out: list[dict[str, Any]] = []
        for e in self.edges:
            if e["source"] == path:
                other = e["target"]
            elif e["target"] == path:
                other = e["source"]
            else:
                continue
            node = self.nodes.get(other)
            if node is None:
                continue
            out.append(
                {
                    "path": other,
                    "name": node["name"],
                    "edge_type": e["edge_type"],
                    "weight": e["weight"],
                    "theme": e["theme"],
                    "description": e["description"],
                    "created_by": node["created_by"],
                }
            )
        return out

    async def _stats(self, req: Request) -> Response:
        errors: ErrorList = []
        _, early = self._check_key(req, False, errors)
        if early:
            return early
        limited = self._limited(req, "public_stats", self.rate_limit_public)
        if limited:
            return limited
        with self.lock:
            nodes = list(self.nodes.values())  # private nodes included (pitfall 19)
            edges = list(self.edges)
        years = [n["year"] for n in nodes if n["year"] is not None]
        confs = [n["confidence"] for n in nodes if n["confidence"] is not None]

        def counts(values: list[Any]) -> dict[str, int]:
            out: dict[str, int] = {}
            for v in values:
                out[str(v)] = out.get(str(v), 0) + 1
            return out

        body = {
            "total_nodes": len(nodes),
            "total_edges": len(edges),
            "layer_counts": counts([n["layer"] for n in nodes]),
            "edge_type_counts": counts([e["edge_type"] for e in edges]),
            "source_type_counts": counts([n["source_type"] for n in nodes]),
            "date_range": {
                "min_year": min(years) if years else None,
                "max_year": max(years) if years else None,
            },
            "avg_confidence": round(sum(confs) / len(confs), 4) if confs else None,
            "last_updated": max((n["created_at"] for n in nodes), default=None),
            "nodes_with_images": sum(1 for n in nodes if n["image_url"]),
            "schema_version_counts": counts([n["schema_version"] for n in nodes]),
            "text_model_counts": counts([n["text_model"] for n in nodes if n["text_model"]]),
        }
        return json_response(200, body)

    # ------------------------------------------------------------------ B2 key-required reads

    async def _browse(self, req: Request) -> Response:
        errors: ErrorList = []
        _, early = self._check_key(req, True, errors)
        if early:
            return early
        if errors:
            return validation_error(errors)
        raw = req.params.get("path", "")
        prefix = [s for s in raw.strip("/").split("/") if s] if raw.strip("/") else []
        depth = len(prefix)
        tally: dict[str, int] = {}
        with self.lock:
            for n in self.nodes.values():
                if n["visibility"] != "public":
                    continue
                segs = n["path"].strip("/").split("/")
                if len(segs) > depth and segs[:depth] == prefix:
                    tally[segs[depth]] = tally.get(segs[depth], 0) + 1
        items = [{"segment": s, "count": tally[s], "label": s} for s in sorted(tally)]
        return json_response(200, {"prefix": "/" + raw.strip("/"), "items": items})

    async def _today(self, req: Request) -> Response:
        errors: ErrorList = []
        _, early = self._check_key(req, True, errors)
        if early:
            return early
        if errors:
            return validation_error(errors)
        today = datetime.now(UTC)
        with self.lock:
            events = [
                _summary(n)
                for n in self.nodes.values()
                if (n["visibility"] == "public" or self.leak_private_summaries)
                and n["month_num"] == today.month
                and n["day"] == today.day
            ]
        return json_response(200, {"month": today.month, "day": today.day, "events": events})

    async def _random(self, req: Request) -> Response:
        errors: ErrorList = []
        _, early = self._check_key(req, True, errors)
        if early:
            return early
        if errors:
            return validation_error(errors)
        with self.lock:
            pool = [
                n
                for n in self.nodes.values()
                if (n["visibility"] == "public" or self.leak_private_summaries) and n["layer"] >= 1
            ]
        if not pool:
            return json_response(404, {"detail": "No public moments available"})
        return json_response(200, _summary(random.choice(pool)))

    async def _search(self, req: Request) -> Response:
        errors: ErrorList = []
        _, early = self._check_key(req, True, errors)
        if early:
            return early
        q = req.query.get("q")
        if q is None:
            errors.append(missing(["query", "q"]))
        else:
            q = coerce_str(q, ["query", "q"], errors, min_length=1)
        if errors or q is None:
            return validation_error(errors)
        pattern = _ilike(q)
        scored: list[tuple[float, Node]] = []
        with self.lock:
            for n in self.nodes.values():
                if n["visibility"] != "public":
                    continue
                if pattern.fullmatch(n["name"]):
                    scored.append((1.0, n))
                elif pattern.fullmatch(n["one_liner"]):
                    scored.append((0.7, n))
                elif any(pattern.fullmatch(t) for t in [*n["tags"], *n["figures"]]):
                    scored.append((0.4, n))
        scored.sort(key=lambda item: (-item[0], item[1]["name"]))
        body = [
            {
                "path": n["path"],
                "name": n["name"],
                "one_liner": n["one_liner"],
                "score": score,
                "image_url": n["image_url"],
            }
            for score, n in scored[:20]
        ]
        return json_response(200, body)

    async def _neighbors(self, req: Request) -> Response:
        errors: ErrorList = []
        _, early = self._check_key(req, True, errors)
        if early:
            return early
        if errors:
            return validation_error(errors)
        limited = self._limited(req, "get_neighbors", self.rate_limit_auth_read)
        if limited:
            return limited
        path = normalize_path(req.params["path"])
        with self.lock:
            if path not in self.nodes:
                return json_response(404, {"detail": "Node not found"})
            # No visibility filtering at all, not even of the node itself (pitfall 19).
            body = self._neighbors_of(path)
        return json_response(200, body)

    # ------------------------------------------------------------------ B3 never-exposed routes

    async def _keyed(self, req: Request) -> Response | None:
        errors: ErrorList = []
        _, early = self._check_key(req, True, errors)
        if early:
            return early
        if errors:
            return validation_error(errors)
        return None

    async def _write_ok(self, req: Request) -> Response:
        return await self._keyed(req) or json_response(200, {"status": "ok"})

    async def _generate(self, req: Request) -> Response:
        early = await self._keyed(req)
        if early:
            return early
        try:
            data = json.loads(req.body or b"{}")
        except ValueError:
            data = {}
        job_id = str(uuid.uuid4())
        job = {
            "job_id": job_id,
            "status": "pending",
            "query": data.get("query") if isinstance(data, dict) else None,
            "created_by": req.headers.get("x-user-id") or "system",
        }
        with self.lock:
            self.jobs[job_id] = job
        return json_response(200, {"job_id": job_id, "status": "pending"})

    async def _job(self, req: Request) -> Response:
        early = await self._keyed(req)
        if early:
            return early
        with self.lock:
            job = self.jobs.get(req.params["job_id"])
        if job is None:
            return json_response(404, {"detail": "Job not found"})
        return json_response(200, job)  # no ownership check (B3)

    async def _publish(self, req: Request) -> Response:
        early = await self._keyed(req)
        if early:
            return early
        path = normalize_path(req.params["path"])
        with self.lock:
            node = self.nodes.get(path)
            if node is None:
                return json_response(404, {"detail": "Moment not found"})
            node["visibility"] = "public"  # no owner check (B3)
            node["published_at"] = _now_iso()
        return json_response(200, {"path": path, "visibility": "public"})

    async def _bulk_generate(self, req: Request) -> Response:
        early = await self._keyed(req)
        if early:
            return early
        if "x_admin_key" not in req.query:
            return validation_error([missing(["query", "x_admin_key"])])
        return json_response(403, {"detail": "Invalid admin key"})

    async def _agent_register(self, req: Request) -> Response:
        # No service-key gate; in legacy mode anyone gets an admin token (pitfall 23).
        agent_id = str(uuid.uuid4())
        token = "agt_" + uuid.uuid4().hex
        with self.lock:
            self.agents[agent_id] = {"agent_id": agent_id, "permissions": "admin"}
        body = {"agent_id": agent_id, "token": token, "permissions": "admin"}
        return json_response(200, body)

    async def _agents(self, req: Request) -> Response:
        with self.lock:
            return json_response(200, list(self.agents.values()))

    async def _agent_delete(self, req: Request) -> Response:
        with self.lock:
            self.agents.pop(req.params["agent_id"], None)
        return json_response(200, {"revoked": True})

    # ------------------------------------------------------------------ test helpers

    @property
    def requests(self) -> list[RecordedRequest]:
        return self._log.snapshot()

    def reset_requests(self) -> None:
        self._log.clear()

    def requests_to(self, path_prefix: str) -> list[RecordedRequest]:
        return [r for r in self._log.snapshot() if r.path.startswith(path_prefix)]

    def reset_rate_limits(self) -> None:
        with self.lock:
            self._buckets.clear()

    def add_node(self, path: str, name: str = "", **fields: Any) -> str:
        """Add (or replace) a node; keyword args are those of :func:`make_node`."""
        node = make_node(path, name or path.rsplit("/", 1)[-1].replace("-", " ").title(), **fields)
        with self.lock:
            self.nodes[path] = node
        return path

    def add_private_moment_today(self, owner: str = PRIVATE_OWNER_A) -> str:
        """A private moment dated today (UTC), the day `/today` answers for; returns its path."""
        today = datetime.now(UTC)
        path = (
            f"/{today.year}/{MONTHS[today.month - 1]}/{today.day}/0700/italy/lazio/rome/"
            "private-diary-entry-of-today"
        )
        return self.add_node(
            path,
            "Private diary entry of today",
            one_liner="A private draft dated today.",
            visibility="private",
            created_by=owner,
            layer=2,
            tags=["private-draft"],
            source_type="generated",
        )

    def add_edge(self, source: str, target: str, **fields: Any) -> None:
        with self.lock:
            self.edges.append(make_edge(source, target, **fields))

    def node(self, path: str) -> Node | None:
        with self.lock:
            node = self.nodes.get(path)
            return dict(node) if node else None
