"""How the command line shows results: text or JSON lines on stdout, failures on stderr, a
progress bar on a terminal."""
from __future__ import annotations

import os
import sys
import time

from .jobs.results import KINDS, dumps, marked

FALLBACK_SIZE = (80, 24)  # (columns, rows) for a progress bar where the terminal reports no size


def print_text(d: dict) -> None:
    """A result record as text on stdout."""
    out = sys.stdout
    out.write(f"{d['target']}\n")
    if "sentences" in d:  # the pseudo-token method: their caption first, then what made it
        out.write(f"  best CLIP:    {d['best_clip']}\n  best mixed:   {d['best_mixed']}\n  beams (score):\n")
        for b in d["beams"]:
            out.write(f"    {b['score']:8.3f}  {b['caption']}\n")
        out.write(f"  {len(d['sentences'])} sentences sampled (seed {d['seed']}), in order (CLIP score, log-prob):\n")
        for s in d["sentences"]:
            out.write(f"    {s['clip_score']:8.3f}  {s['log_prob']:8.3f}  {s['text']}\n")
    else:
        out.write(f"  best mixed:   {d['best_mixed']}\n  best CLIP:    {d['best_clip']}\n")
        out.write(f"  best fluency: {d['best_fluency']}\n  beams (score, CLIP similarity, perplexity):\n")
        for b in d["beams"]:
            out.write(f"    {b['score']:8.3f}  {b['clip_score']:6.3f}  {b['perplexity']:10.4g}  {b['caption']}\n")
    if d.get("frame_times"):
        distinct = (f"{d['frames']} distinct frames of {d['frames_asked']} asked" if "frames_asked" in d
                    else f"{d['frames']} kept of {d['frames_sampled']} sampled, {d['sampling']}")
        out.write(f"  frames at {', '.join(f'{t:.2f}' for t in d['frame_times'])} s ({distinct})\n")
    out.write(f"  {d['timing']['tokens']} tokens in {d['timing']['seconds']:.2f} s\n")
    out.flush()


def emitter(as_json: bool, quiet: bool, bar=None, key: str | None = None):
    """What to do with each record as it is done: stdout (text or JSON lines -- a job's marked as
    its results file's lines are, so that saved output can be resumed), failures on stderr
    (above the progress bar, if there is one)."""

    def emit(record: dict) -> None:
        if as_json and not quiet:
            sys.stdout.write(dumps(marked(KINDS[key], record) if key else record) + "\n")
            sys.stdout.flush()
        elif "error" in record:
            message = f"zerocap: error: {record['error']}"
            if bar is not None:
                bar.write(message, file=sys.stderr)
            else:
                print(message, file=sys.stderr)
        elif not quiet:
            print_text(record)

    return emit


PROGRESS_SECONDS = 10.0  # a progress line at most this often where stderr is not a terminal


class ProgressLog:
    """Where stderr is not a terminal (a redirected or logged run): a progress line at most every
    PROGRESS_SECONDS ($ZEROCAP_PROGRESS_SECONDS) -- done/total, the current token or sentence, the
    time so far -- so a long run never looks hung; the same calls as the terminal's bar."""

    def __init__(self, unit: str, seconds: float | None = None):
        self.clock = time.monotonic
        self.unit, self.total, self.done, self.postfix = unit, 0, 0, ""
        if seconds is None:
            try:
                seconds = float(os.environ.get("ZEROCAP_PROGRESS_SECONDS", PROGRESS_SECONDS))
            except ValueError:
                seconds = PROGRESS_SECONDS
        self.every = seconds
        self.start = self.last = self.clock()

    def reset(self, total: int = 0) -> None:
        self.total, self.done = total, 0

    def update(self, n: int = 1) -> None:
        self.done += n
        self._maybe()

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text
        self._maybe()

    def write(self, message: str, file=None) -> None:
        print(message, file=file or sys.stderr, flush=True)

    def close(self) -> None:
        pass

    def _maybe(self) -> None:
        now = self.clock()
        if now - self.last < self.every:
            return
        self.last = now
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"zerocap: progress: {self.done}/{self.total} {self.unit}s done{extra}; {now - self.start:.0f} s so far",
              file=sys.stderr, flush=True)


def progress_bar(unit: str):
    """A progress bar over the inputs on a terminal (done/total, rate, ETA); elsewhere a
    ProgressLog. A terminal that reports no size (0 x 0: a serial console, some containers'
    ttys) gets 80 x 24."""
    if not sys.stderr.isatty():
        return ProgressLog({"img": "image", "clip": "clip"}.get(unit, unit))
    from tqdm import tqdm

    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        size = os.terminal_size((0, 0))
    # tqdm hides a bar below the screen's last row, so a terminal of 0 rows would show none
    shape = {"dynamic_ncols": True} if size.columns and size.lines else {"ncols": FALLBACK_SIZE[0],
                                                                         "nrows": FALLBACK_SIZE[1]}
    return tqdm(total=0, unit=unit, file=sys.stderr, delay=0.5, **shape)  # run_job sets the total
