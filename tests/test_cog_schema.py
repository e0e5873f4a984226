"""The schema `cog build` writes says exactly what predict.py declares.

`cog build` (cog >= 0.22) does not run Python for the schema: its Go CLI parses predict.py
statically and writes .cog/openapi_schema.json, which coglet validates every request against
and Replicate shows as the model's form and API docs. ../shared/tools/cog-schema is that
generator; these tests compare its output, input by input, with what cog's own runtime
inspection of Predictor.run declares, and with the copy committed in .cog/.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(os.path.dirname(ROOT), "shared", "tools", "cog-schema")
COMMITTED = os.path.join(ROOT, ".cog", "openapi_schema.json")
# Outside this project's workplace the generator may be missing: then these are skipped. In CI
# (.ci/run sets CI=1) it is always there, and a missing generator fails instead of skipping.
needs_tool = pytest.mark.skipif(not os.access(TOOL, os.X_OK) and not os.environ.get("CI"),
                                reason=f"cog's static schema generator is not at {TOOL} (see ../shared/README.md)")


@pytest.fixture(scope="module")
def generated():
    assert os.access(TOOL, os.X_OK), f"cog's static schema generator is not at {TOOL}"
    run = subprocess.run([TOOL, ROOT], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def declared():
    from cog import _inspector

    sys.path.insert(0, ROOT)
    return _inspector.create_predictor("predict", "Predictor").inputs


def json_type(field) -> dict:
    from cog._adt import PrimitiveType, Repetition

    prim = field.type.primitive
    one = {"type": {PrimitiveType.STRING: "string", PrimitiveType.INTEGER: "integer", PrimitiveType.FLOAT: "number",
                    PrimitiveType.PATH: "string", PrimitiveType.BOOL: "boolean"}[prim]}
    if prim is PrimitiveType.PATH:
        one["format"] = "uri"
    if field.type.repetition in (Repetition.REPEATED, Repetition.OPTIONAL_REPEATED):
        return {"type": "array", "items": one}
    return one


@needs_tool
def test_every_input_is_generated_as_declared(generated):
    schemas = generated["components"]["schemas"]
    props = schemas["Input"]["properties"]
    inputs = declared()
    assert list(props) == list(inputs)
    for name, field in inputs.items():
        p = dict(props[name])
        assert p.pop("x-order") == field.order, name
        assert p.pop("title", name.replace("_", " ").title()) == name.replace("_", " ").title(), name
        assert p.pop("description") == field.description and field.description, name
        assert p.pop("default") == field.default, name
        assert p.pop("nullable", False) == (field.type.repetition.name.startswith("OPTIONAL")), name
        assert p.pop("minimum", None) == field.ge and p.pop("maximum", None) == field.le, name
        assert p.pop("maxLength", None) == field.max_length, name
        if field.choices is not None:
            ref = p.pop("allOf")[0]["$ref"].rsplit("/", 1)[1]
            assert schemas[ref]["enum"] == field.choices, name
            assert schemas[ref]["type"] == json_type(field)["type"]
        else:
            assert p == json_type(field), name
    assert not schemas["Input"].get("required")  # every input has a default


@needs_tool
def test_the_committed_schema_is_the_generated_one(generated):
    """.cog/openapi_schema.json (what the server tests run with, as a built image does) is current:
    after changing predict.py, regenerate it with script/cog-schema"""
    with open(COMMITTED) as f:
        assert json.load(f) == generated
