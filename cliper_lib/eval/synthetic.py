"""A synthetic data set with exact masks: textured shapes of known classes, for tests and smoke
runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .datasets import Sample, class_file_path, class_names


class SyntheticDataset(Sequence[Sample]):
    """Discs, rectangles and triangles of known classes on a textured background, with exact masks.

    Sample i depends only on (seed, i), so any shard or resumed run sees the same images. Each class
    has its own colour and texture (stripes, checks, dots or flat); the background is a smooth
    colour gradient with noise. Labels are drawn from a small pool of classes so a few images still
    repeat each class.
    """

    SHAPES = ("disc", "rectangle", "triangle")

    def __init__(
        self,
        num_images: int = 8,
        classes: Sequence[str] | int | str = 20,
        size: int | tuple[int, int] = 96,
        seed: int = 0,
        *,
        max_shapes: int = 3,
        pool_size: int = 6,
    ) -> None:
        if isinstance(classes, str):  # a class file name or path
            self.class_file: Path | None = class_file_path(classes)
            classes = class_names(classes)[1:]
        else:
            self.class_file = None
        self.classes = (
            [f"class{k}" for k in range(1, classes + 1)]
            if isinstance(classes, int)
            else list(classes)
        )
        if not self.classes:
            raise ValueError("SyntheticDataset needs at least one class")
        self.num_images = int(num_images)
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.seed = int(seed)
        self.max_shapes = max_shapes
        self.name = "synthetic"
        rng = np.random.default_rng([self.seed, 2**31 - 1])
        count = min(pool_size, len(self.classes))
        self.label_pool = np.sort(
            rng.choice(np.arange(1, len(self.classes) + 1), size=count, replace=False)
        )
        self._names = [f"synthetic_{i:05d}" for i in range(self.num_images)]

    @property
    def names(self) -> list[str]:
        return self._names

    @property
    def num_classes(self) -> int:
        return len(self.classes) + 1

    @property
    def class_names(self) -> list[str]:
        return ["background"] + self.classes

    has_masks = True

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if not -self.num_images <= index < self.num_images:
            raise IndexError(index)
        index %= self.num_images
        rng = np.random.default_rng([self.seed, index])
        height, width = self.size
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        # Background: a smooth gradient between two dull colours plus mild noise.
        c0, c1 = rng.uniform(40, 120, size=(2, 3))
        t = ((xx / max(width - 1, 1) + yy / max(height - 1, 1)) / 2)[..., None]  # (H, W, 1)
        image = c0 * (1 - t) + c1 * t + rng.normal(0, 4, size=(height, width, 3))
        mask = np.zeros((height, width), dtype=np.int64)
        for _ in range(int(rng.integers(1, self.max_shapes + 1))):
            label = int(rng.choice(self.label_pool))
            region = self._shape(rng, yy, xx)
            image[region] = self._texture(label, yy, xx)[region]
            # later shapes cover earlier ones in the mask exactly as in the image
            mask[region] = label
        return Sample(self._names[index], np.clip(image, 0, 255).astype(np.uint8), mask)

    def _shape(
        self, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, kind: str | None = None
    ) -> np.ndarray:
        """A random (H, W) boolean region of one shape kind (random kind unless given)."""
        height, width = yy.shape
        short = min(height, width)
        drawn = self.SHAPES[int(rng.integers(len(self.SHAPES)))]
        kind = kind or drawn  # draw anyway so the random stream does not depend on `kind`
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        half = rng.uniform(0.12, 0.3) * short
        if kind == "disc":
            return (yy - cy) ** 2 + (xx - cx) ** 2 <= half**2
        if kind == "rectangle":
            hy, hx = half * rng.uniform(0.6, 1.4), half * rng.uniform(0.6, 1.4)
            return (np.abs(yy - cy) <= hy) & (np.abs(xx - cx) <= hx)
        # Triangle: the intersection of three half-planes through its corners (any winding order).
        angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
        # (3, 2) y, x
        corners = np.stack([cy + half * np.sin(angles), cx + half * np.cos(angles)], axis=1)
        sides = []
        for (y0, x0), (y1, x1) in zip(corners, np.roll(corners, -1, axis=0), strict=True):
            sides.append((x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0))
        sides = np.stack(sides)  # (3, H, W)
        return np.all(sides >= 0, axis=0) | np.all(sides <= 0, axis=0)

    def _texture(self, label: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        """The (H, W, 3) float appearance of class `label`: fixed per (seed, label)."""
        rng = np.random.default_rng([self.seed, 2**31 - 2, label])
        colour = rng.uniform(60, 255, size=3)
        accent = 255 - colour
        period = float(rng.integers(4, 10))
        kind = label % 4
        if kind == 0:
            on = (np.floor(xx / period) % 2) == 0  # vertical stripes
        elif kind == 1:
            on = ((np.floor(xx / period) + np.floor(yy / period)) % 2) == 0  # checks
        elif kind == 2:
            on = ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) <= (
                period / 3
            ) ** 2  # dots
        else:
            on = np.ones_like(xx, dtype=bool)  # flat
        return np.where(on[..., None], colour, 0.7 * colour + 0.3 * accent)
