"""Frame composition: panels side by side with a text header, contact sheets, and their mp4/GIF/PNG files.

A composed frame of n panels of h x w frames, upscaled by an integer factor u (nearest neighbour, so small frames
stay legible), is HEADER + u*h pixels high and n*u*w + (n-1)*SEP wide: a header band (the title, then each panel's
label above it) over the panels, separated by SEP-pixel white columns.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from PIL import Image, ImageDraw, ImageFont

SEP = 4  # white pixels between panels
HEADER = 30  # pixels of text above the panels: a title line and a label line
LABEL_WIDTH = 70  # pixels of row labels left of a contact sheet
MIN_PANEL_HEIGHT = 128  # small frames are upscaled to at least this height


def upscale_factor(height: int, min_height: int = MIN_PANEL_HEIGHT) -> int:
    """The integer factor that brings frames of `height` rows to at least `min_height` (1 for larger frames)."""
    return max(1, -(-min_height // height))


def difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| of uint8 images, as a uint8 image."""
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).astype(np.uint8)


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=11)


def _upscale(frame: np.ndarray, factor: int) -> np.ndarray:
    return frame.repeat(factor, axis=0).repeat(factor, axis=1)


def side_by_side(panels: list[np.ndarray], labels: list[str], title: str, factor: int) -> np.ndarray:
    """uint8 frames [h, w, 3] side by side under `title` and their labels: [HEADER + u*h, n*u*w + (n-1)*SEP, 3]."""
    h, w, _ = panels[0].shape
    pw = w * factor
    canvas = np.full((HEADER + h * factor, len(panels) * pw + (len(panels) - 1) * SEP, 3), 255, np.uint8)
    for i, panel in enumerate(panels):
        x = i * (pw + SEP)
        canvas[HEADER:, x : x + pw] = _upscale(panel, factor)
    image = Image.fromarray(canvas)
    draw, font = ImageDraw.Draw(image), _font()
    draw.text((2, 1), title, fill=(0, 0, 0), font=font)
    for i, label in enumerate(labels):
        draw.text((i * (pw + SEP) + 2, HEADER // 2), label, fill=(40, 40, 160), font=font)
    return np.asarray(image)


def contact_sheet(rows: list[tuple[str, np.ndarray]], column_titles: list[str], factor: int) -> np.ndarray:
    """A grid of uint8 frames: one row per (label, frames [N, h, w, 3]), one column per title; labels at the left,
    titles on top, SEP-pixel white gaps between cells."""
    n, h, w, _ = rows[0][1].shape
    ph, pw = h * factor, w * factor
    height = HEADER // 2 + len(rows) * (ph + SEP)
    canvas = np.full((height, LABEL_WIDTH + n * (pw + SEP), 3), 255, np.uint8)
    for r, (_, frames) in enumerate(rows):
        y = HEADER // 2 + r * (ph + SEP)
        for c, frame in enumerate(frames):
            x = LABEL_WIDTH + c * (pw + SEP)
            canvas[y : y + ph, x : x + pw] = _upscale(frame, factor)
    image = Image.fromarray(canvas)
    draw, font = ImageDraw.Draw(image), _font()
    for c, title in enumerate(column_titles):
        draw.text((LABEL_WIDTH + c * (pw + SEP) + 2, 1), title, fill=(0, 0, 0), font=font)
    for r, (label, _) in enumerate(rows):
        draw.text((2, HEADER // 2 + r * (ph + SEP) + ph // 2 - 6), label, fill=(0, 0, 0), font=font)
    return np.asarray(image)


def _even(frame: np.ndarray) -> np.ndarray:
    """The frame padded with white to even height and width (H.264 in yuv420p needs both even)."""
    h, w, _ = frame.shape
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), constant_values=255)


def write_mp4(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    """H.264 mp4 of uint8 frames [h, w, 3] (padded to even sizes), one frame per entry."""
    with imageio.get_writer(path, fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=1) as writer:
        for frame in frames:
            writer.append_data(_even(frame))
    return path


def write_gif(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    """A looping GIF of uint8 frames [h, w, 3], one frame per entry."""
    imageio.mimsave(path, frames, format="GIF", duration=1000.0 / fps, loop=0)
    return path


def write_png(path: Path, image: np.ndarray) -> Path:
    Image.fromarray(image).save(path)
    return path
