"""A small asyncio TCP proxy in front of PostgreSQL, for partition and blackhole faults.

Modes, per connection: pass (forward both ways), blackhole (stop forwarding
but keep both sockets open: a half-open peer), close (drop both sides). A
connection is chosen by the application_name in its startup packet, so use
`sslmode=disable` through the proxy (the packet must be readable).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class Link:
    def __init__(
        self, application_name: str, client: asyncio.StreamWriter, server: asyncio.StreamWriter
    ) -> None:
        self.application_name = application_name
        self.client = client
        self.server = server
        self.blackholed = False


class Proxy:
    """Runs on its own thread and event loop; `port` is where clients connect."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.links: list[Link] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fault-proxy")

    def start(self) -> Proxy:
        self._thread.start()
        self._ready.wait(5)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        # The startup packet: length, then protocol and key/value pairs.
        header = await reader.readexactly(4)
        body = await reader.readexactly(int.from_bytes(header, "big") - 4)
        fields = body[4:].split(b"\0")
        pairs = dict(zip(fields[::2], fields[1::2], strict=False))
        link = Link(pairs.get(b"application_name", b"").decode(), writer, up_writer)
        self.links.append(link)
        up_writer.write(header + body)
        await asyncio.gather(
            self._pipe(reader, up_writer, link), self._pipe(up_reader, writer, link)
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: Link
    ) -> None:
        try:
            while data := await reader.read(65536):
                if link.blackholed:
                    continue  # swallowed: the peer never hears back
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if not link.blackholed:
                writer.close()

    def _call(self, func: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(func(), self._loop).result(5)

    def blackhole(self, application_name: str) -> int:
        """Stops forwarding on every open connection of that application_name; returns how many."""

        async def apply() -> int:
            hit = [
                link
                for link in self.links
                if link.application_name == application_name and not link.blackholed
            ]
            for link in hit:
                link.blackholed = True
            return len(hit)

        return int(self._call(apply))

    def stop(self) -> None:
        async def close_all() -> None:
            for link in self.links:
                for writer in (link.client, link.server):
                    writer.close()
            # The connections' handlers (a blackholed pipe waits forever): ended here,
            # not left pending on a stopped loop ("Task was destroyed but it is pending").
            handlers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

        self._call(close_all)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
