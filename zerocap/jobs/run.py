"""Running a dataset job: skip what the results file has, caption the rest in batches, and hand
each record on (results file, stdout) as soon as it is done.

Only the inputs' names are held (inputs.py); each image is read when its batch runs. An input
that fails gets an error record ({"image": ..., "source": ..., "error": ...}) and the job goes on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from ..errors import InputError
from .inputs import Input
from .results import ResultsFile


def caption_batch(engine, items: list[Input], mode, cfg, options: dict | None = None,
                  progress=None) -> list[dict]:
    """Result records for one batch of a mode's inputs: each input's target (an error record when
    it fails), then one decode of the good ones together. progress: the per-token callback."""
    key = mode.kind.name
    records: list[dict | None] = [None] * len(items)
    good, targets = [], []
    for i, item in enumerate(items):
        try:
            targets.append(mode.kind.target(engine, item.source, item.name, **(options or {})))
        except InputError as e:
            records[i] = {key: item.name, "source": item.source, "error": str(e)}
            continue
        good.append(i)
    if good:
        results = engine.decode_targets(targets, cfg, progress)
        for i, result in zip(good, results):
            records[i] = {key: items[i].name, "source": items[i].source, **result.to_dict()}
    return records


@dataclass
class Summary:
    captioned: int = 0
    failed: int = 0
    skipped: int = 0  # already in the output file
    earlier_failures: int = 0  # of the skipped: error lines from an earlier run
    seconds: float = 0.0
    unit: str = "images"
    failures: list[str] = field(default_factory=list)

    def line(self, out: str | None) -> str:
        skipped = f", skipped {self.skipped} already in {out}" if self.skipped else ""
        earlier = f" (+{self.earlier_failures} earlier, kept)" if self.earlier_failures else ""
        rate = f", {self.captioned / self.seconds:.2f} {self.unit}/s" if self.captioned and self.seconds else ""
        where = f"; results in {out}" if out else ""
        return f"captioned {self.captioned}, failed {self.failed}{earlier}{skipped}; {self.seconds:.1f} s{rate}{where}"

    @property
    def any_failed(self) -> bool:
        return bool(self.failed or self.earlier_failures)


def run_job(inputs: list[Input], batches: Callable[[Iterable[list[Input]]], Iterator[list[dict]]],
            emit: Callable[[dict], None], results: ResultsFile | None = None, batch_size: int = 8,
            key: str = "image", progress=None, unit: str = "images") -> Summary:
    """Caption `inputs` (skipping those in `results`), `batch_size` at a time through `batches`
    (which maps batches of inputs to their records, in order), and `emit` each record when done."""
    summary, start = Summary(unit=unit), time.perf_counter()
    todo = []
    for item in inputs:
        if results is not None and item in results:
            summary.skipped += 1
            summary.earlier_failures += results.failed(item)
        else:
            todo.append(item)
    if progress is not None:
        progress.reset(total=len(todo))
    chunks = (todo[i:i + batch_size] for i in range(0, len(todo), batch_size))
    for records in batches(chunks):
        for record in records:
            if results is not None:
                results.write(record)
            emit(record)
            if "error" in record:
                summary.failed += 1
                summary.failures.append(record[key])
            else:
                summary.captioned += 1
            if progress is not None:
                progress.update(1)
    summary.seconds = time.perf_counter() - start
    return summary
