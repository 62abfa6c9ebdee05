"""``demo``: the whole pipeline on synthetic scenes."""

from __future__ import annotations

import argparse

from weakpaste.cli.common import (
    common,
    torch_threads,
)


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.train:
        torch_threads(None)
    from weakpaste.demo import run_demo

    weights = None if args.weights in (None, "none", "None") else args.weights
    run_demo(args.out, num_scenes=args.num_scenes, num_images=args.num_images, seed=args.seed,
             workers=args.workers, mine=not args.from_gt, backbone=args.backbone,
             weights=weights, epochs=args.epochs,
             overwrite=args.overwrite, progress=not args.quiet, train=args.train,
             train_iterations=args.train_iterations)
    return 0



def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the top-level parser."""
    p = sub.add_parser("demo", help="run the pipeline end to end on embedded synthetic scenes")
    p.add_argument("--out", default="weakpaste-demo", help="output folder (default: %(default)s)")
    p.add_argument("--num-scenes", type=int, default=48, help="synthetic source scenes")
    p.add_argument("--num-images", type=int, default=32, help="pasted output images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--from-gt", action="store_true",
                   help="cut the bank from the scenes' ground truth instead of mining it with "
                        "F-EM from their image-level labels")
    p.add_argument("--backbone", default="resnet18", help="F-EM classifier backbone")
    p.add_argument("--weights", default="DEFAULT",
                   help="DEFAULT (torchvision ImageNet; from scratch when offline), PATH to a "
                        "local state_dict, or none")
    p.add_argument("--epochs", type=int, default=25, help="classifier training epochs")
    p.add_argument("--train", action="store_true",
                   help="then train Mask R-CNN on the pasted set and the mined pseudo-labels "
                        "(no ground-truth mask) and print its AP on held-out scenes")
    p.add_argument("--train-iterations", type=int, default=250,
                   help="Mask R-CNN iterations for --train, both stages together")
    common(p)
    p.set_defaults(func=_cmd_demo)

