"""Held-out data straight from a PACS: QIDO-RS search, WADO-RS retrieval, a local cache, the index.

:func:`index_dicomweb` finds the series a selection names with QIDO-RS, lists their instances,
retrieves (WADO-RS) the ones not yet cached, indexes the cached files with the built-in DICOM
loader, joins labels as :func:`revise.data.index.index` does and applies the whole selection to
the result. The server only ever narrows the search; the local selection decides, so the rows
are exactly those the selection gives on a local copy of the same files.

Pushed down to the server (as QIDO matching keys) are only the conjuncts of a top-level ``and``
that every DICOMweb server supports and that match a superset of what the local selection keeps:
``study_uid`` / ``series_uid`` / ``sop_instance_uid`` and ``modality`` with ``==`` or ``in``
(one query per value; servers may match text case-insensitively, which only widens the search)
and ``study_date`` compared with a date (a DICOM date range). Nothing else, and never
``patient`` (the manifest holds a keyed hash, the server the clear ID). Equipment attributes such
as ``device`` are optional matching keys that servers may reject or match differently: Orthanc
answers ``ManufacturerModelName=Borealis CR-7`` with no series although two hold exactly that
value (its wildcard matches find them), so pushing ``device`` down would drop data silently. It
is filtered locally.

Instances are cached under ``<cache>/dicomweb/<hash of the server URL>/<SOPInstanceUID>.dcm``,
written atomically; a second call with the same query retrieves nothing. A server that cannot
be reached, refuses, times out or answers something other than DICOM JSON is a
:class:`~revise.errors.DataError`; an instance that cannot be retrieved or read is a failure in
the result and the rest goes on. Logs and errors name UIDs and counts, never patient attributes
(QIDO answers carry PatientName/PatientID; they are never logged).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import itertools
import logging
import os
import re
import socket
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

from revise._io import atomic_path
from revise.data._dicom_header import _one_line
from revise.data.dicom_loader import DicomLoader
from revise.data.index import label_manifest, unique_keys
from revise.data.loaders import IndexFailure, IndexResult
from revise.data.manifest import empty_manifest, normalize
from revise.data.select import And, Compare, Expr, InList, describe, mask, parse
from revise.errors import DataError, RevisionError, SelectionError, UsageError
from revise.phi import site_key

log = logging.getLogger(__name__)

__all__ = ["DicomwebFetch", "cache_root", "index_dicomweb", "pushdown"]

STUDY_UID, SERIES_UID, SOP_UID = "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"
_TAGS = {STUDY_UID: "0020000D", SERIES_UID: "0020000E", SOP_UID: "00080018"}
# Manifest column -> QIDO matching key, for the columns whose equality is pushed down.
_EQUALITY_KEYS = {
    "study_uid": STUDY_UID,
    "series_uid": SERIES_UID,
    "sop_instance_uid": SOP_UID,
    "modality": "Modality",
}
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_MODALITY = re.compile(r"[A-Z0-9_ ]{1,16}")  # CS characters; no QIDO wildcard * or ?
PAGE = 100  # QIDO page size: at or below every common server's cap on results per answer
MAX_QUERIES = 16  # pushed-down `in` lists multiply the queries; beyond this, filter locally
MAX_TIMEOUT = 86400  # seconds per request; e.g. inf overflows the socket and timer clocks
MAX_CONSECUTIVE_DROPS = 3  # connection failures in a row while retrieving: the server is gone


@dataclass
class DicomwebFetch:
    """What :func:`index_dicomweb` got: the indexed, labelled, selected rows, and the traffic.

    ``series``/``instances``: how many the QIDO search listed; ``fetched``: instances retrieved
    now; ``cached``: instances already in the cache (nothing transferred); ``filters``: the QIDO
    matching keys sent, one dict per query (empty dict: an unfiltered search).
    """

    result: IndexResult
    fetched: int = 0
    cached: int = 0
    series: int = 0
    instances: int = 0
    filters: list[dict[str, str]] = field(default_factory=list)


def index_dicomweb(
    url: str,
    *,
    selection: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    labels: str | os.PathLike | Mapping[str, Any] | None = None,
    site: str = "",
    timeout: float = 30.0,
    key: bytes | None = None,
    allow_empty: bool = False,
) -> DicomwebFetch:
    """Index the instances a selection names on a DICOMweb server (retrieving uncached ones).

    ``url`` is the DICOMweb root (e.g. ``http://pacs:8042/dicom-web``); ``timeout`` bounds each
    request, from connecting to the last byte of the answer, in seconds. ``cache_dir`` defaults to
    :func:`cache_root`. ``labels``, ``site`` and ``key`` mean what they mean for
    :func:`revise.data.index.index`. The result's manifest holds exactly the rows the selection
    matches; matching none is an error unless ``allow_empty``.
    """
    if not 0 < timeout <= MAX_TIMEOUT:  # nan compares false too
        raise UsageError(
            f"timeout must be a positive number of seconds, at most {MAX_TIMEOUT} (a day), "
            f"not {timeout!r}",
            hint="e.g. {timeout} 30",
            options=("timeout",),
        )
    key = site_key() if key is None else key
    expr = None if selection is None else parse(selection)
    if expr is not None:  # unknown columns and missing @files fail before any traffic
        mask(normalize(empty_manifest()), expr, key=key)
    server = _Server(url, timeout)
    folder = Path(cache_dir) if cache_dir is not None else cache_root()
    folder = folder / "dicomweb" / server.cache_name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cache folder {folder} cannot be created: {exc.strerror}",
            hint="pass a writable cache folder (or set REVISE_CACHE)",
        ) from None

    queries = pushdown(expr)
    listing, n_series, unlisted = server.list_instances(queries)
    files, failures, fetched, cached = server.retrieve(listing, folder)
    result = _index_files(files, site=site, key=key)
    result.failures[:0] = unlisted + failures
    manifest = label_manifest(result.manifest, labels)
    if expr is not None and len(manifest):
        manifest = manifest.loc[mask(manifest, expr, key=key).to_numpy()]
    result.manifest = normalize(manifest)

    filters = [{}] if queries is None else [dict(q) for q in queries]
    log.info(
        "dicomweb %s: %d series, %d instances listed (%d queries); %d retrieved, %d cached, "
        "%d failed, %d skipped; %d rows selected",
        server.url,
        n_series,
        len(listing),
        len(filters),
        fetched,
        cached,
        len(result.failures),
        len(result.skipped),
        len(result.manifest),
    )
    if not len(result.manifest) and not allow_empty:
        raise _empty_error(server.url, expr, n_series, len(listing), result.failures)
    return DicomwebFetch(result, fetched, cached, n_series, len(listing), filters)


def cache_root() -> Path:
    """The cache folder: ``$REVISE_CACHE``, else ``~/.cache/revise``."""
    configured = os.environ.get("REVISE_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "revise"


# --------------------------------------------------------------------------------------------
# Pushdown: the part of a selection a QIDO search can do
# --------------------------------------------------------------------------------------------


def pushdown(expr: str | Expr | None) -> list[dict[str, str]] | None:
    """The QIDO searches that together find every instance ``expr`` can match.

    One dict of matching keys per search (their results are united); ``None`` when nothing can
    be pushed (search everything); ``[]`` when the pushed conjuncts contradict each other (no
    instance can match, so there is nothing to search).
    """
    if expr is None:
        return None
    node = parse(expr) if isinstance(expr, str) else expr
    choices: dict[str, set[str]] = {}  # matching key -> any of these values
    low, high = dt.date.min, dt.date.max
    for part in _conjuncts(node):
        if (equal := _equality(part)) is not None:
            name, values = equal
            choices[name] = choices[name] & values if name in choices else values
        elif (span := _date_span(part)) is not None:
            low, high = max(low, span[0]), min(high, span[1])
    if low > high or any(not values for values in choices.values()):
        return []
    while choices and _product(choices) > MAX_QUERIES:  # keep the query count bounded
        del choices[max(choices, key=lambda name: len(choices[name]))]
    fixed: dict[str, str] = {}
    if (low, high) != (dt.date.min, dt.date.max):
        fixed["StudyDate"] = _dicom_range(low, high)
    if not choices and not fixed:
        return None
    names = sorted(choices)
    return [
        {**dict(zip(names, values, strict=True)), **fixed}
        for values in itertools.product(*(sorted(choices[name]) for name in names))
    ]


def _conjuncts(node: Expr) -> Iterator[Expr]:
    if isinstance(node, And):
        for child in node.operands:
            yield from _conjuncts(child)
    else:
        yield node


def _equality(node: Expr) -> tuple[str, set[str]] | None:
    """``column == "v"`` or ``column in ["v", ...]`` on a pushable column: (key, values)."""
    if isinstance(node, Compare) and node.op == "==":
        values: tuple[Any, ...] = (node.value,)
    elif isinstance(node, InList) and not node.negated:
        values = node.values
    else:
        return None
    name = _EQUALITY_KEYS.get(node.column)
    if name is None or not values:
        return None
    pattern = _MODALITY if name == "Modality" else _UID
    # A value the local comparison could match but QIDO might read otherwise (a wildcard, a
    # number, padding): keep the whole conjunct local.
    if not all(isinstance(v, str) and pattern.fullmatch(v) and v == v.strip() for v in values):
        return None
    return name, set(values)


def _date_span(node: Expr) -> tuple[dt.date, dt.date] | None:
    """``study_date <op> YYYY-MM-DD`` as the inclusive span of dates it keeps."""
    if not (isinstance(node, Compare) and node.column == "study_date"):
        return None
    value, op = node.value, node.op
    if type(value) is not dt.date:  # text, numbers and datetimes compare differently locally
        return None
    try:
        if op == "==":
            return value, value
        if op in (">=", ">"):
            return value + dt.timedelta(days=op == ">"), dt.date.max
        if op in ("<=", "<"):
            return dt.date.min, value - dt.timedelta(days=op == "<")
    except OverflowError:  # a strict comparison with the first or last representable date
        pass
    return None


def _dicom_range(low: dt.date, high: dt.date) -> str:
    if low == high:
        return low.strftime("%Y%m%d")
    start = "" if low == dt.date.min else low.strftime("%Y%m%d")
    end = "" if high == dt.date.max else high.strftime("%Y%m%d")
    return f"{start}-{end}"


def _product(choices: Mapping[str, set[str]]) -> int:
    n = 1
    for values in choices.values():
        n *= len(values)
    return n


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class _HTTPStatusError(DataError):
    """The server answered a request with an HTTP error status (it is up, and said no)."""

    def __init__(self, message: str, *, hint: str, problem: str) -> None:
        super().__init__(message, hint=hint, options=("timeout",))
        self.problem = problem


class _Server:
    """One DICOMweb server, with every transport failure turned into a DataError."""

    def __init__(self, url: str, timeout: float) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.url = redact_url(url.rstrip("/"))  # for messages and logs: no credentials
        self.cache_name = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        self.timeout = timeout
        try:
            self.client = DICOMwebClient(
                url.rstrip("/"), session=_DeadlineSession(timeout), timeout=(timeout, timeout)
            )
        except ValueError as exc:
            raise DataError(
                f"{self.url} is not a DICOMweb URL: {exc}",
                hint="use http(s)://HOST:PORT/PATH, e.g. http://pacs:8042/dicom-web",
            ) from None
        # The client's default retries every error five times with exponential back-off (half
        # a minute against a server that is down); one attempt, and a clear error, instead.
        self.client.set_http_retry_params(retry=False)

    # --- QIDO -------------------------------------------------------------------------------

    def list_instances(
        self, queries: list[dict[str, str]] | None
    ) -> tuple[list[tuple[str, str, str]], int, list[IndexFailure]]:
        """(study, series, instance) UIDs of every instance the searches find, in order; how
        many series they lie in; the series whose instances the server would not list."""
        instances = self.client.search_for_instances
        if queries is not None and any(SOP_UID in q for q in queries):
            what = "search for instances"
            found = (
                self._uids(record, what, STUDY_UID, SERIES_UID, SOP_UID)
                for query in queries
                for record in self._search(what, instances, SOP_UID, search_filters=query)
            )
            listing = list(dict.fromkeys(found))
            return listing, len({(study, series) for study, series, _ in listing}), []
        what = "search for series"
        series = dict.fromkeys(
            self._uids(record, what, STUDY_UID, SERIES_UID)
            for query in (queries if queries is not None else [{}])
            for record in self._search(
                what, self.client.search_for_series, SERIES_UID, search_filters=query
            )
        )
        what = "search for the instances of a series"
        listing: list[tuple[str, str, str]] = []
        failures: list[IndexFailure] = []
        for study, uid in series:
            try:
                records = self._search(
                    what, instances, SOP_UID, study_instance_uid=study, series_instance_uid=uid
                )
            except _HTTPStatusError as exc:  # e.g. a series deleted since the search
                where = f"{self.url}/studies/{study}/series/{uid}"
                failures.append(IndexFailure(where, f"listing its instances failed: {exc.problem}"))
                continue
            listing += [(study, uid, self._uids(r, what, SOP_UID)[0]) for r in records]
        return list(dict.fromkeys(listing)), len(series), failures

    def _search(self, what: str, method: Any, unique: str, **kwargs: Any) -> list[dict[str, Any]]:
        """All records of one QIDO search, page by page (``unique``: the key of a record).

        Stops at a short page, or at a page with nothing new (a server that ignores ``offset``
        would otherwise be asked forever).
        """
        records: list[dict[str, Any]] = []
        seen: set[str] = set()
        offset = 0
        while True:
            page = self._call(what, method, limit=PAGE, offset=offset, **kwargs)
            if not isinstance(page, list) or not all(isinstance(r, dict) for r in page):
                raise self._garbage(what, f"a JSON {type(page).__name__}, not a list of datasets")
            new = 0
            for record in page:
                uid = self._uids(record, what, unique)[0]
                if uid not in seen:
                    seen.add(uid)
                    records.append(record)
                    new += 1
            if len(page) < PAGE or not new:
                return records
            offset += len(page)

    def _uids(self, record: Mapping[str, Any], what: str, *names: str) -> tuple[str, ...]:
        """UIDs from a DICOM JSON record (by tag); a record without them is not a QIDO answer."""
        out = []
        for name in names:
            element = record.get(_TAGS[name])
            values = element.get("Value") if isinstance(element, dict) else None
            if not (isinstance(values, list) and values and isinstance(values[0], str)):
                raise self._garbage(what, f"datasets without {name} (not DICOM JSON?)")
            out.append(values[0].strip())
        return tuple(out)

    def _call(self, what: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except requests.exceptions.JSONDecodeError:
            raise self._garbage(what, "something that is not JSON") from None
        except requests.exceptions.HTTPError as exc:
            problem, hint = _describe(exc, self.timeout)
            raise _HTTPStatusError(
                f"DICOMweb server {self.url} {problem} ({what})", hint=hint, problem=problem
            ) from None
        except requests.exceptions.RequestException as exc:
            raise self._error(what, exc) from None
        except ValueError as exc:  # the client's own checks of an answer
            raise self._garbage(what, _one_line(exc)) from None

    def _garbage(self, what: str, answer: str) -> DataError:
        return DataError(
            f"DICOMweb server {self.url} answered the {what} with {answer}",
            hint="is this a DICOMweb (QIDO-RS) endpoint? check the URL and its path, "
            "e.g. http://pacs:8042/dicom-web",
        )

    def _error(self, what: str, exc: requests.exceptions.RequestException) -> DataError:
        problem, hint = _describe(exc, self.timeout)
        return DataError(
            f"DICOMweb server {self.url} {problem} ({what})", hint=hint, options=("timeout",)
        )

    # --- WADO -------------------------------------------------------------------------------

    def retrieve(
        self, listing: Sequence[tuple[str, str, str]], folder: Path
    ) -> tuple[list[Path], list[IndexFailure], int, int]:
        """Cache every listed instance: (files, failures, retrieved now, found cached)."""
        files: list[Path] = []
        failures: list[IndexFailure] = []
        fetched = cached = drops = 0
        for study, series, sop in listing:
            where = f"{self.url}/studies/{study}/series/{series}/instances/{sop}"
            if not _UID.fullmatch(sop) or len(sop) > 64:
                # The UID names a file: refuse anything but digits and dots.
                failures.append(IndexFailure(where, "invalid SOPInstanceUID in the QIDO answer"))
                continue
            path = folder / f"{sop}.dcm"
            if path.is_file():
                files.append(path)
                cached += 1
                continue
            try:
                self._fetch(study, series, sop, path)
            except requests.exceptions.RequestException as exc:
                problem, _ = _describe(exc, self.timeout)
                failures.append(IndexFailure(where, f"retrieval failed: server {problem}"))
                transport = not isinstance(exc, requests.exceptions.HTTPError)
                drops = drops + 1 if transport else 0
                if drops >= MAX_CONSECUTIVE_DROPS:
                    raise self._error(
                        f"retrieving instances; {drops} in a row failed, gave up", exc
                    ) from None
                continue
            except Exception as exc:  # a broken answer: multipart, DICOM parsing, writing
                failures.append(IndexFailure(where, f"retrieval failed: {_one_line(exc)}"))
                drops = 0
                continue
            drops = 0
            files.append(path)
            fetched += 1
        return files, failures, fetched, cached

    def _fetch(self, study: str, series: str, sop: str, path: Path) -> None:
        """Retrieve one instance (as stored: any transfer syntax) and write it atomically."""
        with warnings.catch_warnings():  # e.g. a single part sent without multipart wrapping
            warnings.simplefilter("ignore")
            ds = self.client.retrieve_instance(
                study, series, sop, media_types=(("application/dicom", "*"),)
            )
        got = str(getattr(ds, "SOPInstanceUID", "") or "").strip()
        if got != sop:
            raise ValueError(f"the server sent instance {got or '(no SOPInstanceUID)'}")
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)


# --------------------------------------------------------------------------------------------
# A deadline per request
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Indexing the cached files
# --------------------------------------------------------------------------------------------


def _index_files(files: Sequence[Path], *, site: str, key: bytes) -> IndexResult:
    """Index exactly these files (not the whole cache folder) as the DICOM loader does."""
    result = DicomLoader().index_files(sorted({f.resolve() for f in files}), site=site, key=key)
    return IndexResult(unique_keys(result.manifest), result.failures, result.skipped)


def _empty_error(
    url: str, expr: Expr | None, n_series: int, n_instances: int, failures: list[IndexFailure]
) -> RevisionError:
    found = f"{n_series} series, {n_instances} instances listed"
    if failures:
        found += f"; {len(failures)} failed, e.g. {failures[0].reason}"
    if expr is None:
        return DataError(f"DICOMweb server {url} holds no usable image ({found})")
    return SelectionError(
        f"selection matched no image on DICOMweb server {url}: {describe(expr)} ({found})",
        hint="text values compare exactly and case-sensitively; check with `revise select`",
    )
