"""Structured logs: JSON lines off a terminal, text on one, and no secret in either.

The redaction is tested through a real logger and the installed handler, with the secrets
passed the ways a mistake would pass them: in the format string, as an argument, as a context
field, inside an exception's message.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from symphony.cli import main
from symphony.db import ConfigurationError
from symphony.log import CONTEXT_FIELDS, configure_logging, parse_format, redact

TOKEN = "sy_pt_Zx81kLmQ0r_StuVw-yz"
OPERATOR_TOKEN = "sy_op_9f8e7d6c5b4a"
PASSWORD = "Tr0ub4dor-and-3"
PAYLOAD = {"amount": "9137.25", "currency": "CHF", "destination": "CH9300762011623852957"}


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The symphony handler installed (JSON), writing into a buffer; removed afterwards."""
    buffer = io.StringIO()
    handler = configure_logging("DEBUG", "json", environ={}, stream=buffer)
    try:
        yield buffer
    finally:
        logging.getLogger().removeHandler(handler)


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def assert_clean(text: str) -> None:
    for secret in (TOKEN, OPERATOR_TOKEN, PASSWORD, *PAYLOAD.values()):
        assert secret not in text, f"{secret!r} reached the log"


def test_json_line_has_the_fields_and_context(captured: io.StringIO) -> None:
    logging.getLogger("symphony.worker").info(
        "dispatched %s", "one item",
        extra={"outbox_id": "0b9f", "worker_id": "w-1", "request_id": "r-7",
               "participant_id": "bank-a", "incident_id": "abc", "not_a_field": "dropped"},
    )
    (line,) = lines(captured)
    assert line["level"] == "INFO"
    assert line["logger"] == "symphony.worker"
    assert line["message"] == "dispatched one item"
    assert line["ts"].endswith("Z") and "T" in line["ts"]
    for name in CONTEXT_FIELDS:
        assert name in line
    assert "not_a_field" not in line


def test_secrets_in_the_message_never_reach_the_line(captured: io.StringIO) -> None:
    log = logging.getLogger("symphony.test")
    log.info("token %s and %s", TOKEN, OPERATOR_TOKEN)
    log.info(f"dsn postgresql://symphony_api_svc:{PASSWORD}@db.internal:5432/symphony")
    log.info("conninfo host=db user=symphony_executor_svc password=%s dbname=x", PASSWORD)
    log.info("ALTER ROLE symphony_api_svc PASSWORD '%s'", PASSWORD)
    log.info("instruction payload %s", PAYLOAD)
    log.info("as json %s", json.dumps({"payload": PAYLOAD}))
    log.info("Authorization: Bearer %s", TOKEN)
    text = captured.getvalue()
    assert_clean(text)
    messages = [line["message"] for line in lines(captured)]
    assert "sy_pt_***" in messages[0]
    assert "postgresql://symphony_api_svc:***@db.internal:5432/symphony" in messages[1]
    assert "password=***" in messages[2]


def test_secrets_in_context_fields_and_exceptions_are_redacted(captured: io.StringIO) -> None:
    log = logging.getLogger("symphony.test")
    log.warning("request", extra={"request_id": TOKEN, "participant_id": f"password={PASSWORD}"})
    try:
        raise RuntimeError(f"could not connect to postgresql://u:{PASSWORD}@h/db with {TOKEN}")
    except RuntimeError:
        log.exception("failed")
    assert_clean(captured.getvalue())
    first, second = lines(captured)
    assert first["request_id"] == "sy_pt_***"
    assert "RuntimeError" in second["exc"]


def test_other_libraries_loggers_are_redacted_too(captured: io.StringIO) -> None:
    logging.getLogger("uvicorn.error").warning("client sent %s", TOKEN)
    logging.getLogger("psycopg").warning("password=%s", PASSWORD)
    assert_clean(captured.getvalue())
    assert len(lines(captured)) == 2


def test_ordinary_words_are_left_alone() -> None:
    text = "password authentication failed for user x; lease token expired; amount due"
    assert redact(text) == text


def test_text_on_a_terminal_json_elsewhere() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert parse_format(None, Terminal()) == "text"
    assert parse_format("auto", io.StringIO()) == "json"
    assert parse_format("TEXT", io.StringIO()) == "text"
    assert parse_format("json", Terminal()) == "json"
    with pytest.raises(ConfigurationError) as info:
        parse_format("xml", io.StringIO())
    assert info.value.code == "INVALID_LOG_FORMAT"


def test_text_format_carries_context_and_redacts() -> None:
    buffer = io.StringIO()
    handler = configure_logging("INFO", "text", environ={}, stream=buffer)
    try:
        logging.getLogger("symphony.api").info("token %s", TOKEN, extra={"request_id": "r-1"})
    finally:
        logging.getLogger().removeHandler(handler)
    line = buffer.getvalue().strip()
    assert "INFO symphony.api: token sy_pt_*** request_id=r-1" in line
    assert_clean(line)


def test_configuring_twice_keeps_one_handler() -> None:
    first = configure_logging("INFO", "json", environ={})
    second = configure_logging("INFO", "text", environ={})
    try:
        root = logging.getLogger()
        assert first not in root.handlers
        assert [h for h in root.handlers if h.get_name() == "symphony"] == [second]
    finally:
        logging.getLogger().removeHandler(second)


def test_bad_log_format_stops_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SYMPHONY_LOG_FORMAT", "yaml")
    assert main(["status"]) == 2
    assert "error [INVALID_LOG_FORMAT]" in capsys.readouterr().err
