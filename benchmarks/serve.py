"""Studies/s and latency of `cxrjax serve` under concurrent load, beside sequential in-process predictions.

  python benchmarks/serve.py [--workdir workdirs/demo] [--requests 200] [--concurrency 1,8,32]
                             [--batch-window-ms 5] [--screenshot docs/serve.png]

Starts `cxrjax serve --workdir W --port 0` as its own process (the command users run, default batch sizes
1, 4, 8), then sends `--requests` POST /api/v1/predict requests at each concurrency from a thread pool on
this machine, each a real two-view IU X-ray study (../shared/data/iu_xray/images, multipart, the run's
search). Beside them: the same number of sequential `Predictor.predict_report` calls in this process on
the same files (the `predict` command's path, one study at a time, compiled beforehand). Prints one JSON
line: per concurrency the throughput, p50 / p95 / p99 latency, the error count and the server's mean
batch size. Only loopback traffic; every loop is bounded by --requests.

--screenshot PATH also opens the page in headless Chromium (selenium, Debian's chromium-driver), uploads
the study, hovers a word and saves the page: the README's picture.
"""

import argparse
import concurrent.futures
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxrjax.jobs import inference
from cxrjax.jobs.serve import client

IMAGES = ROOT.parent / "shared/data/iu_xray/images"
STUDY = ("CXR54_IM-2145-1001.png", "CXR54_IM-2145-1002.png")  # frontal, lateral


def _percentiles(latencies: list[float]) -> dict[str, float]:
  values = np.array(latencies) * 1e3
  return {f"p{q}_ms": round(float(np.percentile(values, q)), 2) for q in (50, 95, 99)}


def _load(url: str, study: list[bytes], requests: int, concurrency: int) -> dict:
  def one(_):
    started = time.perf_counter()
    status, _ = client.predict(url, study)
    return status, time.perf_counter() - started

  _, before = client.request(url + "api/v1/models")
  started = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
    answers = list(pool.map(one, range(requests)))
  seconds = time.perf_counter() - started
  _, after = client.request(url + "api/v1/models")
  calls = after["models"][0]["stats"]["calls"] - before["models"][0]["stats"]["calls"]
  return {
    "studies_per_s": round(requests / seconds, 2),
    **_percentiles([s for _, s in answers]),
    "errors": sum(status != 200 for status, _ in answers),
    "mean_batch": round(requests / max(calls, 1), 2),
  }


def _ratio(served: dict, faster: str, slower: str) -> float | None:
  if faster not in served or slower not in served:
    return None
  return round(served[faster]["studies_per_s"] / served[slower]["studies_per_s"], 2)


def _sequential(workdir: str, paths: list[str], requests: int) -> dict:
  predictor = inference.Predictor.from_workdir(workdir)
  predictor.predict_report(paths)  # compiles
  latencies = []
  started = time.perf_counter()
  for _ in range(requests):
    begin = time.perf_counter()
    predictor.predict_report(paths)
    latencies.append(time.perf_counter() - begin)
  seconds = time.perf_counter() - started
  return {"studies_per_s": round(requests / seconds, 2), **_percentiles(latencies), "errors": 0}


def _screenshot(url: str, paths: list[str], out: str) -> None:
  from selenium import webdriver  # pylint: disable=g-import-not-at-top  (only for --screenshot; test extra)
  from selenium.webdriver.chrome.service import Service  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.common.action_chains import ActionChains  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top

  options = webdriver.ChromeOptions()
  options.binary_location = shutil.which("chromium")
  for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,880"):
    options.add_argument(argument)
  driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
  try:
    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
    driver.find_element(By.ID, "frontal-input").send_keys(paths[0])
    driver.find_element(By.ID, "lateral-input").send_keys(paths[1])
    driver.find_element(By.ID, "generate").click()
    WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "report").text)
    words = driver.find_elements(By.CSS_SELECTOR, "#words .word")
    target = next((w for w in words if w.text == "effusion"), words[len(words) // 2])
    ActionChains(driver).move_to_element(target).perform()
    driver.save_screenshot(out)
  finally:
    driver.quit()
  # A 256-colour palette keeps the README's picture small (flat page colours, two grayscale X-rays).
  Image.open(out).convert("RGB").quantize(256).save(out, optimize=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default=str(ROOT / "workdirs/demo"))
  parser.add_argument("--requests", type=int, default=200)
  parser.add_argument("--concurrency", default="1,8,32")
  parser.add_argument("--batch-window-ms", type=float, default=5.0)
  parser.add_argument("--screenshot", default=None, metavar="PNG")
  args = parser.parse_args()

  paths = [str(IMAGES / name) for name in STUDY]
  study = [pathlib.Path(p).read_bytes() for p in paths]
  server = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "cxrjax.cli",
      "serve",
      "--workdir",
      args.workdir,
      "--port",
      "0",
      "--batch-window-ms",
      str(args.batch_window_ms),
    ],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    started = json.loads(server.stdout.readline())
    url = started["url"]
    for _ in range(5):  # the first requests of a fresh process (thread pools, allocator)
      client.predict(url, study)
    served = {f"concurrency_{c}": _load(url, study, args.requests, int(c)) for c in args.concurrency.split(",")}
    _, listing = client.request(url + "api/v1/models")
    if args.screenshot:
      _screenshot(url, paths, args.screenshot)
  finally:
    server.terminate()
    server.wait(timeout=60)
  sequential = _sequential(args.workdir, paths, args.requests)
  model = listing["models"][0]
  best = max(served.values(), key=lambda r: r["studies_per_s"])
  print(
    json.dumps(
      {
        "benchmark": "serve",
        "unit": "studies/s",
        "model": model["family"],
        "step": model["step"],
        "image_size": model["image_size"],
        "decoding": model["decoding"],
        "batch_sizes": model["batch_sizes"],
        "batch_window_ms": args.batch_window_ms,
        "requests": args.requests,
        "server_warm_up_s": started["warm_up_s"],
        "sequential_predict": sequential,
        **served,
        "best_speedup_vs_sequential": round(best["studies_per_s"] / sequential["studies_per_s"], 2),
        "speedup_8_vs_1": _ratio(served, "concurrency_8", "concurrency_1"),
        "device": jax.devices()[0].device_kind,
        "platform": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
      }
    )
  )


if __name__ == "__main__":
  main()
