"""`cxrjax serve` (cxrjax/jobs/serve/): the JSON API against the single inference entry point (`Predictor`),
every refusal of a bad request, batching under concurrent requests, the command, and the page in a real
headless Chromium (Debian's chromium + chromium-driver, driven by selenium).

One smoke report generator (configs/demo.py:smoke) and one smoke AG-CNN (chestxray14_agcnn.py:smoke,phantom)
are trained once for the module through the command line, beside a tiny random CheXNet weights directory;
one server serves the three on a free port."""

import base64
import dataclasses
import http.client
import io
import json
import pathlib
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent import futures

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from cxrjax import cli
from cxrjax.models.encoders import densenet
from cxrjax.jobs.serve import client, engine as engine_lib, server as serve, uploads
from cxrjax.tasks import captioning
from cxrjax.weights import chexnet

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Small limits, so that the refusals are cheap to provoke; the real IU X-ray PNGs (~200 kB, 512 x ~620) fit.
LIMITS = uploads.Limits(max_request_bytes=2 * 2**20, max_pixels=4_000_000)
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@dataclasses.dataclass
class Served:
  url: str
  app: object
  engines: dict


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("serve")
  assert cli.main(["train", "--config=configs/demo.py:smoke", f"--workdir={root / 'demo'}"]) == 0
  assert cli.main(["train", "--config=configs/chestxray14_agcnn.py:smoke,phantom", f"--workdir={root / 'agcnn'}"]) == 0
  tiny = densenet.DenseNetConfig(block_sizes=(1, 1), growth_rate=4, stem_features=8, num_classes=14)
  variables = densenet.DenseNet(tiny).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  chexnet.save_chexnet(root / "chexnet", variables, tiny, source={"format": "test"})
  return root


@pytest.fixture(scope="module")
def served(workdirs):
  engines = serve.load_engines([workdirs / "demo", workdirs / "agcnn"], weights=[workdirs / "chexnet"], image_size=64)
  for engine in engines:
    engine.warm_up()
  app = serve.create_app(engines, LIMITS)
  sock = serve.listen("127.0.0.1", 0)
  server = serve.build_server(app, sock)
  thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
  thread.start()
  deadline = time.monotonic() + 60
  while not server.started and thread.is_alive() and time.monotonic() < deadline:
    time.sleep(0.02)
  assert server.started, "the server did not start"
  yield Served(f"http://127.0.0.1:{sock.getsockname()[1]}", app, {e.name: e for e in engines})
  server.should_exit = True
  thread.join(timeout=30)


@pytest.fixture(scope="module")
def iu_images(shared_data):
  folder = shared_data / "iu_xray" / "images"
  return {path.stem: path for path in sorted(folder.glob("*.png"))}


def _study(iu_images):
  return [iu_images["CXR54_IM-2145-1001"], iu_images["CXR54_IM-2145-1002"]]


def _encoded(image: Image.Image, format_: str, **options) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=format_, **options)
  return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
  return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(width: int, height: int, with_pixels: bool = True) -> bytes:
  """A valid 8-bit grayscale PNG of zeros: a few kB that decompress to width * height bytes."""
  header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
  compressor = zlib.compressobj(9)
  row = b"\0" * (width + 1)  # filter byte + pixels
  pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush() if with_pixels else b""
  return (
    b"\x89PNG\r\n\x1a\n"
    + _png_chunk(b"IHDR", header)
    + (_png_chunk(b"IDAT", pixels) if pixels else b"")
    + _png_chunk(b"IEND", b"")
  )


def test_health_and_models_describe_what_is_loaded(served, workdirs):
  status, health = client.request(served.url + "/healthz")
  assert status == 200 and health == {"status": "ok", "models": ["demo", "agcnn", "chexnet"]}
  status, listing = client.request(served.url + "/api/v1/models")
  assert status == 200 and listing["default"] == "demo"
  demo, agcnn, ported = listing["models"]
  predictor = served.engines["demo"].predictor
  assert demo["family"] == "attention_captioner" and demo["output"] == "report" and demo["views"] == 2
  assert demo["step"] == predictor.step and demo["workdir"] == str(workdirs / "demo")
  assert demo["decoding"] == {
    "search": "beam",
    "beam_size": predictor.config.decode.beam_size,
    "max_length": predictor.config.decode.max_length,
    "length_penalty": 0.0,
  }
  assert demo["batch_sizes"] == list(engine_lib.DEFAULT_BATCH_SIZES)
  assert agcnn["task"] == "classification" and agcnn["output"] == "findings"
  assert agcnn["labels"] == ["Cardiomegaly", "Effusion", "Pneumothorax", "Opacity", "Nodule"]
  assert ported["family"] == "chexnet" and ported["labels"] == list(densenet.CHEXNET_CLASSES)
  assert ported["step"] is None and ported["image_size"] == 64


def test_report_is_the_predictors_with_per_word_attention(served, iu_images):
  """The API's report of a real two-view IU X-ray study is `Predictor.predict_report`'s (the `predict`
  command's path, one study at a time), through a multipart upload and through JSON with base64."""
  paths = _study(iu_images)
  status, result = client.predict(served.url, [p.read_bytes() for p in paths], attention=True, views=True)
  assert status == 200, result
  expected = served.engines["demo"].predictor.predict_report([str(p) for p in paths])
  assert result["report"] == expected["report"] and result["token_ids"] == expected["token_ids"]
  np.testing.assert_allclose(result["token_logprobs"], expected["token_logprobs"], atol=1e-5)
  assert result["model"] == "demo" and result["step"] == served.engines["demo"].predictor.step
  decode = served.engines["demo"].predictor.config.decode
  assert result["decoding"] == {"search": "beam", "beam_size": decode.beam_size, "max_length": decode.max_length}
  assert len(result["words"]) == len(result["token_ids"])
  maps = np.array(result["attention"]["maps"])
  assert list(maps.shape) == result["attention"]["shape"] and maps.shape[:2] == (len(result["token_ids"]), 2)
  np.testing.assert_allclose(maps.sum(axis=(1, 2, 3)), 1.0, atol=1e-3)  # each word's attention sums to one
  views = [np.asarray(Image.open(io.BytesIO(base64.b64decode(v.partition(",")[2])))) for v in result["views"]]
  assert [v.shape for v in views] == [(32, 32, 3)] * 2
  assert set(result["timings"]) >= {"prepare_ms", "model_ms", "queue_ms", "total_ms", "batch_size"}

  status, as_json = client.predict(served.url, [p.read_bytes() for p in paths], as_json=True)
  assert status == 200 and as_json["token_ids"] == result["token_ids"] and "attention" not in as_json

  status, greedy = client.predict(served.url, [paths[0].read_bytes()], search="greedy", max_length=10)
  expected = served.engines["demo"].predictor.predict_report([str(paths[0])], greedy=True)
  assert status == 200 and greedy["decoding"] == {"search": "greedy", "beam_size": 1, "max_length": 10}
  assert greedy["token_ids"] == expected["token_ids"][:10]  # greedy stops at max_length: a prefix

  # Beam size 1 is reported as the search that runs it: greedy where length normalisation cannot change
  # the choice (no length penalty, or transformers' "hf" rule, as a ported GIT's default), else beam.
  status, one_beam = client.predict(served.url, [paths[0].read_bytes()], search="beam", beam_size=1)
  ran_greedy = captioning.runs_greedy_search(ml_collections.ConfigDict(dict(decode.to_dict(), beam_size=1)))
  assert status == 200 and one_beam["decoding"]["search"] == ("greedy" if ran_greedy else "beam")
  if ran_greedy:
    assert one_beam["token_ids"] == expected["token_ids"]


def test_image_modes_are_converted_as_predict_converts_them(served, iu_images, tmp_path):
  """16-bit grayscale, RGBA, palette and grayscale JPEG uploads give the report `predict` gives the same
  file (data/images.py's conversion on both paths)."""
  gray = np.asarray(Image.open(iu_images["CXR303_IM-1404-1001"]).convert("L"))
  variants = {
    "sixteen.png": Image.fromarray(gray.astype(np.uint16) * 257),
    "rgba.png": Image.fromarray(gray).convert("RGBA"),
    "palette.png": Image.fromarray(gray).convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE),
    "gray.jpg": Image.fromarray(gray),
  }
  predictor = served.engines["demo"].predictor
  for name, image in variants.items():
    path = tmp_path / name
    image.save(path)
    status, result = client.predict(served.url, [path.read_bytes()], search="greedy")
    assert status == 200, (name, result)
    assert result["token_ids"] == predictor.predict_report([str(path)], greedy=True)["token_ids"], name


def test_every_refusal_is_a_4xx_json_error_and_the_server_goes_on(served, iu_images):
  frontal = iu_images["CXR54_IM-2145-1001"].read_bytes()
  small = np.zeros((40, 40, 3), np.uint8)
  max_length = served.engines["demo"].default_variant.max_length
  post = lambda body, content_type: client.request(served.url + "/api/v1/predict", body, content_type)
  multipart = lambda fields, files: post(*client.encode_multipart(fields, files))
  cases = {
    "body over the limit": (
      client.predict(served.url, [frontal, np.random.default_rng(0).bytes(2_300_000)]),
      413,
      "the limit is 2,097,152",
    ),
    "decompression bomb": (
      client.predict(served.url, [_bomb_png(5000, 5000)]),
      413,
      "5000 x 5000 = 25,000,000 pixels; the limit is 4,000,000 (refused before decoding)",
    ),
    "header of 3.6 gigapixels": (
      client.predict(served.url, [_bomb_png(60000, 60000, with_pixels=False)]),
      413,
      "refused before decoding",
    ),
    "GIF": (client.predict(served.url, [_encoded(Image.fromarray(small), "GIF")]), 415, "not a PNG or JPEG"),
    "BMP named .png": (
      client.predict(served.url, [_encoded(Image.fromarray(small), "BMP")], filenames=["x.png"]),
      415,
      "x.png: not a PNG or JPEG",
    ),
    "truncated PNG": (
      client.predict(served.url, [frontal[: len(frontal) // 2]], filenames=["cut.png"]),
      400,
      "cut.png: cannot decode the PNG image",
    ),
    "empty file": (client.predict(served.url, [b""], filenames=["empty.png"]), 400, "empty.png: the file is empty"),
    "three images": (client.predict(served.url, [frontal] * 3), 400, "3 images; at most 2"),
    "no image": (client.predict(served.url, []), 400, "no image"),
    "unknown model": (
      client.predict(served.url, [frontal], model="absent"),
      404,
      "unknown model 'absent'; loaded: demo, agcnn, chexnet",
    ),
    "beam size 0": (client.predict(served.url, [frontal], beam_size=0), 400, "beam_size=0; expected 1 to 8"),
    "beam size 99": (client.predict(served.url, [frontal], beam_size=99), 400, "beam_size=99"),
    "beam size text": (client.predict(served.url, [frontal], beam_size="three"), 400, "expected an integer"),
    "beam size with greedy": (
      client.predict(served.url, [frontal], search="greedy", beam_size=2),
      400,
      "beam_size applies to search=beam",
    ),
    "max length too long": (
      client.predict(served.url, [frontal], max_length=max_length + 1),
      400,
      f"generates at most {max_length} tokens",
    ),
    "max length 0": (client.predict(served.url, [frontal], max_length=0, as_json=True), 400, "at least 1"),
    "unknown search": (client.predict(served.url, [frontal], search="sampling"), 400, "search='sampling'"),
    "unknown option": (client.predict(served.url, [frontal], temperature=2), 400, "unknown field(s) temperature"),
    "attention not a boolean": (
      client.predict(served.url, [frontal], attention="maybe"),
      400,
      "attention='maybe'; expected true or false",
    ),
    "classifier given two images": (
      client.predict(served.url, [frontal, frontal], model="agcnn"),
      400,
      "the agcnn model reads one image; got 2",
    ),
    "classifier given decoding options": (
      client.predict(served.url, [frontal], model="agcnn", beam_size=2),
      400,
      "decoding options (beam_size) do not apply",
    ),
    "file under another name": (multipart({}, [("frontal", "f.png", frontal)]), 400, "fields named 'images'"),
    "images as text": (multipart({"images": "abc"}, []), 400, "field 'images' holds text"),
    "plain text body": (post(b"hello", "text/plain"), 415, "content type 'text/plain'"),
    "invalid JSON": (post(b"{images:", "application/json"), 400, "not valid JSON"),
    "JSON images not a list": (post(json.dumps({"images": "abc"}).encode(), "application/json"), 400, "must be a list"),
    "invalid base64": (
      post(json.dumps({"images": ["@@@"]}).encode(), "application/json"),
      400,
      "images[0]: not valid base64",
    ),
    "unknown path": (client.request(served.url + "/api/v1/nothing"), 404, "GET /api/v1/nothing: Not Found"),
    "wrong method": (client.request(served.url + "/api/v1/predict"), 405, "Method Not Allowed"),
  }
  for name, ((status, body), expected_status, message) in cases.items():
    assert status == expected_status, (name, status, body)
    assert isinstance(body, dict) and message in body["error"], (name, body)

  # A chunked body announces no length: it is counted as it arrives.
  connection = http.client.HTTPConnection(served.url.removeprefix("http://"), timeout=60)
  connection.request(
    "POST",
    "/api/v1/predict",
    body=(b"x" * 2**20 for _ in range(3)),
    encode_chunked=True,
    headers={"Content-Type": "application/json"},
  )
  response = connection.getresponse()
  assert response.status == 413 and "the limit is 2,097,152" in json.loads(response.read())["error"]
  connection.close()

  status, result = client.predict(served.url, [frontal])
  assert status == 200 and result["report"] is not None


def test_concurrent_requests_share_model_calls(served, iu_images):
  """Eight requests sent together are answered in fewer model calls than requests, each with the result it
  gets alone (batch 1): padding and neighbours in the batch change no request's answer."""
  studies = [[p.read_bytes()] for p in iu_images.values()] + [[p.read_bytes() for p in _study(iu_images)]]
  studies = (studies * 2)[:8]
  alone = [client.predict(served.url, study)[1] for study in studies]
  assert all(r["timings"]["batch_size"] == 1 for r in alone)
  batcher = served.app.state.batchers["demo"]
  before = batcher.stats()
  batcher.window_s = 2.0  # wide enough that all eight arrive inside it on a busy machine (no timing asserted)
  try:
    with futures.ThreadPoolExecutor(8) as pool:
      together = list(pool.map(lambda study: client.predict(served.url, study), studies))
  finally:
    batcher.window_s = 0.005
  after = batcher.stats()
  assert all(status == 200 for status, _ in together), together
  requests, calls = after["requests"] - before["requests"], after["calls"] - before["calls"]
  assert requests == 8 and calls < 8, after
  assert max(r["timings"]["batch_size"] for _, r in together) > 1
  assert {r["timings"]["compiled_batch_size"] for _, r in together} <= set(engine_lib.DEFAULT_BATCH_SIZES)
  for single, (_, batched) in zip(alone, together):
    assert batched["token_ids"] == single["token_ids"]
    np.testing.assert_allclose(batched["token_logprobs"], single["token_logprobs"], atol=1e-4)


def test_agcnn_findings_heatmap_and_crop_box(served, iu_images):
  path = iu_images["CXR25_IM-1024-2001"]
  status, result = client.predict(served.url, [path.read_bytes()], model="agcnn", attention=True, views=True)
  assert status == 200, result
  (expected,) = served.engines["agcnn"].predictor.classify_files([str(path)])
  assert list(result["probabilities"]) == list(expected["probabilities"])
  np.testing.assert_allclose(
    list(result["probabilities"].values()), list(expected["probabilities"].values()), atol=2e-6
  )  # batch 1 here, classify_files' padded batch of 16 there
  y0, x0, y1, x1 = result["box"]
  assert 0 <= y0 < y1 <= 64 and 0 <= x0 < x1 <= 64
  heatmap = np.asarray(Image.open(io.BytesIO(base64.b64decode(result["heatmap"].partition(",")[2]))))
  assert heatmap.shape == (64, 64) and heatmap.dtype == np.uint8 and heatmap.max() > heatmap.min()


def test_ported_chexnet_weights_are_served_as_classify_gives_them(served, iu_images):
  path = iu_images["CXR303_IM-1404-1001"]
  status, result = client.predict(served.url, [path.read_bytes()], model="chexnet", attention=True)
  assert status == 200, result
  (expected,) = served.engines["chexnet"].predictor.classify_files([str(path)])
  assert list(result["probabilities"]) == list(expected["probabilities"]) and result["step"] is None
  np.testing.assert_allclose(
    list(result["probabilities"].values()), list(expected["probabilities"].values()), atol=2e-6
  )
  assert "box" not in result and result["heatmap"] == {"none": "the chexnet model has no attention heatmap"}


def test_serve_command_refuses_bad_arguments_in_one_line(workdirs, tmp_path, capsys):
  assert cli.main(["serve", "--workdir", str(tmp_path / "absent"), "--port", "0"]) == 2
  assert "absent" in capsys.readouterr().err
  assert cli.main(["serve", "--port", "0"]) == 2
  assert "nothing to serve" in capsys.readouterr().err
  assert cli.main(["serve", "--workdir", str(workdirs / "demo"), "--batch-sizes", "1,four"]) == 2
  assert "--batch-sizes '1,four'" in capsys.readouterr().err
  with socket.socket() as busy:
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    assert cli.main(["serve", "--workdir", str(workdirs / "demo"), "--port", str(port)]) == 2
    error = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in error and "Traceback" not in error


def test_serve_command_listens_on_localhost_and_answers(workdirs, iu_images):
  """`cxrjax serve` as a user runs it: one JSON line with the url (127.0.0.1 by default), then requests."""
  process = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "cxrjax.cli",
      "serve",
      "--workdir",
      str(workdirs / "demo"),
      "--port",
      "0",
      "--batch-sizes",
      "1",
    ],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    started = json.loads(process.stdout.readline())
    assert started["url"].startswith("http://127.0.0.1:") and started["models"] == ["demo"]
    status, result = client.predict(started["url"], [iu_images["CXR303_IM-1404-1001"].read_bytes()])
    assert status == 200 and result["timings"]["compiled_batch_size"] == 1
  finally:
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def browser():
  if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(
      "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run installs them)"
    )
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for argument in (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=1280,800",
  ):
    options.add_argument(argument)
  driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
  driver.set_script_timeout(30)
  yield driver
  driver.quit()


# Pixel spread of a canvas: 0 for a blank one.
CANVAS_SPREAD = """
const data = arguments[0].getContext('2d').getImageData(0, 0, arguments[0].width, arguments[0].height).data;
let low = 255, high = 0;
for (let i = 0; i < data.length; i += 4) { low = Math.min(low, data[i]); high = Math.max(high, data[i]); }
return high - low;"""

# Drops a file (base64 contents) on a drop zone, as a drag from the desktop does.
DROP_FILE = """
const [selector, name, contents] = arguments;
const bytes = Uint8Array.from(atob(contents), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], name, {type: 'image/png'}));
document.querySelector(selector).dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true}));"""


def test_page_in_headless_chromium(served, browser, iu_images, tmp_path):
  """The page as a person uses it: upload a real IU X-ray study, read the report, hover the words over the
  attention maps; a refused file shows the server's message; AG-CNN's findings, heatmap and crop box."""
  wait = WebDriverWait(browser, 60)
  browser.get(served.url + "/")
  wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#model option")) == 3)
  frontal, lateral = _study(iu_images)
  browser.find_element(By.ID, "frontal-input").send_keys(str(frontal))
  browser.find_element(By.ID, "lateral-input").send_keys(str(lateral))
  browser.find_element(By.ID, "generate").click()
  wait.until(lambda b: b.find_element(By.ID, "report").text)
  _, expected = client.predict(served.url, [frontal.read_bytes(), lateral.read_bytes()])
  assert browser.find_element(By.ID, "report").text == expected["report"]
  words = browser.find_elements(By.CSS_SELECTOR, "#words .word")
  assert [w.text for w in words] == [w.strip() for w in expected["words"]]
  maps = browser.find_elements(By.CSS_SELECTOR, "canvas.attention-map")
  assert len(maps) == 2 and all(browser.execute_script(CANVAS_SPREAD, m) > 0 for m in maps)
  ActionChains(browser).move_to_element(words[3]).perform()
  assert browser.find_element(By.ID, "word-label").text.startswith(f"4/{len(words)}: ")
  assert "selected" in words[3].get_attribute("class")
  browser.save_screenshot(str(tmp_path / "report.png"))
  assert Image.open(tmp_path / "report.png").size[0] > 0

  browser.find_element(By.ID, "frontal-input").send_keys(str(tmp_path / "report.png"))  # a screenshot: fine
  gif = tmp_path / "not_an_xray.gif"
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(gif)
  browser.find_element(By.ID, "lateral-input").send_keys(str(gif))
  browser.find_element(By.ID, "generate").click()
  wait.until(lambda b: b.find_element(By.ID, "error").text)
  assert "415: not_an_xray.gif: not a PNG or JPEG" in browser.find_element(By.ID, "error").text

  Select(browser.find_element(By.ID, "model")).select_by_value("agcnn")
  assert not browser.find_element(By.ID, "lateral-drop").is_displayed()
  browser.execute_script(DROP_FILE, "#frontal-drop", "frontal.png", base64.b64encode(frontal.read_bytes()).decode())
  browser.find_element(By.ID, "generate").click()
  wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#findings tr")) == 5)
  wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#heatmap canvas.crop"))
  _, expected = client.predict(served.url, [frontal.read_bytes()], model="agcnn")
  top = max(expected["probabilities"], key=expected["probabilities"].get)
  assert browser.find_element(By.CSS_SELECTOR, "#findings tr td").text == top
  for canvas in browser.find_elements(By.CSS_SELECTOR, "#heatmap canvas"):
    assert browser.execute_script(CANVAS_SPREAD, canvas) > 0
  browser.save_screenshot(str(tmp_path / "agcnn.png"))
