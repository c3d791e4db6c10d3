"""`cxrjax serve`: a page and a JSON API over trained workdirs (and `port-weights` CheXNet directories).

  cxrjax serve --workdir DIR [--workdir DIR2 ...] [--weights CHEXNET_DIR ...] [--host 127.0.0.1] [--port 8000]
               [--batch-window-ms 5] [--batch-sizes 1,4,8] [--max-upload-mb 20] [--max-pixels 25000000]

  GET  /                 the page: choose a model, drop in a frontal (and a lateral) view, read the report
                         with its attention word by word, or a classifier's findings (AG-CNN: with its
                         heatmap and crop box)
  GET  /api/v1/models    {"models": [{"name", "family", "task", "output", "step", "views", "image_size",
                         "batch_sizes", "decoding" | "labels", "stats", ...}]}
  GET  /healthz          {"status": "ok", "models": [names]}
  POST /api/v1/predict   multipart/form-data (file fields `images`, frontal first; text fields below) or
                         JSON {"images": [base64 or data URL, ...], ...}; fields: model (default: the first),
                         search (beam|greedy), beam_size, max_length, attention (true|false), views (true|false)
      -> {"model", "step", "report" | "caption", "token_ids", "token_logprobs", "words", "decoding",
          ["attention": {"shape": [tokens, views, h, w], "maps"}], ["views": [PNG data URLs]], "timings"}
         or, for a classifier, {"model", "step", "probabilities": {label: p}, ["box": [y0, x0, y1, x1]],
          ["heatmap": PNG data URL], ["views"], "timings"}

Each model loads once; its programs are compiled for every served batch size before the server listens
(engine.py). Requests that arrive within the batching window share one model call. A refused request
(too large, too many pixels, not PNG/JPEG, more than two images, bad options, unknown model) gets a 4xx
JSON {"error": "what was wrong"}; the server goes on serving. It binds to 127.0.0.1 unless told otherwise.
On start it prints one JSON line: {"url", "models", "warm_up_s"}.
"""

import argparse
import asyncio
import contextlib
import json
import logging
import pathlib
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

import fastapi
from fastapi import responses, staticfiles
from starlette import concurrency, datastructures, formparsers
from starlette import exceptions as starlette_exceptions
import uvicorn

from cxrjax.jobs import inference
from cxrjax.core.errors import UserError
from cxrjax.jobs.serve import engine as engine_lib
from cxrjax.jobs.serve import uploads
from cxrjax.jobs.serve.uploads import RequestError

STATIC = pathlib.Path(__file__).parent / "static"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# A body over the limit is still read (and dropped) up to this many bytes, so that the client, which is
# still sending, reads the 413 instead of a reset connection; past it the connection is closed.
DRAIN_BYTES = 64 * 2**20
MAX_PARTS = 16  # files in a multipart form the parser reads at all

log = logging.getLogger("cxrjax.jobs.serve")


def create_app(
  engines: Sequence[engine_lib.Engine], limits: uploads.Limits = uploads.Limits(), batch_window_s: float = 0.005
) -> fastapi.FastAPI:
  """The app over warmed-up engines (the first is the default model); `app.state.batchers` by name."""
  batchers = {engine.name: engine_lib.Batcher(engine, window_s=batch_window_s) for engine in engines}
  default = engines[0].name

  @contextlib.asynccontextmanager
  async def lifespan(_):
    for batcher in batchers.values():
      batcher.start()
    yield
    for batcher in batchers.values():
      batcher.stop()

  # No /docs: FastAPI's documentation pages load their scripts from a CDN, and this server works offline.
  app = fastapi.FastAPI(title="cxrjax", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
  app.state.batchers = batchers
  app.state.limits = limits
  app.mount("/static", staticfiles.StaticFiles(directory=STATIC), name="static")

  @app.exception_handler(RequestError)
  async def refused(request: fastapi.Request, error: RequestError):
    log.info("refused %s %s: %s", request.method, request.url.path, error)
    return responses.JSONResponse({"error": str(error)}, status_code=error.status)

  @app.exception_handler(starlette_exceptions.HTTPException)
  async def http_error(request: fastapi.Request, error: starlette_exceptions.HTTPException):
    return responses.JSONResponse(
      {"error": f"{request.method} {request.url.path}: {error.detail}"}, status_code=error.status_code
    )

  @app.exception_handler(Exception)
  async def failed(request: fastapi.Request, error: Exception):
    log.exception("%s %s failed", request.method, request.url.path)
    return responses.JSONResponse({"error": f"internal error: {type(error).__name__}: {error}"}, status_code=500)

  @app.get("/", include_in_schema=False)
  async def page():
    return responses.FileResponse(STATIC / "index.html")

  @app.get("/healthz")
  async def healthz():
    return {"status": "ok", "models": list(batchers)}

  @app.get("/api/v1/models")
  async def models():
    return {
      "default": default,
      "limits": {
        "max_request_bytes": limits.max_request_bytes,
        "max_pixels": limits.max_pixels,
        "max_images": limits.max_images,
        "max_beam_size": limits.max_beam_size,
      },
      "models": [dict(b.engine.summary(), stats=b.stats()) for b in batchers.values()],
    }

  @app.post("/api/v1/predict")
  async def predict(request: fastapi.Request):
    started = time.perf_counter()
    body = await _read_body(request, limits.max_request_bytes)
    fields, files = await _parse_body(request.headers, body, limits)
    options = uploads.parse_options(fields, limits)
    name = options.model or default
    if name not in batchers:
      raise RequestError(f"unknown model {name!r}; loaded: {', '.join(batchers)}", 404)
    batcher = batchers[name]
    item = await concurrency.run_in_threadpool(_prepare, batcher.engine, files, options, limits)
    result = await asyncio.wrap_future(batcher.submit(item))
    result["timings"]["total_ms"] = round((time.perf_counter() - started) * 1e3, 2)
    return responses.JSONResponse(result)

  return app


async def _read_body(request: fastapi.Request, max_bytes: int) -> bytes:
  """The request body, refused (413) above `max_bytes` whether or not the client announced its length."""
  announced = request.headers.get("content-length", "")
  announced = int(announced) if announced.isdigit() else None  # None: chunked
  body, size = bytearray(), 0
  async for chunk in request.stream():
    size += len(chunk)
    if size <= max_bytes:
      body += chunk
    elif size > max_bytes + DRAIN_BYTES or (announced or 0) > max_bytes + DRAIN_BYTES:
      break
  if size > max_bytes:
    total = f"{announced:,}" if announced else f"over {max_bytes:,}"
    raise RequestError(f"the request holds {total} bytes; the limit is {max_bytes:,}", 413)
  return bytes(body)


async def _parse_body(headers, body: bytes, limits: uploads.Limits) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
  """-> (option fields, [(name, encoded image)]) from a multipart form or a JSON object."""
  content_type = headers.get("content-type", "")
  if content_type.startswith("multipart/form-data"):

    async def stream():
      yield body

    try:
      # Bounded, so that a form of many tiny parts cannot stall the parser; more images than allowed are
      # still parsed, so that the refusal below can name the count.
      form = await formparsers.MultiPartParser(
        headers, stream(), max_files=MAX_PARTS, max_fields=len(uploads.OPTIONS) + 1, max_part_size=64 * 1024
      ).parse()
    except formparsers.MultiPartException as error:
      raise RequestError(f"malformed multipart form: {error.message}") from error
    fields, files = {}, []
    for key, value in form.multi_items():
      if isinstance(value, datastructures.UploadFile):
        if key != "images":
          raise RequestError(f"file field {key!r}: images are sent in fields named 'images'")
        files.append((value.filename or f"image {len(files) + 1}", await value.read()))
      elif key == "images":
        raise RequestError("field 'images' holds text; send the images as files (or as base64 in JSON)")
      elif key in fields:
        raise RequestError(f"field {key!r} is given twice")
      else:
        fields[key] = value
    return fields, _check_count(files, limits)
  if content_type.startswith("application/json"):
    try:
      payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
      raise RequestError(f"the body is not valid JSON ({error})") from error
    if not isinstance(payload, dict):
      raise RequestError(f"expected a JSON object, got {type(payload).__name__}")
    images = payload.pop("images", [])
    if not isinstance(images, list):
      raise RequestError("'images' must be a list of base64 strings (frontal first)")
    _check_count(images, limits)
    return payload, [(f"images[{i}]", uploads.decode_base64(text, f"images[{i}]")) for i, text in enumerate(images)]
  raise RequestError(
    f"content type {content_type or 'none'!r}; send multipart/form-data (file fields "
    "'images') or application/json ({'images': [base64, ...]})",
    415,
  )


def _check_count(files: list, limits: uploads.Limits) -> list:
  if not files:
    raise RequestError("no image: send a frontal view (and optionally a lateral one) as 'images'")
  if len(files) > limits.max_images:
    raise RequestError(f"{len(files)} images; at most {limits.max_images} (a frontal and a lateral view)")
  return files


def _prepare(
  engine: engine_lib.Engine, files: list[tuple[str, bytes]], options: uploads.Options, limits: uploads.Limits
) -> engine_lib.Item:
  """Decodes and resizes the uploads (on a worker thread: off the event loop)."""
  started = time.perf_counter()
  item = engine.prepare([uploads.decode_upload(data, name, limits) for name, data in files], options)
  item.prepare_ms = (time.perf_counter() - started) * 1e3
  return item


# Loading and the command.


def load_engines(
  workdirs: Sequence[str],
  batch_sizes: Sequence[int] = engine_lib.DEFAULT_BATCH_SIZES,
  checkpoint: str = "best",
  weights: Sequence[str] = (),
  image_size: int = 224,
) -> list[engine_lib.Engine]:
  """One engine per training workdir, then per `port-weights` CheXNet directory (`weights`, read at
  `image_size`); each named by its folder's name (a repeated name gets -2, -3, ...)."""
  sources = [(str(w), lambda w=w: inference.Predictor.from_workdir(str(w), checkpoint)) for w in workdirs]
  sources += [
    (str(w), lambda w=w: inference.Predictor.from_chexnet_weights(str(w), image_size=image_size)) for w in weights
  ]
  engines, names = [], set()
  for source, load in sources:
    base = pathlib.Path(source).resolve().name or "model"
    name, count = base, 1
    while name in names:
      count += 1
      name = f"{base}-{count}"
    names.add(name)
    engines.append(engine_lib.Engine(name, load(), batch_sizes, source=source))
  return engines


def listen(host: str, port: int) -> socket.socket:
  """A listening socket (port 0: a free one), or ServeError naming the address."""
  try:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # Connections wait in the backlog from now on, before the server's loop accepts them.
  except OSError as error:
    raise ServeError(f"cannot listen on {host}:{port} ({error.strerror or error})") from error
  return sock


class ServeError(UserError):
  """A server that cannot start as asked (the address, the batch sizes)."""


def build_server(app: fastapi.FastAPI, sock: socket.socket, log_level: str = "warning") -> uvicorn.Server:
  """A uvicorn server of `app` on a bound socket: `.run(sockets=[sock])` serves (blocking)."""
  host, port = sock.getsockname()[:2]
  return uvicorn.Server(
    uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, timeout_graceful_shutdown=5)
  )


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
  """Adds the `serve` sub-command to `commands` (from ArgumentParser.add_subparsers)."""
  parser = commands.add_parser(
    "serve",
    help="web demo and JSON API over trained workdirs",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    "--workdir",
    action="append",
    default=[],
    help="a training workdir (repeat for several models; the first is the page's default)",
  )
  parser.add_argument(
    "--weights",
    action="append",
    default=[],
    help="a `cxrjax port-weights` CheXNet directory (repeatable; served after the workdirs)",
  )
  parser.add_argument("--image-size", type=int, default=224, help="--weights: the CheXNet input size")
  parser.add_argument("--checkpoint", choices=("best", "latest"), default="best")
  parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
  parser.add_argument("--port", type=int, default=8000, help="0: any free port (the printed url says which)")
  parser.add_argument(
    "--batch-window-ms", type=float, default=5.0, help="how long a request waits for others to share its model call"
  )
  parser.add_argument(
    "--batch-sizes",
    default=",".join(map(str, engine_lib.DEFAULT_BATCH_SIZES)),
    help="compiled batch sizes; a batch is padded to the next one",
  )
  parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body")
  parser.add_argument("--max-pixels", type=int, default=uploads.Limits.max_pixels, help="largest image, in pixels")
  parser.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
  parser.set_defaults(run=_serve)
  return parser


def _serve(args: argparse.Namespace) -> int:
  try:
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
  except ValueError:
    raise ServeError(f"--batch-sizes {args.batch_sizes!r}: expected sizes like 1,4,8") from None
  if min(batch_sizes) < 1 or args.batch_window_ms < 0 or args.max_upload_mb <= 0 or args.max_pixels < 1:
    raise ServeError("--batch-sizes, --batch-window-ms, --max-upload-mb and --max-pixels must be positive")
  if not args.workdir and not args.weights:
    raise ServeError("nothing to serve: give --workdir DIR (or --weights DIR), once per model")
  sock = listen(args.host, args.port)  # Before loading: a busy port fails at once.
  if args.host not in LOOPBACK:
    print(f"cxrjax serve: warning: listening on {args.host}: reachable from other machines", file=sys.stderr)
  started = time.perf_counter()
  engines = load_engines(args.workdir, batch_sizes, args.checkpoint, args.weights, args.image_size)
  for engine in engines:
    engine.warm_up()
  limits = uploads.Limits(max_request_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels)
  app = create_app(engines, limits, batch_window_s=args.batch_window_ms / 1e3)
  host, port = sock.getsockname()[:2]
  url_host = f"[{host}]" if ":" in host else host
  print(
    json.dumps(
      {
        "url": f"http://{url_host}:{port}/",
        "models": [e.name for e in engines],
        "warm_up_s": round(time.perf_counter() - started, 2),
      }
    ),
    flush=True,
  )
  build_server(app, sock, args.log_level).run(sockets=[sock])
  return 0
