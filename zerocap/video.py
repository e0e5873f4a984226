"""Captioning a video clip from its frames: sample frames, embed each with CLIP, caption the mean.

ZeroCap's target is any CLIP embedding, so a clip needs no new model. The target is the mean
of the frames' normalised CLIP image embeddings, normalised again: the caption describes what
the frames share. There is no temporal modelling (what happens in order, motion).

Frames are decoded with PyAV (FFmpeg's libraries) in a streaming way: for each sampled time
the decoder seeks to the key frame before it and decodes up to that time, so the work depends
on the number of frames asked for, not on the clip's length; each frame is embedded and
dropped. Frames are taken as decoded, in RGB, with no rotation or EXIF handling.
  frames=N     N frames spread evenly: the frames nearest the middle of each of N equal parts
  every=S      the frames nearest 0, S, 2S, ... seconds (at most MAX_FRAMES)
Limits, each refused with a message: frames of at most MAX_IMAGE_PIXELS (80 MP), at most
MAX_FRAMES frames, at most MAX_DECODED frames decoded in all (a clip with too few key frames).
"""
from __future__ import annotations

import math

from .errors import InputError
from .images import MAX_IMAGE_PIXELS

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".wmv", ".flv", ".ogv")
DEFAULT_FRAMES = 8
MAX_FRAMES = 64
MAX_DECODED = 5000  # frames decoded for one clip, all seeks together


def check_sampling(frames: int | None, every: float | None) -> None:
    if frames is not None and every is not None:
        raise InputError("give --frames or --every, not both")
    if frames is not None and not 1 <= frames <= MAX_FRAMES:
        raise InputError(f"frames must be an integer from 1 to {MAX_FRAMES}, got {frames}")
    if every is not None and not (math.isfinite(every) and every > 0):
        raise InputError(f"every must be a number of seconds above 0, got {every}")


def sample_times(duration: float, frames: int | None = None, every: float | None = None) -> list[float]:
    """Times (seconds from the clip's start) to take frames at."""
    check_sampling(frames, every)
    if every is None:
        n = frames or DEFAULT_FRAMES
        return [(i + 0.5) * duration / n for i in range(n)]
    n = max(1, math.ceil(duration / every))
    if n > MAX_FRAMES:
        raise InputError(f"a frame every {every:g} s of a {duration:.1f} s clip is {n} frames; at most {MAX_FRAMES}:"
                         " give a longer --every, or --frames")
    return [i * every for i in range(n)]


def _av():
    try:
        import av
    except ImportError:
        raise InputError("video needs PyAV: pip install av") from None
    return av


def frames_at(path: str, name: str, frames: int | None = None, every: float | None = None):
    """Yield (time in seconds from the start, PIL RGB image) for each sampled time, one at a time."""
    av = _av()
    try:
        container = av.open(path)
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise InputError(f"not a video: {name} ({getattr(e, 'strerror', None) or e})") from None
    with container:
        if not container.streams.video:
            raise InputError(f"no video stream in {name}")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > MAX_IMAGE_PIXELS:
            raise InputError(f"video too large: {name} has frames of {width * height:,} pixels ({width}x{height});"
                             f" at most {MAX_IMAGE_PIXELS:,} pixels (80 MP) are accepted")
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        duration = _duration(container, stream)
        decoded = 0
        try:
            for t in sample_times(duration, frames, every):
                frame, used = _frame_at(container, stream, start + t, start)
                decoded += used
                if decoded > MAX_DECODED:
                    raise InputError(f"cannot sample {name} within {MAX_DECODED} decoded frames (too few key frames);"
                                     " re-encode it, or ask for fewer frames")
                if frame is None:
                    break
                yield frame.time - start, frame.to_image()
        except av.error.FFmpegError as e:
            raise InputError(f"cannot read video {name}: it is truncated or corrupt ({e})") from None
        if decoded == 0:
            raise InputError(f"no frames could be read from {name}")


def _duration(container, stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # microseconds
    return 0.0  # unknown: the first frame


def _frame_at(container, stream, t: float, start: float):
    """(the frame nearest time t -- the last one when t is past the end; frames decoded)."""
    if t > start:  # else: the first frame, where a newly opened file already is
        container.seek(int(t / stream.time_base), stream=stream, backward=True, any_frame=False)
    last, used = None, 0
    for frame in container.decode(stream):
        used += 1
        if frame.time is None:
            continue
        if frame.time >= t:
            return (last if last is not None and t - last.time < frame.time - t else frame), used
        last = frame
        if used > MAX_DECODED:
            break
    return last, used


def video_target(engine, source: str, name: str, frames: int | None = None, every: float | None = None):
    """(normalised mean of the sampled frames' normalised CLIP embeddings, {"frame_times": [...]})."""
    from .dataset import local_file

    with local_file(source) as path:
        embeddings, times = [], []
        for t, image in frames_at(path, name, frames, every):
            e = engine.targets.raw_image(image, name)
            embeddings.append(e / e.norm())
            times.append(round(t, 3))
    return engine.targets.mean(embeddings, name), {"frame_times": times}
