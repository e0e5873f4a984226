"""A toy method for tests/test_extending.py: the plain LM's greedy continuation (no CLIP), one
`Method` entry and the classes it names, as a new method's own room would be. `method()` builds
the entry; `methods.register(method())` adds it. The real container's test
(test_a_new_method_is_served_by_the_container) registers it in the server's worker through the
tests' start-up hook (tests/hooks/sitecustomize.py, ZEROCAP_TEST_TOY_METHOD=1)."""
import dataclasses
import time

import torch

from zerocap import methods, outputs
from zerocap.config import KnobTable, check_knobs, knob
from zerocap.decoding import Snapshot, tell
from zerocap.outputs import Out, Recorded

NAME = "greedy"


@dataclasses.dataclass(frozen=True)
class GreedyConfig(KnobTable):
    cond_text: str = knob("Image of a", "prompt the caption continues", max_length=300)
    max_tokens: int = knob(3, "tokens generated at most", 1, 10)
    greedy_bonus: float = knob(0.0, "toy knob: added to every logit (changes nothing but the record)", 0.0, 1.0,
                               container=(0.0, 1.0))
    step_pause: float = knob(0.0, "toy knob: seconds each step waits (a request to cancel mid-flight)", 0.0, 5.0,
                             container=(0.0, 5.0))

    def validate(self):
        check_knobs(self)
        return self


@dataclasses.dataclass
class GreedyResult(Recorded):
    caption: str
    target: str
    greedy_bonus: float
    tokens: int
    seconds: float = 0.0
    details: object = None

    def to_dict(self):
        return {**super().to_dict(), "method": NAME}

    def container_fields(self):
        return {"caption": self.caption, "greedy_bonus": self.greedy_bonus}


class GreedyRequest:
    cost = 1.0  # its steps are cheap: a lane of its own beside ZeroCap's

    def __init__(self, engine, target, cfg, on_step=None):
        self.cfg, self.name, self.error, self.shared, self.joined = cfg, target.name, None, [], time.time()
        self.details = getattr(target, "details", None)
        self.on_step = on_step
        self.tokens = engine.tokenizer.encode(engine.prompt_prefix + cfg.cond_text)
        self.start = len(self.tokens)

    @property
    def done(self):
        return len(self.tokens) - self.start >= self.cfg.max_tokens

    def new_batch(self, engine, max_requests=None):
        return GreedyBatch(engine)


class GreedyBatch:
    def __init__(self, engine):
        self.engine, self.requests = engine, []

    def __len__(self):
        return len(self.requests)

    def accepts(self, request, most=None):
        return most is None or len(self.requests) < most

    def add(self, request):
        self.requests.append(request)

    def remove(self, request):
        self.requests.remove(request)

    def step(self, only=None):
        stepped = list(self.requests if only is None else only)
        for r in stepped:
            time.sleep(r.cfg.step_pause)
            with torch.no_grad():
                logits = self.engine.lm(torch.tensor([r.tokens])).logits[0, -1] + r.cfg.greedy_bonus
            r.tokens.append(int(logits.argmax()))
            r.shared.append(len(stepped))
            tell(self, r)
        finished = [r for r in self.requests if r.done or r.error is not None]
        for r in finished:
            self.remove(r)
        return finished

    def result(self, r):
        text = self.engine.tokenizer.decode(r.tokens[r.start:])
        return GreedyResult(r.cfg.cond_text + text, r.name, r.cfg.greedy_bonus, len(r.tokens) - r.start,
                            time.time() - r.joined, r.details)

    def snapshot(self, r):
        text = self.engine.tokenizer.decode(r.tokens[r.start:])
        return Snapshot("token", len(r.tokens) - r.start, r.cfg.max_tokens, text, r.cfg.cond_text + text)


class Greedy:  # no loop of its own: the engine's (decoding.py) and the scheduler's step its batches
    name, Config = NAME, GreedyConfig

    def __init__(self, engine):
        self.engine = engine

    def check(self, cfg):
        return cfg.validate()

    def request(self, target, cfg, on_step=None):
        return GreedyRequest(self.engine, target, cfg, on_step)


SAID = {"caption": "the prompt and the LM's greedy continuation", "method": NAME, "mode": "the mode",
        "target": "what was captioned", "cond_text": "the prompt", "tokens": "tokens generated",
        "seconds": "seconds", "frame_times": "a clip's frames' times", "frames": "a clip's frames",
        "frames_asked": "0", "frames_sampling": "empty"}


def method() -> methods.Method:
    output = {name: Out(outputs.COMMON[name], text) for name, text in SAID.items()}
    output["greedy_bonus"] = Out("float", "the toy knob's value")
    return methods.Method(NAME, "toy: the plain LM's greedy continuation", GreedyConfig, False, Greedy,
                          methods.ZEROCAP.read_clip, output=output)
