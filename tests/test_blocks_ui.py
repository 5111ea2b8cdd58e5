"""The Prefect UI in a real browser: DockerParallel blocks created, edited and saved through both
of Prefect's block forms (the Vue UI at /blocks, the React UI at /v2/blocks, the default at /)
keep every value, and a flow then runs on the cluster the UI configured.

Debian's chromium driven by Playwright for Python (no browser download), against a `prefect
server` of this module with the UI on. A failing test leaves `failure.png` (and the page's
HTML) in its tmp dir.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import json
import os
import re
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import httpx
import pytest

from prefect_server import PrefectServer, start_server, stop_server
from prefect_dockerparallel.specs import DEFAULT_IMAGE

CHROMIUM = os.environ.get("DOCKERPARALLEL_CHROMIUM", "/usr/bin/chromium")
# Flags that keep chromium from dialling out: on a closed network its connections stall.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CC_SLUG = "dockerparallel-cluster-config"
T = TypeVar("T")

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]' (playwright)")
if not Path(CHROMIUM).exists():
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

pytestmark = pytest.mark.timeout(300)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ui_server() -> Iterator[PrefectServer]:
    server = start_server(ui=True)
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def api_settings(ui_server: PrefectServer) -> Iterator[PrefectServer]:
    """This process's Prefect client talks to the UI server for the module."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: ui_server.api_url}):
        yield ui_server


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh user-data-dir
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        context.set_default_timeout(30_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    page = browser.new_page()
    failed_before = request.session.testsfailed
    try:
        yield page
    finally:
        if request.session.testsfailed > failed_before:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            (tmp_path / "failure.html").write_text(page.content())
            print(f"screenshot of the failure: {tmp_path / 'failure.png'}")
        page.close()


# --------------------------------------------------------------------------- the two UIs


class VueUI:
    """Prefect's Vue block forms (/blocks/...): labelled p-label boxes, p-select pickers."""

    prefix = ""

    def __init__(self, page: Any, base_url: str):
        self.page, self.base = page, base_url

    def _box(self, title: str) -> Any:
        """The input area under a field's label; `title` may list alternatives as 'A|B'."""
        label = "[" + " or ".join(
            f"normalize-space()='{t}' or normalize-space()='{t} (Optional)'" for t in title.split("|")
        ) + "]"
        return self.page.locator(
            "xpath=//div[contains(@class,'p-label')][./div[contains(@class,'p-label__header')]"
            f"/label/span{label}]/div[contains(@class,'p-label__body')]"
        ).first

    def open(self, path: str) -> None:
        self.page.goto(f"{self.base}{self.prefix}{path}")
        self.page.wait_for_load_state("networkidle")
        if re.search(r"/blocks/block/[0-9a-f-]{36}$", path):  # a detail page: wait for its snippet
            self.page.get_by_text("Paste this snippet").first.wait_for()

    def name(self, value: str) -> None:
        self._box("Block Name").locator("input").fill(value)

    def fill(self, title: str, value: str) -> None:
        self._box(title).locator("input, textarea").first.fill(value)

    def pick(self, title: str, option: str) -> None:
        picker = self._box(title).locator(".p-select-button__control")
        picker.press("ArrowDown")  # a click opens and closes it again; the key opens it
        self.page.get_by_role("option", name=option, exact=True).click()
        sync_api.expect(picker).to_contain_text(option)

    def tab(self, label: str) -> None:
        self.page.get_by_role("button", name=label, exact=True).click()

    def _submit_button(self, label: str) -> Any:
        return self.page.get_by_role("button", name=label, exact=True)

    def submit(self, label: str) -> str:
        """Press Create/Save and wait for the block's page; a form that refuses says why."""
        self._submit_button(label).click()
        try:
            self.page.wait_for_url(re.compile(r".*/blocks/block/[0-9a-f-]{36}$"), timeout=90_000)
        except sync_api.TimeoutError:
            messages = self.page.locator(".p-label__message, [role=alert], .text-destructive").all_inner_texts()
            raise AssertionError(f"the form did not save: {messages}") from None
        return self.page.url.rsplit("/", 1)[1]

    def text(self) -> str:
        return self.page.locator("body").inner_text()


class ReactUI(VueUI):
    """Prefect's React block forms (/v2/blocks/...): shadcn labels, CodeMirror JSON editors,
    a combobox per block field."""

    prefix = "/v2"

    def _group(self, title: str) -> Any:
        alternatives = "|".join(re.escape(t) for t in title.split("|"))
        pattern = re.compile(rf"^({alternatives})( \(Optional\))?$")
        return self.page.locator("div.group", has=self.page.get_by_text(pattern)).last

    def open(self, path: str) -> None:
        super().open(path)
        if path.endswith(("/edit", "/create")):  # the form renders after its queries resolve
            self.page.get_by_role("button", name=re.compile("^(Save|Create)$")).wait_for()

    def name(self, value: str) -> None:
        self.page.get_by_label("Name", exact=True).fill(value)

    def fill(self, title: str, value: str) -> None:
        group = self._group(title)
        editor = group.locator(".cm-content")
        add_item = group.get_by_role("button", name="Add item")
        if add_item.count():  # a list of strings: one input per item
            for item in json.loads(value):
                add_item.click()
                group.locator("input, textarea").last.fill(item)
        elif editor.count():
            editor.first.fill(value)
        else:
            group.locator("input, textarea").first.fill(value)

    def pick(self, title: str, option: str) -> None:
        picker = self._group(title).get_by_role("button", name=re.compile("^Select a block")).first
        picker.click()
        self.page.get_by_role("option", name=option, exact=True).click()
        sync_api.expect(picker).to_contain_text(option)

    def tab(self, label: str) -> None:
        self.page.get_by_role("tab", name=label, exact=True).click()

    def _submit_button(self, label: str) -> Any:
        return self.page.get_by_role("button", name=re.compile("^(Save|Create)$"))  # "Save" on create too


UIS: dict[str, type[VueUI]] = {"vue": VueUI, "react": ReactUI}


def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run Prefect client code in a thread of its own: Playwright's sync API keeps an event loop
    running in this one, which makes Prefect's dual sync/async methods return coroutines."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(contextvars.copy_context().run, fn, *args).result()  # same Prefect settings


def _load(name: str) -> Any:
    from prefect_dockerparallel.blocks import ClusterConfig

    return off_loop(lambda: ClusterConfig.load(name, _sync=True))


def _document(server: PrefectServer, document_id: str) -> dict:
    return httpx.get(f"{server.api_url}/block_documents/{document_id}", timeout=10).raise_for_status().json()


def _content(block: Any) -> dict:
    """A block's values, secrets in clear, without Prefect's bookkeeping key."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "block_type_slug" and not k.startswith("_")}
        return value

    return strip(block.model_dump(mode="json", context={"include_secrets": True}))


def _save_unchanged(ui: VueUI, document_id: str) -> None:
    ui.open(f"/blocks/block/{document_id}/edit")
    ui.submit("Save")


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("ui_name", list(UIS))
def test_cluster_config_typed_in_the_ui_survives_unchanged_saves_and_runs_a_flow(
    api_settings: PrefectServer, page: Any, ui_name: str, no_leftover_processes: None
) -> None:
    from prefect_dockerparallel.blocks import ClusterConfig, LocalProvider, WorkerContainer
    from prefect_dockerparallel.runner.config import load_cluster_config

    ui = UIS[ui_name](page, api_settings.api_url.removesuffix("/api"))
    suffix = f"{ui_name}-{uuid.uuid4().hex[:6]}"
    python = sys.executable
    redis = shutil.which("redis-server") or ""

    # A provider block and a worker container block, each through its own create form.
    ui.open("/blocks/catalog/dockerparallel-local-provider/create")
    ui.name(f"local-{suffix}")
    ui.fill("Worker Python", python)
    if redis:
        ui.fill("redis-server Path", redis)
    ui.submit("Create")
    ui.open("/blocks/catalog/dockerparallel-worker-container/create")
    ui.name(f"container-{suffix}")
    ui.fill("Workers per Container", "1")
    ui.fill("Environment Variables", '{"UI_MARK": "%s"}' % suffix)
    ui.fill("pip Packages", '["numpy"]')
    ui.fill("Install prefect-dockerparallel", "none")
    ui.submit("Create")

    # The cluster config picks both.
    ui.open("/blocks/catalog/dockerparallel-cluster-config/create")
    ui.name(f"cluster-{suffix}")
    ui.tab("LocalProvider")
    ui.pick("LocalProvider", f"local-{suffix}")
    ui.pick("WorkerContainer|Worker Container", f"container-{suffix}")  # Vue titles it by class
    ui.fill("Workers", "2")
    ui.fill("Idle Timeout", "20")
    ui.fill("Tags", '{"team": "ui"}')
    document_id = ui.submit("Create")

    typed = ClusterConfig(
        provider=LocalProvider(python=python, redis_server_path=redis or None),
        container=WorkerContainer(workers_per_container=1, env={"UI_MARK": suffix}, pip_packages=["numpy"], install_self=None),
        workers=2,
        idle_timeout=20,
        tags={"team": "ui"},
    )
    # What a flow run does first: load it (stamping blocks created in a UI, see _references.py).
    assert _content(off_loop(load_cluster_config, f"cluster-{suffix}")) == _content(typed)

    # The detail page shows the picked blocks, not "None".
    ui.open(f"/blocks/block/{document_id}")
    assert f"local-{suffix}" in ui.text() or python in ui.text()

    for _ in range(2):
        _save_unchanged(ui, document_id)
    document = _document(api_settings, document_id)
    assert set(document["block_document_references"]) == {"provider", "container"}, document["data"]
    assert _content(_load(f"cluster-{suffix}")) == _content(typed)

    if ui_name == "vue":  # one flow run is enough to show the UI-made config drives a cluster
        marks = off_loop(_run_flow, f"cluster-{suffix}")
        assert marks == [suffix] * 4  # every task ran on a worker started from the UI's container block


def _run_flow(cluster: str) -> list[str]:
    from prefect import flow, task

    from prefect_dockerparallel import DockerParallelTaskRunner

    @task
    def mark(i: int) -> str:
        return os.environ.get("UI_MARK", "driver")

    @flow(task_runner=DockerParallelTaskRunner(cluster=cluster))
    def ui_configured(n: int = 4) -> list[str]:
        return mark.map(range(n)).result()

    return ui_configured()


@pytest.fixture(scope="module")
def saved_examples(api_settings: PrefectServer) -> dict[str, str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "blocks"))
    try:
        import save_examples  # blocks/save_examples.py
    finally:
        sys.path.pop(0)
    with pytest.MonkeyPatch.context() as env:  # secrets in the examples: the UI must keep them
        env.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
        env.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-example")
        names = off_loop(save_examples.save)
    documents = httpx.post(f"{api_settings.api_url}/block_documents/filter", json={}, timeout=10).json()
    ids = {d["name"]: d["id"] for d in documents if d["block_type"]["slug"] == CC_SLUG}
    return {name: ids[name] for name in names}


# A value of each example's provider that the React detail page lists (the Vue one names the block).
SHOWN_VALUE = {
    "local-2": "Redis Server Path",
    "docker-example": "Docker Host",
    "ecs-example": "us-east-1",
    "aks-example": "dockerparallel",
}


@pytest.mark.parametrize("ui_name", list(UIS))
def test_every_saved_example_shows_completely_and_survives_unchanged_saves(
    saved_examples: dict[str, str], api_settings: PrefectServer, page: Any, ui_name: str
) -> None:
    ui = UIS[ui_name](page, api_settings.api_url.removesuffix("/api"))
    assert set(saved_examples) == set(SHOWN_VALUE)
    for name, document_id in saved_examples.items():
        before = _content(_load(name))
        ui.open(f"/blocks/block/{document_id}")
        shown = ui.text()
        if ui_name == "vue":  # the Vue detail page names the referenced blocks
            assert f"{name}-provider" in shown and f"{name}-container" in shown, shown
        else:  # the React one lists their values
            assert SHOWN_VALUE[name] in shown and DEFAULT_IMAGE in shown, shown
        assert "Provider\nNone" not in shown and "WorkerContainer\nNone" not in shown
        _save_unchanged(ui, document_id)
        document = _document(api_settings, document_id)
        assert set(document["block_document_references"]) == {"provider", "container"}, (ui_name, name)
        assert _content(_load(name)) == before, (ui_name, name)


def test_the_forms_draw_each_field_type_as_intended(api_settings: PrefectServer, page: Any) -> None:
    """What a user sees on the ECS form: no kind field, no string|null tabs, acronyms, password
    inputs for secrets (React UI), list placeholders."""
    ui = ReactUI(page, api_settings.api_url.removesuffix("/api"))
    ui.open("/blocks/catalog/dockerparallel-ecs-fargate-provider/create")
    text = ui.text()
    for title in ("VPC ID", "Subnet ID", "AWS Access Key ID", "AWS Secret Access Key", "Runner CIDR", "AWS Region"):
        assert title in text, title
    assert "Kind" not in text and "null" not in text.split()
    secret = ui._group("AWS Secret Access Key").locator("input").first
    assert secret.get_attribute("type") == "password"
    vue = VueUI(page, ui.base)
    vue.open("/blocks/catalog/dockerparallel-worker-container/create")
    assert "pandas==2.2.3" in page.content()  # the list example is the JSON editor's placeholder
    vue.open("/blocks/catalog/dockerparallel-worker-container")
    assert "&gt;" not in vue.text() and 'WorkerContainer.load("' in vue.text()

