"""Single-study inference: a frontal and optionally a lateral view -> a report, and attention maps.

  cxrjax predict --workdir DIR FRONTAL.png [LATERAL.png] [--attention-maps OUT_DIR]

The images get the evaluation transform of the run's config (resize, ImageNet normalisation); a single
view is repeated, as the datasets do for single-image studies. The report is decoded with the config's
beam search. The attention maps come from re-reading the generated report with teacher forcing, which
gives, for each generated word, the decoder's attention over the regions of both views.
"""

import pathlib
from typing import Any

import jax
import numpy as np
from PIL import Image, ImageDraw

from cxrjax import evaluate, train
from cxrjax.data import images as image_io
from cxrjax.text import tokenizers as text


def load_study(paths: list[str], image_size: int) -> tuple[np.ndarray, list[np.ndarray]]:
  """1 or 2 image files -> (images float32 [1, 2, size, size, 3], the two resized uint8 views)."""
  if not 1 <= len(paths) <= 2:
    raise ValueError(f"a study is a frontal and optionally a lateral image, got {len(paths)} files")
  views = [image_io.resize(image_io.load_image(path), image_size, image_size) for path in paths]
  if len(views) == 1:
    views = views * 2
  return image_io.normalize(np.stack(views))[None], views


def attention_maps(model, state: train.TrainState, images: np.ndarray, generated: str,
                   vocabulary: text.Vocabulary) -> tuple[list[str], np.ndarray | None]:
  """Words of `generated` and their attention [words, views, h, w] (None: the model has none)."""
  words = generated.split()
  tokens = np.array([[text.START_ID] + [vocabulary.token_id(w) for w in words]], np.int32)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  outputs = jax.jit(lambda v, i, t: model.apply(v, i, t))(variables, images, tokens)
  attention = outputs.get("attention")
  if attention is None:
    return words, None
  attention = np.asarray(attention)[0, :len(words)]  # [words, regions]
  views = images.shape[1]
  side = int(round((attention.shape[-1] / views) ** 0.5))
  return words, attention.reshape(len(words), views, side, side)


DISPLAY_SIZE = 256  # Small training resolutions are enlarged so that the maps stay readable.


def _overlay(view: np.ndarray, weights: np.ndarray) -> Image.Image:
  """uint8 [H, W, 3] view with a red heat overlay of weights [h, w] (scaled to its own maximum)."""
  if max(view.shape[:2]) < DISPLAY_SIZE:
    view = image_io.resize(view, DISPLAY_SIZE, DISPLAY_SIZE)
  height, width = view.shape[:2]
  heat = weights / max(float(weights.max()), 1e-12)
  heat = np.asarray(Image.fromarray((heat * 255).astype(np.uint8)).resize((width, height),
                                                                           Image.Resampling.BILINEAR))
  alpha = (heat.astype(np.float32) / 255.0)[..., None] * 0.6
  red = np.zeros_like(view, dtype=np.float32)
  red[..., 0] = 255.0
  return Image.fromarray((view * (1 - alpha) + red * alpha).astype(np.uint8))


def write_attention_maps(out_dir: str | pathlib.Path, views: list[np.ndarray], words: list[str],
                         maps: np.ndarray) -> list[pathlib.Path]:
  """One PNG per word (both views side by side, the word written above) and `summary.png`, a grid."""
  out_dir = pathlib.Path(out_dir)
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
    tile.save(path)
    written.append(path)
    tiles.append(tile)
  columns = min(4, len(tiles))
  rows = -(-len(tiles) // columns)
  summary = Image.new("RGB", (columns * tiles[0].width, rows * tiles[0].height), "white")
  for index, tile in enumerate(tiles):
    summary.paste(tile, ((index % columns) * tile.width, (index // columns) * tile.height))
  summary.save(out_dir / "summary.png")
  written.append(out_dir / "summary.png")
  return written


def predict(workdir: str, paths: list[str], attention_dir: str | None = None,
            checkpoint: str = train.BEST) -> dict[str, Any]:
  """The `cxrjax predict` job; returns {"report", "attention_maps": [paths] or a reason}."""
  config, model, vocabulary, state = evaluate.load_run(workdir, checkpoint)
  images, views = load_study(paths, config.data.image_size)
  generator = evaluate.ReportGenerator(model, vocabulary, config.decode)
  report = generator(state, images)[0]
  result: dict[str, Any] = {"images": list(paths), "report": report}
  if attention_dir is not None:
    words, maps = attention_maps(model, state, images, report, vocabulary)
    if maps is None:
      result["attention_maps"] = f"none: the {config.model.name} model has no attention"
    elif not words:
      result["attention_maps"] = "none: the generated report is empty"
    else:
      result["attention_maps"] = [str(p) for p in write_attention_maps(attention_dir, views, words, maps)]
  return result


def predict_agcnn(workdir: str, paths: list[str], out_dir: str | pathlib.Path,
                  checkpoint: str = train.BEST) -> list[dict[str, Any]]:
  """AG-CNN on single images: probabilities of the run's stage branch (fusion after stage 3), and a
  PNG per image with the global image, the heatmap, the crop box and the local image."""
  from cxrjax.models import agcnn
  from cxrjax import tasks
  config, model, _, state = evaluate.load_run(workdir, checkpoint)
  task = tasks.make_task(config)
  if task.name != "classification":
    raise ValueError(f"{workdir}: holds a {config.model.name} model; predict-agcnn needs an AG-CNN run")
  label_names = _label_names(config)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  forward = jax.jit(lambda v, x: model.apply(v, x))
  out_dir = pathlib.Path(out_dir)
  results = []
  for path in paths:
    view = image_io.resize(image_io.load_image(path), config.data.image_size, config.data.image_size)
    outputs = jax.device_get(forward(variables, image_io.normalize(view)[None]))
    probabilities = 1.0 / (1.0 + np.exp(-outputs[agcnn.STAGE_LOGITS[task.stage]][0]))
    top = np.argsort(-probabilities)[:3]
    figure = out_dir / f"{pathlib.Path(path).stem}_agcnn.png"
    agcnn.render_attention_figure(
        view, outputs["heatmap"][0], outputs["boxes"][0], outputs["local_images"][0], figure,
        title=", ".join(f"{label_names[i]} {probabilities[i]:.2f}" for i in top))
    results.append({"image": str(path), "figure": str(figure), "box": [int(b) for b in outputs["boxes"][0]],
                    "probabilities": {n: round(float(p), 6) for n, p in zip(label_names, probabilities)}})
  return results


def _label_names(config) -> list[str]:
  from cxrjax.data import pipeline
  try:
    return list(pipeline.make_source(config.data, "test")[1].label_names)
  except (FileNotFoundError, ValueError):  # Data not on this machine: fall back to the class order.
    from cxrjax.data import chestxray14
    return list(chestxray14.class_names(config.model.num_classes == 15))
