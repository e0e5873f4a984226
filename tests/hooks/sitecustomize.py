"""A test hook for processes the tests start (a server), loaded by Python at start-up when
PYTHONPATH names this folder:
- ZEROCAP_TEST_WRONG_COMPILED=1: the compiled step (zerocap/compiled.py) returns deliberately
  wrong logits, so that the self-check's fallback to eager decoding can be seen working
  (tests/test_selfcheck.py);
- ZEROCAP_TEST_TOY_METHOD=1: the toy method of tests/toy_method.py is registered, as a new
  method's registry line would do, so that a predict.py generated with it serves it
  (tests/test_extending.py).
The package itself has no such hook."""
import importlib
import os
import sys

if os.environ.get("ZEROCAP_TEST_WRONG_COMPILED") or os.environ.get("ZEROCAP_TEST_TOY_METHOD"):
    importlib.import_module("zerocap")  # first, as every entry point: how idle OpenMP workers wait

if os.environ.get("ZEROCAP_TEST_TOY_METHOD"):
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for toy_method
    import toy_method
    from zerocap import methods

    methods.register(toy_method.method())

if os.environ.get("ZEROCAP_TEST_WRONG_COMPILED"):
    from zerocap import compiled

    def wrong(shift):
        def shifted(self, *args, **kwargs):
            return shift(self, *args, **kwargs).flip(-1).clone()
        return shifted

    compiled.Compiled.shift = wrong(compiled.Compiled.shift)
