"""The status page served at / shows, in a real browser (headless Chromium
driven by Selenium), what warren's JSON admin API says, updates itself as
clients come and go, and shows client-controlled strings as text."""
import json
import os
import shutil
import urllib.request
import uuid
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conftest import ROOT, wait_until

ARTIFACTS = Path(os.environ.get("WARREN_TEST_ARTIFACTS") or ROOT / "target" / "test-artifacts")
MAX_CLIENT_ROWS = 500  # the page shows at most this many clients, the first by id
PAGE_TIMEOUT = 15  # seconds; the page refreshes every second

# One atomic read of everything the page shows through its test hooks (see
# the comment at the top of src/admin/status.html). A script runs between two
# of the page's refreshes, so the snapshot is never half old, half new.
SNAPSHOT_JS = """
const rows = name => Array.from(document.querySelectorAll(
    'table[data-table="' + name + '"] tbody tr[data-id]')).map(tr => ({
  id: tr.dataset.id,
  cells: Object.fromEntries(Array.from(tr.querySelectorAll('td[data-field]')).map(td =>
    [td.dataset.field, {text: td.textContent, value: td.getAttribute('data-value')}]))
}));
const note = document.getElementById('note');
return {
  updated: Number(document.body.dataset.updated),
  tiles: Object.fromEntries(Array.from(document.querySelectorAll('[data-metric]')).map(e =>
    [e.dataset.metric, e.getAttribute('data-value')])),
  routes: rows('routes'), quotas: rows('quotas'), pools: rows('pools'), upstreams: rows('upstreams'), nodes: rows('nodes'),
  clients: rows('clients'),
  paused: document.getElementById('paused').hidden ? null : document.getElementById('paused').textContent,
  shown: Number(note.dataset.shown), total: Number(note.dataset.total),
};
"""

# Fields whose cell text is the raw value; bytes and ages are shown
# human-readable and only their data-value is raw.
CLIENT_FIELDS = ["user", "vhost", "connection_name", "channels", "upstream", "paused"]
NODE_FIELDS = ["route", "node", "tls", "state", "failures", "upstreams"]
ROUTE_FIELDS = ["name", "upstream_vhost", "consumer_mode", "pools", "upstreams", "clients"]
QUOTA_FIELDS = ["quota", "scope", "key", "mode", "clients", "max_clients", "channels", "max_channels"]
UPSTREAM_FIELDS = ["route", "kind", "node", "vhost", "user", "state", "clients", "channels.open", "channels.kept",
                   "channels.closing"]
POOL_FIELDS = ["route", "vhost", "user", "upstreams", "clients"]
STABLE_TILES = ["clients", "upstreams", "pools", "channels.client"]


def find_browser():
    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        missing = " and ".join(n for n, p in (("chromium", chromium), ("chromedriver", driver)) if not p)
        pytest.fail(f"{missing} not found on PATH: the status page test needs Debian's chromium and "
                    "chromium-driver packages (scripts/setup.sh installs them)", pytrace=False)
    return chromium, driver


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager would otherwise try to download one.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    # Records alert() calls instead of blocking on them, in every page loaded.
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {
        "source": "window.__alerts = []; window.alert = m => window.__alerts.push(String(m));"})
    yield driver
    driver.quit()


def raw(value):
    """A JSON value as the page's data-value attribute holds it."""
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)


def dig(obj, path):
    for key in path.split("."):
        obj = obj[key]
    return obj


def updated(browser):
    return int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-updated") or 0)


def wait_for_refresh_after(browser, seen):
    """Waits for a refresh whose requests all started after `seen` was read:
    the one in flight then may have started before, so two more."""
    try:
        WebDriverWait(browser, PAGE_TIMEOUT, poll_frequency=0.1).until(lambda d: updated(d) >= seen + 2)
    except TimeoutException:
        raise AssertionError(f"the page did not refresh within {PAGE_TIMEOUT}s (data-updated stays at "
                             f"{updated(browser)}, was {seen})") from None
    return snapshot(browser)


def snapshot(browser):
    return browser.execute_script(SNAPSHOT_JS)


def settle(browser, problems, what, timeout=PAGE_TIMEOUT):
    """Waits until `problems()` (a list of differences between the page and
    the API, read one after the other) is empty; fails listing the last ones.
    Two reads at two moments can differ while warren's state moves, so a
    difference only counts if it lasts."""
    last = []

    def clean(_):
        last[:] = problems()
        return not last
    try:
        WebDriverWait(browser, timeout, poll_frequency=0.25).until(clean)
    except TimeoutException:
        raise AssertionError(f"{what}: still different after {timeout}s:\n  " + "\n  ".join(last)) from None


def row_ids(items, key):
    """The page's data-id of each row: a second pool of the same vhost and
    user (another password) gets "#2" after its key, and so on."""
    seen, ids = {}, []
    for item in items:
        k = key(item)
        seen[k] = seen.get(k, 0) + 1
        ids.append(k if seen[k] == 1 else f"{k}#{seen[k]}")
    return ids


def compare_rows(table, page_rows, api_rows, key, fields):
    """Differences between a table on the page and the API's list."""
    out = []
    page_ids = [r["id"] for r in page_rows]
    api_ids = row_ids(api_rows, key)
    if page_ids != api_ids:
        return [f"{table}: page rows {page_ids}, API {api_ids} (in id order)"]
    for row, item in zip(page_rows, api_rows):
        for field in fields:
            want = dig(item, field)
            cell = row["cells"].get(field)
            if cell is None:
                out.append(f"{table} {row['id']}: no cell {field}")
            elif cell["value"] != raw(want):
                out.append(f"{table} {row['id']}.{field}: data-value {cell['value']!r}, API {want!r}")
            elif want is not None and cell["text"] != raw(want):
                out.append(f"{table} {row['id']}.{field}: text {cell['text']!r}, API {want!r}")
    return out


def page_vs_api(browser, warren, since=0):
    """Everything stable the page shows that differs from the API. The page is
    read first: its monotonic counters must then be at most the API's."""
    page = snapshot(browser)
    if page["updated"] < since:
        return [f"no refresh yet after {since} (data-updated {page['updated']})"]
    overview = warren.get_json("/api/overview")
    pools = warren.get_json("/api/pools")
    upstreams = warren.get_json("/api/upstreams")
    nodes = warren.get_json("/api/nodes")
    routes = warren.get_json("/api/routes")
    quotas = warren.get_json("/api/quotas")
    clients = warren.get_json("/api/clients")
    out = []
    paused = overview["paused"]
    want_paused = "paused: every vhost" if paused["all"] else \
        ("paused: " + ", ".join(paused["vhosts"]) if paused["vhosts"] else None)
    if page["paused"] != want_paused:
        out.append(f"paused badge: {page['paused']!r}, API {paused!r}")
    for metric in STABLE_TILES:
        if page["tiles"].get(metric) != raw(dig(overview, metric)):
            out.append(f"tile {metric}: {page['tiles'].get(metric)!r}, API {dig(overview, metric)!r}")
    for metric in ("published", "delivered", "clients_total"):
        shown = page["tiles"].get(metric)
        if shown is None or not 0 <= int(shown) <= dig(overview, metric):
            out.append(f"tile {metric}: {shown!r}, API already {dig(overview, metric)!r}")
    clients = sorted(clients, key=lambda c: c["id"])
    out += compare_rows("clients", page["clients"], clients[:MAX_CLIENT_ROWS], lambda c: str(c["id"]),
                        CLIENT_FIELDS)
    if (page["shown"], page["total"]) != (min(len(clients), MAX_CLIENT_ROWS), len(clients)):
        out.append(f"clients note: showing {page['shown']} of {page['total']}, API has {len(clients)}")
    out += compare_rows("upstreams", page["upstreams"], sorted(upstreams, key=lambda u: u["id"]),
                        lambda u: str(u["id"]), UPSTREAM_FIELDS)
    out += compare_rows("nodes", page["nodes"], nodes, lambda n: f"{n['route']}|{n['node']}", NODE_FIELDS)
    out += compare_rows("routes", page["routes"], routes, lambda r: r["name"], ROUTE_FIELDS)
    out += compare_rows("quotas", page["quotas"], quotas, lambda q: f"{q['quota']}|{q['key']}", QUOTA_FIELDS)
    pool_key = lambda p: f"{p['route']}|{p['vhost']}|{p['user']}"  # noqa: E731
    out += compare_rows("pools", page["pools"], sorted(pools, key=pool_key), pool_key, POOL_FIELDS)
    return out


def save_screenshot(browser, name):
    """The whole page, in a window stretched to its height for the shot."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    size = browser.get_window_size()
    height = browser.execute_script(
        "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight")
    browser.set_window_size(size["width"], min(max(height, size["height"]), 4000))
    browser.execute_script("window.scrollTo(0, 0)")
    try:
        browser.save_screenshot(str(ARTIFACTS / name))
    finally:
        browser.set_window_size(size["width"], size["height"])


def post(warren, path):
    request = urllib.request.Request(warren.http_url(path), method="POST")
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200


def console_errors(browser):
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


@pytest.fixture
def quota_warren(warren_factory, tmp_path):
    """A warren with a quota, so the page has a quota row to show."""
    cfg = tmp_path / "warren.toml"
    cfg.write_text('[[quota]]\nname = "everyone"\nusers = "*"\nmax_clients = 100\nmax_channels = 1000\n')
    return warren_factory("-c", str(cfg))


def test_status_page_shows_what_the_api_says(quota_warren, queue, browser):
    warren = quota_warren
    tag = uuid.uuid4().hex[:8]
    names = [f"status-{tag}-{i}" for i in range(3)]
    published = 7
    browser.get(warren.http_url("/"))
    connections, opened = [], []
    try:
        # The page is open before the clients come: it must pick them up live.
        settle(browser, lambda: page_vs_api(browser, warren, since=1), "the page of an idle warren")
        for i, name in enumerate(names):
            conn = warren.connect(client_properties={"connection_name": name})
            connections.append(conn)
            opened.append([conn.channel() for _ in range(i + 1)])  # 1, 2 and 3 channels
        first = connections[0].channel()
        first.confirm_delivery()  # each publish returns once the broker has it
        for i in range(published):
            first.basic_publish("", queue, f"{tag}:{i}".encode())
        expected_channels = {name: i + 1 for i, name in enumerate(names)}
        expected_channels[names[0]] += 1

        def api_has_clients():
            clients = warren.get_json("/api/clients")
            return ({c["connection_name"]: c["channels"] for c in clients} == expected_channels
                    and warren.get_json("/api/overview")["published"] >= published)
        wait_until(api_has_clients, 10, "the API to show the test's clients, channels and messages")

        page = wait_for_refresh_after(browser, updated(browser))
        by_name = {r["cells"]["connection_name"]["value"]: r for r in page["clients"]}
        assert sorted(by_name) == sorted(names), page["clients"]
        for name, row in by_name.items():
            assert row["cells"]["channels"]["text"] == str(expected_channels[name])
            assert row["cells"]["user"]["text"] == "guest"
            assert row["cells"]["vhost"]["text"] == "/"
        assert int(page["tiles"]["published"]) >= published
        assert page["tiles"]["clients"] == "3"
        assert page["tiles"]["channels.client"] == str(sum(expected_channels.values()))
        settle(browser, lambda: page_vs_api(browser, warren, since=page["updated"]),
               "the page and the API with three clients")

        # One client leaves: its row goes, without reloading the page.
        gone = next(r["id"] for r in page["clients"] if r["cells"]["connection_name"]["value"] == names[1])
        connections.pop(1).close()
        wait_until(lambda: all(str(c["id"]) != gone for c in warren.get_json("/api/clients")), 10,
                   f"the API to drop client {gone}")
        try:
            WebDriverWait(browser, PAGE_TIMEOUT, poll_frequency=0.1).until(
                lambda d: not d.find_elements(By.CSS_SELECTOR, f'table[data-table="clients"] tr[data-id="{gone}"]'))
        except TimeoutException:
            raise AssertionError(f"the page still shows client {gone} after {PAGE_TIMEOUT}s") from None
        settle(browser, lambda: page_vs_api(browser, warren), "the page and the API after a client left")
        assert sorted(r["cells"]["connection_name"]["value"] for r in snapshot(browser)["clients"]) == \
            [names[0], names[2]]
        # An operator's pause shows in the header until resume.
        post(warren, "/api/pause?vhost=%2F")
        settle(browser, lambda: page_vs_api(browser, warren), "the page and the API with / paused")
        assert snapshot(browser)["paused"] == "paused: /"
        post(warren, "/api/resume")
        settle(browser, lambda: page_vs_api(browser, warren), "the page and the API after resume")
        assert browser.execute_script("return window.__alerts") == []
        assert console_errors(browser) == []
    finally:
        save_screenshot(browser, "status-page.png")
        for conn in connections:
            conn.close()


def test_status_page_shows_html_in_a_connection_name_as_text(warren, browser):
    evil = "<img src=x onerror=alert(1)>"
    with warren.connect(client_properties={"connection_name": evil}) as conn:
        conn.channel()
        client = wait_until(lambda: next((c for c in warren.get_json("/api/clients")
                                          if c["connection_name"] == evil), None), 10,
                            "the API to show the client")
        browser.get(warren.http_url("/"))
        selector = f'table[data-table="clients"] tr[data-id="{client["id"]}"] td[data-field="connection_name"]'
        try:
            cell = WebDriverWait(browser, PAGE_TIMEOUT, poll_frequency=0.1).until(
                lambda d: d.find_elements(By.CSS_SELECTOR, selector))[0]
        except TimeoutException:
            raise AssertionError(f"the page shows no row for client {client['id']}") from None
        # A later refresh too: an update in place must not parse HTML either.
        wait_for_refresh_after(browser, updated(browser))
        cell = browser.find_element(By.CSS_SELECTOR, selector)
        assert cell.text == evil
        assert cell.get_attribute("data-value") == evil
        assert browser.find_elements(By.CSS_SELECTOR, "table img") == []
        assert browser.execute_script("return document.images.length") == 0
        assert browser.execute_script("return window.__alerts") == []
        save_screenshot(browser, "status-page-escaping.png")
