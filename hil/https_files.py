"""Files over HTTPS on loopback, as an operator's file server would serve a configuration, with the faults a
gateway's download must survive: a server that drips one byte at a time (each gap well inside any per-read
timeout, the whole never ending) and one that sends more than it said or than was declared.

The certificate is the rig's server certificate (hil/pki.py: CN/SAN localhost and 127.0.0.1), so the gateway
trusts it through `fleet.ca_file` = the rig's CA.
"""
from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from .pki import Pki

MODES = ("ok", "drip", "no_length", "status")


@dataclass
class Served:
    body: bytes
    mode: str = "ok"         # ok | drip: one byte per drip_s | no_length: no Content-Length, body, then close
    drip_s: float = 0.2      # | status: answer with `status` and no body
    status: int = 200


class HttpsFiles:
    def __init__(self, pki: Pki, host: str = "127.0.0.1") -> None:
        self.pki, self.host = pki, host
        self.files: dict[str, Served] = {}
        self.requests: list[str] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    def put(self, path: str, body: bytes, mode: str = "ok", **kw) -> str:
        """Serve body at path (from now on); returns its URL."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.files[path] = Served(body, mode, **kw)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"https://{self.host}:{self.port}{path}"

    async def start(self) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.pki.server_cert), str(self.pki.server_key))
        self.server = await asyncio.start_server(self._serve, self.host, 0, ssl=ctx)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    async def __aenter__(self) -> "HttpsFiles":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            path = head.split(b" ", 2)[1].decode("ascii", "replace")
            self.requests.append(path)
            f = self.files.get(path)
            if f is None or f.mode == "status":
                code = f.status if f is not None else 404
                writer.write(f"HTTP/1.0 {code} X\r\nContent-Length: 0\r\n\r\n".encode())
            elif f.mode == "no_length":
                writer.write(b"HTTP/1.0 200 OK\r\n\r\n" + f.body)
            else:
                writer.write(f"HTTP/1.0 200 OK\r\nContent-Length: {len(f.body)}\r\n\r\n".encode())
                if f.mode == "ok":
                    writer.write(f.body)
                else:
                    for i in range(len(f.body)):
                        await writer.drain()
                        await asyncio.sleep(f.drip_s)
                        writer.write(f.body[i:i + 1])
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, IndexError):
            pass
        finally:
            writer.close()
