"""Captioning a dataset on Ray Data, when it outgrows one machine's GPUs.

The driver (`zerocap caption ... --ray [ADDRESS]`) lists the inputs and skips those already in
the output file (the same resume rule as the plain path); Ray Data spreads the rest over an
actor pool, one engine per actor (`num_gpus=1` each where the cluster has GPUs, else CPU
actors), each reading its batch's images and captioning them together (`caption_batch`, the
plain path's code); the driver writes every record to the output file as it arrives. Needs
`pip install 'zerocap[ray]'`; the weights and the inputs must be readable on every node at the
same paths (a shared file system), or the inputs be URLs.
"""
from __future__ import annotations

import json
import os
import re
from typing import Iterable, Iterator

from .. import methods, modes
from ..config import ZeroCapConfig
from ..errors import InputError
from ..lazy import resolve
from ..weights import check_lm_dir
from .inputs import Input
from .results import dumps
from .run import caption_batch


class Captioner:
    """A Ray actor: one engine on the actor's device, captioning batches of inputs.

    Its settings are a class attribute of a subclass made per job (`_captioner`), not
    constructor arguments: Ray keeps those in its object store and warns at every start."""

    settings: dict = {}

    def __init__(self):
        import torch

        from ..engine import ZeroCap
        from ..loading import quiet_transformers

        s = self.settings
        quiet_transformers()
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        device = "cuda" if torch.cuda.is_available() else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES per actor
        self.engine = ZeroCap.load(s["lm"], s["clip"], device=device, lm_dtype=s["lm_dtype"], form=s["form"],
                                   compile=s["compile"] or False)
        self.cfg = self.engine.check(methods.get(s["method"]).Config(**s["config"]))
        self.mode, self.options = modes.get(s["mode"]), s["options"]

    def __call__(self, batch: dict) -> dict:
        items = [Input(str(n), str(s)) for n, s in zip(batch["name"], batch["source"])]
        records = caption_batch(self.engine, items, self.mode, self.cfg, self.options)
        return {"index": batch["index"], "record": [dumps(r) for r in records]}


def _captioner(**settings) -> type:
    return type("Captioner", (Captioner,), {"settings": settings})


class RayBatches:
    """A backends.py backend on Ray: records come in completion order, each with its input's index. close() ends
    what this job started: the driver's connection and, for a local Ray, the whole local Ray.

    address: None or "local" starts a local Ray (LocalRay); otherwise the cluster's address
    ("auto", "ray://head:10001", "head:6379").
    """

    def __init__(self, address: str | None, actors: int | None, lm: str, clip: str, cfg: ZeroCapConfig,
                 form: str, lm_dtype: str, batch_size: int, mode, options: dict, compile: str | None = None):
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")  # read when ray.data is imported; progress is ours
        self.local_ray = address in (None, "local") and not os.environ.get("RAY_ADDRESS")
        try:
            import ray
            import ray.data  # noqa: F401
        except ImportError:
            raise InputError("--ray needs Ray Data: pip install 'zerocap[ray]'") from None
        check_without_models(cfg, lm)  # an actor that refuses it would show Ray's tracebacks first
        self.address, self.actors, self.batch_size = address, actors, batch_size
        self.settings = dict(lm=os.path.abspath(lm), clip=os.path.abspath(clip), config=vars(cfg).copy(),
                             method=methods.of(cfg).name,
                             form=form, lm_dtype=lm_dtype, mode=mode.name, options=dict(options), compile=compile)
        self.local: LocalRay | None = None
        self.saved_env: dict = {}  # what _connect changed in this process's environment, to restore

    def _setenv(self, changes: dict) -> None:
        for key in changes:
            self.saved_env.setdefault(key, os.environ.get(key))
        _use_env(changes)

    def _connect(self):
        import ray

        if ray.is_initialized():
            return
        address = self.address
        if self.local_ray:
            self.local = LocalRay()
            address = self.local.address
            self._setenv(self.local.auth)  # this process joins it with its token
        elif address == "local":
            address = None  # RAY_ADDRESS names the cluster
        if "RAY_BACKEND_LOG_LEVEL" not in os.environ:
            # Ray's core worker logs to stderr, e.g. an error line at every actor start: Ray Data
            # keeps the actors' arguments in its object store, and they restart when they die
            self._setenv({"RAY_BACKEND_LOG_LEVEL": "fatal"})
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)

    def __call__(self, inputs: Iterable[Input]) -> Iterator[tuple[int, dict]]:
        import ray
        import ray.data

        items = [{"index": n, "name": i.name, "source": i.source} for n, i in enumerate(inputs)]
        if not items:
            return
        self._connect()
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        gpus = int(ray.cluster_resources().get("GPU", 0))
        pool = self.actors or gpus or 1
        # workers may not share the driver's working folder: `source` is the absolute real path
        out = ray.data.from_items(items).map_batches(
            _captioner(**self.settings), batch_size=self.batch_size, compute=ray.data.ActorPoolStrategy(size=pool),
            num_gpus=1 if gpus else 0, num_cpus=1)
        try:
            for row in out.iter_rows():
                yield int(row["index"]), json.loads(row["record"])
        except ray.exceptions.RayError as e:  # e.g. an actor's engine refused the config
            raise _user_error(e) or e

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if self.local is not None:
            self.local.close()
            self.local = None
        _use_env(self.saved_env)
        self.saved_env = {}


class LocalRay:
    """A Ray on this machine for one job, started lean (no dashboard UI, no usage stats) by a
    keeper process in a session of its own; when this process ends -- close(), Ctrl-C, an error,
    even kill -9, which closes the pipe the keeper reads -- the keeper ends every process of that
    session (Ray's GCS, raylet, agents and workers), so nothing lingers after the job."""

    def __init__(self):
        import secrets
        import subprocess
        import sys

        # Ray >= 2.5x guards a cluster with a token (else it writes one to ~/.ray): one per job
        self.auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **self.auth}
        self.keeper = subprocess.Popen([sys.executable, "-m", "zerocap.jobs.ray_backend", "keep-local-ray"],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                       start_new_session=True)
        line = self.keeper.stdout.readline().decode().strip()
        if not line.startswith("address "):
            self.close()
            raise InputError("could not start a local Ray (see the messages above); is another Ray using its ports?")
        self.address = line.split(" ", 1)[1]

    def close(self) -> None:
        if self.keeper.poll() is None:
            self.keeper.stdin.close()  # the keeper ends the local Ray and exits
            try:
                self.keeper.wait(timeout=30)
            except Exception:
                self.keeper.kill()


def _use_env(changes: dict) -> None:
    """Set (None: remove) these variables for this process's Ray, which reads its config and
    token once and caches them."""
    for key, value in changes.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):  # a Ray without token authentication
        pass


def _keep_local_ray() -> None:
    """The keeper (python -m zerocap.jobs.ray_backend keep-local-ray): start a local Ray, print
    its address, wait until the job's pipe closes, then end every process of this session."""
    import signal
    import sys

    import ray

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the job: the job closes the pipe
    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False, configure_logging=False)
    print("address", ray.get_runtime_context().gcs_address, flush=True)
    try:
        sys.stdin.buffer.read()
    finally:
        _end_session(os.getsid(0))


def _end_session(sid: int) -> None:
    """SIGKILL every other process of session `sid` (Linux: /proc)."""
    import signal

    me = os.getpid()
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            if int(fields[3]) == sid:  # after "pid (comm)": state ppid pgrp session
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, IndexError, ValueError):
            continue


def check_without_models(cfg, lm: str):
    """The config checked on the driver, before the actors load the models: from the LM's tokenizer
    and config where its method can (Method.check_without_models), else its knobs alone."""
    check_lm_dir(lm)
    check = methods.of(cfg).check_without_models
    return resolve(check)(cfg, lm) if check is not None else cfg.validate()


def _user_error(error: BaseException) -> InputError | None:
    """The InputError behind a Ray error, if any: Ray re-raises a worker's exception as its own
    (a task's keeps it as .cause; an actor that died in its constructor only as text)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        cause = getattr(error, "cause", None)
        if isinstance(cause, InputError):
            return InputError(str(cause.args[0]) if cause.args else str(cause))
        found = re.search(r"zerocap\.errors\.InputError: (.+)", str(error))
        if found:
            return InputError(found.group(1).strip())
        error = error.__cause__ or error.__context__
    return None


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["keep-local-ray"]:
        _keep_local_ray()
