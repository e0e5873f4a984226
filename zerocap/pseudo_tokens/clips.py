"""A clip as their run.py reads it: every max(1, fps // 3)-th frame, each embedded by CLIP, their
near-duplicate filter."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..download import local_file
from ..errors import InputError
from ..modes import Target
from ..video import MAX_FRAMES, FrameSampler, av_library, embedded_frames, stream_duration

NEAR_DUPLICATE = 0.9  # their filter_video: a frame this similar to its run's first joins that run


def distinct_runs(frames: torch.Tensor) -> list[int]:
    """Indices of the frames kept by their near-duplicate filter: a run of consecutive frames each
    more similar than NEAR_DUPLICATE (cosine) to the run's first collapses into that first."""
    sims = frames @ frames.T
    kept, first = [0], 0
    for i in range(1, frames.shape[0]):
        if not sims[first, i] > NEAR_DUPLICATE:
            kept.append(i)
            first = i
    return kept


@dataclass
class ClipFrames:
    """What a clip's result adds: the frames its sentences were steered by."""

    times: list[float]  # seconds from the start, of the kept frames
    sampled: int  # frames sampled before the near-duplicate filter
    sampling: str  # how they were sampled, in words

    def to_dict(self) -> dict:
        return {"frame_times": self.times, "frames": len(self.times), "frames_sampled": self.sampled,
                "sampling": self.sampling}


def authors_every(path: str) -> tuple[float, int, float, float]:
    """(seconds between their sampled frames -- every max(1, fps // 3)-th frame --, that step, fps,
    the clip's duration). Their fps // 3 is 0 below 3 fps (their code then fails); here every frame."""
    av = av_library()
    rate, duration = 0.0, 0.0
    try:
        with av.open(path) as container:
            if container.streams.video:
                stream = container.streams.video[0]
                rate = float(stream.average_rate or stream.guessed_rate or 0)
                duration = stream_duration(container, stream)
    except (av.error.FFmpegError, UnicodeDecodeError):
        pass  # FrameSampler says what is wrong with the file
    rate = rate if math.isfinite(rate) and rate > 0 else 3.0
    step = max(1, int(rate // 3))
    return step / rate, step, rate, duration


def _nth(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def clip_target(engine, source: str, name: str, frames: int | None = None, every: float | None = None,
                most: int | None = None):
    """A clip as the method reads it (a modes.Target with `frames`): by default every
    max(1, fps // 3)-th frame (their run.py; at most `most`, default video.MAX_FRAMES, else that
    many spread evenly), or the frames asked for; each frame's normalised CLIP embedding; then
    their near-duplicate filter."""
    with local_file(source) as path:
        how = f"{frames} frames spread evenly" if frames is not None else (
            f"a frame every {every:g} s" if every is not None else "")
        if frames is None and every is None:
            seconds, step, rate, duration = authors_every(path)
            how = f"every {_nth(step)} frame ({rate:g} fps // 3)" if step > 1 else "every frame"
            most = most or MAX_FRAMES
            if duration > seconds * most:
                how = f"{most} frames spread evenly (every {_nth(step)} frame would be more than {most})"
                sampler = FrameSampler(path, name, frames=most)
            else:
                sampler = FrameSampler(path, name, every=seconds)
        else:
            sampler = FrameSampler(path, name, frames, every)
        embeddings, sampled_times = embedded_frames(engine, sampler, name)
    if not embeddings:
        raise InputError(f"{name}: no frames to caption")
    stacked = torch.stack(embeddings)
    kept = distinct_runs(stacked)
    times = [sampled_times[i] for i in kept]
    vector = engine.targets.mean([stacked[i] for i in kept], name)
    return Target(vector, name, ClipFrames(times, len(sampled_times), how), frames=stacked[kept])
