"""What PostgreSQL cannot store, refused before an instruction joins any statement."""

from __future__ import annotations

from typing import Any

from symphony.db import InvalidRequestError
from symphony.outbox.model import PaymentInstruction


def check_storable(instruction: PaymentInstruction) -> None:
    """Refuse what PostgreSQL cannot store, before the instruction reaches any statement.

    A UTF-8 database stores any Unicode text except two things, in text and in jsonb alike
    (strings and object keys): U+0000 (`\\u0000` in JSON; 22P05, INVALID_CHARACTER) and lone
    surrogates (text from undecodable bytes, which is no UTF-8 at all: the driver cannot even
    send it; INVALID_TEXT_ENCODING). Either one in one item of a batch would make the server
    refuse the batch's whole `jsonb[]`/`text[]` parameter, and every neighbour would then be
    tried alone, one transaction each; refused here, the item never joins the batch and its
    neighbours commit together. A caller gets the same refusal whichever path its item
    took: U+0000 is the server's own 22P05 (INVALID_CHARACTER) wherever it appears, and
    undecodable text what the driver's refusal to encode it translates to. Every other rule
    is the database's (`enqueue_check_input`), refused per item without hurting the batch.
    """
    stack: list[Any] = [
        instruction.instruction_id, instruction.idempotency_key, instruction.participant_id,
        instruction.rail_type, instruction.payload,
    ]
    budget = 100_000  # values walked at most: a payload the database takes is far smaller
    while stack and budget > 0:
        budget -= 1
        value = stack.pop()
        if isinstance(value, str):
            _check_text(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str):
                    _check_text(key)
                stack.append(item)
        elif isinstance(value, list | tuple):
            stack.extend(value)


def _check_text(text: str) -> None:
    if "\x00" in text:
        raise InvalidRequestError(
            "the request holds a character that cannot be stored (such as U+0000)",
            code="INVALID_CHARACTER", sqlstate="22P05", context="enqueue",
        )
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidRequestError(
                "the request holds text that is not valid Unicode (undecodable bytes)",
                code="INVALID_TEXT_ENCODING", context="enqueue",
            ) from exc
