"""Check that a change to weakpaste's code leaves its outputs byte-identical.

Runs a fixed sequence of ``weakpaste`` commands (each in its own process, as a user runs
them) on the offline demo's synthetic scenes, then writes one line per output file:
its path relative to OUT and the SHA-256 of its bytes. Run it before and after a refactor
and compare the two lists::

    python benchmarks/byte_identity.py --out /tmp/before      # on the old commit
    python benchmarks/byte_identity.py --out /tmp/after       # on the new one
    python benchmarks/byte_identity.py --compare /tmp/before /tmp/after

``manifest.json`` files record times, versions and the config's layout, which a refactor
may change on purpose; they are hashed with those fields removed and listed apart, so a
data difference is never hidden among them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Fields of a manifest that differ between two runs of the same code (times, the host) or
# that a refactor may change without changing any data (the version, the step list).
_VOLATILE = {"created", "finished", "seconds", "python", "weakpaste_version", "host",
             "platform", "elapsed_s", "updated", "started", "time", "it_per_s", "data_time",
             "background_images", "config_hash", "inputs", "timings_s"}
# Every run happens in this one folder, so that the absolute paths written into the
# outputs agree between two runs; the finished folder is then moved to --out.
_SCRATCH = Path(tempfile.gettempdir()) / "weakpaste-byte-identity"


def _commands(out: Path) -> list[list[str]]:
    """The command lines, as ``weakpaste`` arguments, that produce OUT's files."""
    d, g = out / "demo", out / "demo_gt"
    scenes, pasted = d / "scenes", out / "paste_w1"
    return [
        ["demo", "--out", str(d), "--num-scenes", "60", "--num-images", "8", "--epochs", "3",
         "--quiet"],
        ["demo", "--out", str(g), "--num-scenes", "40", "--num-images", "6", "--from-gt",
         "--seed", "3", "--quiet"],
        ["bank", "from-coco", str(scenes / "instances.json"), "--images", str(scenes / "images"),
         "--out", str(out / "bank_gt"), "--quiet"],
        ["paste", "--bank", str(out / "bank_gt"), "--backgrounds", str(scenes / "instances.json"),
         "--images", str(scenes / "images"), "--out", str(out / "paste_w1"),
         "--num-images", "10", "--seed", "7", "--workers", "1", "--quiet"],
        ["paste", "--bank", str(out / "bank_gt"), "--backgrounds", str(scenes / "instances.json"),
         "--images", str(scenes / "images"), "--out", str(out / "paste_lvis"),
         "--num-images", "6", "--seed", "8", "--format", "lvis", "--placement", "space-max",
         "--blend", "gaussian", "poisson", "--image-format", "png", "--quiet"],
        ["mine", "fem", "--images", str(scenes / "images"), "--labels",
         str(scenes / "instances.json"), "--out", str(out / "mine_fem"), "--epochs", "2",
         "--backbone", "small_cnn", "--weights", "none", "--workers", "2",
         "--quiet"],
        ["evaluate-masks", str(out / "mine_fem"), "--gt", str(scenes / "instances.json"),
         "--json"],
        ["stats", str(out / "paste_w1" / "annotations.json"), "--json"],
        ["viz", str(out / "paste_w1" / "annotations.json"), "--images",
         str(out / "paste_w1" / "images"), "--out", str(out / "viz_w1"), "--num-images", "4",
         "--quiet"],
        ["train", "--train", f"{pasted / 'annotations.json'}:{pasted / 'images'}",
         "--out", str(out / "train"), "--backbone", "mobilenet_v3", "--weights", "none",
         "--image-size", "128", "--batch-size", "2", "--iterations", "3", "--threads", "1",
         "--seed", "5", "--quiet"],
        ["eval", "--checkpoint", str(out / "train" / "checkpoints" / "last.pt"), "--data",
         f"{scenes / 'instances.json'}:{scenes / 'images'}", "--out", str(out / "eval"),
         "--threads", "1", "--json", "--quiet"],
    ]


def run(dest: Path) -> Path:
    """Run every command, move the outputs to DEST and write DEST/hashes.txt."""
    if dest.exists():
        sys.exit(f"byte_identity: {dest} exists; choose a new folder")
    out = _SCRATCH
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = dict(os.environ, PYTHONHASHSEED="0")
    printed = out / "stdout"
    printed.mkdir(exist_ok=True)
    for number, argv in enumerate(_commands(out)):
        proc = subprocess.run([sys.executable, "-m", "weakpaste.cli", *argv], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"byte_identity: {' '.join(argv)} failed (rc {proc.returncode}):\n"
                     f"{proc.stderr}")
        # What the command printed is an output too; its folder and its run time are not.
        text = "\n".join(line for line in proc.stdout.replace(str(out), "OUT").splitlines()
                         if not line.startswith("took "))
        (printed / f"{number:02d}_{argv[0]}.txt").write_text(text + "\n")
    lines = []
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out).as_posix()
        if "/.cache/" not in f"/{rel}":  # internal caches hold file times
            lines.append(f"{_digest(path)}  {rel}")
    (out / "hashes.txt").write_text("\n".join(lines) + "\n")
    shutil.move(out, dest)
    return dest / "hashes.txt"


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _digest(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".json":
        data = json.dumps(_strip(json.loads(data)), sort_keys=True).encode()
    elif path.suffix == ".jsonl":
        rows = [_strip(json.loads(line)) for line in data.splitlines() if line.strip()]
        data = json.dumps(rows, sort_keys=True).encode()
    elif path.suffix == ".pt":
        data = _checkpoint_bytes(path)
    return hashlib.sha256(data).hexdigest()


def _checkpoint_bytes(path: Path) -> bytes:
    """A checkpoint's tensors and settings, without the version that wrote it."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    digest = hashlib.sha256()
    for key in sorted(set(ckpt) - {"weakpaste_version"}):
        value = ckpt[key]
        if key in ("model", "optimizer"):
            state = value if key == "model" else value.get("state", {})
            for name in sorted(state, key=str):
                tensors = state[name] if isinstance(state[name], dict) else {"": state[name]}
                for part in sorted(tensors):
                    t = tensors[part]
                    digest.update(f"{key}.{name}.{part}".encode())
                    digest.update(t.numpy().tobytes() if hasattr(t, "numpy") else repr(t).encode())
        else:
            text = json.dumps(_strip(value), sort_keys=True, default=str)
            digest.update(f"{key}={text}".encode())
    return digest.digest()


def compare(before: Path, after: Path) -> int:
    """Print every file whose hash differs between two runs; 0 when the data agree."""
    def table(root: Path) -> dict[str, str]:
        rows = (line.split("  ", 1) for line in (root / "hashes.txt").read_text().splitlines())
        return {rel: digest for digest, rel in rows}
    a, b = table(before), table(after)
    data_diff, manifest_diff = [], []
    for rel in sorted(set(a) | set(b)):
        if a.get(rel) != b.get(rel):
            is_manifest = rel.endswith("manifest.json")
            (manifest_diff if is_manifest else data_diff).append(rel)
    n_data = sum(not r.endswith("manifest.json") for r in set(a) | set(b))
    print(f"{n_data} data files compared: {len(data_diff)} differ")
    for rel in data_diff:
        print(f"  DATA   {rel}: {a.get(rel, 'missing')} -> {b.get(rel, 'missing')}")
    print(f"{len(manifest_diff)} manifests differ outside times and versions")
    for rel in manifest_diff:
        print(f"  CONFIG {rel}")
    return 1 if data_diff else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="run the commands into this new folder")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"),
                   help="compare two folders written by --out")
    args = p.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if not args.out:
        p.error("pass --out OUT or --compare BEFORE AFTER")
    print(run(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
