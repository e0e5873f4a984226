"""ZeroCap: zero-shot image captioning and visual-semantic arithmetic (Tewel et al., CVPR 2022).

The engine (torch, transformers, CLIP) is imported on first use of `ZeroCap`, `CaptionResult`
or `Beam`, so that `import zerocap` and the command line start at once (and a Ctrl-C during
those imports is handled like any other).
"""
import warnings as _warnings

from . import threads as _threads

_threads.prepare()  # before torch loads libgomp: idle OpenMP workers sleep soon (zerocap/threads.py)

# OpenAI CLIP imports pkg_resources, which warns on every import.
_warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

from .config import ZeroCapConfig  # noqa: E402
from .errors import InputError  # noqa: E402
from .forms import FORMS  # noqa: E402
from .lazy import resolve  # noqa: E402
from .methods import METHODS  # noqa: E402
from .modes import MODES  # noqa: E402
from .presets import PRESETS, preset  # noqa: E402
from .magic import MagicConfig  # noqa: E402
from .pseudo_tokens import PseudoTokenConfig  # noqa: E402

__all__ = ["ZeroCap", "ZeroCapConfig", "PseudoTokenConfig", "MagicConfig", "CaptionResult", "Beam", "PseudoTokenResult",
           "MagicResult", "InputError", "MODES", "METHODS", "PRESETS", "FORMS", "preset"]
__version__ = "0.1.0"

_HEAVY = {"ZeroCap": "zerocap.engine:ZeroCap", "CaptionResult": "zerocap.zerocap_decoder:CaptionResult",
          "Beam": "zerocap.zerocap_decoder:Beam", "PseudoTokenResult": "zerocap.pseudo_tokens.batch:PseudoTokenResult",
          "MagicResult": "zerocap.magic.decoder:MagicResult"}


def __getattr__(name):
    """The engine's names, loaded on first use (lazy.py: torch loads then, not at `import zerocap`)."""
    if name in _HEAVY:
        return resolve(_HEAVY[name])
    raise AttributeError(f"module 'zerocap' has no attribute {name!r}")
