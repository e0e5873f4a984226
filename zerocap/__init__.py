"""ZeroCap: zero-shot image captioning and visual-semantic arithmetic (Tewel et al., CVPR 2022)."""
import warnings as _warnings

# OpenAI CLIP imports pkg_resources, which warns on every import.
_warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

from .config import PRESETS, ZeroCapConfig, preset  # noqa: E402
from .engine import Beam, CaptionResult, ZeroCap  # noqa: E402

__all__ = ["ZeroCap", "ZeroCapConfig", "CaptionResult", "Beam", "PRESETS", "preset"]
__version__ = "0.1.0"
