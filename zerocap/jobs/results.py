"""Files a job writes: its results (JSON lines that a rerun resumes) and eval's per-image scores.

The rule: zerocap writes only to a file that is new, empty, or one of its own -- every line a
JSON object whose "zerocap" field names the file's kind ("captions/1", "videos/1", "scores/1");
it never writes over one of the job's inputs; it changes no byte it did not write; and it keeps
a results file's symlinks and mode. Every output is opened (and locked) before any work is
done, so a file that cannot be written is said at once, in one line.

Results (`ResultsFile`): one line per input, written and flushed as soon as it is done, with the
input's name as given (`image`/`video`), its real file (`source`: the resolved path, or the
URL) and the settings that made it (`settings`: mode, form, the knobs that differ from their defaults,
the models; `compared`: a knob not recorded is at its default). A rerun
resumes: inputs whose real file already has a line are skipped, however they are spelled now
and from whatever folder -- when the settings are the same; a file made with other settings is
refused in one line naming the differences, unless `mix_settings` (--mix-settings). The only
bytes ever removed are zerocap's own half-written last line (a crash mid-write; its input runs
again), recognised as such; any other text at the end, or anywhere, refuses the run with the
file untouched. `retry_failed` drops the error lines first, so those inputs run again: the file
is rewritten beside its real path (symlinks kept) with its mode, then renamed over it (other
hard links keep the old file; said).
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import stat
import tempfile
import time
from typing import Iterable, Iterator

from ..errors import InputError
from ..limits import LINE_BYTES
from ..methods import in_full
from .inputs import Input, content_id, identify

MARK = "zerocap"
KINDS = {"image": "captions/1", "video": "videos/1"}  # a results file's kind, by its key field
SCORES = "scores/1"
NAMES_ONLY = ("lm_model", "clip_model")  # settings that name what the fingerprints identify: not compared


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


def open_output(path: str, what: str, inputs: Iterable[Input] = ()) -> tuple[int, str | None]:
    """(a locked read-write descriptor of `path`, the real path of the file when this call created
    it, else None), after the checks every output gets: not an input, a regular file or a new name
    in an existing folder, writable, and not being written by another zerocap job. The real path:
    `path` may be a link to a file not there yet; what zerocap created it may remove, never the link."""
    same = _same_file(path, inputs)
    if same is not None:
        raise InputError(f"{what} {path} is one of the inputs ({same.name}); zerocap never writes over its inputs:"
                         " choose another file")
    if os.path.isdir(path) or path.endswith(os.sep):
        raise InputError(f"{what} {path} is a folder; give a file name")
    if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
        raise InputError(f"{what} {path} is not a regular file (a device, pipe or socket); give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(path) and not os.path.isdir(folder):
        above = folder
        while above and not os.path.lexists(above) and os.path.dirname(above) != above:
            above = os.path.dirname(above)
        if os.path.lexists(above) and not os.path.isdir(above):
            raise InputError(f"{what} {path}: {above} is a file, not a folder; give a file name in a folder")
        raise InputError(f"{what} {path}: the folder {folder} does not exist")
    for _ in range(5):
        existed = os.path.exists(path)
        real = os.path.realpath(path)  # where a link to a file not there yet makes the new file
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
            return fd, (None if existed else real)
        os.close(fd)
    raise InputError(f"{path} keeps changing while zerocap opens it; is another job rewriting it?")


def remove_stale_copies(path: str, warn=None) -> None:
    """Remove the copies an earlier --retry-failed left beside the results file when it was killed
    before renaming one over it (the results file itself was then still whole): files of
    --retry-failed's names (today's and an earlier zerocap's) that no running job holds locked and
    that hold only zerocap lines. An empty one is left while it is new (NEW_COPY_SECONDS): a running
    job creates its copy before it locks it. Each removed is said."""
    folder = os.path.dirname(os.path.realpath(path))
    base = os.path.basename(os.path.realpath(path))
    try:
        names = [n for n in os.listdir(folder)
                 if (n.startswith(TMP_PREFIX) and n.endswith(TMP_SUFFIX))
                 or (n.startswith("." + base + ".") and n.endswith(".zerocap-tmp"))][:100]
    except OSError:
        return
    for name in names:
        stale = os.path.join(folder, name)
        try:
            fd = os.open(stale, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (st.st_size == 0 and time.time() - st.st_mtime < NEW_COPY_SECONDS):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a running job's copy
            head = os.pread(fd, len(MARK) + 4, 0)
            if head and not head.startswith(b'{"' + MARK.encode() + b'"'):
                continue  # not ours
            os.remove(stale)
            if warn is not None:
                warn(f"removed {stale}, the partial copy a killed --retry-failed left (the results file was"
                     " still whole)")
        finally:
            os.close(fd)


def remove_created(fd: int, created: str | None) -> None:
    """Remove the empty file this job created (its real path, never a link that led to it), if
    it is still the file `fd` holds."""
    if created is None:
        return
    try:
        st, now = os.fstat(fd), os.lstat(created)
        if st.st_size == 0 and (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
            os.remove(created)
    except OSError:
        pass


def _stat(path: str):
    try:
        return os.stat(path)
    except OSError:
        return None


def bounded_lines(f, where: str) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of each line of the binary file `f` from where it is, the last one possibly
    without its newline; InputError at a line longer than LINE_BYTES (a file without newlines, a
    sparse file, a device): bounded memory whatever the file is."""
    offset, n = 0, 0
    while True:
        raw = f.readline(LINE_BYTES.hi + 1)
        if not raw:
            return
        n += 1
        if len(raw) > LINE_BYTES.hi:
            raise InputError(f"{where}: line {n} is longer than {LINE_BYTES.said}; zerocap's lines are far shorter:"
                             " is it the right file?")
        yield offset, raw
        offset += len(raw)


def _lines(fd: int, where: str) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of each line, the last one possibly without its newline."""
    with os.fdopen(os.dup(fd), "rb") as f:
        f.seek(0)
        yield from bounded_lines(f, where)


def _write_all(fd: int, data: bytes, path: str) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror}; what was written before is kept, and the same command"
                         " resumes from there") from None


TMP_PREFIX, TMP_SUFFIX = ".zerocap-", ".tmp"  # --retry-failed's copy beside the results file
NEW_COPY_SECONDS = 60  # an empty copy younger than this may be a running job's, not yet locked


def ours_cut_short(raw: bytes, key: str = "image", kind: str | None = None, after_ours: bool = False) -> bool:
    """A last line (no newline, not JSON) that is a line of zerocap's cut short: it starts as every
    line of ours does ('{"zerocap": "captions/1", "image": "') and holds only the printable ASCII
    zerocap writes. After a whole line of ours (`after_ours`), a piece of that start is ours too:
    a full disk cuts a write at a block boundary, anywhere in a line. A file that holds only such
    a piece (`{`, `{"zerocap"`) is not taken for ours: it is nobody's cut line."""
    prefix = json.dumps({MARK: kind or KINDS[key], key: ""})[:-2].encode()
    ours = raw.startswith(prefix) or (after_ours and bool(raw) and prefix.startswith(raw))
    return ours and all(0x20 <= b < 0x7F for b in raw)


class _Scan:
    """The complete lines of a file of ours, checked as they are read: iterate for (offset, line,
    record); InputError unless each is a `kind` line. A last line without its newline is ours cut
    short (a crash mid-write) only when it is recognisably so -- it starts as every line of ours
    does ('{"zerocap": "captions/1", "image": "'), holds only the printable ASCII we write, and
    is not complete JSON: then `cut` is its offset, for the caller to remove once every check
    has passed. A complete line of ours without its newline is a record (`unterminated`: the
    next line written starts with a newline). Anything else at the end is a user's text:
    refused, the file untouched."""

    def __init__(self, fd: int, path: str, kind: str, what: str, key: str = "image"):
        self.fd, self.path, self.kind, self.what, self.key = fd, path, kind, what, key
        self.cut: int | None = None
        self.unterminated = False
        self.lines = 0

    def __iter__(self) -> Iterator[tuple[int, bytes, dict]]:
        for offset, raw in _lines(self.fd, f"{self.what} {self.path}"):
            self.lines += 1
            complete = raw.endswith(b"\n")
            if complete and not raw.strip():  # a blank line: nothing (eval skips it too)
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                record = None
            if not complete and record is None:
                if ours_cut_short(raw, self.key, self.kind, after_ours=self.lines > 1):
                    self.cut = offset  # ours, cut short: its input runs again
                    return
                raise _foreign(self.path, self.kind, self.what, self.lines, last=True)
            if not isinstance(record, dict) or record.get(MARK) != self.kind:
                raise _foreign(self.path, self.kind, self.what, self.lines, record)
            self.unterminated = not complete
            yield offset, raw, record


def _foreign(path: str, kind: str, what: str, n: int, record=None, last: bool = False) -> InputError:
    theirs = record.get(MARK) if isinstance(record, dict) else None
    noun = kind.split("/")[0]
    why = (f"it is a zerocap file of another kind ({theirs})" if isinstance(theirs, str)
           else f"it ends with text that is not a zerocap line (line {n}, no newline)" if last
           else f"line {n} is not a zerocap {noun} line")
    return InputError(f"{what} {path} is not a zerocap {noun} file ({why}); zerocap writes only to new files,"
                      " empty files and its own, and changes no byte it did not write: choose another file")


# ---- results ---------------------------------------------------------------------------------
class ResultsFile:
    """A job's JSON-lines results, resumable; see the module docstring. Read line by line (a
    100,000-line file is not held in memory) and locked while the job runs.

    settings: what makes the captions (mode, form, knobs, models; flat, JSON values), recorded
    on every line written; a file whose lines were made with other settings is refused, naming
    the differences, unless mix_settings."""

    def __init__(self, path: str, key: str = "image", retry_failed: bool = False, inputs: Iterable[Input] = (),
                 what: str = "--out", settings: dict | None = None, mix_settings: bool = False,
                 warn=None):
        self.path, self.key, self.what = path, key, what
        self.kind = KINDS[key]
        self.settings, self.mix_settings = settings, mix_settings
        self._compared = None if settings is None else compared(settings)  # ours, as every line is compared
        self.done_sources: set[str] = set()
        self.failed_sources: set[str] = set()
        self.done_inodes: set = set()
        self.failed_inodes: set = set()
        # lines that record their file's content (inputs.content_id): identity by content, any name
        self.done_contents: set[str] = set()
        self.failed_contents: set[str] = set()
        self.recorded: dict[str, str] = {}  # source -> the content its last line recorded
        self._ids: dict[str, str | None] = {}  # source -> its content now, read once
        self.written = 0
        self.newline_first = False
        self.fd, self.created = open_output(path, what, inputs)
        try:
            remove_stale_copies(path, warn)
            scan, errors = self._load(keep_errors=not retry_failed)
            if scan.cut is not None:  # every check passed: remove our own line cut short
                os.ftruncate(self.fd, scan.cut)
            self.newline_first = scan.unterminated and scan.cut is None
            if errors:
                self._drop_error_lines(warn)
            os.lseek(self.fd, 0, os.SEEK_END)
        except BaseException:
            self.close()
            raise

    def _scan(self) -> _Scan:
        return _Scan(self.fd, self.path, self.kind, self.what, self.key)

    def _records(self, scan: _Scan) -> Iterator[tuple[bytes, dict]]:
        for _, raw, record in scan:
            if not isinstance(record.get(self.key), str) or not isinstance(record.get("source"), str):
                raise InputError(f"{self.what} {self.path}, line {scan.lines}: a zerocap line without the {self.key!r}"
                                 " and 'source' it needs; fix or remove that line, or choose another file")
            yield raw, record

    def _load(self, keep_errors: bool) -> tuple[_Scan, int]:
        """Read what is done, checking each line's settings: (the scan, error lines to drop)."""
        scan, errors = self._scan(), 0
        for raw, record in self._records(scan):
            failed = "error" in record
            if failed and not keep_errors:
                errors += 1
                continue
            self._check_settings(record, scan.lines)
            self._remember(record, failed)
        return scan, errors

    def _remember(self, record: dict, failed: bool) -> None:
        source, content = record["source"], record.get("content")
        if isinstance(content, str):
            (self.failed_contents if failed else self.done_contents).add(content)
            self.recorded[source] = content
            return
        # a line of an earlier zerocap, without its content: its name, and the file now found there
        (self.failed_sources if failed else self.done_sources).add(source)
        inode = identify(source).inode
        if inode is not None:
            (self.failed_inodes if failed else self.done_inodes).add(inode)

    def _check_settings(self, record: dict, n: int) -> None:
        if self.settings is None or self.mix_settings:
            return
        theirs, ours = record.get("settings"), self._compared
        if isinstance(theirs, dict) and compared(theirs) == ours:
            return
        if not isinstance(theirs, dict):
            why = f"line {n} ({record[self.key]}) has no recorded settings: an earlier zerocap wrote it"
        else:
            why = f"line {n} ({record[self.key]}) was made with " + differences(compared(theirs), ours)
        raise InputError(f"{self.what} {self.path} holds results made with other settings: {why}. Resume it with"
                         " the settings that made it, choose another file, or add --mix-settings to append these"
                         " results (each line records its own settings)")

    def _drop_error_lines(self, warn=None) -> None:
        """Rewrite the file without its error lines: a copy beside the real file (same mode),
        locked, then renamed over it, so a crash at any moment leaves the old or the new file.
        Other hard links to the file keep the old one (said)."""
        real = os.path.realpath(self.path)
        st = os.fstat(self.fd)
        mode = stat.S_IMODE(st.st_mode)
        try:  # a short name (a results name near the file system's 255 bytes still gets one)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(real), prefix=TMP_PREFIX, suffix=TMP_SUFFIX)
        except OSError as e:
            raise InputError(f"--retry-failed rewrites {self.path}, but its folder is not writable"
                             f" ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.fchmod(fd, mode)
            try:
                os.fchown(fd, st.st_uid, st.st_gid)
            except OSError:
                pass  # not ours to give away: keep the user's own ownership
            for raw, record in self._records(self._scan()):
                if "error" not in record:
                    _write_all(fd, raw if raw.endswith(b"\n") else raw + b"\n", self.path)
            os.fsync(fd)
            try:
                os.replace(tmp, real)
            except OSError as e:  # a bind-mounted file (docker -v host/res.jsonl:...) cannot be replaced
                raise InputError(f"--retry-failed rewrites {self.path} as a new file renamed over it, which this"
                                 f" file does not allow ({e.strerror}; a file mounted on its own, as docker -v"
                                 " does, cannot be replaced): the file is unchanged; mount its folder instead,"
                                 " or run without --retry-failed") from None
        except BaseException:
            os.close(fd)
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        os.close(self.fd)
        self.fd, self.created, self.newline_first = fd, None, False
        if st.st_nlink > 1 and warn is not None:
            others = st.st_nlink - 1
            warn(f"--retry-failed wrote {self.path} anew without its error lines; its {others} other hard"
                 f" link{'s' if others > 1 else ''} still name{'' if others > 1 else 's'} the old file")

    def __contains__(self, item: Input) -> bool:
        return self.done(item) or self.failed(item)

    def content(self, item: Input) -> str | None:
        """The input's content identity now (read once per job; None for a URL or an unreadable file)."""
        if item.source not in self._ids:
            self._ids[item.source] = content_id(item.source)
        return self._ids[item.source]

    def changed(self, item: Input) -> bool:
        """A name recorded with other content than it holds now (it is captioned again)."""
        content = self.content(item)
        return content is not None and item.source in self.recorded and self.recorded[item.source] != content \
            and content not in self.done_contents and content not in self.failed_contents

    def _is(self, item: Input, contents: set, sources: set, inodes: set) -> bool:
        content = self.content(item)
        if content is not None and content in contents:  # the same content, under any name
            return True
        if content is not None and item.source in self.recorded:  # other content at a recorded name
            return False
        return item.source in sources or (item.inode is not None and item.inode in inodes)

    def done(self, item: Input) -> bool:
        return self._is(item, self.done_contents, self.done_sources, self.done_inodes)

    def failed(self, item: Input) -> bool:
        return self._is(item, self.failed_contents, self.failed_sources, self.failed_inodes)

    def write(self, record: dict) -> None:
        """Append one record (it carries the input's `source`) and flush it to the file."""
        record = marked(self.kind, record)
        line = (dumps(record) + "\n").encode("ascii")
        _write_all(self.fd, b"\n" + line if self.newline_first else line, self.path)
        self.newline_first = False
        self.written += 1
        self._remember(record, "error" in record)

    def close(self) -> None:
        if self.fd < 0:
            return
        if self.written == 0:  # nothing was written to the file this job created: leave no empty file behind
            remove_created(self.fd, self.created)
        os.close(self.fd)
        self.fd = -1


def compared(settings: dict) -> dict:
    """Recorded settings as two runs' are compared: every knob of their method (methods.in_full), the
    models by their fingerprints only (their names, folders, may differ, or be absent in older lines)."""
    return {k: v for k, v in in_full(settings).items() if k not in NAMES_ONLY}


def differences(theirs: dict, ours: dict) -> str:
    """'mode caption (now ocr), beam_size 5 (now 3)': what differs between two settings."""
    def show(value):
        return "unset" if value is _UNSET else json.dumps(value)

    first = [k for k in ("method", "mode") if k in ours or k in theirs]  # what a run is, before its knobs
    names = first + [k for k in list(ours) + [k for k in theirs if k not in ours] if k not in first]
    diffs = [f"{k} {show(theirs.get(k, _UNSET))} (now {show(ours.get(k, _UNSET))})"
             for k in names if theirs.get(k, _UNSET) != ours.get(k, _UNSET)]
    return ", ".join(diffs)


_UNSET = object()


# ---- eval's per-image scores ----------------------------------------------------------------------
class ScoresFile:
    """`zerocap eval --per-image FILE`: opened and checked before any scoring, written at the end
    (replacing the scores of an earlier eval in that file, in place)."""

    def __init__(self, path: str, inputs: Iterable[Input] = (), what: str = "--per-image"):
        self.path, self.what = path, what
        self.fd, self.created = open_output(path, what, inputs)
        try:
            for _ in _Scan(self.fd, path, SCORES, what):
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
        if remove_if_new:
            remove_created(self.fd, self.created)
        os.close(self.fd)
        self.fd = -1
