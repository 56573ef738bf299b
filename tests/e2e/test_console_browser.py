"""The web console and the API docs in headless Chromium, against real `loomd serve` processes.

The browser is Debian's `chromium` package driven by Playwright; nothing is downloaded at test
time, and every request that leaves the loopback interface is blocked and reported.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from tests.e2e.server import Server, free_port, loomd_env, start_loomd
from tests.runs.helpers import CALCULATOR, SLEEP, agent_body, calls, step

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs Debian's chromium package (.ci/run installs it)")

TOKEN = "console-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Accept": "application/json"}
PATIENCE_MS = 20_000
"""How long the page may take to show what the test waits for (reconnects take ~2 s)."""


@pytest.fixture
def database(sqlite_template: Path, tmp_path: Path) -> Path:
    path = tmp_path / "loomd.db"
    shutil.copyfile(sqlite_template, path)
    return path


def serve(database: Path, port: int | None = None, open_mode: bool = False) -> Server:
    settings = {"LOOMD_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
                # Runs still active at SIGTERM are interrupted at once.
                "LOOMD_SHUTDOWN_GRACE_S": "0"}
    if not open_mode:
        settings["LOOMD_ADMIN_TOKEN"] = TOKEN
    server = start_loomd(database.parent, loomd_env(**settings), port=port)
    server.wait_ready()
    return server


@pytest.fixture
def server(database: Path) -> Iterator[Server]:
    running = serve(database)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


class Tab:
    """A page whose requests off the loopback interface are blocked, and its script errors."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1366, "height": 768})
        self.blocked: list[str] = []
        self.errors: list[str] = []
        self.context.route("**/*", self._only_loopback)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _only_loopback(self, route: Any) -> None:
        host = urlsplit(route.request.url).hostname
        if host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def check(self) -> None:
        assert self.blocked == [], self.blocked
        assert self.errors == [], self.errors


@pytest.fixture
def tab(browser: Any) -> Iterator[Tab]:
    opened = Tab(browser)
    yield opened
    opened.context.close()
    opened.check()


def api(server: Server, headers: dict[str, str] | None = None) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers=headers or {}, timeout=10)


def user_key(server: Server, subject: str) -> str:
    with api(server, ADMIN) as http:
        created = http.post("/v1/api-keys", json={"subject": subject, "role": "user"})
        assert created.status_code == 201, created.text
        key: str = created.json()["key"]
        return key


def sign_in(tab: Tab, server: Server, key: str) -> None:
    page = tab.page
    page.goto(f"{server.base_url}/console/")
    field = page.get_by_label("API key")
    field.fill(key)
    field.press("Enter")
    expect(page.locator("#who-text")).to_be_visible()


def persisted_events(server: Server, run_id: str, headers: dict[str, str]) -> list[Any]:
    with api(server, {**headers, **JSON}) as http:
        page = http.get(f"/v1/runs/{run_id}/events", params={"limit": 200})
        assert page.status_code == 200, page.text
        return [(event["seq"], event["type"]) for event in page.json()["items"]]


def shown_events(tab: Tab) -> list[Any]:
    items = tab.page.locator("#event-list li").evaluate_all(
        "items => items.map(li => [Number(li.dataset.seq), li.dataset.type])")
    return [tuple(item) for item in items]


def run_id_of(tab: Tab) -> str:
    expect(tab.page).to_have_url(re.compile(r"#/runs/run_"), timeout=PATIENCE_MS)
    return tab.page.url.rsplit("/", 1)[1]


class TestFollowingARun:
    def test_text_streams_in_and_an_approval_is_answered_in_the_page(
        self, server: Server, tab: Tab
    ):
        key = user_key(server, "alice")
        with api(server, {"Authorization": f"Bearer {key}"}) as http:
            created = http.post("/v1/agents", json=agent_body(
                "calc",
                [calls(("calculator", {"expression": "6*7"}), text="Let me work that out."),
                 step("The answer is 42.")],
                [CALCULATOR], tool_policy={"require_approval": ["calculator"]},
                options={"chunk_delay_ms": 30}))
            assert created.status_code == 201, created.text

        sign_in(tab, server, key)
        page = tab.page
        expect(page.locator("#who-text")).to_have_text("alice (user)")
        page.locator("#nav").get_by_role("link", name="Start a run").click()
        page.get_by_label("Agent").select_option("calc")
        page.get_by_label("Input").fill("What is 6 times 7?")
        page.get_by_role("button", name="Start run").press("Enter")
        run_id = run_id_of(tab)

        # The run waits for the approval: what the page shows came while it was live.
        send = page.get_by_role("button", name="Send decisions")
        expect(send).to_be_visible(timeout=PATIENCE_MS)
        first_turn = page.locator('[data-turn="1"] [data-role="assistant-text"]')
        expect(first_turn).to_have_text("Let me work that out.")
        expect(page.locator('[data-field="run-status"]')).to_have_text("requires_action")
        assert page.locator('#event-list li[data-type="message.delta"]').count() == 5
        expect(page.get_by_role("group", name=re.compile("calculator"))).to_contain_text("6*7")

        page.get_by_role("radio", name="Approve").check()
        send.press("Enter")

        expect(page.locator('[data-field="outcome"]')).to_contain_text("The answer is 42.",
                                                                        timeout=PATIENCE_MS)
        expect(page.locator('[data-field="run-status"]')).to_have_text("completed")
        expect(page.locator(".tool .result pre")).to_have_text("42")
        expect(page.get_by_role("button", name="Send decisions")).to_have_count(0)
        expect(page.locator('[data-field="connection"]')).to_have_text("Run ended")
        with api(server, {"Authorization": f"Bearer {key}"}) as http:
            run = http.get(f"/v1/runs/{run_id}").json()
        assert (run["status"], run["output"]) == ("completed", "The answer is 42.")
        assert [a["approve"] for a in run["approvals"]] == [True]
        assert shown_events(tab) == persisted_events(server, run_id,
                                                     {"Authorization": f"Bearer {key}"})

    def test_a_client_tool_is_answered_and_a_run_is_cancelled_in_the_page(
        self, server: Server, tab: Tab
    ):
        reader = {"type": "client", "name": "read_note", "parameters": {
            "type": "object", "properties": {"path": {"type": "string"}}}}
        with api(server, ADMIN) as http:
            for body in (
                agent_body("reader", [calls(("read_note", {"path": "todo.txt"})),
                                      step("Noted.")], [reader]),
                agent_body("napper", [calls(("sleep", {"seconds": 30}))], [SLEEP]),
            ):
                created = http.post("/v1/agents", json=body)
                assert created.status_code == 201, created.text
        sign_in(tab, server, TOKEN)
        page = tab.page

        page.goto(f"{server.base_url}/console/#/new?agent=reader")
        page.get_by_label("Input").fill("Read my note")
        page.get_by_role("button", name="Start run").click()
        run_id_of(tab)
        page.get_by_label("Output").fill("buy milk")
        page.get_by_role("button", name="Send outputs").press("Enter")
        expect(page.locator('[data-field="run-status"]')).to_have_text("completed",
                                                                       timeout=PATIENCE_MS)
        expect(page.locator(".tool .result pre")).to_have_text("buy milk")

        page.goto(f"{server.base_url}/console/#/new?agent=napper")
        page.get_by_label("Input").fill("nap")
        page.get_by_role("button", name="Start run").click()
        napping = run_id_of(tab)
        expect(page.locator('#event-list li[data-type="tool.started"]')).to_have_count(
            1, timeout=PATIENCE_MS)
        page.get_by_role("button", name="Cancel run").press("Enter")
        expect(page.locator('[data-field="run-status"]')).to_have_text("cancelled",
                                                                       timeout=PATIENCE_MS)
        expect(page.get_by_role("button", name="Cancel run")).to_be_disabled()
        with api(server, ADMIN) as http:
            assert http.get(f"/v1/runs/{napping}").json()["status"] == "cancelled"

    def test_a_run_followed_across_a_server_restart_shows_every_event_once(
        self, database: Path, tab: Tab
    ):
        port = free_port()
        first = serve(database, port)
        try:
            with api(first, ADMIN) as http:
                created = http.post("/v1/agents", json=agent_body(
                    "napper", [calls(("sleep", {"seconds": 30}), text="Taking a nap."),
                               step("Rested.")], [SLEEP], options={"chunk_delay_ms": 10}))
                assert created.status_code == 201, created.text
                run = http.post("/v1/runs", json={"agent": "napper", "input": "nap"})
                assert run.status_code == 202, run.text
                run_id = run.json()["id"]
            sign_in(tab, first, TOKEN)
            tab.page.goto(f"{first.base_url}/console/#/runs/{run_id}")
            expect(tab.page.locator('#event-list li[data-type="tool.started"]')).to_have_count(
                1, timeout=PATIENCE_MS)
        finally:
            first.stop()
        page = tab.page
        connection = page.locator('[data-field="connection"]')
        expect(connection).to_have_text("Reconnecting…", timeout=PATIENCE_MS)
        expect(page.locator('[data-field="run-status"]')).to_have_text("running")

        second = serve(database, port)
        try:
            expect(connection).to_have_text("Run ended", timeout=PATIENCE_MS)
            expect(page.locator('[data-field="run-status"]')).to_have_text("interrupted")
            persisted = persisted_events(second, run_id, ADMIN)
            assert persisted[-1][1] == "run.interrupted"
            shown = shown_events(tab)
            assert shown == persisted
            assert len({seq for seq, _ in shown}) == len(shown)
        finally:
            second.stop()


class TestBrowsing:
    def test_open_mode_needs_no_key_and_lists_runs_agents_and_sessions_live(
        self, database: Path, tab: Tab
    ):
        server = serve(database, open_mode=True)
        try:
            with api(server) as http:
                created = http.post("/v1/agents", json=agent_body(
                    "greeter", [step("Hello there.")], description="Says hello"))
                assert created.status_code == 201, created.text
            page = tab.page
            page.goto(f"{server.base_url}/")
            expect(page.locator("#who-text")).to_have_text("admin (admin, open mode)")
            expect(page.get_by_role("heading", name="Runs")).to_be_focused()
            expect(page.get_by_text("No runs yet.")).to_be_visible()
            expect(page.locator("#runs-live")).to_have_text("Live", timeout=PATIENCE_MS)

            with api(server) as http:
                run = http.post("/v1/runs", json={"agent": "greeter", "input": "hi",
                                                  "session": {"title": "Greeting"}})
                assert run.status_code == 202, run.text
                run_id, session_id = run.json()["id"], run.json()["session_id"]
                assert http.get(f"/v1/runs/{run_id}/wait").json()["status"] == "completed"
            row = page.locator(f'tr[data-run-id="{run_id}"]')
            expect(row.locator('[data-field="status"]')).to_have_text("completed",
                                                                      timeout=PATIENCE_MS)

            page.locator("#nav").get_by_role("link", name="Agents").click()
            card = page.locator('[data-agent="greeter"]')
            expect(card).to_contain_text("scripted:test")
            expect(card).to_contain_text("Says hello")

            page.locator("#nav").get_by_role("link", name="Sessions").click()
            page.get_by_role("link", name=session_id).click()
            expect(page.get_by_role("heading", name="Session: Greeting")).to_be_visible()
            messages = page.locator(".messages li")
            expect(messages).to_have_count(2)
            expect(messages.nth(0)).to_contain_text("hi")
            expect(messages.nth(1)).to_contain_text("Hello there.")
            page.get_by_role("link", name=run_id).click()
            expect(page.locator('[data-field="outcome"]')).to_contain_text("Hello there.",
                                                                            timeout=PATIENCE_MS)
        finally:
            server.stop()

    def test_start_run_waits_for_the_agents_so_a_click_is_never_lost(
        self, server: Server, tab: Tab
    ):
        with api(server, ADMIN) as http:
            created = http.post("/v1/agents", json=agent_body("greeter", [step("Hello.")]))
            assert created.status_code == 201, created.text
        sign_in(tab, server, TOKEN)
        page = tab.page
        held: list[Any] = []
        page.route(re.compile(r"/v1/agents\?"), lambda route: held.append(route))
        page.goto(f"{server.base_url}/console/#/new?agent=greeter")
        start = page.get_by_role("button", name="Start run")
        expect(start).to_be_disabled()
        for _ in range(PATIENCE_MS // 50):
            if held:
                break
            page.wait_for_timeout(50)
        assert held, "the page never asked for the agents"
        expect(start).to_be_disabled()
        for route in held:
            route.continue_()
        page.get_by_label("Input").fill("hi")
        start.click()
        run_id = run_id_of(tab)
        with api(server, {**ADMIN, **JSON}) as http:
            assert http.get(f"/v1/runs/{run_id}/wait").json()["status"] == "completed"

    def test_sessions_load_a_page_at_a_time_and_a_double_click_shows_each_once(
        self, server: Server, tab: Tab
    ):
        with api(server, ADMIN) as http:
            created = http.post("/v1/agents", json=agent_body("greeter", [step("Hello.")]))
            assert created.status_code == 201, created.text
            ids = set()
            for n in range(53):
                session = http.post("/v1/sessions", json={"agent": "greeter", "title": f"s{n}"})
                assert session.status_code == 201, session.text
                ids.add(session.json()["id"])
        sign_in(tab, server, TOKEN)
        page = tab.page
        page.locator("#nav").get_by_role("link", name="Sessions").click()
        rows = page.locator("tbody tr")
        expect(rows).to_have_count(50)
        more = page.get_by_role("button", name="Load more")
        more.dblclick()
        expect(rows).to_have_count(53)
        expect(more).to_be_hidden()
        page.wait_for_timeout(300)
        shown = rows.locator("th").all_inner_texts()
        assert sorted(shown) == sorted(ids)

    def test_a_wrong_key_is_refused_with_a_message(self, server: Server, tab: Tab):
        sign_in_page = tab.page
        sign_in_page.goto(f"{server.base_url}/console/")
        field = sign_in_page.get_by_label("API key")
        field.fill("lmd_not-a-key")
        sign_in_page.get_by_role("button", name="Sign in").click()
        expect(sign_in_page.get_by_role("alert")).to_contain_text("unauthorized")
        expect(field).to_be_focused()
        expect(sign_in_page.locator("#nav")).to_be_hidden()


class TestDocsOffline:
    @pytest.mark.parametrize(("path", "rendered"), [
        ("/docs", ".opblock"),
        ("/redoc", '[data-section-id^="operation/"]'),
    ])
    def test_the_docs_render_with_no_network(
        self, server: Server, tab: Tab, path: str, rendered: str
    ):
        tab.page.goto(f"{server.base_url}{path}")
        expect(tab.page.locator(rendered).first).to_be_attached(timeout=PATIENCE_MS)
        assert tab.page.locator(rendered).count() > 10
