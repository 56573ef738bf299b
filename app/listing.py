"""`loomd agents|sessions|runs`: list a server's resources as a compact table (or JSON)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import httpx

from app.console import server_and_headers


@dataclass(frozen=True)
class Listing:
    path: str
    columns: tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...]
    empty: str


def _ts(field: str) -> Callable[[dict[str, Any]], Any]:
    """A timestamp to the second (`2025-01-02T03:04:05`)."""
    return lambda item: (item.get(field) or "")[:19]


LISTINGS = {
    "agents": Listing("/v1/agents", (
        ("NAME", lambda a: a["name"]), ("VERSION", lambda a: a["version"]),
        ("MODEL", lambda a: a["model"]), ("TOOLS", lambda a: len(a.get("tools") or [])),
        ("OWNER", lambda a: a["owner"]), ("UPDATED", _ts("updated_at")),
    ), "no agents"),
    "sessions": Listing("/v1/sessions", (
        ("ID", lambda s: s["id"]), ("AGENT", lambda s: s["agent"]),
        ("STATUS", lambda s: s["status"]), ("MESSAGES", lambda s: s["message_count"]),
        ("TITLE", lambda s: s.get("title") or ""), ("UPDATED", _ts("updated_at")),
    ), "no sessions"),
    "runs": Listing("/v1/runs", (
        ("ID", lambda r: r["id"]), ("AGENT", lambda r: r["agent"]),
        ("STATUS", lambda r: r["status"]), ("STOP", lambda r: r.get("stop_reason") or ""),
        ("TURNS", lambda r: r["turns"]), ("SESSION", lambda r: r["session_id"]),
        ("CREATED", _ts("created_at")),
    ), "no runs"),
}


def table(rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


def list_in_terminal(
    kind: str, server: str | None, token: str | None, *, as_json: bool = False,
    limit: int = 50, filters: dict[str, str | None] | None = None,
    out: TextIO = sys.stdout, err: TextIO = sys.stderr,
) -> int:
    """Print the newest `limit` items of `kind`; 0 on success, 1 on an error."""
    listing = LISTINGS[kind]
    base, headers = server_and_headers(server, token)
    params = {"limit": str(limit), **{k: v for k, v in (filters or {}).items() if v}}
    try:
        response = httpx.get(base + listing.path, params=params, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        err.write(f"loomd: cannot reach {base}: {exc}\n")
        return 1
    try:
        page = response.json()
    except ValueError:
        page = {}
    if response.status_code >= 400:
        err.write(f"loomd: {response.status_code} {page.get('code', '')}: "
                  f"{page.get('detail', response.text)}\n")
        return 1
    if as_json:
        out.write(json.dumps(page, indent=2, ensure_ascii=False) + "\n")
        return 0
    items = page.get("items", [])
    if not items:
        out.write(listing.empty + "\n")
        return 0
    rows = [[name for name, _ in listing.columns]]
    rows += [[str(cell(item)) for _, cell in listing.columns] for item in items]
    out.write(table(rows) + "\n")
    if page.get("next_cursor"):
        err.write(f"(the newest {len(items)}; more with --limit)\n")
    return 0
