"""What the pages this project serves on 127.0.0.1 share (tools.rate, tools.vote, tools.arena): a Flask app
that only its own page can drive.

Any web site open in the same browser can send requests to 127.0.0.1, and a site whose name resolves to
127.0.0.1 (DNS rebinding) can even read the answers. So every request is refused, with a 4xx and a JSON
{"error": ...} that says why, and before any handler runs (nothing on disk changes), when:
- its Host is not 127.0.0.1:<port> or localhost:<port> (400);
- it comes from another site: an Origin other than the page's own, or Sec-Fetch-Site other than same-origin
  or none (403); following a link to the page itself is allowed, nothing else is;
- it is a POST whose body is not application/json, as a plain HTML form or a text/plain post is (415);
- its body is over the app's cap (Flask's MAX_CONTENT_LENGTH, 413).
Pages are Jinja templates from tools/templates/, which Flask renders with autoescaping.
"""
from __future__ import annotations

from flask import Flask, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

SAME_SITE = ("same-origin", "none")  # Sec-Fetch-Site values of the page's own requests and of typed addresses


def refusal(status: int, message: str):
    return jsonify({"error": message}), status


def local_app(import_name: str, port: int, max_body: int) -> Flask:
    app = Flask(import_name)
    app.config["MAX_CONTENT_LENGTH"] = max_body
    hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
    origins = {f"http://{host}" for host in hosts}

    @app.before_request
    def only_this_page():
        if request.host not in hosts:
            return refusal(400, f"Host {request.host!r} is not this server: open http://127.0.0.1:{port}/")
        opening_the_page = request.method == "GET" and request.path == "/"
        origin, site = request.headers.get("Origin"), request.headers.get("Sec-Fetch-Site")
        if not opening_the_page and ((origin is not None and origin not in origins)
                                     or (site is not None and site not in SAME_SITE)):
            return refusal(403, f"cross-site request refused (Origin {origin!r}, Sec-Fetch-Site {site!r}): only this "
                                "server's own page may call it")
        if request.method == "POST":
            if request.mimetype != "application/json":
                return refusal(415, f"the body must be application/json, not {request.mimetype or 'untyped'!r}")
            if request.content_length is not None and request.content_length > max_body:
                return refusal(413, f"the body is {request.content_length} bytes; at most {max_body}")

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_error):  # a body without a Content-Length, found too long while it was read
        return refusal(413, f"the body is over {max_body} bytes")

    return app


def json_body() -> dict:
    """The request's JSON object; a ValueError names what is wrong with it."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body
