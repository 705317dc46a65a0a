"""The live dashboard: lifecycle, what it reports, the token, and the page in a real browser."""

import base64
import json
import operator
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

import belated
from belated import compute, delayed


@pytest.fixture
def board():
    dashboard = belated.dashboard(port=0, quiet=True)
    yield dashboard
    dashboard.stop()


def fetch(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read().decode()


def api(board, path):
    base, _, query = board.url.partition("?")
    return fetch(base + path.lstrip("/") + (("?" + query) if query else ""))


def test_start_is_idempotent_and_stop_frees_the_port(board, capsys):
    again = belated.dashboard(port=0)
    assert again.url == board.url
    assert capsys.readouterr().out == f"belated dashboard: {board.url}\n"
    assert board.url.startswith("http://127.0.0.1:")
    assert "token" not in board.url
    assert board._repr_html_().startswith("<a href=")
    with pytest.raises(belated.BelatedError, match="already runs"):
        belated.dashboard(host="::1", port=0)
    status, page = fetch(board.url)
    assert status == 200 and "belated dashboard" in page
    board.stop()
    with pytest.raises(urllib.error.URLError):
        fetch(board.url, timeout=2)


def test_computations_report_progress_per_function_and_the_graph(board):
    leaves = [delayed(abs, pure=True)(-i) for i in range(6)]
    total = delayed(sum)(leaves)
    assert total.compute(num_workers=2) == 15
    status, body = api(board, "/api/state")
    state = json.loads(body)["compute"]
    assert status == 200
    assert state["tasks"] == 7 and state["ok"] is True and state["workers"] == 2
    groups = {g["name"]: (g["total"], g["done"], g["failed"]) for g in state["groups"]}
    assert groups == {"abs": (6, 6, 0), "sum": (1, 1, 0)}
    assert len(state["bars"]) == 7
    status, svg = api(board, "/api/graph.svg")
    assert status == 200
    assert all(f'id="task-{i}"' in svg for i in range(7)), svg[:500]


def test_each_task_counts_once_in_its_functions_group_however_the_graph_shares_and_merges(board):
    # The groups are found while the graph is flattened: a shared node, a twin merged by name and a
    # root given twice must each count once, and alternating functions must not borrow each other's group.
    shared = delayed(abs, pure=True)(-1)
    twin = delayed(abs, pure=True)(-1)
    calls = [delayed(operator.pos if i % 2 else operator.neg)(shared if i % 3 else twin) for i in range(7)]
    total = delayed(sum)(calls)
    assert compute(total, calls[2], total) == (-1, -1, -1)
    state = json.loads(api(board, "/api/state")[1])["compute"]
    groups = {g["name"]: (g["total"], g["done"]) for g in state["groups"]}
    assert groups == {"abs": (1, 1), "neg": (4, 4), "pos": (3, 3), "sum": (1, 1)}
    assert state["tasks"] == 9


def test_failures_are_reported(board):
    with pytest.raises(ZeroDivisionError):
        delayed(lambda: 1 / 0)().compute(scheduler="sync")
    state = json.loads(api(board, "/api/state")[1])["compute"]
    assert state["ok"] is False and state["groups"][0]["failed"] == 1


def test_off_loopback_the_url_carries_a_token_every_request_needs():
    board = belated.dashboard(host="0.0.0.0", port=0, quiet=True)
    try:
        assert "?token=" in board.url
        with pytest.raises(urllib.error.HTTPError) as refused:
            fetch(board.url.split("?")[0])
        assert refused.value.code == 403
        assert fetch(board.url)[0] == 200
    finally:
        board.stop()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class DevTools:
    """The few Chrome DevTools Protocol calls the test needs, over one page's websocket."""

    def __init__(self, websocket_url):
        import websocket

        self.socket = websocket.create_connection(websocket_url, timeout=15)
        self.last_id = 0

    def call(self, method, **params):
        self.last_id += 1
        self.socket.send(json.dumps({"id": self.last_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.last_id:
                if "error" in message:
                    raise RuntimeError(message["error"])
                return message["result"]

    def evaluate(self, expression):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"]["value"]


@pytest.fixture
def chromium(tmp_path):
    """A headless Chromium's page, driven through DevTools."""
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (make test installs it)")
    pytest.importorskip("websocket")
    browser = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--remote-debugging-port=0",
            # Chromium 111 and later refuse DevTools connections from an origin not allowed here.
            "--remote-allow-origins=*",
            "--window-size=1400,1100",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        devtools_port = None
        deadline = time.monotonic() + 30
        while devtools_port is None and time.monotonic() < deadline:
            line = browser.stderr.readline()
            if "DevTools listening on ws://" in line:
                devtools_port = int(line.split("ws://")[1].split("/")[0].rsplit(":", 1)[1])
        assert devtools_port, "Chromium did not start its DevTools endpoint"
        targets = json.loads(fetch(f"http://127.0.0.1:{devtools_port}/json/list")[1])
        page = DevTools(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        page.call("Page.enable")
        yield page
    finally:
        browser.kill()
        browser.wait(timeout=10)


def test_the_page_follows_a_running_computation_in_chromium(board, chromium, tmp_path):
    page = chromium
    page.call("Page.navigate", url=board.url)

    @delayed
    def load(i):
        time.sleep(0.25)
        return i

    @delayed
    def combine(a, b):
        time.sleep(0.1)
        return a + b

    layer = [load(i) for i in range(16)]
    while len(layer) > 1:
        layer = [combine(layer[i], layer[i + 1]) for i in range(0, len(layer), 2)]
    time.sleep(1.0)  # the page loads and subscribes before the computation starts
    result = {}
    worker = threading.Thread(target=lambda: result.update(value=compute(layer[0], num_workers=2)))
    worker.start()
    seen, screenshot = [], None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, total, blue, state = page.evaluate(
            "[+document.body.dataset.done, +document.body.dataset.total,"
            " document.querySelectorAll('#graph .s2').length, document.body.dataset.state || '']"
        )
        seen.append((done, total, blue, state))
        if screenshot is None and total and total / 3 <= done <= 2 * total / 3:
            screenshot = base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"])
        if state == "finished":
            break
        time.sleep(0.1)
    worker.join(timeout=30)
    assert result["value"] == (sum(range(16)),)
    assert seen[-1][:2] == (31, 31) and seen[-1][3] == "finished", seen[-5:]
    assert any(0 < done < total for done, total, _, _ in seen), "progress was seen mid-run"
    assert any(0 < blue < 31 for _, _, blue, _ in seen), "graph nodes turned blue as tasks finished"
    assert seen[-1][2] == 31, "every node ends blue"
    assert screenshot and screenshot.startswith(b"\x89PNG")
    (tmp_path / "dashboard.png").write_bytes(screenshot)
    if os.environ.get("BELATED_DASHBOARD_SCREENSHOT"):
        with open(os.environ["BELATED_DASHBOARD_SCREENSHOT"], "wb") as out:
            out.write(screenshot)


def test_the_workers_panel_has_a_row_per_worker_process_with_its_cpu_and_memory(board, chromium):
    with belated.Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        workers = sorted(client.run(os.getpid).values())
        chromium.call("Page.navigate", url=board.url)
        rows, deadline = [], time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = chromium.evaluate(
                "[...document.querySelectorAll('#processes tbody tr')].map(row =>"
                " [+row.dataset.pid, ...[...row.cells].map(cell => cell.textContent)])"
            )
            if set(workers) <= {row[0] for row in rows[1:]}:
                break
            time.sleep(0.1)
    assert rows and rows[0][:3] == [os.getpid(), "this process", str(os.getpid())], rows
    # Every child process has a row (the browser driving this test is one).
    assert set(workers) <= {row[0] for row in rows[1:]}, rows
    assert {row[1] for row in rows[1:]} == {"child process"}, rows
    for _, _, _, cpu, _, memory, _ in rows:
        assert cpu.endswith(" %") and memory.endswith(" MB") and float(memory[:-3]) > 0, rows


@pytest.mark.parametrize("token", ["", "x", "123456789012345"])
def test_off_loopback_an_empty_or_short_token_is_refused(token):
    with pytest.raises(ValueError, match="needs a token of at least 16 characters"):
        belated.dashboard(host="0.0.0.0", port=0, token=token, quiet=True)
    assert belated._belated.dashboard_url() is None, "nothing was started"


def test_requests_naming_another_host_are_refused(board):
    """DNS rebinding: a page on evil.example resolves its name to 127.0.0.1; its requests say so."""
    port = board.url.split(":")[2].split("/")[0]
    for host in [f"evil.example:{port}", "localhost.evil.example"]:
        request = urllib.request.Request(board.url + "api/state", headers={"Host": host})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 421
    assert fetch(board.url.replace("127.0.0.1", "localhost") + "api/state")[0] == 200
