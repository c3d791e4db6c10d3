"""A client of `cxrjax serve`'s API on the standard library alone (the tests and benchmarks/serve.py use it).

  status, result = client.predict("http://127.0.0.1:8000", [frontal_bytes, lateral_bytes], attention=True)

`predict` sends a multipart form (`as_json=True`: a JSON body with base64 images) and returns the HTTP
status with the decoded JSON, errors included (a 4xx is an answer, not an exception).
"""

import base64
import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any


def encode_multipart(fields: dict[str, Any], files: Sequence[tuple[str, str, bytes]]) -> tuple[bytes, str]:
  """Text `fields` and (field, file name, data) `files` -> (body, content type)."""
  boundary = "cxrjax-" + secrets.token_hex(12)
  parts = []
  for name, value in fields.items():
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
  for name, filename, data in files:
    parts.append(
      f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
      "Content-Type: application/octet-stream\r\n\r\n".encode()
      + data
      + b"\r\n"
    )
  parts.append(f"--{boundary}--\r\n".encode())
  return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def request(
  url: str,
  body: bytes | None = None,
  content_type: str | None = None,
  method: str | None = None,
  timeout: float = 120.0,
) -> tuple[int, Any]:
  """One HTTP request -> (status, JSON body, or the text where the body is not JSON)."""
  headers = {"Content-Type": content_type} if content_type else {}
  http_request = urllib.request.Request(url, data=body, headers=headers, method=method)
  try:
    with urllib.request.urlopen(http_request, timeout=timeout) as response:
      status, payload = response.status, response.read()
  except urllib.error.HTTPError as error:
    status, payload = error.code, error.read()
  try:
    return status, json.loads(payload)
  except ValueError:
    return status, payload.decode("utf-8", "replace")


def predict(
  server: str,
  images: Sequence[bytes],
  as_json: bool = False,
  filenames: Sequence[str] | None = None,
  timeout: float = 120.0,
  **options: Any,
) -> tuple[int, Any]:
  """POST /api/v1/predict with encoded `images` (frontal first) and options (model, search, beam_size,
  max_length, attention, views) -> (status, JSON)."""
  url = server.rstrip("/") + "/api/v1/predict"
  if as_json:
    payload = dict(options, images=[base64.b64encode(image).decode("ascii") for image in images])
    return request(url, json.dumps(payload).encode(), "application/json", timeout=timeout)
  filenames = filenames or [f"view{i}.png" for i in range(len(images))]
  fields = {k: str(v).lower() if isinstance(v, bool) else v for k, v in options.items()}
  body, content_type = encode_multipart(fields, [("images", n, d) for n, d in zip(filenames, images)])
  return request(url, body, content_type, timeout=timeout)
