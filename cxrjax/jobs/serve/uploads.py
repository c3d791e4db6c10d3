"""What a prediction request may hold, checked before any work: its size, its images, its options.

Images are recognised by their first bytes (PNG or JPEG only, whatever the client calls them), their
pixel count is read from the header and refused above the limit before anything is decompressed (a
decompression bomb never reaches the decoder), and the pixels are then converted as `predict` converts
files (data/images.py: 16-bit scaled by its type's range, palette / RGBA / grayscale to RGB).
"""

import binascii
import base64
import dataclasses
import io
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from cxrjax.data import images as image_io
from cxrjax.core.errors import UserError

SIGNATURES = {"PNG": b"\x89PNG\r\n\x1a\n", "JPEG": b"\xff\xd8\xff"}
SEARCHES = ("beam", "greedy")
# Fields of a request besides its images; the same names in a multipart form and in a JSON object.
OPTIONS = ("model", "search", "beam_size", "max_length", "attention", "views")


class RequestError(UserError):
  """A request the server refuses; `status` is the HTTP status it answers with (4xx, or 503 when busy)."""

  def __init__(self, message: str, status: int = 400):
    super().__init__(message)
    self.status = status


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one request may hold."""

  max_request_bytes: int = 20 * 2**20  # the whole body, images and fields together
  max_pixels: int = 25_000_000  # per image (5000 x 5000); PIL's own bomb guard starts at 89 million
  max_images: int = 2  # a frontal and a lateral view
  max_beam_size: int = 8


@dataclasses.dataclass(frozen=True)
class Options:
  """A request's validated options; None: the model's default (the run's config)."""

  model: str | None = None
  search: str | None = None  # "beam" or "greedy"
  beam_size: int | None = None
  max_length: int | None = None
  attention: bool = False  # per-word attention maps (report generators), AG-CNN's heatmap
  views: bool = False  # the views as the model saw them, PNG data URLs (to draw the maps over)


def decode_upload(data: bytes, name: str, limits: Limits) -> np.ndarray:
  """One uploaded file -> uint8 [H, W, 3]; a file that is empty, not PNG/JPEG, too large or corrupt raises
  RequestError naming `name`."""
  if not data:
    raise RequestError(f"{name}: the file is empty")
  kind = next((k for k, signature in SIGNATURES.items() if data.startswith(signature)), None)
  if kind is None:
    raise RequestError(
      f"{name}: not a PNG or JPEG image (it starts with {data[:8]!r}); only PNG and JPEG are accepted", 415
    )
  try:
    with Image.open(io.BytesIO(data), formats=[kind]) as image:  # Reads the header only.
      width, height = image.size
      if width * height > limits.max_pixels:
        raise RequestError(
          f"{name}: {width} x {height} = {width * height:,} pixels; the limit is "
          f"{limits.max_pixels:,} (refused before decoding)",
          413,
        )
      image.load()
      return image_io.to_rgb_uint8(image, name)
  except RequestError:
    raise
  except Image.DecompressionBombError as error:  # PIL's own guard, above 2 x 89 million pixels.
    raise RequestError(
      f"{name}: {error}; the limit is {limits.max_pixels:,} pixels (refused before decoding)", 413
    ) from error
  except image_io.ImageError as error:
    raise RequestError(str(error)) from error
  except (OSError, SyntaxError, ValueError) as error:  # PIL's errors for corrupt or truncated data.
    raise RequestError(f"{name}: cannot decode the {kind} image ({error})") from error


def decode_base64(text: Any, name: str) -> bytes:
  """A JSON image: base64 text, optionally a data URL ("data:image/png;base64,...")."""
  if not isinstance(text, str):
    raise RequestError(f"{name}: expected a base64 string, got {type(text).__name__}")
  if text.startswith("data:"):
    text = text.partition(",")[2]
  try:
    return base64.b64decode(text, validate=True)
  except (binascii.Error, ValueError) as error:
    raise RequestError(f"{name}: not valid base64 ({error})") from error


def parse_options(fields: Mapping[str, Any], limits: Limits) -> Options:
  """Form fields (strings) or JSON values -> Options; unknown names and ill-typed values raise RequestError.
  Whether a value fits the chosen model (its maximum length, a classifier given decoding options) is the
  engine's check."""
  unknown = sorted(set(fields) - set(OPTIONS))
  if unknown:
    raise RequestError(f"unknown field(s) {', '.join(unknown)}; known: images, {', '.join(OPTIONS)}")
  search = fields.get("search")
  if search is not None and search not in SEARCHES:
    raise RequestError(f"search={search!r}; expected one of {', '.join(SEARCHES)}")
  beam_size = _integer(fields, "beam_size")
  if beam_size is not None and not 1 <= beam_size <= limits.max_beam_size:
    raise RequestError(f"beam_size={beam_size}; expected 1 to {limits.max_beam_size}")
  if beam_size is not None and search == "greedy":
    raise RequestError("beam_size applies to search=beam, not greedy")
  max_length = _integer(fields, "max_length")
  if max_length is not None and max_length < 1:
    raise RequestError(f"max_length={max_length}; expected at least 1")
  model = fields.get("model")
  if model is not None and not isinstance(model, str):
    raise RequestError(f"model: expected a name, got {type(model).__name__}")
  return Options(
    model=model or None,
    search=search,
    beam_size=beam_size,
    max_length=max_length,
    attention=_boolean(fields, "attention"),
    views=_boolean(fields, "views"),
  )


def _integer(fields: Mapping[str, Any], name: str) -> int | None:
  value = fields.get(name)
  if value is None or value == "":
    return None
  if isinstance(value, str) and value.strip().lstrip("-").isdigit():
    return int(value)
  if isinstance(value, int) and not isinstance(value, bool):
    return value
  raise RequestError(f"{name}={value!r}; expected an integer")


def _boolean(fields: Mapping[str, Any], name: str) -> bool:
  value = fields.get(name, False)
  if isinstance(value, bool):
    return value
  if isinstance(value, str) and value.lower() in ("true", "1", "false", "0", ""):
    return value.lower() in ("true", "1")
  raise RequestError(f"{name}={value!r}; expected true or false")
