"""`cxrjax serve`: the web demo and JSON API over trained workdirs (server.py).

uploads.py   what a request may hold: size and pixel limits, PNG/JPEG checks before decoding, options
engine.py    one loaded model at fixed compiled batch sizes, and the batcher that groups requests
server.py    the FastAPI app, its endpoints and errors, and the `serve` sub-command
client.py    a standard-library client of the API (the tests and benchmarks/serve.py use it)
static/      the page (plain HTML, JS and CSS; no CDN)
"""
