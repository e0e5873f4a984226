"""Finding a job's inputs: files, folders, glob patterns, URLs and lists -- each real file once.

Identity. An input is its real file: the path with every symlink resolved (`source`) and the
(device, inode) pair that hard links share; a URL is itself. Two spellings of one file --
`a.png`, `./a.png`, `/abs/a.png`, `imgs//a.png`, a symlink, a hard link -- are one input, kept
under the first spelling met. A results file records each input's `source`, so a rerun from
another folder, or with other spellings, skips what is done (results.py).

Folders and `**`. Both follow symlinked folders, and both visit each real folder once: a
symlink loop ends, a folder reached twice is scanned once. A folder gives its files with the
job's extensions (any depth, sorted by name within each folder); a pattern with * ? [ gives
every file it matches (`**` = any depth; names starting with "." only when the pattern's part
does), sorted.

Lists (`--list FILE`, "-" for standard input). One name per line, exactly as written: spaces
are kept, a Windows line end (\\r\\n) is taken as a line end, empty lines are skipped and a line
starting with "#" is a comment (a comment that names an existing file is reported). With
`--null` the names are separated by NUL characters instead, as `find -print0` writes them,
with no other rule. Names are bytes decoded as the file system does (os.fsdecode), so every
file name survives, whatever its encoding.
"""
from __future__ import annotations

import fnmatch
import os
import stat
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from ..download import is_url
from ..errors import InputError
from ..images import IMAGE_EXTENSIONS

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
                warn: Warn | None = None) -> list[Input]:
    """The inputs named by `args` and `list_file`, in order, each real file once (see above).

    A name that is neither a file, a folder, a pattern nor a URL is kept as named: a missing
    file becomes an error line when its turn comes.
    """
    warn = warn or (lambda message: print(f"zerocap: warning: {message}", file=sys.stderr))
    found: dict = {}  # key -> Input, in order
    scanned: set[tuple[int, int]] = set()  # real folders already scanned for files
    for arg in list(args) + read_list(list_file, null, warn):
        if is_url(arg) or os.path.isfile(arg):
            names: Iterable[str] = [arg]
        elif os.path.isdir(arg):
            names = _folder_files(arg, extensions, scanned, warn)
        elif any(c in arg for c in "*?["):
            names = sorted(glob_files(arg, warn))
            if not names:
                raise InputError(f"no file matches {arg!r}")
        else:
            names = [arg]
        for name in names:
            item = identify(name)
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
            data = sys.stdin.buffer.read()
        else:
            with open(list_file, "rb") as f:
                data = f.read()
    except OSError as e:
        raise InputError(f"cannot read the list {list_file}: {e.strerror}") from None
    if null:
        return [os.fsdecode(n) for n in data.split(b"\0") if n]
    names = []
    for n, line in enumerate(data.split(b"\n"), 1):
        line = line[:-1] if line.endswith(b"\r") else line
        if not line:
            continue
        if line.startswith(b"#"):
            if warn is not None and os.path.lexists(line):
                warn(f"{where}, line {n}: {os.fsdecode(line)!r} is read as a comment (a line starting with #),"
                     " but it also names a file: write it as ./name, or use --null lists")
            continue
        names.append(os.fsdecode(line))
    return names


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
    for _, entries in walk_folders(top, seen, warn):
        # not only regular files: a broken link named x.png becomes an error line, not a silence
        yield from (e.path for e in entries if not _is_dir(e) and e.name.lower().endswith(extensions))


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
        if base and os.path.isfile(base):
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
