"""Process logging: one line per record that no client-chosen value can forge, text or JSON.

Log lines carry values clients choose (model names, ``x-request-id``, paths). A newline or another
control character in one of them would let a client start a line of its own, or hide a field, in
whatever reads the log. Both formats here escape them: the text format rewrites every control
character of the message as ``\\xNN``/``\\uNNNN`` (a traceback, which is the gateway's own text,
keeps its lines), and the JSON format is one ``json.dumps`` object per line.
"""

from __future__ import annotations

import json
import logging
import re
import sys

from infergate.config.settings import Settings

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "SafeFormatter",
    "configure_logging",
    "escape_controls",
    "setup_logging",
]

LOG_FORMATS = ("text", "json")

_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every control character (C0, DEL, C1, line/paragraph separators) escaped."""
    return _CONTROLS.sub(_escape, text)


class SafeFormatter(logging.Formatter):
    """``%(asctime)s %(levelname)s %(name)s %(message)s`` with the message's controls escaped."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=True)


def configure_logging(settings: Settings) -> None:
    """The root logger as the ``logging`` settings group says."""
    setup_logging(settings.logging.level, settings.logging.format)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger on stderr in ``fmt`` (``text`` or ``json``)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)} (got {fmt!r})")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else SafeFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    wanted = getattr(logging, level.upper(), logging.INFO)
    # debug is infergate's own: libraries' debug output (hpack logs every header it decodes) would
    # bury it, so they stay at info unless a quieter level is asked for
    root.setLevel(max(wanted, logging.INFO))
    logging.getLogger("infergate").setLevel(wanted)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
