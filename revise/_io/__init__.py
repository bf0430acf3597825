"""Outputs and digests. Every output is atomic: complete or absent, never half-written.

* :mod:`revise._io.outputs`: the rules every command that writes follows, checked by
  ``check_output`` before any work, and the files that mark revise's output folders;
* :mod:`revise._io.atomic`: the atomic writers of files and folders;
* :mod:`revise._io.temporaries`: the hidden temporaries of writers, swept once their process
  is gone, and never read as a finished output;
* :mod:`revise._io.write_errors`: a write that fails on a full or read-only file system, as
  one ``OutputError`` naming the output and the fix;
* :mod:`revise._io.text`: text and JSON inputs;
* :mod:`revise._io.digests`: sha256 of files and bytes.

The modes outputs get are read from the umask here, when any of them is first imported.
"""

from __future__ import annotations

import os


def _process_umask() -> int:
    mask = os.umask(0o022)  # read by setting: done once, at import, before any thread runs
    os.umask(mask)
    return mask


# tempfile makes files 0600 and folders 0700 whatever the umask; outputs get the modes an open()
# or mkdir() would give them (a colleague, or a Docker host user, can read the report).
_UMASK = _process_umask()
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK
