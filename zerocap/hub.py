"""Fetching weights: from the Hugging Face hub (or a mirror, $HF_ENDPOINT) and OpenAI's CLIP URL.

What holds, for every file:
- **verified before it gets its final name**: an LFS file against the sha256 the hub names for it
  (`X-Linked-Etag`), a small (git) file against its git blob id (the hub's `ETag`, 40 hex), OpenAI's
  CLIP against the sha256 in its URL; a file the hub names no digest for is refused, never installed;
- **one commit**: a repo's revision (default `main`) is resolved to a commit by its first file's
  answer (`X-Repo-Commit`), and every other file is fetched at that commit;
- **nothing written through a link**: a `.part` is created fresh (`O_CREAT|O_EXCL|O_NOFOLLOW`) or
  resumed only when it is a plain file with one link; a link found there is removed, never
  followed; a file gets its final name by `os.replace` in its own folder; every folder between the
  root and a file is checked not to be a link;
- **bounded**: a body longer than the size the hub declared is cut off and refused;
- **one line** for every failure (a cut connection, a refused file, a full disk), and a rerun
  resumes from the `.part` and verifies the whole file.

Why not `huggingface_hub.hf_hub_download` / `snapshot_download` (2.4, installed with
transformers), which has locks, resume and offline mode: it checks a downloaded file's size but
does not hash its bytes (file_download.py of 2.4.0), so altered bytes of the right size would be
installed, and it keeps a cache of its own (blobs and links, or `.cache/huggingface` inside a
`local_dir`) where this project needs plain files in `weights/` that a container bakes in. What we
take from it: its token (`huggingface_hub.get_token()`: `$HF_TOKEN` or `hf auth login`'s file),
sent to the hub only (requests drops it on a redirect to another host), and the hub's protocol as
it speaks it (`resolve/{revision}/{file}` and the headers above).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from .errors import InputError
from .families import config_not_a_causal_lm

CHUNK = 1 << 20
READ = 1 << 16  # bytes read from the network at a time: a cut connection loses at most these
PROGRESS_EVERY = 5.0  # seconds between progress lines of a download
UNDECLARED_LIMIT = 64 << 20  # a body whose size nobody declared: at most this many bytes
TIMEOUT = 60  # seconds without an answer or data
COMMIT = re.compile(r"[0-9a-f]{40}")

Log = Callable[[str], None]


def default_log(msg: str) -> None:
    print(msg, file=sys.stderr)


# ---- paths under the root: never through a link ----------------------------------------------
def inside(root: str, rel: str) -> str:
    """root/rel, refused in one line where any folder or file between them is a link or not what
    it should be: a download writes only inside the root (the root itself may be a link)."""
    path = root
    parts = [p for p in rel.split("/") if p]
    for i, part in enumerate(parts):
        path = os.path.join(path, part)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            if i == len(parts) - 1:
                continue  # a link where a file goes: replaced by os.replace, never written through
            raise InputError(f"{path} is a link: download-weights writes only inside {root}, never through a"
                             " link; remove the link (or give --root another folder)")
        if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            raise InputError(f"{path} is a file where download-weights needs a folder; move it away")
    return path


def makedirs(root: str, rel_dir: str) -> None:
    if rel_dir:
        inside(root, rel_dir + "/x")
        os.makedirs(os.path.join(root, rel_dir), exist_ok=True)
    else:
        os.makedirs(root, exist_ok=True)


def write_atomic(root: str, rel: str, text: str | bytes) -> None:
    """A file under the root written whole or not at all: a fresh temporary file in its folder,
    then renamed over the old name (a link there is replaced, never followed)."""
    path = inside(root, rel)
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            text = text.encode() if isinstance(text, str) else text
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def lock(root: str, rel_dir: str, wait: bool, busy: str = "") -> Iterator[None]:
    """An advisory lock (flock) on the folder root/rel_dir itself (no lock file is left behind):
    wait for it, or refuse with `busy`."""
    import fcntl

    if rel_dir:
        inside(root, rel_dir + "/x")  # no link on the way
    fd = os.open(os.path.join(root, rel_dir) if rel_dir else root,
                 os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise InputError(busy) from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def new_folders(root: str, rel_dir: str) -> Iterator[None]:
    """root/rel_dir made where it is not there; those made are removed again, if still empty,
    should what runs inside fail (a .part stays, to resume)."""
    made, path = [], root
    for part in [""] + [p for p in rel_dir.split("/") if p]:
        path = os.path.join(path, part) if part else path
        if not os.path.isdir(path):
            made.append(path)
    makedirs(root, rel_dir)
    try:
        yield
    except BaseException:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only if empty
        raise


# ---- digests ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Digest:
    """What a file's bytes must hash to: sha256 (LFS files, OpenAI's CLIP) or a git blob id (sha1
    of "blob <size>\\0" + the bytes: the hub's small files)."""

    kind: str  # "sha256" | "git"
    hex: str

    def __str__(self) -> str:
        return f"{'sha256' if self.kind == 'sha256' else 'git blob id'} {self.hex}"


def _etag(value: str | None) -> str:
    return (value or "").strip().removeprefix("W/").strip('"').lower()


def hub_digest(headers) -> Digest | None:
    """The digest the hub names in one answer's headers: X-Linked-Etag (an LFS file's sha256),
    else an ETag of 64 hex (sha256) or 40 hex (git blob id)."""
    for value in (_etag(headers.get("X-Linked-Etag")), _etag(headers.get("ETag"))):
        if re.fullmatch(r"[0-9a-f]{64}", value):
            return Digest("sha256", value)
        if re.fullmatch(r"[0-9a-f]{40}", value):
            return Digest("git", value)
    return None


def hashes(path: str) -> tuple[str, str]:
    """(sha256, git blob id) of a file, in one read."""
    size = os.path.getsize(path)
    sha, git = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            sha.update(block)
            git.update(block)
    return sha.hexdigest(), git.hexdigest()


def matches(path: str, digest: Digest) -> tuple[bool, str]:
    """(whether the file's bytes have `digest`, its sha256)."""
    sha, git = hashes(path)
    return (sha if digest.kind == "sha256" else git) == digest.hex, sha


# ---- one file over HTTP ----------------------------------------------------------------------
def host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).netloc or url


def reason(error: Exception) -> str:
    """A network error in a few words: urllib3's are a paragraph of nested reprs."""
    text = str(error)
    for words, said in (("NameResolution", "the name does not resolve: no network or no DNS"),
                        ("Failed to resolve", "the name does not resolve: no network or no DNS"),
                        ("timed out", "timed out"), ("Connection refused", "connection refused"),
                        ("Network is unreachable", "network unreachable"), ("SSL", "TLS failed"),
                        ("ProxyError", "the proxy failed")):
        if words in text:
            return said
    return type(error).__name__


def _progress(got: int, size: int | None) -> str:
    if not size:
        return f"{got / 1e6:,.0f} MB"
    return f"{got / 1e6:,.0f} of {size / 1e6:,.0f} MB ({100 * got / size:.0f}%)"


@dataclass
class Got:
    """A file fetched and verified."""

    entry: dict | None  # {"size", "sha256"[, "git"]}; None: an optional file the hub does not have
    commit: str | None = None  # the commit the hub answered at (X-Repo-Commit), where it said
    data: bytes | None = None  # the bytes of a file fetched with install=False


class Fetcher:
    """Fetches files into a root: each verified before it gets its final name."""

    def __init__(self, root: str, log: Log | None = None, token: str | None = None):
        import requests

        self.root, self.log = root, log or default_log
        self.session = requests.Session()
        self.session.headers["Accept-Encoding"] = "identity"  # sizes and digests are of the bytes as stored
        self.token = token
        self.requests = 0

    def _open(self, url: str, start: int, dest: str):
        import requests

        headers = {"Range": f"bytes={start}-"} if start else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"  # requests drops it on a redirect to another host
        self.requests += 1
        try:
            return self.session.get(url, headers=headers, stream=True, timeout=TIMEOUT, allow_redirects=True)
        except requests.RequestException as e:
            failed = getattr(getattr(e, "request", None), "url", None) or url  # a redirect's host, not the first's
            raise InputError(f"cannot reach {host(failed)} to download {url} ({reason(e)}); without a network,"
                             f" copy the file to {dest} by hand (README: Weights)") from None

    def get(self, url: str, rel: str, expect: Digest | None = None, required: bool = True, ours: bool = False,
            install: bool = True) -> Got:
        """Fetch url to root/rel through rel.part (resumed when it is there), verify it against
        `expect` or the digest the hub names, then give it its name.

        A file already at rel stays when it has those bytes (nothing more is read); one that
        differs is replaced only where `ours` (the manifest says download-weights wrote it), else
        refused. install=False: the verified bytes are returned (Got.data), nothing installed (a
        config read before the weights are fetched).
        """
        for attempt in (0, 1):
            try:
                return self._get(url, rel, expect, required, ours, install)
            except _Restart:
                if attempt:
                    raise InputError(f"the download of {url} could not be verified twice; nothing was installed")
        raise AssertionError("unreachable")

    def _get(self, url, rel, expect, required, ours, install) -> Got:
        import requests

        makedirs(self.root, os.path.dirname(rel))
        dest, part = inside(self.root, rel), inside(self.root, rel + ".part")
        there = os.path.lexists(dest)
        done = 0 if there else _resumable(part)
        r = self._open(url, done, dest)
        with r:
            first = r.history[0] if r.history else r
            commit = _etag(first.headers.get("X-Repo-Commit")) or None
            commit = commit if commit and COMMIT.fullmatch(commit) else None
            if r.status_code == 404 and not required:
                return Got(None, commit)
            if r.status_code in (401, 403):
                raise InputError(f"cannot download {url}: HTTP {r.status_code} (a gated or private repo: accept its"
                                 " terms on the hub and set $HF_TOKEN, or log in with `hf auth login`)")
            if r.status_code not in (200, 206, 416):  # 416: the part already holds every byte
                raise InputError(f"cannot download {url}: HTTP {r.status_code}"
                                 + (" (no such repo, revision or file)" if r.status_code == 404 else ""))
            digest = expect or hub_digest(first.headers) or hub_digest(r.headers)
            if digest is None:
                raise InputError(f"the hub names no digest for {url} (no X-Linked-Etag, no ETag that is a sha256 or a"
                                 " git blob id): it cannot be verified, so it is not installed")
            if there:  # kept when it is these bytes; else replaced only if we wrote it
                if os.path.isfile(dest) and not os.path.islink(dest):
                    ok, sha = matches(dest, digest)
                    if ok:
                        return Got(_entry(dest, sha, digest), commit, _read(dest) if not install else None)
                if not ours:
                    raise InputError(f"{dest} is there and is not {url} (its bytes are not the hub's {digest}), and"
                                     " download-weights did not write it: move it away, or give --root another"
                                     " folder")
            size = _declared(first, r)
            if r.status_code == 416:
                if not done:
                    raise InputError(f"cannot download {url}: HTTP 416 for the whole file")
            else:
                if r.status_code == 200:
                    done = 0  # the whole file came (no range asked, or the server ignored it)
                self.log(f"downloading {url} -> {dest}" + (f" (resuming at {done:,} bytes)" if done else ""))
                try:
                    self._body(r, part, done, size, url)
                except requests.RequestException as e:
                    got = os.path.getsize(part) if os.path.isfile(part) else 0
                    raise InputError(f"the connection to {host(r.url)} was cut after {got:,}"
                                     + (f" of {size:,}" if size else "") + f" bytes of {url} ({reason(e)});"
                                     " run the same command again to resume") from None
        got = os.path.getsize(part)
        if size is not None and got < size:
            raise InputError(f"the download of {url} is incomplete: {got:,} of {size:,} bytes; run the same command"
                             " again to resume")
        ok, sha = matches(part, digest)
        if not ok:
            os.remove(part)
            if done:  # resumed over stale or foreign bytes: once more, from the first byte
                self.log(f"  {os.path.basename(dest)}: the resumed file did not verify; fetching it again")
                raise _Restart()
            raise InputError(f"checksum mismatch for {dest}: expected {digest}, got"
                             f" {'sha256 ' + sha if digest.kind == 'sha256' else 'other bytes'}; the file was deleted")
        entry = _entry(part, sha, digest)
        if not install:
            data = _read(part)
            os.remove(part)
            return Got(entry, commit, data)
        os.replace(part, inside(self.root, rel))
        return Got(entry, commit)

    def install(self, rel: str, data: bytes) -> None:
        """Verified bytes (a get with install=False) given their name, whole or not at all."""
        write_atomic(self.root, rel, data)

    def _body(self, r, part: str, done: int, size: int | None, url: str) -> None:
        import requests

        limit = size if size is not None else UNDECLARED_LIMIT
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            if done:
                fd = os.open(part, flags | os.O_APPEND)
                st = os.fstat(fd)
                if st.st_size != done or st.st_nlink != 1:  # changed since we looked: start over
                    os.close(fd)
                    os.remove(part)
                    raise _Restart()
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(part)  # a link or a stale part: removed, never followed
                fd = os.open(part, flags | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as e:
            raise InputError(f"cannot write {part}: {errno_said(e)}") from None
        got, shown = done, time.monotonic()
        try:
            with os.fdopen(fd, "ab" if done else "wb") as f:
                for block in r.iter_content(READ):
                    if got + len(block) > limit:
                        f.close()
                        os.remove(part)
                        said = (f"the {size:,} bytes it declared" if size is not None
                                else f"{limit >> 20} MiB with no size declared")
                        raise InputError(f"{host(r.url)} sent more than {said} for {url}; nothing was installed")
                    f.write(block)
                    got += len(block)
                    if time.monotonic() - shown >= PROGRESS_EVERY:  # a first start may wait minutes here
                        shown = time.monotonic()
                        self.log(f"  {os.path.basename(part)[:-5]}: {_progress(got, size)}")
        except requests.RequestException:
            raise  # (an OSError too: the caller says it as a cut connection)
        except OSError as e:
            raise InputError(f"cannot write {part}: {errno_said(e)}") from None


class _Restart(Exception):
    """A resumed .part that did not verify (or changed): fetched once more from its first byte."""


def _resumable(part: str) -> int:
    """Bytes of a .part to resume from: a plain file with one link; anything else is removed (a
    link is unlinked, never followed)."""
    try:
        st = os.lstat(part)
    except FileNotFoundError:
        return 0
    if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
        return st.st_size
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{part} is a folder; move it away")
    os.remove(part)
    return 0


def _declared(first, r) -> int | None:
    """The file's whole size as the hub declares it: X-Linked-Size (LFS), else the answer's
    Content-Length (200) or Content-Range's total (206)."""
    for value in (first.headers.get("X-Linked-Size"), r.headers.get("X-Linked-Size")):
        if value and value.strip().isdigit():
            return int(value)
    if r.status_code == 200 and (r.headers.get("Content-Length") or "").isdigit():
        return int(r.headers["Content-Length"])
    if r.status_code == 206:
        total = r.headers.get("Content-Range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    return None


def _entry(path: str, sha: str, digest: Digest) -> dict:
    entry = {"size": os.path.getsize(path), "sha256": sha}
    if digest.kind == "git":
        entry["git"] = digest.hex
    return entry


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(UNDECLARED_LIMIT)


def token() -> str | None:
    """The user's hub token, as huggingface_hub finds it ($HF_TOKEN, or `hf auth login`'s file)."""
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 -- no token is no token
        return None


def json_of(data: bytes | None, what: str) -> dict:
    try:
        value = json.loads(data or b"")
    except ValueError as e:
        raise InputError(f"{what} is not JSON ({e})") from None
    if not isinstance(value, dict):
        raise InputError(f"{what} is not a JSON object")
    return value


def errno_said(e: OSError) -> str:
    return e.strerror or errno.errorcode.get(e.errno or 0, type(e).__name__)


# ---- the manifest: what was fetched, from where, verified how ----------------------------------
MANIFEST = "manifest.json"


@dataclass
class Manifest:
    """root/manifest.json: every file fetched (size, sha256, and the hub's git blob id where it
    named one) and every repo (its folder, repo id, revision, commit and files)."""

    files: dict  # file under the root -> {"size", "sha256"[, "git"]}
    repos: dict  # folder under the root -> {"repo", "revision", "commit", "files": [names in the folder]}

    def intact(self, root: str, rel: str) -> bool:
        """Whether root/rel is a plain file of the size recorded."""
        entry = self.files.get(rel)
        try:
            st = os.lstat(os.path.join(root, rel))
        except OSError:
            return False
        return entry is not None and stat.S_ISREG(st.st_mode) and st.st_size == entry["size"]


def _damaged(path: str, why: str) -> InputError:
    return InputError(f"{path} is damaged ({why}); move it away and run `python script/download-weights` (with the"
                      " same --lm/--clip) again: the files there are checked against the hub and recorded anew")


def read(root: str) -> Manifest:
    """The manifest (empty where there is none); a malformed one is said in one line."""
    path = os.path.join(root, MANIFEST)
    if not os.path.isfile(path):
        return Manifest({}, {})
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(64 << 20))
    except (OSError, ValueError) as e:
        raise _damaged(path, f"not JSON: {e}") from None
    try:
        files = {}
        for e in data.get("files", []):
            if not (isinstance(e["file"], str) and isinstance(e["size"], int) and isinstance(e["sha256"], str)):
                raise TypeError(f"an entry of the wrong types: {json.dumps(e)[:80]}")
            files[e["file"]] = {k: v for k, v in e.items() if k != "file"}
        repos = {}
        for e in data.get("repos", []):
            if not (isinstance(e["folder"], str) and isinstance(e["repo"], str)
                    and isinstance(e["files"], list) and all(isinstance(f, str) for f in e["files"])):
                raise TypeError(f"a repo of the wrong types: {json.dumps(e)[:80]}")
            repos[e["folder"]] = {k: v for k, v in e.items() if k != "folder"}
    except (AttributeError, KeyError, TypeError) as e:
        why = f"no {e}" if isinstance(e, KeyError) else str(e) or type(e).__name__
        raise _damaged(path, why) from None
    return Manifest(files, repos)


def record(root: str, files: dict, repos: dict | None = None, drop=()) -> Manifest:
    """Add these entries to the manifest, under its lock, re-read first (a download of another
    repo beside this one keeps its entries) and written whole (a fresh file renamed over it).
    Entries of files no longer on disk, and those in `drop`, are left out."""
    with lock(root, "", wait=True):
        m = read(root)
        m.files.update(files)
        m.repos.update(repos or {})
        m.files = {k: v for k, v in m.files.items() if k not in drop and os.path.isfile(os.path.join(root, k))}
        text = json.dumps({"files": [{"file": k, **v} for k, v in sorted(m.files.items())],
                           "repos": [{"folder": k, **v} for k, v in sorted(m.repos.items())]}, indent=2) + "\n"
        write_atomic(root, MANIFEST, text)
        return m


# ---- a repo from the hub ------------------------------------------------------------------------
REPO = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")  # the hub's ids: at most 96 a part
FILE = re.compile(r"[\w.-]{1,200}")
LM_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
            "vocab.json", "merges.txt", "tokenizer.model", "model.safetensors", "model.safetensors.index.json")
HF_CLIP_FILES = ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "vocab.json", "merges.txt", "spiece.model", "model.safetensors", "model.safetensors.index.json")
OPEN_CLIP_CONFIG = "open_clip_config.json"  # an OpenCLIP folder as its Hugging Face repos hold it
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # the first, else the second
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
HF_CLIP_TYPES = ("clip", "siglip", "siglip2")  # Hugging Face model types with both towers


def check_repo(repo: str) -> None:
    if not REPO.fullmatch(repo) or ".." in repo:
        raise InputError(f"{repo[:100]!r} is not a Hugging Face repo id (OWNER/NAME, each at most 96 letters, digits,"
                         " '-', '_' or '.', e.g. Qwen/Qwen2.5-0.5B)")


def check_revision(revision: str) -> None:
    if not re.fullmatch(r"[\w.-][\w./-]{0,199}", revision) or ".." in revision:
        raise InputError(f"--revision {revision[:100]!r}: give a branch, tag or commit of the repo (e.g. main)")


def offline_refusal(repo: str, where: str, gone: list[str] | None) -> InputError:
    what = ("is not there" if gone is None else
            f"is not complete there (missing {', '.join(gone[:3])}{' ...' if len(gone) > 3 else ''})")
    return InputError(f"offline ($ZEROCAP_OFFLINE or $HF_HUB_OFFLINE is set): {repo} {what} in {where}; nothing was"
                      " fetched. Run it again where the hub is reachable, without offline mode")


def fetch_repo(root: str, repo: str, kind: str, revision: str = "main", folder: str | None = None,
               update: bool = False, offline: bool = False, endpoint: str = "https://huggingface.co",
               log: Log | None = None) -> str:
    """Fetch a hub repo's model into root/folder (default: its NAME; clip/NAME for a CLIP) and
    record it; returns the folder.

    kind "lm": a causal LM (config, tokenizer files, weights: one file or the shards its index
    names); kind "clip": an OpenCLIP model (open_clip_config.json and its weights) or a Hugging
    Face CLIPModel / SiglipModel (config, tokenizer, image processor, weights). The config comes
    first and is checked before any weight is fetched. A folder recorded for another repo is
    refused; a repo already here at that revision, every file intact, asks nothing of the network
    (update=True: ask the hub for the revision's newest commit)."""
    check_repo(repo)
    check_revision(revision)
    log = log or default_log
    folder = folder or (f"clip/{repo.split('/')[1]}" if kind == "clip" else repo.split("/")[1])
    where = os.path.join(root, folder)
    busy = f"another download-weights is fetching into {where} now; wait for it to finish, then run this again"
    with new_folders(root, folder), lock(root, folder, wait=False, busy=busy):
        m = read(root)
        rec = m.repos.get(folder)
        if rec is not None and rec["repo"] != repo:
            raise InputError(f"{where} holds {rec['repo']}, not {repo}: the folder is named after the repo's NAME; give"
                             " --root another folder, or move the folder away first")
        gone = None if rec is None else [f for f in rec["files"] if not m.intact(root, f"{folder}/{f}")]
        if rec is not None and not gone and not update and revision in (rec.get("revision"), rec.get("commit")):
            log(f"{repo} is here, verified ({where}, commit {rec.get('commit') or 'unknown'})")
            return folder
        if offline:
            raise offline_refusal(repo, where, gone)
        return _fetch_repo(root, repo, kind, revision, folder, m, log, endpoint)


def _fetch_repo(root, repo, kind, revision, folder, m: Manifest, log, endpoint) -> str:
    fetcher = Fetcher(root, log, token())
    where = os.path.join(root, folder)
    at = [revision]  # the commit, once the first file's answer names it

    def get(name: str, required: bool, install: bool = True) -> Got:
        if not FILE.fullmatch(name) or name.startswith("."):
            raise InputError(f"{repo} names a file {name[:100]!r} that is not a plain file name")
        rel = f"{folder}/{name}"
        got = fetcher.get(f"{endpoint}/{repo}/resolve/{at[0]}/{name}", rel, required=required, ours=rel in m.files,
                          install=install)
        if install and got.entry is not None:
            m.files[rel] = got.entry
            record(root, {rel: got.entry})  # ours from now on, should this run stop before the end
        if got.commit and at[0] != got.commit:
            if COMMIT.fullmatch(at[0]):
                raise InputError(f"the hub answered {repo}/{name} at commit {got.commit}, not {at[0]}: the files"
                                 " would not be of one commit; nothing more was fetched")
            at[0] = got.commit
        return got

    entries: dict = {}
    first = OPEN_CLIP_CONFIG if kind == "clip" else "config.json"
    got = get(first, required=kind != "clip", install=False)
    if got.entry is None:  # no OpenCLIP config: a Hugging Face CLIP or SigLIP?
        first = "config.json"
        got = get(first, required=True, install=False)
    config = json_of(got.data, f"{repo}'s {first}")
    why = _refusal(kind, first, config)
    if why:
        raise InputError(f"{repo} holds {why}; nothing else was fetched")
    fetcher.install(f"{folder}/{first}", got.data)
    record(root, {f"{folder}/{first}": got.entry})
    entries[first] = got.entry
    optional = (OPEN_CLIP_WEIGHTS[:1] if first == OPEN_CLIP_CONFIG else HF_CLIP_FILES if kind == "clip" else LM_FILES)
    for name in optional:
        got = get(name, required=False)
        if got.entry is not None:
            entries[name] = got.entry
    for name in _weights(repo, where, first, entries):
        entries[name] = get(name, required=True).entry
    stale = {k for k in m.files if k.startswith(folder + "/") and k[len(folder) + 1:] not in entries}
    for rel in stale:  # files of the folder's earlier commit (or repo) that this one lacks: ours to remove
        with contextlib.suppress(OSError):
            if os.path.isfile(inside(root, rel)):
                os.remove(os.path.join(root, rel))
    record(root, {f"{folder}/{k}": v for k, v in entries.items()},
           {folder: {"repo": repo, "revision": revision, "commit": at[0] if COMMIT.fullmatch(at[0]) else None,
                     "files": sorted(entries)}}, drop=stale)
    log(f"{repo}: {len(entries)} files verified in {where} (commit {at[0]}, {fetcher.requests} requests)")
    return folder


def _refusal(kind: str, first: str, config: dict) -> str | None:
    """Why a config's model is not one this kind takes (read before any weight is fetched)."""
    if kind == "lm":
        return config_not_a_causal_lm(config)
    if first == OPEN_CLIP_CONFIG:
        return None if isinstance(config.get("model_cfg"), dict) else "an open_clip_config.json without model_cfg"
    model_type = config.get("model_type")
    if model_type not in HF_CLIP_TYPES:
        return (f"neither an OpenCLIP model ({OPEN_CLIP_CONFIG}) nor a Hugging Face CLIP or SigLIP (its config.json"
                f" says model_type {model_type!r}; one of {', '.join(HF_CLIP_TYPES)} is needed)")
    return None


def _weights(repo: str, where: str, first: str, entries: dict) -> list[str]:
    """The weight files still to fetch, once the others are here: safetensors when the repo has
    them, else the shards its index names, else the PyTorch file."""
    if first == OPEN_CLIP_CONFIG:
        return [] if OPEN_CLIP_WEIGHTS[0] in entries else [OPEN_CLIP_WEIGHTS[1]]
    if "model.safetensors" in entries:
        return []
    if "model.safetensors.index.json" not in entries:
        return ["pytorch_model.bin"]
    try:
        with open(os.path.join(where, "model.safetensors.index.json"), "rb") as f:
            shards = sorted(set(json.loads(f.read(64 << 20))["weight_map"].values()))
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        raise InputError(f"{repo}'s model.safetensors.index.json cannot be read ({e})") from None
    if not shards or not all(isinstance(s, str) and FILE.fullmatch(s) and s.endswith(".safetensors")
                             and not s.startswith(".") for s in shards):
        raise InputError(f"{repo}'s model.safetensors.index.json names shards that are not plain .safetensors file"
                         " names (at most 200 characters)")
    return shards
