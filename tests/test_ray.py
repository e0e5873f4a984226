"""zerocap caption --ray: the same captions as the plain path, from a local Ray with 2 CPU actors."""
import json
import shutil

import pytest

from zerocap.cli import main

ray = pytest.importorskip("ray", reason="--ray needs pip install 'zerocap[ray]'")
FAST = ["--top-k", "16", "--beam-size", "2", "--max-tokens", "2", "--device", "cpu"]


@pytest.fixture
def local_ray():
    yield
    ray.shutdown()


def test_ray_gives_the_plain_paths_captions_and_resumes(local_ray, tmp_path, images, lm_dir, clip_file, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, p in enumerate(images):
        shutil.copy(p, folder / f"{i}.png")
    (folder / "bad.png").write_text("not an image")
    models = ["--lm", lm_dir, "--clip", clip_file, *FAST, "--batch-size", "2"]
    plain, on_ray = tmp_path / "plain.jsonl", tmp_path / "ray.jsonl"
    assert main(["caption", str(folder), *models, "--out", str(plain)]) == 1
    on_ray.write_text(plain.read_text().splitlines(keepends=True)[0])  # one image done earlier: skipped
    assert main(["caption", str(folder), *models, "--out", str(on_ray), "--ray", "--actors", "2"]) == 1
    err = capsys.readouterr().err
    assert "captioned 3, failed 1, skipped 1 already in" in err

    def by_image(path):
        return {r["image"]: ([b["text"] for b in r["beams"]] if "beams" in r else r["error"])
                for r in map(json.loads, path.read_text().splitlines())}

    assert by_image(on_ray) == by_image(plain) and len(by_image(on_ray)) == 5
    lines = on_ray.read_text().splitlines()
    assert len(lines) == 5  # each image once


def test_a_config_the_models_refuse_is_refused_before_ray_starts(capsys, images, lm_dir, clip_file):
    code = main(["caption", images[0], "--lm", lm_dir, "--clip", clip_file, *FAST, "--ray",
                 "--cond-text", "a " * 80])
    assert code == 2 and not ray.is_initialized()
    assert capsys.readouterr().err.strip() == ("zerocap: error: cond_text is too long for CLIP: 80 CLIP tokens;"
                                               " at most 74 leave room for a generated word")
