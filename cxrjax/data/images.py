"""Image files to arrays: one place that decodes PNG/JPEG in any mode into uint8 RGB.

An image's size is checked from its header before any pixel is decoded: a few kilobytes of PNG can
declare billions of pixels (a decompression bomb). The limit is `max_pixels`, by default
$CXRJAX_MAX_IMAGE_PIXELS or DEFAULT_MAX_PIXELS (8192 x 8192, four times a large radiograph).
Resizing and normalising for a model is transforms.py's (from the encoder's config).
"""

import errno
import io
import os
import pathlib
import re
import stat

import numpy as np
from PIL import Image
from cxrjax.core.errors import UserError

DEFAULT_MAX_PIXELS = 8192 * 8192
MAX_PIXELS_VARIABLE = "CXRJAX_MAX_IMAGE_PIXELS"


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


def max_pixels_allowed() -> int:
  """The pixel limit: $CXRJAX_MAX_IMAGE_PIXELS if set, else DEFAULT_MAX_PIXELS."""
  value = os.environ.get(MAX_PIXELS_VARIABLE, "")
  if not value:
    return DEFAULT_MAX_PIXELS
  if not value.isdigit() or int(value) < 1:
    raise ImageError(f"${MAX_PIXELS_VARIABLE}={value!r}: expected a positive number of pixels")
  return int(value)


def decode_image(data: bytes, source: str, max_pixels: int | None = None) -> np.ndarray:
  """Encoded PNG/JPEG bytes -> uint8 [H, W, 3]; corrupt data, or more than `max_pixels` pixels (default
  `max_pixels_allowed()`), raises ImageError naming `source`."""
  if not data:
    raise ImageError(f"{source}: an empty file (0 bytes), not an image")
  limit = max_pixels_allowed() if max_pixels is None else max_pixels
  try:
    with Image.open(io.BytesIO(data)) as image:  # Reads the header only.
      width, height = image.size
      if width * height > limit:
        raise ImageError(
          f"{source}: {width}x{height} pixels exceed the limit of {limit:,} pixels (a "
          f"decompression bomb?); set ${MAX_PIXELS_VARIABLE} to allow larger images"
        )
      image.load()  # Decode now, so that truncated data fails here and not later.
      return to_rgb_uint8(image, source)
  except ImageError:
    raise
  except Image.DecompressionBombError as error:  # PIL's own limit (Image.MAX_IMAGE_PIXELS), checked first.
    raise ImageError(f"{source}: refused by PIL as a possible decompression bomb ({error})") from None
  except (OSError, SyntaxError, ValueError) as error:  # PIL's errors for corrupt or unknown data.
    if isinstance(error, Image.UnidentifiedImageError):
      problem = f"not an image of a known format (it starts with {data[:8]!r})"
    else:  # PIL names the buffer by its repr ("<_io.BytesIO object at 0x...>"): the file's name says more.
      problem = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the data", str(error))
    raise ImageError(f"{source}: cannot decode image ({problem})") from error


def load_image(path: str | pathlib.Path, max_pixels: int | None = None) -> np.ndarray:
  """Decodes an image file into uint8 [H, W, 3]; a path that is not a readable image file (missing, a
  folder, a broken link or a link loop, empty, too large, corrupt) raises ImageError naming it."""
  path = pathlib.Path(path)
  try:
    info = os.stat(path)
  except FileNotFoundError:
    if os.path.islink(path):
      raise ImageError(f"{path}: a broken symbolic link (to {os.readlink(path)}, which does not exist)") from None
    raise ImageError(f"{path}: image file not found") from None
  except OSError as error:
    if error.errno == errno.ELOOP:
      raise ImageError(f"{path}: a symbolic link loop ({error.strerror}), not an image file") from None
    raise ImageError(f"{path}: cannot be read ({error.strerror})") from None
  if stat.S_ISDIR(info.st_mode):
    raise ImageError(f"{path}: is a directory, not an image file")
  if not stat.S_ISREG(info.st_mode):
    raise ImageError(f"{path}: not a regular file (a device, socket or pipe), not an image file")
  try:
    data = path.read_bytes()
  except OSError as error:
    raise ImageError(f"{path}: cannot be read ({error.strerror})") from None
  return decode_image(data, str(path), max_pixels)
