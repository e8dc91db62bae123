"""JSON log lines (python-json-logger). Imports nothing from Django: logging is configured while
settings load.

One JSON object per line: `ts`, `level`, `logger`, then either the fields of a dict message or
`message`, the record's JSON-able `extra` fields, and the request id of the request being served.
A record with an exception (an unexpected error, logged once by `timepoint_billing.errors`)
also carries `exc_type`, `exc_message` and the whole `stack`, so a 500 can be traced from its
single log line; `error` keeps the traceback's last line for quick reading.

Serialised by orjson (the library's `OrjsonFormatter`): one line per request is written on the
relay's hot path, and the standard library's encoder was most of its ~30 µs (issue 17)."""

from __future__ import annotations

import contextvars
import logging
from typing import Any

from pythonjsonlogger.orjson import OrjsonFormatter as _LibraryJsonFormatter

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

_JSON_SCALARS = (str, int, float, bool, type(None), dict, list, tuple)


class JsonFormatter(_LibraryJsonFormatter):
    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["ts"] = round(record.created, 3)
        log_data["level"] = record.levelname.lower()
        log_data["logger"] = record.name
        if not isinstance(record.msg, dict):
            log_data["message"] = record.getMessage()
        stack = message_dict.pop("exc_info", None)
        message_dict.pop("stack_info", None)
        # The library adds the record's `extra` fields; objects (Django passes the request
        # itself) are left out rather than logged as their repr.
        super().add_fields(log_data, record, message_dict)
        if isinstance(record.msg, dict) and not log_data.get("message"):
            log_data.pop("message", None)
        for key in [k for k, v in log_data.items() if not isinstance(v, _JSON_SCALARS)]:
            del log_data[key]
        request_id = request_id_var.get()
        if request_id:
            log_data.setdefault("request_id", request_id)
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, exc_value, _ = record.exc_info
            log_data["exc_type"] = f"{exc_type.__module__}.{exc_type.__qualname__}"
            log_data["exc_message"] = str(exc_value)
            log_data["stack"] = stack or self.formatException(record.exc_info)
            log_data["error"] = str(log_data["stack"]).rstrip().splitlines()[-1]
