"""The weights/ folder: layout, verified (resumable, idempotent) download, and checks at start-up.

    weights/
      gpt2-medium/         Hugging Face GPT-2 medium (openai-community/gpt2-medium), the paper's LM
      gpt-neo-125M/        GPT-Neo 125M (EleutherAI/gpt-neo-125m), optional: the authors' --lm_model gpt-neo
      clip/ViT-B-32.pt     OpenAI CLIP ViT-B/32, from the URL that carries its SHA-256
      <name>/              any other causal LM from the hub (download-weights --lm OWNER/NAME)
      clip/<name>/         an OpenCLIP model from the hub (download-weights --clip OWNER/NAME)
      models.json          optional: the pair this folder serves, {"lm": "<name>", "clip": "clip/<name>"}
                           (download-weights --use; $ZEROCAP_LM / $ZEROCAP_CLIP override it)
      manifest.json        file, size and sha256 of every file, written by the download

Root: $ZEROCAP_WEIGHTS, else ./weights. Offline mode ($ZEROCAP_OFFLINE=1 or $HF_HUB_OFFLINE=1)
never downloads.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import time
from typing import Callable

from . import families
from .errors import InputError

LM_DIR = families.DEFAULT.folder  # the default LM's subfolder (GPT-2 medium)
HF_REVISION = "main"
# (file, required): optional files are skipped when the hub does not have them
LM_FILES = [
    ("config.json", True),
    ("model.safetensors", True),
    ("tokenizer.json", False),  # the tokenizer: tokenizer.json or vocab.json + merges.txt
    ("vocab.json", False),
    ("merges.txt", False),
    ("tokenizer_config.json", False),
    ("generation_config.json", False),
]
# OpenAI's published URL for ViT-B/32 (clip/clip.py _MODELS); the path carries the SHA-256.
CLIP_URL = (
    "https://openaipublic.azureedge.net/clip/models/"
    "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"
)
CLIP_FILE = os.path.join("clip", "ViT-B-32.pt")
MANIFEST = "manifest.json"
DOWNLOAD_COMMAND = "python script/download-weights"
CHUNK = 1 << 20
PROGRESS_EVERY = 5.0  # seconds between progress lines of a download


def _clip_url() -> str:
    """OpenAI's URL; $ZEROCAP_CLIP_URL overrides it (a mirror whose path also ends in <sha256>/<file>)."""
    return os.environ.get("ZEROCAP_CLIP_URL") or CLIP_URL


def root() -> str:
    return os.environ.get("ZEROCAP_WEIGHTS") or "weights"


def offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("ZEROCAP_OFFLINE", "HF_HUB_OFFLINE"))


def paths(weights_root: str | None = None, lm: str = LM_DIR) -> tuple[str, str]:
    """(LM directory, CLIP checkpoint) under the root."""
    r = weights_root or root()
    return os.path.join(r, lm), os.path.join(r, CLIP_FILE)


def lms() -> dict[str, str]:
    """Language models the folder can hold: subfolder -> Hugging Face repo (families.py)."""
    return families.weight_folders()


def _check_lm(lm: str | None) -> None:
    if lm is not None and lm not in lms():
        raise InputError(f"unknown language model {lm!r}; choose one of {', '.join(lms())}")


GET_WEIGHTS = "run `python script/download-weights` (or set ZEROCAP_WEIGHTS to a folder that has them)"


def missing_lm_files(path: str) -> list[str]:
    """What a causal-LM directory lacks: config, weights, tokenizer (as names to show)."""
    has = lambda f: os.path.isfile(os.path.join(path, f))  # noqa: E731
    gone = [] if has("config.json") else ["config.json"]
    if not any(has(f) for f in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                                "pytorch_model.bin.index.json")):
        gone.append("model.safetensors")
    if not (has("tokenizer.json") or has("tokenizer.model") or (has("vocab.json") and has("merges.txt"))):
        gone.append("tokenizer.json (or vocab.json + merges.txt)")
    return gone


def check_lm_dir(path: str) -> None:
    if not os.path.isdir(path):
        raise InputError(f"language-model weights not found: {path} is not a directory; {GET_WEIGHTS}")
    missing = missing_lm_files(path)
    if missing:
        raise InputError(f"language-model weights in {path} are incomplete (missing {', '.join(missing)}); {GET_WEIGHTS}")
    why = families.not_a_causal_lm(path)
    if why:
        raise InputError(f"--lm {path} holds {why}")


def open_clip_checkpoint(path: str) -> tuple[str, str] | None:
    """(OpenCLIP model name, checkpoint file) of a --clip given as NAME@FILE (e.g.
    ViT-B-32@laion2b.safetensors), or None."""
    name, at, file = path.partition("@")
    if not at or os.path.exists(path) or not name or "/" in name:
        return None
    return name, file


def check_clip_file(path: str) -> None:
    named = open_clip_checkpoint(path)
    if named is not None:
        if not os.path.isfile(named[1]):
            raise InputError(f"CLIP weights not found: {named[1]} (the checkpoint of OpenCLIP's {named[0]}); {GET_WEIGHTS}")
        return
    if not os.path.isfile(path) and not os.path.isdir(path):
        raise InputError(f"CLIP weights not found: {path}; {GET_WEIGHTS}")


def missing(weights_root: str | None = None, lm: str | None = LM_DIR, clip: bool = True) -> list[str]:
    """Required files that are absent, relative to the root: the LM folder `lm` (None: none)
    and, with `clip`, the CLIP checkpoint."""
    _check_lm(lm)
    r = weights_root or root()
    gone = [os.path.join(lm, f) for f in missing_lm_files(os.path.join(r, lm))] if lm else []
    return gone + ([] if not clip or os.path.isfile(os.path.join(r, CLIP_FILE)) else [CLIP_FILE])


def read_manifest(weights_root: str) -> dict:
    p = os.path.join(weights_root, MANIFEST)
    if not os.path.isfile(p):
        return {}
    with open(p) as f:
        return {e["file"]: e for e in json.load(f).get("files", [])}


def verify_sizes(weights_root: str) -> None:
    """Cheap start-up check: every file the manifest lists has the listed size."""
    for name, entry in read_manifest(weights_root).items():
        p = os.path.join(weights_root, name)
        if os.path.isfile(p) and os.path.getsize(p) != entry["size"]:
            raise InputError(
                f"weights file {p} has {os.path.getsize(p)} bytes but the manifest says {entry['size']}:"
                f" it is incomplete or corrupt; delete it and run `{DOWNLOAD_COMMAND}`"
            )


def ensure(weights_root: str | None = None, allow_download: bool | None = None,
           log: Callable[[str], None] | None = None, lm: str | None = LM_DIR, clip: bool = True) -> tuple[str, str]:
    """(LM dir, CLIP file) under the root, downloading what is missing unless offline.

    lm: the LM subfolder needed (None: no LM from this folder); clip: whether CLIP is needed.
    """
    r = weights_root or root()
    gone = missing(r, lm, clip)
    command = DOWNLOAD_COMMAND + (f" --lm {lm}" if lm and lm != LM_DIR else "")
    if gone:
        if allow_download is None:
            allow_download = not offline()
        if not allow_download:
            raise InputError(
                f"model weights missing: {os.path.join(r, gone[0])}"
                + (f" (and {len(gone) - 1} more)" if len(gone) > 1 else "")
                + f"; run `{command}` (offline mode is on, so they are not fetched automatically)"
            )
        try:
            download(r, log=log, lm=lm, clip=clip)
        except InputError as e:
            raise InputError(f"model weights missing in {r} and the download failed: {e};"
                             f" run `{command}` when the network is reachable") from None
    verify_sizes(r)
    return paths(r, lm or LM_DIR)


def model_name(path: str) -> str:
    """A model's name as results record it: an LM folder's model type and folder name
    ("qwen2 Qwen2.5-0.5B"), a CLIP checkpoint's or OpenCLIP folder's name ("ViT-B-32.pt")."""
    name = os.path.basename(os.path.normpath(path))
    kind = families.model_type(path) if os.path.isdir(path) else None
    return f"{kind} {name}" if kind else name


def fingerprint(path: str) -> str:
    """A short identity of a model's weights that moving or copying them keeps: a sha256 over
    the size and first MiB of each file -- for an LM folder, its config and weights files (with
    their names); for a CLIP checkpoint, the file. Reads a few MiB, whatever the model's size."""
    if os.path.isdir(path):
        files = [(f, os.path.join(path, f)) for f in sorted(os.listdir(path))
                 if f == "config.json" or f.endswith((".safetensors", ".bin"))]
    else:
        files = [("", path)]  # a checkpoint is itself, whatever its name
    h = hashlib.sha256()
    for name, file in files:
        with open(file, "rb") as f:
            h.update(f"{name}\0{os.fstat(f.fileno()).st_size}\0".encode())
            h.update(f.read(CHUNK))
    return h.hexdigest()[:16]


CHOICE = "models.json"  # the pair a weights folder serves


def chosen(weights_root: str | None = None) -> tuple[str | None, str | None]:
    """(LM, CLIP) paths named by $ZEROCAP_LM / $ZEROCAP_CLIP, else by the weights folder's
    models.json (paths under the root), None for each not named: the pair a container built with
    that folder serves, and the command line's default."""
    r = weights_root or root()
    named: dict = {}
    path = os.path.join(r, CHOICE)
    if os.path.isfile(path):
        try:
            with open(path) as f:
                data = json.loads(f.read(1 << 16))
        except (OSError, ValueError) as e:
            raise InputError(f"{path} cannot be read as JSON ({e}); it names the pair the folder serves:"
                             ' {"lm": "<folder>", "clip": "<file or folder>"}') from None
        if not isinstance(data, dict) or not all(isinstance(data.get(k, ""), str) for k in ("lm", "clip")):
            raise InputError(f'{path} must hold {{"lm": "<folder>", "clip": "<file or folder>"}}, paths under {r}')
        named = {k: os.path.join(r, data[k]) for k in ("lm", "clip") if data.get(k)}
    return (os.environ.get("ZEROCAP_LM") or named.get("lm") or None,
            os.environ.get("ZEROCAP_CLIP") or named.get("clip") or None)


def locate(lm: str | None = None, clip: str | None = None, lm_dir: str = LM_DIR,
           log: Callable[[str], None] | None = None) -> tuple[str, str]:
    """(LM folder, CLIP checkpoint): those given, as they are (never downloaded); then those the
    weights folder chooses (`chosen`: its models.json, or $ZEROCAP_LM / $ZEROCAP_CLIP; the LM only
    when no other family's folder is asked for); the others from the weights folder
    ($ZEROCAP_WEIGHTS, else ./weights; the LM from its `lm_dir`), missing files fetched unless
    offline -- only those not given. The command line's rule, Python's and the container's."""
    chosen_lm, chosen_clip = chosen()
    lm = lm or (chosen_lm if lm_dir == LM_DIR else None)
    clip = clip or chosen_clip
    if lm and clip:
        return lm, clip
    default_lm, default_clip = ensure(root(), log=log, lm=None if lm else lm_dir, clip=not clip)
    return lm or default_lm, clip or default_clip


# ---- download --------------------------------------------------------------------------------
def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _progress(got: int, size: int | None) -> str:
    if not size:
        return f"{got / 1e6:,.0f} MB"
    return f"{got / 1e6:,.0f} of {size / 1e6:,.0f} MB ({100 * got / size:.0f}%)"


def _hex64(value: str | None) -> str | None:
    value = (value or "").strip().strip('"').removeprefix("W/").strip('"').lower()
    return value if re.fullmatch(r"[0-9a-f]{64}", value) else None


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).netloc or url


def _reason(error: Exception) -> str:
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


def fetch(url: str, dest: str, sha256: str | None = None, required: bool = True,
          log: Callable[[str], None] | None = None) -> dict | None:
    """Download url to dest through dest.part (resumed when present), verify, then rename.

    sha256: expected digest; when None, the server's X-Linked-Etag/ETag is used if it is one.
    Returns the manifest entry, or None for an optional file the server does not have.
    """
    import requests

    log = log or (lambda msg: print(msg, file=sys.stderr))
    part = dest + ".part"
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    done = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"Range": f"bytes={done}-"} if done else {}
    try:
        r = requests.get(url, headers=headers, stream=True, timeout=60, allow_redirects=True)
    except requests.RequestException as e:
        raise InputError(f"cannot reach {_host(url)} to download {url} ({_reason(e)}); without a network, copy the"
                         f" file to {dest} by hand (README: Weights)") from None
    with r:
        if r.status_code == 404 and not required:
            return None
        if r.status_code not in (200, 206, 416):  # 416: the part is already complete
            raise InputError(f"cannot download {url}: HTTP {r.status_code}")
        hops = list(r.history) + [r]
        if sha256 is None:  # the hub names an LFS file's sha256 in X-Linked-Etag
            sha256 = next((h for h in (_hex64(x.headers.get("X-Linked-Etag")) or _hex64(x.headers.get("ETag"))
                                       for x in hops) if h), None)
        size = next((int(x.headers["X-Linked-Size"]) for x in hops if x.headers.get("X-Linked-Size")), None)
        if r.status_code == 200:
            size = size or (int(r.headers["Content-Length"]) if r.headers.get("Content-Length") else None)
        elif r.status_code == 206:
            total = r.headers.get("Content-Range", "").rpartition("/")[2]
            size = size or (int(total) if total.isdigit() else None)
        if r.status_code != 416:
            log(f"downloading {url} -> {dest}" + (f" (resuming at {done:,} bytes)" if r.status_code == 206 else ""))
            with open(part, "ab" if r.status_code == 206 else "wb") as f:
                got, shown = (done if r.status_code == 206 else 0), time.monotonic()
                for block in r.iter_content(CHUNK):
                    f.write(block)
                    got += len(block)
                    if time.monotonic() - shown >= PROGRESS_EVERY:  # a first start may wait minutes here
                        shown = time.monotonic()
                        log(f"  {os.path.basename(dest)}: {_progress(got, size)}")
    got_size = os.path.getsize(part)
    if size is not None and got_size != size:
        raise InputError(f"download of {url} is incomplete: {got_size} of {size} bytes; run it again to resume")
    digest = _sha256(part)
    if sha256 is not None and digest != sha256:
        os.remove(part)
        raise InputError(f"checksum mismatch for {dest}: expected sha256 {sha256}, got {digest}; the file was deleted")
    os.replace(part, dest)
    return {"size": got_size, "sha256": digest}


def _endpoint(hf_endpoint: str | None) -> str:
    """The hub's address: the one given, else $HF_ENDPOINT, else huggingface.co."""
    return (hf_endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def download(weights_root: str | None = None, hf_endpoint: str | None = None,
             log: Callable[[str], None] | None = None, lm: str | None = LM_DIR, clip: bool = True) -> dict:
    """Fetch an LM (default GPT-2 medium) and CLIP ViT-B/32 into the root; skip files already
    verified. The manifest keeps the entries of other files still on disk (another LM)."""
    _check_lm(lm)
    r = weights_root or root()
    endpoint = _endpoint(hf_endpoint)
    old = read_manifest(r)
    jobs = [(os.path.join(lm, f), f"{endpoint}/{lms()[lm]}/resolve/{HF_REVISION}/{f}", None, req)
            for f, req in (LM_FILES if lm else [])]
    if clip:
        clip_url = _clip_url()
        jobs.append((CLIP_FILE, clip_url, _hex64(clip_url.rstrip("/").split("/")[-2]), True))
    return _download_jobs(r, old, [jobs], log)


def _download_jobs(r: str, old: dict, rounds: list, log) -> dict:
    """Run rounds of (file, url, sha256, required) jobs -- a round may be a function of the root
    that returns its jobs once the earlier rounds are on disk (a sharded model's index, then its
    shards) -- and write the manifest: these files' entries and those of other files still there."""
    entries = dict(old)
    # folders this download makes: removed again if it fails and leaves them empty (a .part stays, to resume)
    new: list[str] = [] if os.path.isdir(r) else [r]
    try:
        for jobs in rounds:
            jobs = jobs(r) if callable(jobs) else jobs
            for job in jobs:
                entries.pop(job[0], None)
            new += [d for d in (os.path.join(r, os.path.dirname(job[0])) for job in jobs) if not os.path.isdir(d)]
            _fetch_all(r, jobs, old, entries, log)
    except BaseException:
        for folder in sorted(set(new), key=len, reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only if empty
        raise
    entries = {k: v for k, v in entries.items() if os.path.isfile(os.path.join(r, k))}
    manifest = {"files": [{"file": k, **v} for k, v in sorted(entries.items())]}
    with open(os.path.join(r, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return manifest


# ---- any model from the hub: an LM (a Hugging Face folder) or an OpenCLIP model --------------------
REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
HUB_LM_FILES = [(f, False) for f in ("generation_config.json", "tokenizer.json", "tokenizer_config.json",
                                     "special_tokens_map.json", "vocab.json", "merges.txt", "tokenizer.model",
                                     "model.safetensors", "model.safetensors.index.json")]
OPEN_CLIP_FILES = [("open_clip_config.json", True), ("open_clip_model.safetensors", False)]  # else the .bin


def repo_folder(repo: str, kind: str) -> str:
    """Where a hub repo's model goes under the root: <name>/ for an LM, clip/<name>/ for OpenCLIP."""
    if not REPO.fullmatch(repo):
        raise InputError(f"{repo!r} is not a Hugging Face repo id (OWNER/NAME, e.g. Qwen/Qwen2.5-0.5B)")
    name = repo.split("/")[1]
    return os.path.join("clip", name) if kind == "clip" else name


def download_repo(weights_root: str | None, repo: str, kind: str, hf_endpoint: str | None = None,
                  log: Callable[[str], None] | None = None) -> str:
    """Fetch a hub repo's causal LM (kind "lm": config, tokenizer files, weights -- one file or the
    shards its index names) or OpenCLIP model (kind "clip": open_clip_config.json and its weights)
    into the root; verified, resumable and recorded in the manifest as the default pair's files
    are. Returns its folder under the root."""
    r = weights_root or root()
    folder = repo_folder(repo, kind)
    endpoint = _endpoint(hf_endpoint)

    def job(name, required):
        return os.path.join(folder, name), f"{endpoint}/{repo}/resolve/{HF_REVISION}/{name}", None, required

    def weight_files(base):
        """The weights, once the first round is on disk: safetensors when the repo has them, else
        the shards its index names, else the PyTorch file."""
        here = os.path.join(base, folder)
        has = lambda f: os.path.isfile(os.path.join(here, f))  # noqa: E731
        if kind == "clip":
            return [] if has("open_clip_model.safetensors") else [job("open_clip_pytorch_model.bin", True)]
        if has("model.safetensors"):
            return []
        if not has("model.safetensors.index.json"):
            return [job("pytorch_model.bin", True)]
        try:
            with open(os.path.join(here, "model.safetensors.index.json")) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise InputError(f"{repo}'s model.safetensors.index.json cannot be read ({e})") from None
        if not all(re.fullmatch(r"[\w.-]+\.safetensors", s) for s in shards):
            raise InputError(f"{repo}'s index names shards that are not plain file names")
        return [job(s, True) for s in shards]

    files = OPEN_CLIP_FILES if kind == "clip" else [("config.json", True)] + HUB_LM_FILES
    first = [job(f, required) for f, required in files]
    _download_jobs(r, read_manifest(r), [first, weight_files], log)
    if kind == "lm":
        why = families.not_a_causal_lm(os.path.join(r, folder))
        if why:
            raise InputError(f"{repo} holds {why}; its files are in {os.path.join(r, folder)}")
    return folder


def use(weights_root: str | None, lm: str | None = None, clip: str | None = None) -> dict:
    """Name the pair the folder serves (models.json): `lm`/`clip` paths under the root (None: keep
    the one named, else the default)."""
    r = weights_root or root()
    path = os.path.join(r, CHOICE)
    current: dict = {}
    if os.path.isfile(path):
        with open(path) as f:
            current = json.load(f)
    pair = {"lm": lm or current.get("lm") or LM_DIR, "clip": clip or current.get("clip") or CLIP_FILE}
    with open(path, "w") as f:
        json.dump(pair, f, indent=2)
        f.write("\n")
    return pair


def _fetch_all(r: str, jobs: list, old: dict, entries: dict, log) -> None:
    """Fetch each (file, url, sha256, required) not already verified; its manifest entry into `entries`."""
    for name, url, sha, required in jobs:
        dest = os.path.join(r, name)
        known = old.get(name)
        if os.path.isfile(dest) and (
            (known and os.path.getsize(dest) == known["size"] and (sha is None or known["sha256"] == sha))
            or (known is None and sha is not None and _sha256(dest) == sha)
        ):
            entries[name] = known or {"size": os.path.getsize(dest), "sha256": sha}
            continue
        entry = fetch(url, dest, sha256=sha or (known or {}).get("sha256"), required=required, log=log)
        if entry is not None:
            entries[name] = entry
