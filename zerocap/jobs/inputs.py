"""Finding a job's inputs: files, folders, glob patterns, URLs and lists -- each real file once.

Identity. An input is its real file: the path with every symlink resolved (`source`) and the
(device, inode) pair that hard links share; a URL is itself. Two spellings of one file --
`a.png`, `./a.png`, `/abs/a.png`, `imgs//a.png`, a symlink, a hard link -- are one input, kept
under the first spelling met. A results file records each input's `source`, so a rerun from
another folder, or with other spellings, skips what is done (results.py).

Folders and `**`. Both follow symlinked folders, and both visit each real folder once: a
symlink loop ends, a folder reached twice is scanned once. A folder gives its entries with the
job's extensions (any depth, sorted by name within each folder); a pattern with * ? [ gives
every entry it matches (`**` = any depth), sorted. One rule for both: an entry that is not a
folder is an input, whatever it is -- a FIFO, a socket or a broken link becomes an error line
when its turn comes, never a silence; and hidden names (starting with ".", files and folders)
are left out, unless named: a folder or file given as such, or a pattern whose part starts
with "." (as the shell's globs). The job's own results file is left out of what folders and
patterns find (with a note); named explicitly, it is refused.

Lists (`--list FILE`, "-" for standard input). One name per line, exactly as written: spaces
are kept, a Windows line end (\\r\\n) is taken as a line end, empty lines are skipped and a line
starting with "#" is a comment (a comment that names an existing file is reported). With
`--null` the names are separated by NUL characters instead, as `find -print0` writes them,
with no other rule. Names are bytes decoded as the file system does (os.fsdecode), so every
file name survives, whatever its encoding. A list names files, folders and URLs, never
patterns: `photo[1].png` is that file. A list is read in pieces and bounded (limits.py:
LIST_NAMES names, LIST_BYTES in all, LIST_NAME bytes a name), so an endless stream
(/dev/zero, /dev/urandom) ends in one line instead of filling memory.
"""
from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import re
import stat
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from ..download import is_url
from ..errors import InputError
from ..formats import IMAGE_EXTENSIONS
from ..limits import LIST_BYTES, LIST_NAME, LIST_NAMES

Warn = Callable[[str], None]


@dataclass(frozen=True)
class Input:
    """One input of a job: the name as given, and what it is."""

    name: str  # as given on the command line, in a list, or as found in a folder or by a pattern
    source: str  # the URL, or the real path: absolute, every symlink resolved
    inode: tuple[int, int] | None = None  # (device, inode) of an existing file; None for a URL or a missing file

    @property
    def key(self):
        """What makes two inputs the same: the file (hard links included), else the source."""
        return self.inode or self.source

    @property
    def is_url(self) -> bool:
        return is_url(self.source)

    @property
    def exists(self) -> bool:
        return self.inode is not None


CONTENT_ENDS = 64 * 1024  # bytes hashed at each end of a file for its content identity


def content_id(source: str) -> str | None:
    """What a results file records of a local file's content beside its path: "SIZE:MTIME_NS:HASH",
    the SHA-256 (16 hex digits) of its first and last 64 KiB. The same content under a new name
    (a folder moved, a new link) is recognised; new content at a recorded name (a new size, a new
    modification time, or other bytes at either end) is not. None for a URL or an unreadable file."""
    if is_url(source):
        return None
    try:
        with open(source, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                return None
            h = hashlib.sha256(f.read(CONTENT_ENDS))
            if st.st_size > CONTENT_ENDS:
                f.seek(max(CONTENT_ENDS, st.st_size - CONTENT_ENDS))
                h.update(f.read(CONTENT_ENDS))
    except (OSError, ValueError):
        return None
    return f"{st.st_size}:{st.st_mtime_ns}:{h.hexdigest()[:16]}"


def identify(name: str) -> Input:
    if is_url(name):
        return Input(name, name)
    real = os.path.realpath(name)
    try:
        st = os.stat(real)
    except (OSError, ValueError):  # missing, unreadable, or a name with a NUL
        return Input(name, real)
    return Input(name, real, (st.st_dev, st.st_ino))


def find_inputs(args: Iterable[str], list_file: str | None = None,
                extensions: tuple[str, ...] = IMAGE_EXTENSIONS, null: bool = False,
                warn: Warn | None = None, output: str | None = None) -> list[Input]:
    """The inputs named by `args` and `list_file`, in order, each real file once (see above).

    A name that is neither a file, a folder, a pattern nor a URL is kept as named: a missing
    file becomes an error line when its turn comes. `output`: the job's results file, left out
    of what folders and patterns find (named explicitly, it stays, for the output's check to
    refuse).
    """
    warn = warn or (lambda message: print(f"zerocap: warning: {message}", file=sys.stderr))
    own = identify(output).key if output else None
    found: dict = {}  # key -> Input, in order
    scanned: set[tuple[int, int]] = set()  # real folders already scanned for files
    named = [(arg, True) for arg in args] + [(name, False) for name in read_list(list_file, null, warn)]
    for arg, pattern_allowed in named:
        expanded = True
        if is_url(arg) or os.path.isfile(arg):
            names: Iterable[str] = [arg]
            expanded = False
        elif os.path.isdir(arg):
            names = _folder_files(arg, extensions, scanned, warn)
        elif pattern_allowed and _magic(arg):
            names = sorted(glob_files(arg, warn))
            if not names:
                raise InputError(f"no file matches {arg!r}")
        else:
            names = [arg]
            expanded = False
        for name in names:
            item = identify(name)
            if expanded and own is not None and item.key == own:
                warn(f"{name} is this job's results file (--out): left out of the inputs")
                continue
            found.setdefault(item.key, item)
    return list(found.values())


# ---- lists -------------------------------------------------------------------------------------
def read_list(list_file: str | None, null: bool = False, warn: Warn | None = None) -> list[str]:
    """The names in a list file ("-": standard input); the rules are in the module docstring."""
    if list_file is None:
        return []
    where = "standard input" if list_file == "-" else list_file
    try:
        if list_file == "-":
            return _names(sys.stdin.buffer, where, null, warn)
        with open(list_file, "rb") as f:
            return _names(f, where, null, warn)
    except OSError as e:
        raise InputError(f"cannot read the list {list_file}: {e.strerror}") from None


def _is_pipe(stream) -> bool:
    """A list read from a pipe or socket (its writer may have died mid-entry), not a file."""
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _too_long(where: str, what: str) -> InputError:
    return InputError(f"the list {where} {what}; a list holds {LIST_NAMES.said}, {LIST_BYTES.said} in all, a"
                      f" name {LIST_NAME.said}: split it into several jobs, or give a folder or a pattern")


def _names(stream, where: str, null: bool, warn: Warn | None) -> list[str]:
    """The names in `stream`, read in pieces and bounded (LIST_NAMES, LIST_BYTES, LIST_NAME);
    runs of empty entries are skipped at C speed, so 100 MB of separators take a moment."""
    sep = b"\0" if null else b"\n"
    entry = re.compile(rb"[^\0]+" if null else rb"[^\n]+")
    names: list[str] = []
    total, n, buf = 0, 0, b""  # n: separators passed, so the next entry is number n + 1
    while True:
        piece = stream.read(1 << 16)
        total += len(piece)
        if total > LIST_BYTES.hi:
            raise _too_long(where, f"is longer than {LIST_BYTES.said}")
        data = buf + piece
        end = len(data) if not piece else data.rfind(sep) + 1  # whole entries only, until the end
        pos = 0
        for m in entry.finditer(data, 0, end):
            n += data.count(sep, pos, m.start())
            pos = m.start()
            name = _name(m.group(), n + 1, where, null, warn)
            if name is not None:
                names.append(name)
        n += data.count(sep, pos, end)
        if len(names) > LIST_NAMES.hi:
            raise _too_long(where, f"holds more than {LIST_NAMES.said}")
        buf = data[end:]
        if len(buf) > LIST_NAME.hi:
            _name(buf, n + 1, where, null, warn)  # says so
        if not piece:
            if data.strip(b"\0\n\r \t") and not data.endswith(sep) and _is_pipe(stream):
                raise InputError(f"the list {where} ends in the middle of entry {n + 1} (no {'NUL' if null else 'line end'}"
                                 " after it): was the program writing it stopped? A list from a pipe must end each"
                                 " entry; a list file may leave its last line open")
            return names


def _name(line: bytes, n: int, where: str, null: bool, warn: Warn | None) -> str | None:
    """One entry as a name, or None for what is skipped (empty entries, comments)."""
    if len(line) > LIST_NAME.hi:
        raise _too_long(where, f"has a name longer than {LIST_NAME.said}"
                               + (f" (name {n})" if null else f" (line {n}); is it a list of names, one per line?"))
    if null:
        return os.fsdecode(line) if line else None
    line = line[:-1] if line.endswith(b"\r") else line
    if not line:
        return None
    if b"\0" in line:
        raise InputError(f"{where}, line {n}: a NUL byte, which no file name has; is it a list of names? (for"
                         " NUL-separated names, as find -print0 writes them, add --null)")
    if line.startswith(b"#"):
        if warn is not None and os.path.lexists(line):
            warn(f"{where}, line {n}: {os.fsdecode(line)!r} is read as a comment (a line starting with #),"
                 " but it also names a file: write it as ./name, or use --null lists")
        return None
    return os.fsdecode(line)


# ---- folders -------------------------------------------------------------------------------------
def _dir_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _entries(folder: str, warn: Warn | None) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as e:
        if warn is not None:
            warn(f"cannot read the folder {folder}: {e.strerror}; its files are left out")
        return []


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError:
        return False


def walk_folders(top: str, seen: set | None = None, warn: Warn | None = None,
                 hidden: bool = True) -> Iterator[tuple[str, list]]:
    """(folder, its entries sorted by name) for `top` and every folder below it, visiting each
    real folder once (`seen`: their keys): first the folders reached without a symlink, depth
    first, then those reached through symlinked folders -- so a file is named by its plain path
    where it has one, and a loop ends. hidden=False leaves out folders whose name starts with
    "." (as glob's `**` does)."""
    seen = set() if seen is None else seen
    linked: list[str] = []  # symlinked folders met, walked after the plain ones
    stack = [top]
    while stack or linked:
        folder = stack.pop() if stack else linked.pop(0)
        key = _dir_key(folder)
        if key is None or key in seen:
            continue
        seen.add(key)
        entries = _entries(folder, warn)
        yield folder, entries
        subs = [e for e in entries if _is_dir(e) and (hidden or not e.name.startswith("."))]
        stack.extend(reversed([e.path for e in subs if not e.is_symlink()]))
        linked.extend(e.path for e in subs if e.is_symlink())


def _folder_files(top: str, extensions: tuple[str, ...], seen: set, warn: Warn | None) -> Iterator[str]:
    for _, entries in walk_folders(top, seen, warn, hidden=False):
        # every entry that is not a folder and not hidden: a FIFO or a broken link named x.png becomes an
        # error line; .x.png, .thumbnails/ are left out, as `**` leaves them out
        yield from (e.path for e in entries
                    if not e.name.startswith(".") and not _is_dir(e) and e.name.lower().endswith(extensions))


# ---- glob patterns -------------------------------------------------------------------------------
def _magic(part: str) -> bool:
    return any(c in part for c in "*?[")


def glob_files(pattern: str, warn: Warn | None = None) -> Iterator[str]:
    """Files matching `pattern`; like glob.glob(pattern, recursive=True) for files, except that
    `**` visits each real folder once (symlink loops end)."""
    parts = pattern.split(os.sep)
    base_parts = []
    while parts and not _magic(parts[0]):
        base_parts.append(parts.pop(0))
    base = os.sep.join(base_parts) if base_parts else ""
    if pattern.startswith(os.sep) and not base:
        base = os.sep
    collapsed = []  # a/**/**/b is a/**/b
    for p in parts:
        if not (p == "**" and collapsed and collapsed[-1] == "**"):
            collapsed.append(p)
    yield from _match(base, collapsed, warn)


def _join(base: str, name: str) -> str:
    return os.path.join(base, name) if base else name


def _relative(path: str) -> str:
    """A path found under "." as glob spells it: "a/b", not "./a/b"."""
    if path == os.curdir:
        return ""
    return path[len(os.curdir + os.sep):] if path.startswith(os.curdir + os.sep) else path


def _match(base: str, parts: list[str], warn: Warn | None) -> Iterator[str]:
    if not parts:
        if base and os.path.lexists(base) and not os.path.isdir(base):  # as a folder scan: any entry not a folder
            yield base
        return
    part, rest = parts[0], parts[1:]
    folder = base or os.curdir
    if part == "**":  # zero or more folders, each real one once
        for path, entries in walk_folders(folder, set(), warn, hidden=False):
            sub = path if base else _relative(path)
            if rest:
                yield from _match(sub, rest, warn)
            else:  # a trailing ** matches every file below
                yield from (_join(sub, e.name) for e in entries if not e.name.startswith(".") and not _is_dir(e))
        return
    if not _magic(part):
        yield from _match(_join(base, part), rest, warn)
        return
    for entry in _entries(folder, None) if os.path.isdir(folder) else []:
        if entry.name.startswith(".") and not part.startswith("."):
            continue
        if fnmatch.fnmatchcase(entry.name, part) and (not rest or _is_dir(entry)):
            yield from _match(_join(base, entry.name), rest, warn)
