"""One DICOMweb server for :mod:`revise.data.dicomweb`: QIDO-RS searches page by page, WADO-RS
retrieval into the cache, and every transport failure turned into a
:class:`~revise.errors.DataError` (an instance that cannot be retrieved is a failure, and the
rest goes on).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

from revise._io.atomic import atomic_path
from revise.data._dicom_header import _one_line
from revise.data._dicomweb_http import _DeadlineSession, _describe, redact_url
from revise.data._dicomweb_pushdown import _UID, SERIES_UID, SOP_UID, STUDY_UID
from revise.data.loaders import IndexFailure
from revise.errors import DataError

_TAGS = {STUDY_UID: "0020000D", SERIES_UID: "0020000E", SOP_UID: "00080018"}
PAGE = 100  # QIDO page size: at or below every common server's cap on results per answer
MAX_CONSECUTIVE_DROPS = 3  # connection failures in a row while retrieving: the server is gone


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
