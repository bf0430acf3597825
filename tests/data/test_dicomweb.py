"""revise.data.dicomweb against a real Orthanc PACS, and against servers that misbehave.

The site: a dozen instances derived from pydicom's bundled CT, MR and JPEG 2000 files (new UIDs,
patients, study dates and devices), an RT plan (no image) and one CT whose header promises more
pixels than it holds. Orthanc serves it over DICOMweb; the same files indexed locally are the
reference every fetch must equal.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from revise.data import _dicomweb_server
from revise.data._dicomweb_pushdown import pushdown
from revise.data.dicomweb import DicomwebFetch, index_dicomweb
from revise.data.index import index
from revise.data.select import select
from revise.errors import DataError, SelectionError

ACME, BOREALIS = "Acme DX-100", "Borealis CR-7"
# (patient name, patient ID, study date): clear identifiers that must never surface.
PATIENTS = {
    "A": ("Alpha^Anna", "PID-ALPHA-7781", "20190304"),
    "B": ("Beta^Bert", "PID-BETA-4410", "20210607"),
    "C": ("Gamma^Gus", "PID-GAMMA-0093", "20230102"),
}
# series: (patient, source file, device, number of instances)
SERIES = {
    "A1": ("A", "CT_small.dcm", ACME, 3),
    "A2": ("A", "MR_small.dcm", BOREALIS, 2),
    "B1": ("B", "CT_small.dcm", BOREALIS, 2),
    "B2": ("B", "JPEG2000.dcm", ACME, 1),
    "C1": ("C", "MR_small.dcm", ACME, 2),
}
RTPLAN = "rtplan.dcm"  # as shipped: patient Last^First^mid^pre, ID id00001
N_IMAGES = sum(n for *_, n in SERIES.values())  # good images; the server also holds 2 others


@dataclass(frozen=True)
class Site:
    root: Path  # the DICOM files Orthanc holds, to index locally
    labels_csv: Path
    corrupt_sop: str
    n_series: int
    phi: tuple[str, ...]


def _testdata(name: str) -> str:
    path = get_testdata_file(name, download=False)  # never the plural: it can hang
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    return str(path)


def _write(source: str, path: Path, *, patient: str, series: str, n: int, device: str) -> str:
    name, pid, date = PATIENTS[patient]
    ds = pydicom.dcmread(source)
    ds.PatientName, ds.PatientID, ds.StudyDate = name, pid, date
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["revise-dicomweb-test", patient])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["revise-dicomweb-test", series])
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["revise-dicomweb-test", series, str(n)])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Manufacturer, ds.ManufacturerModelName = device.split()[0], device
    ds.InstanceNumber = n + 1
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds.SOPInstanceUID


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    root = tmp_path_factory.mktemp("pacs-site")
    labels = []
    for series, (patient, source, device, count) in SERIES.items():
        for n in range(count):
            sop = _write(
                _testdata(source),
                root / "dicom" / series / f"{n}.dcm",
                patient=patient,
                series=series,
                n=n,
                device=device,
            )
            labels.append((sop, len(labels) % 3, "heldout" if patient == "B" else "train"))
    corrupt = root / "dicom" / "C2" / "0.dcm"
    sop = _write(_testdata("CT_small.dcm"), corrupt, patient="C", series="C2", n=0, device=ACME)
    ds = pydicom.dcmread(corrupt)
    ds.Rows *= 2  # the header promises twice the pixels the file holds
    ds.save_as(corrupt, enforce_file_format=True)
    (root / "dicom" / RTPLAN).write_bytes(Path(_testdata(RTPLAN)).read_bytes())
    labels_csv = root / "labels.csv"
    pd.DataFrame(labels, columns=["sop_instance_uid", "label", "split"]).to_csv(
        labels_csv, index=False
    )
    phi = tuple(v for name, pid, _ in PATIENTS.values() for v in (name, pid))
    phi += ("Last^First", "id00001")
    return Site(root / "dicom", labels_csv, sop, len(SERIES) + 2, phi)


@pytest.fixture(scope="module")
def pacs(orthanc, site):
    """The session's Orthanc holding exactly this module's site."""
    orthanc.clear()
    orthanc.upload(sorted(site.root.rglob("*.dcm")))
    assert orthanc.count() == N_IMAGES + 2
    return orthanc


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """A CI proxy must not intercept the test servers on 127.0.0.1."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


def fetch(pacs, **kwargs) -> DicomwebFetch:
    return pacs.call(index_dicomweb, pacs.dicomweb_url, **kwargs)


def local(site: Site, selection: str, **kwargs) -> pd.DataFrame:
    return select(index(site.root, **kwargs).manifest, selection)


def same_rows(remote: pd.DataFrame, reference: pd.DataFrame) -> None:
    """Equal manifests but for where the files lie."""
    a, b = (
        df.drop(columns="path").sort_values("sample_key").reset_index(drop=True)
        for df in (remote, reference)
    )
    pd.testing.assert_frame_equal(a, b)


# --------------------------------------------------------------------------------------------
# Against Orthanc
# --------------------------------------------------------------------------------------------

SELECTIONS = {
    # selection: the QIDO searches it may push down (None: an unfiltered search)
    f'device == "{ACME}"': None,
    'modality == "CT" and study_date >= 2020-01-01': [{"Modality": "CT", "StudyDate": "20200101-"}],
    'modality in ["MR", "NM"] and not device == "Borealis CR-7"': [
        {"Modality": "MR"},
        {"Modality": "NM"},
    ],
    "study_date < 2021-06-07 or label == 2": None,
    "study_date > 2019-03-04 and study_date <= 2021-06-07 and rows >= 64": [
        {"StudyDate": "20190305-20210607"}
    ],
}


@pytest.mark.parametrize("selection", list(SELECTIONS))
def test_fetch_equals_the_local_selection(pacs, site, tmp_path, selection):
    got = fetch(pacs, selection=selection, cache_dir=tmp_path, labels=site.labels_csv)
    want = local(site, selection, labels=site.labels_csv)
    assert set(got.result.manifest["sop_instance_uid"]) == set(want["sop_instance_uid"])
    same_rows(got.result.manifest, want)
    assert got.filters == (SELECTIONS[selection] or [{}])


def test_pushdown_narrows_search_and_retrieval(pacs, site, tmp_path):
    everything = fetch(pacs, selection=f'device == "{ACME}"', cache_dir=tmp_path / "all")
    assert (everything.series, everything.instances) == (site.n_series, N_IMAGES + 2)
    assert everything.fetched == N_IMAGES + 2 and everything.cached == 0

    narrow = fetch(
        pacs, selection='modality == "CT" and study_date >= 2020-01-01', cache_dir=tmp_path / "ct"
    )
    # B1 (2 CTs of 2021) and C2 (the corrupt CT of 2023) of the 7 series
    assert (narrow.series, narrow.instances, narrow.fetched) == (2, 3, 3)
    assert len(narrow.result.manifest) == 2 and len(narrow.result.failures) == 1
    assert len(list((tmp_path / "ct").rglob("*.dcm"))) == 3  # nothing else was retrieved

    one = local(site, f'device == "{BOREALIS}"').iloc[0]
    by_uid = fetch(
        pacs,
        selection=f'sop_instance_uid == "{one.sop_instance_uid}" and modality == "{one.modality}"',
        cache_dir=tmp_path / "uid",
    )
    assert by_uid.filters == [{"SOPInstanceUID": one.sop_instance_uid, "Modality": one.modality}]
    assert (by_uid.series, by_uid.instances, by_uid.fetched) == (1, 1, 1)
    assert by_uid.result.manifest["sop_instance_uid"].tolist() == [one.sop_instance_uid]


def test_second_fetch_retrieves_nothing(pacs, site, tmp_path, monkeypatch):
    monkeypatch.setenv("REVISE_CACHE", str(tmp_path))  # the default cache folder
    first = fetch(pacs, selection='modality == "MR"')
    second = fetch(pacs, selection='modality == "MR"')
    assert (first.fetched, first.cached) == (4, 0)
    assert (second.fetched, second.cached) == (0, 4)
    pd.testing.assert_frame_equal(first.result.manifest, second.result.manifest)
    cached = sorted(tmp_path.glob("dicomweb/*/*.dcm"))
    assert sorted(p.stem for p in cached) == sorted(first.result.manifest["sop_instance_uid"])
    assert not list(tmp_path.rglob("*.part"))
    # another query over the same server reuses what is cached and fetches only the rest
    wider = fetch(pacs, selection='modality in ["MR", "NM"]')
    assert (wider.fetched, wider.cached) == (1, 4)


def test_transfer_syntax_is_kept(pacs, site, tmp_path):
    got = fetch(pacs, selection='modality == "NM"', cache_dir=tmp_path).result.manifest
    assert got["transfer_syntax"].tolist() == ["1.2.840.10008.1.2.4.91"]  # JPEG 2000, as stored


def test_labels_from_csv_and_rule(pacs, site, tmp_path):
    got = fetch(pacs, selection='split == "heldout"', cache_dir=tmp_path, labels=site.labels_csv)
    table = pd.read_csv(site.labels_csv, dtype=str).set_index("sop_instance_uid")
    manifest = got.result.manifest
    assert len(manifest) == 3 and set(manifest["split"]) == {"heldout"}
    assert manifest["label"].astype(str).tolist() == [
        table.loc[sop, "label"] for sop in manifest["sop_instance_uid"]
    ]
    rule = {"column": "device", "map": {ACME: 0, BOREALIS: 1}}
    got = fetch(pacs, selection="label == 1", cache_dir=tmp_path, labels=rule, site="north")
    assert set(got.result.manifest["device"]) == {BOREALIS}
    assert set(got.result.manifest["site"]) == {"north"}
    assert got.fetched == 0  # same server, same cache


def test_results_come_page_by_page(pacs, site, tmp_path, monkeypatch):
    whole = fetch(pacs, cache_dir=tmp_path).result.manifest
    # 7 series and 3 instances in A1: several pages
    monkeypatch.setattr(_dicomweb_server, "PAGE", 2)
    paged = fetch(pacs, cache_dir=tmp_path)
    assert (paged.series, paged.instances, paged.cached) == (site.n_series, N_IMAGES + 2, 12)
    pd.testing.assert_frame_equal(paged.result.manifest, whole)


def test_failures_are_listed_and_no_patient_identifier_leaks(pacs, site, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    got = fetch(pacs, cache_dir=tmp_path)
    result = got.result
    assert len(result.manifest) == N_IMAGES
    (failure,) = result.failures
    assert failure.path.endswith(f"{site.corrupt_sop}.dcm") and "pixel data" in failure.reason
    assert [s.reason for s in result.skipped] == ["no pixel data (RT Plan Storage)"]
    with pytest.raises(SelectionError, match="matched no image") as empty:
        fetch(pacs, selection='device == "Nope 1"', cache_dir=tmp_path)
    text = "\n".join(
        [
            result.manifest.to_csv(),
            *(f"{f.path} {f.reason}" for f in result.failures + result.skipped),
            caplog.text,
            str(empty.value),
        ]
    )
    for identifier in site.phi:
        assert identifier not in text
    assert "dicomweb http://127.0.0.1:8042/dicom-web: 7 series, 12 instances" in caplog.text


# --------------------------------------------------------------------------------------------
# Servers that misbehave (in this process, on the host's loopback)
# --------------------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        status, ctype, body = self.server.routes.get(path, (404, "text/plain", b"no such path"))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # keep test output clean
        pass


@contextlib.contextmanager
def http_server(routes: dict) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.routes = routes
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_down(tmp_path):
    url = f"http://reader:s3cret@127.0.0.1:{closed_port()}/dicom-web"
    with pytest.raises(DataError) as err:
        index_dicomweb(url, selection='modality == "CT"', cache_dir=tmp_path)
    text = str(err.value)
    assert "could not be reached (connection refused)" in text and "is the server running?" in text
    assert url.replace("reader:s3cret@", "") in text and "s3cret" not in text


def test_server_that_hangs(tmp_path):
    with socket.socket() as listener:  # accepts connections (kernel backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/dicom-web"
        start = time.monotonic()
        with pytest.raises(DataError, match=r"sent no answer within 1 s .*raise timeout"):
            index_dicomweb(url, cache_dir=tmp_path, timeout=1.0)
        assert time.monotonic() - start < 5


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ((200, "text/html", b"<html>PACS login</html>"), "with something that is not JSON"),
        ((500, "text/plain", b"internal error"), "answered HTTP 500 Internal Server Error"),
        ((401, "text/plain", b"who are you"), "answered HTTP 401 .*check the credentials"),
        ((200, "application/dicom+json", b'{"hello": "world"}'), "without SeriesInstanceUID"),
        ((200, "application/json", b"42"), "a JSON int, not a list of datasets"),
    ],
)
def test_server_that_answers_garbage(tmp_path, answer, message):
    with http_server({"/dicom-web/series": answer}) as url, pytest.raises(DataError) as err:
        index_dicomweb(url, cache_dir=tmp_path, timeout=5)
    assert re.search(message, str(err.value)) and url in str(err.value)
    assert "search for series" in str(err.value)


def test_server_that_ignores_offset_is_not_asked_forever(tmp_path, monkeypatch):
    monkeypatch.setattr(_dicomweb_server, "PAGE", 2)
    page = [_record(study="1.2", series="1.2.1"), _record(study="1.2", series="1.2.2")]
    routes = {
        # the same two series whatever the offset
        "/dicom-web/series": (200, "application/dicom+json", json.dumps(page).encode()),
        # the first has no instance, the second is gone (404) by the time it is listed
        "/dicom-web/studies/1.2/series/1.2.1/instances": (200, "application/dicom+json", b"[]"),
    }
    with http_server(routes) as url:
        got = index_dicomweb(url, cache_dir=tmp_path, timeout=5, allow_empty=True)
    assert (got.series, got.instances, len(got.result.manifest)) == (2, 0, 0)
    (failure,) = got.result.failures
    assert failure.path.endswith("/series/1.2.2") and "HTTP 404" in failure.reason
    with http_server(routes) as url, pytest.raises(DataError, match="holds no usable image"):
        index_dicomweb(url, cache_dir=tmp_path, timeout=5)


def test_wrong_path_names_the_dicomweb_root(tmp_path):
    with http_server({}) as url, pytest.raises(DataError, match=r"404.*DICOMweb path"):
        index_dicomweb(url, cache_dir=tmp_path, timeout=5)


def _record(**uids: str) -> dict:
    tags = {"study": "0020000D", "series": "0020000E", "sop": "00080018"}
    return {tags[k]: {"vr": "UI", "Value": [v]} for k, v in uids.items()}


def test_instances_that_fail_to_download_are_failures(site, tmp_path):
    good = pydicom.dcmread(next(site.root.glob("A1/*.dcm")))
    study, series = good.StudyInstanceUID, good.SeriesInstanceUID
    sops = [good.SOPInstanceUID, "1.2.3.404", "1.2.3.500", "1.2.3.999", "../../escape"]
    boundary = b"revise-test-boundary"
    part = tmp_path / "part.dcm"
    good.save_as(part, enforce_file_format=True)
    multipart = (
        b"--"
        + boundary
        + b"\r\nContent-Type: application/dicom\r\n\r\n"
        + part.read_bytes()
        + b"\r\n--"
        + boundary
        + b"--\r\n"
    )
    base = f"/dicom-web/studies/{study}/series/{series}"
    routes = {
        "/dicom-web/series": (
            200,
            "application/dicom+json",
            json.dumps([_record(study=study, series=series)]).encode(),
        ),
        f"{base}/instances": (
            200,
            "application/dicom+json",
            json.dumps([_record(sop=s) for s in sops]).encode(),
        ),
        f"{base}/instances/{sops[0]}": (
            200,
            f'multipart/related; type="application/dicom"; boundary={boundary.decode()}',
            multipart,
        ),
        f"{base}/instances/{sops[2]}": (500, "text/plain", b"disk on fire"),
        # the right answer to another question: the instance sent is not the one asked for
        f"{base}/instances/{sops[3]}": (
            200,
            f'multipart/related; type="application/dicom"; boundary={boundary.decode()}',
            multipart,
        ),
    }
    with http_server(routes) as url:
        got = index_dicomweb(url, cache_dir=tmp_path / "cache", timeout=5)
    assert got.result.manifest["sop_instance_uid"].tolist() == [sops[0]]
    assert (got.fetched, got.series, got.instances) == (1, 1, 5)
    reasons = {f.path.split("/instances/")[-1]: f.reason for f in got.result.failures}
    assert set(reasons) == set(sops[1:])
    assert "HTTP 404" in reasons["1.2.3.404"] and "HTTP 500" in reasons["1.2.3.500"]
    assert "sent instance" in reasons["1.2.3.999"]
    assert "invalid SOPInstanceUID" in reasons["../../escape"]
    # one file cached, named by its UID; nothing written anywhere else
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert len(written) == 2 and written[1] == "part.dcm"
    assert re.fullmatch(rf"cache/dicomweb/[0-9a-f]{{16}}/{re.escape(sops[0])}\.dcm", written[0])


# --------------------------------------------------------------------------------------------
# Selections: checked before any traffic, and what is pushed down
# --------------------------------------------------------------------------------------------


def test_selection_errors_come_before_any_request(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/dicom-web"  # would be a DataError if asked
    with pytest.raises(SelectionError, match="did you mean 'device'"):
        index_dicomweb(url, selection='devise == "x"', cache_dir=tmp_path)
    with pytest.raises(SelectionError, match="does not exist"):
        index_dicomweb(url, selection="patient in @missing.txt", cache_dir=tmp_path)


def test_pushdown_only_what_is_exact():
    assert pushdown(None) is None
    assert pushdown('device == "x" and patient == "PID-1"') is None  # never patient
    assert pushdown('modality == "CT" or study_date > 2020-01-01') is None  # not a conjunction
    assert pushdown('modality != "CT" and not modality == "MR"') is None
    assert pushdown('modality == "C*" and modality == "ct"') is None  # wildcard, not CS text
    assert pushdown('study_date < "2020-01-01" and study_uid == 12') is None  # text / number
    assert pushdown("study_date >= 2020-02-28 and study_date < 2020-03-01") == [
        {"StudyDate": "20200228-20200229"}
    ]
    assert pushdown("date == 2021-01-02") == [{"StudyDate": "20210102"}]
    assert pushdown('modality == "CT" and modality == "MR"') == []  # cannot match: no search
    assert pushdown("study_date > 2021-01-01 and study_date < 2020-01-01") == []
    assert pushdown('series_uid in ["1.2", "1.3"] and (study_uid == "1.1")') == [
        {"SeriesInstanceUID": "1.2", "StudyInstanceUID": "1.1"},
        {"SeriesInstanceUID": "1.3", "StudyInstanceUID": "1.1"},
    ]
    many = ", ".join(f'"1.{i}"' for i in range(20))
    assert pushdown(f'sop_instance_uid in [{many}] and modality == "CT"') == [{"Modality": "CT"}]
