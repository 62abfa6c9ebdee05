"""The backgrounds stage end to end: CLI, rewrite-only, tiny local models, paste mixing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_shared

from weakpaste.bank.from_coco import BankConfig, BankInputs, run_bank_from_coco
from weakpaste.cli import main
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.run import RunOptions
from weakpaste.io.images import read_image, write_image
from weakpaste.paste.run import PasteConfig, PasteInputs, mixed_background_order, run_paste


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def captions_file(tmp_path) -> tuple[Path, Path]:
    images = tmp_path / "src"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.jpg"):
        write_image(images / name, rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    doc = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
           "annotations": [{"id": 1, "image_id": 1, "caption": "A man walks his dog."},
                           {"id": 2, "image_id": 1, "caption": "Two people on a bench."},
                           {"id": 3, "image_id": 2, "caption": "A quiet mountain lake."}]}
    (tmp_path / "captions.json").write_text(json.dumps(doc))
    return tmp_path / "captions.json", images


def _lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "captions.jsonl").read_text().splitlines()]


def test_rewrite_only_cli(captions_file, tmp_path, capsys):
    caps, images = captions_file
    argv = ["backgrounds", "--captions", str(caps), "--images", str(images), "--out",
            str(tmp_path / "o1"), "--rewrite-only", "--seed", "3", "--quiet"]
    assert main(argv) == 0
    assert "rewrote 2 of 3 captions (4 replacements)" in capsys.readouterr().out
    lines = _lines(tmp_path / "o1")
    assert [(d["index"], d["image"], d["caption_id"]) for d in lines] == [
        (0, "a.jpg", 1), (1, "a.jpg", 2), (2, "b.jpg", 3)]
    assert lines[2]["rewritten"] == "A quiet mountain lake." and lines[2]["replacements"] == []
    assert [r["original"] for r in lines[0]["replacements"]] == ["man", "dog"]
    assert lines[0]["rewritten"].startswith("A ") and "dog" not in lines[0]["rewritten"]
    manifest = json.loads((tmp_path / "o1" / "manifest.json").read_text())
    assert manifest["stage"] == "backgrounds" and manifest["status"] == "complete"
    assert manifest["counts"]["replacements_per_supercategory"] == {
        "animal": 1, "outdoor": 1, "person": 2}
    assert manifest["images"] == [] and "captions" in manifest["inputs"]
    # Same seed, same file; another seed, another rewrite.
    assert main(argv[:6] + [str(tmp_path / "o2")] + argv[7:]) == 0
    assert (tmp_path / "o1" / "captions.jsonl").read_bytes() == \
        (tmp_path / "o2" / "captions.jsonl").read_bytes()
    assert main(argv[:6] + [str(tmp_path / "o3"), "--rewrite-only", "--seed", "4",
                            "--quiet"]) == 0
    assert _lines(tmp_path / "o3") != lines


def test_max_images_is_a_seeded_subset(captions_file, tmp_path):
    caps, images = captions_file
    firsts = set()
    for seed in range(6):
        out = tmp_path / f"s{seed}"
        assert main(["backgrounds", "--captions", str(caps), "--images", str(images), "--out",
                     str(out), "--rewrite-only", "--max-images", "1", "--seed", str(seed),
                     "--quiet"]) == 0
        lines = _lines(out)
        assert len({d["image"] for d in lines}) == 1
        assert len(lines) == (2 if lines[0]["image"] == "a.jpg" else 1)
        firsts.add(lines[0]["image"])
    assert firsts == {"a.jpg", "b.jpg"}


def test_rewrite_only_on_real_captions(tmp_path, capsys):
    caps = needs_shared("coco_mini", "captions.json")
    assert main(["backgrounds", "--captions", str(caps), "--images",
                 str(needs_shared("coco_mini", "images")), "--out", str(tmp_path / "o"),
                 "--rewrite-only", "--quiet"]) == 0
    c = json.loads((tmp_path / "o" / "manifest.json").read_text())["counts"]
    assert c["captions"] == 795 and c["captions_rewritten"] > 600


def test_missing_model_fails_with_one_line(captions_file, tmp_path, capsys):
    pytest.importorskip("transformers")
    pytest.importorskip("diffusers")
    caps, images = captions_file
    missing = str(tmp_path / "no-such-model")
    assert main(["backgrounds", "--images", str(images), "--out", str(tmp_path / "o"),
                 "--captioner", missing, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"weakpaste: error: cannot load the captioning model '{missing}' (")
    assert not (tmp_path / "o").exists()  # failed before making the output folder
    assert err.rstrip().endswith("pass --captioner PATH to a local copy or --captions FILE "
                                 "(COCO captions), or run once online to download it")
    assert main(["backgrounds", "--captions", str(caps), "--images", str(images), "--out",
                 str(tmp_path / "o2"), "--generator", missing, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"weakpaste: error: cannot load the text-to-image model '{missing}'")
    assert "pass --generator PATH to a local copy" in err


def test_bad_options():
    from weakpaste.backgrounds.run import BackgroundsConfig

    with pytest.raises(WeakpasteError) as err:
        BackgroundsConfig(keep=6, images_per_caption=5)
    assert str(err.value) == ("keep (--keep) 6 is more than images_per_caption "
                              "(--images-per-caption) 5")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("diffusers")
    import torch
    from tiny_models import build_blip, build_clip, build_stable_diffusion

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; the machine is shared
    root = tmp_path_factory.mktemp("tiny_models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        models = {"blip": build_blip(root / "blip"), "clip": build_clip(root / "clip"),
                  "sd": build_stable_diffusion(root / "sd")}
    yield models
    torch.set_num_threads(threads)


def _model_args(models, out, *extra):
    return ["backgrounds", "--out", str(out), "--captioner", str(models["blip"]),
            "--generator", str(models["sd"]), "--clip", str(models["clip"]),
            "--images-per-caption", "3", "--keep", "2", "--steps", "2", "--height", "32",
            "--width", "32", "--max-caption-tokens", "6", "--device", "cpu", "--quiet", *extra]


def test_whole_stage_with_tiny_models(tiny_models, captions_file, tmp_path, capsys):
    caps, images = captions_file
    out = tmp_path / "bg"
    # The model captions the two source images; nothing is rejected at threshold 1.
    assert main(_model_args(tiny_models, out, "--images", str(images), "--reject-threshold",
                            "1.0", "--batch-size", "2")) == 0
    assert "kept 4 of 6 generated images (0 rejected" in capsys.readouterr().out
    lines = _lines(out)
    assert [d["image"] for d in lines] == ["a.jpg", "b.jpg"]
    assert all(d["caption"] for d in lines)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f[:14] for f in manifest["images"]] == ["images/000000_"] * 2 + ["images/000001_"] * 2
    assert sorted(p.name for p in (out / "images").iterdir()) == \
        sorted(Path(f).name for f in manifest["images"])
    assert read_image(out / manifest["images"][0]).shape == (32, 32, 3)
    gen = [json.loads(x) for x in (out / "generated.jsonl").read_text().splitlines()]
    assert [sum(g["kept"]) for g in gen] == [2, 2]
    for g in gen:  # kept = the two best caption scores
        best = set(np.argsort(-np.array(g["caption_scores"]), kind="stable")[:2].tolist())
        assert {j for j, k in enumerate(g["kept"]) if k} == best

    # From the captions file, batch size 1: the same seeds give the same images as batch 3.
    # Folder a is first only rewritten, then resumed into generation.
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, bs, extra in ((a, "1", ["--rewrite-only"]), (a, "1", ["--resume"]),
                              (b, "3", [])):
        assert main(_model_args(tiny_models, folder, "--captions", str(caps), "--images",
                                str(images), "--reject-threshold", "-1", "--keep", "3",
                                "--batch-size", bs, *extra)) == 0
    ma = json.loads((a / "manifest.json").read_text())
    assert ma["counts"]["rejected_by_class"] == 9 and ma["counts"]["backgrounds"] == 0
    ga = [json.loads(x) for x in (a / "generated.jsonl").read_text().splitlines()]
    gb = [json.loads(x) for x in (b / "generated.jsonl").read_text().splitlines()]
    assert np.allclose([g["caption_scores"] for g in ga], [g["caption_scores"] for g in gb],
                       atol=1e-3)

    # Resume of a finished run changes nothing; an interrupted one makes the same images.
    before = (out / "generated.jsonl").read_bytes()
    images_before = {f: (out / f).read_bytes() for f in manifest["images"]}
    resume = _model_args(tiny_models, out, "--images", str(images), "--reject-threshold",
                         "1.0", "--batch-size", "2", "--resume")
    assert main(resume) == 0
    assert (out / "generated.jsonl").read_bytes() == before
    first, last = before.decode().splitlines(True)
    (out / "generated.jsonl").write_text(first + last[:20])  # killed mid-line
    for f in json.loads(last)["kept_files"]:
        (out / f).unlink()
    assert main(resume) == 0
    assert (out / "generated.jsonl").read_bytes() == before
    assert {f: (out / f).read_bytes() for f in manifest["images"]} == images_before

    # The paste stage takes the output folder as extra backgrounds, without torch.
    src = tmp_path / "coco"
    src.mkdir()
    _tiny_bank(src)
    code = ("import sys\nfrom weakpaste.cli import main\n"
            f"assert main(['paste', '--bank', {str(src / 'bank')!r}, '--out', "
            f"{str(tmp_path / 'pasted')!r}, '--extra-backgrounds', {str(out)!r}, "
            "'--num-images', '3', '--quiet']) == 0\n"
            "assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    pasted = json.loads((tmp_path / "pasted" / "annotations.json").read_text())
    assert {(i["width"], i["height"]) for i in pasted["images"]} == {(32, 32)}


def _tiny_bank(folder: Path) -> None:
    from weakpaste.io.coco import write_coco
    from weakpaste.structures import ImageRecord, Instances

    images = folder / "images"
    images.mkdir()
    masks = np.zeros((1, 24, 24), dtype=bool)
    masks[0, 4:16, 6:18] = True
    write_image(images / "x.png", np.full((24, 24, 3), 200, np.uint8))
    rec = ImageRecord(image_id=1, file_name="x.png", width=24, height=24,
                      instances=Instances.from_masks(masks, ["a"]))
    write_coco(folder / "instances.json", [rec], {"a": {"id": 1, "supercategory": "a"}})
    run_bank_from_coco(BankConfig(min_area=1),
                       BankInputs(coco_json=folder / "instances.json", images=images),
                       RunOptions(out=folder / "bank", quiet=True))


def test_mixed_background_order_values():
    is_extra = np.array([False, False, True, True, True])
    seed = np.random.SeedSequence(0)
    order = mixed_background_order(seed, is_extra, 12, 1 / 3)
    assert is_extra[order].sum() == 4
    orig = order[~is_extra[order]]
    assert sorted(np.bincount(orig, minlength=2)[:2].tolist()) == [4, 4]  # cycled evenly
    assert np.array_equal(order, mixed_background_order(np.random.SeedSequence(0), is_extra,
                                                        12, 1 / 3))
    assert is_extra[mixed_background_order(seed, is_extra, 12, 1.0)].all()
    assert not is_extra[mixed_background_order(seed, is_extra, 12, 0.0)].any()
    with pytest.raises(WeakpasteError) as err:
        mixed_background_order(seed, np.zeros(3, dtype=bool), 4, 0.5)
    assert str(err.value) == "--extra-ratio 0.5 needs --extra-backgrounds images"


def test_paste_extra_ratio_is_deterministic_across_workers(tiny_coco, tmp_path):
    path, images = tiny_coco
    run_bank_from_coco(BankConfig(min_area=1), BankInputs(coco_json=path, images=images),
                       RunOptions(out=tmp_path / "bank", quiet=True))
    extra = tmp_path / "extra"
    extra.mkdir()
    write_image(extra / "g.png", np.full((50, 60, 3), 90, np.uint8))
    snaps = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        run_paste(PasteConfig(num_images=8, seed=1, objects=(1, 2), extra_ratio=0.25),
                  PasteInputs(bank=str(tmp_path / "bank"), backgrounds=str(path),
                              images=str(images), extra_backgrounds=[str(extra)]),
                  RunOptions(out=str(out), workers=workers, quiet=True))
        doc = json.loads((out / "annotations.json").read_text())
        snaps.append(((out / "annotations.json").read_bytes(),
                      sorted(p.read_bytes() for p in (out / "images").iterdir())))
    assert snaps[0] == snaps[1]
    assert sum((i["width"], i["height"]) == (60, 50) for i in doc["images"]) == 2
    with pytest.raises(WeakpasteError,
                       match=r"^extra_ratio \(--extra-ratio\) must be in \[0, 1\], got 2.0$"):
        PasteConfig(num_images=1, extra_ratio=2.0)


def test_sampled_captions_do_not_depend_on_the_batch(tiny_models):
    from weakpaste.backgrounds.captions import Captioner

    cap = Captioner(str(tiny_models["blip"]), device="cpu", max_new_tokens=6, num_captions=2)
    img = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    both = cap.caption([img, img], seeds=[1, 2])
    assert len(both) == 2 and all(len(c) == 2 for c in both)
    assert cap.caption([img], seeds=[2]) == both[1:]


def test_generation_on_workers_is_the_same_bytes(tiny_models, captions_file, tmp_path):
    """A local pool and Ray actors (each loading the models once) make the same output."""
    caps, images = captions_file
    runs = {"one": [], "pool": ["--workers", "2"],
            "ray": ["--workers", "2", "--executor", "ray"]}
    ray = pytest.importorskip("ray", reason="Ray is a test dependency: pip install -e '.[test]'")
    # The actors import this checkout of weakpaste, not whichever one is installed.
    root = str(Path(__file__).resolve().parents[2])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False, runtime_env={"env_vars": {
                 "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
                 "HF_HUB_OFFLINE": "1"}})
    try:
        for name, extra in runs.items():
            assert main(_model_args(tiny_models, tmp_path / name, "--captions", str(caps),
                                    "--images", str(images), "--reject-threshold", "1.0",
                                    *extra)) == 0
    finally:
        ray.shutdown()
    want = _outputs(tmp_path / "one")
    assert len(want) == 1 + 2 * 3  # generated.jsonl + keep 2 of 3 for each of 3 captions
    for name in ("pool", "ray"):
        assert _outputs(tmp_path / name) == want


def _outputs(out: Path) -> dict[str, bytes]:
    return {"generated.jsonl": (out / "generated.jsonl").read_bytes()} | {
        p.name: p.read_bytes() for p in sorted((out / "images").iterdir())}


def test_local_pool_refuses_the_gpu_in_one_line():
    from weakpaste.backgrounds.run import BackgroundsConfig, _check_pool_device
    from weakpaste.core.runners import ExecutorConfig

    with pytest.raises(WeakpasteError) as err:
        _check_pool_device(BackgroundsConfig(device="cuda"), ExecutorConfig())
    assert str(err.value) == ("--workers > 1 with the local executor runs on the CPU only (a "
                              "forked process cannot use the GPU); pass --device cpu, or "
                              "--executor ray --gpus-per-worker 1 for one GPU per worker")
    _check_pool_device(BackgroundsConfig(device="cuda"), ExecutorConfig(executor="ray"))
    _check_pool_device(BackgroundsConfig(device="cpu"), ExecutorConfig())


# Resuming proves the captioned images are the same (issue 22)

RESUME_FIX = "rerun with that run's options and inputs, or pass --overwrite instead of --resume"


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    from tiny_models import build_blip

    return build_blip(tmp_path_factory.mktemp("tiny_blip") / "blip")


def _captioned(blip: Path, images: Path, out: Path, *extra: str) -> list[str]:
    """Caption ``images`` with the tiny captioner and rewrite the captions (no generation)."""
    return ["backgrounds", "--images", str(images), "--out", str(out), "--captioner",
            str(blip), "--rewrite-only", "--max-caption-tokens", "6", "--device", "cpu",
            "--quiet", *extra]


def test_resume_refuses_an_edited_captioned_image(tiny_blip, captions_file, tmp_path, capsys):
    _, images = captions_file
    out = tmp_path / "bg"
    assert main(_captioned(tiny_blip, images, out)) == 0
    edited = images / "b.jpg"
    write_image(edited, 255 - read_image(edited))
    capsys.readouterr()
    assert main(_captioned(tiny_blip, images, out, "--resume")) == 2
    assert capsys.readouterr().err == (f"weakpaste: error: {out}: cannot resume: the images "
                                       f"changed since that run ({edited} differs); "
                                       f"{RESUME_FIX}\n")


def test_resume_of_a_run_without_image_fingerprints_says_so(tiny_blip, captions_file, tmp_path,
                                                            capsys):
    _, images = captions_file
    out = tmp_path / "bg"
    assert main(_captioned(tiny_blip, images, out)) == 0
    doc = json.loads((out / "manifest.json").read_text())
    del doc["inputs"]["images"]  # as a weakpaste from before issue 22 wrote it
    (out / "manifest.json").write_text(json.dumps(doc))
    (out / ".cache" / "images.json").unlink()
    capsys.readouterr()
    assert main(_captioned(tiny_blip, images, out, "--resume")) == 2
    assert capsys.readouterr().err == (
        f"weakpaste: error: {out}: cannot resume: that run was made by an older weakpaste, "
        "which did not record its images' fingerprints, so whether they changed since cannot "
        "be checked; pass --overwrite instead of --resume to start again\n")
