"""An API host answers JSON everywhere: unknown paths and wrong methods get `{"detail", "code"}`,
except on the browser pages (admin, portal), which keep Django's HTML."""

from __future__ import annotations

import pytest
from django.test import Client


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/foo"),
        ("get", "/internal/x"),
        ("post", "/internal/x/y"),
        ("get", "/"),
        ("get", "/static/missing.css"),
        ("get", "/api/v1/nope"),
        ("delete", "/foo/bar"),
    ],
)
@pytest.mark.django_db
def test_unknown_paths_answer_json_404(client: Client, method: str, path: str) -> None:
    response = getattr(client, method)(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Not found.", "code": "not_found"}


@pytest.mark.django_db
def test_a_wrong_method_answers_json_405_with_allow(client: Client) -> None:
    response = client.post("/health")
    assert response.status_code == 405
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == "method_not_allowed"
    assert "GET" in response["Allow"]


@pytest.mark.django_db
def test_the_browser_pages_keep_html(client: Client) -> None:
    portal = client.get("/portal/no-such-page")
    assert portal.status_code == 404
    assert portal["Content-Type"].startswith("text/html")
    admin = client.get("/admin/no-such-page/")
    assert admin["Content-Type"].startswith("text/html")
