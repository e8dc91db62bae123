"""The production server's configuration: the Dockerfile, railway.json, `make run` and the test
suite's production server all start `gunicorn -c gunicorn.conf.py`, so they run one server.
Command-line flags override what is set here (the tests bind a loopback port, `make run` one
worker).

Prometheus multiprocess mode (timepoint_billing/metrics.py): every worker writes its counters to
files in PROMETHEUS_MULTIPROC_DIR and a scrape, answered by any one worker, adds them all up. The
directory is set here, before a worker imports prometheus_client, emptied when the server starts
(counts from a previous run would otherwise be added to this one's), and a worker's live gauges
are dropped when it exits. Its counters stay: a restarted worker must not make totals go down.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

wsgi_app = "timepoint_billing.asgi:application"
worker_class = "timepoint_billing.server.GatewayUvicornWorker"
bind = [f"0.0.0.0:{os.environ.get('PORT', '8000')}"]
# The internal API's private listener (README, For other TIMEPOINT services): publish only PORT.
if os.environ.get("INTERNAL_API_PORT", "").strip() not in ("", "0"):
    bind.append(f"[::]:{os.environ['INTERNAL_API_PORT'].strip()}")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Each worker listens on a socket of its own (SO_REUSEPORT; gunicorn >= 21 binds them in the
# workers), and the kernel spreads new connections evenly over them by their addresses. On one
# shared socket the worker that happened to be awake took most of a burst of new connections
# (42 of wrk's 64 against 22): it answered at twice the other's latency while that one idled, the
# p99 at 64 connections and the throughput paid for it (issue 17). The cost: connections still in
# a worker's accept queue when that worker dies are reset instead of being taken by another.
reuse_port = True
graceful_timeout = 30
timeout = 420  # a generation may take UPSTREAM_GENERATE_TIMEOUT (320 s) and then some
keepalive = 75  # above the load balancer's idle timeout, so the proxy closes first
# The client address (the auth-failure limit's key) comes from X-Forwarded-For only when the
# connection comes from FORWARDED_ALLOW_IPS, the proxy in front (README, Deployment).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
# No access log: the request middleware writes the one JSON line per request.
accesslog = None

# Unset: a private directory for this server, removed when it stops.
METRICS_DIR_IS_OURS = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if METRICS_DIR_IS_OURS:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tpb-metrics-")
METRICS_DIR = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])


def on_starting(server: Any) -> None:
    if METRICS_DIR.exists():
        shutil.rmtree(METRICS_DIR)
    METRICS_DIR.mkdir(parents=True)


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    if METRICS_DIR_IS_OURS:
        shutil.rmtree(METRICS_DIR, ignore_errors=True)
