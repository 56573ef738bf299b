"""The README's curl walk-through works verbatim against a freshly started loomd."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import create_postgres_database, drop_postgres_database, postgres_url
from tests.e2e.server import loomd_env, start_loomd

README = Path(__file__).resolve().parents[2] / "README.md"


def walk_through(heading: str = "## Walk-through") -> str:
    text = README.read_text()
    section = text.split(heading, 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "the README has no walk-through code block"
    return match.group(1)


def test_readme_walk_through_runs_verbatim_in_open_mode(empty_database_url: str, tmp_path: Path):
    server = start_loomd(tmp_path, loomd_env(LOOMD_DATABASE_URL=empty_database_url))
    try:
        server.wait_ready()
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", walk_through()], capture_output=True, text=True,
            env=loomd_env(LOOMD_URL=server.base_url), timeout=60, check=False,
        )
    finally:
        assert server.stop(), server.log()
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"subject":"alice"' in result.stdout
    assert '"name":"greeter"' in result.stdout
    assert '"title":"first chat"' in result.stdout
    assert '"content":"Hi there"' in result.stdout
    assert "event: run.completed" in result.stdout
    assert '"output":"Hello! How can I help?"' in result.stdout
    assert '"status":"completed"' in result.stdout
    assert '"type":"approve_tool_calls"' in result.stderr
    assert '"decided_by":"alice"' in result.stdout
    assert '"output":"19 * 23 = 437."' in result.stdout


def test_readme_snapshot_journey_moves_a_paused_run_from_sqlite_to_postgres(
        tmp_path: Path) -> None:
    database = create_postgres_database()
    source = start_loomd(tmp_path, loomd_env(
        LOOMD_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'source.db'}"))
    target = start_loomd(tmp_path, loomd_env(LOOMD_DATABASE_URL=postgres_url(database)))
    try:
        source.wait_ready()
        target.wait_ready()
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", walk_through("## Move a paused instance")],
            capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False,
            env=loomd_env(LOOMD_URL=source.base_url, TARGET=target.base_url),
        )
    finally:
        stopped = source.stop(), target.stop()
        drop_postgres_database(database)
    assert all(stopped), source.log() + target.log()
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"paused_runs":1' in result.stdout
    assert '"resumed_runs":1' in result.stdout
    assert '"status":"completed"' in result.stdout
    assert '"output":"moved, done"' in result.stdout
