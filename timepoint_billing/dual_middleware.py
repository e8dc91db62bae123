"""The base of the project's own middleware: one class Django runs in a sync or an async stack
without a thread hop (Django's `MiddlewareMixin` hops to a thread for every hook in async mode)."""

from __future__ import annotations

from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest


class SyncAsyncMiddleware:
    """Subclasses write `call` (sync stack) and `acall` (async stack) over `get_response`."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.acall(request)
        return self.call(request)

    def call(self, request: HttpRequest) -> Any:
        raise NotImplementedError

    async def acall(self, request: HttpRequest) -> Any:
        raise NotImplementedError
