"""A logging filter that takes query strings out of every log record (they may carry `api_key`)."""

from __future__ import annotations

import logging
import re

# A request target inside a log line: a path starting with "/" followed by "?query". uvicorn writes
# one for each WebSocket handshake ('"WebSocket /ws/segment?api_key=..." [accepted]').
_QUERY = re.compile(r'(?P<path>/[^\s"?]*)\?[^\s"]*')
_KEY = re.compile(r"(?i)(api[_-]?key=)[^\s&\"']+")


def redact(text: str) -> str:
    """`text` with every query string after a path replaced by `?<redacted>`, and any left-over
    `api_key=value` pair masked."""
    return _KEY.sub(r"\1<redacted>", _QUERY.sub(r"\g<path>?<redacted>", text))


class RedactQueryStrings(logging.Filter):
    """Rewrites each record's message (after %-formatting) with `redact`; attached to the handlers so
    that records of every logger (uvicorn.error, uvicorn.access, ours) pass through it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's problem, not ours
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
