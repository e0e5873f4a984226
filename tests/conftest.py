import os
import sys
import warnings

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

from tiny_models import write_image, write_weights  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def weights_root(tmp_path_factory):
    """A weights/ folder in the real layout, with tiny random-weight models."""
    return write_weights(str(tmp_path_factory.mktemp("weights")), seed=0)


@pytest.fixture(scope="session")
def lm_dir(weights_root):
    return os.path.join(weights_root, "gpt2-medium")


@pytest.fixture(scope="session")
def clip_file(weights_root):
    return os.path.join(weights_root, "clip", "ViT-B-32.pt")


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    return [write_image(str(d / f"img{i}.png"), seed=i) for i in range(4)]


@pytest.fixture(scope="session")
def engine(lm_dir, clip_file):
    """The default (fast) form on the tiny models."""
    from zerocap import ZeroCap

    return ZeroCap.load(lm_dir, clip_file, device="cpu")


@pytest.fixture(scope="session")
def exact_engine(lm_dir, clip_file):
    """The exact form (the authors' operation order) on the same models."""
    from zerocap import ZeroCap

    return ZeroCap.load(lm_dir, clip_file, device="cpu", form="exact")
