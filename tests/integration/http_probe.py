"""Blocking HTTP GETs against KPC's management and REST ports, plus Prometheus text lookups.

Blocking on purpose: the subprocess tests poll from the main thread; trio tests run these
through `kpc_harness.call` (a worker thread).
"""

from __future__ import annotations

import http.client
import re

import attrs


@attrs.frozen
class HttpReply:
    status: int
    content_type: str
    body: bytes


def http_get(port: int, path: str, *, timeout: float = 5.0) -> HttpReply:
    """`GET path` on 127.0.0.1:port over a fresh connection; OSError if nothing listens."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return HttpReply(response.status, response.getheader("content-type", ""),
                         response.read())
    finally:
        connection.close()


def metric_value(exposition: bytes, name: str, **labels: str) -> float | None:
    """The sample `name{labels}` in Prometheus text format, None when it is absent.

    Labels must be given completely (every label of the sample) in the order the client
    library renders them, which is the order they were declared.
    """
    label_text = ",".join(f'{key}="{value}"' for key, value in labels.items())
    sample = f"{name}{{{label_text}}}" if labels else name
    match = re.search(rf"^{re.escape(sample)} (\S+)$", exposition.decode(), re.MULTILINE)
    return float(match[1]) if match else None
