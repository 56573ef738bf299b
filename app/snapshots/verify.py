"""Checking an envelope as it streams by, and writing it out again in canonical form.

A first pass reads everything but the sections (whose names it notes); then one pass per
section, in sorted order, parses its items one at a time, checks each (storable values, the
fields its table takes) and writes it as canonical JSON, so the sections' hash is computed
whatever order or layout the sections had in the file. Parsing is ijson's C parser over a
source read in slices.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import ijson
from ijson.common import ObjectBuilder
from pydantic import ValidationError

from app.errors import SnapshotCorrupt, SnapshotVersionUnsupported
from app.schemas.common import UnstorableValue, check_storable
from app.schemas.snapshots import ITEM_MODELS, Source
from app.snapshots.build import header, trailer
from app.snapshots.chunks import AsyncReader, ChunkSink
from app.snapshots.codec import FORMAT, FORMAT_VERSION, SECTIONS, canonical, key
from app.snapshots.servable import Unservable, check_servable, describe

MEMBERS = frozenset({"format", "format_version", "created_at", "source", "sections", "sha256"})
MAX_ITEM_DEPTH = 40
"""How deep an item may nest (a request body may nest 32 levels; an item holds one)."""
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
PARSE_ERRORS = (ijson.JSONError, UnicodeDecodeError, ValueError)

Reader = Callable[[], AsyncReader]
"""Opens the envelope's bytes from their start, for one more pass."""


@dataclass
class Header:
    """An envelope's members other than its sections, and the names of its sections."""

    members: dict[str, Any] = field(default_factory=dict)
    """The known members but `sections`, as parsed."""
    names: list[str] = field(default_factory=list)
    """Every top-level member's name, in the file's order."""
    sections: list[str] = field(default_factory=list)
    problem: str | None = None


@dataclass
class Verified:
    format_version: int
    source: dict[str, Any]
    sha256: str
    counts: dict[str, int]


def corrupt(detail: str) -> SnapshotCorrupt:
    return SnapshotCorrupt(f"the envelope is not a valid snapshot: {detail}")


async def read_header(reader: AsyncReader) -> Header:
    """Every known top-level member but `sections`, built; of `sections`, the names only."""
    found = Header()
    builders: dict[str, ObjectBuilder] = {}
    current: ObjectBuilder | None = None
    in_sections = False
    section_prefix: str | None = None
    started = False
    try:
        async for prefix, event, value in ijson.parse(reader, use_float=True):
            if not started:
                started = True
                if event != "start_map":
                    found.problem = "it is not a JSON object"
                    return found
            elif prefix == "":
                if event == "map_key":
                    found.names.append(value)
                    in_sections = value == "sections"
                    current = None
                    if value in MEMBERS and not in_sections:
                        current = builders[value] = ObjectBuilder()
            elif current is not None:
                current.event(event, value)
            elif not in_sections:
                continue  # an unknown member's value
            elif prefix == "sections":
                if event == "map_key":
                    found.sections.append(value)
                    section_prefix = f"sections.{value}"
                elif event not in ("start_map", "end_map"):
                    found.problem = "`sections` is not an object"
            elif prefix == section_prefix and event not in ("start_array", "end_array"):
                found.problem = f"the section {prefix[9:]!r} is not a list"
    except PARSE_ERRORS as exc:
        raise corrupt(f"it is not valid JSON ({exc})") from exc
    if not started:
        found.problem = "the body is empty"
    found.members = {name: builder.value for name, builder in builders.items()}
    return found


def _check_header(found: Header) -> tuple[int, dict[str, Any], str]:
    """The format version, source and claimed hash, or the envelope's first problem."""
    members = found.members
    if found.problem is not None:
        raise corrupt(found.problem)
    if members.get("format") != FORMAT:
        raise corrupt(f"`format` must be {FORMAT!r}")
    version = members.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise corrupt("`format_version` must be a positive integer")
    if version > FORMAT_VERSION:
        raise SnapshotVersionUnsupported(
            f"format_version {version} is newer than this service reads "
            f"(up to {FORMAT_VERSION})", format_version=version,
            supported_version=FORMAT_VERSION)
    unknown = [name for name in found.names if name not in MEMBERS]
    if unknown:
        raise corrupt(f"unknown member {unknown[0]!r}")
    if len(set(found.names)) != len(found.names):
        raise corrupt("a member appears twice")
    missing = sorted(MEMBERS - set(found.names))
    if missing:
        raise corrupt(f"the member {missing[0]!r} is missing")
    try:
        check_storable(members)
    except UnstorableValue as exc:
        raise corrupt(f"{'.'.join(str(part) for part in exc.path)} {exc}") from exc
    created_at = members["created_at"]
    try:
        if not isinstance(created_at, str) or datetime.fromisoformat(created_at).tzinfo is None:
            raise ValueError(created_at)
    except ValueError as exc:
        raise corrupt("`created_at` must be an RFC 3339 timestamp") from exc
    try:
        source = Source.model_validate(members["source"]).model_dump()
    except ValidationError as exc:
        raise corrupt('`source` must be {"version": str, "instance": str}') from exc
    sha256 = members["sha256"]
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        raise corrupt("`sha256` must be 64 lower-case hex digits")
    unknown_sections = [name for name in found.sections if name not in SECTIONS]
    if unknown_sections:
        raise corrupt(f"unknown section {unknown_sections[0]!r}")
    if len(set(found.sections)) != len(found.sections):
        raise corrupt("a section appears twice")
    return version, source, sha256


def check_item(section: str, index: int, item: Any) -> None:
    """An item that can be restored, or 422 `snapshot_corrupt` naming what is wrong."""
    where = f"sections.{section}[{index}]"
    try:
        check_storable(item, MAX_ITEM_DEPTH)
    except UnstorableValue as exc:
        path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}"
                       for part in exc.path)
        raise corrupt(f"{where}{path} {exc}") from exc
    try:
        ITEM_MODELS[section].model_validate(item)
    except ValidationError as exc:
        path, reason = describe(exc)
        raise corrupt(f"{where}{path}: {reason}") from exc
    try:
        check_servable(section, item)
    except Unservable as exc:
        raise corrupt(f"{where}{exc.where}: {exc}") from exc


async def rewrite(open_reader: Reader, sink: ChunkSink) -> Verified:
    """Check the envelope and write it to `sink` in canonical form; 422 `snapshot_corrupt`
    (or `snapshot_version_unsupported`) at the first problem found. The hash can only be
    checked last, once every item is written."""
    found = await read_header(open_reader())
    version, source, claimed = _check_header(found)
    await sink.write(header(found.members["created_at"], source, version), hashed=False)
    await sink.write(b"{")
    counts: dict[str, int] = defaultdict(int)
    present = [name for name in SECTIONS if name in found.sections]
    for position, name in enumerate(present):
        await sink.write((b"," if position else b"") + key(name) + b":[")
        index = 0
        try:
            async for item in ijson.items(open_reader(), f"sections.{name}.item",
                                          use_float=True):
                check_item(name, index, item)
                await sink.write(canonical(item) if index == 0 else b"," + canonical(item))
                index += 1
                if name == "sessions":
                    counts["messages"] += len(item["messages"])
        except PARSE_ERRORS as exc:
            raise corrupt(f"it is not valid JSON ({exc})") from exc
        counts[name] = index
        await sink.write(b"]")
    await sink.write(b"}")
    sha256 = sink.digest.hexdigest()
    if sha256 != claimed:
        raise corrupt(f"the sections' sha256 is {sha256}, not {claimed} as the envelope says")
    await sink.write(trailer(sha256), hashed=False)
    await sink.close()
    return Verified(version, source, sha256, dict(counts))
