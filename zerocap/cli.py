"""The `zerocap` command line: parse, validate, call the engine, print.

    zerocap caption IMAGE... [--preset knowledge|ocr] [--cond-text T] [--beam-size N] ... [--json]
    zerocap arithmetic IMG IMG IMG --weights 1 1 -1 [--text T --text-weight W]... [--json]

The authors' run.py flags work too (python -m zerocap --caption_img_path X --cond_text ...).
A mistake of the user's (zerocap.InputError, or a bad flag) prints one line and exits with
status 2; anything else is a bug and shows its traceback.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from .config import DEFAULTS, FIELD_TYPES, KNOBS, PRESETS, describe_knob
from .errors import InputError

COMMANDS = ("caption", "arithmetic")

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
                        " time): in fp32 bit-for-bit their beams on this machine, ~25x slower on a CPU."
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zerocap",
        description="Zero-shot image captioning and visual-semantic arithmetic (ZeroCap, CVPR 2022).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{caption,arithmetic}")
    cap = sub.add_parser("caption", help="caption images (presets: caption, knowledge, ocr)",
                         description="Caption each image; --preset knowledge or ocr for the paper's other uses.")
    cap.add_argument("images", nargs="*", metavar="IMAGE", help="image files")
    cap.add_argument("--caption_img_path", "--caption-img-path", action="append", default=[],
                     metavar="IMAGE", help="the authors' spelling of IMAGE")
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


def _progress_bar():
    if not sys.stderr.isatty():
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=0, unit="tok", file=sys.stderr, leave=False)

    def progress(step, max_tokens, best):
        bar.total = max_tokens
        bar.n = step
        bar.set_description(best[0][-40:] if best else "")
        bar.refresh()

    return progress, bar


def _finite(x):
    return x if not isinstance(x, float) or math.isfinite(x) else None


def _clean_floats(d):
    """JSON has no inf/nan: write null."""
    if isinstance(d, dict):
        return {k: _clean_floats(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_clean_floats(v) for v in d]
    return _finite(d)


def _print(result, as_json: bool) -> None:
    d = result.to_dict()
    out = sys.stdout
    if as_json:
        out.write(json.dumps(_clean_floats(d)) + "\n")
    else:
        out.write(f"{d['target']}\n")
        out.write(f"  best mixed:   {d['best_mixed']}\n  best CLIP:    {d['best_clip']}\n")
        out.write(f"  best fluency: {d['best_fluency']}\n  beams (score, CLIP similarity, perplexity):\n")
        for b in d["beams"]:
            out.write(f"    {b['score']:8.3f}  {b['clip_score']:6.3f}  {b['perplexity']:10.4g}  {b['caption']}\n")
        out.write(f"  {d['timing']['tokens']} tokens in {d['timing']['seconds']:.2f} s\n")
    out.flush()


def run(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(_route(argv))
    cfg = _config(args)
    if not 1 <= args.batch_size <= 64:
        raise InputError(f"--batch-size must be between 1 and 64, got {args.batch_size}")
    if args.command == "caption":
        images = list(args.images) + list(args.caption_img_path)
        if not images:
            raise InputError("give at least one IMAGE to caption")
    else:
        images = list(args.images) + list(args.arithmetics_imgs)
        if not images and not args.text:
            raise InputError("give the IMAGEs (and/or --text) to combine, with --weights")
    from .images import probe_image
    from .target import check_weights

    for im in images:  # fail fast, before loading the models (each is decoded when it is used)
        probe_image(im)
    if args.command == "arithmetic":
        weights = check_weights(images, args.weights, "image")
        text_weights = check_weights(args.text, args.text_weight, "text") if args.text else []
        if args.text_weight and not args.text:
            raise InputError("--text-weight given without --text")
    devices = _devices(args)
    lm_path, clip_path = _model_paths(args)

    from .loading import quiet_transformers
    from .parallel import Replicas

    quiet_transformers()

    replicas = Replicas.load(lm_path, clip_path, devices, lm_dtype=args.lm_dtype, exact=args.exact)
    cfg = replicas.engines[0].check(cfg)
    progress, bar = _progress_bar()
    try:
        if args.command == "caption":
            for result in replicas.caption(images, cfg, batch_size=args.batch_size, progress=progress,
                                           names=images):
                _print(result, args.json)
        else:
            result = replicas.engines[0].arithmetic(images, weights, args.text, text_weights or None,
                                                    config=cfg, progress=progress, names=images)
            _print(result, args.json)
    finally:
        if bar is not None:
            bar.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except InputError as e:  # the user's mistake: one line, no traceback
        print(f"zerocap: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zerocap: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
