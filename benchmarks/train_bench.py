"""Mask R-CNN training speed on the CPU, for both backbones, through ``run_train``.

Setup: coco_mini (real COCO images and masks, 80 classes) when ``../shared/data`` is there,
else 48 embedded synthetic scenes; random initialisation (``--weights none``: nothing is
downloaded), large-scale jittering, batch 2. Each backbone trains ``--iterations`` iterations
and the rate is taken from ``metrics.jsonl`` without the first window (model warm-up).

Usage:
    python benchmarks/train_bench.py [--image-size 512] [--iterations 12] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from weakpaste.core.run import RunOptions

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_mini"


def bench(backbone: str, train: str, out: Path, image_size: int, iterations: int) -> dict:
    from weakpaste.train.config import ModelOptions, TrainConfig
    from weakpaste.train.loop import TrainInputs, run_train

    config = TrainConfig(model=ModelOptions(backbone=backbone, image_size=image_size),
                         weights=None, batch_size=2,
                         iterations=iterations, warmup_iters=0, steps=(),
                         checkpoint_every=10 ** 6, log_every=max(1, iterations // 4), seed=0)
    start = time.perf_counter()
    run_train(config, TrainInputs(train=[train]), RunOptions(out=out, quiet=True))
    wall = time.perf_counter() - start
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["it_per_s"] for r in lines[1:]] or [lines[-1]["it_per_s"]]
    return {"backbone": backbone, "image_size": image_size, "it_per_s": sum(rates) / len(rates),
            "images_per_s": 2 * sum(rates) / len(rates), "wall_s": wall,
            "data_time_s": sum(r["data_time"] for r in lines) / len(lines)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if (args.data / "instances.json").is_file():
            train = f"{args.data / 'instances.json'}:{args.data / 'images'}"
        else:
            from weakpaste.demo.run import write_synthetic_dataset

            gt = write_synthetic_dataset(tmp / "scenes", num_scenes=48, seed=0)
            train = f"{gt}:{gt.parent / 'images'}"
        for backbone in ("mobilenet_v3", "resnet50"):
            result = bench(backbone, train, tmp / backbone, args.image_size, args.iterations)
            result.update(threads=args.threads, data=train.split(":")[0])
            print(json.dumps(result))


if __name__ == "__main__":
    main()
