"""`todo_write` (§7.1): the agent replaces its session's todo list."""

from __future__ import annotations

from typing import Any

from app.tools.base import ToolContext, ToolResult

MAX_ITEMS = 100
MAX_CONTENT_CHARS = 1000
STATUSES = ("pending", "in_progress", "done")
TODOS = "todos"
"""The key of `ToolContext.state` under which the new list is handed to the caller."""


class TodoWrite:
    """Replaces the session's todo list; the run stores it with the call's result."""

    name = "todo_write"
    description = (
        "Replace your todo list for this session with `items`, each with `content` and a "
        "`status` (pending, in_progress or done). Send the whole list every time."
    )

    def __init__(self) -> None:
        self.parameters: dict[str, Any] = {
            "type": "object",
            "properties": {"items": {
                "type": "array", "maxItems": MAX_ITEMS,
                "items": {
                    "type": "object",
                    "properties": {
                        "content": {"type": "string", "minLength": 1,
                                    "maxLength": MAX_CONTENT_CHARS},
                        "status": {"type": "string", "enum": list(STATUSES)},
                    },
                    "required": ["content", "status"],
                    "additionalProperties": False,
                },
            }},
            "required": ["items"],
            "additionalProperties": False,
        }

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        items = [{"content": item["content"], "status": item["status"]}
                 for item in arguments["items"]]
        context.state[TODOS] = items
        if not items:
            return ToolResult("The todo list is now empty.")
        counts = {status: sum(1 for item in items if item["status"] == status)
                  for status in STATUSES}
        lines = [f"[{item['status']}] {item['content']}" for item in items]
        summary = ", ".join(f"{count} {status.replace('_', ' ')}"
                            for status, count in counts.items() if count)
        return ToolResult(f"The todo list has {len(items)} items ({summary}):\n"
                          + "\n".join(lines))
