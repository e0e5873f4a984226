"""Captioning a video clip from its frames: sample frames, embed each with CLIP, caption the mean.

ZeroCap's target is any CLIP embedding, so a clip needs no new model. The target is the mean
of the distinct sampled frames' normalised CLIP image embeddings, normalised again: the caption
describes what the frames share. There is no temporal modelling (what happens in order, motion).

Frames are decoded with PyAV (FFmpeg's libraries) in a streaming way, one pass forward through
the clip: the next sampled time is reached by decoding on from where the decoder is when that
is nearer than a seek would land (a seek goes back to the key frame before the time and decodes
up from there: as far as the last seek had to, 8 s before any), else by a seek. So frames that
are many and close (the pseudo-token method's every few frames, `--every 0.5`) cost one
decode of the clip, and a few frames spread over a long clip cost a few seeks; each frame is
embedded and dropped. Frames are taken as decoded, in RGB, with no rotation or EXIF handling.
  frames=N     N frames spread evenly: the frames nearest the middle of each of N equal parts
  every=S      the frames nearest 0, S, 2S, ... seconds (at most MAX_FRAMES)
Each distinct frame is used once: when several sampled times fall on one frame (a short or
truncated clip, a still), that frame counts once, and the result says how many distinct frames
the caption describes (`frames`) of those asked for (`frames_asked`).

Bounded memory, whatever the file says: FFmpeg refuses to decode any frame over
MAX_IMAGE_PIXELS (80 MP), also after a small first frame; and after every packet the decoder's
worst case -- the frame size in its pixel format times the frames a codec of its kind may hold
(references and reordering) -- must fit DECODER_BUDGET, checked before that many frames exist.
Other limits, each refused with a message: at most MAX_FRAMES frames, at most
MAX_DECODED_PIXELS decoded in all (a long clip with too few key frames, at a size that makes
its decoding take minutes).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from PIL import Image

from .download import local_file
from .errors import InputError
from .formats import VIDEO_EXTENSIONS  # noqa: F401  (video.VIDEO_EXTENSIONS: what a scan takes)
from .limits import DECODED_PIXELS, DECODER_MEMORY, FRAMES, PIXELS
from .modes import Target, check_sampling

DEFAULT_FRAMES = 8
MAX_FRAMES = FRAMES.hi
MAX_DECODED_PIXELS = DECODED_PIXELS.hi  # pixels decoded for one clip, all seeks together
FIRST_SEEK_GUESS = 8.0  # seconds a seek may land before its time, before one has been measured
DECODER_BUDGET = DECODER_MEMORY.hi  # bytes the decoder's frames may take at worst
MAX_IMAGE_PIXELS = PIXELS.hi
# frames a decoder may hold besides the one it outputs (references + reordering), by codec;
# intra-only codecs (MJPEG, ProRes, ...) hold none, unknown codecs count as H.264's worst case
HELD_FRAMES = {"h264": 16, "hevc": 16, "vvc": 16, "vp9": 8, "av1": 8, "vp8": 3, "mpeg1video": 2, "mpeg2video": 2,
               "mpeg4": 2, "h263": 2, "msmpeg4v3": 2, "wmv3": 2, "vc1": 2, "theora": 2, "ffv1": 1, "png": 1,
               "apng": 2, "gif": 2}


def sample_times(duration: float, frames: int | None = None, every: float | None = None) -> list[float]:
    """Times (seconds from the clip's start) to take frames at."""
    check_sampling(frames, every)
    duration = max(0.0, duration) if math.isfinite(duration) else 0.0
    if every is None:
        n = frames or DEFAULT_FRAMES
        return [(i + 0.5) * duration / n for i in range(n)]
    if duration > every * MAX_FRAMES:  # (compared this way round: no overflow for any every)
        raise InputError(f"a frame every {every:g} s of a {duration:.1f} s clip is {math.ceil(duration / every):,}"
                         f" frames; at most {MAX_FRAMES}: give a longer --every, or --frames")
    n = max(1, math.ceil(duration / every))
    return [i * every for i in range(n)]


def av_library():
    try:
        import av
        import av.logging
    except ImportError:
        raise InputError("video needs PyAV: pip install av") from None
    return av


def _too_large(name: str, width: int, height: int) -> InputError:
    return InputError(f"video too large: {name} has frames of {width * height:,} pixels ({width}x{height});"
                      f" {PIXELS.said} are accepted")


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


class _Guard:
    """The memory checks of one clip's decoder (see the module docstring)."""

    def __init__(self, av, stream, name: str):
        self.av, self.stream, self.name = av, stream, name
        codec = stream.codec_context.codec
        self.held = 0 if codec.intra_only else HELD_FRAMES.get(codec.name, 16)

    def check(self) -> None:
        ctx = self.stream.codec_context
        width, height = ctx.width or 0, ctx.height or 0
        if width * height > MAX_IMAGE_PIXELS:
            raise _too_large(self.name, width, height)
        fmt = ctx.format
        bits = fmt.padded_bits_per_pixel if fmt is not None else 48
        frames = 1 + self.held + (ctx.has_b_frames or 0) + 1  # + the frame being output
        need = width * height * bits // 8 * frames
        if need > DECODER_BUDGET:
            raise InputError(
                f"video too large to decode within memory: {self.name} has {width}x{height} frames"
                f" ({fmt.name if fmt is not None else 'unknown format'}) and its codec may hold {frames} of them"
                f" ({_size(need)}); at most {_size(DECODER_BUDGET)}: re-encode it smaller")

    def decode(self, container):
        """Frames from the container's current position, checking after every packet."""
        for packet in container.demux(self.stream):
            try:
                frames = self.stream.decode(packet)
            except self.av.error.FFmpegError as e:
                found = re.search(r"Picture size (\d+)x(\d+) exceeds", str(e))
                if found:  # FFmpeg's own refusal (max_pixels)
                    raise _too_large(self.name, int(found.group(1)), int(found.group(2))) from None
                raise
            self.check()
            yield from frames


class FrameSampler:
    """Iterate over (time in seconds from the start, PIL RGB image) of the distinct frames
    sampled from a clip, one at a time; `asked` is how many sampled times there were."""

    def __init__(self, path: str, name: str, frames: int | None = None, every: float | None = None):
        check_sampling(frames, every)
        self.path, self.name, self.frames, self.every = path, name, frames, every
        self.asked = 0

    def __iter__(self):
        av = av_library()
        level = av.logging.get_level()
        av.logging.set_level(av.logging.ERROR)  # FFmpeg's reason then ends up in the exception
        try:
            with av.logging.Capture():  # ... and not on stderr
                yield from self._frames(av)
        finally:
            av.logging.set_level(level)

    def _frames(self, av):
        name = self.name
        try:
            container = av.open(self.path)
        except (av.error.FFmpegError, UnicodeDecodeError) as e:
            raise InputError(f"not a video: {name} ({getattr(e, 'strerror', None) or e})") from None
        with container:
            if not container.streams.video:
                raise InputError(f"no video stream in {name}")
            stream = container.streams.video[0]
            stream.codec_context.options = {"max_pixels": str(MAX_IMAGE_PIXELS)}  # FFmpeg refuses larger frames
            guard = _Guard(av, stream, name)
            guard.check()  # what the header says, before any frame is decoded
            start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
            times = sample_times(stream_duration(container, stream), self.frames, self.every)
            self.asked = len(times)
            reader, used = _Reader(container, stream, guard, start), set()
            try:
                for t in times:
                    frame, at_end = reader.at(start + t)
                    if frame is None:
                        break
                    if frame.pts not in used:  # each distinct frame once
                        used.add(frame.pts)
                        when = frame.time - start
                        rgb = frame.to_ndarray(format="rgb24")  # (H, W, 3); to_image() copies more
                        del frame
                        yield when, Image.fromarray(rgb)
                        del rgb
                    if at_end:  # every later time falls on this last frame too
                        break
            except av.error.FFmpegError as e:
                raise InputError(f"cannot read video {name}: it is truncated or corrupt ({e})") from None
            if reader.decoded == 0:
                raise InputError(f"no frames could be read from {name}")


def frames_at(path: str, name: str, frames: int | None = None, every: float | None = None):
    """The distinct sampled frames of a clip: (time in seconds from the start, PIL RGB image)."""
    return iter(FrameSampler(path, name, frames, every))


def stream_duration(container, stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # microseconds
    return 0.0  # unknown: the first frame


class _Reader:
    """The frames nearest to increasing times, decoding forward where that is cheaper than a
    seek (see the module docstring); what it decodes counts against MAX_DECODED_PIXELS."""

    forward = True  # False: a seek for every time (as before; the tests' reference)

    def __init__(self, container, stream, guard: _Guard, start: float):
        self.container, self.stream, self.guard, self.start = container, stream, guard, start
        self.frames = None  # the decoder's frames from where it is
        self.before = None  # the last frame decoded before the last time asked
        self.ahead = None  # the first frame decoded at or past it
        self.ended = False  # the decoder ran out where it is
        self.decoded = self.pixels = 0
        # how far before its time a seek lands (the key frame it decodes up from): the last seek's
        self.landing = 0.0 if stream.codec_context.codec.intra_only else FIRST_SEEK_GUESS

    def at(self, t: float):
        """(the frame nearest time t -- the last one when t is past the end --, whether the clip
        ended before t); t never less than the time asked before."""
        if self.ahead is not None and self.ahead.time >= t:  # decoded already
            return self._nearest(t), False
        newest = self.ahead or self.before
        if self.ended:
            return newest, True
        if self.frames is None:
            if t - self.start > self.landing or (t > self.start and not self.forward):
                return self._decode_to(t, seek=True)
            self.frames = self.guard.decode(self.container)  # a newly opened file is at its first frame
        elif newest is not None and (t - newest.time > self.landing or not self.forward):
            return self._decode_to(t, seek=True)
        if self.ahead is not None:
            self.before, self.ahead = self.ahead, None
        return self._decode_to(t, seek=False)

    def _decode_to(self, t: float, seek: bool):
        if seek:
            self.container.seek(int(t / self.stream.time_base), stream=self.stream, backward=True, any_frame=False)
            self.frames = self.guard.decode(self.container)
            self.before = self.ahead = None
        first = None
        for frame in self.frames:
            self.decoded += 1
            self.pixels += (frame.width or 0) * (frame.height or 0)
            if self.pixels > MAX_DECODED_PIXELS:
                raise InputError(f"cannot sample {self.guard.name} within {DECODED_PIXELS.said} (a long clip with few"
                                 " key frames): re-encode it, or ask for fewer frames")
            if frame.time is None:
                continue
            if first is None:
                first = frame.time
            if frame.time >= t:
                self.ahead = frame
                if seek:
                    self.landing = max(0.0, t - first)
                return self._nearest(t), False
            self.before = frame
        self.ended = True
        return self.before, True

    def _nearest(self, t: float):
        b, a = self.before, self.ahead
        return b if b is not None and t - b.time < a.time - t else a


@dataclass
class VideoFrames:
    """What a video's result adds: the distinct frames its caption describes."""

    times: list[float]  # seconds from the clip's start, each distinct frame once
    asked: int  # sampled times asked for (several may fall on one frame)

    def to_dict(self) -> dict:
        return {"frame_times": self.times, "frames": len(self.times), "frames_asked": self.asked}


def embedded_frames(engine, sampler: FrameSampler, name: str) -> tuple[list, list[float]]:
    """(each sampled distinct frame's normalised CLIP embedding, its time rounded to ms): one frame
    decoded and held at a time, whatever the clip's size."""
    embeddings, times = [], []
    for t, image in sampler:
        e = engine.targets.raw_image(image, name)
        embeddings.append(e / e.norm())
        times.append(round(t, 3))
    return embeddings, times


def video_target(engine, source: str, name: str, frames: int | None = None, every: float | None = None):
    """(the normalised mean of the clip's distinct sampled frames' normalised CLIP embeddings (D,),
    the frames as the result's details: VideoFrames)."""
    with local_file(source) as path:
        sampler = FrameSampler(path, name, frames, every)
        embeddings, times = embedded_frames(engine, sampler, name)
    return engine.targets.mean(embeddings, name), VideoFrames(times, sampler.asked)


def clip_target(engine, source: str, name: str, frames: int | None = None, every: float | None = None,
                most: int | None = None) -> Target:
    """A clip as ZeroCap reads it (methods.py's reader): its frames' mean as a modes.Target. (`most`
    is for a method that samples by itself; ZeroCap's frames are asked for.)"""
    vector, frames_used = video_target(engine, source, name, frames=frames, every=every)
    return Target(vector, name, frames_used)
