"""Image files to arrays: one place that decodes PNG/JPEG in any mode into uint8 RGB.

Resizing and normalising for a model is transforms.py's (from the encoder's config).
"""

import io
import pathlib

import numpy as np
from PIL import Image
from cxrjax.errors import UserError


class ImageError(UserError):
  """An image that cannot be used; the message names the file and the problem."""


def to_rgb_uint8(image: Image.Image | np.ndarray, source: str = "<array>") -> np.ndarray:
  """Any PIL image or array (8/16-bit grayscale, grayscale+alpha, palette, RGB, RGBA) -> uint8 [H, W, 3].

  16-bit and 32-bit integer data are scaled to 8 bits by their type's range (not by the image's own
  maximum), so the brightness of one image never depends on its content. Alpha is discarded.
  """
  array = np.asarray(image)
  if isinstance(image, Image.Image) and image.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr", "1"):
    array = np.asarray(image.convert("RGB"))
  if array.dtype == np.uint16 or (isinstance(image, Image.Image) and image.mode.startswith("I;16")):
    array = (array.astype(np.uint32) + 128) // 257  # 0..65535 -> 0..255, rounded.
  elif array.dtype in (np.int32, np.uint32):  # PIL mode "I": 16-bit PNGs often decode to it.
    array = (np.clip(array, 0, 65535).astype(np.uint32) + 128) // 257
  elif array.dtype == np.bool_:
    array = array.astype(np.uint8) * 255
  elif array.dtype != np.uint8:
    raise ImageError(f"{source}: unsupported pixel type {array.dtype}")
  array = array.astype(np.uint8)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim == 2:
    array = np.repeat(array[..., None], 3, axis=-1)
  if array.ndim != 3 or array.shape[-1] not in (3, 4):
    raise ImageError(f"{source}: expected a grayscale or colour image, got shape {array.shape}")
  return np.ascontiguousarray(array[..., :3])


def decode_image(data: bytes, source: str) -> np.ndarray:
  """Encoded PNG/JPEG bytes -> uint8 [H, W, 3]; corrupt data raises ImageError naming `source`."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()  # Decode now, so that truncated data fails here and not later.
      return to_rgb_uint8(image, source)
  except ImageError:
    raise
  except (OSError, SyntaxError, ValueError) as error:  # PIL's errors for corrupt or unknown data.
    raise ImageError(f"{source}: cannot decode image ({error})") from error


def load_image(path: str | pathlib.Path) -> np.ndarray:
  """Decodes an image file into uint8 [H, W, 3]; missing or corrupt files raise ImageError naming them."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ImageError(f"{path}: image file not found")
  return decode_image(path.read_bytes(), str(path))
