"""Skiff's WSGI server for WebAssembly: serves one request per component instance.

The buildpack generates a small entry module that calls `handler_for(app)` and binds the
result to `IncomingHandler`, the name componentize-py exports as wasi:http's incoming-handler.
The app is imported when the component is built, so each request starts from an instance in
which Python and the app are already loaded.
"""

import io
import sys
import traceback
from urllib.parse import unquote

# Modules first imported after the build-time snapshot are missing at run time, so the ones
# WSGI frameworks reach for lazily are imported here. Werkzeug's routing needs the idna codec.
import encodings.idna  # noqa: F401
import encodings.latin_1  # noqa: F401
import encodings.utf_8  # noqa: F401
import json  # noqa: F401

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import streams
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Connect,
    Method_Delete,
    Method_Get,
    Method_Head,
    Method_Options,
    Method_Other,
    Method_Patch,
    Method_Post,
    Method_Put,
    Method_Trace,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
    Scheme_Https,
)

# wasi:http accepts at most 4 KiB per blocking write.
WRITE_CHUNK = 4096
READ_CHUNK = 65536

_METHODS = {
    Method_Get: "GET",
    Method_Head: "HEAD",
    Method_Post: "POST",
    Method_Put: "PUT",
    Method_Delete: "DELETE",
    Method_Connect: "CONNECT",
    Method_Options: "OPTIONS",
    Method_Trace: "TRACE",
    Method_Patch: "PATCH",
}

# Headers that belong to one hop; the host manages them and refuses them from a guest.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "http2-settings",
}


def _method(request):
    method = request.method()
    if isinstance(method, Method_Other):
        return method.value.upper()
    return _METHODS.get(type(method), "GET")


def _read_body(request):
    body = request.consume()
    chunks = []
    with body.stream() as stream:
        while True:
            try:
                chunk = stream.blocking_read(READ_CHUNK)
            except Err as e:
                if isinstance(e.value, streams.StreamError_Closed):
                    break
                raise
            chunks.append(chunk)
    return b"".join(chunks)


def _environ(request):
    path_with_query = request.path_with_query() or "/"
    path, _, query = path_with_query.partition("?")
    authority = request.authority() or "localhost"
    host, _, port = authority.rpartition(":")
    if not host or not port.isdigit():
        host, port = authority, ""
    scheme = "https" if isinstance(request.scheme(), Scheme_Https) else "http"
    headers = {}
    for name, value in request.headers().entries():
        key = name.lower()
        text = value.decode("latin-1")
        headers[key] = headers[key] + "," + text if key in headers else text
    forwarded_proto = headers.get("x-forwarded-proto")
    if forwarded_proto in ("http", "https"):
        scheme = forwarded_proto
    if not port:
        port = "443" if scheme == "https" else "80"
    body = _read_body(request)
    environ = {
        "REQUEST_METHOD": _method(request),
        "SCRIPT_NAME": "",
        # PEP 3333: PATH_INFO is the decoded path as latin-1 text.
        "PATH_INFO": unquote(path, encoding="latin-1"),
        "QUERY_STRING": query,
        "SERVER_NAME": host,
        "SERVER_PORT": port,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": headers.get("x-forwarded-for", "127.0.0.1").split(",")[-1].strip(),
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for key, value in headers.items():
        if key == "content-type":
            environ["CONTENT_TYPE"] = value
        elif key != "content-length":
            environ["HTTP_" + key.upper().replace("-", "_")] = value
    return environ


class _Reply:
    """What the app passed to start_response, and the response once it is sent."""

    def __init__(self, response_out, head):
        self.response_out = response_out
        # A HEAD response has no body; the host checks a body against its Content-Length, so
        # the length the app computed for GET is left out.
        self.head = head
        self.status = None
        self.headers = None
        self.body = None
        self.stream = None

    def start_response(self, status, headers, exc_info=None):
        if exc_info is not None and self.body is not None:
            # Headers already went out: all that is left is to fail the response.
            raise exc_info[1].with_traceback(exc_info[2])
        self.status = status
        self.headers = headers
        return self.write

    def send_head(self):
        if self.body is not None:
            return
        if self.status is None:
            raise RuntimeError("the WSGI app returned without calling start_response")
        try:
            code = int(self.status.split(None, 1)[0])
        except (ValueError, IndexError):
            raise RuntimeError(f"the WSGI app gave an invalid status {self.status!r}")
        fields = []
        for name, value in self.headers:
            if name.lower() in _HOP_BY_HOP or (self.head and name.lower() == "content-length"):
                continue
            fields.append((name.lower(), str(value).encode("latin-1")))
        response = OutgoingResponse(Fields.from_list(fields))
        response.set_status_code(code)
        self.body = response.body()
        self.stream = self.body.write()
        ResponseOutparam.set(self.response_out, Ok(response))

    def write(self, data):
        self.send_head()
        if self.head:
            return
        view = memoryview(data)
        for start in range(0, len(view), WRITE_CHUNK):
            self.stream.blocking_write_and_flush(bytes(view[start : start + WRITE_CHUNK]))

    def finish(self):
        self.send_head()
        self.stream.__exit__(None, None, None)
        OutgoingBody.finish(self.body, None)


def _fail(response_out, message):
    response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain; charset=utf-8")]))
    response.set_status_code(500)
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    with body.write() as stream:
        stream.blocking_write_and_flush(message.encode()[:WRITE_CHUNK])
    OutgoingBody.finish(body, None)


def handler_for(app):
    """An `IncomingHandler` class that serves `app`, a WSGI callable."""

    class IncomingHandler(exports.IncomingHandler):
        def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
            reply = _Reply(response_out, head=False)
            try:
                environ = _environ(request)
                reply.head = environ["REQUEST_METHOD"] == "HEAD"
                result = app(environ, reply.start_response)
                try:
                    for chunk in result:
                        if chunk:
                            reply.write(chunk)
                finally:
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()
                reply.finish()
            except Exception:
                traceback.print_exc(file=sys.stderr)
                if reply.body is None:
                    _fail(response_out, "Internal Server Error\n")
                else:
                    # The status line is gone; an unfinished body tells the client it failed.
                    raise

    return IncomingHandler
