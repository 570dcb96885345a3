"""A TCP proxy that can take a server away and bring it back.

Services reach RabbitMQ, PostgreSQL or the S3 server through it; `cut()` drops every
connection at once and refuses new ones (the listening socket is closed, so connects get
ECONNREFUSED, as from a server that is down), `restore()` listens again on the same port.
For the services this looks exactly like the server restarting, without disturbing the
shared server that other tests use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger(__name__)

CHUNK = 64 * 1024


class TcpProxy:
    # Plain TCP passes a half-close on (each direction ends by itself, and an error ends
    # both); TLS has no half-close, so a TLS proxy ends both sides when either ends.
    end_together = False

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task] = set()
        self._transports: set[asyncio.Transport] = set()
        self.connections = 0  # accepted since start, across cuts

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> "TcpProxy":
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def cut(self) -> None:
        """The server is gone: close the listener, reset every open connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for transport in list(self._transports):
            transport.abort()
        for task in list(self._links):
            task.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)
        log.info("proxy %s -> %s:%d cut", self.address, *self.target)

    async def restore(self) -> None:
        await self.start()
        log.info("proxy %s -> %s:%d restored", self.address, *self.target)

    async def close(self) -> None:
        await self.cut()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        writers = (client_w, server_w)
        for w in writers:
            self._transports.add(w.transport)
        task = asyncio.current_task()
        self._links.add(task)
        pumps = [asyncio.ensure_future(_pump(client_r, server_w)), asyncio.ensure_future(_pump(server_r, client_w))]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED if self.end_together
                               else asyncio.FIRST_EXCEPTION)
        except asyncio.CancelledError:
            pass
        finally:
            self._links.discard(task)
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for w in writers:
                self._transports.discard(w.transport)
                if self.end_together:
                    w.close()  # a TLS client gets close_notify, then the end of the connection
                else:
                    w.transport.abort()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.write_eof()
