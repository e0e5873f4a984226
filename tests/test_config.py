"""The knob table (zerocap/config.py): validation, presets, and the command line reading it."""
import math

import pytest

from zerocap import MODES, PRESETS, InputError, ZeroCapConfig, preset
from zerocap.config import DEFAULTS, FIELD_TYPES, KNOBS
from zerocap.presets import describe_knob


def test_presets_change_only_what_the_authors_readme_changes():
    assert tuple(MODES) == tuple(PRESETS) == ("caption", "knowledge", "ocr", "arithmetic", "video")
    assert preset("caption") == DEFAULTS
    assert preset("ocr", end_factor=None).end_factor == 1.04  # None keeps the preset's value
    assert preset("ocr", end_factor=1.2).end_factor == 1.2
    for mode, changes in PRESETS.items():
        got = preset(mode)
        assert {k for k in KNOBS if getattr(got, k) != getattr(DEFAULTS, k)} == set(changes), mode


@pytest.mark.parametrize("field,value,message", [
    ("beam_size", 0, "beam_size must be an integer from 1 to 100, got 0"),
    ("beam_size", 2.5, "beam_size must be an integer, got 2.5"),
    ("beam_size", True, "beam_size must be an integer, got True"),
    ("max_tokens", 101, "max_tokens must be an integer from 1 to 100, got 101"),
    ("num_iterations", -1, "num_iterations must be an integer from 0 to 50, got -1"),
    ("top_k", 0, "top_k must be an integer from 1 to 8192, got 0"),
    ("end_factor_from", -1, "end_factor_from must be an integer from 0 to 100, got -1"),
    ("clip_temperature", 0.0, r"clip_temperature must be a number in \(0, 10\], got 0.0"),
    ("fusion_factor", 1.5, r"fusion_factor must be a number in \[0, 1\], got 1.5"),
    ("fusion_factor", math.nan, "fusion_factor must be a finite number, got nan"),
    ("end_factor", math.inf, "end_factor must be a finite number, got inf"),
    ("end_factor", -1.0, r"end_factor must be a number in \(0, 10\], got -1.0"),
    ("stepsize", "big", "stepsize must be a number, got 'big'"),
    ("forbidden_factor", 0, r"forbidden_factor must be a number in \(0, 1000\], got 0"),
    ("repetition_penalty", 11.0, r"repetition_penalty must be a number in \(0, 10\], got 11.0"),
    ("start_end_penalty", 0.0, r"start_end_penalty must be a number in \(0, 10\], got 0.0"),
    ("end_token", "", "end_token must be a non-empty string"),
    ("cond_text", 3, "cond_text must be a string, got 3"),
])
def test_bad_values_say_what_is_allowed(field, value, message):
    with pytest.raises(InputError, match=message):
        ZeroCapConfig().replace(**{field: value}).validate()


def test_every_range_bound_is_accepted_and_the_defaults_are_inside():
    for name, spec in KNOBS.items():
        if spec.range is None:
            continue
        kind = FIELD_TYPES[name]
        assert getattr(DEFAULTS, name) in spec.range, name
        edges = [spec.range.hi] + ([] if spec.range.lo_open else [spec.range.lo])
        for value in edges:  # beam_size 1 and top_k 8192 leave every edge of the two free
            ZeroCapConfig(beam_size=1, top_k=8192).replace(**{name: kind(value)}).validate()
        if spec.container is not None:  # a Cog request's range lies inside the decoder's
            assert spec.container.lo in spec.range and spec.container.hi in spec.range, name


def test_beam_size_cannot_exceed_top_k():
    with pytest.raises(InputError, match=r"beam_size \(9\) must not exceed top_k \(8\)"):
        ZeroCapConfig(beam_size=9, top_k=8).validate()


def test_unknown_preset():
    with pytest.raises(InputError, match="unknown preset 'poem'; choose one of: caption, knowledge, ocr, arithmetic"):
        preset("poem")


def test_help_lines_come_from_the_table():
    assert describe_knob("end_factor") == ("end-token boost from end_factor_from on: higher = shorter captions, "
                                           "a number in (0, 10], default 1.01; knowledge 1.04; ocr 1.04; "
                                           "arithmetic 1.06")
    assert describe_knob("beam_size").endswith("an integer from 1 to 100, default 5")


def test_the_command_lines_flags_are_the_tables(capsys):
    from zerocap.cli import main

    with pytest.raises(SystemExit):
        main(["caption", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in KNOBS:
        assert "--" + name.replace("_", "-") in text, name
        assert " ".join(describe_knob(name).split()) in text, name


def cog_inputs() -> dict:
    """predict.py's Input declarations (what `cog build` turns into the schema)."""
    import inspect
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import predict

    params = inspect.signature(predict.Predictor.run.__wrapped__).parameters
    return {n: p.default for n, p in params.items() if n != "self"}


def test_every_cog_input_restates_the_tables_word_for_word():
    """cog's build reads predict.py statically, so its Inputs restate the knob tables (every
    method's), the modes and the limits as literals: each description is the one the tables give,
    word for word."""
    from zerocap import methods
    from zerocap.limits import FRAMES
    from zerocap.modes import cog_descriptions
    from zerocap.pseudo_tokens import SCHEDULES

    inputs = cog_inputs()
    assert inputs["mode"].choices == list(MODES) and inputs["mode"].default == "caption"
    assert inputs["method"].choices == list(methods.METHODS) and inputs["method"].default == "zerocap"
    assert inputs["method"].description == methods.method_description()
    others = cog_descriptions()
    others["frames"] += ": " + methods.frames_description()  # each method's own sampling, from the registry
    knobs = set(inputs) - set(others) - {"method"}
    assert knobs == set(methods.knob_inputs())  # no knob left out, none invented
    for name, description in others.items():
        assert inputs[name].description == description, name
    assert (inputs["frames"].ge, inputs["frames"].le) == (FRAMES.lo, FRAMES.hi)  # a Cog request's as the CLI's
    assert inputs["lr_schedule"].choices == list(SCHEDULES)
    for name in methods.knob_inputs():
        owner, *others_too = methods.owners(name)
        info, spec = inputs[name], owner.knobs[name]
        # a knob some mode changes, or whose default differs by method, defaults to "empty = ..."
        assert info.default == (None if methods.optional(name) else getattr(owner.defaults, name)), name
        if spec.container is not None:
            assert (info.ge, info.le) == (spec.container.lo, spec.container.hi), name
        for other in others_too:  # one input serves them all: the same served range
            assert other.knobs[name].container == spec.container, (name, other.name)
        assert info.max_length == spec.max_length, name
        assert info.description == methods.cog_description(name), name


def readme() -> str:
    import os

    return open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()


def readme_table(heading: str) -> list[list[str]]:
    """The rows of the first table after `heading` (its header and rule left out)."""
    lines = readme().split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [[c.strip() for c in line.split("|")[1:-1]] for line in lines[start + 2:end]]


def readme_inputs_table() -> dict:
    return {name.strip("`"): (kind, default, allowed, does) for name, kind, default, allowed, does
            in readme_table("### Inputs") if name.startswith("`")}


def test_the_readmes_inputs_table_restates_the_tables():
    from zerocap.presets import preset_dependent
    from zerocap.limits import CLIP_PROMPT_TOKENS, FRAMES, PIXELS, TERMS, WEIGHT

    from zerocap import methods

    def shown(m, name):  # one method's default, as the table says it
        d = getattr(m.defaults, name)
        if m is methods.ZEROCAP:
            return "the mode's" if preset_dependent(name) else f"{d:g}"
        return f"{m.name} " + ((f"`{d}`" if d else "empty") if isinstance(d, str) else f"{d:g}")

    table = readme_inputs_table()
    assert set(cog_inputs()) == set(table)
    for name in methods.container_knobs(methods.ZEROCAP):  # ZeroCap's Cog inputs
        kind, default, allowed, does = table[name]
        spec = KNOBS[name]
        want_default = "the mode's" if preset_dependent(name) else f"{getattr(DEFAULTS, name):g}"
        if methods.differs(name):  # e.g. max_tokens: "the method's (15; pseudo-tokens 20; magic 15)"
            want_default = "the method's (" + "; ".join(shown(m, name) for m in methods.owners(name)) + ")"
        assert default == want_default, name
        if spec.container is not None:
            assert allowed == f"{spec.container.lo:g}–{spec.container.hi:g}", name
            assert kind == ("integer" if FIELD_TYPES[name] is int else "number"), name
        # the knob's help line, word for word; where the methods mean other things, each one's
        assert does == (spec.help if methods.one_meaning(name) is not None else methods.meaning(name)), name
    for name in methods.knob_inputs():
        if name in KNOBS:
            continue
        kind, default, allowed, does = table[name]
        owners = methods.owners(name)
        one = methods.one_meaning(name)
        assert does == (", ".join(m.name for m in owners) + ": " + one if one is not None else methods.meaning(name))
        d = getattr(owners[0].defaults, name)
        assert default == (str(d).lower() if isinstance(d, bool) else f"`{d}`" if isinstance(d, str) else f"{d:g}"), name
    assert table["mode"][2] == ", ".join(MODES)
    assert table["method"][2] == ", ".join(methods.METHODS)
    assert PIXELS.said in table["image"][2] and PIXELS.said in table["video"][2]
    assert table["images"][2] == TERMS.say(served=True)
    assert WEIGHT.say(served=True) in table["image_weights"][2] and WEIGHT.say(served=True) in table["text_weights"][2]
    assert table["frames"][2] == f"{FRAMES.lo}–{FRAMES.hi}"
    assert table["cond_text"][2] == f"≤ {KNOBS['cond_text'].max_length} characters, ≤ {CLIP_PROMPT_TOKENS.hi} CLIP tokens"


def test_predict_py_declares_the_inputs_the_tables_generate():
    """predict.py's inputs and Output fields are script/cog-inputs' output from the tables (modes,
    every method's served knobs and output declaration, limits), byte for byte: a knob or a method
    added to the tables reaches the container by running the script, and a hand edit of the
    generated lines fails here."""
    import importlib.machinery
    import importlib.util
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    loader = importlib.machinery.SourceFileLoader("cog_inputs", os.path.join(root, "script", "cog-inputs"))
    script = importlib.util.module_from_spec(importlib.util.spec_from_loader("cog_inputs", loader))
    loader.exec_module(script)
    text = open(os.path.join(root, "predict.py"), encoding="utf-8").read()
    assert script.rewritten(text) == text, "predict.py's inputs or outputs are not the tables': run" \
                                           " python script/cog-inputs --write"
    assert script.inputs() in text and script.output() in text
    assert "pseudo-tokens: damping of tokens similar to the last 16" in script.inputs()
    assert "    sentences: list[str]\n" in script.output()


def test_the_readmes_limits_table_is_the_limits_table():
    """Every limit a user can meet, said once: the README's table is limits.py's, word for word."""
    from zerocap.limits import LIMITS

    rows = {name.strip("`"): (said, served) for name, said, served, where in readme_table("### Limits")}
    assert set(rows) == set(LIMITS)
    for name, limit in LIMITS.items():
        assert rows[name] == (limit.said, limit.served_said or "—"), name


def test_the_readmes_knobs_table_gives_both_ranges_from_the_table():
    """Every knob's flag, default, the range the command line and Python accept and the one a Cog
    request may ask for: script/readme-tables' rows, which read config.py."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    printed = subprocess.run([sys.executable, os.path.join(root, "script", "readme-tables")], capture_output=True,
                             text=True, check=True).stdout
    rows = [line for line in printed.split("\n\n")[0].splitlines()[2:]]
    table = readme_table("### Knobs")
    assert [[c.strip() for c in row.split("|")[1:-1]] for row in rows] == table
    assert [row[0].strip("`") for row in table] == list(KNOBS)
    by_name = {row[0].strip("`"): row for row in table}
    assert by_name["beam_size"][3:] == [f"{KNOBS['beam_size'].range.lo}–{KNOBS['beam_size'].range.hi}",
                                        f"{KNOBS['beam_size'].container.lo}–{KNOBS['beam_size'].container.hi}"]


def test_the_readmes_knob_tables_of_the_other_methods_are_their_tables():
    """Every method's knobs beside ZeroCap's: flag, default, the command line's range and a Cog
    request's, as script/readme-tables prints them from each method's knob table."""
    import os
    import subprocess
    import sys

    from zerocap import methods

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    printed = subprocess.run([sys.executable, os.path.join(root, "script", "readme-tables")], capture_output=True,
                             text=True, check=True).stdout
    others = [m for m in methods.METHODS.values() if m is not methods.ZEROCAP]
    assert [m.name for m in others] == ["pseudo-tokens", "magic"]
    for m in others:
        block = next(b for b in printed.split("\n\n") if b.startswith(f"| {m.name} knob |"))
        rows = [[c.strip() for c in row.split("|")[1:-1]] for row in block.splitlines()[2:]]
        lines = readme().split(f"| {m.name} knob |", 1)[1].splitlines()[2:]
        table = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[:len(rows) + 1] if line.startswith("|")]
        assert table == rows, m.name
        assert [row[0].strip("`") for row in table] == list(m.knobs), m.name
    pt = {row[0].strip("`"): row for row in rows_of(printed, "pseudo-tokens")}
    assert pt["sentence_iterations"][2] == str(methods.PSEUDO_TOKENS.defaults.sentence_iterations) == "30"
    assert pt["token_wise"][1] == "--token-wise / --per-sentence"
    magic = {row[0].strip("`"): row for row in rows_of(printed, "magic")}
    assert (magic["k"][2], magic["alpha"][2], magic["beta"][2], magic["max_tokens"][2]) == ("45", "0.1", "2", "15")


def rows_of(printed: str, method: str) -> list[list[str]]:
    block = next(b for b in printed.split("\n\n") if b.startswith(f"| {method} knob |"))
    return [[c.strip() for c in row.split("|")[1:-1]] for row in block.splitlines()[2:]]


@pytest.mark.parametrize("Config", ["ZeroCapConfig", "PseudoTokenConfig", "MagicConfig"])
def test_cond_texts_limit_holds_on_every_door(Config, capsys):
    """300 characters in Python and on the command line as in a Cog request (limits.COND_TEXT)."""
    import zerocap
    from zerocap.cli import main
    from zerocap.limits import COND_TEXT

    cls = getattr(zerocap, Config)
    cls(cond_text="x" * COND_TEXT.hi).validate()
    with pytest.raises(InputError, match="cond_text must be at most 300 characters, got 301"):
        cls(cond_text="x" * 301).validate()
    method = {"ZeroCapConfig": "zerocap", "PseudoTokenConfig": "pseudo-tokens", "MagicConfig": "magic"}[Config]
    assert main(["caption", "a.png", "--method", method, "--cond-text", "x" * 800]) == 2
    assert "cond_text must be at most 300 characters, got 800" in capsys.readouterr().err
