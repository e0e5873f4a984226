"""A test hook for processes the tests start (a server: tests/test_selfcheck.py), loaded by Python
at start-up when PYTHONPATH names this folder: with ZEROCAP_TEST_WRONG_COMPILED=1 the compiled
step (zerocap/compiled.py) returns deliberately wrong logits, so that the self-check's fallback to
eager decoding can be seen working. The package itself has no such hook."""
import os

if os.environ.get("ZEROCAP_TEST_WRONG_COMPILED"):
    import zerocap  # noqa: F401,I001 -- first, as every entry point: how idle OpenMP workers wait
    from zerocap import compiled

    def wrong(shift):
        def shifted(self, *args, **kwargs):
            return shift(self, *args, **kwargs).flip(-1).clone()
        return shifted

    compiled.Compiled.shift = wrong(compiled.Compiled.shift)
