"""What `symphony.db` logs of a driver error: never the data the server quotes back.

PostgreSQL quotes a statement's data in an error's DETAIL and CONTEXT (`JSON data, line 1:
...`, `Failing row contains (...)`) and in the primary message of a data error (`invalid input
syntax for type uuid: "..."`). Each test makes the server quote a marker, then reads what was
logged: the SQLSTATE, the constraint and the incident id are there, the marker is not. The
redaction is tested on the fragments that reach it anyway (a value cut short, quoted JSON, a
value with spaces)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from symphony.db import Database, Role, SymphonyError, describe_error, format_exception
from symphony.log import configure_logging, redact

MARKS = ("QZXV", "MKRDST", "JWPLX")


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    handler = configure_logging("DEBUG", "json", environ={}, stream=buffer)
    try:
        yield buffer
    finally:
        logging.getLogger().removeHandler(handler)


def _assert_no_marks(text: str) -> None:
    for mark in MARKS:
        assert mark not in text, f"{mark} reached the log: {text}"


async def test_a_json_error_context_is_not_logged(db: Database, captured: io.StringIO) -> None:
    # The server's own refusal of a NUL (22P05), its CONTEXT quoting the JSON around it: sent
    # here straight to the function, past the ingest's own check for NULs.
    body = '{"amount":"1.00","currency":"EUR","destination":"QZXV MKRDST JWPLX","m":"\\u0000"}'
    with pytest.raises(SymphonyError) as info:
        await db.fetch_one(Role.INGEST, "enqueue_payment_outbox", {
            "instruction_id": "i-1", "idempotency_key": "k-1", "participant_id": "p-1",
            "rail_type": "SEPA_CT", "payload": body})
    assert info.value.code == "INVALID_CHARACTER"
    cause = info.value.__cause__
    assert cause is not None and "MKRDST" in str(cause)  # the server did quote it
    text = captured.getvalue()
    _assert_no_marks(text)
    (line,) = [json.loads(x) for x in text.splitlines() if "database error" in x]
    assert "sqlstate=22P05" in line["message"]
    assert line["incident_id"] == info.value.incident_id


async def test_a_data_errors_quoted_value_is_not_logged(
    db: Database, captured: io.StringIO
) -> None:
    # 22P02: 'invalid input syntax for type uuid: "QZXV MKRDST JWPLX"'.
    with pytest.raises(SymphonyError) as info:
        await db.fetch_one(Role.READONLY, "participant_payment",
                           {"participant_id": "p-1", "outbox_id": "QZXV MKRDST JWPLX"})
    assert "MKRDST" in str(info.value.__cause__)
    text = captured.getvalue()
    _assert_no_marks(text)
    assert "sqlstate=22P02" in text


async def test_a_traceback_describes_the_driver_error_instead_of_quoting_it(
    db: Database, captured: io.StringIO
) -> None:
    try:
        await db.fetch_one(Role.READONLY, "participant_payment",
                           {"participant_id": "p-1", "outbox_id": "QZXV MKRDST JWPLX"})
    except SymphonyError as exc:
        logging.getLogger("symphony.test").exception("a cycle failed")
        rendered = format_exception(exc)
    _assert_no_marks(captured.getvalue())
    _assert_no_marks(rendered)
    assert "InvalidTextRepresentation: type=InvalidTextRepresentation sqlstate=22P02" in rendered
    assert "The above exception was the direct cause" in rendered
    exc_text = next(json.loads(x) for x in captured.getvalue().splitlines()
                    if "a cycle failed" in x)["exc"]
    assert "sqlstate=22P02" in exc_text and "Traceback" in exc_text


async def test_a_task_groups_driver_errors_are_described_too(db: Database) -> None:
    async def fail() -> None:
        await db.fetch_one(Role.READONLY, "participant_payment",
                           {"participant_id": "p-1", "outbox_id": "QZXV MKRDST JWPLX"})

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(fail())
    except BaseExceptionGroup as exc:
        rendered = format_exception(exc)
    _assert_no_marks(rendered)
    assert "sqlstate=22P02" in rendered and "[INVALID_DATA]" in rendered


async def test_our_own_refusals_keep_their_message_and_where_they_were_raised(
    db: Database,
) -> None:
    with pytest.raises(SymphonyError) as info:
        await db.fetch_one(Role.INGEST, "enqueue_payment_outbox", {
            "instruction_id": "bad id", "idempotency_key": "k-1", "participant_id": "p-1",
            "rail_type": "SEPA_CT", "payload": "{}"})
    cause = info.value.__cause__
    assert cause is not None
    described = describe_error(cause)
    assert "sqlstate=SY011" in described and "constraint=enqueue_instruction_id" in described
    assert "where='PL/pgSQL function enqueue_check_input(" in described
    assert "< PL/pgSQL function enqueue_payment_outbox(" in described
    assert "message='instruction_id must be" in described


def test_unencodable_text_is_described_without_the_character() -> None:
    try:
        "acct-MKRDST-\udcff".encode("utf-8")
    except UnicodeEncodeError as exc:
        described = describe_error(exc)
    assert described == "type=UnicodeEncodeError reason='surrogates not allowed' position=12"


@pytest.mark.parametrize("text", [
    # PostgreSQL's CONTEXT of a JSON error: a fragment with no key, and a value cut short.
    'CONTEXT:  JSON data, line 1: ...9 QZXV MKRDST JWPLX 19","metadata"...',
    'JSON data, line 1: {"amount":"1.00","destination":"QZXV MKRDST JWPLX\\u0000...',
    # The same value quoted, cut short, in quoted JSON, bare with spaces.
    '{"destination": "QZXV MKRDST JWPLX", "x": 1}',
    'payload text {"destination":"QZXV MKRDST JWPLX',
    '{\\"destination\\":\\"QZXV MKRDST JWPLX\\",\\"amount\\":\\"1\\"}',
    "destination=QZXV MKRDST JWPLX",
    "metadata={'note': 'QZXV MKRDST JWPLX'}",
    # DETAIL lines that quote a row or a key.
    "DETAIL:  Failing row contains (1, QZXV MKRDST JWPLX).",
    "DETAIL:  Key (destination)=(QZXV MKRDST JWPLX) already exists.",
    'invalid input syntax for type uuid: "QZXV MKRDST JWPLX"',
])
def test_redaction_covers_fragments_and_values_with_spaces(text: str) -> None:
    _assert_no_marks(redact(text))


def test_redaction_stops_a_spaced_value_at_the_next_field() -> None:
    assert redact("destination=QZXV MKRDST JWPLX context=enqueue sqlstate=SY018") == (
        "destination=*** context=enqueue sqlstate=SY018")
