"""``record``: capture the requests a live client sends into a workload file that ``aurelis replay`` can run.

Enable it like any plugin (``plugins = ["normalize", "memory", "record"]``, ``[record] path = "..."``), or run
an application under ``aurelis record --out workload.jsonl -- python app.py``, which enables it through
``AURELIS_CONFIG`` for every client the application instruments without an explicit config.

Every finished request to one of ``paths`` becomes one line (format: the plugin API's ``WorkloadRequest``),
written in the order requests finish, with ``at`` = seconds from the plugin's start to the request's start.
Credentials never reach the file: every credential header and credential query parameter of the pipeline's tenant
definition (``[tenant]``: ``Authorization``, ``api-key``, ``x-goog-api-key``, ``?key=``...) is dropped, and so
is every other header whose name mentions a key, a token, a secret, auth or a cookie, as are transport headers
(``host``, ``content-length``...) that the replaying client sets itself. The answer-scoping headers
(``OpenAI-Organization``, ``anthropic-version``...) are kept: a replay needs them to ask for the same answers.
Request bodies that cannot be read without consuming the caller's stream are skipped, not read.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from typing import IO, Any

import attrs

from aurelis_core.plugin import (
    PROBE,
    WORKLOAD_CREDENTIAL_HEADERS,
    Tenant,
    WorkloadRequest,
    as_tuple,
    each,
    file_path,
    hookimpl,
    url_parts,
    url_path,
    writable_file_probe,
)

__all__ = ["Record", "RecordConfig"]

#: Headers the replaying client sets itself, or that only describe this one client.
TRANSPORT_HEADERS = frozenset(
    {"host", "content-length", "content-type", "transfer-encoding", "connection", "accept", "accept-encoding",
     "user-agent"}
)
#: Any header whose name contains one of these may carry a secret: dropped too.
SECRET_MARKERS = ("auth", "key", "token", "secret", "cookie", "session", "password")


def recordable_headers(raw: list[tuple[bytes, bytes]], tenant: Tenant | None = None) -> dict[str, str]:
    """The headers worth replaying: no credentials, no transport headers, no SDK telemetry."""
    kept = {}
    for name, value in raw:
        lname = name.decode("latin-1").lower()
        if (
            lname in WORKLOAD_CREDENTIAL_HEADERS
            or (tenant is not None and tenant.is_credential_header(lname))
            or lname in TRANSPORT_HEADERS
            or lname.startswith("x-stainless-")
            or any(marker in lname for marker in SECRET_MARKERS)
        ):
            continue
        kept[lname] = value.decode("latin-1")
    return kept


@attrs.frozen
class RecordConfig:
    #: The workload file; lines are appended, so several runs (or processes) can add to one file.
    path: str = attrs.field(
        default="aurelis-workload.jsonl", validator=file_path, metadata={PROBE: writable_file_probe}
    )
    #: Path suffixes of the requests to record.
    paths: tuple[str, ...] = attrs.field(
        default=("/chat/completions", "/completions", "/embeddings"), converter=as_tuple, validator=each(url_path)
    )


class Record:
    """The ``record`` plugin. File writes happen on a writer thread: ``observe`` runs on the caller's event
    loop and must not block it, so it only formats the line and queues it."""

    name = "record"
    Config = RecordConfig

    def __init__(self, config: RecordConfig, pipeline: Any) -> None:
        self.config = config
        self._tenant: Tenant = pipeline.tenant
        self.recorded = 0
        self._origin = time.perf_counter()
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()

    def _ensure_writer(self) -> None:
        if self._writer is None:
            with self._lock:
                if self._writer is None:
                    Path(self.config.path).parent.mkdir(parents=True, exist_ok=True)
                    file = open(self.config.path, "a", encoding="utf-8")  # the writer thread closes it
                    self._writer = threading.Thread(
                        target=self._write, args=(file,), name="aurelis-record", daemon=True
                    )
                    self._writer.start()

    def _write(self, file: IO[str]) -> None:
        with file:
            while (line := self._queue.get()) is not None:
                file.write(line + "\n")
                if self._queue.empty():
                    file.flush()

    @hookimpl
    def aurelis_start(self, pipeline: Any) -> None:
        self._ensure_writer()

    @hookimpl
    def aurelis_observe(self, ctx: Any) -> None:
        request = ctx.original
        path = request.url.path
        if not path.endswith(self.config.paths):
            return
        try:
            content: bytes = request.content
        except Exception:  # a streaming upload that was not read: never read it behind the caller's back
            return
        body: Any = None
        if content:
            try:
                body = json.loads(content)
            except RecursionError:
                return  # nested too deeply to be a workload line: not recorded
            except ValueError:
                try:
                    body = content.decode("utf-8")
                except UnicodeDecodeError:
                    return  # binary bodies do not fit a JSON workload line
        # The query without its credential parameters (Gemini's ?key=): a credential never reaches the file.
        query = self._tenant.split_query(url_parts(request.url)[4])[0]
        if query:
            path += "?" + query
        line = WorkloadRequest(
            path, request.method, body, recordable_headers(request.headers.raw, self._tenant),
            round(max(0.0, ctx.started - self._origin), 3),
        ).to_json()
        self._ensure_writer()
        self._queue.put(line)
        self.recorded += 1

    @hookimpl
    def aurelis_close(self, pipeline: Any) -> None:
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None
