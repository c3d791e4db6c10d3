"""Image decoding: every PNG mode becomes RGB uint8; bad files fail with their name."""

import numpy as np
import pytest
from PIL import Image

from cxrjax.data import images as image_io


def test_real_grayscale_and_rgba_chest_xrays_decode_to_rgb(shared_data):
  folder = shared_data / "nih_chestxray14" / "images"
  gray = image_io.load_image(folder / "00000129_000.png")
  rgba = image_io.load_image(folder / "00001369_000.png")
  for image in (gray, rgba):
    assert image.shape == (1024, 1024, 3) and image.dtype == np.uint8
  np.testing.assert_array_equal(gray[..., 0], np.asarray(Image.open(folder / "00000129_000.png")))
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
  np.testing.assert_array_equal(rgba, np.asarray(Image.open(folder / "00001369_000.png"))[..., :3])


def test_16_bit_grayscale_is_scaled_by_its_type_range(tmp_path):
  values = np.array([[0, 257, 65535, 32896]], np.uint16)
  Image.fromarray(values).save(tmp_path / "sixteen.png")
  decoded = image_io.load_image(tmp_path / "sixteen.png")
  np.testing.assert_array_equal(decoded[0, :, 0], [0, 1, 255, 128])


def test_grayscale_alpha_and_palette_modes(tmp_path):
  Image.new("LA", (5, 4), (100, 7)).save(tmp_path / "la.png")
  Image.new("P", (5, 4), 3).save(tmp_path / "p.png")
  assert image_io.load_image(tmp_path / "la.png")[0, 0].tolist() == [100, 100, 100]
  assert image_io.load_image(tmp_path / "p.png").shape == (4, 5, 3)


def test_missing_and_corrupt_files_raise_with_the_file_name(tmp_path):
  with pytest.raises(image_io.ImageError, match="absent.png: image file not found"):
    image_io.load_image(tmp_path / "absent.png")
  (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
  with pytest.raises(image_io.ImageError, match="corrupt.png: cannot decode"):
    image_io.load_image(tmp_path / "corrupt.png")
  good = tmp_path / "good.png"
  Image.fromarray(np.full((64, 64), 9, np.uint8)).save(good)
  (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:-30])
  with pytest.raises(image_io.ImageError, match="truncated.png"):
    image_io.load_image(tmp_path / "truncated.png")
