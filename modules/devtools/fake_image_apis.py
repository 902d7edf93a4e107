"""An offline fake of OpenAI's images API and Google's Imagen (Vertex express mode), for tests and
for trying remote engines in the UI without keys.

One local HTTP server answers both APIs' documented request and response shapes, errors included:

- OpenAI: ``POST /v1/images/generations`` (JSON), ``POST /v1/images/edits`` (multipart),
  ``GET /v1/models``, Bearer auth; ``GET /files/<id>.png`` serves the images of "url" answers;
- Google: ``POST /v1beta1/publishers/google/models/<model>:predict`` and
  ``GET /v1beta1/publishers/google/models``, authenticated by the ``x-goog-api-key`` header.

Only :attr:`FakeImageApis.key` is accepted. Images are PNGs of the requested size in a flat colour
hashed from the prompt (and the image's index), edits with a square mark in the top-left corner.
:attr:`FakeImageApis.calls` records every call it was sent (never the key).

Markers in the prompt make it fail the way the real services do:

- ``[fail:429]`` / ``[fail:500]`` (any status): always that error (OpenAI's ``rate_limit_exceeded``
  or ``server_error``, Google's ``RESOURCE_EXHAUSTED`` or ``INTERNAL``); ``[fail:429x1]``: only the
  first call with that exact prompt text (``xN``: the first N), later ones succeed;
- ``[policy]``: a content-policy refusal (OpenAI: 400 ``content_policy_violation``; Google: 200 with
  predictions that carry only ``raiFilteredReason``);
- ``[slow:N]``: wait N seconds (a float) before answering;
- ``[url]``: OpenAI answers image URLs even when b64_json was asked for (as some compatible servers
  do); ``[url:missing]``: those URLs answer 404.

429 and 5xx answers carry ``retry-after-ms: 10`` and ``retry-after: 0`` so client retries are quick.

Usage::

    python -m modules.devtools.fake_image_apis --port 8555 --key sk-fake-key
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from modules.devtools.fake_api_shapes import (
    Refusal,
    check_openai,
    fake_png,
    google_record,
    multipart,
    openai_record,
)
from modules.services.remote.catalog import IMAGEN_ASPECTS, KNOWN_MODELS, Provider

DEFAULT_KEY = "sk-fake-key"
_FAIL = re.compile(r"\[fail:(\d{3})(?:x(\d+))?\]")
_SLOW = re.compile(r"\[slow:(\d+(?:\.\d*)?)\]")
_PREDICT = re.compile(r"^/v1beta1/publishers/google/models/([^/:]+):predict$")
_GOOGLE_LIST = "/v1beta1/publishers/google/models"
_ASPECT_SIZES = {ratio: size for size, ratio in IMAGEN_ASPECTS.items()}
_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                  429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
_MESSAGES = {(Provider.OPENAI, 429): "Rate limit reached for images per minute. Please try again later.",
             (Provider.OPENAI, 500): "The server had an error while processing your request. Sorry about that!",
             (Provider.GOOGLE, 429): "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests.",
             (Provider.GOOGLE, 500): "Internal error encountered."}
_POLICY = "Your request was rejected as a result of our safety system."
_RAI_REASON = "The prompt could not be submitted. It contains words the safety filter blocks (fake [policy])."
_FILES_KEPT = 64  # "url" answers' images, newest kept


class FakeImageApis:
    """Both APIs on one ``127.0.0.1`` port (0: any free one), served by a daemon thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, key: str = DEFAULT_KEY) -> None:
        self.key = key
        self._address = (host, port)
        self._lock = threading.Lock()
        self._calls: list[dict[str, Any]] = []
        self._seen: Counter[str] = Counter()  # calls per prompt text, for [fail:NxM]
        self._files: dict[str, bytes] = {}
        self._server: _Server | None = None

    @property
    def calls(self) -> list[dict[str, Any]]:
        """A copy of the calls so far, oldest first: ``api`` ("openai"/"google"), ``path``, ``status``
        (what was answered) and, for image calls, ``model``, ``prompt``, ``n``; OpenAI's ``size``,
        ``quality``, ``style``, ``response_format`` (None when not sent), ``image`` and ``mask`` (the
        PNG bytes, None when not sent); Google's ``aspect_ratio``, ``negative_prompt`` (None when not
        sent) and the raw ``parameters``. Never the key."""
        with self._lock:
            return [dict(call) for call in self._calls]

    def clear(self) -> None:
        """Forget the calls, the per-prompt counts and the served files."""
        with self._lock:
            self._calls.clear()
            self._seen.clear()
            self._files.clear()

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.server_address[1]

    @property
    def root_url(self) -> str:
        return f"http://{self._address[0]}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.root_url}/v1"

    @property
    def google_base_url(self) -> str:
        return self.root_url

    def start(self) -> FakeImageApis:
        self._server = _Server(self._address, _Handler)
        self._server.fake = self
        threading.Thread(target=self._server.serve_forever, name="fake-image-apis", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeImageApis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # what the handlers share

    def _record(self, call: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._calls.append(call)
        return call

    def _set_status(self, call: dict[str, Any], status: int) -> None:
        with self._lock:
            call["status"] = status

    def _apply_markers(self, api: Provider, prompt: str) -> None:
        slow = _SLOW.search(prompt)
        if slow:
            time.sleep(float(slow.group(1)))
        fail = _FAIL.search(prompt)
        if fail:
            with self._lock:
                self._seen[prompt] += 1
                seen = self._seen[prompt]
            times = fail.group(2)
            if times is None or seen <= int(times):
                status = int(fail.group(1))
                code = "rate_limit_exceeded" if status == 429 and api is Provider.OPENAI else None
                raise Refusal(status, _MESSAGES.get((api, status), f"Fake failure {status}."), code)

    def _keep_file(self, data: bytes) -> str:
        name = hashlib.sha256(data + str(time.monotonic_ns()).encode()).hexdigest()[:16]
        with self._lock:
            self._files[name] = data
            while len(self._files) > _FILES_KEPT:
                self._files.pop(next(iter(self._files)))
        return name

    def _file(self, name: str) -> bytes | None:
        with self._lock:
            return self._files.get(name)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeImageApis

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout) closed its socket: expected, not worth a traceback.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients expect
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests and the CLI print what matters
        pass

    # routing

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path.startswith("/files/") and path.endswith(".png"):
            data = self.server.fake._file(path[len("/files/"):-len(".png")])
            if data is None:  # [url:missing]: a name never kept
                return self._send(404, b"not found", "text/plain")
            return self._send(200, data, "image/png")
        if path == "/v1/models":
            return self._answer(Provider.OPENAI, {"api": "openai", "path": path}, self.openai_models)
        if path == _GOOGLE_LIST:
            return self._answer(Provider.GOOGLE, {"api": "google", "path": path}, self._google_models)
        self._refuse(Provider.GOOGLE if path.startswith("/v1beta1") else Provider.OPENAI,
                     Refusal(404, f"Unknown path {path}."))

    def do_POST(self) -> None:
        path = self.path.split("?")[0]
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        predict = _PREDICT.match(path)
        if path in ("/v1/images/generations", "/v1/images/edits"):
            try:
                fields = multipart(self.headers.get("content-type", ""), body) if path.endswith("edits") \
                    else json.loads(body or b"{}")
                call = openai_record(path, fields)
            except (ValueError, TypeError, AttributeError):
                return self._refuse(Provider.OPENAI, Refusal(400, "We could not parse the request body."))
            return self._answer(Provider.OPENAI, call, lambda call: self._images(call, fields))
        if predict:
            try:
                request = json.loads(body or b"{}")
                call = google_record(path, predict.group(1), request)
            except (ValueError, TypeError, AttributeError, IndexError):
                return self._refuse(Provider.GOOGLE, Refusal(400, "Invalid JSON payload received."))
            return self._answer(Provider.GOOGLE, call, lambda call: self._predict(call, request))
        self._refuse(Provider.GOOGLE if path.startswith("/v1beta1") else Provider.OPENAI,
                     Refusal(404, f"Unknown path {path}."))

    def _answer(self, api: Provider, call: dict[str, Any], handle: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        fake = self.server.fake
        call = fake._record(call)
        try:
            self._check_key(api)
            fake._apply_markers(api, call.get("prompt") or "")
            answer = handle(call)
        except Refusal as refusal:
            fake._set_status(call, refusal.status)
            return self._refuse(api, refusal)
        fake._set_status(call, 200)
        self._send(200, json.dumps(answer).encode(), "application/json")

    def _check_key(self, api: Provider) -> None:
        if api is Provider.OPENAI:
            header = self.headers.get("authorization", "")
            sent = header[len("Bearer "):] if header.startswith("Bearer ") else ""
            if not sent:
                raise Refusal(401, "You didn't provide an API key. Use an Authorization header with Bearer auth.")
            if sent != self.server.fake.key:  # never echo what was sent
                raise Refusal(401, "Incorrect API key provided.", "invalid_api_key")
            return
        sent = self.headers.get("x-goog-api-key", "")
        if not sent:
            raise Refusal(401, "Method doesn't allow unregistered callers. Please use an API key.")
        if sent != self.server.fake.key:
            raise Refusal(400, "API key not valid. Please pass a valid API key.", "API_KEY_INVALID")

    # OpenAI

    def openai_models(self, call: dict[str, Any]) -> dict[str, Any]:
        ids = [m.model for m in KNOWN_MODELS if m.provider is Provider.OPENAI] + ["fake-image-model", "gpt-4o"]
        return {"object": "list", "data": [{"id": i, "object": "model", "created": 0, "owned_by": "fake"}
                                           for i in ids]}

    def _images(self, call: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        model, edit = call["model"], call["path"].endswith("edits")
        width, height = check_openai(call, fields, edit)
        if "[policy]" in call["prompt"]:
            raise Refusal(400, _POLICY, "content_policy_violation")
        gpt_image = model.startswith("gpt-image")
        as_url = "[url" in call["prompt"] or (call["response_format"] or ("b64_json" if gpt_image else "url")) == "url"
        data = []
        for index in range(call["n"]):
            png = fake_png(width, height, call["prompt"], index, edited=edit)
            item: dict[str, Any] = {"b64_json": base64.b64encode(png).decode()}
            if as_url:
                missing = "-missing" if "[url:missing]" in call["prompt"] else ""
                item = {"url": f"{self.server.fake.root_url}/files/{self.server.fake._keep_file(png)}{missing}.png"}
            if model == "dall-e-3":
                item["revised_prompt"] = f"revised: {call['prompt']}"
            data.append(item)
        return {"created": int(time.time()), "data": data}

    # Google

    def _google_models(self, call: dict[str, Any]) -> dict[str, Any]:
        ids = [m.model for m in KNOWN_MODELS if m.provider is Provider.GOOGLE] + ["gemini-2.5-flash"]
        return {"publisherModels": [{"name": f"publishers/google/models/{i}", "launchStage": "GA"} for i in ids]}

    def _predict(self, call: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
        known = {m.model: m for m in KNOWN_MODELS if m.provider is Provider.GOOGLE}
        if call["model"] not in known:
            raise Refusal(404, f"Publisher Model `publishers/google/models/{call['model']}` not found.")
        if not call["prompt"]:
            raise Refusal(400, "The prompt is empty.")
        size = _ASPECT_SIZES.get(call["aspect_ratio"])
        if size is None:
            raise Refusal(400, f"Unsupported aspect ratio {call['aspect_ratio']!r}.")
        if not 1 <= call["n"] <= known[call["model"]].max_images:
            raise Refusal(400, f"sampleCount must be between 1 and {known[call['model']].max_images}.")
        if "[policy]" in call["prompt"]:
            return {"predictions": [{"raiFilteredReason": _RAI_REASON}]}
        return {"predictions": [
            {"bytesBase64Encoded": base64.b64encode(fake_png(*size, call["prompt"], i)).decode(),
             "mimeType": "image/png", "prompt": f"enhanced: {call['prompt']}"} for i in range(call["n"])]}

    # answers

    def _refuse(self, api: Provider, refusal: Refusal) -> None:
        if api is Provider.OPENAI:
            kind = ("server_error" if refusal.status >= 500 else "requests" if refusal.status == 429
                    else "invalid_request_error")
            error: dict[str, Any] = {"message": refusal.message, "type": kind, "param": refusal.param,
                                     "code": refusal.code}
        else:
            error = {"code": refusal.status, "message": refusal.message,
                     "status": _GOOGLE_STATUS.get(refusal.status, "UNKNOWN")}
            if refusal.code:
                error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": refusal.code,
                                     "domain": "googleapis.com"}]
        retry = refusal.status == 429 or refusal.status >= 500
        headers = {"retry-after-ms": "10", "retry-after": "0"} if retry else {}
        self._send(refusal.status, json.dumps({"error": error}).encode(), "application/json", headers)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8555)
    parser.add_argument("--key", default=DEFAULT_KEY, help="the only API key the fake accepts")
    args = parser.parse_args(argv)
    with FakeImageApis(args.host, args.port, args.key) as fake:
        print(f"OpenAI base URL: {fake.openai_base_url}")
        print(f"Google base URL: {fake.google_base_url}")
        print("API key: the one given with --key (default sk-fake-key). Ctrl+C stops.", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
