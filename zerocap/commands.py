"""What each command does with the typed request cli.py built (request.py): check what needs the
files, then load the models, run, and show the results.

  Decode of a mode whose kind makes one result per input (caption, knowledge, ocr, video): a
    dataset job -- find the inputs, open the results file, run batches on a backend, one record each;
  Decode of a mode whose kind makes one result per request (arithmetic): one request;
  Eval: score a results file against references;
  SelfCheck: a probe caption compiled and eagerly.

cli.py imports this module only once the flags are checked: torch and the models' code load here.
"""
from __future__ import annotations

import os
import sys

import torch

from . import families, methods, modes, selfcheck as check, weights
from .engine import ZeroCap
from .errors import InputError
from .evaluate import check_skip, evaluate as evaluate_files
from .images import probe_image
from .jobs.backends import Local
from .jobs.inputs import find_inputs, identify
from .jobs.ray_backend import RayBatches
from .jobs.results import ResultsFile, ScoresFile, dumps
from .jobs.run import run_job
from .loading import load_clip, quiet_transformers, resolve_device
from .output import emitter, progress_bar
from .request import Decode, Eval, Models, Runtime, SelfCheck


def run(asked: "Decode | Eval | SelfCheck") -> int:
    if isinstance(asked, Eval):
        return evaluate(asked)
    if isinstance(asked, SelfCheck):
        return selfcheck(asked)
    return dataset(asked) if asked.mode.kind.one_per_input else request(asked)


# ---- what every decoding command needs -------------------------------------------------------------
def devices(runtime: Runtime) -> list[str]:
    if not runtime.devices:
        return [runtime.device]
    if runtime.devices == ("all",):
        n = torch.cuda.device_count()
        if n == 0:
            raise InputError("--devices all / --multi_gpu: no CUDA GPU is visible")
        return [f"cuda:{i}" for i in range(n)]
    return list(runtime.devices)


def model_paths(models: Models) -> tuple[str, str]:
    """(LM folder, CLIP checkpoint): as named, else from the weights folder, whose missing files are
    fetched (unless offline) -- only those not named."""
    lm_dir = families.by_flag(models.lm_family_flag).folder if models.lm_family_flag else weights.LM_DIR
    return weights.locate(models.lm, models.clip, lm_dir)


# ---- the commands --------------------------------------------------------------------------------
def dataset(asked: Decode) -> int:
    """A mode with one result per input: every input, batched, each result emitted (and
    written) when done."""
    mode, cfg, job, runtime = asked.mode, asked.config, asked.job, asked.runtime
    kind, key = mode.kind, mode.kind.name
    inputs = find_inputs(list(job.inputs), job.list_file, kind.extensions, null=job.null, output=job.out)
    if not inputs:
        raise InputError(f"no {key}s: give {key} files, folders, patterns or URLs, or --list FILE")
    missing = [i.name for i in inputs if not i.is_url and not i.exists]
    if len(missing) == len(inputs):  # a typo, most likely: say so before loading the models
        raise InputError(f"{key} file not found: {missing[0]}" + (f" (nor the {len(missing) - 1} others)"
                                                                   if len(missing) > 1 else "")
                         + (f"; relative names, a list's too, are taken from the folder zerocap runs in, {os.getcwd()}"
                            if not os.path.isabs(missing[0]) else ""))
    where = devices(runtime)
    lm_path, clip_path = model_paths(asked.models)
    # every output is checked (and locked) before any work: never one of the inputs (the list too)
    listed = None if job.list_file is None else "/dev/stdin" if job.list_file == "-" else job.list_file
    not_outputs = inputs + ([identify(listed)] if listed and os.path.exists(listed) else [])
    made_with = settings(mode, cfg, runtime, job.options, lm_path, clip_path)
    results = None
    if job.out:
        results = ResultsFile(job.out, key, job.retry_failed, not_outputs, settings=made_with,
                              mix_settings=job.mix_settings,
                              warn=lambda m: print(f"zerocap: note: {m}", file=sys.stderr))
        if job.json and _same_file(sys.stdout, results.fd):
            results.close()
            raise InputError(f"--json writes each line to standard output, which is the --out file {job.out} itself:"
                             " every line would be written twice; drop --json (--out keeps the lines) or write --out"
                             " elsewhere")
    todo = sum(1 for i in inputs if results is None or i not in results)
    bar = progress_bar("img" if key == "image" else "clip") if todo else None
    backend = None
    try:
        if todo:  # (every input done already: no model to load)
            quiet_transformers()
            backend = _backend(asked, where, lm_path, clip_path, bar, todo)
        emit = emitter(job.json, quiet=results is not None and not job.json, bar=bar, key=key)
        summary = run_job(inputs, backend or (lambda items: iter(())), emit, results, key, bar, unit=f"{key}s",
                          settings=made_with)
    finally:
        if bar is not None:
            bar.close()
        if results is not None:
            results.close()
        if backend is not None:
            backend.close()
    for name in summary.changed:
        print(f"zerocap: note: {name} holds other content than when it was captioned in {job.out}: captioned"
              " again", file=sys.stderr)
    print(f"zerocap: {summary.line(job.out)}", file=sys.stderr)
    return 1 if summary.any_failed else 0


def _same_file(stream, fd: int) -> bool:
    try:
        a, b = os.fstat(stream.fileno()), os.fstat(fd)
    except (OSError, AttributeError, ValueError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def settings(mode, cfg, runtime: Runtime, options: dict, lm_path: str, clip_path: str) -> dict:
    """What makes a job's captions, as a results file records it on every line: the mode, the
    form, the knobs that differ from the method's defaults and the defaults' version
    (methods.Method.recorded: a knob added later leaves the file resumable), the kind's options (a
    clip's frames) and the models: their names (`lm_model`: its Hugging Face model type and
    folder; `clip_model`: the checkpoint's or folder's name) and identities (weights.fingerprint)."""
    weights.check_lm_dir(lm_path)  # missing weights are said as loading says them
    weights.check_clip_file(clip_path)
    method = methods.of(cfg)  # (the default method's lines name none: files written before there were two resume)
    named = {} if method is methods.DEFAULT else {"method": method.name}
    return {"mode": mode.name, **named, "form": runtime.form.name, "lm_dtype": runtime.lm_dtype,
            **method.recorded(cfg), "defaults": method.defaults_version, **options, "lm": weights.fingerprint(lm_path),
            "clip": weights.fingerprint(clip_path), "lm_model": weights.model_name(lm_path),
            "clip_model": weights.model_name(clip_path)}


def _backend(asked: Decode, where, lm_path, clip_path, bar, todo: int):
    mode, cfg, job, runtime = asked.mode, asked.config, asked.job, asked.runtime
    if job.ray is not None:
        return RayBatches(job.ray, job.actors, lm_path, clip_path, cfg, runtime.form.name, runtime.lm_dtype,
                          runtime.batch_size, mode, job.options, runtime.compile)
    tokens = None if bar is None else lambda snapshot: bar.set_postfix_str(snapshot.where())
    in_flight = min(runtime.batch_size, max(1, todo))  # a compiled step is sized by it
    backend = Local.load(lm_path, clip_path, where, mode, cfg, job.options, lm_dtype=runtime.lm_dtype,
                         form=runtime.form, in_flight=in_flight, on_step=tokens, compile=runtime.compile)
    if runtime.compile:
        warm_up(backend.engines, cfg, in_flight)
    return backend


def warm_up(engines, cfg, batch: int) -> None:
    """Compile each engine's step for this configuration before the job, and say how long it took."""
    for engine in engines:
        seconds = engine.warm_up(cfg, batch)
        compiled = engine.compiled
        if compiled is None or compiled.failed:
            print("zerocap: decoding eagerly (see the warning above)", file=sys.stderr)
            continue
        print(f"zerocap: compiled the decoding step on {engine.device} in {seconds:.1f} s (PyTorch keeps it in"
              f" its inductor cache, {inductor_cache()}, for later runs)", file=sys.stderr)


def inductor_cache() -> str:
    from torch._inductor.runtime.cache_dir_utils import cache_dir  # (a private module of torch's)

    return cache_dir()


def request(asked: Decode) -> int:
    """A mode with one result per request (arithmetic): its inputs checked (and the images
    probed) before the models load, then one decode."""
    mode, cfg, terms, runtime = asked.mode, asked.config, asked.terms, asked.runtime
    inputs = mode.kind.check(mode, {"images": [modes.Sent(f, f) for f in terms.images] or None,
                                    "texts": list(terms.texts) or None,
                                    "image_weights": None if terms.weights is None else list(terms.weights),
                                    "text_weights": None if terms.text_weights is None else list(terms.text_weights)},
                             served=False)
    for f in terms.images:  # fail fast (each is decoded when it is used)
        probe_image(f)
    where = devices(runtime)
    lm_path, clip_path = model_paths(asked.models)
    quiet_transformers()
    engine = ZeroCap.load(lm_path, clip_path, device=where[0], lm_dtype=runtime.lm_dtype, form=runtime.form,
                          compile=runtime.compile)
    targets = mode.kind.targets(engine, inputs, cfg=cfg)
    if runtime.compile:
        warm_up([engine], cfg, len(targets))
    emit = emitter(asked.job.json, quiet=False)
    for result in engine.decode_targets(targets, engine.check(cfg)):
        emit(result.to_dict())
    return 0


def selfcheck(asked: SelfCheck) -> int:
    """A probe caption compiled and eagerly: the report, exit 1 when their beams differ."""
    device = resolve_device(asked.device)
    mode = {"auto": "reduce-overhead" if device.type == "cuda" else None, "off": None}.get(asked.compile,
                                                                                           asked.compile)
    lm_path, clip_path = model_paths(asked.models)
    quiet_transformers()
    engine = ZeroCap.load(lm_path, clip_path, device=str(device), compile=mode or False)
    if engine.compiled is not None:
        engine.warm_up(check.PROBE)
    result = check.check(engine)
    print(result.report())
    return 1 if result.agree is False else 0


def evaluate(asked: Eval) -> int:
    check_skip(asked.skip)  # before CLIP loads
    scores_file = None
    if asked.per_image:  # checked before any work; never the captions or the references
        scores_file = ScoresFile(asked.per_image, [identify(asked.captions), identify(asked.refs)])
    try:
        return _evaluate_into(asked, scores_file)
    finally:
        if scores_file is not None:
            scores_file.close(remove_if_new=True)


def _evaluate_into(asked: Eval, scores_file) -> int:
    scorer = None
    if "CLIP-S" not in asked.skip:
        device = resolve_device(asked.device)
        path = asked.clip or weights.ensure(weights.root(), log=lambda m: print(m, file=sys.stderr), lm=None)[1]
        scorer = load_clip(path, device)
    report = evaluate_files(asked.captions, asked.refs, asked.field, asked.strip_prompt, asked.tokenizer, scorer,
                            asked.image_root, asked.skip, asked.match)
    print(dumps(report.to_dict()) if asked.json else report.table())
    if scores_file is not None:
        scores_file.write({"image": name, **scores} for name, scores in report.per_image.items())
    return 0
