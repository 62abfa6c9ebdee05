"""Paste-stage throughput on real data, against the I/O floor measured in the same run.

Setup (issue 2): bank from coco_mini's ground-truth masks, coco_mini's images (with their
instances) as backgrounds, n_p = 4, gaussian blending, JPEG output.

The I/O floor is what any paste run must do per image even with nothing pasted: decode the
background, decode + RLE-encode its instance masks, encode and write the output JPEG.

Usage:
    python benchmarks/paste_bench.py [--data ../shared/data/coco_mini] [--num-images 300]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2

from weakpaste.bank import run_bank_from_coco
from weakpaste.io.coco import load_coco
from weakpaste.io.images import atomic_write_bytes, encode_image, read_image
from weakpaste.ops import masks as mask_ops
from weakpaste.paste.run import PasteConfig, run_paste

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_mini"


def io_floor(data_dir: Path, num_images: int, out: Path) -> float:
    """Images/s of decode background + masks, RLE-encode masks, encode + write JPEG."""
    cv2.setNumThreads(1)  # the same single-threaded kernels the paste workers use
    data = load_coco(data_dir / "instances.json", data_dir / "images")
    out.mkdir(parents=True, exist_ok=True)
    records = data.records
    start = time.perf_counter()
    for i in range(num_images):
        rec = records[i % len(records)]
        rgb = read_image(data_dir / "images" / rec.file_name)
        rles = mask_ops.encode_many(rec.instances.masks())
        atomic_write_bytes(out / f"{i:06d}.jpg", encode_image(rgb, "jpg", 95))
        assert len(rles) == len(rec.instances)
    return num_images / (time.perf_counter() - start)


def paste_rate(data_dir: Path, bank: Path, num_images: int, workers: int, out: Path) -> float:
    config = PasteConfig(num_images=num_images, seed=0, objects=(4, 4), blend=("gaussian",),
                         image_format="jpg")
    start = time.perf_counter()
    run_paste(config, bank=str(bank), out_dir=str(out),
              backgrounds_json=str(data_dir / "instances.json"),
              images_dir=str(data_dir / "images"), workers=workers, progress=False)
    return num_images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--num-images", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved repetitions; the best rate of each is reported")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        run_bank_from_coco(args.data / "instances.json", args.data / "images", tmp / "bank",
                           progress=False)
        bank_s = time.perf_counter() - t
        floors, ones, twos = [], [], []
        for r in range(args.repeats):  # interleaved, so drifting machine load hits all three
            floors.append(io_floor(args.data, args.num_images, tmp / f"floor{r}"))
            ones.append(paste_rate(args.data, tmp / "bank", args.num_images, 1, tmp / f"w1_{r}"))
            twos.append(paste_rate(args.data, tmp / "bank", args.num_images, 2, tmp / f"w2_{r}"))
        floor, one, two = max(floors), max(ones), max(twos)
        same = all((tmp / "w1_0" / "images" / p.name).read_bytes() == p.read_bytes()
                   for p in (tmp / "w2_0" / "images").iterdir()) and \
            (tmp / "w1_0" / "annotations.json").read_bytes() == \
            (tmp / "w2_0" / "annotations.json").read_bytes()
    result = {"num_images": args.num_images, "repeats": args.repeats,
              "bank_build_s": round(bank_s, 2),
              "all_runs_img_s": {"floor": [round(v, 1) for v in floors],
                                 "1_worker": [round(v, 1) for v in ones],
                                 "2_workers": [round(v, 1) for v in twos]},
              "io_floor_img_s": round(floor, 1), "paste_1_worker_img_s": round(one, 1),
              "paste_2_workers_img_s": round(two, 1),
              "one_worker_vs_floor": round(one / floor, 3),
              "two_vs_one_worker": round(two / one, 3),
              "identical_output_1_vs_2_workers": same}
    print(json.dumps(result, indent=2))
    print(f"targets: one worker >= 0.5 x floor: {'PASS' if one >= 0.5 * floor else 'FAIL'}; "
          f"2 workers >= 1.7 x one: {'PASS' if two >= 1.7 * one else 'FAIL'}")


if __name__ == "__main__":
    main()
