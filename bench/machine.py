"""What every benchmark says about where it ran, and how it keeps its table (no torch here: the
served benchmark's clients import it too)."""
from __future__ import annotations

import platform


def cpu_model() -> str:
    """The CPU's name with its family and model numbers ("AMD EPYC ... (family 25 model 17)"): the
    name alone does not tell one generation from another on a cloud machine."""
    name, facts = platform.processor() or platform.machine(), {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and "name" not in facts:
                    facts["name"] = value.strip()
                elif key in ("cpu family", "model") and key not in facts:
                    facts[key] = value.strip()
                if not line.strip() and facts:  # the first processor's block is enough
                    break
    except OSError:
        return name
    where = f" (family {facts['cpu family']} model {facts['model']})" if "cpu family" in facts and "model" in facts else ""
    return facts.get("name", name) + where


def append(path: str, text: str) -> None:
    """Append a section to the results file; '' or None: keep it on the screen only."""
    if path:
        with open(path, "a") as f:
            f.write(text)
