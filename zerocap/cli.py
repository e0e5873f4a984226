"""The `zerocap` command line: parse, then call commands.py.

    zerocap caption IMAGE|FOLDER|PATTERN|URL... [--list FILE] [--out captions.jsonl] [--json] [knobs]
    zerocap knowledge | ocr ...                  (the same, with the paper's presets)
    zerocap arithmetic IMG IMG IMG --weights 1 1 -1 [--text T --text-weight W]... [--json]
    zerocap video CLIP... [--frames N | --every SECONDS] [--out videos.jsonl] [--json]
    zerocap eval captions.jsonl --refs captions_val2014.json [--json] [--per-image FILE]

One subcommand per input mode (modes.py), its arguments from its kind; every knob is a flag
(config.py). The authors' run.py flags work too (python -m zerocap --caption_img_path X
--cond_text ...). A mistake of the user's (zerocap.InputError, or a bad flag) prints one line
and exits with status 2; in a dataset job an input that fails gets an error line, the job goes
on, and the exit status is 1 if any failed. Anything else is a bug and shows its traceback.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

from . import families, forms, methods, modes, request
from .config import FIELD_TYPES, KNOBS
from .errors import InputError, Terminated
from .limits import BATCH_SIZE, EVERY, FRAMES, LIST_BYTES, LIST_NAMES
from .presets import PRESETS, describe_knob

COMMANDS = ("eval", "selfcheck")  # the commands besides one per input mode

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


# the other methods' knobs: their authors' spellings, and the switches of true/false knobs
METHOD_AUTHORS_FLAGS = {  # the pseudo-token knobs' spellings in their video-to-text run.py
    "dummy_tokens": ["--num_dummy_tokens", "--dummy_tokens"],
    "sentence_iterations": ["--sentence_iterations"],
    "sampling_top_k": ["--sampling_top_k"],
    "learning_rate": ["--learning_rate"],
    "lr_schedule": ["--scheduler_type"],
    "weight_decay_scale": ["--weight_decay_scale"],
    "entity_penalty": ["--entity_penalty"],
    "ending_bonus": ["--ending_bonus"],
}
SWITCHES = {  # knob -> (flags that turn it on, flags that turn it off); else --name / --no-name
    "token_wise": (["--token-wise", "--token_wise"], ["--per-sentence"]),
    "randomized_prompt": (["--randomized-prompt", "--randomized_prompt"], ["--no-randomized-prompt"]),
}
VALUE_ALIASES = {"lr_schedule": {"nothing": "constant", "expo": "exponential"}}  # their --scheduler_type values


def _number(kind):
    def parse(text):
        try:
            return kind(text)
        except ValueError:
            name = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {name}") from None
    return parse


def _text(name: str):
    aliases = VALUE_ALIASES.get(name, {})
    return lambda text: aliases.get(text, text)


def _add_common(p: argparse.ArgumentParser, mode: str) -> None:
    g = p.add_argument_group("decoding (defaults: the paper's, per preset)")
    g.add_argument("--method", choices=list(methods.METHODS), default=methods.DEFAULT.name,
                   help="; ".join(f"{m.name}: {m.help}" for m in methods.METHODS.values()))
    g.add_argument("--preset", choices=list(PRESETS), default=None,
                   help=f"the paper's settings for a use (default: this command's, {mode}; zerocap only)")
    others = [m for m in methods.METHODS.values() if m is not methods.ZEROCAP]
    for name in KNOBS:
        kind = FIELD_TYPES[name]
        flag = "--" + name.replace("_", "-")
        flags = [flag] + [a for a in AUTHORS_FLAGS.get(name, []) if a != flag]
        text = "; ".join([f"zerocap: {describe_knob(name)}"] + [f"{m.name}: {methods.describe(m, name)}"
                                                                 for m in others if name in m.knobs]) \
            if any(name in m.knobs for m in others) else describe_knob(name)
        g.add_argument(*flags, dest=name, default=None, metavar=kind.__name__.upper(),
                       type=str if kind is str else _number(kind), help=text)
    seen = set(KNOBS)
    for method in others:  # each other method's own knobs, in a group of their own
        own = [name for name in method.knobs if name not in seen]
        seen.update(own)
        if not own:
            continue
        t = p.add_argument_group(f"method {method.name} (with --method {method.name} only)")
        for name in own:
            spec, kind = method.knobs[name], type(getattr(method.defaults, name))
            flag = "--" + name.replace("_", "-")
            text = methods.describe(method, name)
            if kind is bool:
                on, off = SWITCHES.get(name, ([flag], ["--no-" + name.replace("_", "-")]))
                t.add_argument(*on, dest=name, action="store_const", const=True, default=None, help=text)
                t.add_argument(*off, dest=name, action="store_const", const=False, default=None,
                               help=f"the opposite of {on[0]}")
                continue
            flags = [flag] + [a for a in METHOD_AUTHORS_FLAGS.get(name, []) if a != flag]
            if name in methods.ZEROCAP.ignored:
                text += " (zerocap: accepted, no effect: it is deterministic)"
            t.add_argument(*flags, dest=name, default=None, metavar=kind.__name__.upper(),
                           type=_text(name) if kind is str else _number(kind),
                           choices=list(spec.choices) if spec.choices else None, help=text)
    m = p.add_argument_group("models and running")
    _add_models(m)
    folders = ", ".join(f"{f.flag} = weights/{f.folder}" for f in families.FAMILIES if f.flag)
    m.add_argument("--lm_model", "--lm-model", choices=families.flags(), default=None,
                   help=f"the authors' spelling: {folders} (fetched on first use, or by script/download-weights"
                        " --lm FOLDER)")
    m.add_argument("--clip_checkpoints", "--clip-checkpoints", metavar="DIR",
                   help="the authors' spelling: folder holding ViT-B-32.pt")
    m.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    m.add_argument("--devices", default=None,
                   help="comma-separated devices, one model replica each, images split among them"
                        " (e.g. cuda:0,cuda:1); 'all' = every visible GPU")
    m.add_argument("--multi_gpu", "--multi-gpu", action="store_true", help="the authors' spelling of --devices all")
    m.add_argument("--lm-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="LM precision (default float32; CLIP runs as loaded: fp16 on GPU)")
    m.add_argument("--form", choices=list(forms.FORMS), default=forms.FAST.name,
                   help="; ".join(f"{f.name}: {f.help}" for f in forms.FORMS.values()))
    m.add_argument("--exact", dest="form", action="store_const", const=forms.EXACT.name, default=argparse.SUPPRESS,
                   help="the same as --form exact")
    m.add_argument("--compile", nargs="?", const="default", default=None, choices=["default", "reduce-overhead"],
                   metavar="MODE", help="compile the fast form's decoding step once (torch.compile; MODE default, or"
                                        " reduce-overhead for CUDA graphs on a GPU); the first run compiles (minutes"
                                        " on a CPU), later runs reuse PyTorch's inductor cache")
    m.add_argument("--batch-size", type=_number(int), default=8,
                   help=f"inputs decoded together on each device, {BATCH_SIZE.said} (default 8): one that finishes"
                        " early makes room for the next at once")
    m.add_argument("--json", action="store_true", help="one JSON object per result on stdout (JSONL)")
    a = p.add_argument_group("the authors' flags, accepted so their command lines run")
    a.add_argument("--reset_context_delta", action="store_true", help="no effect: always on")
    m.add_argument("--run_type", choices=["caption", "arithmetics", *VIDEO_TO_TEXT_RUN_TYPES], help=argparse.SUPPRESS)


def _add_models(g) -> None:
    """--lm and --clip: the models, as commands.model_paths finds them."""
    g.add_argument("--lm", help="Hugging Face causal-LM directory: GPT-2, GPT-Neo(X), OPT, Llama, Mistral, Qwen,"
                                " Gemma, Phi-3 ... (default: $ZEROCAP_LM, else the pair $ZEROCAP_WEIGHTS/models.json"
                                " names, else gpt2-medium; missing weights are downloaded unless offline)")
    g.add_argument("--clip", help="OpenAI CLIP checkpoint (.pt), OpenCLIP folder (open_clip_config.json and its"
                                  " weights), OpenCLIP checkpoint with its model's name (NAME@FILE, e.g."
                                  " ViT-B-32@laion2b_s34b_b79k.bin) or Hugging Face CLIP / SigLIP folder (default:"
                                  " $ZEROCAP_CLIP, else as --lm's, else $ZEROCAP_WEIGHTS/clip/ViT-B-32.pt)")


def _add_dataset(p: argparse.ArgumentParser, what: str) -> None:
    d = p.add_argument_group("datasets")
    d.add_argument("--list", metavar="FILE", help=f"also the {what}s named in FILE ('-': standard input): one path or"
                                                  " URL per line, taken as written (never a pattern); empty lines"
                                                  f" and lines starting with # are skipped; at most {LIST_NAMES.said}"
                                                  f" and {LIST_BYTES.said}")
    d.add_argument("-0", "--null", action="store_true",
                   help="--list names are separated by NUL characters (find -print0), with no other rule")
    d.add_argument("--out", metavar="FILE.jsonl",
                   help="write one JSON line per input as soon as it is done, with the settings that made it; a"
                        " rerun with the same settings skips the inputs already in FILE (however spelled) and"
                        " removes its own last line cut short by a crash (resume). FILE must be new, empty, or a"
                        " zerocap results file; folders and patterns never find it")
    d.add_argument("--retry-failed", action="store_true", help="with --out: run again the inputs that have"
                                                               " an error line in FILE")
    d.add_argument("--mix-settings", action="store_true",
                   help="with --out: add results made with other settings (mode, form, knobs, models) than"
                        " FILE's; without it such a run is refused, naming the differences (every line records"
                        " its settings; inputs already in FILE are still skipped)")
    d.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run on Ray Data: a local Ray, or the cluster at ADDRESS (e.g. auto, ray://head:10001);"
                        " needs pip install 'zerocap[ray]'")
    d.add_argument("--actors", type=_number(int), default=None, metavar="N",
                   help="with --ray: engines in the actor pool (default: one per GPU of the cluster, else 1)")


# ---- each kind of input's arguments (modes.py); a new mode of a known kind needs nothing here ----
def _image_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, folders, patterns or URLs (anywhere among"
                                                               " the flags)")
    p.add_argument("--caption_img_path", "--caption-img-path", "--data_path", dest="more_inputs", action="append",
                   default=[], metavar="IMAGE", help="the authors' spellings of INPUT")
    _add_dataset(p, "image")


def _video_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="video files, folders, patterns or URLs (anywhere among"
                                                               " the flags)")
    p.add_argument("--data_path", dest="more_inputs", action="append", default=[], metavar="VIDEO",
                   help="their video-to-text run.py's spelling of INPUT")
    p.add_argument("--frames", type=_number(int), default=None, metavar="N",
                   help=f"frames spread evenly over the clip, {FRAMES.said} (default: zerocap 8; pseudo-tokens every"
                        " fps // 3-th frame, as their run.py, at most 64)")
    p.add_argument("--every", type=_number(float), default=None, metavar="SECONDS",
                   help=f"instead: a frame every SECONDS, {EVERY.said} ({FRAMES.said} frames)")
    _add_dataset(p, "video")


def _terms_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", metavar="IMAGE", help="image files")
    p.add_argument("--arithmetics_imgs", "--images", dest="more_inputs", action="extend", nargs="+", default=[],
                   metavar="IMAGE", help="image files (the authors' spelling)")
    p.add_argument("--weights", "--arithmetics_weights", nargs="+", type=_number(float), default=None,
                   metavar="W", help="one weight per image (default: all 1)")
    p.add_argument("--text", action="append", default=[], metavar="TEXT", help="a text term (repeatable)")
    p.add_argument("--text-weight", "--text_weight", action="append", type=_number(float), default=None,
                   metavar="W", help="weight of each --text, in order (default 1)")


KIND_ARGUMENTS = {"image": _image_arguments, "video": _video_arguments, "terms": _terms_arguments}


class Parser(argparse.ArgumentParser):
    """argparse, whose mistakes are the user's like any other: one line (InputError: main()
    prints it and exits 2), not argparse's usage block."""

    def error(self, message: str):
        raise InputError(f"{message} (`{self.prog} --help` lists what is allowed)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="zerocap",
        description="Zero-shot image captioning and visual-semantic arithmetic (ZeroCap, CVPR 2022).",
    )
    names = list(modes.MODES) + list(COMMANDS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(names) + "}")
    for mode in modes.MODES.values():
        what = "one result per input; folders, patterns and lists make a dataset job" if mode.kind.one_per_input \
            else "one result per request"
        p = sub.add_parser(mode.name, help=mode.help, description=f"{mode.name}: {mode.help} ({what}).")
        KIND_ARGUMENTS[mode.kind.name](p)
        _add_common(p, mode.name)
    sc = sub.add_parser("selfcheck", help="decode a probe caption compiled and eagerly: device, path, time, agreement",
                        description="Check this machine's decoding: a probe caption decoded with the compiled step"
                                    " (when compiled: --compile, or on a GPU by default) and eagerly; prints the"
                                    " device, the path that would serve, the time per caption of each and whether"
                                    " their beams agree. Exit status 1 when they differ. For bug reports.")
    sm = sc.add_argument_group("models and running")
    _add_models(sm)
    sc.set_defaults(lm_model=None, clip_checkpoints=None)  # the authors' spellings, not offered here
    sm.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    sm.add_argument("--compile", nargs="?", const="default", default="auto",
                    choices=["auto", "off", "default", "reduce-overhead"], metavar="MODE",
                    help="auto (default: reduce-overhead on a GPU, off on a CPU, as the container), off, default,"
                         " reduce-overhead")
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
    if argv and (argv[0] in list(modes.MODES) + list(COMMANDS) or argv[0] in ("-h", "--help")):
        return argv
    run_type = "caption"
    for i, a in enumerate(argv):
        if a == "--run_type" and i + 1 < len(argv):
            run_type = argv[i + 1]
        elif a.startswith("--run_type="):
            run_type = a.split("=", 1)[1]
    if run_type in VIDEO_TO_TEXT_RUN_TYPES:  # their video-to-text run.py: the pseudo-token method
        method = [] if any(a == "--method" or a.startswith("--method=") for a in argv) else ["--method",
                                                                                              methods.PSEUDO_TOKENS.name]
        return [VIDEO_TO_TEXT_RUN_TYPES[run_type]] + method + argv
    return ["arithmetic" if run_type == "arithmetics" else run_type] + argv


VIDEO_TO_TEXT_RUN_TYPES = {"caption_images": "caption", "caption_videos": "video"}


def parse(argv: list[str]) -> argparse.Namespace:
    """The arguments, with inputs taken anywhere among the flags (`caption a.png --list l.txt b.png`):
    argparse gives a positional list only its first run of words, so later ones are added here."""
    parser = build_parser()
    argv = _route(argv)
    args, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(args, "inputs") or any(a.startswith("-") for a in extra)):
        parser.parse_args(argv)  # argparse's own message for what is not ours (Parser.error: one line)
    if extra:
        args.inputs = list(args.inputs) + extra
    return args


# ---- the flags as typed values, once (request.py); nothing below this file sees a flag -------------
def typed(args: argparse.Namespace) -> "request.Decode | request.Eval | request.SelfCheck":
    """The command the flags ask for, checked (InputError in words) before anything heavy loads."""
    models = request.Models(lm=getattr(args, "lm", None), clip=_clip_path(args),
                            lm_family_flag=getattr(args, "lm_model", None))
    if args.command == "eval":
        return request.Eval(args.captions, args.refs, args.field, args.strip_prompt, args.tokenizer, tuple(args.skip),
                            args.per_image, args.image_root, args.match, args.json, args.clip, args.device)
    if args.command == "selfcheck":
        return request.SelfCheck(models, args.device, args.compile)
    mode, method, preset = modes.get(args.command), methods.get(args.method), args.preset
    if method.presets and preset in modes.MODES and preset != mode.name and modes.get(preset).kind is mode.kind:
        mode, preset = modes.get(preset), None  # `caption X --preset ocr` is `ocr X`: recorded and resumed as ocr
    knobs = dict.fromkeys(k for m in methods.METHODS.values() for k in m.knobs)  # every method's, as flags
    cfg = method.config(mode.name, preset, **{name: getattr(args, name, None) for name in knobs})
    if not BATCH_SIZE.allows(args.batch_size):
        raise InputError(f"--batch-size must be {BATCH_SIZE.said}, got {args.batch_size}")
    _check_lm_family(args)
    runtime = request.Runtime(args.device, _devices(args), _form(args, method), args.compile, args.lm_dtype,
                              args.batch_size)
    inputs = tuple(args.inputs) + tuple(args.more_inputs)
    if not mode.kind.one_per_input:  # arithmetic: one request of terms
        return request.Decode(mode, method, cfg, models, runtime, request.Job(json=args.json),
                              request.Terms(inputs, _tuple(args.weights), tuple(args.text), _tuple(args.text_weight)))
    options = {name: getattr(args, name) for name in mode.kind.job_options}
    mode.kind.check_options(options)
    if args.retry_failed and not args.out:
        raise InputError("--retry-failed needs --out FILE (the file whose error lines to retry)")
    if args.mix_settings and not args.out:
        raise InputError("--mix-settings needs --out FILE (the results file to add to)")
    if args.actors is not None and (args.ray is None or args.actors < 1):
        raise InputError("--actors needs --ray and a number from 1 up")
    job = request.Job(inputs, args.list, args.null, args.out, args.retry_failed, args.mix_settings, args.json,
                      options, args.ray, args.actors)
    return request.Decode(mode, method, cfg, models, runtime, job)


def _tuple(values):
    return None if values is None else tuple(values)


def _clip_path(args) -> str | None:
    if getattr(args, "clip", None):
        return args.clip
    checkpoints = getattr(args, "clip_checkpoints", None)
    return os.path.join(checkpoints, "ViT-B-32.pt") if checkpoints else None


def _devices(args) -> tuple[str, ...] | None:
    spec = "all" if args.multi_gpu and not args.devices else args.devices
    return tuple(d.strip() for d in spec.split(",") if d.strip()) if spec else None


def _form(args, method) -> forms.Form:
    chosen = forms.get(args.form)
    if args.compile and chosen.exact_lm:
        raise InputError("--compile runs the fast form; the exact form keeps the authors' operation order, eagerly")
    if args.compile and not method.compiles:
        raise InputError(f"--compile compiles ZeroCap's decoding step; method {method.name} runs eagerly")
    if args.lm_dtype != "float32" and method.lm_float32:
        raise InputError(f"method {method.name} runs the LM in float32 (its prefix is learned by gradient"
                         " steps, as theirs); leave out --lm-dtype")
    return chosen


def _check_lm_family(args) -> None:
    """--lm_model (the authors' flag) against an --lm folder (both methods run on every family)."""
    if not args.lm_model:
        return
    if args.lm:  # --lm names the folder; the family the flag names must be its
        wanted = families.by_flag(args.lm_model)
        found = families.model_type(args.lm)
        if found is not None and found not in wanted.model_types:
            raise InputError(f"--lm_model {args.lm_model} names a {wanted.name} LM, but --lm {args.lm} holds a"
                             f" {found!r} model: leave out one of them")


def run(argv: list[str] | None = None) -> int:
    asked = typed(parse(list(sys.argv[1:] if argv is None else argv)))
    from . import commands  # the one deferred import: torch and the models' code load only now

    return commands.run(asked)


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is printed escaped, not fatal
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass
    terminate = _on_sigterm()
    try:
        return run(argv)
    except InputError as e:  # the user's mistake: one line, no traceback
        print(f"zerocap: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print("zerocap: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("zerocap: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout's reader left (| head): stop quietly, as a shell tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        if terminate is not None:
            signal.signal(signal.SIGTERM, terminate)


def _on_sigterm():
    """SIGTERM raises Terminated in the main thread (cleanup as after Ctrl-C); the handler it
    replaced, to put back, or None where none can be set (not the main thread)."""
    def handler(signum, frame):
        raise Terminated()

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:
        return None


def entry() -> None:
    """The `zerocap` command (and python -m zerocap): main(), then exit with its status.

    After a Ctrl-C, CPython exits by SIGINT whenever the KeyboardInterrupt passed through code
    that C evaluated (some imports do), even though main() caught it; leave with 130 directly.
    """
    code = main()
    if code in (130, 143):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
