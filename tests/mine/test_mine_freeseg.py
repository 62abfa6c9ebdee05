"""FreeSeg miner: refinement, co-segmentation, LORE and ranking, saliency backends, CLI."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from weakpaste.bank.store import SegmentBank
from weakpaste.cli import main
from weakpaste.core.errors import WeakpasteError
from weakpaste.core.run import RunOptions
from weakpaste.io.images import read_image
from weakpaste.mine.config import ClassifierSpec, FreeSegConfig, FreeSegParams
from weakpaste.mine.coseg import coseg_maps, fuse_maps, grid_prior
from weakpaste.mine.freeseg import run_mine_freeseg
from weakpaste.mine.lore import box_mask, drop_rate, freeseg_score, keep_segment, lore_box
from weakpaste.mine.pipeline import MineInputs
from weakpaste.mine.ranking import keep_mask
from weakpaste.mine.refine import largest_component, refine_map
from weakpaste.mine.saliency import (
    OnnxSaliency,
    SaliencyCache,
    SpectralResidual,
    cached_saliency,
    make_saliency,
)

TINY = ["--backbone", "resnet18", "--weights", "none", "--epochs", "2", "--input-size", "64",
        "--crop-size", "48", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny single-image forwards: one torch thread is as fast, and on a busy 2-core machine
    two threads spin (measured 70x slower), which made these tests take minutes."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ refinement


def _blob_map(h=60, w=80, seed=0):
    """A bright disc at (40, 30) r=15, a small bright speck, and noise."""
    yy, xx = np.mgrid[:h, :w]
    m = ((xx - 40) ** 2 + (yy - 30) ** 2 <= 15 ** 2).astype(np.float32) * 0.9
    m[3:6, 3:6] = 0.9
    m += np.random.default_rng(seed).uniform(0, 0.1, (h, w)).astype(np.float32)
    disc = (xx - 40) ** 2 + (yy - 30) ** 2 <= 15 ** 2
    return m, disc


def test_refine_map_keeps_the_blob():
    raw, disc = _blob_map()
    mask, t = refine_map(raw)
    assert mask.shape == raw.shape and mask.dtype == bool
    assert 0.1 < t < 0.9
    iou = (mask & disc).sum() / (mask | disc).sum()
    assert iou > 0.9
    assert not mask[:8, :8].any()  # the speck is not the largest component
    n, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    assert n == 2  # background + one component


def test_refine_map_constant_and_tiny():
    mask, t = refine_map(np.full((10, 10), 0.3, np.float32))
    assert not mask.any() and np.isnan(t)
    tiny = np.zeros((8, 8), np.float32)
    tiny[3:5, 3:5] = 1.0  # eroded away by the opening: the un-eroded map is used
    mask, _ = refine_map(tiny, sigma=0.0)
    assert mask.any()
    with pytest.raises(ValueError, match=r"expected a \(H, W\) map"):
        refine_map(np.zeros((4, 4, 3)))


def test_largest_component_values():
    m = np.zeros((10, 10), bool)
    m[0:2, 0:2] = True
    m[5:9, 5:9] = True
    out = largest_component(m)
    assert out.sum() == 16 and out[5, 5] and not out[0, 0]
    assert not largest_component(np.zeros((3, 3), bool)).any()


# ------------------------------------------------------------------ ranking arithmetic


def test_freeseg_score_and_drop_rate_arithmetic():
    mask = np.zeros((20, 20), bool)
    mask[0:10, 0:10] = True
    score, iob, iom = freeseg_score(mask, (5, 0, 15, 10))
    assert (iob, iom, score) == (0.5, 0.5, 0.5)
    score, iob, iom = freeseg_score(mask, (0, 0, 20, 20))  # mask inside the box
    assert (iob, iom, score) == (0.25, 1.0, 0.625)
    assert freeseg_score(np.zeros((5, 5), bool), (0, 0, 5, 5)) == (0.0, 0.0, 0.0)
    assert drop_rate(0.8, 0.2) == pytest.approx(0.75)
    assert drop_rate(0.5, 0.6) == pytest.approx(-0.2)
    assert drop_rate(0.0, 0.3) == 0.0
    assert keep_segment(0.6, 0.7, 0.5, 0.5) and not keep_segment(0.5, 0.7, 0.5, 0.5)
    assert not keep_segment(0.9, 0.5, 0.5, 0.5)
    assert box_mask((-3, 2, 4, 100), (6, 6)).sum() == 4 * 4


# ------------------------------------------------------------------ LORE


class _SquaresClassifier:
    """Fake classifier: class 0's evidence is the un-greyed pixels of known squares."""

    classes = ("thing",)

    def __init__(self, squares, weights):
        self.squares = squares  # (x0, y0, x1, y1)
        self.weights = weights  # probability carried by each square when intact
        self.calls = 0

    def _intact(self, image, sq):
        x0, y0, x1, y1 = sq
        return float((image[y0:y1, x0:x1] != 124).any(-1).mean())

    def predict_proba(self, images):
        self.calls += 1
        return np.array([[sum(w * self._intact(im, sq)
                              for sq, w in zip(self.squares, self.weights, strict=True))]
                         for im in images], np.float32)

    def gradcam(self, image, class_indices):
        cam = np.zeros(image.shape[:2], np.float32)
        for sq, w in zip(self.squares, self.weights, strict=True):
            x0, y0, x1, y1 = sq
            region = (image[y0:y1, x0:x1] != 124).any(-1)
            cam[y0:y1, x0:x1] = np.where(region, w, cam[y0:y1, x0:x1])
        return (cam[None] / max(cam.max(), 1e-9))[:len(class_indices)]

    def gradcam_outputs(self, image, class_indices):
        """One 'forward pass': maps, probabilities and (fake) pooled features."""
        p = self.predict_proba([image])[0]
        return self.gradcam(image, class_indices), p, np.array([p[0], 1.0], np.float32)


def test_lore_removes_the_known_square():
    image = np.full((64, 64, 3), 200, np.uint8)
    clf = _SquaresClassifier([(10, 20, 30, 40)], [0.9])
    res = lore_box(clf, image, 0, fill=(124, 124, 124))
    np.testing.assert_array_equal(res.box, [10, 20, 30, 40])
    assert res.p_before == pytest.approx(0.9) and res.p_after == 0.0
    assert res.steps == 1 and res.drop_rate == pytest.approx(1.0)
    assert clf.calls == 2  # one forward pass before, one after the removal
    np.testing.assert_allclose(res.features_before, [0.9, 1.0])  # the passes' features
    np.testing.assert_allclose(res.features_after, [0.0, 1.0])


def test_lore_keeps_removing_until_the_class_is_gone():
    image = np.full((64, 64, 3), 200, np.uint8)
    # Removing the strongest square leaves p = 0.55 >= stop: LORE must remove the second
    # one too (then 0.2 < stop); the third stays outside the pseudo box.
    clf = _SquaresClassifier([(5, 5, 15, 15), (40, 30, 60, 50), (2, 55, 8, 62)],
                             [0.4, 0.35, 0.2])
    res = lore_box(clf, image, 0, stop=0.5, fill=(124, 124, 124))
    assert res.steps == 2 and clf.calls == 4  # before, after each removal, the union box
    assert res.boxes == [(5.0, 5.0, 15.0, 15.0), (40.0, 30.0, 60.0, 50.0)]
    np.testing.assert_array_equal(res.box, [5, 5, 60, 50])
    assert res.p_after == pytest.approx(0.2) and res.p_before == pytest.approx(0.95)
    assert res.drop_rate == pytest.approx(0.75 / 0.95)
    capped = lore_box(clf, image, 0, stop=0.5, max_steps=1, fill=(124, 124, 124))
    assert capped.steps == 1 and capped.p_after == pytest.approx(0.55)


def test_lore_empty_cam():
    clf = _SquaresClassifier([], [])
    res = lore_box(clf, np.full((16, 16, 3), 9, np.uint8), 0)
    assert res.steps == 0 and res.box.tolist() == [0, 0, 0, 0] and res.drop_rate == 0.0


# ------------------------------------------------------------------ co-segmentation


def _coseg_inputs():
    """3 images on a 6x6 grid: a shared object (feature e0) in the centre, per-image
    backgrounds (e1 / e2), and in image 2 a salient distractor (e3) the class does not share."""
    rng = np.random.default_rng(1)
    d = 8
    feats, priors, fg = [], [], []
    for i in range(3):
        f = np.zeros((d, 6, 6), np.float32)
        f[1 + i % 2] = 1.0
        obj = np.zeros((6, 6), bool)
        obj[2:4, 2:5] = True
        f[:, obj] = 0.0
        f[0, obj] = 1.0
        prior = np.where(obj, 0.9, 0.1).astype(np.float32)
        if i == 2:
            f[:, 0, 0] = 0.0
            f[3, 0, 0] = 1.0
            prior[0, 0] = 1.0
        f += rng.normal(0, 0.05, f.shape).astype(np.float32)
        feats.append(f)
        priors.append(prior)
        fg.append(obj)
    return feats, priors, fg


def test_coseg_maps_finds_the_common_object():
    feats, priors, fg = _coseg_inputs()
    maps = coseg_maps(feats, priors)
    assert [m.shape for m in maps] == [(6, 6)] * 3 and maps[0].dtype == np.float32
    for m, obj in zip(maps, fg, strict=True):
        assert m[obj].min() > 0.9 and m[~obj].max() < m[obj].min()
    assert maps[2][0, 0] < 0.5  # salient but not shared by the class: background
    assert coseg_maps(feats, priors, floor=-1.0)[2][0, 0] > 0.5  # what the floor is for
    again = coseg_maps(feats, priors)
    for a, b in zip(maps, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_coseg_maps_needs_two_images():
    feats, priors, _ = _coseg_inputs()
    with pytest.raises(ValueError, match="at least 2 images"):
        coseg_maps(feats[:1], priors[:1])
    with pytest.raises(ValueError, match="differ"):
        coseg_maps(feats[:2], [priors[0], priors[1][:3]])


def test_fuse_maps_and_grid_prior():
    sal = np.zeros((20, 30), np.float32)
    sal[5:15, 10:20] = 0.5
    np.testing.assert_allclose(fuse_maps(None, sal, 0.5), sal / 0.5)
    np.testing.assert_allclose(fuse_maps(np.ones((3, 3)), sal, 0.0), sal / 0.5)
    fused = fuse_maps(np.ones((3, 3), np.float32), sal, 1.0)
    assert fused.shape == (20, 30) and fused.max() == 1.0 and fused.min() == 1.0
    assert not fuse_maps(None, np.zeros((4, 4), np.float32), 0.5).any()
    prior = grid_prior(sal, (4, 6), 0.35)
    assert prior.shape == (4, 6) and prior.max() == pytest.approx(1.0)
    assert prior[0, 0] == 0.0


# ------------------------------------------------------------------ saliency backends


def _shape_image(h=64, w=80, seed=0):
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 90, np.uint8) + rng.integers(0, 20, (h, w, 3), dtype=np.uint8)
    cv2.circle(img, (w // 2, h // 2), min(h, w) // 5, (250, 40, 30), -1)
    return img


def test_spectral_residual_shape_value_determinism():
    sr = SpectralResidual()
    img = np.zeros((64, 80, 3), np.uint8)
    img[:] = np.linspace(80, 120, 80)[None, :, None].astype(np.uint8)
    cv2.circle(img, (40, 32), 12, (250, 40, 30), -1)
    sal = sr(img)
    assert sal.shape == (64, 80) and sal.dtype == np.float32
    assert 0.0 <= sal.min() and sal.max() == 1.0
    # spectral residual marks the disc's outline (not its flat interior), not the smooth rest
    assert sal[16:48, 24:56].mean() > 3 * sal[:8, :8].mean()
    np.testing.assert_array_equal(sal, sr(img))
    assert sr(np.zeros((3, 5, 3), np.uint8)).shape == (3, 5)
    with pytest.raises(ValueError, match="expected uint8"):
        sr(np.zeros((4, 4), np.uint8))


def _onnx_model(path, *, channels=3, name="input", size=32, dynamic=False, two_inputs=False):
    """A 1-conv + sigmoid salient-object 'model' (output: [1, 1, S, S])."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    side = "S" if dynamic else size
    x = helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, channels, side, side])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, side, side])
    w = numpy_helper.from_array(np.full((1, channels, 1, 1), 2.0, np.float32), "w")
    nodes = [helper.make_node("Conv", [name, "w"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["output"])]
    inputs = [x]
    if two_inputs:
        inputs.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1]))
    graph = helper.make_graph(nodes, "g", inputs, [y], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_onnx_saliency_runs_a_tiny_model(tmp_path):
    pytest.importorskip("onnxruntime")
    model = OnnxSaliency(_onnx_model(tmp_path / "m.onnx"))
    assert model.size == 32 and model.key.startswith("onnx-") and model.key.endswith("isnet-32")
    img = _shape_image(50, 70)
    sal = model(img)
    assert sal.shape == (50, 70) and sal.dtype == np.float32
    assert sal.min() == 0.0 and sal.max() == pytest.approx(1.0)
    # brighter pixels -> larger conv output -> more salient (the red disc's sum is larger)
    assert sal[25, 35] > sal[2, 2]
    dyn = OnnxSaliency(_onnx_model(tmp_path / "d.onnx", dynamic=True), size=16)
    assert dyn.size == 16 and dyn(img).shape == (50, 70)
    u2 = OnnxSaliency(tmp_path / "d.onnx", convention="u2net")
    assert u2.size == 320


def test_onnx_saliency_bad_models(tmp_path):
    pytest.importorskip("onnxruntime")
    bad = _onnx_model(tmp_path / "gray.onnx", channels=1, name="image")
    with pytest.raises(WeakpasteError) as err:
        OnnxSaliency(bad)
    assert str(err.value) == (
        f"{bad}: expected one float32 image input of shape [1, 3, H, W] (IS-Net/U²-Net "
        "convention, e.g. 'input' [1, 3, 1024, 1024]), found 'image' [1, 1, 32, 32] "
        "tensor(float); export the model with such an input or use --saliency spectral")
    two = _onnx_model(tmp_path / "two.onnx", two_inputs=True)
    with pytest.raises(WeakpasteError, match=r"found 'input' \[1, 3, 32, 32\] tensor\(float\), "
                                             r"'extra' \[1\]"):
        OnnxSaliency(two)
    with pytest.raises(WeakpasteError, match="input is fixed at 32x32, so --saliency-size 64"):
        OnnxSaliency(_onnx_model(tmp_path / "m.onnx"), size=64)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(WeakpasteError, match="onnxruntime cannot load the model"):
        OnnxSaliency(junk)
    with pytest.raises(WeakpasteError, match="saliency model not found"):
        make_saliency(str(tmp_path / "missing.onnx"))
    with pytest.raises(WeakpasteError, match="unknown saliency convention 'x'"):
        OnnxSaliency(two, convention="x")


def test_saliency_cache_roundtrip(tmp_path):
    calls = []

    def backend(image):
        calls.append(1)
        return np.linspace(0, 1, image.shape[0] * image.shape[1],
                           dtype=np.float32).reshape(image.shape[:2])

    cache = SaliencyCache(tmp_path / "c", "fake-v1")
    img = np.zeros((6, 7, 3), np.uint8)
    first, hit1 = cached_saliency(backend, img, "ab" * 32, cache)
    second, hit2 = cached_saliency(backend, img, "ab" * 32, cache)
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    np.testing.assert_array_equal(first, second)  # a fresh map equals its cached form
    assert (tmp_path / "c" / "fake-v1" / ("ab" * 16 + ".png")).is_file()
    assert cache.get("ab" * 32, (7, 6)) is None  # wrong size: recomputed, never stale


# ------------------------------------------------------------------ images of every mode


def _write_modes(folder: Path, rgb: np.ndarray) -> list[str]:
    im = Image.fromarray(rgb)
    im.convert("L").save(folder / "gray.png")
    im.convert("RGBA").save(folder / "rgba.png")
    im.convert("P").save(folder / "palette.png")
    im.convert("CMYK").save(folder / "cmyk.jpg")
    return ["gray.png", "rgba.png", "palette.png", "cmyk.jpg"]


def test_read_image_modes(tmp_path):
    rgb = _shape_image()
    for name in _write_modes(tmp_path, rgb):
        out = read_image(tmp_path / name)
        assert out.shape == (64, 80, 3) and out.dtype == np.uint8, name
        assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 60, name


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    """Folder-per-class object-centric images: discs (4 images, of every file mode), squares
    (3), one triangle (a single-image class) and one tiny image."""
    root = tmp_path_factory.mktemp("objects")
    rng = np.random.default_rng(0)

    def scene(kind, i):
        h, w = 72 + 8 * i, 88
        img = rng.integers(60, 120, (h, w, 3), dtype=np.uint8)
        c = (w // 2 + i, h // 2)
        if kind == "disc":
            cv2.circle(img, c, 18, (230, 60, 40), -1)
        elif kind == "square":
            cv2.rectangle(img, (c[0] - 16, c[1] - 16), (c[0] + 16, c[1] + 16), (40, 80, 230), -1)
        else:
            pts = np.array([[c[0], c[1] - 18], [c[0] - 18, c[1] + 14], [c[0] + 18, c[1] + 14]])
            cv2.fillPoly(img, [pts], (40, 220, 60))
        return img

    for kind, n in (("disc", 4), ("square", 3), ("triangle", 1)):
        (root / kind).mkdir()
        for i in range(n):
            cv2.imwrite(str(root / kind / f"{kind}{i}.png"), scene(kind, i)[..., ::-1])
    _write_modes(root / "disc", scene("disc", 5))
    cv2.imwrite(str(root / "square" / "tiny.png"), np.zeros((5, 6, 3), np.uint8))
    return root


def _mine(objects, out, *extra):
    return main(["mine", "--method", "freeseg", "--images", str(objects), "--out", str(out),
                 *TINY, *extra])


@pytest.fixture(scope="module")
def mined(objects, tmp_path_factory):
    """One CLI run (its classifier is reused by the other runs): (out, stdout, stderr, cache)."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("mined")
    out, cache = root / "bank", root / "sal"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = _mine(objects, out, "--save-baselines", "--min-freeseg-score", "0",
                     "--min-drop-rate", "0", "--saliency-cache", str(cache))
    assert code == 0, stderr.getvalue()
    return out, stdout.getvalue(), stderr.getvalue(), cache


def test_cli_freeseg_end_to_end(mined):
    out, stdout, stderr, cache = mined
    assert "pseudo-labels" in stdout
    assert ("note: 1 class(es) with a single image cannot be co-segmented; their saliency map "
            "was used alone: triangle") in stderr
    assert "1 smaller than 8 px" in stderr
    manifest = json.loads((out / "manifest.json").read_text())
    c = manifest["counts"]
    assert manifest["status"] == "complete" and manifest["config"]["method"] == "freeseg"
    assert manifest["config"]["params"] == json.loads(json.dumps(FreeSegParams().__dict__))
    assert c["object_centric_images"] == 13 and c["skipped"] == {"smaller than 8 px": 1}
    assert manifest["coseg"]["fallback_classes"] == ["triangle"]
    assert set(manifest["timings_s"]) >= {"saliency", "features", "lore", "coseg", "refine",
                                          "rank"}
    assert len(list(cache.rglob("*.png"))) == 12  # the tiny image is skipped
    scores = json.loads((out / "freeseg_scores.json").read_text())["segments"]
    assert len(scores) == c["refined_segments"] == 12  # every usable image of every mode
    kept = [s for s in scores if s["kept"]]
    # the default cut-off: the top 70% by ranking score, then the paper's two thresholds
    top = keep_mask([s["rank"] for s in scores], keep_top=0.7)
    assert top.sum() == 9  # ceil(0.7 x 12)
    assert [s["kept"] for s in scores] == [bool(t) and s["freeseg"] > 0 and s["drop_rate"] > 0
                                           for t, s in zip(top, scores, strict=True)]
    bank = SegmentBank(out)
    assert c["segments"] == len(kept) == len(bank)
    seg = bank.read(next(iter(bank.iter_index())))
    assert seg.miner == "freeseg"
    assert {"freeseg", "iob", "iom", "drop_rate", "p_before", "p_after", "score"} \
        <= set(seg.scores)
    doc = json.loads((out / "pseudo_labels.json").read_text())
    assert len(doc["annotations"]) == len(kept)
    assert {img["file_name"].split("/")[0] for img in doc["images"]} == \
        {"disc", "square", "triangle"}
    for name in ("raw", "refined", "random"):
        base = json.loads((out / "baselines" / f"{name}.json").read_text())
        assert len(base["annotations"]) == (len(kept) if name == "random" else 12)


def test_freeseg_deterministic_thresholds_resume(objects, mined, tmp_path):
    out, _, _, cache = mined
    model = ClassifierSpec(backbone="resnet18", weights=None, input_size=64, crop_size=48,
                           classifier=str(out / "classifier.pt"))
    config = FreeSegConfig(model=model, min_score=0.6, min_drop=0.3)
    again = run_mine_freeseg(config, MineInputs(images=str(objects), labels=None),
                             RunOptions(out=str(tmp_path / "b"), workers=2, quiet=True,
                                        saliency_cache=str(cache)),
                             save_baselines=True)
    assert again["counts"]["saliency_from_cache"] == 12
    rows = json.loads((out / "freeseg_scores.json").read_text())["segments"]
    rows_b = json.loads((tmp_path / "b" / "freeseg_scores.json").read_text())["segments"]
    # Same classifier and inputs, 2 workers instead of 1: the same scores; the stricter
    # thresholds keep a subset.
    assert [{k: v for k, v in r.items() if k != "kept"} for r in rows] == \
        [{k: v for k, v in r.items() if k != "kept"} for r in rows_b]
    top = keep_mask([r["rank"] for r in rows], keep_top=0.7)
    expected = sum(bool(t) and r["freeseg"] > 0.6 and r["drop_rate"] > 0.3
                   for t, r in zip(top, rows, strict=True))
    assert again["counts"]["segments"] == expected
    a = json.loads((out / "baselines" / "refined.json").read_text())["annotations"]
    b = json.loads((tmp_path / "b" / "baselines" / "refined.json").read_text())["annotations"]
    assert a == b
    # Resuming a finished run recomputes nothing per image.
    resumed = run_mine_freeseg(config, MineInputs(images=str(objects), labels=None),
                               RunOptions(out=str(tmp_path / "b"), resume=True, quiet=True))
    assert resumed["counts"]["mined_this_run"] == 0
    assert resumed["counts"]["segments"] == expected == len(SegmentBank(tmp_path / "b"))


def test_freeseg_ranking_options(objects, mined, tmp_path, capsys):
    """--rank-by, --keep-top, --keep-per-class and --crossfit-folds: the ranking score is the
    mean percentile rank of the chosen scores, and the kept segments are its top share."""
    from weakpaste.mine.lore import drop_rate
    from weakpaste.mine.ranking import CUES, rank_average

    out, _, _, cache = mined
    model = ClassifierSpec(backbone="resnet18", weights=None, input_size=64, crop_size=48,
                           classifier=str(out / "classifier.pt"))
    # continuous cues: the file rounds to 6 decimals, which would tie saturated probabilities
    cues = ("stability", "contrast", "centre")
    config = FreeSegConfig(model=model, min_score=0, min_drop=0, rank_cues=cues, keep_top=0.5,
                           keep_per_class=True, crossfit_folds=2)
    m = run_mine_freeseg(config, MineInputs(images=str(objects), labels=None),
                         RunOptions(out=str(tmp_path / "r"), quiet=True,
                                    saliency_cache=str(cache)))
    doc = json.loads((tmp_path / "r" / "freeseg_scores.json").read_text())
    rows = doc["segments"]
    assert doc["rank_by"] == list(cues) and doc["keep_top"] == 0.5
    for r in rows:
        assert 0 <= r["p_before_cf"] <= 1 and 0 <= r["p_after_cf"] <= 1
        # (the file rounds to 6 decimals; the ratio divides their error by p_before_cf)
        assert r["drop_rate_cf"] == pytest.approx(drop_rate(r["p_before_cf"], r["p_after_cf"]),
                                                  abs=2e-6 / r["p_before_cf"])
    rank = rank_average({c: [r[c] for r in rows] for c in cues}, {c: CUES[c] for c in cues})
    np.testing.assert_allclose([r["rank"] for r in rows], rank, atol=1e-6)
    keep = keep_mask(rank, keep_top=0.5, groups=[r["class"] for r in rows])
    expected = keep & np.array([r["freeseg"] > 0 and r["drop_rate"] > 0 for r in rows])
    assert [r["kept"] for r in rows] == expected.tolist()
    assert m["counts"]["segments"] == int(expected.sum()) < len(rows)
    assert set(m["timings_s"]) >= {"saliency_cpu", "features_cpu", "lore_cpu"}
    # the option ranges, as the command line and the API check them
    for flag, value, message in (("--keep-top", "0", "must be in (0, 1], got 0 "),
                                 ("--min-score", "1.5", "must be in [0, 1], got 1.5"),
                                 ("--crossfit-folds", "-1", "must be >= 0, got -1"),
                                 ("--rank-by", "colour", "invalid choice: 'colour'")):
        with pytest.raises(SystemExit) as exc:
            _mine(objects, tmp_path / "bad", flag, value)
        assert exc.value.code == 2 and not (tmp_path / "bad").exists()
        assert f"argument {flag}: {message}" in capsys.readouterr().err
    with pytest.raises(WeakpasteError, match=r"^crossfit_folds \(--crossfit-folds\) must be 0 "
                                             r"\(off\) or at least 2, got 1$"):
        FreeSegConfig(crossfit_folds=1)
    with pytest.raises(WeakpasteError, match=r"^rank_cues \(--rank-by\) p_after_cf needs "
                                             r"cross-fitted scores: pass --crossfit-folds 5"):
        FreeSegConfig(rank_cues=("stability", "p_after_cf"))
    with pytest.raises(WeakpasteError, match=r"^keep_top \(--keep-top\) must be in \(0, 1\], "
                                             r"got 1.5$"):
        FreeSegConfig(keep_top=1.5)


def test_cli_freeseg_bad_input(objects, tmp_path, capsys):
    bad = _onnx_model(tmp_path / "bad.onnx", channels=4, name="x")
    assert _mine(objects, tmp_path / "o1", "--saliency", str(bad)) == 2
    err = capsys.readouterr().err
    assert "expected one float32 image input of shape [1, 3, H, W]" in err
    assert "found 'x' [1, 4, 32, 32]" in err and not (tmp_path / "o1").exists()
    with pytest.raises(SystemExit) as exc:  # argparse checks the range
        _mine(objects, tmp_path / "o2", "--min-drop-rate", "1.5")
    assert exc.value.code == 2 and not (tmp_path / "o2").exists()
    assert "argument --min-drop-rate: must be in [0, 1], got 1.5" in capsys.readouterr().err
    with pytest.raises(WeakpasteError, match=r"^min_drop \(--min-drop-rate\) must be in "
                                             r"\[0, 1\], got 1.5$"):
        FreeSegConfig(min_drop=1.5)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"disc/disc0.png": ["disc", "square"]}))
    assert main(["mine", "--method", "freeseg", "--images", str(objects), "--labels",
                 str(labels), "--out", str(tmp_path / "o3"), *TINY]) == 2
    assert "no image has exactly one class" in capsys.readouterr().err


def test_labels_file_maps_images_to_classes(objects, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("image,labels\n" + "".join(
        f"{k}/{k}{i}.png,{'round' if k == 'disc' else 'box'}\n"
        for k, n in (("disc", 4), ("square", 3)) for i in range(n)))
    model = ClassifierSpec(backbone="resnet18", weights=None, epochs=2, input_size=64,
                           crop_size=48)
    m = run_mine_freeseg(FreeSegConfig(model=model, min_score=0, min_drop=0),
                         MineInputs(images=str(objects), labels=str(labels)),
                         RunOptions(out=str(tmp_path / "bank"), quiet=True))
    assert m["counts"]["object_centric_images"] == 7
    assert m["coseg"]["images_per_class"] == {"box": 3, "round": 4}
    assert m["coseg"]["fallback_classes"] == []


def test_classifier_feature_maps_pool_to_features():
    from weakpaste.models.classifier import Classifier

    clf = Classifier.build("resnet18", None, ["a", "b"], input_size=64, crop_size=48)
    imgs = [_shape_image(40, 50, s) for s in range(3)]
    maps = clf.feature_maps(imgs, batch_size=2)
    assert maps.shape == (3, 512, 2, 2) and maps.dtype == np.float32
    np.testing.assert_allclose(maps.mean((2, 3)), clf.features(imgs), rtol=1e-4, atol=1e-5)
    assert clf.feature_maps([]).shape == (0, 512, 0, 0)


def test_ray_mining_is_byte_identical_to_the_local_pool(objects, mined, tmp_path):
    """The per-image stage on Ray actors (a local 2-CPU cluster): the same outputs."""
    import os

    ray = pytest.importorskip("ray", reason="Ray is a test dependency: pip install -e '.[test]'")

    out, _, _, cache = mined
    # The actors import this checkout of weakpaste, not whichever one is installed.
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])
    # address='local': a Ray of the test's own, even when one already runs on this machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        model = ClassifierSpec(backbone="resnet18", weights=None, input_size=64, crop_size=48,
                               classifier=str(out / "classifier.pt"))
        config = FreeSegConfig(model=model, min_score=0.0, min_drop=0.0)
        run_mine_freeseg(config, MineInputs(images=str(objects), labels=None),
                         RunOptions(out=str(tmp_path / "ray"), workers=2, quiet=True,
                                    executor="ray", saliency_cache=str(cache)),
                         save_baselines=True)
    finally:
        ray.shutdown()
    # The same bytes as the CLI run in this process (which trained that classifier).
    for name in ("index.jsonl", "pseudo_labels.json", "freeseg_scores.json",
                 "baselines/refined.json"):
        assert (tmp_path / "ray" / name).read_bytes() == (out / name).read_bytes()
    shards = sorted((out / "segments").iterdir())
    assert shards and all((tmp_path / "ray" / "segments" / s.name).read_bytes() == s.read_bytes()
                          for s in shards)
