"""Captioning a dataset: find the inputs, caption them in batches, write one JSON line each.

- Inputs: files, folders (searched recursively for the extensions given), glob patterns, URLs,
  and `--list FILE` (one path or URL per line; "-" reads standard input). Only the names are
  held; each image is decoded when its batch runs.
- Output (`Results`): JSON lines, each written and flushed as soon as its image is done. A
  rerun resumes: inputs already in the file are skipped, a last line cut short by a crash is
  removed (its input is captioned again), nothing is captioned twice. An input that fails gets
  an error line ({"image": ..., "error": ...}) and the job goes on.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from .errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
MAX_DOWNLOAD_BYTES = 200_000_000  # a URL in a list: larger downloads are refused
DOWNLOAD_TIMEOUT = 60  # seconds without data before a download is given up


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def find_inputs(args: Iterable[str], list_file: str | None = None,
                extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[str]:
    """The inputs named by `args` and `list_file`, in order, each once.

    A folder gives its files with `extensions` (any depth, sorted); a pattern with * ? [ gives
    its matches (** for any depth, sorted); anything else is taken as named (a missing file
    becomes an error line when its turn comes).
    """
    found: dict[str, None] = {}  # ordered set
    for arg in list(args) + _read_list(list_file):
        if is_url(arg) or os.path.isfile(arg):
            found[arg] = None
        elif os.path.isdir(arg):
            for root, dirs, files in os.walk(arg):
                dirs.sort()
                found.update((os.path.join(root, f), None) for f in sorted(files) if f.lower().endswith(extensions))
        elif any(c in arg for c in "*?["):
            matches = sorted(m for m in glob.glob(arg, recursive=True) if os.path.isfile(m))
            if not matches:
                raise InputError(f"no file matches {arg!r}")
            found.update((m, None) for m in matches)
        else:
            found[arg] = None
    return list(found)


def _read_list(list_file: str | None) -> list[str]:
    if list_file is None:
        return []
    if list_file == "-":
        lines = sys.stdin.read().splitlines()
    else:
        try:
            with open(list_file, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise InputError(f"cannot read the list {list_file}: {e.strerror}") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


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
                    if got > MAX_DOWNLOAD_BYTES:
                        raise InputError(f"cannot download {source}: larger than {MAX_DOWNLOAD_BYTES:,} bytes")
                    f.write(block)
        except requests.RequestException as e:
            raise InputError(f"cannot download {source}: {e}") from None
        yield path
    finally:
        os.remove(path)


class Results:
    """A JSON-lines file of results that a rerun resumes (see the module docstring). The file is
    read line by line (a 100,000-line file is not held in memory) and locked while a job writes."""

    def __init__(self, path: str, key: str = "image", retry_failed: bool = False):
        self.path, self.key = path, key
        self.done: set[str] = set()  # captioned
        self.failed: set[str] = set()  # error lines
        self.file = self._open()
        if self._load(keep_errors=not retry_failed):
            self._drop_error_lines()

    def _open(self):
        f = open(self.path, "a+b")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise InputError(f"{self.path} is being written by another job; wait for it, or choose another"
                             " --out") from None
        return f

    def _records(self) -> Iterator[tuple[bytes, dict]]:
        """(line, record) of each complete line; a last line cut short (a crash mid-write) is
        removed from the file, so its input runs again."""
        self.file.seek(0)
        end = 0
        for n, raw in enumerate(self.file, 1):
            if not raw.endswith(b"\n"):
                break
            try:
                record = json.loads(raw)
                record[self.key]
            except (ValueError, KeyError, TypeError):
                raise InputError(f"{self.path}, line {n}: not a result line of this job (JSON with"
                                 f" {self.key!r}); fix or remove it, or choose another --out") from None
            end += len(raw)
            yield raw, record
        self.file.truncate(end)
        self.file.seek(0, os.SEEK_END)

    def _load(self, keep_errors: bool) -> bool:
        """Read what is done; True when error lines are to be dropped (retried)."""
        errors = False
        for _, record in self._records():
            if "error" not in record:
                self.done.add(record[self.key])
            elif keep_errors:
                self.failed.add(record[self.key])
            else:
                errors = True
        return errors

    def _drop_error_lines(self) -> None:
        tmp = self.path + ".retry"
        with open(tmp, "wb") as out:
            for raw, record in self._records():
                if "error" not in record:
                    out.write(raw)
        os.replace(tmp, self.path)
        self.file.close()
        self.file = self._open()

    def __contains__(self, name: str) -> bool:
        return name in self.done or name in self.failed

    def write(self, record: dict) -> None:
        self.file.write((json.dumps(finite(record)) + "\n").encode("utf-8"))
        self.file.flush()
        (self.failed if "error" in record else self.done).add(record[self.key])

    def close(self) -> None:
        self.file.close()


def finite(value):
    """JSON has no inf/nan: null instead (recursively)."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


# ---- running a job --------------------------------------------------------------------------------
# target(engine, source, name) -> (normalised CLIP target (D,), extra fields of the result)
Target = Callable[..., tuple]


def image_target(engine, source: str, name: str):
    with local_file(source) as path:
        return engine.targets.image_target(path, name), {}


def caption_batch(engine, names: list[str], cfg, target: Target = image_target, key: str = "image",
                  sources: list[str] | None = None, progress=None) -> list[dict]:
    """Result records for one batch: each input's target (an error record when it fails), then
    one decode of the good ones together. sources: where each input is read from (default: its
    name; a Ray worker gets absolute paths); progress: the engine's per-token callback."""
    import torch

    records: list[dict | None] = [None] * len(names)
    good, targets, extras = [], [], []
    for i, (name, source) in enumerate(zip(names, sources or names)):
        try:
            t, extra = target(engine, source, name)
        except InputError as e:
            records[i] = {key: name, "error": str(e)}
            continue
        good.append(i)
        targets.append(t)
        extras.append(extra)
    if good:
        results = engine.decode(torch.stack(targets), cfg, [names[i] for i in good], progress)
        for i, result, extra in zip(good, results, extras):
            records[i] = {key: names[i], **result.to_dict(), **extra}
    return records


@dataclass
class Summary:
    captioned: int = 0
    failed: int = 0
    skipped: int = 0  # already in the output file
    earlier_failures: int = 0  # of the skipped: error lines from an earlier run
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    def line(self, out: str | None) -> str:
        skipped = f", skipped {self.skipped} already in {out}" if self.skipped else ""
        earlier = f" (+{self.earlier_failures} earlier, kept)" if self.earlier_failures else ""
        rate = f", {self.captioned / self.seconds:.2f} images/s" if self.captioned and self.seconds else ""
        return f"captioned {self.captioned}, failed {self.failed}{earlier}{skipped}; {self.seconds:.1f} s{rate}"

    @property
    def any_failed(self) -> bool:
        return bool(self.failed or self.earlier_failures)


def run_job(names: list[str], batches: Callable[[Iterable[list[str]]], Iterator[list[dict]]],
            emit: Callable[[dict], None], results: Results | None = None, batch_size: int = 8,
            key: str = "image", progress=None) -> Summary:
    """Caption `names` (skipping those in `results`), `batch_size` at a time through `batches`
    (which maps batches of names to their records, in order), and `emit` each record when done."""
    summary, start = Summary(), time.perf_counter()
    todo = []
    for name in names:
        if results is not None and name in results:
            summary.skipped += 1
            summary.earlier_failures += name in results.failed
        else:
            todo.append(name)
    if progress is not None:
        progress.reset(total=len(todo))
    chunks = (todo[i:i + batch_size] for i in range(0, len(todo), batch_size))
    for records in batches(chunks):
        for record in records:
            if results is not None:
                results.write(record)
            emit(record)
            if "error" in record:
                summary.failed += 1
                summary.failures.append(record[key])
            else:
                summary.captioned += 1
            if progress is not None:
                progress.update(1)
    summary.seconds = time.perf_counter() - start
    return summary
