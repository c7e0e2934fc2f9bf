"""Real-browser test harness: JupyterLab on a free port + headless Chromium through Playwright.

Typical use in a test::

    import browser  # tests/ is on sys.path under pytest (rootdir-less tests folder)

    @pytest.mark.browser
    def test_explorer(tmp_path):
        browser.require_browser()          # skip locally when missing; fail when $CI is set
        write_my_notebook(tmp_path / "nb.ipynb")
        with browser.jupyter_lab(tmp_path) as lab, browser.chromium_page() as page:
            browser.open_notebook(page, lab, "nb.ipynb")
            browser.run_all_cells(page)
            plot = browser.wait_for_plotly(page)
            assert browser.plotly_title(plot) == "..."
            browser.save_screenshot(page, tmp_path / "shot.png", browser.artifact_path("x.png"))

Everything the server writes (config, settings, workspaces, runtime files, IPython profile) lives
under the given root folder, so the user's ~/.jupyter is never touched; Chromium cannot resolve
any host but 127.0.0.1 (no fetch leaves the machine), and JupyterLab's news/update checks are off.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator
from urllib.parse import quote

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page

ROOT = Path(__file__).resolve().parent.parent
ARTIFACT_DIR = ROOT / "outputs" / "test-artifacts"  # git-ignored (outputs/*)

CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--metrics-recording-only",
    "--mute-audio",
    # Nothing but the local server resolves: a stray fetch fails at once instead of hanging.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1, EXCLUDE localhost",
]

# JupyterLab user settings written into the private settings dir.
LAB_SETTINGS = {
    # Render every cell (no virtualisation), so outputs far down the notebook are in the DOM.
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    # No news / update toasts (the server side is off too: news_url=None, NeverCheckForUpdate).
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}


# --------------------------------------------------------------------------------------------
# Timings
# --------------------------------------------------------------------------------------------


@dataclass
class Timer:
    """Records named steps; `print()` them at the end of a test (run pytest with -s to see)."""

    start: float = field(default_factory=time.perf_counter)
    steps: list[tuple[str, float]] = field(default_factory=list)
    _last: float = field(default=0.0, init=False)

    def __post_init__(self):
        self._last = self.start

    def mark(self, name: str) -> float:
        now = time.perf_counter()
        self.steps.append((name, now - self._last))
        self._last = now
        return now - self.start

    def report(self) -> str:
        parts = [f"{name} {secs:.1f}s" for name, secs in self.steps]
        return f"[browser timings] total {time.perf_counter() - self.start:.1f}s: " + ", ".join(parts)


# --------------------------------------------------------------------------------------------
# Requirements: skip locally, fail on CI
# --------------------------------------------------------------------------------------------


def find_chromium() -> str | None:
    """Path of the system Chromium ($CHROMIUM overrides), or None."""
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium",
                      shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def missing_requirements() -> list[str]:
    """What the browser tests need and this machine lacks (empty when all is there)."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the Python package playwright (pip install -e '.[test]')")
    if find_chromium() is None:
        missing.append("a system Chromium (apt-get install chromium; or set $CHROMIUM)")
    for module in ("jupyterlab", "ipywidgets", "plotly", "anywidget"):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"the Python package {module}")
    return missing


def require_browser() -> None:
    """Skip the calling test when the browser stack is missing, or FAIL when $CI is set."""
    missing = missing_requirements()
    if not missing:
        return
    reason = "browser test needs " + " and ".join(missing)
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so this is a failure, not a skip", pytrace=False)
    pytest.skip(reason)


# --------------------------------------------------------------------------------------------
# JupyterLab server
# --------------------------------------------------------------------------------------------


@dataclass
class LabServer:
    port: int
    token: str
    root_dir: Path
    log_path: Path
    process: subprocess.Popen

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lab_url(self, notebook: str | os.PathLike = "", *, reset: bool = True) -> str:
        """URL opening `notebook` (relative to root_dir) in JupyterLab, token included.

        reset: start from an empty workspace (no tabs restored from an earlier visit).
        """
        path = quote(Path(notebook).as_posix()) if str(notebook) else ""
        return f"{self.base_url}/lab/tree/{path}?token={self.token}" + ("&reset" if reset else "")

    def api(self, path: str, timeout: float = 5.0):
        """GET /api/<path> with the token; returns the decoded JSON."""
        request = urllib.request.Request(
            f"{self.base_url}/api/{path.lstrip('/')}",
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])


def _write_lab_settings(settings_dir: Path, config_dir: Path) -> None:
    # The LSP front-end would poll /lsp/status, served by jupyter_lsp, which we do not load.
    page_config = config_dir / "labconfig" / "page_config.json"
    page_config.parent.mkdir(parents=True, exist_ok=True)
    disabled = ["@jupyterlab/lsp-extension", "@jupyterlab/fileeditor-extension:language-server",
                "@jupyterlab/notebook-extension:language-server"]
    page_config.write_text(json.dumps({"disabledExtensions": dict.fromkeys(disabled, True)}))
    for plugin, values in LAB_SETTINGS.items():
        path = settings_dir / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values, indent=2))


def _stop_process_group(process: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the server's process group (server + kernels), then SIGKILL what is left."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    # Anything else left in the server's group (kernels have sessions of their own: see below).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)


def _kill_leftover_kernels(runtime_dir: Path) -> None:
    """Kernels run in sessions of their own; SIGKILL any still using our runtime dir."""
    marker = str(runtime_dir).encode()
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if marker in (proc / "cmdline").read_bytes():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(proc.name), signal.SIGKILL)


@contextlib.contextmanager
def jupyter_lab(root_dir: str | os.PathLike, *, startup_timeout: float = 60.0,
                state_dir: str | os.PathLike | None = None,
                extra_args: list[str] | None = None) -> Iterator[LabServer]:
    """Run `python -m jupyterlab` serving `root_dir` on 127.0.0.1, a free port and a random token.

    Jupyter's config/data/runtime dirs, Lab settings and workspaces and IPYTHONDIR all live in
    `state_dir` (default: `<root_dir>/.jupyter-state`); the server log is `<state_dir>/server.log`.
    The whole process group is terminated on exit, whatever happened inside the block.
    """
    root = Path(root_dir).resolve()
    state = Path(state_dir).resolve() if state_dir else root / ".jupyter-state"
    dirs = {name: state / name for name in ("config", "data", "runtime", "settings", "workspaces", "ipython")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    _write_lab_settings(dirs["settings"], dirs["config"])
    log_path = state / "server.log"
    token = secrets.token_hex(24)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_", "JPY_"))}
    env.update(
        JUPYTER_CONFIG_DIR=str(dirs["config"]),
        JUPYTER_DATA_DIR=str(dirs["data"]),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        IPYTHONDIR=str(dirs["ipython"]),
        PYTHONUNBUFFERED="1",
        # The kernel must import the project even when pytest runs from elsewhere.
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    cmd = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        "--ServerApp.port=0",  # the OS picks a free port; read back from the runtime info file
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        f"--LabApp.user_settings_dir={dirs['settings']}",
        f"--LabApp.workspaces_dir={dirs['workspaces']}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        # window.jupyterapp: lets the harness run commands and read notebook/kernel state.
        "--LabApp.expose_app_in_browser=True",
        "--ServerApp.jpserver_extensions=jupyter_lsp=False",
        *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),  # CI is root
        *(extra_args or []),
    ]
    log = open(log_path, "wb")
    process = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        server = _wait_for_server(process, token, root, dirs["runtime"], log_path, startup_timeout)
        yield server
    finally:
        _stop_process_group(process)
        _kill_leftover_kernels(dirs["runtime"])
        log.close()


def _wait_for_server(process, token, root, runtime_dir, log_path, timeout) -> LabServer:
    deadline = time.monotonic() + timeout
    server = None
    last_error: Exception | None = None

    def fail(why: str):
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"JupyterLab did not start: {why}\n--- tail of {log_path} ---\n{tail}")

    while time.monotonic() < deadline:
        if process.poll() is not None:
            fail(f"the server exited with code {process.returncode}")
        if server is None:
            info_file = runtime_dir / f"jpserver-{process.pid}.json"
            if info_file.exists():
                with contextlib.suppress(json.JSONDecodeError, OSError, KeyError):
                    info = json.loads(info_file.read_text())
                    server = LabServer(int(info["port"]), token, root, log_path, process)
        if server is not None:
            try:
                server.api("status", timeout=2)
                return server
            except (urllib.error.URLError, OSError) as error:
                last_error = error
        time.sleep(0.1)
    fail(f"no answer from /api/status within {timeout:.0f}s (last error: {last_error})")


# --------------------------------------------------------------------------------------------
# Chromium
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def chromium_page(*, viewport: tuple[int, int] = (1280, 900), default_timeout_ms: float = 30_000,
                  headless: bool = True) -> Iterator[Page]:
    """A fresh page in headless system Chromium (never a downloaded browser); closed on exit.

    Browser console errors, page errors, failed requests and HTTP errors are collected in
    `page.console_errors` (a list of str).
    """
    from playwright.sync_api import sync_playwright

    executable = find_chromium()
    if executable is None:
        raise RuntimeError("no system Chromium found (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=headless,
                                             args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
            page = context.new_page()
            page.set_default_timeout(default_timeout_ms)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
            page.on("console", lambda msg: errors.append(f"console.{msg.type}: {msg.text}")
                    if msg.type == "error" else None)
            page.on("response", lambda r: errors.append(f"http {r.status}: {r.url}")
                    if r.status >= 400 else None)
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.console_errors = errors  # type: ignore[attr-defined]
            yield page
        finally:
            browser.close()


# --------------------------------------------------------------------------------------------
# Notebook in JupyterLab
# --------------------------------------------------------------------------------------------

# JS helpers evaluated in the page; they use window.jupyterapp (expose_app_in_browser=True).
_JS_PANEL = """
() => {
  const app = window.jupyterapp;
  if (!app) return null;
  const w = app.shell.currentWidget;
  return (w && w.content && w.sessionContext && w.content.model) ? w : null;
}
"""

_JS_STATE = """
() => {
  const panel = (%s)();
  if (!panel) return {ready: false, why: 'no notebook panel'};
  const sc = panel.sessionContext;
  const kernel = sc.session && sc.session.kernel;
  const cells = [];
  for (const cell of panel.content.widgets) {
    const m = cell.model;
    if (m.type !== 'code') continue;
    const outputs = [];
    for (let i = 0; i < m.outputs.length; i++) outputs.push(m.outputs.get(i).toJSON());
    cells.push({count: m.executionCount, state: m.executionState || null,
                prompt: cell.promptNode ? cell.promptNode.textContent : '', outputs});
  }
  return {ready: panel.context.isReady && sc.isReady, kernel: kernel ? kernel.status : null,
          kernelName: kernel ? kernel.name : null, cells};
}
""" % _JS_PANEL.strip()


class NotebookError(AssertionError):
    pass


def notebook_state(page) -> dict:
    """{'ready', 'kernel' (status), 'kernelName', 'cells': [{'count', 'state', 'prompt', 'outputs'}]}."""
    return page.evaluate(_JS_STATE)


def notebook_errors(page, state: dict | None = None) -> list[str]:
    """Error outputs (ename: evalue + traceback tail) and stderr text of the current notebook."""
    state = state if state is not None else notebook_state(page)
    found = []
    for index, cell in enumerate(state.get("cells", [])):
        for out in cell["outputs"]:
            if out.get("output_type") == "error":
                trace = "\n".join(out.get("traceback", [])[-3:])
                found.append(f"cell {index}: {out.get('ename')}: {out.get('evalue')}\n{_strip_ansi(trace)}")
            elif out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = out.get("text")
                found.append(f"cell {index} stderr: {''.join(text) if isinstance(text, list) else text}")
    # Whatever the DOM shows as error output (covers outputs the model query might miss).
    if not found:
        with contextlib.suppress(Exception):
            for text in page.locator(".jp-OutputArea-output[data-mime-type="
                                     "'application/vnd.jupyter.stderr']").all_inner_texts():
                found.append(f"stderr (DOM): {text}")
    return found


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _wait_until(page, predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll `predicate()` (returns a truthy value when done) until `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        page.wait_for_timeout(interval * 1000)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def open_notebook(page, server: LabServer, notebook: str | os.PathLike, *,
                  timeout: float = 60.0, hide_sidebars: bool = True,
                  accept_kernel_dialog: bool = True) -> dict:
    """Open `notebook` (relative to the server's root) and wait for an idle kernel; returns the state.

    The page starts from an empty workspace. hide_sidebars collapses the file browser (and right
    panel) so the notebook gets the width. accept_kernel_dialog accepts JupyterLab's default in a
    "Select Kernel" dialog (a notebook with no or an unknown kernelspec); otherwise it times out.
    """
    path = Path(notebook).as_posix()
    page.goto(server.lab_url(path), wait_until="domcontentloaded")
    # The current main-area widget must be this notebook (a restored workspace may hold others).
    page.wait_for_function(
        """(path) => { const app = window.jupyterapp; if (!app || !app.shell) return false;
             const w = app.shell.currentWidget;
             return !!(w && w.context && w.context.path === path && w.content && w.isVisible); }""",
        arg=path, timeout=timeout * 1000,
    )
    if hide_sidebars:
        page.evaluate("() => { const s = window.jupyterapp.shell; s.collapseLeft(); s.collapseRight(); }")

    def idle():
        state = notebook_state(page)
        if state.get("ready") and state.get("kernel") == "idle":
            return state
        if accept_kernel_dialog and not state.get("kernel"):
            # A notebook without (or with an unknown) kernelspec asks which kernel to start.
            dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
            if dialog.count():
                dialog.first.locator(".jp-Dialog-button.jp-mod-accept").click()
        return None

    try:
        return _wait_until(page, idle, timeout, "the notebook to open with an idle kernel")
    except TimeoutError as error:
        state = notebook_state(page)
        dialogs = page.locator(".jp-Dialog").all_inner_texts()
        raise NotebookError(f"{error}; state: ready={state.get('ready')} kernel={state.get('kernel')}"
                            + (f"; open dialogs: {dialogs}" if dialogs else "")
                            + f"\n--- server log ---\n{server.log_tail()}") from None


def run_all_cells(page, *, timeout: float = 120.0, via: str = "command",
                  raise_on_error: bool = True) -> dict:
    """Run every cell of the current notebook and wait until execution has finished.

    via="command": runs JupyterLab's `notebook:run-all-cells` command and awaits its promise (it
    resolves when the last queued cell's reply came back). via="menu": clicks Run > Run All Cells
    like a user would. Either way it then waits until the kernel is idle, no cell is pending, and
    every code cell has an execution count or a cell raised (JupyterLab stops a run at the first
    error). Raises NotebookError (with the error outputs) on a timeout, or, when raise_on_error,
    if a cell raised. Returns the final notebook_state().
    """
    deadline = time.monotonic() + timeout
    before = notebook_state(page)
    if not before.get("ready"):
        raise NotebookError("no ready notebook in the page; call open_notebook() first")
    if via == "command":
        outcome = page.evaluate(
            """async (ms) => {
                 const run = window.jupyterapp.commands.execute('notebook:run-all-cells');
                 const late = new Promise(r => setTimeout(() => r('timeout'), ms));
                 return await Promise.race([run, late]);
               }""",
            timeout * 1000,
        )
        if outcome == "timeout":
            _raise_timeout(page, timeout)
    elif via == "menu":
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        # Queued cells lose their count and show [*] at once; wait to see the run has begun, so
        # stale counts saved in the notebook cannot pass for a finished run.
        _wait_until(page, lambda: _started(notebook_state(page), before), min(10.0, timeout),
                    "the run to start after Run > Run All Cells")
    else:
        raise ValueError(f"via must be 'command' or 'menu', not {via!r}")

    def finished():
        state = notebook_state(page)
        return state if _finished(state) else None

    try:
        state = _wait_until(page, finished, max(1.0, deadline - time.monotonic()), "all cells to finish")
    except TimeoutError:
        _raise_timeout(page, timeout)
    if raise_on_error and _raised(state):
        raise NotebookError("a cell raised:\n" + "\n".join(notebook_errors(page, state)))
    return state


def _pending(cell: dict) -> bool:
    return "*" in cell["prompt"] or cell["state"] == "running"


def _raised(state: dict) -> bool:
    return any(out.get("output_type") == "error" for c in state.get("cells", []) for out in c["outputs"])


def _started(state: dict, before: dict):
    cells = state.get("cells", [])
    return (state.get("kernel") == "busy" or any(map(_pending, cells))
            or [c["count"] for c in cells] != [c["count"] for c in before.get("cells", [])]
            or [c["prompt"] for c in cells] != [c["prompt"] for c in before.get("cells", [])])


def _finished(state: dict) -> bool:
    cells = state.get("cells", [])
    if state.get("kernel") != "idle" or any(map(_pending, cells)):
        return False
    return all(c["count"] is not None for c in cells) or _raised(state)


def _raise_timeout(page, timeout):
    state = notebook_state(page)
    prompts = [c["prompt"] for c in state.get("cells", [])]
    errors = notebook_errors(page, state)
    raise NotebookError(
        f"cells did not finish within {timeout:.0f}s (kernel {state.get('kernel')}, prompts {prompts})"
        + ("\nerror output in the notebook:\n" + "\n".join(errors) if errors else "\nno error output visible")
    )


def cell_output(page, index: int):
    """Locator of the output area of the `index`-th cell (all cell types count)."""
    return page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-Cell-outputArea")


# --------------------------------------------------------------------------------------------
# Plotly in the output area
# --------------------------------------------------------------------------------------------

PLOT_SELECTOR = ".jp-OutputArea-output .js-plotly-plot"


def wait_for_plotly(page, index: int = 0, *, timeout: float = 30.0, scope=None):
    """The `index`-th rendered plotly plot in the output area, once it has an SVG `.main-svg`.

    `scope` (a Locator) narrows the search, e.g. to one cell. Returns the plot's Locator (the
    plotly graph div, whose JS object carries `.data`/`.layout`).
    """
    root = scope if scope is not None else page
    plot = root.locator(PLOT_SELECTOR).nth(index)
    try:
        plot.locator("svg.main-svg").first.wait_for(state="visible", timeout=timeout * 1000)
        plot.evaluate("gd => new Promise((ok, bad) => { const t0 = Date.now(); (function poll() {"
                      " if (gd._fullLayout && gd._fullData && gd._fullData.length) return ok();"
                      " if (Date.now() - t0 > %d) return bad(new Error('plot never laid out'));"
                      " setTimeout(poll, 50); })(); })" % (timeout * 1000))
    except Exception as error:
        errors = notebook_errors(page)
        console = getattr(page, "console_errors", [])[-10:]
        raise NotebookError(
            f"no rendered plotly plot #{index} within {timeout:.0f}s ({type(error).__name__})"
            f"; plots in page: {page.locator('.js-plotly-plot').count()}"
            + ("\nnotebook errors:\n" + "\n".join(errors) if errors else "")
            + ("\nbrowser console errors:\n" + "\n".join(console) if console else "")
        ) from None
    return plot


def plotly_title(plot) -> str:
    """The figure title as drawn in the SVG ('' when there is none)."""
    title = plot.locator(".g-gtitle .gtitle")
    return title.first.text_content() if title.count() else ""


def plotly_traces(plot) -> list[dict]:
    """The plotted traces as plotly.js holds them: type, name, x, y, z (typed arrays as lists)."""
    return plot.evaluate(
        """gd => {
             const plain = v => (v && ArrayBuffer.isView(v)) ? Array.from(v)
                               : Array.isArray(v) ? v.map(plain) : v;
             return (gd._fullData || gd.data).map(t => ({
               type: t.type, name: t.name, x: plain(t.x), y: plain(t.y), z: plain(t.z)}));
           }"""
    )


def plotly_bar_sizes(plot) -> list[list[float]]:
    """Drawn bar lengths in pixels, one list per bar trace (heights, or widths for orientation
    'h'), read from the SVG paths: evidence that the bars were really redrawn."""
    return plot.evaluate(
        """gd => Array.from(gd.querySelectorAll('.trace.bars')).map(g => {
             const cd = g.__data__, trace = cd && cd[0] && cd[0].trace;
             const horizontal = trace && trace.orientation === 'h';
             return Array.from(g.querySelectorAll('.point path')).map(p => {
               const b = p.getBBox(); return Math.round((horizontal ? b.width : b.height) * 100) / 100;
             });
           })"""
    )


def wait_for_plot_change(page, plot, read, before, *, timeout: float = 15.0):
    """Poll `read(plot)` until it differs from `before`; returns the new value."""
    def changed():
        now = read(plot)
        return (now,) if now != before else None

    try:
        return _wait_until(page, changed, timeout, "the plot to change")[0]
    except TimeoutError:
        raise NotebookError(f"plot did not change within {timeout:.0f}s (still {before!r})"
                            + "".join("\n" + e for e in notebook_errors(page))) from None


def plot_pixel(plot, x: float, y: float, *, xaxis: str = "xaxis", yaxis: str = "yaxis") -> tuple[float, float]:
    """Page (viewport) pixel of data point (x, y), from the axes' current ranges.

    x/y are category names or indices (0, 1, ...) on categorical axes, values otherwise
    (date strings work on date axes). Works for heatmaps, bars, scatter: any cartesian subplot.
    """
    return tuple(plot.evaluate(
        """(gd, a) => {
             const xa = gd._fullLayout[a.xaxis], ya = gd._fullLayout[a.yaxis];
             const box = gd.getBoundingClientRect();
             // strings are data (category names, dates); numbers are category indices or values
             const lin = (ax, v) => typeof v === 'string' ? ax.d2l(v) : ax.c2l(v);
             const px = xa._offset + xa.l2p(lin(xa, a.x)), py = ya._offset + ya.l2p(lin(ya, a.y));
             return [box.left + px, box.top + py];
           }""",
        {"x": x, "y": y, "xaxis": xaxis, "yaxis": yaxis},
    ))


def click_plot(page, plot, x: float, y: float, **axes) -> tuple[float, float]:
    """Move the mouse to data point (x, y) and click it, as a user would (fires plotly_click).

    Plotly listens on the subplot's drag rectangle (`.nsewdrag`), which lies on top of the plot
    area; a hover first lets plotly compute the hovered point. The plot is scrolled into view
    first, and the pixel must land on the drag layer. Returns the page pixel clicked.
    """
    plot.scroll_into_view_if_needed()  # mouse events only reach what is inside the viewport
    px, py = plot_pixel(plot, x, y, **axes)
    target = page.evaluate("([x, y]) => { const e = document.elementFromPoint(x, y);"
                           " return e ? e.getAttribute('class') : null; }", [px, py])
    if not target or "drag" not in target:
        raise NotebookError(f"the pixel ({px:.0f}, {py:.0f}) of point ({x}, {y}) is not on the plot's"
                            f" drag layer but on {target!r}")
    page.mouse.move(px, py, steps=3)
    page.wait_for_timeout(100)  # plotly throttles hover
    page.mouse.click(px, py)
    return px, py


# --------------------------------------------------------------------------------------------
# Screenshots
# --------------------------------------------------------------------------------------------


def artifact_path(name: str) -> Path:
    """`outputs/test-artifacts/<name>` in the repo (git-ignored), its folder created."""
    ARTIFACT_DIR.mkdir(parents=True, exist_ok=True)
    return ARTIFACT_DIR / name


def save_screenshot(page, *paths: str | os.PathLike, locator=None, full_page: bool = False) -> list[Path]:
    """Save one screenshot to every path given: of `locator` (e.g. cell_output(page, i), scrolled
    into view and cropped to it) or else of the viewport. JupyterLab scrolls inside the notebook
    panel, so full_page adds nothing there; pick a locator to capture a whole output."""
    if not paths:
        raise ValueError("give at least one path")
    first = Path(paths[0])
    first.parent.mkdir(parents=True, exist_ok=True)
    if locator is not None:
        locator.screenshot(path=str(first))
    else:
        page.screenshot(path=str(first), full_page=full_page)
    saved = [first]
    for other in paths[1:]:
        other = Path(other)
        other.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(first, other)
        saved.append(other)
    return saved
