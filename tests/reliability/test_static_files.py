"""Static files are served by the production server itself (WhiteNoise), as the image and
`make run` serve them: hashed names cached for a year, compressed for clients that accept it, and
what the pages name is what the server has."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_hashed_static_files_are_served_compressed_with_a_long_cache(
    production_gateway: Any, collected_static: Path
) -> None:
    server = production_gateway({"STATIC_ROOT": str(collected_static)}, workers=1)
    manifest = json.loads((collected_static / "staticfiles.json").read_text())["paths"]
    hashed = manifest["admin/css/base.css"]
    assert re.search(r"\.[0-9a-f]{12}\.css$", hashed)

    with httpx.Client(base_url=server.url, timeout=10, trust_env=False) as client:
        plain = client.get(f"/static/{hashed}", headers={"Accept-Encoding": "identity"})
        assert plain.status_code == 200
        assert plain.headers["content-type"].startswith("text/css")
        assert plain.headers["cache-control"] == "max-age=315360000, public, immutable"
        assert "content-encoding" not in plain.headers
        assert plain.content == (collected_static / hashed).read_bytes()

        packed = client.get(f"/static/{hashed}", headers={"Accept-Encoding": "gzip"})
        assert packed.headers["content-encoding"] == "gzip"
        assert int(packed.headers["content-length"]) < len(plain.content)
        assert packed.content == plain.content  # httpx decompressed it

        # An unhashed name is served too, with a short cache (it may change on a deploy).
        short = client.get("/static/admin/css/base.css")
        assert short.status_code == 200
        assert "immutable" not in short.headers["cache-control"]

        # The pages name the hashed files, and each one they name is there.
        docs = client.get("/api/docs").text
        assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', docs)
        assert assets and all(re.search(r"\.[0-9a-f]{12}\.", asset) for asset in assets), assets
        for asset in assets:
            assert client.get(asset).status_code == 200, asset

        assert client.get("/favicon.ico").headers["content-type"] in {
            "image/x-icon",
            "image/vnd.microsoft.icon",
        }
        missing = client.get("/static/admin/css/nope.css")
        assert missing.status_code == 404
