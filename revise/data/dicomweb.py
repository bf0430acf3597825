"""Held-out data straight from a PACS: QIDO-RS search, WADO-RS retrieval, a local cache, the index.

:func:`index_dicomweb` finds the series a selection names with QIDO-RS, lists their instances,
retrieves (WADO-RS) the ones not yet cached, indexes the cached files with the built-in DICOM
loader, joins labels as :func:`revise.data.index.index` does and applies the whole selection to
the result. The server only ever narrows the search (what of a selection it is asked to do:
:mod:`revise.data._dicomweb_pushdown`); the local selection decides, so the rows are exactly
those the selection gives on a local copy of the same files.

Instances are cached under ``<cache>/dicomweb/<hash of the server URL>/<SOPInstanceUID>.dcm``,
written atomically; a second call with the same query retrieves nothing. A server that cannot
be reached, refuses, times out or answers something other than DICOM JSON is a
:class:`~revise.errors.DataError`; an instance that cannot be retrieved or read is a failure in
the result and the rest goes on. Logs and errors name UIDs and counts, never patient attributes
(QIDO answers carry PatientName/PatientID; they are never logged).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from revise.data._dicomweb_pushdown import pushdown
from revise.data._dicomweb_server import _Server
from revise.data.dicom_loader import DicomLoader
from revise.data.index import label_manifest, unique_keys
from revise.data.loaders import IndexFailure, IndexResult
from revise.data.manifest import empty_manifest, normalize
from revise.data.select import Expr, describe, mask, parse
from revise.errors import DataError, RevisionError, SelectionError, UsageError
from revise.phi import site_key

log = logging.getLogger(__name__)

__all__ = ["DicomwebFetch", "cache_root", "index_dicomweb"]

MAX_TIMEOUT = 86400  # seconds per request; e.g. inf overflows the socket and timer clocks


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
