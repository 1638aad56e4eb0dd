"""Ask optuna-dashboard's web API about a storage, without starting a server."""

from __future__ import annotations

import io
import json
from typing import Any


def dashboard_get(storage: Any, path: str) -> tuple[str, Any]:
    """The status line and JSON body optuna-dashboard serves at `path` for `storage`."""
    from optuna_dashboard import wsgi

    app = wsgi(storage)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": io.StringIO(),
    }
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    return status[0], json.loads(body)
