"""A webhook receiver on loopback for tests, and the Standard Webhooks check written here
from the specification (https://www.standardwebhooks.com/), independently of the product's
signer: a test that passes proves the product signs as the specification says.

The receiver is a bare asyncio HTTP/1.1 server so a test can make it misbehave exactly:
answer with any status, hang, stream a huge body, redirect, or be down (`stop()`, then
`start()` again on the same port). Given a server `tls` context it speaks https and records
the SNI name each connection asked for (`Received.sni`, `sni_names`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import ssl
import time
from dataclasses import dataclass, field
from typing import Any


class SignatureInvalid(Exception):
    pass


def verify_standard_webhook(
    secret: str, headers: dict[str, str], body: bytes, *, now: float | None = None,
    tolerance_seconds: int = 300,
) -> None:
    """Raise SignatureInvalid unless `body` carries a valid signature by `secret`.

    The reference algorithm: the secret is `whsec_` + base64 of the key bytes; the signed
    content is `{webhook-id}.{webhook-timestamp}.{body}`; the signature is the base64 of its
    HMAC-SHA256; the header lists `v1,<sig>` entries separated by spaces; the timestamp must be
    within the tolerance of now.
    """
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    header = headers.get("webhook-signature")
    if not msg_id or not stamp or not header:
        raise SignatureInvalid("missing headers")
    if not stamp.isdigit():
        raise SignatureInvalid("bad timestamp")
    current = time.time() if now is None else now
    if abs(current - int(stamp)) > tolerance_seconds:
        raise SignatureInvalid("timestamp outside tolerance")
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret[len("whsec_"):])
    content = msg_id.encode() + b"." + stamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    for entry in header.split(" "):
        version, _, sig = entry.partition(",")
        if version == "v1" and hmac.compare_digest(sig, expected):
            return
    raise SignatureInvalid("no matching signature")


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    sni: str | None = None

    @property
    def event(self) -> dict[str, Any]:
        value = json.loads(self.body)
        assert isinstance(value, dict)
        return value


@dataclass
class Receiver:
    """Answers every request per `mode`: 'ok' (204), 'status:<n>', 'hang' (never answers),
    'huge' (200 with a 10 MB body, streamed), 'redirect' (302 to `redirect_to`).

    tls: a server context (https; its certificate is the test's choice). host_name: the name
    `url` uses instead of the address (the test resolves it). keep_alive: serve further
    requests on a connection after an 'ok' answer (so a client that reuses connections
    shows it)."""

    mode: str = "ok"
    port: int = 0
    address: str = "127.0.0.1"
    tls: ssl.SSLContext | None = None
    host_name: str | None = None
    keep_alive: bool = False
    redirect_to: str = "http://127.0.0.1:9/elsewhere"
    received: list[Received] = field(default_factory=list)
    sni_names: list[str | None] = field(default_factory=list)
    connections: int = 0
    huge_bytes_sent: int = 0
    _server: asyncio.base_events.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _sni_of: dict[int, str | None] = field(default_factory=dict)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host_name or self.address}:{self.port}/hooks"

    async def start(self) -> None:
        if self.tls is not None:
            self.tls.sni_callback = self._on_sni
        self._server = await asyncio.start_server(self._handle, self.address, self.port,
                                                  reuse_address=True, ssl=self.tls)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def _on_sni(self, conn: Any, name: str | None, _context: ssl.SSLContext) -> None:
        # Called during the handshake, before the certificate is chosen or checked: the
        # name is recorded even when the client then refuses the certificate.
        self.sni_names.append(name)
        self._sni_of[id(conn)] = name

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        for task in list(self._tasks):
            task.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        tls_object = writer.get_extra_info("ssl_object")
        sni = self._sni_of.pop(id(tls_object), None) if tls_object is not None else None
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                _method, path, _version = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.received.append(Received(path, headers, body, time.time(), sni))
                await self._answer(writer)
                if not (self.keep_alive and self.mode == "ok"):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _answer(self, writer: asyncio.StreamWriter) -> None:
        mode = self.mode
        if mode == "hang":
            await asyncio.sleep(3600)
            return
        if mode == "huge":
            size = 10 * 1024 * 1024
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                         + f"Content-Length: {size}\r\n\r\n".encode())
            chunk = b"x" * 65536
            try:
                while self.huge_bytes_sent < size:
                    writer.write(chunk)
                    await writer.drain()
                    self.huge_bytes_sent += len(chunk)
            except ConnectionError:
                pass
            return
        if mode == "redirect":
            writer.write(b"HTTP/1.1 302 Found\r\nLocation: " + self.redirect_to.encode()
                         + b"\r\nContent-Length: 0\r\n\r\n")
        else:
            status = int(mode.split(":", 1)[1]) if mode.startswith("status:") else 204
            text = b"" if status == 204 else b"answer \x00\x1b[31m body " + b"y" * 600
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(text)}\r\n\r\n".encode()
                         + text)
        await writer.drain()
