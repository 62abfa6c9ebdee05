"""Tests of weakpaste.report.stats on hand-made data sets with known mask areas."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from weakpaste.core.errors import WeakpasteError
from weakpaste.io.coco import CocoDataset, load_coco, write_coco
from weakpaste.io.images import write_image
from weakpaste.report.stats import StatsInputs, dataset_stats, format_stats, run_stats
from weakpaste.structures import ImageRecord, Instances


def rect_masks(h: int, w: int, rects: list[tuple[int, int, int, int]]) -> np.ndarray:
    """bool (N, h, w) masks filled on x0, y0, x1, y1 rectangles (x1, y1 exclusive)."""
    masks = np.zeros((len(rects), h, w), dtype=bool)
    for m, (x0, y0, x1, y1) in zip(masks, rects, strict=True):
        m[y0:y1, x0:x1] = True
    return masks


def record(image_id: int, h: int, w: int, items: list[tuple[str, tuple]]) -> ImageRecord:
    inst = (Instances.from_masks(rect_masks(h, w, [r for _, r in items]), [c for c, _ in items])
            if items else Instances.empty(h, w))
    return ImageRecord(image_id=image_id, file_name=f"img{image_id}.png", width=w, height=h,
                       instances=inst)


@pytest.fixture
def known(tmp_path: Path) -> Path:
    """COCO file: areas 100 (a), 1600 (b), 10000 (a) | 1024 (b), 1 (a) | no instances.

    Categories are written in the order a, b, d, c; c and d have no instances.
    """
    records = [
        record(1, 200, 200, [("a", (0, 0, 10, 10)), ("b", (20, 20, 60, 60)),
                             ("a", (90, 90, 190, 190))]),
        record(2, 64, 64, [("b", (0, 0, 32, 32)), ("a", (40, 40, 41, 41))]),
        record(3, 32, 32, []),
    ]
    images = tmp_path / "images"
    images.mkdir()
    for rec in records:
        write_image(images / rec.file_name, np.zeros((rec.height, rec.width, 3), np.uint8))
    path = tmp_path / "instances.json"
    write_coco(path, records, ["a", "b", "d", "c"])
    return path


def test_dataset_stats_counts(known: Path) -> None:
    stats = dataset_stats(load_coco(known))
    assert stats["images"] == 3
    assert stats["instances"] == 5
    assert stats["images_without_instances"] == 1
    assert list(stats["per_class"].items()) == [("a", 3), ("b", 2), ("c", 0), ("d", 0)]
    assert list(stats["images_per_class"].items()) == [("a", 2), ("b", 2), ("c", 0), ("d", 0)]
    # 100 and 1 are small; 1600 and exactly 32² = 1024 are medium; 10000 is large.
    assert stats["size_buckets"] == {"small": 2, "medium": 2, "large": 1}
    # sqrt areas 1, 10, 32, 40, 100 -> bins [1,2), [8,16), [32,64) x2, [64,128).
    assert stats["area_histogram"] == {"edges": [1, 2, 4, 8, 16, 32, 64, 128],
                                       "counts": [1, 0, 0, 1, 0, 2, 1]}
    assert stats["instances_per_image"] == {"mean": 1.667, "median": 2.0, "max": 3}
    json.dumps(stats)  # JSON-able


def test_dataset_stats_histogram_edges_are_exact_powers() -> None:
    # sqrt(4) = 2 and sqrt(1023) < 32 sit on either side of a bin edge.
    rec = record(1, 64, 64, [("a", (0, 0, 2, 2)), ("a", (0, 0, 31, 33))])
    stats = dataset_stats(CocoDataset(records=[rec], categories={"a": {"id": 1}}))
    assert stats["area_histogram"] == {"edges": [1, 2, 4, 8, 16, 32],
                                       "counts": [0, 1, 0, 0, 1]}
    assert stats["size_buckets"] == {"small": 2, "medium": 0, "large": 0}


def test_dataset_stats_unknown_instances_and_empty() -> None:
    weak = ImageRecord(image_id=1, file_name="x.png", width=8, height=8, labels=("a",))
    stats = dataset_stats(CocoDataset(records=[weak], categories={"a": {"id": 1}}))
    assert stats["images_without_instances"] == 1 and stats["instances"] == 0
    assert stats["per_class"] == {"a": 0}
    assert stats["area_histogram"] == {"edges": [], "counts": []}
    empty = dataset_stats(CocoDataset(records=[]))
    assert empty["instances_per_image"] == {"mean": 0.0, "median": 0.0, "max": 0}
    assert "(no instances)" in format_stats(empty)
    assert "(no classes)" in format_stats(empty)


def test_format_stats_table(known: Path) -> None:
    text = format_stats(dataset_stats(load_coco(known)))
    lines = text.splitlines()
    rows = {ln.split()[0]: ln for ln in lines if ln[:2] in ("a ", "b ", "c ", "d ")}
    assert rows["a"].endswith(" " + "#" * 40)
    assert rows["b"].endswith(" " + "#" * 27)  # 2/3 of the widest bar
    assert "#" not in rows["c"]
    # Counts right-aligned in one column under the header.
    header = next(ln for ln in lines if ln.startswith("class"))
    end = header.index("instances") + len("instances")
    assert [rows[k][end - 1] for k in "abcd"] == ["3", "2", "0", "0"]
    assert [rows[k][end - 1 + len("  images")] for k in "abcd"] == ["2", "2", "0", "0"]

    small = next(ln for ln in lines if ln.startswith("small"))
    assert small.split()[-2:] == ["2", "40.0%"]
    large = next(ln for ln in lines if ln.startswith("large"))
    assert large.split()[-2:] == ["1", "20.0%"]
    hist = [ln for ln in lines if ln.rstrip("# ").endswith(("px  0", "px  1", "px  2"))]
    assert len(hist) == 7
    assert hist[5].split()[:5] == ["32", "-", "64", "px", "2"]
    assert hist[5].endswith(" " + "#" * 40)
    assert hist[1].endswith("px  0")
    assert len({ln.index("px") for ln in hist}) == 1  # aligned


def test_run_stats_returns_data_and_the_cli_prints_text_or_json(known: Path, capsys) -> None:
    from weakpaste.cli import main

    assert run_stats(None, StatsInputs(known, images=known.parent / "images")) == \
        dataset_stats(load_coco(known))
    assert main(["stats", str(known)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"{known}\n")
    assert format_stats(dataset_stats(load_coco(known))) in text
    assert main(["stats", str(known), "--json"]) == 0
    as_json = capsys.readouterr().out
    assert json.loads(as_json) == dataset_stats(load_coco(known))
    assert as_json.startswith('{\n  "images": 3,')


def test_run_stats_errors(tmp_path: Path, known: Path) -> None:
    with pytest.raises(WeakpasteError) as err:
        run_stats(None, StatsInputs(tmp_path / "missing.json"))
    assert str(err.value).startswith(f"{tmp_path / 'missing.json'}: no such file")
    with pytest.raises(WeakpasteError):
        run_stats(None, StatsInputs(known, images=tmp_path / "no_images_here"))
