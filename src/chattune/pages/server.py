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
A body that is not a JSON object, is nested deeper than a page sends, or holds text UTF-8 cannot write (a lone
surrogate escape such as "\ud83d") is refused with 400 by `json_body`, and each field a handler reads is checked
for its type before use: no request the server can refuse ends in a 500.
Pages are Jinja templates from chattune/pages/templates/, which Flask renders with autoescaping.
"""
from __future__ import annotations

import argparse
import json
import re

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


MAX_DEPTH = 4  # of objects and arrays in a body: every page sends a flat object


def depth(text: str) -> int:
    """How deeply a JSON text nests its objects and arrays (brackets inside strings ignored), counted without
    parsing it, so that a body nested thousands deep is refused before json.loads recurses into it."""
    deepest = level = 0
    for token in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[{]|[\]}]', text):
        mark = token.group()
        if mark in "[{":
            level += 1
            deepest = max(deepest, level)
        elif mark in "]}":
            level -= 1
    return deepest


def json_body() -> dict:
    """The request's JSON object; a ValueError names what is wrong with it."""
    try:
        text = request.get_data().decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the body is not UTF-8") from None
    if depth(text) > MAX_DEPTH:
        raise ValueError(f"the body nests objects and arrays more than {MAX_DEPTH} deep")
    try:
        body = json.loads(text)
    except ValueError as error:  # invalid JSON, or a number of more digits than Python converts
        raise ValueError(f"the body must be a JSON object: {str(error)[:120]}") from None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the body holds text that is not Unicode (a lone surrogate escape such as \\ud83d)") from None
    return body


RATER_LIMIT = 64  # characters of a rater's name, which names their file


def arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse a page's command line, refusing a port out of range and a rater name that cannot name a file."""
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error(f"--port {args.port}: a port is from 1 to 65535")
    rater = getattr(args, "rater", None)
    if rater is not None and not re.fullmatch(rf"[A-Za-z0-9_-]{{1,{RATER_LIMIT}}}", rater):
        parser.error(f"--rater {rater[:80]!r}: up to {RATER_LIMIT} letters, digits, - and _ (it names a file)")
    return args
