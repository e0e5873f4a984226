"""`zerocap eval`: COCO metrics against values worked out by hand, CLIP-S against its formula."""
import json
import math
import os

import pytest
import torch

from zerocap import InputError
from zerocap.cli import main
from zerocap.evaluate import CLIP_PREFIX, evaluate, java_available, read_references, simple_tokens

pytest.importorskip("pycocoevalcap", reason="the COCO metrics need pip install 'zerocap[eval]'")


def write_captions(path, captions, errors=()):
    with open(path, "w") as f:
        for name, caption in captions.items():
            f.write(json.dumps({"image": name, "best_mixed": caption, "best_clip": caption.upper(),
                                "best_fluency": caption, "cond_text": "Image of a"}) + "\n")
        for name in errors:
            f.write(json.dumps({"image": name, "error": "not an image"}) + "\n")
    return str(path)


def coco_refs(path, refs: dict, extra=()):
    images = [{"id": i + 1, "file_name": name} for i, name in enumerate(list(refs) + list(extra))]
    annotations = [{"image_id": i + 1, "id": 100 * i + j, "caption": c}
                   for i, name in enumerate(refs) for j, c in enumerate(refs[name])]
    annotations += [{"image_id": len(refs) + k + 1, "id": 9000 + k, "caption": "unused"} for k in range(len(extra))]
    json.dump({"images": images, "annotations": annotations}, open(path, "w"))
    return str(path)


def karpathy_refs(path, refs: dict):
    json.dump({"dataset": "coco", "images": [
        {"filename": name, "imgid": i, "cocoid": 1000 + i, "split": "test",
         "sentences": [{"raw": c, "tokens": c.lower().split()} for c in caps]}
        for i, (name, caps) in enumerate(refs.items())]}, open(path, "w"))
    return str(path)


# a cat sat on a mat  vs  a cat sat on the mat: 1-grams 5/6, 2-grams 3/5, 3-grams 2/4, 4-grams 1/3,
# equal lengths (brevity penalty 1); BLEU-n is the geometric mean of the first n precisions
QUICK = ("METEOR", "SPICE")  # the Java programs take seconds to start; tested on their own below
HAND_BLEU = [5 / 6, (5 / 6 * 3 / 5) ** 0.5, (5 / 6 * 3 / 5 * 2 / 4) ** (1 / 3), (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25]


@pytest.mark.parametrize("tokenizer", ["ptb", "simple"])
def test_bleu_on_a_hand_worked_example(tmp_path, tokenizer):
    if tokenizer == "ptb" and not java_available():
        pytest.skip("the PTB tokenizer needs Java")
    caps = write_captions(tmp_path / "c.jsonl", {"photos/cat.jpg": "A cat sat on a mat."})
    refs = coco_refs(tmp_path / "r.json", {"cat.jpg": ["a cat sat on the mat"]})
    report = evaluate(caps, refs, tokenizer=tokenizer, skip=QUICK)
    assert report.skipped == {"METEOR": "not asked for", "SPICE": "not asked for", "CLIP-S": "not asked for"}
    got = [report.scores[f"BLEU-{n}"] for n in range(1, 5)]
    assert got == pytest.approx(HAND_BLEU, abs=1e-6)
    assert report.per_image["photos/cat.jpg"]["BLEU-4"] == pytest.approx(HAND_BLEU[3], abs=1e-6)
    assert report.scores["ROUGE-L"] == pytest.approx(_rouge_l("a cat sat on a mat", "a cat sat on the mat"), abs=1e-6)


def _rouge_l(c, r, beta=1.2):
    """ROUGE-L F with pycocoevalcap's beta, from the longest common subsequence."""
    c, r = c.split(), r.split()
    table = [[0] * (len(r) + 1) for _ in range(len(c) + 1)]
    for i, a in enumerate(c):
        for j, b in enumerate(r):
            table[i + 1][j + 1] = table[i][j] + 1 if a == b else max(table[i][j + 1], table[i + 1][j])
    lcs = table[-1][-1]
    p, rec = lcs / len(c), lcs / len(r)
    return (1 + beta ** 2) * p * rec / (rec + beta ** 2 * p)


def test_both_annotation_formats_give_the_same_report(tmp_path):
    refs = {"a.jpg": ["a dog runs on grass", "the dog is running"], "b.jpg": ["two birds on a wire"]}
    caps = write_captions(tmp_path / "c.jsonl", {"a.jpg": "a dog running on the grass", "b.jpg": "birds on a wire"})
    one = evaluate(caps, coco_refs(tmp_path / "coco.json", refs), tokenizer="simple", skip=QUICK)
    two = evaluate(caps, karpathy_refs(tmp_path / "karpathy.json", refs), tokenizer="simple", skip=QUICK)
    assert one.images == two.images == 2 and one.scores == two.scores and one.scores["CIDEr"] > 0


def test_missing_and_extra_images_are_counted_and_coco_ids_match(tmp_path):
    json.dump({"images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg"}, {"id": 7, "file_name": "b.jpg"},
                          {"id": 8, "file_name": "c.jpg"}],
               "annotations": [{"image_id": 42, "caption": "a red bus"}, {"image_id": 7, "caption": "a tree"},
                               {"image_id": 8, "caption": "a road"}]}, open(tmp_path / "r.json", "w"))
    caps = write_captions(tmp_path / "c.jsonl", {"val/000000000042.jpg": "a red bus", "other.jpg": "a cat"},
                          errors=["broken.jpg"])
    report = evaluate(caps, str(tmp_path / "r.json"), tokenizer="simple", skip=QUICK)
    assert report.images == 1 and report.scores["BLEU-1"] == pytest.approx(1.0)
    assert set(report.per_image) == {"val/000000000042.jpg"}
    assert report.notes == ["1 error lines in " + caps + " (images that failed) not evaluated",
                            "1 captioned images have no references, not in the COCO metrics (e.g. other.jpg)",
                            "2 images of the references were not captioned"]
    refs_by = read_references(str(tmp_path / "r.json"))
    assert refs_by.find("img2.png") is None  # a number in a name is not a COCO id
    assert refs_by.find("frames/7.png") is None and refs_by.find("frames/7.png", "id") == 1  # only when asked


@pytest.mark.parametrize("content,message,strip", [
    ("", "has no captions to evaluate", False),
    (json.dumps({"image": "a.jpg", "error": "x"}) + "\n", r"has no captions to evaluate \(1 error lines\)", False),
    ("not json\n", "line 1: not a caption line", False),
    (json.dumps({"image": ["a.jpg"], "best_mixed": "x"}) + "\n", "line 1: not a caption line", False),
    (json.dumps({"image": "a.jpg"}) + "\n", r"line 1 \(a.jpg\): no 'best_mixed' caption", False),
    (json.dumps({"image": "a.jpg", "best_mixed": None}) + "\n", r"line 1 \(a.jpg\): a null instead of a 'best_mixed'",
     False),
    (json.dumps({"image": "a.jpg", "best_mixed": None, "cond_text": "x"}) + "\n", "a null instead of", True),
    (json.dumps({"image": "a.jpg", "best_mixed": 3, "cond_text": None}) + "\n", "a 3 instead of", True),
    (b"\xff\xfe\x00 not text\n", "line 1: not a caption line", False),
])
def test_captions_files_with_nothing_to_evaluate(tmp_path, content, message, strip):
    caps = tmp_path / "c.jsonl"
    caps.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError, match=message):
        evaluate(str(caps), coco_refs(tmp_path / "r.json", {"a.jpg": ["x"]}), tokenizer="simple", strip_prompt=strip)


@pytest.mark.parametrize("caption,message", [(None, "is null, not a text"), (5, "is 5, not a text")])
def test_a_reference_that_is_not_text_is_named(tmp_path, caption, message):
    json.dump({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "id": 9, "caption": caption}]},
              open(tmp_path / "r.json", "w"))
    with pytest.raises(InputError, match=f"the caption of annotation 9 {message}"):
        evaluate(write_captions(tmp_path / "c.jsonl", {"a.jpg": "x"}), str(tmp_path / "r.json"), tokenizer="simple")


def test_ambiguous_and_orphan_references_are_reported_not_scored(tmp_path):
    """Two captioned images with one file name in different folders match one reference image:
    at most one of them is it, so neither is scored, and the report says so; so do annotations
    of unknown images and a bare number taken for a COCO id only when asked."""
    json.dump({"images": [{"id": 1, "file_name": "x.jpg"}, {"id": 2, "file_name": "y.jpg"}],
               "annotations": [{"image_id": 1, "caption": "a red bus"}, {"image_id": 2, "caption": "a tree"},
                               {"image_id": 99, "caption": "lost"}]}, open(tmp_path / "r.json", "w"))
    caps = write_captions(tmp_path / "c.jsonl", {"a/x.jpg": "a red bus", "b/x.jpg": "a blue car", "y.jpg": "a tree",
                                                "frames/1.jpg": "a red bus"})
    report = evaluate(caps, str(tmp_path / "r.json"), tokenizer="simple", skip=QUICK)
    assert report.images == 1 and set(report.per_image) == {"y.jpg"}
    notes = " | ".join(report.notes)
    assert "annotations of 1 image ids that are not among the references' images were ignored" in notes
    assert "2 captioned images match a reference image that another also matches (e.g. a/x.jpg, b/x.jpg)" in notes
    assert "1 captioned images have no references" in notes and "frames/1.jpg" in notes
    by_id = evaluate(caps, str(tmp_path / "r.json"), tokenizer="simple", skip=QUICK, how="id")
    assert set(by_id.per_image) == {"frames/1.jpg"}  # by id only: 1.jpg is image 1; x.jpg, y.jpg have no id
    assert by_id.scores["BLEU-1"] == pytest.approx(1.0)  # "a red bus", image 1's reference


def test_references_in_another_format_are_refused(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"annotations": []}))
    caps = write_captions(tmp_path / "c.jsonl", {"a.jpg": "x"})
    with pytest.raises(InputError, match="not COCO caption annotations"):
        evaluate(caps, str(tmp_path / "r.json"))


def test_without_java_what_runs_is_computed_and_the_rest_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on PATH
    assert not java_available()
    caps = write_captions(tmp_path / "c.jsonl", {"cat.jpg": "A cat sat on a mat."})
    refs = coco_refs(tmp_path / "r.json", {"cat.jpg": ["a cat sat on the mat"]})
    report = evaluate(caps, refs)  # METEOR and SPICE asked for, but there is no Java
    assert report.tokenizer.startswith("simple (Java not found; not the PTB tokenisation")
    assert [report.scores[f"BLEU-{n}"] for n in range(1, 5)] == pytest.approx(HAND_BLEU, abs=1e-6)
    assert report.skipped["METEOR"] == report.skipped["SPICE"] == "needs Java (java on PATH)"
    assert "METEOR" not in report.scores and "skipped METEOR: needs Java" in report.table()
    with pytest.raises(InputError, match="the PTB tokenizer needs Java"):
        evaluate(caps, refs, tokenizer="ptb")


def test_simple_tokens_split_like_ptb():
    assert simple_tokens("A man's dog doesn't bark, see?") == "a man 's dog does n't bark see"
    # words of any script and decimals stay whole, as the PTB tokeniser keeps them
    assert simple_tokens("A naïve café, 3.5 km; 1,000 Ärzte.") == "a naïve café 3.5 km 1,000 ärzte"


@pytest.mark.slow  # starts a Java VM for METEOR
@pytest.mark.skipif(not java_available(), reason="METEOR needs Java")
def test_meteor_runs_with_java(tmp_path):
    caps = write_captions(tmp_path / "c.jsonl", {"cat.jpg": "a cat sat on the mat"})
    report = evaluate(caps, coco_refs(tmp_path / "r.json", {"cat.jpg": ["a cat sat on the mat"]}), skip=("SPICE",))
    assert report.scores["METEOR"] == pytest.approx(1.0, abs=0.01) and report.tokenizer == "ptb"


def test_clip_s_and_refclip_s_are_the_formula(tmp_path, engine, images):
    """CLIP-S = 2.5 max(cos(text, image), 0); RefCLIP-S = harmonic mean of it and the best reference
    similarity (Hessel et al. 2021), computed here directly with the same CLIP."""
    import clip

    from zerocap.images import load_image

    captions = {images[0]: "a photo of noise", images[1]: "static on a screen"}
    refs = {os.path.basename(images[0]): ["random coloured pixels", "noise"],
            os.path.basename(images[1]): ["a grey screen"]}
    report = evaluate(write_captions(tmp_path / "c.jsonl", captions), coco_refs(tmp_path / "r.json", refs),
                      tokenizer="simple", scorer=engine.scorer, skip=QUICK)

    def text(t):
        f = engine.scorer.clip.encode_text(clip.tokenize([CLIP_PREFIX + t]))[0]
        return f / f.norm()

    with torch.no_grad():
        for path, caption in captions.items():
            v = engine.scorer.clip.encode_image(engine.targets.preprocess(load_image(path))[None])[0]
            v = v / v.norm()
            c = text(caption)
            clip_s = 2.5 * max(float(c @ v), 0.0)
            best = max(max(float(c @ text(r)) for r in refs[os.path.basename(path)]), 0.0)
            ref_s = 2 * clip_s * best / (clip_s + best) if clip_s + best > 0 else 0.0
            assert report.per_image[path]["CLIP-S"] == pytest.approx(clip_s, abs=1e-5)
            assert report.per_image[path]["RefCLIP-S"] == pytest.approx(ref_s, abs=1e-5)
    assert report.scores["CLIP-S"] == pytest.approx(sum(report.per_image[p]["CLIP-S"] for p in captions) / 2)
    assert not math.isnan(report.scores["RefCLIP-S"])


def test_the_command(tmp_path, capsys, images, clip_file, monkeypatch):
    monkeypatch.setenv("ZEROCAP_OFFLINE", "1")
    caps = write_captions(tmp_path / "c.jsonl", {images[0]: "a cat sat on a mat"})
    refs = coco_refs(tmp_path / "r.json", {os.path.basename(images[0]): ["a cat sat on the mat"]})
    per = tmp_path / "per.jsonl"
    code = main(["eval", caps, "--refs", refs, "--clip", clip_file, "--device", "cpu", "--tokenizer", "simple",
                 "--field", "best_clip", "--per-image", str(per), "--skip", "METEOR,SPICE"])
    out = capsys.readouterr().out
    assert code == 0 and "BLEU-4" in out and "CLIP-S" in out
    assert out.startswith("1 images with references (COCO metrics, RefCLIP-S), 1 images for CLIP-S; field best_clip")
    line = json.loads(per.read_text())
    assert line["image"] == images[0] and line["zerocap"] == "scores/1" and "BLEU-4" in line
    # an eval again into its own per-image file replaces it (it is zerocap's)
    assert main(["eval", caps, "--refs", refs, "--skip", "CLIP-S,METEOR,SPICE", "--tokenizer", "simple",
                 "--per-image", str(per)]) == 0
    capsys.readouterr()
    assert len(per.read_text().splitlines()) == 1 and "CLIP-S" not in json.loads(per.read_text())
    code = main(["eval", caps, "--refs", refs, "--skip", "CLIP-S,METEOR,SPICE", "--tokenizer", "simple", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["scores"]["BLEU-1"] == pytest.approx(5 / 6) and report["skipped"]["CLIP-S"] == "not asked for"
    assert main(["eval", str(tmp_path / "none.jsonl"), "--refs", refs, "--skip", "CLIP-S"]) == 2
    assert "cannot read the captions" in capsys.readouterr().err
    assert main(["eval", caps, "--refs", refs, "--skip", "BLEU"]) == 2
    assert "cannot skip BLEU; the metrics that can be skipped: METEOR, SPICE, CLIP-S" in capsys.readouterr().err


def test_clip_s_of_a_long_thin_image_takes_little_memory(tmp_path, engine):
    """The same bound as captioning: CLIP sees the central part of an image longer than 8:1."""
    import resource

    from PIL import Image

    thin = tmp_path / "thin.png"
    Image.new("RGB", (400_000, 1), (10, 200, 30)).save(thin)
    caps = write_captions(tmp_path / "c.jsonl", {str(thin): "a green line"})
    refs = coco_refs(tmp_path / "r.json", {"thin.png": ["a line"]})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = evaluate(caps, refs, tokenizer="simple", scorer=engine.scorer,
                      skip=QUICK)
    assert "CLIP-S" in report.scores
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 100  # MB


def test_one_real_file_under_two_spellings_is_one_image(tmp_path):
    """A captions file can hold one real file twice (a second run with --mix-settings, or files
    joined by hand): the same `source` is one image, scored by its last line, not two images that
    match one reference and both get dropped."""
    refs = coco_refs(tmp_path / "r.json", {f"{n}.jpg": [f"a {n} dog"] for n in "abcd"})
    lines = [{"image": f"{n}.jpg", "source": f"/data/{n}.jpg", "best_mixed": f"a {n} cat"} for n in "abcd"]
    lines.append({"image": "./old/../a.jpg", "source": "/data/a.jpg", "best_mixed": "a a dog"})
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    report = evaluate(str(tmp_path / "c.jsonl"), refs, tokenizer="simple", skip=QUICK + ("CLIP-S",))
    assert report.images == 4 and set(report.per_image) == {"a.jpg", "b.jpg", "c.jpg", "d.jpg"}
    assert report.per_image["a.jpg"]["BLEU-1"] == pytest.approx(1.0)  # the last line, "a a dog"
    assert any("1 images have more than one line" in n and "each is counted once" in n for n in report.notes)
    assert not any("match a reference image that another also matches" in n for n in report.notes)


def test_repeated_image_ids_are_named(tmp_path):
    json.dump({"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}],
               "annotations": [{"image_id": 1, "id": 5, "caption": "a dog"}]}, open(tmp_path / "r.json", "w"))
    refs = read_references(str(tmp_path / "r.json"))
    assert any("1 image ids belong to more than one of the references' images (e.g. 1)" in n for n in refs.notes)


@pytest.mark.parametrize("value,said", [("NaN", "NaN"), ("Infinity", "Infinity"), ("true", "true"), ("1.0", "1.0"),
                                        ('"1"', '"1"'), ("null", "null")])
@pytest.mark.parametrize("where", ["image", "annotation", "karpathy"])
def test_an_image_id_that_is_not_an_integer_is_refused_in_words(tmp_path, value, said, where):
    if where == "karpathy":
        text = ('{"images": [{"filename": "a.jpg", "cocoid": %s, "sentences": [{"raw": "a dog"}]}]}' % value)
        message = f"the cocoid of a.jpg is {said}, not an image id"
    elif where == "image":
        text = ('{"images": [{"id": %s, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "id": 5,'
                ' "caption": "a dog"}]}' % value)
        message = f"image 1's id is {said}, not an image id"
    else:
        text = ('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": %s, "id": 5,'
                ' "caption": "a dog"}]}' % value)
        message = f"the image_id of annotation 5 is {said}, not an image id"
    (tmp_path / "r.json").write_text(text)
    with pytest.raises(InputError, match=message.replace("(", "\\(").replace(")", "\\)")):
        read_references(str(tmp_path / "r.json"))


# ---- nothing lost, third round: eval's reading ------------------------------------------------------
def test_clip_s_reads_the_image_the_line_was_captioned_from_not_one_of_its_name_here(tmp_path, engine, images,
                                                                                     monkeypatch):
    """A line names x.png and records its source; eval run from a folder holding another x.png
    scores the captioned image (its source), not the stranger; --image-root reads relative names."""
    real = tmp_path / "data"
    real.mkdir()
    os.symlink(images[0], real / "x.png")
    other = tmp_path / "elsewhere"
    other.mkdir()
    os.symlink(images[1], other / "x.png")
    caps = tmp_path / "c.jsonl"
    caps.write_text(json.dumps({"image": "x.png", "source": os.path.realpath(real / "x.png"),
                                "best_mixed": "a photo"}) + "\n")
    refs = coco_refs(tmp_path / "r.json", {"x.png": ["a picture"]})
    monkeypatch.chdir(other)
    want = evaluate(write_captions(tmp_path / "direct.jsonl", {images[0]: "a photo"}),
                    coco_refs(tmp_path / "r2.json", {os.path.basename(images[0]): ["a picture"]}),
                    tokenizer="simple", scorer=engine.scorer, skip=QUICK).scores["CLIP-S"]
    got = evaluate(str(caps), refs, tokenizer="simple", scorer=engine.scorer, skip=QUICK)
    assert got.scores["CLIP-S"] == pytest.approx(want, abs=1e-6)
    rooted = evaluate(str(caps), refs, tokenizer="simple", scorer=engine.scorer, skip=QUICK, image_root=str(other))
    stranger = evaluate(write_captions(tmp_path / "s.jsonl", {images[1]: "a photo"}),
                        coco_refs(tmp_path / "r3.json", {os.path.basename(images[1]): ["a picture"]}),
                        tokenizer="simple", scorer=engine.scorer, skip=QUICK).scores["CLIP-S"]
    assert rooted.scores["CLIP-S"] == pytest.approx(stranger, abs=1e-6)


def test_every_match_ambiguous_is_said_as_such(tmp_path):
    caps = tmp_path / "c.jsonl"
    caps.write_text("".join(json.dumps({"image": f"{d}/x.png", "source": f"/{d}/x.png", "best_mixed": "a cat"}) + "\n"
                            for d in ("a", "b")))
    with pytest.raises(InputError, match="every one of the 2 captioned images matches a reference image that"
                                         " another also matches"):
        evaluate(str(caps), coco_refs(tmp_path / "r.json", {"x.png": ["a cat"]}), tokenizer="simple", skip=QUICK)


@pytest.mark.parametrize("what", ["refs", "captions"])
def test_a_file_without_newlines_is_refused_in_bounded_memory(tmp_path, what):
    import tracemalloc

    big = tmp_path / "big"
    with open(big, "wb") as f:  # sparse: 20 GB of NUL bytes that take no disk
        f.truncate(20 * 10**9)
    caps = write_captions(tmp_path / "c.jsonl", {"a.png": "a cat"})
    refs = coco_refs(tmp_path / "r.json", {"a.png": ["a cat"]})
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as e:
            evaluate(str(big) if what == "captions" else caps, str(big) if what == "refs" else refs,
                     tokenizer="simple", skip=QUICK)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    said = {"refs": "are larger than 500,000,000 bytes (500 MB)", "captions": "line 1 is longer than 16,000,000"}
    assert said[what] in str(e.value)
    assert peak < 1.2e9, f"{peak / 1e6:.0f} MB"  # the limit's worth, not the file's 20 GB


@pytest.mark.parametrize("data,said", [
    ({"images": [{"id": 1, "file_name": "a.png"}], "annotations": {"1": "x"}},
     "its \"annotations\" must be a list of objects, but it is an object"),
    ({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [1, 2]},
     "its \"annotations\" must be a list of objects, but item 1 is 1"),
    ({"images": [{"filename": "a.png", "sentences": {"raw": "x"}}]},
     "the \"sentences\" of image \"a.png\" must be a list of objects, but it is an object"),
    ({"images": [{"filename": "a.png", "sentences": "a cat"}]},
     "the \"sentences\" of image \"a.png\" must be a list of objects, but it is str"),
])
def test_references_of_the_wrong_shape_are_refused_in_words(tmp_path, data, said):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError) as e:
        read_references(str(path))
    assert said in str(e.value), str(e.value)


def test_eval_reads_a_results_file_by_the_jobs_rule(tmp_path):
    """A blank line is nothing and a last line of zerocap's cut short is left out with a note, in
    eval as in a job (which removes the cut line when it resumes)."""
    from zerocap.jobs.results import ResultsFile

    out = tmp_path / "r.jsonl"
    r = ResultsFile(str(out))
    r.write({"image": "x.png", "source": "/d/x.png", "best_mixed": "a cat", "best_clip": "a cat",
             "best_fluency": "a cat", "cond_text": ""})
    r.close()
    with open(out, "ab") as f:
        f.write(b"\n" + out.read_bytes()[:60])
    report = evaluate(str(out), coco_refs(tmp_path / "refs.json", {"x.png": ["a cat"]}), tokenizer="simple",
                      skip=QUICK)
    assert report.images == 1 and any("cut short" in n for n in report.notes), report.notes
    r = ResultsFile(str(out))  # the job's reader: the blank line is nothing, the cut line removed
    r.close()
    assert len(out.read_bytes().splitlines()) == 2 and out.read_bytes().endswith(b"\n")


def test_a_file_of_mixed_settings_is_said(tmp_path):
    caps = tmp_path / "c.jsonl"
    caps.write_text("".join(json.dumps({"image": f"{n}.png", "best_mixed": "a cat", "settings": s}) + "\n"
                            for n, s in (("a", {"mode": "caption"}),
                                         ("b", {"mode": "caption", "method": "pseudo-tokens"}))))
    report = evaluate(str(caps), coco_refs(tmp_path / "r.json", {"a.png": ["a cat"], "b.png": ["a dog"]}),
                      tokenizer="simple", skip=QUICK)
    assert any("made with 2 different settings (a --mix-settings file; method/mode: pseudo-tokens/caption,"
               " zerocap/caption)" in n for n in report.notes), report.notes


def test_some_ambiguous_and_the_rest_unmatched_says_the_ambiguity(tmp_path):
    """The refusal's second half is the ambiguity note, not whichever note came last."""
    caps = tmp_path / "c.jsonl"
    caps.write_text("".join(json.dumps({"image": name, "source": f"/{name}", "best_mixed": "a cat"}) + "\n"
                            for name in ("a/x.png", "b/x.png", "other.png")))
    with pytest.raises(InputError) as e:
        evaluate(str(caps), coco_refs(tmp_path / "r.json", {"x.png": ["a cat"]}), tokenizer="simple", skip=QUICK)
    said = str(e.value)
    assert said.startswith("none of the 3 captioned images is in") and "; 2 captioned images match a reference" in said
