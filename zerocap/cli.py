"""The `zerocap` command line: parse, validate, call the engine, print.

    zerocap caption IMAGE|FOLDER|PATTERN|URL... [--list FILE] [--out captions.jsonl] [--json] [knobs]
    zerocap arithmetic IMG IMG IMG --weights 1 1 -1 [--text T --text-weight W]... [--json]
    zerocap video CLIP... [--frames N | --every SECONDS] [--out videos.jsonl] [--json]
    zerocap eval captions.jsonl --refs captions_val2014.json [--json] [--per-image FILE]

The authors' run.py flags work too (python -m zerocap --caption_img_path X --cond_text ...).
A mistake of the user's (zerocap.InputError, or a bad flag) prints one line and exits with
status 2; in a dataset job an input that fails gets an error line, the job goes on, and the
exit status is 1 if any failed. Anything else is a bug and shows its traceback.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys

from .config import FIELD_TYPES, KNOBS, PRESETS, describe_knob
from .errors import InputError

COMMANDS = ("caption", "arithmetic", "video", "eval")

# config field -> the authors' run.py spellings (each knob is also --its-name-with-dashes)
AUTHORS_FLAGS = {
    "cond_text": ["--cond_text"],
    "beam_size": ["--beam_size"],
    "max_tokens": ["--target_seq_length", "--target-seq-length"],
    "num_iterations": ["--num_iterations"],
    "top_k": ["--top_k"],
    "clip_temperature": ["--clip_loss_temperature", "--clip-loss-temperature"],
    "clip_scale": ["--clip_scale"],
    "ce_scale": ["--ce_scale"],
    "grad_norm_factor": ["--grad_norm_factor"],
    "fusion_factor": ["--fusion_factor"],
    "repetition_penalty": ["--repetition_penalty"],
    "end_token": ["--end_token"],
    "end_factor": ["--end_factor"],
    "end_factor_from": ["--end_factor_from"],
    "forbidden_factor": ["--forbidden_factor"],
}


def _number(kind):
    def parse(text):
        try:
            return kind(text)
        except ValueError:
            name = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {name}") from None
    return parse


def _add_common(p: argparse.ArgumentParser, default_preset: str) -> None:
    g = p.add_argument_group("decoding (defaults: the paper's, per preset)")
    g.add_argument("--preset", choices=list(PRESETS), default=default_preset,
                   help=f"the paper's settings for this use (default {default_preset})")
    for name in KNOBS:
        kind = FIELD_TYPES[name]
        flag = "--" + name.replace("_", "-")
        flags = [flag] + [a for a in AUTHORS_FLAGS.get(name, []) if a != flag]
        g.add_argument(*flags, dest=name, default=None, metavar=kind.__name__.upper(),
                       type=str if kind is str else _number(kind), help=describe_knob(name))
    m = p.add_argument_group("models and running")
    m.add_argument("--lm", help="Hugging Face causal-LM directory (default: $ZEROCAP_WEIGHTS/gpt2-medium;"
                                " missing weights are downloaded unless offline)")
    m.add_argument("--clip", help="OpenAI CLIP checkpoint (default: $ZEROCAP_WEIGHTS/clip/ViT-B-32.pt)")
    m.add_argument("--lm_model", "--lm-model", choices=["gpt-2", "gpt-neo"], default=None,
                   help="the authors' spelling: gpt-2 = weights/gpt2-medium, gpt-neo = weights/gpt-neo-125M"
                        " (fetched on first use, or by script/download-weights --lm gpt-neo-125M)")
    m.add_argument("--clip_checkpoints", "--clip-checkpoints", metavar="DIR",
                   help="the authors' spelling: folder holding ViT-B-32.pt")
    m.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    m.add_argument("--devices", default=None,
                   help="comma-separated devices, one model replica each, images split among them"
                        " (e.g. cuda:0,cuda:1); 'all' = every visible GPU")
    m.add_argument("--multi_gpu", "--multi-gpu", action="store_true", help="the authors' spelling of --devices all")
    m.add_argument("--lm-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="LM precision (default float32; CLIP runs as loaded: fp16 on GPU)")
    m.add_argument("--exact", action="store_true",
                   help="the authors' operation order (CLIP's own encode_text on full rows, one image at a"
                        " time): in fp32 their scores to the last bit where the kernels match, ~30x slower on a CPU."
                        " Default: the fast form, the same algorithm with different rounding")
    m.add_argument("--fast", action="store_true", help=argparse.SUPPRESS)  # the default; older command lines
    m.add_argument("--batch-size", type=_number(int), default=8,
                   help="images decoded together, 1..64 (default 8)")
    m.add_argument("--json", action="store_true", help="one JSON object per result on stdout (JSONL)")
    a = p.add_argument_group("the authors' flags, accepted so their command lines run")
    a.add_argument("--seed", type=_number(int), default=None,
                   help="no effect: the decoder is deterministic, so there is nothing to seed")
    a.add_argument("--reset_context_delta", action="store_true", help="no effect: always on")
    m.add_argument("--run_type", choices=["caption", "arithmetics"], help=argparse.SUPPRESS)


def _add_dataset(p: argparse.ArgumentParser, what: str) -> None:
    d = p.add_argument_group("datasets")
    d.add_argument("--list", metavar="FILE", help=f"also the {what}s named in FILE ('-': standard input): one path or"
                                                  " URL per line, taken as written; empty lines and lines starting"
                                                  " with # are skipped")
    d.add_argument("-0", "--null", action="store_true",
                   help="--list names are separated by NUL characters (find -print0), with no other rule")
    d.add_argument("--out", metavar="FILE.jsonl",
                   help="write one JSON line per input as soon as it is done; a rerun skips the inputs already"
                        " in FILE (however spelled) and repairs a last line cut short (resume). FILE must be new,"
                        " empty, or a zerocap results file")
    d.add_argument("--retry-failed", action="store_true", help="with --out: run again the inputs that have"
                                                               " an error line in FILE")
    d.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run on Ray Data: a local Ray, or the cluster at ADDRESS (e.g. auto, ray://head:10001);"
                        " needs pip install 'zerocap[ray]'")
    d.add_argument("--actors", type=_number(int), default=None, metavar="N",
                   help="with --ray: engines in the actor pool (default: one per GPU of the cluster, else 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zerocap",
        description="Zero-shot image captioning and visual-semantic arithmetic (ZeroCap, CVPR 2022).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    cap = sub.add_parser("caption", help="caption images or a whole dataset (presets: caption, knowledge, ocr)",
                         description="Caption each image; --preset knowledge or ocr for the paper's other uses."
                                     " Inputs: image files, folders (searched recursively), glob patterns"
                                     " (quoted; ** for any depth), URLs, --list FILE.")
    cap.add_argument("images", nargs="*", metavar="INPUT", help="image files, folders, patterns or URLs")
    cap.add_argument("--caption_img_path", "--caption-img-path", action="append", default=[],
                     metavar="IMAGE", help="the authors' spelling of INPUT")
    _add_dataset(cap, "image")
    _add_common(cap, "caption")
    ari = sub.add_parser("arithmetic", help="caption a weighted sum of images (and texts)",
                         description="e.g. zerocap arithmetic woman.jpg king.jpg man.jpg --weights 1 1 -1")
    ari.add_argument("images", nargs="*", metavar="IMAGE", help="image files")
    ari.add_argument("--arithmetics_imgs", "--images", nargs="+", default=[], metavar="IMAGE",
                     help="image files (the authors' spelling)")
    ari.add_argument("--weights", "--arithmetics_weights", nargs="+", type=_number(float), default=None,
                     metavar="W", help="one weight per image (default: all 1)")
    ari.add_argument("--text", action="append", default=[], metavar="TEXT", help="a text term (repeatable)")
    ari.add_argument("--text-weight", "--text_weight", action="append", type=_number(float), default=None,
                     metavar="W", help="weight of each --text, in order (default 1)")
    _add_common(ari, "arithmetic")
    vid = sub.add_parser("video", help="caption video clips from their frames",
                         description="Caption each clip: frames sampled evenly (or every few seconds), their CLIP"
                                     " embeddings averaged, and the caption steered towards that mean. No"
                                     " temporal modelling: it captions what the frames share.")
    vid.add_argument("images", nargs="*", metavar="INPUT", help="video files, folders, patterns or URLs")
    vid.add_argument("--frames", type=_number(int), default=None, metavar="N",
                     help="frames spread evenly over the clip, 1..64 (default 8)")
    vid.add_argument("--every", type=_number(float), default=None, metavar="SECONDS",
                     help="instead: a frame every SECONDS (at most 64)")
    _add_dataset(vid, "video")
    _add_common(vid, "caption")
    ev = sub.add_parser("eval", help="score captions against references: COCO metrics, CLIP-S, RefCLIP-S",
                        description="BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE (pycocoevalcap; Java for the PTB"
                                    " tokeniser, METEOR and SPICE) and CLIP-S / RefCLIP-S (Hessel et al. 2021).")
    ev.add_argument("captions", metavar="CAPTIONS.jsonl", help="the output of zerocap caption --out")
    ev.add_argument("--refs", required=True, metavar="ANNOTATIONS.json",
                    help="COCO caption annotations (captions_val2014.json) or the Karpathy split (dataset_coco.json)")
    ev.add_argument("--field", choices=["best_mixed", "best_clip", "best_fluency"], default="best_mixed",
                    help="which caption of each image is scored (default best_mixed, the beam-search winner)")
    ev.add_argument("--strip-prompt", action="store_true", help="score the generated text without cond_text")
    ev.add_argument("--tokenizer", choices=["auto", "ptb", "simple"], default="auto",
                    help="auto (default): PTB when Java is there, else a simple tokeniser, said in the report")
    ev.add_argument("--skip", type=lambda v: tuple(x.strip() for x in v.split(",") if x.strip()), default=(),
                    metavar="METRIC,...", help="metrics not to compute: METEOR, SPICE (slow Java programs),"
                                               " CLIP-S (with RefCLIP-S; loads CLIP)")
    ev.add_argument("--clip", help="OpenAI CLIP checkpoint for CLIP-S (default: $ZEROCAP_WEIGHTS/clip/ViT-B-32.pt)")
    ev.add_argument("--image-root", metavar="DIR", help="folder the captions' relative image paths are in"
                                                        " (default: the current folder)")
    ev.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    ev.add_argument("--json", action="store_true", help="the report as one JSON object")
    ev.add_argument("--per-image", metavar="FILE.jsonl", help="also write every image's scores to FILE (new, empty,"
                                                             " or the per-image file of an earlier eval)")
    ev.add_argument("--match", choices=["auto", "name", "id"], default="auto",
                    help="how captions find their references: auto (default) = by file name, else by the COCO id"
                         " of a COCO-style name (COCO_val2014_000000391895.jpg, 000000391895.jpg); name = file"
                         " name only; id = the number in any file name (1.jpg -> image id 1)")
    return parser


def _route(argv: list[str]) -> list[str]:
    """Accept the authors' run.py style (no subcommand, --run_type) by inserting the subcommand."""
    if argv and (argv[0] in COMMANDS or argv[0] in ("-h", "--help")):
        return argv
    run_type = "caption"
    for i, a in enumerate(argv):
        if a == "--run_type" and i + 1 < len(argv):
            run_type = argv[i + 1]
        elif a.startswith("--run_type="):
            run_type = a.split("=", 1)[1]
    return ["arithmetic" if run_type == "arithmetics" else run_type] + argv


def _devices(args) -> list[str]:
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


def _model_paths(args) -> tuple[str, str]:
    from . import weights

    lm = args.lm
    clip_path = args.clip or (os.path.join(args.clip_checkpoints, "ViT-B-32.pt") if args.clip_checkpoints else None)
    if lm and clip_path:
        return lm, clip_path
    lm_dir = "gpt-neo-125M" if args.lm_model == "gpt-neo" else weights.LM_DIR
    # fetch (unless offline) only what the flags did not name
    default_lm, default_clip = weights.ensure(weights.root(), log=lambda m: print(m, file=sys.stderr),
                                              lm=None if lm else lm_dir, clip=not clip_path)
    return lm or default_lm, clip_path or default_clip


def _config(args):
    from .config import preset

    overrides = {name: getattr(args, name) for name in KNOBS}
    return preset(args.preset, **overrides)


def _print(d: dict) -> None:
    """A result record as text on stdout."""
    out = sys.stdout
    out.write(f"{d['target']}\n")
    out.write(f"  best mixed:   {d['best_mixed']}\n  best CLIP:    {d['best_clip']}\n")
    out.write(f"  best fluency: {d['best_fluency']}\n  beams (score, CLIP similarity, perplexity):\n")
    for b in d["beams"]:
        out.write(f"    {b['score']:8.3f}  {b['clip_score']:6.3f}  {b['perplexity']:10.4g}  {b['caption']}\n")
    if d.get("frame_times"):
        distinct = f"{d['frames']} distinct frames of {d['frames_asked']} asked"
        out.write(f"  frames at {', '.join(f'{t:.2f}' for t in d['frame_times'])} s ({distinct})\n")
    out.write(f"  {d['timing']['tokens']} tokens in {d['timing']['seconds']:.2f} s\n")
    out.flush()


def _emit(as_json: bool, quiet: bool, bar=None, key: str | None = None):
    """What to do with each record as it is done: stdout (text or JSON lines -- a job's marked as
    its results file's lines are, so that saved output can be resumed), failures on stderr
    (above the progress bar, if there is one)."""
    from .jobs.results import KINDS, dumps, marked

    def emit(record: dict) -> None:
        if as_json and not quiet:
            sys.stdout.write(dumps(marked(KINDS[key], record) if key else record) + "\n")
            sys.stdout.flush()
        elif "error" in record:
            message = f"zerocap: error: {record['error']}"
            if bar is not None:
                bar.write(message, file=sys.stderr)
            else:
                print(message, file=sys.stderr)
        elif not quiet:
            _print(record)

    return emit


def _bar(unit: str):
    """A progress bar over the inputs on a terminal (done/total, rate, ETA), else None."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=0, unit=unit, file=sys.stderr, dynamic_ncols=True, delay=0.5)  # run_job sets the total


def _target(args):
    """How each input becomes a CLIP target (images; or videos, with the frame options)."""
    from .jobs.run import image_target

    if args.command != "video":
        return image_target, "image", None
    from .video import VIDEO_EXTENSIONS, check_sampling, video_target

    check_sampling(args.frames, args.every)
    return functools.partial(video_target, frames=args.frames, every=args.every), "video", VIDEO_EXTENSIONS


def _dataset(args, cfg) -> int:
    """caption / video: every input, batched, each result emitted (and written) when done."""
    from .jobs.inputs import IMAGE_EXTENSIONS, find_inputs, identify
    from .jobs.results import ResultsFile
    from .jobs.run import caption_batch, run_job

    target, key, extensions = _target(args)
    if args.retry_failed and not args.out:
        raise InputError("--retry-failed needs --out FILE (the file whose error lines to retry)")
    if args.actors is not None and (args.ray is None or args.actors < 1):
        raise InputError("--actors needs --ray and a number from 1 up")
    inputs = find_inputs(list(args.images) + list(getattr(args, "caption_img_path", [])), args.list,
                         extensions or IMAGE_EXTENSIONS, null=args.null)
    if not inputs:
        raise InputError(f"no {key}s: give {key} files, folders, patterns or URLs, or --list FILE")
    missing = [i.name for i in inputs if not i.is_url and not i.exists]
    if len(missing) == len(inputs):  # a typo, most likely: say so before loading the models
        raise InputError(f"{key} file not found: {missing[0]}" + (f" (nor the {len(missing) - 1} others)"
                                                                   if len(missing) > 1 else ""))
    devices = _devices(args)
    lm_path, clip_path = _model_paths(args)
    # every output is checked (and locked) before any work: never one of the inputs (the list too)
    listed = None if args.list is None else "/dev/stdin" if args.list == "-" else args.list
    not_outputs = inputs + ([identify(listed)] if listed and os.path.exists(listed) else [])
    results = ResultsFile(args.out, key, args.retry_failed, not_outputs) if args.out else None
    from .loading import quiet_transformers

    quiet_transformers()
    bar = _bar("img" if key == "image" else "clip")
    batches = None
    try:
        if args.ray is None:
            from .parallel import Replicas

            replicas = Replicas.load(lm_path, clip_path, devices, lm_dtype=args.lm_dtype, exact=args.exact)
            cfg = replicas.engines[0].check(cfg)
            tokens = None if bar is None else lambda step, total, best: bar.set_postfix_str(f"token {step}/{total}")

            def batches(chunks):
                return replicas.map(lambda engine, chunk: caption_batch(engine, chunk, cfg, target, key,
                                                                        progress=tokens), chunks)
        else:
            from .jobs.ray_backend import RayBatches

            batches = RayBatches(args.ray, args.actors, lm_path, clip_path, cfg, args.exact, args.lm_dtype,
                                 args.batch_size, target, key)
        emit = _emit(args.json, quiet=results is not None and not args.json, bar=bar, key=key)
        summary = run_job(inputs, batches, emit, results, args.batch_size, key, bar,
                          unit="images" if key == "image" else "videos")
    finally:
        if bar is not None:
            bar.close()
        if results is not None:
            results.close()
        if hasattr(batches, "close"):
            batches.close()
    print(f"zerocap: {summary.line(args.out)}", file=sys.stderr)
    return 1 if summary.any_failed else 0


def _arithmetic(args, cfg) -> int:
    images = list(args.images) + list(args.arithmetics_imgs)
    if not images and not args.text:
        raise InputError("give the IMAGEs (and/or --text) to combine, with --weights")
    from .images import probe_image
    from .target import check_weights

    for im in images:  # fail fast, before loading the models (each is decoded when it is used)
        probe_image(im)
    weights = check_weights(images, args.weights, "image")
    text_weights = check_weights(args.text, args.text_weight, "text") if args.text else None
    if args.text_weight and not args.text:
        raise InputError("--text-weight given without --text")
    devices = _devices(args)
    lm_path, clip_path = _model_paths(args)
    from .engine import ZeroCap
    from .loading import quiet_transformers

    quiet_transformers()
    engine = ZeroCap.load(lm_path, clip_path, device=devices[0], lm_dtype=args.lm_dtype, exact=args.exact)
    result = engine.arithmetic(images, weights, args.text, text_weights, config=engine.check(cfg), names=images)
    _emit(args.json, quiet=False)(result.to_dict())
    return 0


def _evaluate(args) -> int:
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

    clip_model = preprocess = device = None
    if "CLIP-S" not in args.skip:
        from . import weights
        from .loading import load_clip, resolve_device

        device = resolve_device(args.device)
        path = args.clip or weights.ensure(weights.root(), log=lambda m: print(m, file=sys.stderr), lm=None)[1]
        clip_model, preprocess = load_clip(path, device)
    report = evaluate(args.captions, args.refs, args.field, args.strip_prompt, args.tokenizer, clip_model,
                      preprocess, device, args.image_root, args.skip, args.match)
    print(dumps(report.to_dict()) if args.json else report.table())
    if scores_file is not None:
        scores_file.write({"image": name, **scores} for name, scores in report.per_image.items())
    return 0


def run(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(_route(argv))
    if args.command == "eval":
        return _evaluate(args)
    cfg = _config(args)
    if not 1 <= args.batch_size <= 64:
        raise InputError(f"--batch-size must be between 1 and 64, got {args.batch_size}")
    return _arithmetic(args, cfg) if args.command == "arithmetic" else _dataset(args, cfg)


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is printed escaped, not fatal
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass
    try:
        return run(argv)
    except InputError as e:  # the user's mistake: one line, no traceback
        print(f"zerocap: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zerocap: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout's reader left (| head): stop quietly, as a shell tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def entry() -> None:
    """The `zerocap` command (and python -m zerocap): main(), then exit with its status.

    After a Ctrl-C, CPython exits by SIGINT whenever the KeyboardInterrupt passed through code
    that C evaluated (some imports do), even though main() caught it; leave with 130 directly.
    """
    code = main()
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(code)


if __name__ == "__main__":
    entry()
