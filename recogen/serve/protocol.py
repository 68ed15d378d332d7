"""A request-head timeout for uvicorn (``recogen serve --header-timeout``).

uvicorn bounds neither the time a client may take to send its request line and headers nor the time
a new connection may stay silent: its keep-alive timeout only starts after a response. A client that
opens connections and sends their heads a byte every few seconds ("slow loris"), or nothing at all,
holds each connection (a file descriptor, a parser buffer) for as long as it likes. Here a connection
that is waiting for a request head gets ``--header-timeout`` seconds to deliver all of it; then it
is answered 408 (as nginx's ``client_header_timeout`` does) when part of a head had arrived, and
closed. The deadline is not pushed back by each byte that arrives. It starts when the connection is
made and, on a keep-alive connection, with the first byte of the next request: the idle time between
requests is still the keep-alive timeout's, and the body's time is the app's ``--body-timeout``.

Why in the protocol: the head is parsed there, before the ASGI app sees anything, so the app cannot
time it. uvicorn builds each connection's protocol from ``Config(http=...)``; :class:`HeaderTimeoutHTTP`
is what ``cmd_serve`` passes there, for one worker or several.

Both of uvicorn's HTTP/1.1 parsers are supported, picked as uvicorn's ``http="auto"`` picks them
(httptools when it is installed, as with ``uvicorn[standard]``, else h11), so adding the timeout does
not change which parser serves the requests. The timer only needs what both protocols share (the
transport, the event loop, the current request's ``cycle``); telling whether part of a head has
arrived is the one parser-specific question.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class _HeaderTimeout:
    """Mixin for a uvicorn HTTP protocol: closes a connection that waits for a request head longer
    than ``header_timeout`` seconds (408 first when part of one arrived)."""

    header_timeout: float  # set on each instance by HeaderTimeoutHTTP
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._update_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        self._update_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _waiting_for_head(self) -> bool:
        """No request is being handled on this open connection: what arrives now is (part of) a head."""
        transport = self.transport  # type: ignore[attr-defined]
        if transport is None or transport.is_closing() or transport.get_protocol() is not self:
            return False  # closed, or handed over to a WebSocket protocol
        cycle = self.cycle  # type: ignore[attr-defined]
        return cycle is None or cycle.response_complete

    def _update_head_timer(self) -> None:
        if not self._waiting_for_head():
            self._cancel_head_timer()  # a head is complete: the request's own time starts
        elif self._head_timer is None:  # started now; bytes arriving later do not restart it
            loop = self.loop  # type: ignore[attr-defined]
            self._head_timer = loop.call_later(self.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._waiting_for_head():
            return
        if self._partial_head():  # a client that said nothing is not sent a response it did not ask for
            self.transport.write(self._timeout_response())  # type: ignore[attr-defined]
        self.transport.close()  # type: ignore[attr-defined]

    def _partial_head(self) -> bool:
        raise NotImplementedError

    def _timeout_response(self) -> bytes:
        """A complete HTTP/1.1 408 with the service's JSON error body (the app never sees this request)."""
        body = json.dumps({"error": f"the request line and headers did not arrive within {self.header_timeout:g} s "
                                    "(the server's --header-timeout); send them again over a faster connection"})
        headers = [*self.server_state.default_headers,  # type: ignore[attr-defined]
                   (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        return b"HTTP/1.1 408 Request Timeout\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n" \
            + body.encode()


class H11HeaderTimeoutProtocol(_HeaderTimeout, H11Protocol):
    """uvicorn's h11 protocol with the head timeout."""

    def _partial_head(self) -> bool:
        # h11 keeps the bytes of a head in its buffer until the blank line that ends it arrives.
        return self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional (uvicorn[standard] installs it)
    HttpToolsHeaderTimeoutProtocol: type | None = None
else:
    class HttpToolsHeaderTimeoutProtocol(_HeaderTimeout, HttpToolsProtocol):  # type: ignore[no-redef]
        """uvicorn's httptools protocol with the head timeout."""

        _in_head = False  # httptools calls back at a head's first byte and at its end

        def on_message_begin(self) -> None:
            self._in_head = True
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def _partial_head(self) -> bool:
            return self._in_head


def protocol_class() -> type:
    """The protocol class for this installation: httptools' when it is installed, else h11's (uvicorn's
    ``http="auto"`` choice)."""
    return HttpToolsHeaderTimeoutProtocol or H11HeaderTimeoutProtocol


@dataclass(frozen=True)
class HeaderTimeoutHTTP:
    """uvicorn's ``Config(http=...)``: called as uvicorn calls a protocol class, it makes each
    connection's protocol with a head timeout of ``seconds``.

    An instance of a module-level class rather than a protocol subclass made for the given seconds:
    with ``--workers N`` uvicorn pickles its Config into each worker process, and pickle finds a class
    by its module and name, so a class made at run time could not be sent; this small object can.
    """

    seconds: float  # recogen serve --header-timeout (its default is cli_serve.DEFAULT_HEADER_TIMEOUT)

    def __call__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
        protocol = protocol_class()(config=config, server_state=server_state, app_state=app_state, _loop=_loop)
        protocol.header_timeout = self.seconds
        return protocol
