"""What each command does once cli.py has parsed it: check everything a user can get wrong,
then load the models, run, and show the results.

  a mode whose kind makes one result per input (caption, knowledge, ocr, video): a dataset job
    -- find the inputs, open the results file, run batches on a backend, one record each;
  a mode whose kind makes one result per request (arithmetic): one request;
  eval: score a results file against references.
"""
from __future__ import annotations

import os
import sys

from . import forms, methods, modes
from .errors import InputError
from .limits import BATCH_SIZE


def run(args) -> int:
    if args.command == "eval":
        return evaluate(args)
    if args.command == "selfcheck":
        return selfcheck(args)
    mode = modes.get(args.command)
    method = methods.get(args.method)
    if method.presets and args.preset in modes.MODES and args.preset != mode.name \
            and modes.get(args.preset).kind is mode.kind:
        # `caption X --preset ocr` is `ocr X`: one request, recorded (and resumed) as that mode
        mode, args.preset = modes.get(args.preset), None
    knobs = dict.fromkeys(k for m in methods.METHODS.values() for k in m.knobs)  # every method's, as flags
    cfg = method.config(mode.name, args.preset, **{name: getattr(args, name, None) for name in knobs})
    if not BATCH_SIZE.allows(args.batch_size):
        raise InputError(f"--batch-size must be {BATCH_SIZE.said}, got {args.batch_size}")
    return dataset(args, mode, cfg) if mode.kind.one_per_input else request(args, mode, cfg)


# ---- what every decoding command needs -------------------------------------------------------------
def devices(args) -> list[str]:
    spec = "all" if args.multi_gpu and not args.devices else args.devices
    if not spec:
        return [args.device]
    if spec == "all":
        import torch

        n = torch.cuda.device_count()
        if n == 0:
            raise InputError("--devices all / --multi_gpu: no CUDA GPU is visible")
        return [f"cuda:{i}" for i in range(n)]
    return [d.strip() for d in spec.split(",") if d.strip()]


def model_paths(args) -> tuple[str, str]:
    """(LM folder, CLIP checkpoint): as named by the flags, else from the weights folder, whose
    missing files are fetched (unless offline) -- only those the flags did not name."""
    from . import families, weights

    clip_path = args.clip or (os.path.join(args.clip_checkpoints, "ViT-B-32.pt") if args.clip_checkpoints else None)
    if args.lm_model and getattr(args, "method", None) not in (None, methods.ZEROCAP.name):
        if args.lm_model != families.DEFAULT.flag:
            raise InputError(f"--lm_model {args.lm_model}: method {args.method} runs on GPT-2, as their code does;"
                             " leave out --lm_model")
    if args.lm_model and args.lm:  # --lm names the folder; the family the flag names must be its
        wanted = families.by_flag(args.lm_model)
        found = _model_type(args.lm)
        if found is not None and found not in wanted.model_types:
            raise InputError(f"--lm_model {args.lm_model} names a {wanted.name} LM, but --lm {args.lm} holds a"
                             f" {found!r} model: leave out one of them")
    lm_dir = families.by_flag(args.lm_model).folder if args.lm_model else weights.LM_DIR
    return weights.locate(args.lm, clip_path, lm_dir)


def _model_type(folder: str) -> str | None:
    """config.json's model_type of an LM folder, or None where it cannot be read (loading says why)."""
    import json

    try:
        with open(os.path.join(folder, "config.json"), "rb") as f:
            value = json.loads(f.read(1 << 20)).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def form(args) -> forms.Form:
    chosen = forms.get(args.form)
    if args.compile and chosen.exact_lm:
        raise InputError("--compile runs the fast form; the exact form keeps the authors' operation order, eagerly")
    if args.method != methods.ZEROCAP.name:
        if args.compile:
            raise InputError(f"--compile compiles ZeroCap's decoding step; method {args.method} runs eagerly")
        if args.lm_dtype != "float32":
            raise InputError(f"method {args.method} runs the LM in float32 (its prefix is learned by gradient"
                             " steps, as theirs); leave out --lm-dtype")
    return chosen


# ---- the commands --------------------------------------------------------------------------------
def dataset(args, mode, cfg) -> int:
    """A mode with one result per input: every input, batched, each result emitted (and
    written) when done."""
    from .jobs.inputs import find_inputs, identify
    from .jobs.results import ResultsFile
    from .jobs.run import run_job
    from .loading import quiet_transformers
    from .output import emitter, progress_bar

    kind, key = mode.kind, mode.kind.name
    chosen = form(args)  # a form that cannot run as asked is said before any work
    options = {name: getattr(args, name) for name in kind.job_options}
    kind.check_options(options)
    if args.retry_failed and not args.out:
        raise InputError("--retry-failed needs --out FILE (the file whose error lines to retry)")
    if args.mix_settings and not args.out:
        raise InputError("--mix-settings needs --out FILE (the results file to add to)")
    if args.actors is not None and (args.ray is None or args.actors < 1):
        raise InputError("--actors needs --ray and a number from 1 up")
    inputs = find_inputs(list(args.inputs) + list(args.more_inputs), args.list, kind.extensions, null=args.null,
                         output=args.out)
    if not inputs:
        raise InputError(f"no {key}s: give {key} files, folders, patterns or URLs, or --list FILE")
    missing = [i.name for i in inputs if not i.is_url and not i.exists]
    if len(missing) == len(inputs):  # a typo, most likely: say so before loading the models
        raise InputError(f"{key} file not found: {missing[0]}" + (f" (nor the {len(missing) - 1} others)"
                                                                   if len(missing) > 1 else "")
                         + (f"; relative names, a list's too, are taken from the folder zerocap runs in, {os.getcwd()}"
                            if not os.path.isabs(missing[0]) else ""))
    where = devices(args)
    lm_path, clip_path = model_paths(args)
    # every output is checked (and locked) before any work: never one of the inputs (the list too)
    listed = None if args.list is None else "/dev/stdin" if args.list == "-" else args.list
    not_outputs = inputs + ([identify(listed)] if listed and os.path.exists(listed) else [])
    made_with = settings(mode, cfg, chosen, args.lm_dtype, options, lm_path, clip_path)
    results = None
    if args.out:
        results = ResultsFile(args.out, key, args.retry_failed, not_outputs, settings=made_with,
                              mix_settings=args.mix_settings,
                              warn=lambda m: print(f"zerocap: note: {m}", file=sys.stderr))
        if args.json and _same_file(sys.stdout, results.fd):
            results.close()
            raise InputError(f"--json writes each line to standard output, which is the --out file {args.out} itself:"
                             " every line would be written twice; drop --json (--out keeps the lines) or write --out"
                             " elsewhere")
    todo = sum(1 for i in inputs if results is None or i not in results)
    bar = progress_bar("img" if key == "image" else "clip") if todo else None
    backend = None
    try:
        if todo:  # (every input done already: no model to load)
            quiet_transformers()
            backend = _backend(args, mode, cfg, options, where, lm_path, clip_path, bar, todo)
        emit = emitter(args.json, quiet=results is not None and not args.json, bar=bar, key=key)
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
        print(f"zerocap: note: {name} holds other content than when it was captioned in {args.out}: captioned"
              " again", file=sys.stderr)
    print(f"zerocap: {summary.line(args.out)}", file=sys.stderr)
    return 1 if summary.any_failed else 0


def _same_file(stream, fd: int) -> bool:
    try:
        a, b = os.fstat(stream.fileno()), os.fstat(fd)
    except (OSError, AttributeError, ValueError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def settings(mode, cfg, chosen: forms.Form, lm_dtype: str, options: dict, lm_path: str, clip_path: str) -> dict:
    """What makes a job's captions, as a results file records it on every line: the mode, the
    form, every knob, the kind's options (a clip's frames) and the models (weights.fingerprint)."""
    import dataclasses

    from .loading import check_clip_file, check_lm_dir
    from .weights import fingerprint

    check_lm_dir(lm_path)  # missing weights are said as loading says them
    check_clip_file(clip_path)
    method = methods.of(cfg)  # (ZeroCap's lines name no method: files written before there were two stay resumable)
    named = {} if method is methods.ZEROCAP else {"method": method.name}
    return {"mode": mode.name, **named, "form": chosen.name, "lm_dtype": lm_dtype, **dataclasses.asdict(cfg), **options,
            "lm": fingerprint(lm_path), "clip": fingerprint(clip_path)}


def _backend(args, mode, cfg, options, where, lm_path, clip_path, bar, todo: int):
    if args.ray is not None:
        from .jobs.ray_backend import RayBatches

        return RayBatches(args.ray, args.actors, lm_path, clip_path, cfg, form(args).name, args.lm_dtype,
                          args.batch_size, mode, options, args.compile)
    from .jobs.backends import Local

    tokens = None if bar is None else lambda step, total, best: bar.set_postfix_str(methods.progress_step(cfg, step,
                                                                                                           total))
    in_flight = min(args.batch_size, max(1, todo))  # a compiled step is sized by it
    backend = Local.load(lm_path, clip_path, where, mode, cfg, options, lm_dtype=args.lm_dtype, form=form(args),
                         in_flight=in_flight, progress=tokens, compile=args.compile)
    if args.compile:
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
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return cache_dir()


def request(args, mode, cfg) -> int:
    """A mode with one result per request (arithmetic): its inputs checked (and the images
    probed) before the models load, then one decode."""
    from .engine import ZeroCap
    from .images import probe_image
    from .loading import quiet_transformers
    from .output import emitter

    files = list(args.inputs) + list(args.more_inputs)
    inputs = mode.kind.check(mode, {"images": [modes.Sent(f, f) for f in files] or None, "texts": args.text or None,
                                    "image_weights": args.weights, "text_weights": args.text_weight}, served=False)
    for f in files:  # fail fast (each is decoded when it is used)
        probe_image(f)
    where = devices(args)
    lm_path, clip_path = model_paths(args)
    quiet_transformers()
    engine = ZeroCap.load(lm_path, clip_path, device=where[0], lm_dtype=args.lm_dtype, form=form(args),
                          compile=args.compile)
    targets = mode.kind.targets(engine, inputs, cfg=cfg)
    if args.compile:
        warm_up([engine], cfg, len(targets))
    emit = emitter(args.json, quiet=False)
    for result in engine.decode_targets(targets, engine.check(cfg)):
        emit(result.to_dict())
    return 0


def selfcheck(args) -> int:
    """A probe caption compiled and eagerly: the report, exit 1 when their beams differ."""
    from . import selfcheck as check
    from .engine import ZeroCap
    from .loading import quiet_transformers, resolve_device

    device = resolve_device(args.device)
    mode = {"auto": "reduce-overhead" if device.type == "cuda" else None, "off": None}.get(args.compile, args.compile)
    lm_path, clip_path = model_paths(args)
    quiet_transformers()
    engine = ZeroCap.load(lm_path, clip_path, device=str(device), compile=mode or False)
    if engine.compiled is not None:
        engine.warm_up(check.PROBE)
    result = check.check(engine)
    print(result.report())
    return 1 if result.agree is False else 0


def evaluate(args) -> int:
    from .evaluate import check_skip
    from .jobs.inputs import identify
    from .jobs.results import ScoresFile

    check_skip(args.skip)  # before CLIP loads
    scores_file = None
    if args.per_image:  # checked before any work; never the captions or the references
        scores_file = ScoresFile(args.per_image, [identify(args.captions), identify(args.refs)])
    try:
        return _evaluate_into(args, scores_file)
    finally:
        if scores_file is not None:
            scores_file.close(remove_if_new=True)


def _evaluate_into(args, scores_file) -> int:
    from .evaluate import evaluate
    from .jobs.results import dumps

    scorer = None
    if "CLIP-S" not in args.skip:
        from . import weights
        from .loading import load_clip, resolve_device
        from .scorer import ClipScorer

        device = resolve_device(args.device)
        path = args.clip or weights.ensure(weights.root(), log=lambda m: print(m, file=sys.stderr), lm=None)[1]
        scorer = ClipScorer(*load_clip(path, device), device)
    report = evaluate(args.captions, args.refs, args.field, args.strip_prompt, args.tokenizer, scorer,
                      args.image_root, args.skip, args.match)
    print(dumps(report.to_dict()) if args.json else report.table())
    if scores_file is not None:
        scores_file.write({"image": name, **scores} for name, scores in report.per_image.items())
    return 0
