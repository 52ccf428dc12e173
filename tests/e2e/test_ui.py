"""The Prefect UI in a real browser, against the local cloud (compact example): headless
Chromium (Debian's `chromium` and `chromium-driver`, driven by selenium; nothing is
downloaded, the browser reaches nothing but this machine) opens the UI, goes to the
deployments, opens the stack's restore drill and starts it with "Run", "Quick run"; the
run that click created runs to completion on a process worker, and its page in the UI says
so. Screenshots are kept in test-output/ (and on failure a screenshot and the page source).

The selectors are the ones a user reads (link and button texts, the page's breadcrumb),
checked against Prefect 3.9's default UI (the React one, under /v2/).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lifeboat.waiting import NotYet
from tests.e2e.conftest import wait_flow_run, wait_for

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"
UI_TIMEOUT = 60  # seconds for one step in the UI: a page, a menu, a dialog, a toast
RUN_TIMEOUT = 900  # the restore drill: scratch droplet, restore, proof, teardown

CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",  # root, in a container
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
    # Nothing but this machine: the UI's own analytics and any other outside host fail
    # at once instead of leaving it (or hanging where there is no network).
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
)


def xpath_text(text: str) -> str:
    """`text` as an XPath string literal (names hold no quotes; refuse one that does)."""
    if "'" in text:
        raise ValueError(f"no single quotes in UI texts here: {text!r}")
    return f"'{text}'"


def link(text: str) -> str:
    return f"//a[normalize-space()={xpath_text(text)}]"


def button(text: str, within: str = "") -> str:
    return f"{within}//button[normalize-space()={xpath_text(text)}]"


def current_page(text: str) -> str:
    """The breadcrumb naming the page shown (a deployment's or a flow run's name)."""
    return f"//*[@aria-current='page'][normalize-space()={xpath_text(text)}]"


MENU_ITEM_QUICK_RUN = "//*[@role='menuitem'][normalize-space()='Quick run']"
# A deployment with required parameters asks for them first, filled in with its own.
RUN_DIALOG = "//*[@role='dialog'][.//*[normalize-space()='Run Deployment']]"
VIEW_RUN = "//a[normalize-space()='View run']"  # in the "Flow run created" toast
ERROR_TOAST = "//li[@data-sonner-toast][@data-type='error']"
SEARCH_DEPLOYMENTS = "//input[starts-with(@placeholder, 'Search deployments')]"
COMPLETED_BADGE = "//*[@data-slot='badge'][normalize-space()='Completed']"


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Headless Chromium through chromedriver, both Debian's: the driver's path is given,
    so selenium-manager never runs (and could not download anything if it did)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} missing: apt-get install chromium chromium-driver "
            "(make deps does)"
        )
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(UI_TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver, name: str) -> Path:
    OUTPUT.mkdir(exist_ok=True)
    path = OUTPUT / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


@contextlib.contextmanager
def evidence_on_failure(driver, name: str) -> Iterator[None]:
    """On any failure inside: the browser's screenshot and page source into test-output/
    (for CI, where nobody watches the browser), then the failure as it was."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            screenshot(driver, f"{name}-failure")
            source = OUTPUT / f"{name}-failure.html"
            source.write_text(driver.page_source)
            print(f"page source: {source} (at {driver.current_url})")
        raise


def wait(driver, timeout: float = UI_TIMEOUT, ignored: tuple = ()):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, ignored_exceptions=ignored)


def click(driver, xpath: str, what: str) -> None:
    """Find and click in one step, again while the UI redraws: a list that re-renders
    under a search (the deployments' does, after each keystroke's debounce) replaces the
    element found between the find and the click (a CI run failed on that)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    def clicked(d) -> bool:
        element = ec.element_to_be_clickable((By.XPATH, xpath))(d)
        if not element:
            return False
        element.click()
        return True

    wait(driver, ignored=(StaleElementReferenceException,)).until(
        clicked, f"{what} ({xpath}) to be clickable"
    )


def texts(driver, xpath: str) -> list[str]:
    """The stripped texts of the elements at `xpath`, read again if the UI redraws them
    while they are read."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    return wait(driver, ignored=(StaleElementReferenceException,)).until(
        lambda d: [e.text.strip() for e in d.find_elements(By.XPATH, xpath)] or None,
        f"elements at {xpath}",
    )


def shown(driver, xpath: str, what: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    return wait(driver).until(
        ec.visibility_of_element_located((By.XPATH, xpath)), f"{what} ({xpath}) to show"
    )


def open_deployment(driver, ui_url: str, stack: str, name: str) -> list[str]:
    """From the UI's front page to deployment `name`'s page, the way a user gets there:
    the "Deployments" link, the stack's deployments searched by its name, the link to the
    one. Returns the names the search listed."""
    driver.get(ui_url)
    click(driver, link("Deployments"), 'the sidebar\'s "Deployments" link')
    shown(driver, SEARCH_DEPLOYMENTS, "the deployments' search box").send_keys(stack)
    shown(driver, link(name), f"the link to deployment {name}")
    of_stack = f"//a[starts-with(normalize-space(), {xpath_text(stack + '-')})]"
    listed = texts(driver, of_stack)
    screenshot(driver, "ui-deployments")
    click(driver, link(name), f"the link to deployment {name}")
    shown(driver, current_page(name), f"the page of deployment {name}")
    return listed


def quick_run(driver, required: list[str]) -> str:
    """On a deployment's page: "Run", then "Quick run" (and "Run" again when the UI asks
    for the deployment's `required` parameters, filled in with its own). Returns the URL
    of the created flow run's page, from the "Flow run created" toast."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    click(driver, button("Run"), 'the deployment\'s "Run" button')
    click(driver, MENU_ITEM_QUICK_RUN, 'the "Quick run" menu item')
    located = {x: (By.XPATH, x) for x in (RUN_DIALOG, VIEW_RUN, ERROR_TOAST)}
    wait(driver).until(
        ec.any_of(*(ec.visibility_of_element_located(loc) for loc in located.values())),
        "the run dialog or a toast after Quick run",
    )
    if driver.find_elements(*located[RUN_DIALOG]):
        for parameter in required:  # the form is drawn (it loads after the dialog opens)
            field = f"{RUN_DIALOG}//*[normalize-space()={xpath_text(parameter)}]"
            shown(driver, field, f"parameter {parameter} in the run dialog")
        screenshot(driver, "ui-run-dialog")
        click(driver, button("Run", within=RUN_DIALOG), 'the run dialog\'s "Run" button')
    wait(driver).until(
        ec.any_of(
            ec.visibility_of_element_located(located[VIEW_RUN]),
            ec.visibility_of_element_located(located[ERROR_TOAST]),
        ),
        'the "Flow run created" toast',
    )
    errors = driver.find_elements(*located[ERROR_TOAST])
    assert not errors, f"the UI could not create the run: {errors[0].text}"
    screenshot(driver, "ui-run-started")
    return driver.find_element(*located[VIEW_RUN]).get_attribute("href")


def runs_created_since(deployment_id, since: datetime) -> list:
    """The deployment's flow runs created at or after `since`, newest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            limit=200,
        )
    return sorted((r for r in runs if r.created >= since), key=lambda r: r.created, reverse=True)


def test_the_restore_drill_started_with_run_in_the_ui_completes(
    deployed, worker, prefect_server, browser
):
    spec = deployed["spec"]
    name = f"{spec.name}-restore-drill"
    deployment = deployed["deployments"][name]
    driver = browser
    with evidence_on_failure(driver, "ui"):
        listed = open_deployment(driver, prefect_server.ui_url, spec.name, name)
        assert name in listed and set(listed) <= set(deployed["deployments"]), listed
        clicked = datetime.now(UTC)
        run_url = quick_run(driver, deployment.parameter_openapi_schema.get("required", []))

        def the_run_from_the_click():
            runs = runs_created_since(deployment.id, clicked)
            if not runs:
                raise NotYet("no flow run of the deployment created since the click")
            return runs

        runs = wait_for("the run the click created, in the API", the_run_from_the_click, 30)
        assert len(runs) == 1, f"one click, one run: {[r.name for r in runs]}"
        run = runs[0]
        assert run_url.rstrip("/").endswith(f"/flow-run/{run.id}"), (run_url, run.id)
        assert not run.auto_scheduled
        assert run.parameters["stack"] == deployment.parameters["stack"]

        # The toast's "View run", as a user follows it; the toast goes away after a few
        # seconds, and then its address does.
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.common.by import By

        try:
            driver.find_element(By.XPATH, VIEW_RUN).click()
        except WebDriverException:
            driver.get(run_url)
        shown(driver, current_page(run.name), f"the page of flow run {run.name}")

        final = wait_flow_run(run.id, timeout=RUN_TIMEOUT)
        driver.get(run_url)
        shown(driver, current_page(run.name), f"the page of flow run {run.name}")
        assert final.state.is_completed(), (
            f"flow run {run.name} is {final.state.name}: {final.state.message} "
            f"(worker log: {worker['log']})"
        )
        shown(driver, COMPLETED_BADGE, "the run's Completed state")
        screenshot(driver, "ui-run-completed")
