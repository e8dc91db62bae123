"""The metrics name their process by a kept id (timepoint_billing/metrics.py `_process_id`), not
a getpid() per update: a forked worker must still write to files of its own, or two workers
would add to one file and a scrape would count their requests wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FORKED = """
import os
import django

django.setup()
from timepoint_billing.metrics import HTTP_REQUESTS

HTTP_REQUESTS.labels("r", "GET", "200").inc()
child = os.fork()
if child == 0:
    HTTP_REQUESTS.labels("r", "GET", "200").inc()
    os._exit(0)
os.waitpid(child, 0)
print(os.getpid(), child)
"""


def test_a_forked_process_writes_its_own_metric_files(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "timepoint_billing.settings",
        "PYTHONPATH": str(ROOT),
    }
    out = subprocess.run(
        [sys.executable, "-c", FORKED], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    parent, child = out.stdout.split()[-2:]
    names = {path.name for path in tmp_path.iterdir()}
    assert {f"counter_{parent}.db", f"counter_{child}.db"} <= names
