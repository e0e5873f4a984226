"""A URL as a local file, for the command line's inputs (images, clips): bounded size and wait."""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator

from .errors import InputError
from .limits import DOWNLOAD_BYTES

DOWNLOAD_TIMEOUT = 60  # seconds without data before a download is given up


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


@contextlib.contextmanager
def local_file(source: str) -> Iterator[str]:
    """A path for `source`: the file itself, or a URL downloaded to a temporary file (removed after)."""
    if not is_url(source):
        yield source
        return
    import requests

    fd, path = tempfile.mkstemp(prefix="zerocap-", suffix=os.path.splitext(source.split("?")[0])[1][:8])
    try:
        try:
            with os.fdopen(fd, "wb") as f, requests.get(source, stream=True, timeout=DOWNLOAD_TIMEOUT) as r:
                if r.status_code != 200:
                    raise InputError(f"cannot download {source}: HTTP {r.status_code}")
                got = 0
                for block in r.iter_content(1 << 20):
                    got += len(block)
                    if got > DOWNLOAD_BYTES.hi:
                        raise InputError(f"cannot download {source}: {DOWNLOAD_BYTES.said} are accepted")
                    f.write(block)
        except requests.RequestException as e:
            raise InputError(f"cannot download {source}: {e}") from None
        except OSError as e:
            raise InputError(f"cannot download {source}: {e.strerror}") from None
        yield path
    finally:
        os.remove(path)
