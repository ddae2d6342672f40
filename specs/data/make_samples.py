"""Regenerate the bundled sample images (deterministic): python specs/data/make_samples.py"""

import random
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).parent
SIZES = [(128, 128), (160, 120), (120, 160), (144, 96), (128, 128), (96, 144)]


def toy(draw: ImageDraw.ImageDraw, w: int, h: int, rng: random.Random, color) -> None:
    """A simple figure: body, head and eyes, placed a little differently each time."""
    cx, cy = w // 2 + rng.randint(-8, 8), h // 2 + rng.randint(-6, 6)
    s = min(w, h) // 4
    draw.ellipse([cx - s, cy - s // 2, cx + s, cy + s + s // 2], fill=color)
    draw.ellipse([cx - s // 2, cy - s - s // 2, cx + s // 2, cy - s // 2 + 4], fill=(250, 210, 60))
    for dx in (-s // 5, s // 5):
        draw.ellipse([cx + dx - 3, cy - s - 2, cx + dx + 3, cy - s + 4], fill=(20, 20, 20))


def make(folder: str, count: int, color, seed: int) -> None:
    rng = random.Random(seed)
    out = HERE / folder
    out.mkdir(exist_ok=True)
    for i in range(count):
        w, h = SIZES[i % len(SIZES)]
        bg = tuple(rng.randint(60, 200) for _ in range(3))
        img = Image.new("RGB", (w, h), bg)
        toy(ImageDraw.Draw(img), w, h, rng, color)
        img.save(out / f"{folder}-{i:02d}.png", optimize=True)


if __name__ == "__main__":
    make("toy", 6, (200, 40, 40), seed=1)
    make("class-toy", 6, (60, 90, 200), seed=2)
