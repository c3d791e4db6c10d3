"""Pictures of what a model looked at: AG-CNN's figure (image with the box, heatmap overlay, crop)."""

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cxrjax.run import figures
from cxrjax.data import transforms
from cxrjax.ops import attention_crop


@pytest.fixture(scope="module")
def real_image(shared_data):
  """A real ChestX-ray14 image as the model reads it (ImageNet-normalised floats, 224x224)."""
  path = sorted((shared_data / "nih_chestxray14/images").glob("*.png"))[0]
  return transforms.load_for_model(path, transforms.Preprocessing(image_size=224))


def test_render_attention_figure(tmp_path, real_image):
  image = real_image
  heatmap = np.tile(np.linspace(0, 1, 224, dtype=np.float32), (224, 1))
  local = np.asarray(attention_crop.crop_and_resize(jnp.asarray(image[None]), jnp.array([[20, 100, 180, 224]]), 224))[0]
  path = figures.render_attention_figure(
    image, heatmap, (20, 100, 180, 224), local, tmp_path / "f" / "a.png", title="Effusion 0.91"
  )
  figure = np.asarray(Image.open(path).convert("RGB"))
  top = figure.shape[0] - 224
  assert figure.shape[0] > 224 and figure.shape[1] == 3 * 224 + 2 * 3
  assert tuple(figure[top + 20, 150]) == (255, 40, 40)  # the box's top edge on the global image
  assert tuple(figure[top + 100, 227 + 100]) == (255, 40, 40)  # ... and on the overlay (left edge x=100)
  # The overlay is red where the heatmap is 1, blue where it is 0.
  right, left = figure[top + 5, 227 + 220].astype(int), figure[top + 5, 227 + 2].astype(int)
  assert right[0] > right[2] and left[2] > left[0]
  with pytest.raises(ValueError, match="not a non-empty box"):
    figures.render_attention_figure(image, heatmap, (10, 10, 10, 20), local, tmp_path / "b.png")
