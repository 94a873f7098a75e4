"""Make a small image-folder dataset of coloured shapes, to try image training without a download.

    python -m tasks.data.shapes data/shapes                  # 120 images per class, 32x32 PNG
    python -m tasks.data.shapes data/shapes --per-class 300 --size 64 --seed 1
    python -m tasks.data.shapes data/shapes --split          # train/ and test/ folders instead
    python -m tasks.data.shapes data/shapes4 --classes diamond,cross,ring,bar --per-class 10 --seed 1

Writes `<root>/<class>/<class>_<n>.png` for the classes circle, square and
triangle (or `--classes` among those and diamond, cross, ring, bar): one filled shape per image, of random bright colour, size and position, on
a random dark background. The same seed gives the same files.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

CLASSES = ("circle", "square", "triangle")
# More kinds, for a second image set with other classes (configs/shapes_finetune.yaml fine-tunes on these).
MORE_CLASSES = ("diamond", "cross", "ring", "bar")


def _dark(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 70, size=3))  # type: ignore[return-value]


def _bright(rng: np.random.Generator) -> tuple[int, int, int]:
    colour = rng.integers(0, 256, size=3)
    colour[rng.integers(0, 3)] = rng.integers(180, 256)  # at least one strong channel: it stands out
    return tuple(int(v) for v in colour)  # type: ignore[return-value]


def draw_shape(kind: str, size: int, rng: np.random.Generator):
    """One RGB PIL image of `kind` (circle, square or triangle) at a random place, size and colour."""
    from PIL import Image, ImageDraw

    background = _dark(rng)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(0.22, 0.4) * size  # half the shape's extent
    cx = rng.uniform(radius, size - radius)
    cy = rng.uniform(radius, size - radius)
    fill = _bright(rng)
    if kind == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    elif kind == "square":
        draw.rectangle([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    elif kind == "diamond":
        draw.polygon([(cx, cy - radius), (cx + radius, cy), (cx, cy + radius), (cx - radius, cy)], fill=fill)
    elif kind == "cross":
        arm = radius / 3
        draw.rectangle([cx - radius, cy - arm, cx + radius, cy + arm], fill=fill)
        draw.rectangle([cx - arm, cy - radius, cx + arm, cy + radius], fill=fill)
    elif kind == "ring":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
        inner = radius * 0.55
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=background)
    elif kind == "bar":
        draw.rectangle([cx - radius, cy - radius / 3, cx + radius, cy + radius / 3], fill=fill)
    elif kind == "triangle":
        turn = rng.uniform(0, 2 * math.pi / 3)
        points = [(cx + radius * math.cos(turn + k * 2 * math.pi / 3), cy + radius * math.sin(turn + k * 2 * math.pi / 3)) for k in range(3)]
        draw.polygon(points, fill=fill)
    else:
        raise ValueError(f"unknown shape {kind!r}; expected one of {', '.join(CLASSES + MORE_CLASSES)}")
    return image


def make_shapes(
    root: Path,
    per_class: int = 120,
    size: int = 32,
    seed: int = 0,
    classes: tuple[str, ...] = CLASSES,
    split: bool = False,
    test_fraction: float = 0.2,
) -> Path:
    """Write the dataset under `root` and return it. With `split`, as train/ and test/ folders."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    n_test = round(per_class * test_fraction) if split else 0
    for kind in classes:
        for i in range(per_class):
            part = ("test" if i < n_test else "train") if split else ""
            folder = root / part / kind if part else root / kind
            folder.mkdir(parents=True, exist_ok=True)
            draw_shape(kind, size, rng).save(folder / f"{kind}_{i:04d}.png")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.data.shapes", description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder to write, e.g. data/shapes")
    parser.add_argument("--per-class", type=int, default=120, help="images per class (default 120)")
    parser.add_argument("--size", type=int, default=32, help="width and height in pixels (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--split", action="store_true", help="write train/ and test/ (20%%) folders")
    parser.add_argument(
        "--classes", default=",".join(CLASSES),
        help=f"comma-separated kinds (default {','.join(CLASSES)}; also {','.join(MORE_CLASSES)})",
    )
    args = parser.parse_args(argv)
    if args.per_class < 1 or args.size < 8:
        parser.error("--per-class must be at least 1 and --size at least 8")
    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    unknown = [c for c in classes if c not in CLASSES + MORE_CLASSES]
    if len(classes) < 2 or unknown:
        parser.error(f"--classes needs two or more of {', '.join(CLASSES + MORE_CLASSES)} (got {args.classes!r})")
    if args.root.exists() and any(args.root.iterdir()):
        print(f"error: {args.root}: already holds files; choose a new or empty folder", file=sys.stderr)
        return 2
    make_shapes(args.root, args.per_class, args.size, args.seed, classes=classes, split=args.split)
    total = args.per_class * len(classes)
    print(f"wrote {total} images ({args.per_class} per class: {', '.join(classes)}) to {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
