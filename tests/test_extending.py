"""Extending zerocap (README, "Extending"): a new input mode, LM family, scorer, form or method is
one entry or one class, and every interface takes it with no edit elsewhere."""
import asyncio
import json
import os
import sys

import pytest
import torch

import toy_method
from numeric import assert_same_beams
from reference_decoder import ReferenceDecoder
from zerocap import ZeroCap, ZeroCapConfig, families, modes
from zerocap.cli import main
from zerocap.scorer import TextScorer

FAST = ["--top-k", "16", "--beam-size", "2", "--max-tokens", "2", "--device", "cpu"]
SMALL = dict(top_k=24, beam_size=2, max_tokens=3)


@pytest.fixture
def sketch_mode():
    """A toy mode: images, captioned as sketches."""
    mode = modes.register(modes.Mode("sketch", "describe it as a drawing", {"cond_text": "A sketch of",
                                                                            "end_factor": 1.2}, modes.IMAGE))
    yield mode
    modes.unregister("sketch")


def test_a_new_mode_is_a_command_and_a_container_mode(sketch_mode, capsys, images, lm_dir, clip_file, weights_root,
                                                      monkeypatch):
    code = main(["sketch", images[0], "--lm", lm_dir, "--clip", clip_file, *FAST, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    record = json.loads(out.out)
    assert record["cond_text"] == "A sketch of" and record["best_mixed"].startswith("A sketch of")
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = capsys.readouterr().out
    assert "sketch" in listing and "describe it as a drawing" in listing  # among the commands
    with pytest.raises(SystemExit):
        main(["sketch", "--help"])
    assert "describe it as a drawing" in capsys.readouterr().out  # its own command, with its help

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import predict
    from test_predictor import sent

    monkeypatch.setenv("ZEROCAP_WEIGHTS", weights_root)
    monkeypatch.setenv("ZEROCAP_OFFLINE", "1")
    monkeypatch.setenv("ZEROCAP_DEVICE", "cpu")
    p = predict.Predictor()
    p.setup()
    try:
        out = asyncio.run(p.run(mode="sketch", image=sent(images[0]), beam_size=2, max_tokens=2, top_k=16))
        assert out.mode == "sketch" and out.cond_text == "A sketch of" and out.caption.startswith("A sketch of")
        with pytest.raises(Exception, match="mode sketch takes `image`, not `texts`"):
            asyncio.run(p.run(mode="sketch", image=sent(images[0]), texts=["x"], beam_size=2, max_tokens=2, top_k=16))
    finally:
        p.scheduler.close()


@pytest.fixture
def opt_family():
    """A toy family entry: OPT, through the generic forward."""
    family = families.Family("opt", ("opt",), bos_prefix=True, flag="opt", folder="opt-125m", repo="facebook/opt-125m")
    families.FAMILIES.insert(0, family)  # ahead of the table's own OPT entry
    yield family
    families.FAMILIES.remove(family)


def write_tiny_opt(path):
    from transformers import GPT2Tokenizer, OPTConfig, OPTForCausalLM

    from tiny_models import FIXTURES

    torch.manual_seed(5)
    cfg = OPTConfig(vocab_size=50257, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
                    max_position_embeddings=128, word_embed_proj_dim=64, init_std=0.2, bos_token_id=50256,
                    eos_token_id=50256, pad_token_id=1)
    OPTForCausalLM(cfg).save_pretrained(path)
    GPT2Tokenizer(os.path.join(FIXTURES, "vocab.json"), os.path.join(FIXTURES, "merges.txt")).save_pretrained(path)
    return path


def test_a_new_lm_family_is_one_entry(opt_family, tmp_path, clip_file, images, capsys, monkeypatch, weights_root):
    from zerocap import weights
    from zerocap.cli import build_parser

    engine = ZeroCap.load(write_tiny_opt(str(tmp_path / "opt")), clip_file, device="cpu")
    assert engine.family is opt_family and engine.prompt_prefix == engine.tokenizer.bos_token
    cfg = ZeroCapConfig(**SMALL)
    result = engine.caption([images[0]], config=cfg)[0]
    ref = ReferenceDecoder(engine.lm, engine.tokenizer, engine.scorer.clip, engine.forbidden.nonzero()[:, 0].tolist(),
                           cfg).run(engine.targets.image_target(images[0])[None], cfg.cond_text)
    assert [b.text for b in result.beams] == ref[0]  # the reference's beams, through the generic forward
    # the command line's --lm_model and the weights folder know it
    assert build_parser().parse_args(["caption", "x.png", "--lm_model", "opt"]).lm_model == "opt"
    assert weights.lms()["opt-125m"] == "facebook/opt-125m"
    monkeypatch.setenv("ZEROCAP_WEIGHTS", weights_root)
    monkeypatch.setenv("ZEROCAP_OFFLINE", "1")
    assert main(["caption", images[0], "--lm_model", "opt", *FAST]) == 2
    assert "opt-125m" in capsys.readouterr().err  # its folder, named in the offline message


class StringCLIP(TextScorer):
    """A toy scorer that knows only texts and images: the tiny CLIP through clip.tokenize, with
    candidates scored from their decoded texts (the authors' way; no CLIP-specific shortcut)."""

    def __init__(self, clip_model, preprocess):
        import clip

        self.model, self.preprocess, self.tokenize = clip_model, preprocess, clip.tokenize

    def prepared_features(self, prepared):
        return self.model.encode_image(torch.stack(prepared))

    def prepare_image(self, image):
        return self.preprocess(image)

    def text_features(self, texts):
        return self.model.encode_text(self.tokenize(texts, truncate=True))


def test_a_new_scorer_is_one_class(engine, images):
    scorer = StringCLIP(engine.scorer.clip, engine.scorer.preprocess)
    zc = ZeroCap(engine.lm, engine.tokenizer, scorer, device="cpu")
    cfg = ZeroCapConfig(**SMALL)
    result = zc.caption([images[1]], config=cfg)[0]
    ref = ReferenceDecoder(engine.lm, engine.tokenizer, engine.scorer.clip, engine.forbidden.nonzero()[:, 0].tolist(),
                           cfg).run(zc.targets.image_target(images[1])[None], cfg.cond_text)
    assert_same_beams(result, ref)


def load_string_clip(path, device):
    """The toy kind's loader: the OpenAI checkpoint in its folder, as a StringCLIP."""
    import clip

    model, preprocess = clip.load(os.path.join(path, "string-clip.pt"), device=device, jit=False)
    return StringCLIP(model, preprocess)


@pytest.fixture
def string_clip_kind():
    """A toy CLIP kind: a folder holding string-clip.pt, scored through its texts (StringCLIP)."""
    from zerocap import clip_kinds

    kind = clip_kinds.register(clip_kinds.ClipKind("string-clip", "a folder holding string-clip.pt",
                                         lambda path: os.path.isfile(os.path.join(path, "string-clip.pt")),
                                         load_string_clip, "whole"), before="hf")
    yield kind
    clip_kinds.unregister("string-clip")


def test_a_new_clip_kind_is_one_entry(string_clip_kind, lm_dir, clip_file, tmp_path, images, capsys):
    """Its registry entry and its scorer class: ZeroCap.load and --clip take its folder (a folder
    the built-in kinds would read as an OpenCLIP one, and refuse), and it steers as the reference."""
    import shutil

    from zerocap import clip_kinds

    folder = tmp_path / "toy-clip"
    folder.mkdir()
    shutil.copy(clip_file, folder / "string-clip.pt")
    assert clip_kinds.kind_of(str(folder)) is string_clip_kind
    zc = ZeroCap.load(lm_dir, str(folder), device="cpu")
    assert type(zc.scorer) is StringCLIP
    cfg = ZeroCapConfig(**SMALL)
    result = zc.caption([images[1]], config=cfg)[0]
    ref = ReferenceDecoder(zc.lm, zc.tokenizer, zc.scorer.model, zc.forbidden.nonzero()[:, 0].tolist(),
                           cfg).run(zc.targets.image_target(images[1])[None], cfg.cond_text)
    assert_same_beams(result, ref)
    code = main(["caption", images[1], "--lm", lm_dir, "--clip", str(folder), *FAST, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out)["best_mixed"].startswith("Image of a")
    (tmp_path / "empty").mkdir()  # a folder no kind takes: the refusal names every kind, the new one too
    assert main(["caption", images[1], "--lm", lm_dir, "--clip", str(tmp_path / "empty"), *FAST]) == 2
    assert "a CLIP is given as one of:" in (err := capsys.readouterr().err) and "a folder holding string-clip.pt" in err


def test_a_new_form_is_one_object(engine, images):
    """A toy form: the fast form's LM adapter (KV cache, one-token passes) with CLIP's own
    encode_text on full rows, two images at a time. The engine takes it as it is, and it gives
    the reference decoder's beams, since a form changes only the operation order."""
    from zerocap.forms import Form
    from zerocap.lm import ExactLM, State

    toy = Form("cached-lm-full-clip", "toy: the KV cache with CLIP's full rows", exact_lm=False, exact_guide=True,
               max_images=2)
    zc = ZeroCap(engine.lm, engine.tokenizer, engine.scorer, device="cpu", form=toy)
    cfg = ZeroCapConfig(**SMALL)
    results = zc.caption(images[:3], config=cfg)
    assert zc.form is toy and len(results) == 3
    assert isinstance(zc.lm_adapter.new_state(), State)  # what batch.py calls, as both built-in forms give it
    assert isinstance(ExactLM(engine.lm).new_state(), State)
    for image, result in zip(images[:3], results):
        ref = ReferenceDecoder(engine.lm, engine.tokenizer, engine.scorer.clip, engine.forbidden.nonzero()[:, 0].tolist(),
                               cfg).run(zc.targets.image_target(image)[None], cfg.cond_text)
        assert_same_beams(result, ref)


# ---- a method: the plain LM's greedy continuation (no CLIP), as one Method entry (tests/toy_method.py) ----
def cog_inputs():
    """script/cog-inputs as a module."""
    import importlib.machinery
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "script", "cog-inputs")
    loader = importlib.machinery.SourceFileLoader("cog_inputs", path)
    script = importlib.util.module_from_spec(importlib.util.spec_from_loader("cog_inputs", loader))
    loader.exec_module(script)
    return script


@pytest.fixture
def greedy():
    from zerocap import methods

    method = methods.register(toy_method.method())
    yield method
    methods.unregister("greedy")


def test_a_new_method_is_one_entry(greedy, capsys, images, lm_dir, clip_file, engine):
    """A toy method: `--method greedy` with its own knob as a flag, the engine's entry points, and the
    scheduler serving it in a lane of its own beside a ZeroCap caption."""
    from zerocap.modes import Target
    from zerocap.scheduler import Scheduler

    code = main(["caption", images[0], "--method", "greedy", "--greedy-bonus", "0.5", "--max-tokens", "2",
                 "--lm", lm_dir, "--clip", clip_file, "--device", "cpu", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    record = json.loads(out.out)
    assert record["method"] == "greedy" and record["greedy_bonus"] == 0.5 and record["caption"].startswith("Image of a")
    assert main(["caption", images[0], "--method", "greedy", "--num-iterations", "2", "--lm", lm_dir, "--clip",
                 clip_file]) == 2
    assert "num_iterations is a knob of method zerocap, not of greedy" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["caption", "--help"])
    assert "--greedy-bonus" in capsys.readouterr().out

    cfg = greedy.config("caption", max_tokens=2)
    alone = engine.caption([images[1]], config=cfg)[0]
    scheduler = Scheduler(engine, max_batch=4)
    try:
        target = Target(engine.targets.image_target(images[1]), "image")
        tickets = [scheduler.submit(engine.request(target, cfg)),
                   scheduler.submit(engine.request(target, engine.config("caption", **SMALL)))]
        results = [t.result(timeout=120) for t in tickets]
        assert {type(lane.batch).__name__ for lane in scheduler.lanes} <= {"GreedyBatch", "Batch"}
    finally:
        scheduler.close()
    assert results[0].caption == alone.caption and results[1].best_mixed.startswith("Image of a")


def test_a_new_methods_inputs_and_output_fields_are_generated_for_the_container(greedy, engine, images):
    """With the toy method registered, script/cog-inputs writes it among `method`'s choices, its
    served knob as an input and its own output field into Output: predict.py is regenerated, never
    edited by hand, for a new method; its output is the common fields and its own."""
    from zerocap import methods, outputs

    script = cog_inputs()
    inputs, output = script.inputs(), script.output()
    assert '"zerocap", "pseudo-tokens", "magic", "greedy"]' in inputs and "toy: the plain LM's greedy continuation" in inputs
    assert "        greedy_bonus: float = Input(default=0.0, ge=0.0, le=1.0, description=\"greedy: toy knob:" in inputs
    assert "    greedy_bonus: float\n" in output and "    sentences: list[str]\n" in output
    result = engine.caption([images[0]], method="greedy", greedy_bonus=0.5, max_tokens=2)[0]
    fields = outputs.fields(methods.METHODS.values())
    common = dict(method="greedy", mode="caption", target="image", cond_text="Image of a", tokens=0, seconds=0.0,
                  frame_times=[], frames=0)
    values = outputs.values(greedy, fields, result, common)
    assert set(values) == set(fields) and values["greedy_bonus"] == 0.5 and values["seed"] == -1
    assert values["caption"] == result.caption and values["beams"] == [] and values["best_fluency"] == ""


def test_every_method_is_a_peer_behind_the_declared_interfaces(greedy, engine, images):
    """Each method -- ZeroCap's, the pseudo-tokens', the toy -- is a decoder the engine makes once
    (engine.decoder), behind decoding.py's protocols: its requests and their batches too."""
    from zerocap import methods
    from zerocap.decoding import Batch, Decoder, MethodRequest
    from zerocap.modes import Target

    target = Target(engine.targets.image_target(images[0]), "image")
    for method in methods.METHODS.values():
        decoder = engine.decoder(method)
        assert isinstance(decoder, Decoder) and engine.decoder(method.name) is decoder, method.name
        cfg = engine.check(method.config("caption", max_tokens=2))
        request = engine.request(target, cfg)
        assert isinstance(request, MethodRequest) and isinstance(request.new_batch(engine, 1), Batch), method.name


def test_a_new_method_is_served_by_the_container(greedy, weights_root, images, engine, tmp_path):
    """The toy method through the real container: predict.py and the schema `cog build` would write
    are generated with it registered (script/cog-inputs, cog's static schema generator), and the
    real coglet server, whose worker registers it at start-up (tests/hooks/sitecustomize.py), serves
    it beside a ZeroCap caption, each as alone; its own output field is in the schema and the
    answer; one in flight is cancelled; a knob of another method fails that prediction in words;
    the server stays READY."""
    import shutil
    import subprocess
    import threading
    import time

    from test_cog_schema import TOOL
    from test_cog_server import ROOT, SMALL as SERVED_SMALL, Server, burst, data_uri, http

    root = tmp_path / "image"
    (root / ".cog").mkdir(parents=True)
    (root / "predict.py").write_text(cog_inputs().rewritten(open(os.path.join(ROOT, "predict.py")).read()))
    shutil.copy(os.path.join(ROOT, "cog.yaml"), root / "cog.yaml")
    made = subprocess.run([TOOL, str(root)], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    schema = json.loads(made.stdout)
    (root / ".cog" / "openapi_schema.json").write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
    components = schema["components"]["schemas"]
    assert "greedy" in components["method"]["enum"]
    assert {"greedy_bonus", "step_pause"} <= set(components["Input"]["properties"])
    assert components["Output"]["properties"]["greedy_bonus"]["type"] == "number"

    hooks = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hooks")
    server = Server({"ZEROCAP_WEIGHTS": weights_root, "ZEROCAP_OFFLINE": "1", "ZEROCAP_TEST_TOY_METHOD": "1",
                     "PYTHONPATH": os.pathsep.join(filter(None, [hooks, os.environ.get("PYTHONPATH")]))},
                    cwd=str(root))
    try:
        assert server.wait()["status"] == "READY", server.log_tail()
        uri = data_uri(images[1])
        toy = {"method": "greedy", "image": uri, "greedy_bonus": 0.5, "max_tokens": 2}
        answers = burst(server, [{"input": toy}, {"input": {"image": uri, **SERVED_SMALL}}])
        assert [o["status"] for _, o in answers] == ["succeeded"] * 2, ([o.get("error") for _, o in answers],
                                                                      server.log_tail())
        out = answers[0][1]["output"]
        alone = engine.caption([images[1]], method="greedy", greedy_bonus=0.5, max_tokens=2)[0]
        assert out["method"] == "greedy" and out["greedy_bonus"] == 0.5 and out["caption"] == alone.caption
        assert out["beams"] == [] and out["sentences"] == [] and out["tokens"] == 2  # the others' fields: empty
        assert "token 2/2: " + alone.caption in answers[0][1]["logs"]  # its snapshot, as the log line
        assert answers[1][1]["output"]["method"] == "zerocap" and answers[1][1]["output"]["greedy_bonus"] == 0.0

        slow = {"input": {**toy, "max_tokens": 10, "step_pause": 1.0}}  # ~10 s unless cancelled
        got = []
        sender = threading.Thread(target=lambda: got.append(http("PUT", f"{server.url}/predictions/toy1", slow,
                                                                    timeout=120)))
        sender.start()
        time.sleep(2.0)  # cancelled while it decodes: a cancel that lands while coglet still reads its inputs
        deadline = time.monotonic() + 60  # fails it there ("Input validation error"); then once the server knows it
        while (code := http("POST", f"{server.url}/predictions/toy1/cancel", timeout=10)[0]) == 404:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert code == 200
        sender.join()
        assert got[0][1]["status"] == "canceled", got

        bad = server.predict(**toy, num_iterations=2)
        assert bad["status"] == "failed" and "num_iterations is a knob of method zerocap, not of greedy" in bad["error"]
        assert server.wait(until=("READY",), timeout=20)["status"] == "READY"
    finally:
        server.stop()
