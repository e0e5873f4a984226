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

from .config import ZeroCapConfig
from .dataset import caption_batch, finite, is_url
from .errors import InputError


class Captioner:
    """A Ray actor: one engine on the actor's device, captioning batches of input names."""

    def __init__(self, lm: str, clip: str, config: dict, exact: bool, lm_dtype: str, target, key: str):
        import torch

        from .engine import ZeroCap
        from .loading import quiet_transformers

        quiet_transformers()
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        device = "cuda" if torch.cuda.is_available() else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES per actor
        self.engine = ZeroCap.load(lm, clip, device=device, lm_dtype=lm_dtype, exact=exact)
        self.cfg = self.engine.check(ZeroCapConfig(**config))
        self.target, self.key = target, key

    def __call__(self, batch: dict) -> dict:
        names = [str(n) for n in batch["name"]]
        sources = [str(s) for s in batch["source"]]
        records = caption_batch(self.engine, names, self.cfg, self.target, self.key, sources)
        return {"record": [json.dumps(finite(r)) for r in records]}


def ray_batches(address: str | None, actors: int | None, lm: str, clip: str, cfg: ZeroCapConfig, exact: bool,
                lm_dtype: str, batch_size: int, target, key: str):
    """A `batches` function for dataset.run_job that runs on Ray; records come in completion order.

    address: None or "local" starts a local Ray (or joins RAY_ADDRESS); otherwise the cluster's
    address ("auto", "ray://head:10001", "head:6379").
    """
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")  # read when ray.data is imported; progress is ours
    try:
        import ray
        import ray.data
    except ImportError:
        raise InputError("--ray needs Ray Data: pip install 'zerocap[ray]'") from None

    check_without_models(cfg, lm)  # an actor that refuses it would show Ray's tracebacks first

    def batches(chunks: Iterable[list[str]]) -> Iterator[list[dict]]:
        names = [name for chunk in chunks for name in chunk]
        if not names:
            return
        if not ray.is_initialized():
            ray.init(address=None if address in (None, "local") else address, include_dashboard=False,
                     logging_level="ERROR", log_to_driver=False)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        gpus = int(ray.cluster_resources().get("GPU", 0))
        pool = actors or gpus or 1
        # workers may not share the driver's working folder: they read absolute paths
        items = [{"name": n, "source": n if is_url(n) else os.path.abspath(n)} for n in names]
        out = ray.data.from_items(items).map_batches(
            Captioner, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=pool),
            num_gpus=1 if gpus else 0, num_cpus=1,
            fn_constructor_kwargs=dict(lm=os.path.abspath(lm), clip=os.path.abspath(clip), config=vars(cfg).copy(),
                                       exact=exact, lm_dtype=lm_dtype, target=target, key=key))
        try:
            for row in out.iter_rows():
                yield [json.loads(row["record"])]
        except ray.exceptions.RayError as e:  # e.g. an actor's engine refused the config
            raise _user_error(e) or e

    return batches


def check_without_models(cfg: ZeroCapConfig, lm: str) -> ZeroCapConfig:
    """ZeroCap.check on the driver, from the LM's tokenizer and config (no weights loaded)."""
    import clip
    from transformers import AutoConfig, AutoTokenizer

    from .engine import check_config, prompt_facts
    from .loading import check_lm_dir

    check_lm_dir(lm)
    tokenizer = AutoTokenizer.from_pretrained(lm, local_files_only=True)
    lm_config = AutoConfig.from_pretrained(lm, local_files_only=True)
    prefix, positions = prompt_facts(lm_config, tokenizer)
    return check_config(cfg, tokenizer, lm_config.vocab_size, prefix, positions, clip.clip._tokenizer.encode)


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
