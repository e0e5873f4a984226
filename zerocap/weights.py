"""The weights/ folder: layout, verified (resumable, idempotent) download, and checks at start-up.

    weights/
      gpt2-medium/         Hugging Face GPT-2 medium (openai-community/gpt2-medium), the paper's LM
      gpt-neo-125M/        GPT-Neo 125M (EleutherAI/gpt-neo-125m), optional: the authors' --lm_model gpt-neo
      clip/ViT-B-32.pt     OpenAI CLIP ViT-B/32, from the URL that carries its SHA-256
      <name>/              any other causal LM from the hub (download-weights --lm OWNER/NAME)
      clip/<name>/         an OpenCLIP model from the hub (download-weights --clip OWNER/NAME)
      models.json          optional: the pair this folder serves, {"lm": "<name>", "clip": "clip/<name>"}
                           (download-weights --use; $ZEROCAP_LM / $ZEROCAP_CLIP override it)
      manifest.json        every file (size, sha256) and every repo (id, revision, commit), written by the download

Root: $ZEROCAP_WEIGHTS, else ./weights. Offline mode ($ZEROCAP_OFFLINE=1 or $HF_HUB_OFFLINE=1)
never downloads. How a download verifies and writes: hub.py.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable

from . import families, hub
from .errors import InputError

LM_DIR = families.DEFAULT.folder  # the default LM's subfolder (GPT-2 medium)
HF_REVISION = "main"
# OpenAI's published URL for ViT-B/32 (clip/clip.py _MODELS); the path carries the SHA-256.
CLIP_URL = (
    "https://openaipublic.azureedge.net/clip/models/"
    "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"
)
CLIP_FILE = os.path.join("clip", "ViT-B-32.pt")
MANIFEST = hub.MANIFEST
DOWNLOAD_COMMAND = "python script/download-weights"
CHUNK = 1 << 20


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


def advice(path: str) -> str:
    """What to do about a model path that is missing or incomplete: fetch it where it lies in the
    weights folder; a path the user gave elsewhere is theirs to mend."""
    top = os.path.realpath(root())
    real = os.path.realpath(path)
    if real == top or real.startswith(top + os.sep):
        return GET_WEIGHTS
    return "check the path (a model of your own is loaded as it is, never downloaded)"


def missing_lm_files(path: str) -> list[str]:
    """What a causal-LM directory lacks: config, weights, tokenizer (as names to show)."""
    has = lambda f: os.path.isfile(os.path.join(path, f))  # noqa: E731
    gone = [] if has("config.json") else ["config.json"]
    if not any(has(f) for f in hub.HF_WEIGHTS):
        gone.append("model.safetensors")
    if not (has("tokenizer.json") or has("tokenizer.model") or (has("vocab.json") and has("merges.txt"))):
        gone.append("tokenizer.json (or vocab.json + merges.txt)")
    return gone


def check_lm_dir(path: str) -> None:
    if not os.path.isdir(path):
        raise InputError(f"language-model weights not found: {path} is not a directory; {advice(path)}")
    missing = missing_lm_files(path)
    if missing:
        raise InputError(f"language-model weights in {path} are incomplete (missing {', '.join(missing)});"
                         f" {advice(path)}")
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
            raise InputError(f"CLIP weights not found: {named[1]} (the checkpoint of OpenCLIP's {named[0]});"
                             f" {advice(named[1])}")
        return
    if not os.path.isfile(path) and not os.path.isdir(path):
        raise InputError(f"CLIP weights not found: {path}; {advice(path)}")


def missing(weights_root: str | None = None, lm: str | None = LM_DIR, clip: bool = True) -> list[str]:
    """Required files that are absent, relative to the root: the LM folder `lm` (None: none)
    and, with `clip`, the CLIP checkpoint."""
    _check_lm(lm)
    r = weights_root or root()
    gone = [os.path.join(lm, f) for f in missing_lm_files(os.path.join(r, lm))] if lm else []
    return gone + ([] if not clip or os.path.isfile(os.path.join(r, CLIP_FILE)) else [CLIP_FILE])


def read_manifest(weights_root: str) -> dict:
    """{file under the root: its entry} from the manifest; a malformed one is said in one line."""
    return hub.read(weights_root).files


def verify_sizes(weights_root: str, under: tuple[str, ...] | None = None) -> None:
    """Cheap start-up check: every file the manifest lists (under these paths, where given) has
    the listed size."""
    base = [os.path.relpath(p, weights_root) for p in under] if under is not None else None
    for name, entry in read_manifest(weights_root).items():
        if base is not None and not any(name == b or name.startswith(b.rstrip("/") + "/") for b in base):
            continue
        p = os.path.join(weights_root, name)
        if os.path.isfile(p) and os.path.getsize(p) != entry["size"]:
            raise InputError(
                f"weights file {p} has {os.path.getsize(p)} bytes but the manifest says {entry['size']}:"
                f" it is incomplete or corrupt; delete it and run `{DOWNLOAD_COMMAND}` (with the --lm/--clip that"
                " fetched it) to fetch it again"
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
    lm_dir, clip_file = paths(r, lm or LM_DIR)
    verify_sizes(r, ((lm_dir,) if lm else ()) + ((clip_file,) if clip else ()))
    return lm_dir, clip_file


def model_name(path: str) -> str:
    """A model's name as results record it: an LM folder's model type and folder name
    ("qwen2 Qwen2.5-0.5B"), a CLIP checkpoint's or OpenCLIP folder's name ("ViT-B-32.pt"); an
    OpenCLIP NAME@FILE as NAME@ and the file's name."""
    named = open_clip_checkpoint(path)
    if named is not None:
        return f"{named[0]}@{os.path.basename(named[1])}"
    name = os.path.basename(os.path.normpath(path))
    kind = families.model_type(path) if os.path.isdir(path) else None
    return f"{kind} {name}" if kind else name


CONFIGS = ("config.json", hub.OPEN_CLIP_CONFIG)  # a folder's files that say what its weights are


def fingerprint(path: str) -> str:
    """A short identity of a model's weights that moving or copying them keeps: a sha256 over
    the size and first MiB of each file -- for a folder, its configs (config.json, and
    open_clip_config.json: quick_gelu and the towers' shapes live there) and weights files (with
    their names); for a checkpoint, the file; for an OpenCLIP NAME@FILE, the name and the file.
    Reads a few MiB, whatever the model's size."""
    named = open_clip_checkpoint(path)
    if named is not None:
        files, prefix = [("", named[1])], f"open_clip {named[0]}\0"
    elif os.path.isdir(path):
        files, prefix = [(f, os.path.join(path, f)) for f in sorted(os.listdir(path))
                         if f in CONFIGS or f.endswith((".safetensors", ".bin"))], ""
    else:
        files, prefix = [("", path)], ""  # a checkpoint is itself, whatever its name
    h = hashlib.sha256(prefix.encode())
    for name, file in files:
        with open(file, "rb") as f:
            h.update(f"{name}\0{os.fstat(f.fileno()).st_size}\0".encode())
            h.update(f.read(CHUNK))
    return h.hexdigest()[:16]


CHOICE = "models.json"  # the pair a weights folder serves
CHOICE_SHAPE = '{"lm": "<folder under the root>", "clip": "<file or folder under the root>"}'


def read_choice(weights_root: str) -> dict:
    """models.json's {"lm": ..., "clip": ...} (paths under the root as written), {} where there is
    none; a malformed one is said in one line, naming the file and its shape."""
    path = os.path.join(weights_root, CHOICE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(1 << 16))
    except (OSError, ValueError) as e:
        raise InputError(f"{path} cannot be read as JSON ({e}); it names the pair the folder serves: {CHOICE_SHAPE}"
                         " -- mend it by hand, or write it again with `python script/download-weights ... --use`"
                         ) from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k, ""), str) for k in ("lm", "clip")):
        raise InputError(f"{path} must hold {CHOICE_SHAPE}; mend it by hand, or write it again with"
                         " `python script/download-weights ... --use`")
    return {k: data[k] for k in ("lm", "clip") if data.get(k)}


def _under_root(r: str, key: str, rel: str) -> str:
    """models.json's path for `key`, inside the root (links resolved), else refused in words."""
    path = os.path.join(r, rel)
    real, top = os.path.realpath(path), os.path.realpath(r)
    if os.path.isabs(rel) or os.path.commonpath([real, top]) != top:
        raise InputError(f"{os.path.join(r, CHOICE)} names {rel!r} as the {key.upper()}, which is not under {r}:"
                         f" models.json names paths under the weights folder; to load a model kept elsewhere, set"
                         f" $ZEROCAP_{key.upper()} to its path (or give --{key})")
    return path


def chosen_by_file(r: str) -> dict:
    """{"lm": path, "clip": path} as the weights folder's models.json names them (paths under the
    root), each only where named."""
    return {k: _under_root(r, k, v) for k, v in read_choice(r).items()}


def chosen(weights_root: str | None = None) -> tuple[str | None, str | None]:
    """(LM, CLIP) paths named by $ZEROCAP_LM / $ZEROCAP_CLIP, else by the weights folder's
    models.json (paths under the root), None for each not named: the pair a container built with
    that folder serves, and the command line's default."""
    named = chosen_by_file(weights_root or root())
    return (os.environ.get("ZEROCAP_LM") or named.get("lm") or None,
            os.environ.get("ZEROCAP_CLIP") or named.get("clip") or None)


def check_chosen(r: str, lm: str | None, clip: str | None) -> None:
    """The models.json pair at start-up: there (else the command that fetches it), and each file
    the manifest lists under it of the size recorded."""
    for key, path in (("lm", lm), ("clip", clip)):
        if not path or os.path.exists(path):
            continue
        rel = os.path.relpath(path, r)
        repo = (hub.read(r).repos.get(rel) or {}).get("repo")
        flag = f"--{key} {repo}" if repo else f"--{key} OWNER/{os.path.basename(rel)}"
        raise InputError(f"{os.path.join(r, CHOICE)} names {rel!r} as the {key.upper()}, which is not in {r}: fetch it"
                         f" with `{DOWNLOAD_COMMAND} {flag}`, or name another pair there")
    verify_sizes(r, tuple(p for p in (lm, clip) if p))


def locate(lm: str | None = None, clip: str | None = None, lm_dir: str = LM_DIR,
           log: Callable[[str], None] | None = None) -> tuple[str, str]:
    """(LM folder, CLIP checkpoint): those given, as they are (never downloaded); then those the
    weights folder chooses (`chosen`: its models.json, checked at start-up as the default pair is,
    or $ZEROCAP_LM / $ZEROCAP_CLIP; the LM only when no other family's folder is asked for); the
    others from the weights folder ($ZEROCAP_WEIGHTS, else ./weights; the LM from its `lm_dir`),
    missing files fetched unless offline -- only those not given. The command line's rule,
    Python's and the container's."""
    r = root()
    named = chosen_by_file(r)
    env_lm, env_clip = os.environ.get("ZEROCAP_LM"), os.environ.get("ZEROCAP_CLIP")
    file_lm = None if lm or env_lm or lm_dir != LM_DIR else named.get("lm")  # models.json's, where they load
    file_clip = None if clip or env_clip else named.get("clip")
    check_chosen(r, file_lm, file_clip)
    lm = lm or (env_lm or file_lm if lm_dir == LM_DIR else None)
    clip = clip or env_clip or file_clip
    if lm and clip:
        return lm, clip
    default_lm, default_clip = ensure(r, log=log, lm=None if lm else lm_dir, clip=not clip)
    return lm or default_lm, clip or default_clip


# ---- download --------------------------------------------------------------------------------
def _endpoint(hf_endpoint: str | None) -> str:
    """The hub's address: the one given, else $HF_ENDPOINT, else huggingface.co."""
    return (hf_endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def fetch_clip(weights_root: str, log: Callable[[str], None] | None = None) -> dict:
    """OpenAI's CLIP ViT-B/32 into clip/ViT-B-32.pt, checked against the sha256 its URL carries
    (skipped when the file recorded is there with that sha256); returns its manifest entry."""
    url = _clip_url()
    sha = url.rstrip("/").split("/")[-2].lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise InputError(f"the CLIP URL {url} does not end in <sha256>/ViT-B-32.pt, so it cannot be verified")
    m = hub.read(weights_root)
    entry = m.files.get(CLIP_FILE)
    if entry is not None and entry.get("sha256") == sha and m.intact(weights_root, CLIP_FILE):
        return entry
    if offline():
        raise InputError(f"offline ($ZEROCAP_OFFLINE or $HF_HUB_OFFLINE is set): {os.path.join(weights_root, CLIP_FILE)}"
                         " is not there; nothing was fetched")
    with hub.new_folders(weights_root, "clip"):
        got = hub.Fetcher(weights_root, log).get(url, CLIP_FILE, expect=hub.Digest("sha256", sha),
                                                 ours=CLIP_FILE in m.files)
        hub.record(weights_root, {CLIP_FILE: got.entry})
    return got.entry


def download(weights_root: str | None = None, hf_endpoint: str | None = None,
             log: Callable[[str], None] | None = None, lm: str | None = LM_DIR, clip: bool = True,
             revision: str = HF_REVISION, update: bool = False) -> dict:
    """Fetch an LM (default GPT-2 medium, from its hub repo) and OpenAI's CLIP ViT-B/32 into the
    root, verified (hub.py); files already verified are not fetched again. Returns the manifest
    ({"files": [...], "repos": [...]})."""
    _check_lm(lm)
    r = weights_root or root()
    if lm:
        hub.fetch_repo(r, lms()[lm], "lm", revision=revision, folder=lm, update=update, offline=offline(),
                       endpoint=_endpoint(hf_endpoint), log=log)
    if clip:
        fetch_clip(r, log)
    m = hub.read(r)
    return {"files": [{"file": k, **v} for k, v in sorted(m.files.items())],
            "repos": [{"folder": k, **v} for k, v in sorted(m.repos.items())]}


def repo_folder(repo: str, kind: str) -> str:
    """Where a hub repo's model goes under the root: <name>/ for an LM, clip/<name>/ for a CLIP."""
    hub.check_repo(repo)
    name = repo.split("/")[1]
    return f"clip/{name}" if kind == "clip" else name


def download_repo(weights_root: str | None, repo: str, kind: str, hf_endpoint: str | None = None,
                  log: Callable[[str], None] | None = None, revision: str = HF_REVISION,
                  update: bool = False) -> str:
    """Fetch a hub repo's causal LM (kind "lm") or CLIP (kind "clip": OpenCLIP, or a Hugging Face
    CLIPModel / SiglipModel) into the root at `revision`, verified and recorded (hub.fetch_repo).
    Returns its folder under the root."""
    r = weights_root or root()
    return hub.fetch_repo(r, repo, kind, revision=revision, folder=repo_folder(repo, kind), update=update,
                          offline=offline(), endpoint=_endpoint(hf_endpoint), log=log)


def use(weights_root: str | None, lm: str | None = None, clip: str | None = None) -> dict:
    """Name the pair the folder serves (models.json, written whole): `lm`/`clip` paths under the
    root (None: keep the one named, else the default)."""
    r = weights_root or root()
    current = read_choice(r)
    pair = {"lm": lm or current.get("lm") or LM_DIR, "clip": clip or current.get("clip") or CLIP_FILE}
    hub.write_atomic(r, CHOICE, json.dumps(pair, indent=2) + "\n")
    return pair
