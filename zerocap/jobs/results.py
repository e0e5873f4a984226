"""Files a job writes: its results (JSON lines that a rerun resumes) and eval's per-image scores.

The rule: zerocap writes only to a file that is new, empty, or one of its own -- every line a
JSON object whose "zerocap" field names the file's kind ("captions/1", "videos/1", "scores/1");
it never writes over one of the job's inputs; and it keeps a results file's symlinks and mode.
Every output is opened (and locked) before any work is done, so a file that cannot be written
is said at once, in one line.

Results (`ResultsFile`): one line per input, written and flushed as soon as it is done, with the
input's name as given (`image`/`video`) and its real file (`source`: the resolved path, or the
URL). A rerun resumes: inputs whose real file already has a line are skipped, however they are
spelled now and from whatever folder; a last line cut short by a crash is removed (its input
runs again). `retry_failed` drops the error lines first, so those inputs run again: the file is
rewritten beside its real path (symlinks kept) with its mode, then renamed over it.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import stat
import tempfile
from typing import Iterable, Iterator

from ..errors import InputError
from .inputs import Input, identify

MARK = "zerocap"
KINDS = {"image": "captions/1", "video": "videos/1"}  # a results file's kind, by its key field
SCORES = "scores/1"


def finite(value):
    """JSON has no inf/nan: null instead (recursively)."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def dumps(record: dict) -> str:
    """One JSON line (no newline): ASCII, so any file name survives any terminal or file."""
    return json.dumps(finite(record))


def marked(kind: str, record: dict) -> dict:
    """The record with its file-kind mark first."""
    return {MARK: kind, **{k: v for k, v in record.items() if k != MARK}}


# ---- opening an output -------------------------------------------------------------------------
def _same_file(path: str, inputs: Iterable[Input]) -> Input | None:
    """The input `path` is (the same file, or the same real path when neither exists yet), if any."""
    me = identify(path)
    return next((i for i in inputs if i.key == me.key and not i.is_url), None)


def open_output(path: str, what: str, inputs: Iterable[Input] = ()) -> tuple[int, bool]:
    """(a locked read-write descriptor of `path`, whether it was created), after the checks every
    output gets: not an input, a regular file or a new name in an existing folder, writable, and
    not being written by another zerocap job."""
    same = _same_file(path, inputs)
    if same is not None:
        raise InputError(f"{what} {path} is one of the inputs ({same.name}); zerocap never writes over its inputs:"
                         " choose another file")
    if os.path.isdir(path):
        raise InputError(f"{what} {path} is a folder; give a file name")
    if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
        raise InputError(f"{what} {path} is not a regular file (a device, pipe or socket); give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(path) and not os.path.isdir(folder):
        raise InputError(f"{what} {path}: the folder {folder} does not exist")
    for _ in range(5):
        existed = os.path.exists(path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise InputError(f"cannot write {what} {path}: {e.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise InputError(f"{what} {path} is not a regular file; give a file name")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise InputError(f"{path} is being written by another zerocap job; wait for it, or choose another"
                             f" {what}") from None
        # another job may have replaced the file (--retry-failed) while we waited: lock the new one
        st, now = os.fstat(fd), _stat(path)
        if now is not None and (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
            return fd, not existed
        os.close(fd)
    raise InputError(f"{path} keeps changing while zerocap opens it; is another job rewriting it?")


def _stat(path: str):
    try:
        return os.stat(path)
    except OSError:
        return None


def _lines(fd: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of each line, the last one possibly without its newline."""
    with os.fdopen(os.dup(fd), "rb") as f:
        f.seek(0)
        offset = 0
        for raw in f:
            yield offset, raw
            offset += len(raw)


def _write_all(fd: int, data: bytes, path: str) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror}; what was written before is kept, and the same command"
                         " resumes from there") from None


def _recognise(fd: int, path: str, kind: str, what: str) -> Iterator[tuple[int, bytes, dict]]:
    """(offset, line, record) of every complete line; InputError unless each is a `kind` line.

    Ends by removing a last line cut short (a crash mid-write), when the file is recognised as
    ours: it has complete lines of ours, or the cut line is the start of one."""
    ours_prefix = json.dumps({MARK: kind})[:-1].encode()  # '{"zerocap": "captions/1"'
    end, n = 0, 0
    for offset, raw in _lines(fd):
        n += 1
        if not raw.endswith(b"\n"):
            if n == 1 and not (raw.startswith(ours_prefix) or ours_prefix.startswith(raw)):
                raise _foreign(path, kind, what, n)
            os.ftruncate(fd, end)  # a last line cut short: its input runs again
            break
        try:
            record = json.loads(raw)
        except ValueError:
            raise _foreign(path, kind, what, n) from None
        if not isinstance(record, dict) or record.get(MARK) != kind:
            raise _foreign(path, kind, what, n, record)
        end = offset + len(raw)
        yield offset, raw, record


def _foreign(path: str, kind: str, what: str, n: int, record=None) -> InputError:
    theirs = record.get(MARK) if isinstance(record, dict) else None
    why = (f"it is a zerocap file of another kind ({theirs})" if isinstance(theirs, str)
           else f"line {n} is not a zerocap {kind.split('/')[0]} line")
    return InputError(f"{what} {path} is not a zerocap {kind.split('/')[0]} file ({why}); zerocap writes only to"
                      " new files, empty files and its own: choose another file")


# ---- results ---------------------------------------------------------------------------------
class ResultsFile:
    """A job's JSON-lines results, resumable; see the module docstring. Read line by line (a
    100,000-line file is not held in memory) and locked while the job runs."""

    def __init__(self, path: str, key: str = "image", retry_failed: bool = False, inputs: Iterable[Input] = (),
                 what: str = "--out"):
        self.path, self.key, self.what = path, key, what
        self.kind = KINDS[key]
        self.done_sources: set[str] = set()
        self.failed_sources: set[str] = set()
        self.done_inodes: set = set()
        self.failed_inodes: set = set()
        self.written = 0
        self.fd, self.created = open_output(path, what, inputs)
        try:
            errors = self._load(keep_errors=not retry_failed)
            if errors:
                self._drop_error_lines()
            os.lseek(self.fd, 0, os.SEEK_END)
        except BaseException:
            self.close()
            raise

    def _records(self) -> Iterator[tuple[bytes, dict]]:
        for n, (_, raw, record) in enumerate(_recognise(self.fd, self.path, self.kind, self.what), 1):
            if not isinstance(record.get(self.key), str) or not isinstance(record.get("source"), str):
                raise InputError(f"{self.what} {self.path}, line {n}: a zerocap line without the {self.key!r} and"
                                 " 'source' it needs; fix or remove that line, or choose another file")
            yield raw, record

    def _load(self, keep_errors: bool) -> bool:
        """Read what is done; True when there are error lines to drop (retried)."""
        errors = False
        for _, record in self._records():
            failed = "error" in record
            if failed and not keep_errors:
                errors = True
                continue
            source = record["source"]
            (self.failed_sources if failed else self.done_sources).add(source)
            inode = identify(source).inode  # the file may have moved since: then its path still counts
            if inode is not None:
                (self.failed_inodes if failed else self.done_inodes).add(inode)
        return errors

    def _drop_error_lines(self) -> None:
        """Rewrite the file without its error lines: a copy beside the real file (same mode),
        locked, then renamed over it, so a crash at any moment leaves the old or the new file."""
        real = os.path.realpath(self.path)
        mode = stat.S_IMODE(os.fstat(self.fd).st_mode)
        try:
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(real), prefix="." + os.path.basename(real) + ".",
                                       suffix=".zerocap-tmp")
        except OSError as e:
            raise InputError(f"--retry-failed rewrites {self.path}, but its folder is not writable"
                             f" ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.fchmod(fd, mode)
            st = os.fstat(self.fd)
            try:
                os.fchown(fd, st.st_uid, st.st_gid)
            except OSError:
                pass  # not ours to give away: keep the user's own ownership
            for raw, record in self._records():
                if "error" not in record:
                    _write_all(fd, raw, self.path)
            os.fsync(fd)
            os.replace(tmp, real)
        except BaseException:
            os.close(fd)
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        os.close(self.fd)
        self.fd, self.created = fd, False

    def __contains__(self, item: Input) -> bool:
        return self.done(item) or self.failed(item)

    def done(self, item: Input) -> bool:
        return item.source in self.done_sources or (item.inode is not None and item.inode in self.done_inodes)

    def failed(self, item: Input) -> bool:
        return item.source in self.failed_sources or (item.inode is not None and item.inode in self.failed_inodes)

    def write(self, record: dict) -> None:
        """Append one record (it carries the input's `source`) and flush it to the file."""
        record = marked(self.kind, record)
        _write_all(self.fd, (dumps(record) + "\n").encode("ascii"), self.path)
        self.written += 1
        failed = "error" in record
        (self.failed_sources if failed else self.done_sources).add(record["source"])

    def close(self) -> None:
        if self.fd < 0:
            return
        if self.created and self.written == 0 and os.fstat(self.fd).st_size == 0:
            try:  # nothing was written to the file this job created: leave no empty file behind
                st, now = os.fstat(self.fd), os.stat(self.path)
                if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                    os.remove(self.path)
            except OSError:
                pass
        os.close(self.fd)
        self.fd = -1


# ---- eval's per-image scores ----------------------------------------------------------------------
class ScoresFile:
    """`zerocap eval --per-image FILE`: opened and checked before any scoring, written at the end
    (replacing the scores of an earlier eval in that file, in place)."""

    def __init__(self, path: str, inputs: Iterable[Input] = (), what: str = "--per-image"):
        self.path, self.what = path, what
        self.fd, self.created = open_output(path, what, inputs)
        try:
            for _ in _recognise(self.fd, path, SCORES, what):
                pass
        except BaseException:
            self.close(remove_if_new=True)
            raise

    def write(self, records: Iterable[dict]) -> None:
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        data = "".join(dumps(marked(SCORES, r)) + "\n" for r in records)
        _write_all(self.fd, data.encode("ascii"), self.path)

    def close(self, remove_if_new: bool = False) -> None:
        if self.fd < 0:
            return
        if remove_if_new and self.created and os.fstat(self.fd).st_size == 0:
            try:
                os.remove(self.path)
            except OSError:
                pass
        os.close(self.fd)
        self.fd = -1
