"""Log output for the agent: the familiar text lines, or one JSON object per line.

Text suits `journalctl -u edge-agent` read by a person. JSON suits fleets whose logs are
shipped to Loki/Elasticsearch/CloudWatch: every field arrives parsed, including anything a
call site passes as `extra={...}` (device id, candidate id, model version), so queries do not
depend on message wording.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
# Set on the handler setup_logging installs, so calling it again replaces only that handler
# (pytest's and other libraries' handlers on the root logger stay).
_OURS = "_edge_agent_handler"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (ISO-8601 UTC, ms), level, logger, msg, extras, exc.

    The fixed keys win over extras of the same name, so a stray `extra={"level": ...}` cannot
    make a line lie about its severity. Values JSON cannot encode are written with str().
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {}
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                entry[key] = value
        created = datetime.fromtimestamp(record.created, tz=timezone.utc)
        entry.update(
            ts=created.strftime("%Y-%m-%dT%H:%M:%S.") + f"{created.microsecond // 1000:03d}Z",
            level=record.levelname,
            logger=record.name,
            msg=record.getMessage(),
        )
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(level: str, fmt: str, stream: TextIO | None = None) -> logging.Handler:
    """Configure the root logger once for the process (CLI wiring only); returns the handler.

    `level` is a level name (DEBUG, INFO, ...); `fmt` is "text" or "json". Output goes to
    `stream` (default stderr, which systemd sends to the journal).
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    numeric = logging.getLevelName(str(level).upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    setattr(handler, _OURS, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    return handler
