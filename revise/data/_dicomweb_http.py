"""The HTTP transport under :mod:`revise.data.dicomweb`: a requests session whose every request
ends by a deadline, the answer included (requests' own timeout bounds only the connect and each
single read), failed requests described for a user, and server URLs without credentials.
"""

from __future__ import annotations

import contextlib
import functools
import re
import socket
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter


class _Overdue(requests.exceptions.Timeout):
    """A request, answer included, did not end by its deadline; ``answered``: whether the
    answer's headers had come."""

    def __init__(self, *args: Any, answered: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answered = answered


_active = threading.local()  # the deadline of the request this thread is sending


class _Deadline:
    """Shuts the sockets of one request down when its time is up: a read waiting on a socket
    that is shut down ends at once (closing it would not wake the read)."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self.answered = False  # the answer's headers have come
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


class _Watched:
    """Mixed into urllib3's connection classes: the socket a response is read from is handed
    to the deadline of the request in flight."""

    sock: socket.socket | None

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        deadline = getattr(_active, "deadline", None)
        if deadline is not None and self.sock is not None:
            deadline.watch(self.sock)
        response = super().getresponse(*args, **kwargs)  # type: ignore[misc]
        if deadline is not None:
            deadline.answered = True
        return response


@functools.cache
def _watched(cls: type) -> type:
    return type(f"Watched{cls.__name__}", (_Watched, cls), {})


class _WatchedAdapter(HTTPAdapter):
    """Plain, TLS, proxy and SOCKS connections alike get the :class:`_Watched` mixin."""

    def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> Any:
        pool = super().get_connection_with_tls_context(*args, **kwargs)
        if not issubclass(pool.ConnectionCls, _Watched):
            pool.ConnectionCls = _watched(pool.ConnectionCls)
        return pool


class _DeadlineSession(requests.Session):
    """A session whose every request ends within ``seconds``, the whole answer included.

    requests' timeout bounds the connect and each single read: a server that trickles a byte
    every few seconds keeps each read short and the request alive for hours.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        adapter = _WatchedAdapter()
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        if getattr(_active, "deadline", None) is not None:  # a redirect: the first deadline holds
            return super().send(request, **kwargs)
        kwargs["stream"] = False  # the answer is read here, within the deadline
        deadline = _active.deadline = _Deadline(self.seconds)
        try:
            response = super().send(request, **kwargs)
        except Exception:
            if deadline.expired:  # whatever the shut-down socket raised
                raise _Overdue(request=request, answered=deadline.answered) from None
            raise
        finally:
            deadline.cancel()
            _active.deadline = None
        if deadline.expired:  # the answer may have been cut short
            raise _Overdue(request=request, answered=deadline.answered)
        return response


def _describe(exc: requests.exceptions.RequestException, timeout: float) -> tuple[str, str]:
    """(what happened, what to check) for a failed request; no URL query, no answer body."""
    retry = "is the server overloaded or the URL wrong? if it is only slow, raise {timeout}"
    if isinstance(exc, _Overdue) and exc.answered:
        return f"did not send its whole answer within {timeout:g} s", retry
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return f"did not accept a connection within {timeout:g} s", retry
    if isinstance(exc, (requests.exceptions.ReadTimeout, _Overdue)):
        return f"accepted the connection but sent no answer within {timeout:g} s", retry
    if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        text = f"answered HTTP {status} {exc.response.reason or ''}".rstrip()
        if status in (401, 403):
            return text, "the server refuses access: check the credentials and permissions"
        if status == 404:
            return text, "check the DICOMweb path of the URL, e.g. http://pacs:8042/dicom-web"
        return text, "the server failed; see its log"
    if isinstance(exc, requests.exceptions.SSLError):
        return "failed the TLS handshake", "check the URL scheme and the server's certificate"
    if isinstance(exc, requests.exceptions.ConnectionError):
        text = str(exc)
        if "Failed to resolve" in text or "Name or service not known" in text:
            reason = "its host name does not resolve"
        elif errno := re.search(r"\[Errno -?\d+\] ([^'\")]+)", text):
            reason = errno.group(1).strip().lower()
        else:
            reason = "the connection failed or broke off"
        return (
            f"could not be reached ({reason})",
            "is the server running? check the URL (host, port, path) and the network",
        )
    return f"failed: {type(exc).__name__}", "check the URL and the server's log"


def redact_url(url: str) -> str:
    """The URL without user name and password."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))
