"""Running a dataset job: skip what the results file has, caption the rest on a backend
(backends.py), and hand each record on as soon as it is done: to the results file at once, to
stdout in input order.

Only the inputs' names are held (inputs.py); each image is read when its batch runs. An input
that fails gets an error record ({"image": ..., "source": ..., "error": ...}) and the job goes on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..errors import InputError
from .inputs import Input
from .results import ResultsFile


def caption_batch(engine, items: list[Input], mode, cfg, options: dict | None = None,
                  progress=None) -> list[dict]:
    """Result records for one batch of a mode's inputs, decoded together (a Ray actor's work):
    each input's target (an error record when it fails), then one decode of the good ones."""
    key = mode.kind.name
    records: list[dict | None] = [None] * len(items)
    good, targets = [], []
    for i, item in enumerate(items):
        try:
            targets.append(mode.kind.target(engine, item.source, item.name, cfg=cfg, **(options or {})))
        except InputError as e:
            records[i] = error_record(key, item, e)
            continue
        good.append(i)
    if good:
        results = engine.decode_targets(targets, cfg, progress)
        for i, result in zip(good, results):
            records[i] = result_record(key, items[i], result)
    return records


def error_record(key: str, item: Input, error: Exception) -> dict:
    return {key: item.name, "source": item.source, "error": str(error)}


def result_record(key: str, item: Input, result) -> dict:
    return {key: item.name, "source": item.source, **result.to_dict()}


@dataclass
class Summary:
    captioned: int = 0
    failed: int = 0
    skipped: int = 0  # already in the output file
    earlier_failures: int = 0  # of the skipped: error lines from an earlier run
    seconds: float = 0.0
    unit: str = "images"
    failures: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # names recorded with other content: captioned again

    def line(self, out: str | None) -> str:
        skipped = f", skipped {self.skipped} already in {out}" if self.skipped else ""
        earlier = f" (+{self.earlier_failures} earlier, kept)" if self.earlier_failures else ""
        rate = f", {self.captioned / self.seconds:.2f} {self.unit}/s" if self.captioned and self.seconds else ""
        where = f"; results in {out}" if out else ""
        return f"captioned {self.captioned}, failed {self.failed}{earlier}{skipped}; {self.seconds:.1f} s{rate}{where}"

    @property
    def any_failed(self) -> bool:
        return bool(self.failed or self.earlier_failures)


def with_content(record: dict, content: str | None) -> dict:
    """The record with its input's content identity after its `source` (results.py: how a resumed
    job knows a file it captioned under any name, and new content under a name it knows)."""
    if content is None:
        return record
    out = {}
    for k, v in record.items():
        out[k] = v
        if k == "source":
            out["content"] = content
    return out


def run_job(inputs: list[Input], backend: Callable[[list[Input]], Iterator[tuple[int, dict]]],
            emit: Callable[[dict], None], results: ResultsFile | None = None, key: str = "image",
            progress=None, unit: str = "images", settings: dict | None = None) -> Summary:
    """Caption `inputs` (skipping those in `results`) on `backend`, which yields (index, record)
    as each is done; write each record, with the `settings` that made it, to `results` at once,
    and `emit` them in input order."""
    summary, start = Summary(unit=unit), time.perf_counter()
    todo = []
    for item in inputs:
        if results is not None and item in results:
            summary.skipped += 1
            summary.earlier_failures += results.failed(item)
        else:
            if results is not None and results.changed(item):
                summary.changed.append(item.name)
            todo.append(item)
    if progress is not None:
        progress.reset(total=len(todo))
    ready: dict[int, dict] = {}  # done, waiting for an earlier input to be emitted first
    following = 0
    for index, record in backend(todo):
        if settings is not None:
            record = {**record, "settings": settings}
        if results is not None:
            record = with_content(record, results.content(todo[index]))
            results.write(record)
        if "error" in record:
            summary.failed += 1
            summary.failures.append(record[key])
        else:
            summary.captioned += 1
        if progress is not None:
            progress.update(1)
        ready[index] = record
        while following in ready:
            emit(ready.pop(following))
            following += 1
    summary.seconds = time.perf_counter() - start
    return summary
