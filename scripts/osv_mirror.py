"""A local OSV-compatible vulnerability service over a directory of OSV records (for offline audits).

    python scripts/osv_mirror.py DIR [--port 0] [--port-file FILE]

Serves the two endpoints `uv audit` uses (checked by logging its requests with uv 0.13.9):

    POST /v1/querybatch   {"queries": [{"package": {"name", "ecosystem"}, "version"}]}
                          -> {"results": [{"vulns": [{"id", "modified"}]} or {}]}, one result per query
    GET  /v1/vulns/<id>   -> the full OSV record

Records are the `*.json` files under DIR (any depth), and `*.yaml` / `*.yml` files when PyYAML is importable
(the PyPA advisory database is YAML). Only ecosystem "PyPI" is matched; withdrawn records are never returned.
A version is affected when it is in an `affected[].versions` list or inside an ECOSYSTEM range
(`introduced` / `fixed` / `last_affected` events, "0" meaning "from the first version"), with PEP 503 name
normalisation and PEP 440 comparison (packaging.version). A range event that is not a PEP 440 version makes
the range match (fail closed: a human looks at it) and is reported on stderr when the records are loaded.

uv caches each record by id and re-fetches it only when the `modified` returned by querybatch changes, so
every record must carry its real `modified`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

Record = dict[str, Any]

ECOSYSTEM = "PyPI"


def normalize(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def _same_version(a: str, b: str) -> bool:
    va, vb = _version(a), _version(b)
    if va is not None and vb is not None:
        return va == vb
    return a.strip() == b.strip()


def range_affects(events: Sequence[Mapping[str, str]], version: Version) -> bool:
    """Whether `version` is inside one OSV ECOSYSTEM range (its events in any order).

    The OSV algorithm: walk the events sorted by version; `introduced` at or below the version opens the
    range, `fixed` at or below it closes it, `last_affected` below it closes it. `limit` events are ignored
    (they only bound git ranges). An event that does not parse as PEP 440 makes the range match.
    """
    order = {"introduced": 0, "last_affected": 1, "fixed": 2}
    keyed: list[tuple[int, Version, int, str]] = []  # (0 for introduced "0", version, order, kind)
    for event in events:
        for kind, text in event.items():
            if kind not in order:
                continue
            if kind == "introduced" and text == "0":
                keyed.append((0, Version("0"), order[kind], kind))
                continue
            at = _version(text)
            if at is None:
                return True
            keyed.append((1, at, order[kind], kind))
    affected = False
    for not_zero, at, _, kind in sorted(keyed):
        if kind == "introduced" and (not not_zero or version >= at):
            affected = True
        elif (kind == "fixed" and version >= at) or (kind == "last_affected" and version > at):
            affected = False
    return affected


def affects(record: Mapping[str, Any], name: str, version: str) -> bool:
    """Whether the OSV `record` affects PyPI package `name` at `version`."""
    if record.get("withdrawn"):
        return False
    wanted = normalize(name)
    parsed = _version(version)
    for entry in record.get("affected", []):
        package = entry.get("package", {})
        if package.get("ecosystem") != ECOSYSTEM or normalize(package.get("name", "")) != wanted:
            continue
        if any(_same_version(listed, version) for listed in entry.get("versions", [])):
            return True
        for rng in entry.get("ranges", []):
            if rng.get("type") != "ECOSYSTEM":
                continue
            if parsed is None or range_affects(rng.get("events", []), parsed):
                return True
    return False


def _load_file(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    import yaml  # only reached when PyYAML imported in load_records

    return yaml.safe_load(text)


def load_records(directory: Path) -> dict[str, Record]:
    """Every OSV record under `directory`, by id. Raises ValueError on a file that is not an OSV record."""
    patterns = ["*.json"]
    try:
        import yaml  # noqa: F401
    except ImportError:
        pass
    else:
        patterns += ["*.yaml", "*.yml"]
    records: dict[str, Record] = {}
    for pattern in patterns:
        for path in sorted(directory.rglob(pattern)):
            data = _load_file(path)
            if not isinstance(data, dict) or not isinstance(data.get("id"), str):
                raise ValueError(f"{path}: not an OSV record (no id)")
            records[data["id"]] = data
    return records


def unparsable_events(records: Iterable[Record]) -> list[str]:
    """`id: event` for every range event that is not a PEP 440 version (those ranges always match)."""
    bad = []
    for record in records:
        for entry in record.get("affected", []):
            for rng in entry.get("ranges", []):
                for event in rng.get("events", []) if rng.get("type") == "ECOSYSTEM" else []:
                    for kind, text in event.items():
                        if kind != "limit" and text != "0" and _version(text) is None:
                            bad.append(f"{record['id']}: {kind} {text!r}")
    return bad


class Index:
    """The records by normalised PyPI package name."""

    def __init__(self, records: Mapping[str, Record]) -> None:
        self.records = dict(records)
        self.by_package: dict[str, list[Record]] = {}
        for record in self.records.values():
            names = {
                normalize(entry.get("package", {}).get("name", ""))
                for entry in record.get("affected", [])
                if entry.get("package", {}).get("ecosystem") == ECOSYSTEM
            }
            for name in names:
                self.by_package.setdefault(name, []).append(record)

    def query(self, name: str, version: str) -> list[Record]:
        return [r for r in self.by_package.get(normalize(name), []) if affects(r, name, version)]


def _stamp(record: Mapping[str, Any]) -> dict[str, str]:
    return {"id": record["id"], "modified": str(record.get("modified", ""))}


class Handler(BaseHTTPRequestHandler):
    index: Index  # set on the subclass made by serve()

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _query(self, query: Mapping[str, Any]) -> dict[str, Any]:
        package = query.get("package") or {}
        name, version = package.get("name"), query.get("version")
        if package.get("ecosystem") != ECOSYSTEM or not isinstance(name, str) or not isinstance(version, str):
            return {}
        found = self.index.query(name, version)
        return {"vulns": [_stamp(r) for r in found]} if found else {}

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/querybatch":
            self._send(404, {"code": 5, "message": "Not found"})
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            queries = body["queries"]
        except (ValueError, KeyError, TypeError):
            self._send(400, {"code": 3, "message": "Invalid query"})
            return
        self._send(200, {"results": [self._query(q) for q in queries]})

    def do_GET(self) -> None:
        prefix = "/v1/vulns/"
        record = self.index.records.get(self.path[len(prefix) :]) if self.path.startswith(prefix) else None
        if record is None or record.get("withdrawn"):
            self._send(404, {"code": 5, "message": "Bug not found."})
        else:
            self._send(200, record)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: uv's output is what matters
        pass


def serve(index: Index, port: int = 0) -> ThreadingHTTPServer:
    """A server on 127.0.0.1:`port` (0: a free port); call serve_forever() on it."""
    handler = type("BoundHandler", (Handler,), {"index": index})
    return ThreadingHTTPServer(("127.0.0.1", port), handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="directory of OSV records (JSON, or YAML with PyYAML)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--port-file", type=Path, help="write the port here once listening")
    args = parser.parse_args(argv)
    if not args.directory.is_dir():
        print(f"osv_mirror: {args.directory} is not a directory", file=sys.stderr)
        return 2
    try:
        index = Index(load_records(args.directory))
    except (OSError, ValueError) as exc:
        print(f"osv_mirror: cannot load records: {exc}", file=sys.stderr)
        return 2
    dates = [str(r.get(k, "")) for r in index.records.values() for k in ("modified", "published")]
    newest = max((d for d in dates if d), default="none")
    print(
        f"osv_mirror: {len(index.records)} records for {len(index.by_package)} PyPI packages from "
        f"{args.directory}, newest modified/published {newest}",
        file=sys.stderr,
    )
    for line in unparsable_events(index.records.values()):
        print(f"osv_mirror: not a PEP 440 version, the range always matches: {line}", file=sys.stderr)
    server = serve(index, args.port)
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(server.server_address[1]))
        tmp.replace(args.port_file)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
