"""The compiled path checks itself: a probe caption decoded compiled and eagerly must give the same
beams, else the engine decodes eagerly from then on.

The compiled step (compiled.py) replays graphs that nobody can inspect on the machine they run
on (a GPU's CUDA graphs above all). So after warm-up, the container -- and `zerocap selfcheck`,
for bug reports -- decodes one probe caption both ways. If compiling failed, or the beams differ,
compiling is switched off for this engine (`engine.decompile()`) and the reason is kept: the
container says it in one line of its setup log and in every prediction's `compiled_step` metric,
and stays healthy, serving eagerly.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .config import ZeroCapConfig
from .modes import Target

# the probe: the paper's settings, fewer candidates and tokens (seconds, not minutes, on a CPU)
PROBE = ZeroCapConfig(beam_size=3, top_k=64, max_tokens=6)


@dataclass
class SelfCheck:
    device: str
    path: str  # "compiled" or "eager": what serves from now on
    reason: str  # why that path
    seconds: dict = field(default_factory=dict)  # path -> seconds per probe caption
    beams: dict = field(default_factory=dict)  # path -> the probe's beams

    @property
    def agree(self) -> bool | None:
        """Whether both paths gave the same beams (None when only one ran)."""
        if len(self.beams) < 2:
            return None
        return self.beams["compiled"] == self.beams["eager"]

    def line(self) -> str:
        """One line for a log."""
        times = ", ".join(f"{path} {s:.2f} s" for path, s in self.seconds.items())
        return f"decoding {self.path} on {self.device}: {self.reason}" + (f" (probe caption: {times})" if times else "")

    def report(self) -> str:
        """Several lines for a person (zerocap selfcheck)."""
        lines = [f"device:    {self.device}", f"path:      {self.path} ({self.reason})"]
        lines += [f"{path + ':':<10} {s:.2f} s per probe caption" for path, s in self.seconds.items()]
        if self.agree is not None:
            lines.append(f"agreement: {'the same beams' if self.agree else 'the beams differ'}")
        for path, beams in self.beams.items():
            lines.append(f"{path + ' beams:':<16} {' | '.join(beams)}")
        return "\n".join(lines)


def _probe_target(engine) -> Target:
    from PIL import Image

    image = Image.linear_gradient("L").resize((96, 64)).convert("RGB")
    return Target(engine.targets.image_target(image), "probe")


def _decode(engine, target, cfg) -> tuple[list[str], float]:
    start = time.perf_counter()
    result = engine.decode_targets([target], engine.check(cfg))[0]
    return [b.text for b in result.beams], time.perf_counter() - start


def check(engine, cfg: ZeroCapConfig = PROBE, time_eager: bool = True) -> SelfCheck:
    """Decode the probe compiled and eagerly; keep compiling only when both give the same beams.
    An engine that is not compiled has nothing to check: with time_eager, its probe is timed."""
    device = str(engine.device)
    compiled = engine.compiled
    if compiled is None:
        if not time_eager:
            return SelfCheck(device, "eager", "not compiled")
        beams, seconds = _decode(engine, _probe_target(engine), cfg)
        return SelfCheck(device, "eager", "not compiled", {"eager": seconds}, {"eager": beams})
    target = _probe_target(engine)
    out = SelfCheck(device, "compiled", "")
    try:
        out.beams["compiled"], out.seconds["compiled"] = _decode(engine, target, cfg)
    except Exception as e:  # noqa: BLE001 -- whatever the compiled path raises, eager serves
        compiled.failed = compiled.failed or f"{type(e).__name__}: {e}"
    with engine.eagerly():
        out.beams["eager"], out.seconds["eager"] = _decode(engine, target, cfg)
    if compiled.failed:
        out.path, out.reason = "eager", f"torch.compile failed ({compiled.failed[:200]})"
    elif not out.agree:
        out.path, out.reason = "eager", "the compiled step's beams differ from eager decoding's"
    else:
        out.reason = "the compiled step gives eager decoding's beams"
    if out.path == "eager":
        engine.decompile()
    return out
