"""Pictures of what a model looked at: attention maps over the views, AG-CNN's heatmap, box and crop."""

import os
from typing import Any

import numpy as np
from etils import epath
from PIL import Image, ImageDraw

from cxrjax.core import files


DISPLAY_SIZE = 256  # Small training resolutions are enlarged so that the maps stay readable.


def _overlay(view: np.ndarray, weights: np.ndarray) -> Image.Image:
  """uint8 [H, W, 3] view with a red heat overlay of weights [h, w] (scaled to its own maximum)."""
  if max(view.shape[:2]) < DISPLAY_SIZE:
    view = np.asarray(Image.fromarray(view).resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.Resampling.BILINEAR))
  height, width = view.shape[:2]
  heat = weights / max(float(weights.max()), 1e-12)
  heat = np.asarray(Image.fromarray((heat * 255).astype(np.uint8)).resize((width, height), Image.Resampling.BILINEAR))
  alpha = (heat.astype(np.float32) / 255.0)[..., None] * 0.6
  red = np.zeros_like(view, dtype=np.float32)
  red[..., 0] = 255.0
  return Image.fromarray((view * (1 - alpha) + red * alpha).astype(np.uint8))


def _save_png(image: Image.Image, path: epath.Path) -> None:
  with files.open_atomic(path, "wb") as handle:  # Local or gs://.
    image.save(handle, format="PNG")


def write_attention_maps(
  out_dir: str | os.PathLike, views: list[np.ndarray], words: list[str], maps: np.ndarray
) -> list[epath.Path]:
  """One PNG per word (both views side by side, the word written above) and `summary.png`, a grid."""
  out_dir = epath.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  tiles, written = [], []
  for index, (word, word_maps) in enumerate(zip(words, maps)):
    panels = [_overlay(view, weights) for view, weights in zip(views, word_maps)]
    width, height = sum(p.width for p in panels), panels[0].height
    tile = Image.new("RGB", (width, height + 16), "white")
    for offset, panel in zip(np.cumsum([0] + [p.width for p in panels[:-1]]), panels):
      tile.paste(panel, (int(offset), 16))
    ImageDraw.Draw(tile).text((2, 2), f"{index + 1}: {word}", fill="black")
    path = out_dir / f"{index + 1:03d}_{''.join(c for c in word if c.isalnum()) or 'punct'}.png"
    _save_png(tile, path)
    written.append(path)
    tiles.append(tile)
  columns = min(4, len(tiles))
  rows = -(-len(tiles) // columns)
  summary = Image.new("RGB", (columns * tiles[0].width, rows * tiles[0].height), "white")
  for index, tile in enumerate(tiles):
    summary.paste(tile, ((index % columns) * tile.width, (index // columns) * tile.height))
  _save_png(summary, out_dir / "summary.png")
  written.append(out_dir / "summary.png")
  return written


def _to_display(image: np.ndarray) -> np.ndarray:
  """uint8 as is; float (e.g. ImageNet-normalised) min-max scaled; gray -> RGB. -> uint8 [H, W, 3]."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected an image [H, W], [H, W, 1] or [H, W, 3], got {image.shape}")
  if image.dtype == np.uint8:
    return image
  image = image.astype(np.float64)
  if not np.isfinite(image).all():
    raise ValueError("the image holds non-finite values")
  low, high = image.min(), image.max()
  scaled = (image - low) / (high - low) if high > low else np.zeros_like(image)
  return np.round(scaled * 255).astype(np.uint8)


def _jet(values: np.ndarray) -> np.ndarray:
  """A jet-like colour map: [H, W] in [0, 1] -> uint8 [H, W, 3] (blue, cyan, yellow, red)."""
  v = np.clip(values, 0.0, 1.0)[..., None]
  red = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
  green = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
  blue = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
  return np.round(np.concatenate([red, green, blue], axis=-1) * 255).astype(np.uint8)


def render_attention_figure(
  image: np.ndarray,
  heatmap: np.ndarray,
  box: Any,
  local_image: np.ndarray,
  path: str | os.PathLike,
  title: str | None = None,
) -> epath.Path:
  """Writes a PNG for `predict-agcnn`: the global image with the crop box, the heatmap overlay
  (with the box), and the local image, side by side (PIL only).

  Args:
    image: the global image, [H, W] or [H, W, 3]; uint8, or float (min-max scaled for display).
    heatmap: [H, W] in [0, 1] (AGCNN's "heatmap").
    box: (y0, x0, y1, x1), half-open, in image pixels.
    local_image: the crop, as `image`; shown at height H.
    path: the PNG to write (folders are created).
    title: optional text drawn above the panels (e.g. the top findings).

  Returns:
    The path written.
  """
  rgb = _to_display(image)
  height, width = rgb.shape[:2]
  heatmap = np.asarray(heatmap, np.float64)
  if heatmap.shape != (height, width):
    raise ValueError(f"heatmap {heatmap.shape} does not match the image {(height, width)}")
  y0, x0, y1, x1 = (int(v) for v in np.asarray(box).reshape(-1))
  if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
    raise ValueError(f"box {(y0, x0, y1, x1)} is not a non-empty box inside {(height, width)}")
  overlay = np.round(0.55 * rgb + 0.45 * _jet(heatmap)).astype(np.uint8)
  local = Image.fromarray(_to_display(local_image))
  local = local.resize((max(1, round(local.width * height / local.height)), height), Image.Resampling.BILINEAR)
  line = max(1, round(min(height, width) / 112))
  panels = []
  for array in (rgb, overlay):
    panel = Image.fromarray(array)
    ImageDraw.Draw(panel).rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 40, 40), width=line)
    panels.append(panel)
  panels.append(local)
  gap, top = max(2, width // 64), 0
  if title:
    top = max(14, height // 16)
  figure = Image.new("RGB", (sum(p.width for p in panels) + gap * (len(panels) - 1), height + top), (255, 255, 255))
  x = 0
  for panel in panels:
    figure.paste(panel, (x, top))
    x += panel.width + gap
  if title:
    ImageDraw.Draw(figure).text((4, 1), title, fill=(0, 0, 0))
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  _save_png(figure, path)
  return path
