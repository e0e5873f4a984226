"""The `zerocap` command line: parse, validate, call the engine, print.

    zerocap caption IMAGE... [--preset knowledge|ocr] [--cond-text T] [--beam-size N] ... [--json]
    zerocap arithmetic IMG IMG IMG --weights 1 1 -1 [--text T --text-weight W]... [--json]

The seed's run.py flags work too (python -m zerocap --caption_img_path X --cond_text ...).
Errors a user can cause print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from .config import PRESETS, ZeroCapConfig

COMMANDS = ("caption", "arithmetic")

# config field -> extra spellings (the seed's run.py flags first)
CONFIG_FLAGS = {
    "cond_text": ["--cond_text"],
    "beam_size": ["--beam_size"],
    "max_tokens": ["--target_seq_length", "--target-seq-length"],
    "num_iterations": ["--num_iterations"],
    "top_k": ["--top_k"],
    "clip_temperature": ["--clip_loss_temperature", "--clip-loss-temperature"],
    "clip_scale": ["--clip_scale"],
    "ce_scale": ["--ce_scale"],
    "stepsize": [],
    "grad_norm_factor": ["--grad_norm_factor"],
    "fusion_factor": ["--fusion_factor"],
    "repetition_penalty": ["--repetition_penalty"],
    "end_token": ["--end_token"],
    "end_factor": ["--end_factor"],
    "end_factor_from": ["--end_factor_from"],
    "forbidden_factor": ["--forbidden_factor"],
}
HELP = {
    "cond_text": "prompt the caption continues (caption/arithmetic: 'Image of a', knowledge: 'Image of',"
                 " ocr: 'Image of text that says')",
    "beam_size": "beams kept, 1..100 and at most --top-k (default 5)",
    "max_tokens": "tokens generated at most, 1..100 (default 15)",
    "num_iterations": "gradient steps on the LM cache per token, 0..50 (default 5)",
    "top_k": "candidate tokens scored by CLIP per beam, 1..8192 (default 512)",
    "clip_temperature": "softmax temperature over CLIP similarities, (0, 10] (default 0.01)",
    "clip_scale": "weight of the CLIP loss, [0, 100] (default 1)",
    "ce_scale": "weight of the fluency loss, [0, 100] (default 0.2)",
    "stepsize": "step size of the context shift, [0, 10] (default 0.3)",
    "grad_norm_factor": "gradient / norm**factor, [0, 2] (default 0.9; arithmetic 0.95)",
    "fusion_factor": "shifted^f * unshifted^(1-f), [0, 1] (default 0.99; arithmetic 0.95)",
    "repetition_penalty": "on the last 4 tokens, (0, 10], 1 = off (default 1)",
    "end_token": "text whose first LM token ends a beam (default '.')",
    "end_factor": "end-token boost, (0, 10]; higher = shorter (default 1.01; knowledge/ocr 1.04; arithmetic 1.06)",
    "end_factor_from": "first step the end-token boost applies, 0..100 (default 1; the paper says 3)",
    "forbidden_factor": "damping of bare numbers and ( ) , ! : newline, (0, 1000] (default 20)",
}


class UsageError(ValueError):
    pass


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
    for name, aliases in CONFIG_FLAGS.items():
        default = getattr(ZeroCapConfig, name)
        kind = type(default)
        flags = ["--" + name.replace("_", "-")] + [a for a in aliases if a != "--" + name.replace("_", "-")]
        g.add_argument(*flags, dest=name, default=None, metavar=kind.__name__.upper(),
                       type=str if kind is str else _number(kind), help=HELP[name])
    m = p.add_argument_group("models and running")
    m.add_argument("--lm", help="Hugging Face causal-LM directory (default: $ZEROCAP_WEIGHTS/gpt2-medium;"
                                " missing weights are downloaded unless offline)")
    m.add_argument("--clip", help="OpenAI CLIP checkpoint (default: $ZEROCAP_WEIGHTS/clip/ViT-B-32.pt)")
    m.add_argument("--lm_model", "--lm-model", choices=["gpt-2", "gpt-neo"], default=None,
                   help="seed spelling: gpt-2 = weights/gpt2-medium, gpt-neo = weights/gpt-neo-125M"
                        " (fetched on first use, or by script/download-weights --lm gpt-neo-125M)")
    m.add_argument("--clip_checkpoints", "--clip-checkpoints", metavar="DIR",
                   help="seed spelling: folder holding ViT-B-32.pt")
    m.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    m.add_argument("--devices", default=None,
                   help="comma-separated devices, one model replica each, images split among them"
                        " (e.g. cuda:0,cuda:1); 'all' = every visible GPU")
    m.add_argument("--multi_gpu", "--multi-gpu", action="store_true", help="seed spelling of --devices all")
    m.add_argument("--lm-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="LM precision (default float32; CLIP runs as loaded: fp16 on GPU)")
    m.add_argument("--fast", action="store_true",
                   help="the fast form even in fp32 (CLIP prefix keys/values reused, one LM pass per step):"
                        " same algorithm, different rounding; the default on GPU")
    m.add_argument("--batch-size", type=_number(int), default=8,
                   help="images decoded together, 1..64 (default 8)")
    m.add_argument("--seed", type=_number(int), default=0, help="torch seed (default 0)")
    m.add_argument("--json", action="store_true", help="one JSON object per result on stdout (JSONL)")
    m.add_argument("--reset_context_delta", action="store_true", help="seed flag; always on, accepted as a no-op")
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
                     metavar="IMAGE", help="seed spelling of IMAGE")
    _add_common(cap, "caption")
    ari = sub.add_parser("arithmetic", help="caption a weighted sum of images (and texts)",
                         description="e.g. zerocap arithmetic woman.jpg king.jpg man.jpg --weights 1 1 -1")
    ari.add_argument("images", nargs="*", metavar="IMAGE", help="image files")
    ari.add_argument("--arithmetics_imgs", "--images", nargs="+", default=[], metavar="IMAGE",
                     help="image files (seed spelling)")
    ari.add_argument("--weights", "--arithmetics_weights", nargs="+", type=_number(float), default=None,
                     metavar="W", help="one weight per image (default: all 1)")
    ari.add_argument("--text", action="append", default=[], metavar="TEXT", help="a text term (repeatable)")
    ari.add_argument("--text-weight", "--text_weight", action="append", type=_number(float), default=None,
                     metavar="W", help="weight of each --text, in order (default 1)")
    _add_common(ari, "arithmetic")
    return parser


def _route(argv: list[str]) -> list[str]:
    """Accept the seed's run.py style (no subcommand, --run_type) by inserting the subcommand."""
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
            raise UsageError("--devices all / --multi_gpu: no CUDA GPU is visible")
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

    overrides = {name: getattr(args, name) for name in CONFIG_FLAGS}
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
        raise UsageError(f"--batch-size must be between 1 and 64, got {args.batch_size}")
    if args.command == "caption":
        images = list(args.images) + list(args.caption_img_path)
        if not images:
            raise UsageError("give at least one IMAGE to caption")
    else:
        images = list(args.images) + list(args.arithmetics_imgs)
        if not images and not args.text:
            raise UsageError("give the IMAGEs (and/or --text) to combine, with --weights")
    from .target import check_weights, load_image

    pictures = [load_image(im) for im in images]  # fail fast, before loading the models
    if args.command == "arithmetic":
        weights = check_weights(images, args.weights, "image")
        text_weights = check_weights(args.text, args.text_weight, "text") if args.text else []
        if args.text_weight and not args.text:
            raise UsageError("--text-weight given without --text")
    devices = _devices(args)
    lm_path, clip_path = _model_paths(args)

    from .loading import quiet_transformers
    from .parallel import Replicas

    quiet_transformers()

    replicas = Replicas.load(lm_path, clip_path, devices, lm_dtype=args.lm_dtype, exact=False if args.fast else None)
    cfg = replicas.engines[0].check(cfg)
    progress, bar = _progress_bar()
    try:
        if args.command == "caption":
            for result in replicas.caption(pictures, cfg, batch_size=args.batch_size, seed=args.seed,
                                           progress=progress, names=images):
                _print(result, args.json)
        else:
            result = replicas.engines[0].arithmetic(pictures, weights, args.text, text_weights or None,
                                                    config=cfg, seed=args.seed, progress=progress, names=images)
            _print(result, args.json)
    finally:
        if bar is not None:
            bar.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except ValueError as e:  # the user's input: one line, no traceback
        print(f"zerocap: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zerocap: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
