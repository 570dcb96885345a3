"""The bus across a pipe, for actors in worker processes of `cartridge up`.

The worker's side (`PipeBus`) talks to the parent's in-process bus over its stdin and
stdout as length-prefixed frames of plain bytes (no pickle):
    T <32-char message id> <body>   worker -> parent: publish a transition batch
    C <32-char message id>          parent -> worker: that batch is on the bus (confirm)
    E <body>                        parent -> worker: a control event
    P <body>                        worker -> parent: publish a control event (the evaluator's)
The parent's side (`serve_pipe`) forwards T frames to its bus and confirms them, P frames
to its bus's events, and every event of its own subscription as E frames. An actor
publishes transitions and subscribes to events (`PipeBus` is an `ActorBus`); the
evaluator subscribes to events and publishes some.
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
from typing import AsyncIterator

from shared.bus.base import Bus, BusUnavailable

HEADER = struct.Struct(">IB")  # payload length, frame kind
ID_LEN = 32


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """`(kind, payload)`, or None at end of stream."""
    try:
        length, kind = HEADER.unpack(await reader.readexactly(HEADER.size))
        return bytes([kind]), await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        return None


def frame(kind: bytes, payload: bytes) -> bytes:
    return HEADER.pack(len(payload), kind[0]) + payload


def pad_id(message_id: str) -> bytes:
    raw = message_id.encode()
    if len(raw) != ID_LEN:
        raise ValueError(f"message ids on the pipe are {ID_LEN} characters, got {message_id!r}")
    return raw


async def parent_pipe() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A worker's ends of the pipe: frames from its stdin, frames to its real stdout.
    Anything else written to stdout from now on goes to stderr, so that a stray print
    cannot corrupt a frame."""
    frames = os.dup(1)
    os.dup2(2, 1)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, os.fdopen(frames, "wb"))
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class PipeBus:
    """The worker's bus: publishes through the parent, receives the parent's events."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 closed: asyncio.Event | None = None):
        """`closed` is set when the parent goes away (a worker should then stop)."""
        self._reader, self._writer = reader, writer
        self.closed = closed or asyncio.Event()
        self._confirms: dict[bytes, asyncio.Future] = {}
        self._events: asyncio.Queue[bytes] = asyncio.Queue()
        self._pump: asyncio.Task | None = None

    async def __aenter__(self) -> "PipeBus":
        self._pump = asyncio.create_task(self._receive())
        return self

    async def __aexit__(self, *exc) -> None:
        if self._pump is not None:
            self._pump.cancel()

    async def _receive(self) -> None:
        while (got := await read_frame(self._reader)) is not None:
            kind, payload = got
            if kind == b"C":
                future = self._confirms.pop(payload, None)
                if future is not None and not future.done():
                    future.set_result(None)
            elif kind == b"E":
                self._events.put_nowait(payload)
        self.closed.set()
        for future in self._confirms.values():  # the parent is gone: nothing will confirm
            if not future.done():
                future.set_exception(BusUnavailable("parent process closed the pipe"))

    async def publish_transitions(self, body: bytes, *, message_id: str) -> None:
        key = pad_id(message_id)
        future = self._confirms[key] = asyncio.get_running_loop().create_future()
        try:
            self._writer.write(frame(b"T", key + body))
            await self._writer.drain()
        except ConnectionError as exc:  # the parent is gone
            self._confirms.pop(key, None)
            raise BusUnavailable(f"pipe to the parent process: {exc}") from exc
        await future

    async def publish_event(self, body: bytes, *, expires_s: float | None = None) -> None:
        try:
            self._writer.write(frame(b"P", body))
            await self._writer.drain()
        except ConnectionError as exc:  # the parent is gone
            raise BusUnavailable(f"pipe to the parent process: {exc}") from exc

    def on_events_restored(self, callback) -> None:
        pass  # within one process (or over a pipe to the parent) nothing is ever missed

    async def subscribe_events(self, durable_queue: str | None = None) -> AsyncIterator[bytes]:
        return self._event_stream()

    async def _event_stream(self) -> AsyncIterator[bytes]:
        while True:
            yield await self._events.get()


async def serve_pipe(bus: Bus, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The parent's side for one worker: until the worker's stdout closes, forward its
    transition batches to `bus` (confirming each) and `bus`'s events to the worker."""
    events = await bus.subscribe_events()

    async def forward_events() -> None:
        async for body in events:
            writer.write(frame(b"E", body))
            await writer.drain()

    forwarder = asyncio.create_task(forward_events())
    try:
        while (got := await read_frame(reader)) is not None:
            kind, payload = got
            if kind == b"T":
                key, body = payload[:ID_LEN], payload[ID_LEN:]
                await bus.publish_transitions(body, message_id=key.decode())
                writer.write(frame(b"C", key))
                await writer.drain()
            elif kind == b"P":
                await bus.publish_event(payload)
    except (ConnectionError, BrokenPipeError):
        pass  # the worker died; what it had not published is lost with it, whole games only
    finally:
        forwarder.cancel()
