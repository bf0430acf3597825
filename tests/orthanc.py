"""A real Orthanc PACS (with its DICOMweb plugin) for tests, in a network namespace of its own.

Orthanc binds every interface and a fixed port, so each server runs under ``unshare -n`` with
only its loopback up: nothing outside can reach it, it can reach nothing, and two sessions never
fight over port 8042. Code reaches the server from inside that namespace, either in-process
(:meth:`Orthanc.call` runs a callable on a worker thread that joined the namespace; network
namespaces are per thread) or as a subprocess (:meth:`Orthanc.run`, through ``nsenter``).

tests/conftest.py imports the session fixture ``orthanc`` (tests/ is on sys.path), so one server
serves the whole run; tests share it, so they ``clear()`` and ``upload()`` first.

Without Orthanc, its DICOMweb plugin, root or the namespace tools the fixture skips, except under
``CI=true``, where it fails so that CI cannot silently skip the PACS tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

ORTHANC = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
# command -> the Debian package that has it
TOOLS = {"Orthanc": "orthanc", "unshare": "util-linux", "nsenter": "util-linux", "ip": "iproute2"}
CLONE_NEWNET = 0x40000000
PORT = 8042
START_TIMEOUT = 30.0

T = TypeVar("T")


def missing_prerequisites() -> str | None:
    """Why an Orthanc test server cannot run here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "needs Linux network namespaces"
    if os.geteuid() != 0:
        return "needs root (unshare -n / setns)"
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    if not DICOMWEB_PLUGIN.is_file():
        return f"{DICOMWEB_PLUGIN} is missing (apt-get install orthanc-dicomweb)"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True, timeout=10)
    if probe.returncode != 0:
        return f"unshare -n is not permitted here: {probe.stderr.strip()}"
    return None


def _enter_netns(pid: int) -> None:
    """Move the calling thread into the network namespace of process ``pid``."""
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        if hasattr(os, "setns"):  # Python >= 3.12
            os.setns(fd, CLONE_NEWNET)
            return
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into the namespace of {pid}: {os.strerror(err)}")
    finally:
        os.close(fd)


# urllib follows $http_proxy, which means nothing inside the namespace.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http(method: str, url: str, data: bytes | None = None, timeout: float = 10.0) -> bytes:
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/dicom")
    with _OPENER.open(request, timeout=timeout) as response:
        return response.read()


class Orthanc:
    """One Orthanc server with DICOMweb, no authentication, storage under ``workdir``.

    ``url`` is its REST root and ``dicomweb_url`` its DICOMweb root; both only answer inside
    the namespace (use :meth:`call` or :meth:`run`).
    """

    def __init__(self, workdir: str | os.PathLike, *, port: int = PORT) -> None:
        self.workdir = Path(workdir)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.dicomweb_url = f"{self.url}/dicom-web"
        self.log_path = self.workdir / "orthanc.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._worker: ThreadPoolExecutor | None = None

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> Orthanc:
        reason = missing_prerequisites()
        if reason:
            raise RuntimeError(f"cannot start Orthanc: {reason}")
        config = self._write_config()
        orthanc = shutil.which(ORTHANC)
        assert orthanc is not None
        with self.log_path.open("wb") as log:
            # unshare execs sh, which execs Orthanc: one process, whose pid names the namespace.
            script = 'ip link set lo up && exec "$0" "$@"'
            self._process = subprocess.Popen(
                ["unshare", "-n", "sh", "-c", script, orthanc, str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_until_ready(orthanc)
        except BaseException:
            self.stop()
            raise
        return self

    def _write_config(self) -> Path:
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "revise-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.port,
            "HttpServerEnabled": True,
            "RemoteAccessAllowed": False,  # loopback of its own namespace only
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "SaveJobs": False,
            "StorageCompression": False,
            "HttpDescribeErrors": True,
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def _wait_until_ready(self, orthanc: str) -> None:
        """Wait for Orthanc to run (in a namespace other than ours) and answer, or raise."""
        assert self._process is not None
        pid = self._process.pid
        deadline = time.monotonic() + START_TIMEOUT
        own_netns = os.stat("/proc/self/ns/net").st_ino
        while True:
            self._check_alive()
            # Until sh has exec'd Orthanc, the loopback may still be down (or the namespace
            # not yet ours to tell apart): joining too early would reach the host's loopback.
            with contextlib.suppress(OSError):
                if (
                    os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(orthanc)
                    and os.stat(f"/proc/{pid}/ns/net").st_ino != own_netns
                ):
                    break
            self._check_deadline(deadline, "to start")
            time.sleep(0.02)
        self._worker = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="orthanc-netns",
            initializer=_enter_netns,
            initargs=(pid,),
        )
        while True:
            self._check_alive()
            try:
                self.call(_http, "GET", f"{self.url}/system", None, 2.0)
                return
            except (OSError, urllib.error.URLError):
                self._check_deadline(deadline, "to answer on /system")
                time.sleep(0.05)

    def _check_alive(self) -> None:
        assert self._process is not None
        if self._process.poll() is not None:
            raise RuntimeError(
                f"Orthanc exited with code {self._process.returncode}:\n{self.log_tail()}"
            )

    def _check_deadline(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            tail = self.log_tail()
            raise RuntimeError(f"Orthanc took over {START_TIMEOUT:.0f} s {what}:\n{tail}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- inside the namespace -------------------------------------------------------------

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("Orthanc is not running")
        return self._process.pid

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on a thread inside the namespace; returns or raises as it."""
        if self._worker is None:
            raise RuntimeError("Orthanc is not running")
        return self._worker.submit(fn, *args, **kwargs).result()

    def run(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        """``subprocess.run(command, **kwargs)`` inside the namespace (through nsenter)."""
        return subprocess.run(["nsenter", f"--net=/proc/{self.pid}/ns/net", *command], **kwargs)

    # --- REST helpers ---------------------------------------------------------------------

    def rest(self, method: str, path: str, data: bytes | None = None) -> Any:
        """A REST call on the server (``path`` like ``/instances``); the answer's JSON."""
        body = self.call(_http, method, self.url + path, data)
        return json.loads(body) if body else None

    def upload(self, paths: Iterable[str | os.PathLike]) -> list[str]:
        """Store DICOM files (POST /instances); their Orthanc instance IDs."""
        return [self.rest("POST", "/instances", Path(p).read_bytes())["ID"] for p in paths]

    def clear(self) -> None:
        """Delete every stored patient (and so everything)."""
        for patient in self.rest("GET", "/patients"):
            self.rest("DELETE", f"/patients/{patient}")

    def count(self) -> int:
        """Number of stored instances."""
        return len(self.rest("GET", "/instances"))


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """A running Orthanc shared by the session: tests call ``clear()`` and ``upload()`` first."""
    reason = missing_prerequisites()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Orthanc test server required under CI=true but unavailable: {reason}")
        pytest.skip(f"Orthanc test server unavailable: {reason}")
    with Orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server
