"""``weakpaste demo``: the main job end to end on the embedded synthetic scenes.

For now: synthetic scenes (image-level labels, hidden ground-truth masks) -> a segment bank
from the ground truth -> pasted COCO data set -> contact sheet + statistics.
"""

from __future__ import annotations

import os
from pathlib import Path

from weakpaste.io.coco import write_coco
from weakpaste.io.images import write_image
from weakpaste.manifest import prepare_output_dir, write_manifest
from weakpaste.structures import ImageRecord, Instances


def write_synthetic_dataset(out_dir: str | os.PathLike, *, num_scenes: int, seed: int,
                            height: int = 192, width: int = 256) -> Path:
    """Write synthetic scenes as ``images/*.png`` + ``instances.json`` (ground truth).

    Returns:
        The path of ``instances.json``.
    """
    from weakpaste import synthetic

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i, scene in enumerate(synthetic.iter_scenes(seed, num_scenes, height=height,
                                                    width=width)):
        name = f"scene_{i:05d}.png"
        write_image(out / "images" / name, scene.image)
        records.append(ImageRecord(image_id=i + 1, file_name=name, width=width, height=height,
                                   labels=scene.labels,
                                   instances=Instances.from_masks(scene.masks, scene.classes)))
    path = out / "instances.json"
    write_coco(path, records, list(synthetic.CLASSES),
               info={"description": "weakpaste synthetic scenes (ground truth)", "seed": seed})
    return path


def run_demo(out_dir: str | os.PathLike, *, num_scenes: int = 48, num_images: int = 32,
             seed: int = 0, workers: int = 1, overwrite: bool = False,
             progress: bool = True) -> dict:
    """Run the demo and print where everything is.

    Returns:
        The demo's manifest.
    """
    from weakpaste.bank import run_bank_from_coco
    from weakpaste.paste.run import PasteConfig, run_paste
    from weakpaste.stats import run_stats
    from weakpaste.viz import run_viz

    out = prepare_output_dir(out_dir, overwrite=overwrite, stage="demo")
    config = {"num_scenes": num_scenes, "num_images": num_images, "seed": seed}
    write_manifest(out, stage="demo", config=config, seed=seed, status="running")
    scenes = out / "scenes"
    gt = write_synthetic_dataset(scenes, num_scenes=num_scenes, seed=seed)
    bank = run_bank_from_coco(gt, scenes / "images", out / "bank", progress=progress)
    pasted = run_paste(PasteConfig(num_images=num_images, seed=seed, objects=(2, 4)),
                       bank=str(out / "bank"), out_dir=str(out / "pasted"),
                       backgrounds_json=str(gt), images_dir=str(scenes / "images"),
                       workers=workers, progress=progress)
    run_viz(out / "pasted" / "annotations.json", out / "pasted" / "images", out / "viz",
            num_images=min(12, num_images), seed=seed, progress=progress)
    print(run_stats(out / "pasted" / "annotations.json"))
    print(f"\nsynthetic scenes : {scenes}\n"
          f"segment bank     : {out / 'bank'} ({bank['counts']['segments']} segments)\n"
          f"pasted COCO set  : {out / 'pasted' / 'annotations.json'} "
          f"({pasted['counts']['images']} images, {pasted['counts']['annotations']} instances)\n"
          f"contact sheet    : {out / 'viz' / 'contact_sheet.png'}")
    return write_manifest(out, stage="demo", config=config, seed=seed,
                          counts={"segments": bank["counts"]["segments"],
                                  "images": pasted["counts"]["images"],
                                  "annotations": pasted["counts"]["annotations"]})
