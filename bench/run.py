"""The gateway's cost, measured against the direct upstream in the same run.

    python bench/run.py            # full run (4-6 minutes): prints the table, writes JSON
    python bench/run.py --smoke    # under a minute: keeps the benchmark working in CI
    python bench/run.py --usage-writer   # the usage writer's rows/s into one PostgreSQL (alone)

Starts on loopback: the contract peers as the upstream stub (`python -m devpeers`), nginx
`proxy_pass` in front of it as the plain-reverse-proxy reference (skipped if nginx is absent), and
the gateway as production runs it (gunicorn + UvicornWorker, 2 workers, DEBUG off, LOG_LEVEL=INFO,
PostgreSQL + Redis when they answer). Load comes from `wrk` (Debian's package) and, for SSE and
exact counts, an asyncio httpx client in this process. Figures are ratios against the direct
upstream in the same run, so they hold on a noisy machine; so does the gateway's CPU time per
relayed request (its workers' user + system time over the loaded run / requests answered), which
does not depend on the share of the cores other processes leave it. The 1-minute load average is
printed beside it.

Phases, each announced with the seconds elapsed: loaded (64 connections) and unloaded (1)
relays of a Clockchain read with the Clockchain cache off (the relay is measured), SSE streams,
exactly 2 000 metered requests, the RSS soak (until 100 000 requests or `--soak-seconds`, one line
per 10 s slice), then the same reads through a second gateway with the Clockchain cache on.

The smoke run fails only on broken plumbing (non-2xx answers, socket errors, lost usage records),
never on a performance target; the full run exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from upstreams.flash import sign  # noqa: E402  (the same signing the gateway uses)

FLASH_SERVICE_KEY = "bench-flash-service-key"
FLASH_ADMIN_KEY = "bench-flash-admin-key"
FLASH_SIGNING_SECRET = "bench-flash-signing-secret"
CLOCKCHAIN_SERVICE_KEY = "bench-clockchain-service-key"
READ_PATH = "/api/v1/browse"  # a Clockchain read (key required upstream), same path on both
FLASH_STREAM_PATH = "/api/v1/timepoints/generate/stream"
GATEWAY_STREAM_PATH = "/api/v1/generate/stream"
STREAM_BODY = {"query": "The signing of the Magna Carta", "preset": "balanced"}
REDIS_BENCH_URL = "redis://127.0.0.1:6379/9"

# Issue 17's goals. The CPU figure's is half of what the last run before that issue measured
# (1.71 ms of worker CPU per relayed request, README "Performance").
TARGETS: dict[str, tuple[str, float]] = {
    "relay_vs_direct": (">=", 0.25),
    "relay_vs_nginx": (">=", 0.30),
    "added_p50_ms": ("<=", 1.5),
    "added_p99_ms": ("<=", 5.0),
    "gateway_p99_64c_ms": ("<=", 150.0),
    "sse_added_ttfe_ms": ("<=", 10.0),
    "sse_streams_vs_direct": (">=", 0.70),
    "rss_mb_per_worker": ("<=", 100.0),
    "rss_growth_mb": ("<=", 5.0),
    "gateway_cpu_ms_per_request": ("<=", 0.855),
    "usage_records_lost": ("<=", 0),
    "burst_admitted_over_limit": ("<=", 0),
}
# The burst: more requests than the key's daily limit, all at once; exactly the limit must pass.
# (The day's window: a minute's could turn over during the burst and honestly admit more.)
BURST_LIMIT = 300
BURST_REQUESTS = 500
RATIOS = ("relay_vs_direct", "relay_vs_nginx", "sse_streams_vs_direct")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up within {timeout}s")


class Processes:
    """Child processes, each in its own session so a stop takes its children (gunicorn workers)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as handle:
            proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        """Newest first, each one stopped before the next: a gateway drains its last requests
        while the upstream peers still answer them (stopped together, they ended in 502s)."""
        for proc in reversed(list(self.procs)):
            self.stop(proc)


# --- load generation ------------------------------------------------------------------------------
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not match:
        return float("nan")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _found(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"unexpected wrk output (no {pattern!r}):\n{text}")
    return match.group(1)


def wrk(url: str, *, connections: int, seconds: float, headers: dict[str, str]) -> dict[str, Any]:
    """One wrk run: requests/s, p50/p99 (ms), requests completed, non-2xx and socket errors."""
    argv = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    argv += ["--latency", "--timeout", "5s"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(_found(r"Requests/sec:\s+([\d.]+)", out)),
        "p50_ms": _ms(_found(r"\s50%\s+(\S+)", out)),
        "p99_ms": _ms(_found(r"\s99%\s+(\S+)", out)),
        "requests": int(_found(r"(\d+) requests in", out)),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(n) for n in errors.groups()) if errors else 0,
    }


async def _stream_once(
    client: httpx.AsyncClient, url: str, headers: dict[str, str]
) -> tuple[float, int]:
    """(time to first event in ms, events) for one SSE request read to the end."""
    started = time.perf_counter()
    first = 0.0
    events = 0
    async with client.stream("POST", url, json=STREAM_BODY, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(
                f"stream answered {response.status_code}: {await response.aread()!r}"
            )
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                if not events:
                    first = (time.perf_counter() - started) * 1000
                events += 1
    if not events:
        raise RuntimeError(f"stream from {url} carried no event")
    return first, events


HeadersFn = Callable[[], dict[str, str]]


async def sse_ttfe(url: str, headers_fn: HeadersFn, count: int) -> float:
    """Median time to the first event over `count` sequential streams (one connection)."""
    async with httpx.AsyncClient(timeout=30) as client:
        await _stream_once(client, url, headers_fn())  # connect outside the measurement
        samples = [(await _stream_once(client, url, headers_fn()))[0] for _ in range(count)]
    return statistics.median(samples)


async def sse_throughput(
    url: str, headers_fn: HeadersFn, concurrency: int, seconds: float
) -> float:
    """Whole streams per second with `concurrency` clients streaming back to back."""
    done = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await _stream_once(client, url, headers_fn())
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - started)


async def exact_requests(
    url: str, headers: dict[str, str], count: int, concurrency: int
) -> dict[int, int]:
    """Send exactly `count` requests; how many were answered with each status."""
    statuses: dict[int, int] = {}
    remaining = count
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                response = await client.get(url, headers=headers)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def worker_pids(master_pid: int) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-P", str(master_pid)], capture_output=True, text=True, check=False
    ).stdout
    return sorted(int(pid) for pid in out.split())


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes used so far, all their threads (the usage flusher's
    included): /proc/<pid>/stat fields 14 and 15, in clock ticks."""
    ticks = 0
    for pid in pids:
        with suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_mb(pids: list[int]) -> list[float]:
    sizes = []
    for pid in pids:
        with suppress(OSError, AttributeError):
            status = Path(f"/proc/{pid}/status").read_text()
            kb = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
            sizes.append(round(kb / 1024, 1))
    return sizes


# --- the gateway's database and the bench caller ------------------------------------------------
def _psql(sql: str) -> subprocess.CompletedProcess[bytes]:
    argv = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc", sql]
    return subprocess.run(argv, check=False, capture_output=True)


def database_url(workdir: Path, use_services: bool) -> tuple[str, str | None]:
    """A fresh PostgreSQL database `tpb_bench_*` when PostgreSQL answers, else SQLite."""
    ready = ["pg_isready", "-h", "127.0.0.1", "-q"]
    if use_services and shutil.which("pg_isready") and subprocess.run(ready).returncode == 0:
        name = f"tpb_bench_{int(time.time())}_{os.getpid()}"
        if _psql(f"CREATE DATABASE {name}").returncode == 0:
            return f"postgres://postgres@127.0.0.1:5432/{name}", name
        print("bench: could not create a PostgreSQL database; using SQLite")
    return f"sqlite:///{workdir / 'bench.sqlite3'}", None


def redis_url(use_services: bool) -> str:
    """Redis db 9 (flushed) when Redis answers, else "" (the in-process limiter, one process)."""
    if not use_services:
        return ""
    with suppress(Exception):
        import redis

        client = redis.Redis.from_url(REDIS_BENCH_URL, socket_timeout=0.5)
        client.flushdb()
        return REDIS_BENCH_URL
    print("bench: Redis is not answering; the limiter runs in-process")
    return ""


# A fresh database each run, so `setup_database` builds it from the models in seconds (replaying
# dj-stripe's migrations takes most of a minute and adds nothing to what is measured).
SETUP_SCRIPT = """
import json, os, sys
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "timepoint_billing.settings")
django.setup()
from django.core.management import call_command
from django.db import transaction

call_command("setup_database", verbosity=0)

from accounts.models import User
from apikeys import services as keys
from upstreams import flash

flash_id = flash.resolve_user(external_id="auth0|bench", email="bench@example.com")
user, _ = User.objects.get_or_create(
    username="auth0|bench",
    defaults={"auth0_sub": "auth0|bench", "flash_user_id": flash_id, "plan": "api_pro",
              "tier": "enterprise"},
)
flash.admin_grant(flash_user_id=flash_id, amount=10**9, transaction_type="admin_grant",
                  description="bench credits")
out = {"flash_user_id": flash_id}
for label in ("load", "exact", "burst"):
    with transaction.atomic():
        key, raw = keys.key_create(user=user, name=f"bench {label}", mode="live")
        # Limits far above what the bench sends: the limiter runs on every request, never
        # refuses; but for the burst key, whose day allows BURST_LIMIT (argv) requests.
        key.rate_limit_per_minute = 10**9
        key.rate_limit_per_day = int(sys.argv[1]) if label == "burst" else 10**9
        key.concurrency_limit = 100_000
        key.save(update_fields=["rate_limit_per_minute", "rate_limit_per_day",
                                "concurrency_limit"])
    out[label] = {"key": raw, "key_id": key.pk}
print(json.dumps(out))
"""

COUNT_SCRIPT = """
import os, sys
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "timepoint_billing.settings")
django.setup()
from metering.models import UsageRecord
print(UsageRecord.objects.filter(api_key_id=int(sys.argv[1])).count())
"""


def usage_count(env: dict[str, str], key_id: int) -> int:
    argv = [sys.executable, "-c", COUNT_SCRIPT, str(key_id)]
    out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def wait_usage(env: dict[str, str], key_id: int, expected: int, timeout: float = 15.0) -> int:
    """Records are flushed in batches about once a second; wait (bounded) for them, then make sure
    no extra ones trail in."""
    deadline = time.monotonic() + timeout
    count = usage_count(env, key_id)
    while count < expected and time.monotonic() < deadline:
        time.sleep(0.5)
        count = usage_count(env, key_id)
    time.sleep(1.5)
    return usage_count(env, key_id)


# --- the usage writer alone (`--usage-writer`) ----------------------------------------------------
# Each writer process queues `rows` records the way the relay does (`record_usage`), then times
# `flush_usage()`, the background flusher's own call (batches of FLUSH_BATCH_SIZE, exactly-once
# on request_id), and counts what landed. Writers start together at `start_at`, each on its own
# connection, as each gateway worker's flusher has.
USAGE_WRITER_SCRIPT = """
import json, os, sys, time
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "timepoint_billing.settings")
django.setup()
if sys.argv[1] == "setup":
    from django.core.management import call_command
    call_command("setup_database", verbosity=0)
    raise SystemExit(0)
from accounts.models import User
from apikeys import services as keys
from metering import services as metering
from metering.models import UsageRecord

rows, tag, start_at = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
user = User.objects.create(username=f"usage-writer-{tag}")
key, _ = keys.key_create(user=user, name=f"usage writer {tag}")

def queue(prefix, count):
    for i in range(count):
        metering.record_usage(
            request_id=f"{prefix}-{i}", user_id=user.pk, api_key_id=key.pk,
            endpoint="/api/v1/browse", method="GET", status=200, credits_spent=0,
            response_time_ms=1.234, upstream="clockchain", service="clockchain",
        )

queue(f"{tag}-warm", 1000)
metering.flush_usage()  # the connection, the statement, the caches
queue(tag, rows)
time.sleep(max(0.0, start_at - time.time()))
cpu, wall = time.process_time(), time.perf_counter()
flushed = metering.flush_usage()
cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
stored = UsageRecord.objects.filter(api_key=key).count() - 1000
print(json.dumps({"rows": flushed, "wall_s": wall, "cpu_s": cpu, "stored": stored}))
"""


def _usage_writers(env: dict[str, str], writers: int, rows: int) -> dict[str, Any]:
    """`writers` processes flushing `rows` records each at once: rows/s into the database (all
    rows / the slowest writer's time) and each writer's CPU time per row."""
    start_at = time.time() + 3.0 + writers  # every process imported Django and queued its rows
    argv = [sys.executable, "-c", USAGE_WRITER_SCRIPT, str(rows)]
    procs = [
        subprocess.Popen(
            [*argv, f"w{writers}-{n}-{time.time_ns()}", str(start_at)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
        )
        for n in range(writers)
    ]  # fmt: skip
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"usage writer failed (exit {proc.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    total = sum(r["rows"] for r in results)
    return {
        "writers": writers,
        "rows": total,
        "stored": sum(r["stored"] for r in results),
        "rows_per_s": total / max(r["wall_s"] for r in results),
        "cpu_us_per_row": 1e6 * sum(r["cpu_s"] for r in results) / max(1, total),
    }


def usage_writer_bench(args: argparse.Namespace) -> int:
    """The usage writer's rows/s into one PostgreSQL (the README's Scaling section): one writer,
    then `--workers` writers at once. Exits 1 when a record is lost or doubled."""
    workdir = Path(tempfile.mkdtemp(prefix="tpb-bench-usage-"))
    db_url, db_name = database_url(workdir, not args.no_services)
    rows = 2_000 if args.smoke else args.usage_rows
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "REDIS_URL": "",
        "SECRET_KEY": "bench-secret-key-" + "x" * 32,
        "METERING_BACKGROUND_FLUSH": "false",  # only the timed flush writes
        "METERING_BUFFER_MAX": str(rows * 10),  # no inline flush while queueing
        "LOG_LEVEL": "WARNING",
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    try:
        setup = [sys.executable, "-c", USAGE_WRITER_SCRIPT, "setup"]
        subprocess.run(setup, cwd=ROOT, env=env, check=True)
        runs = [_usage_writers(env, 1, rows), _usage_writers(env, args.workers, rows)]
        print(f"\n== Usage writer into one {db_url.split(':')[0]} database ({rows} rows each) ==")
        print("| writers | rows | stored | rows/s | CPU µs/row |\n|---|---|---|---|---|")
        for run in runs:
            print(
                f"| {run['writers']} | {run['rows']} | {run['stored']} | "
                f"{run['rows_per_s']:.0f} | {run['cpu_us_per_row']:.1f} |"
            )
        out = Path(args.out).with_name("usage_writer.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"database": db_url.split(":")[0], "runs": runs}, indent=2))
        print(f"\nbench: wrote {out}; load average (1 min) {os.getloadavg()[0]:.2f}")
        lost = [run for run in runs if run["stored"] != run["rows"]]
        for run in lost:
            print(f"bench: BROKEN: {run['stored']} records stored for {run['rows']} written")
        return 1 if lost else 0
    finally:
        if db_name:
            _psql(f"DROP DATABASE IF EXISTS {db_name}")
        shutil.rmtree(workdir, ignore_errors=True)


# --- the run ------------------------------------------------------------------------------------
def start_nginx(procs: Processes, workdir: Path, env: dict[str, str], port: int, up: int) -> bool:
    if not shutil.which("nginx"):
        print("bench: nginx is not installed (apt-get install nginx-light); nginx column skipped")
        return False
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""worker_processes 1; daemon off; pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/body; proxy_temp_path {workdir}/proxy;
  fastcgi_temp_path {workdir}/fastcgi; uwsgi_temp_path {workdir}/uwsgi;
  scgi_temp_path {workdir}/scgi;
  upstream clockchain {{ server 127.0.0.1:{up}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://clockchain; proxy_http_version 1.1;
                 proxy_set_header Connection ""; proxy_buffering off; }}
  }}
}}"""
    )
    procs.start(["nginx", "-c", str(conf), "-p", str(workdir)], env, workdir / "nginx.log")
    wait_http(f"http://127.0.0.1:{port}/health")
    return True


def start_gateway(
    procs: Processes, env: dict[str, str], workers: int, log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """The gateway as production runs it (gunicorn + GatewayUvicornWorker) on a free port."""
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "timepoint_billing.asgi:application"]
    argv += ["-k", "timepoint_billing.server.GatewayUvicornWorker", "-w", str(workers)]
    argv += ["-b", f"127.0.0.1:{port}", "--keep-alive", "75"]
    proc = procs.start(argv, env, log)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health")
    return proc, url


def soak(
    url: str, headers: dict[str, str], pids: list[int], total: int, seconds: float, budget: float
) -> dict[str, Any]:
    """Load the gateway in `seconds` slices until `total` requests were answered (or `budget`
    seconds passed), sampling each worker's RSS after every slice."""
    served = 0
    samples: list[dict[str, Any]] = []
    started = time.monotonic()
    non_2xx = socket_errors = 0
    while served < total and time.monotonic() - started < budget:
        run = wrk(url, connections=64, seconds=seconds, headers=headers)
        served += run["requests"]
        non_2xx += run["non_2xx"]
        socket_errors += run["socket_errors"]
        samples.append({"requests": served, "rss_mb": rss_mb(pids)})
        # One line per slice: a soak on a slow machine runs for its whole budget, which without
        # a sign of life looked like a hang after the SSE phase.
        print(
            f"bench: soak {served}/{total} requests, {run['rps']:.0f} req/s, "
            f"RSS {samples[-1]['rss_mb']} MB ({time.monotonic() - started:.0f}s "
            f"of at most {budget:.0f}s)",
            flush=True,
        )
    # Growth over the second half of the soak: warm-up (imports, pools, caches) is the first half.
    half = samples[len(samples) // 2] if samples else {"rss_mb": []}
    last = samples[-1] if samples else {"rss_mb": []}
    growth = max((b - a for a, b in zip(half["rss_mb"], last["rss_mb"], strict=False)), default=0.0)
    return {
        "requests": served,
        "non_2xx": non_2xx,
        "socket_errors": socket_errors,
        "samples": samples,
        "growth_mb": round(growth, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="a few seconds: plumbing only")
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput measurement")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--soak-requests", type=int, default=100_000, help="for the RSS figure")
    parser.add_argument(
        "--soak-seconds", type=float, default=120.0, help="the soak's budget (it stops at either)"
    )
    parser.add_argument("--no-services", action="store_true", help="SQLite, no Redis")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "latest.json"))
    parser.add_argument(
        "--usage-writer",
        action="store_true",
        help="only the usage writer's rows/s into one database (no gateway, no wrk)",
    )
    parser.add_argument("--usage-rows", type=int, default=50_000, help="per usage writer")
    args = parser.parse_args()
    if args.usage_writer:
        return usage_writer_bench(args)
    seconds = 1.0 if args.smoke else args.seconds
    if not shutil.which("wrk"):
        print("bench: wrk is not installed (apt-get install wrk); nothing measured")
        return 0 if args.smoke else 1

    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="tpb-bench-"))
    procs = Processes()
    db_url, db_name = database_url(workdir, not args.no_services)
    results: dict[str, Any] = {
        "smoke": args.smoke,
        "database": db_url.split(":")[0],
        "cpus": os.cpu_count(),
        "workers": args.workers,
        "connections": args.connections,
        "seconds": seconds,
    }
    try:
        flash_port, clock_port, nginx_port = (free_port() for _ in range(3))
        flash_url = f"http://127.0.0.1:{flash_port}"
        clock_url = f"http://127.0.0.1:{clock_port}"
        env = dict(os.environ)
        env.update(
            {
                "FLASH_SERVICE_KEY": FLASH_SERVICE_KEY,
                "FLASH_ADMIN_KEY": FLASH_ADMIN_KEY,
                "FLASH_GATEWAY_SIGNING_SECRET": FLASH_SIGNING_SECRET,
                "CLOCKCHAIN_SERVICE_KEY": CLOCKCHAIN_SERVICE_KEY,
                "CLOCKCHAIN_RATE_LIMIT_PUBLIC": "1000000000",
            }
        )
        peers = [sys.executable, "-m", "devpeers", "--flash-port", str(flash_port)]
        procs.start([*peers, "--clockchain-port", str(clock_port)], env, workdir / "peers.log")
        nginx_ok = start_nginx(procs, workdir, env, nginx_port, clock_port)
        wait_http(f"{flash_url}/health")
        wait_http(f"{clock_url}/health")

        redis = redis_url(not args.no_services)
        results["redis"] = bool(redis)
        gw_env = dict(env)
        gw_env.update(
            {
                "DATABASE_URL": db_url,
                "REDIS_URL": redis,
                "DEBUG": "false",
                "SECRET_KEY": "bench-secret-key-" + "x" * 32,
                "FLASH_URL": flash_url,
                "CLOCKCHAIN_URL": clock_url,
                "CLOCKCHAIN_CACHE_SECONDS": "0",  # measure the relay, not the cache
                "LOG_LEVEL": "INFO",  # as production: one JSON line per request
                "DB_CONN_MAX_AGE": "60",
            }
        )
        gw_env.pop("DJANGO_SETTINGS_MODULE", None)
        setup_cmd = [sys.executable, "-c", SETUP_SCRIPT, str(BURST_LIMIT)]
        setup = subprocess.run(setup_cmd, cwd=ROOT, env=gw_env, capture_output=True, text=True)
        if setup.returncode != 0:
            raise RuntimeError(f"bench setup failed:\n{setup.stdout}\n{setup.stderr}")
        caller = json.loads(setup.stdout.strip().splitlines()[-1])
        flash_user = caller["flash_user_id"]
        gateway, gw_url = start_gateway(procs, gw_env, args.workers, workdir / "gateway.log")
        print(f"bench: started in {time.monotonic() - began:.1f}s ({results['database']}, "
              f"redis={'yes' if redis else 'no'}, nginx={'yes' if nginx_ok else 'no'})",
              flush=True)  # fmt: skip

        direct_headers = {"X-Service-Key": CLOCKCHAIN_SERVICE_KEY}
        gw_headers = {"Authorization": f"Bearer {caller['load']['key']}"}
        targets = {"direct": (f"{clock_url}{READ_PATH}", direct_headers)}
        if nginx_ok:
            targets["nginx"] = (f"http://127.0.0.1:{nginx_port}{READ_PATH}", direct_headers)
        targets["gateway"] = (f"{gw_url}{READ_PATH}", gw_headers)
        # Warm up pools, caches and both workers.
        for url, headers in targets.values():
            wrk(url, connections=8, seconds=1, headers=headers)

        # The workers' CPU time over the loaded gateway run, per request answered: what a relayed
        # request costs the gateway, whatever share of the cores the machine's other load left it.
        pids = worker_pids(gateway.pid)
        loaded = {}
        for name, (url, headers) in targets.items():
            cpu_before = cpu_seconds(pids)
            loaded[name] = wrk(url, connections=args.connections, seconds=seconds, headers=headers)
            if name == "gateway":
                results["gateway_cpu_s"] = cpu_seconds(pids) - cpu_before
        print(f"bench: loaded runs done ({time.monotonic() - began:.0f}s)", flush=True)
        unloaded = {
            name: wrk(url, connections=1, seconds=seconds, headers=headers)
            for name, (url, headers) in targets.items()
        }
        print(f"bench: unloaded runs done ({time.monotonic() - began:.0f}s)", flush=True)

        flash_stream = f"{flash_url}{FLASH_STREAM_PATH}"

        def direct_stream_headers() -> dict[str, str]:
            ts = str(int(time.time()))
            signature = sign("POST", FLASH_STREAM_PATH, flash_user, ts, FLASH_SIGNING_SECRET)
            return {
                "X-Service-Key": FLASH_SERVICE_KEY,
                "X-User-Id": flash_user,
                "X-Gateway-Timestamp": ts,
                "X-Gateway-Signature": signature,
            }

        def gateway_stream_headers() -> dict[str, str]:
            return gw_headers

        gw_stream = f"{gw_url}{GATEWAY_STREAM_PATH}"
        ttfe_n = 5 if args.smoke else 40
        sse = {
            "direct_ttfe_ms": asyncio.run(sse_ttfe(flash_stream, direct_stream_headers, ttfe_n)),
            "gateway_ttfe_ms": asyncio.run(sse_ttfe(gw_stream, gateway_stream_headers, ttfe_n)),
            "direct_streams_per_s": asyncio.run(
                sse_throughput(flash_stream, direct_stream_headers, 16, seconds)
            ),
            "gateway_streams_per_s": asyncio.run(
                sse_throughput(gw_stream, gateway_stream_headers, 16, seconds)
            ),
        }
        print(f"bench: SSE runs done ({time.monotonic() - began:.0f}s)", flush=True)

        # Exactly N requests on a key of their own; each must leave exactly one usage record.
        exact_n = 200 if args.smoke else 2000
        exact_headers = {"Authorization": f"Bearer {caller['exact']['key']}"}
        exact_statuses = asyncio.run(
            exact_requests(f"{gw_url}{READ_PATH}", exact_headers, exact_n, 32)
        )
        answered = exact_statuses.get(200, 0)
        records = wait_usage(gw_env, caller["exact"]["key_id"], exact_n)
        print(
            f"bench: exact runs done: {answered} of {exact_n} answered 200, {records} usage "
            f"records ({time.monotonic() - began:.0f}s)",
            flush=True,
        )
        # A burst past a low limit, from 64 connections at once (both workers): exactly the
        # limit is admitted, the rest refused with 429, whatever the interleaving.
        burst_headers = {"Authorization": f"Bearer {caller['burst']['key']}"}
        burst = asyncio.run(
            exact_requests(f"{gw_url}{READ_PATH}", burst_headers, BURST_REQUESTS, 64)
        )
        print(f"bench: burst done: {burst} ({time.monotonic() - began:.0f}s)", flush=True)

        soak_total = 2_000 if args.smoke else args.soak_requests
        soaked = soak(
            f"{gw_url}{READ_PATH}", gw_headers, pids, soak_total,
            seconds=1 if args.smoke else 10, budget=5 if args.smoke else args.soak_seconds,
        )  # fmt: skip
        served = sum(run["requests"] for run in (loaded["gateway"], unloaded["gateway"]))
        soaked["gateway_requests_before_soak"] = served
        rss = rss_mb(pids)
        print(f"bench: soak done ({time.monotonic() - began:.0f}s)", flush=True)

        # The same relay with the Clockchain response cache on (as production runs it): the
        # gateway answers from Redis, awaited on its event loop, instead of calling Clockchain.
        procs.stop(gateway)
        cached_env = {**gw_env, "CLOCKCHAIN_CACHE_SECONDS": "10"}
        _, cached_url = start_gateway(procs, cached_env, args.workers, workdir / "cached.log")
        cached_target = f"{cached_url}{READ_PATH}"
        wrk(cached_target, connections=8, seconds=1, headers=gw_headers)  # warm-up
        cached = {
            "loaded": wrk(
                cached_target, connections=args.connections, seconds=seconds, headers=gw_headers
            ),
            "unloaded": wrk(cached_target, connections=1, seconds=seconds, headers=gw_headers),
        }
        print(f"bench: cache-on runs done ({time.monotonic() - began:.0f}s)", flush=True)

        figures: dict[str, Any] = {
            "relay_vs_direct": loaded["gateway"]["rps"] / loaded["direct"]["rps"],
            "relay_vs_nginx": loaded["gateway"]["rps"] / loaded["nginx"]["rps"]
            if nginx_ok
            else None,
            "added_p50_ms": unloaded["gateway"]["p50_ms"] - unloaded["direct"]["p50_ms"],
            "added_p99_ms": unloaded["gateway"]["p99_ms"] - unloaded["direct"]["p99_ms"],
            "gateway_p99_64c_ms": loaded["gateway"]["p99_ms"],
            "sse_added_ttfe_ms": sse["gateway_ttfe_ms"] - sse["direct_ttfe_ms"],
            "sse_streams_vs_direct": sse["gateway_streams_per_s"] / sse["direct_streams_per_s"],
            "rss_mb_per_worker": max(rss) if rss else None,
            "rss_growth_mb": soaked["growth_mb"],
            "usage_records_lost": exact_n - records,
            "burst_admitted_over_limit": burst.get(200, 0) - BURST_LIMIT,
            "cached_vs_direct": cached["loaded"]["rps"] / loaded["direct"]["rps"],
            "cached_p99_64c_ms": cached["loaded"]["p99_ms"],
            "gateway_cpu_ms_per_request": results["gateway_cpu_s"]
            * 1000
            / max(1, loaded["gateway"]["requests"]),
            "load_average_1m": os.getloadavg()[0],
        }
        results.update(
            {
                "loaded": loaded,
                "unloaded": unloaded,
                "cached": cached,
                "sse": sse,
                "rss_mb": rss,
                "soak": soaked,
                "exact": {"sent": exact_n, "answered_200": answered, "records": records},
                "burst": {"sent": BURST_REQUESTS, "limit": BURST_LIMIT, "statuses": burst},
                "figures": figures,
                "elapsed_s": round(time.monotonic() - began, 1),
            }
        )
        print_table(results)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print(f"\nbench: wrote {out} ({results['elapsed_s']}s)")

        broken = plumbing_problems(results)
        for problem in broken:
            print(f"bench: BROKEN: {problem}")
        if broken:
            return 1
        missed = [name for name, met in targets_met(figures).items() if met is False]
        if missed and not args.smoke:
            print(f"bench: targets missed: {', '.join(missed)}")
            return 1
        return 0
    finally:
        procs.stop_all()
        if db_name:
            _psql(f"DROP DATABASE IF EXISTS {db_name}")
        if args.keep:
            print(f"bench: logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def plumbing_problems(results: dict[str, Any]) -> list[str]:
    """What makes a run meaningless whatever its figures: errors and lost records."""
    problems = []
    runs = [("loaded", results["loaded"]), ("unloaded", results["unloaded"])]
    runs.append(("cache on", {"gateway": results["cached"]["loaded"]}))
    runs.append(("cache on 1c", {"gateway": results["cached"]["unloaded"]}))
    for phase, by_name in runs:
        for name, run in by_name.items():
            if run["non_2xx"] or run["socket_errors"]:
                errors = f"{run['non_2xx']} non-2xx, {run['socket_errors']} socket errors"
                problems.append(f"{phase} {name}: {errors}")
    soaked = results["soak"]
    if soaked["non_2xx"] or soaked["socket_errors"]:
        problems.append(
            f"soak: {soaked['non_2xx']} non-2xx, {soaked['socket_errors']} socket errors"
        )
    burst = results["burst"]
    refused = burst["statuses"].get(429, 0)
    if burst["statuses"].get(200, 0) != burst["limit"] or refused != burst["sent"] - burst["limit"]:
        problems.append(
            f"burst: {burst['statuses']} for {burst['sent']} requests, limit {burst['limit']}"
        )
    exact = results["exact"]
    if exact["answered_200"] != exact["sent"]:
        problems.append(f"exact: {exact['answered_200']} of {exact['sent']} answered 200")
    if exact["records"] != exact["sent"]:
        problems.append(f"usage: {exact['records']} records for {exact['sent']} requests")
    return problems


def targets_met(figures: dict[str, Any]) -> dict[str, bool | None]:
    met: dict[str, bool | None] = {}
    for name, (op, target) in TARGETS.items():
        value = figures.get(name)
        met[name] = None if value is None else (value >= target if op == ">=" else value <= target)
    return met


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_table(results: dict[str, Any]) -> None:
    loaded, unloaded, sse, figures = (results[k] for k in ("loaded", "unloaded", "sse", "figures"))
    conns = results["connections"]
    print(f"\n== Authenticated relay of a Clockchain read (GET {READ_PATH}) ==")
    head = f"| | req/s ({conns}c) | p50 ms | p99 ms | 1c req/s | 1c p50 ms | 1c p99 ms |"
    print(head + "\n|---|---|---|---|---|---|---|")
    rows = [(name, row, unloaded.get(name, {})) for name, row in loaded.items()]
    rows.append(("gateway, cache on", results["cached"]["loaded"], results["cached"]["unloaded"]))
    for name, row, one in rows:
        print(
            f"| {name} | {row['rps']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
            f"| {_fmt(one.get('rps'), 0)} | {_fmt(one.get('p50_ms'))} | {_fmt(one.get('p99_ms'))} |"
        )
    print(
        f"\nSSE ({STREAM_BODY['preset']} stream): time to first event direct "
        f"{sse['direct_ttfe_ms']:.2f} ms, gateway {sse['gateway_ttfe_ms']:.2f} ms; "
        f"streams/s (16 concurrent) direct {sse['direct_streams_per_s']:.1f}, "
        f"gateway {sse['gateway_streams_per_s']:.1f}"
    )
    soaked = results["soak"]
    first = soaked["samples"][0]["rss_mb"] if soaked["samples"] else []
    print(
        f"RSS per worker (MB): {results['rss_mb']} after {soaked['requests']} soak requests "
        f"(+{soaked['gateway_requests_before_soak']} before; {first} after the first slice); "
        f"usage records: {results['exact']}; burst past a limit of {results['burst']['limit']}: "
        f"{results['burst']['statuses']} for {results['burst']['sent']} requests"
    )
    print("\n| figure | value | target | met |\n|---|---|---|---|")
    met = targets_met(figures)
    for name, (op, target) in TARGETS.items():
        value = figures.get(name)
        if name in RATIOS:
            shown = "n/a" if value is None else f"{value * 100:.1f} %"
            goal = f"{op} {target * 100:.0f} %"
        else:
            shown, goal = _fmt(value), f"{op} {target:g}"
        verdict = {None: "n/a", True: "yes", False: "NO"}[met[name]]
        print(f"| {name} | {shown} | {goal} | {verdict} |")
    print(
        f"| cached_vs_direct | {figures['cached_vs_direct'] * 100:.1f} % | (no target) | |\n"
        f"| cached_p99_64c_ms | {_fmt(figures['cached_p99_64c_ms'])} | (no target) | |\n"
        f"| load_average_1m | {_fmt(figures['load_average_1m'])} | (the machine's other load) | |"
    )


if __name__ == "__main__":
    raise SystemExit(main())
