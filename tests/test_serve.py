"""``vidiff serve`` in a real headless Chromium: generate in each video tab, check the mp4 the page shows decodes to the
expected frames, check bad input comes back as a message in the page, and that neither the page nor the server reaches
any host but this machine. Screenshots go to each test's ``tmp_path``.

Chromium is Debian's (``/usr/bin/chromium``, installed by ``make test``); Playwright drives it, nothing is downloaded.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium phones home at start, which a closed network refuses.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parents[1]
EXAMPLE_IMAGE = REPO / "src" / "vidiff" / "assets" / "examples" / "red_circle.png"
STEPS = "5"  # few steps: the test checks the plumbing, not the picture
TIMEOUT_MS = 60_000
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}

# gradio's queue statistics use pandas options that pandas 3 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio.queueing")

pytest.importorskip("gradio", reason="the serve extra: pip install -e '.[test]' (make test installs it)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright: pip install -e '.[test]'")


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_connections():
    """Addresses outside this machine that the server process tries to connect to while the tests run."""
    seen: list[str] = []
    original, original_ex = socket.socket.connect, socket.socket.connect_ex

    def note(sock: socket.socket, address) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(str(address[0])):
            seen.append(str(address))

    def connect(self, address):
        note(self, address)
        return original(self, address)

    def connect_ex(self, address):
        note(self, address)
        return original_ex(self, address)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    try:
        yield seen
    finally:
        socket.socket.connect, socket.socket.connect_ex = original, original_ex


@pytest.fixture(scope="module")
def server(server_connections, tmp_path_factory):
    import torch

    from vidiff import serve

    threads = torch.get_num_threads()  # the server sets 1 (Chromium needs the other core); the tests after need theirs
    demo = serve.launch(port=_free_port(), threads=1, block=False, quiet=True,
                        output_dir=tmp_path_factory.mktemp("serve-outputs"))
    try:
        yield demo
    finally:
        demo.close(verbose=False)
        torch.set_num_threads(threads)
    with socket.socket() as probe:  # closed cleanly: the port is free again
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", demo.server_port))


@pytest.fixture(scope="module")
def browser_requests() -> list[str]:
    return []


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's Chromium. Install it with "
                    "`apt-get install -y chromium` (or run `make browser`, which `make test` does)", pytrace=False)
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, server, browser_requests):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("request", lambda request: browser_requests.append(request.url))
    page.goto(server.local_url)
    page.locator("#t2v-prompt textarea").wait_for()
    try:
        yield page
    finally:
        context.close()


def _fill_advanced(page, prefix: str, field: str, default: str, value: str) -> None:
    """Open tab ``prefix``'s "Advanced" accordion and type ``value`` into ``field``. The fields mount when it opens and
    are given the model's defaults a moment later, which can overwrite a value typed at once: type until it stays."""
    page.locator(f"#{prefix}-advanced").click()
    box = page.locator(f"#{prefix}-{field} input")
    sync_api.expect(box).to_have_value(default)  # pre-filled with the model folder's default
    _type(page, box, value)


def _type(page, box, value: str) -> None:
    """Fill ``box`` and check, a moment later, that the page kept the value (fields mount lazily, see above)."""
    for _ in range(20):
        box.fill(value)
        page.wait_for_timeout(250)
        if box.input_value() == value:
            break
    sync_api.expect(box).to_have_value(value)


def _set_steps(page, prefix: str) -> None:
    _fill_advanced(page, prefix, "steps", "25", STEPS)  # 25: the embedded models' default


def _generate_and_fetch(page, prefix: str, tmp_path: Path, name: str, previous_src: str | None = None):
    """Press Generate in tab ``prefix``, wait for the new video, download it from the page's own URL and decode it."""
    from vidiff.utils.video import read_video

    page.locator(f"#{prefix}-generate").click()
    video = page.locator(f"#{prefix}-video video")
    video.wait_for()
    page.wait_for_function(
        "([sel, old]) => { const v = document.querySelector(sel); return v && v.src && v.src !== old; }",
        arg=[f"#{prefix}-video video", previous_src or ""])
    src = video.evaluate("v => v.src")
    assert _is_loopback(urlparse(src).hostname), src
    path = tmp_path / f"{name}.mp4"
    with urllib.request.urlopen(src, timeout=30) as response:
        path.write_bytes(response.read())
    frames, _ = read_video(path)
    result = page.locator(f"#{prefix}-result textarea")
    page.wait_for_function("sel => document.querySelector(sel).value.includes('generated')",
                           arg=f"#{prefix}-result textarea")
    return src, frames, result.input_value()


def test_text_to_video_in_the_browser(page, tmp_path):
    _type(page, page.locator("#t2v-prompt textarea"), "a blue square moving up")
    _set_steps(page, "t2v")
    assert page.locator("#t2v-frames input").input_value() == "16"  # pre-filled with the model folder's default
    _, frames, text = _generate_and_fetch(page, "t2v", tmp_path, "t2v")
    page.screenshot(path=tmp_path / "text_to_video.png", full_page=True)
    assert frames.shape == (16, 64, 64, 3)
    assert f"generated 16 frames of 64x64 with {STEPS} steps" in text and "probe: blue square, moving up" in text
    for output in ("gif", "sheet"):
        assert page.locator(f"#t2v-{output} img").get_attribute("src")  # the GIF and the contact sheet are shown


def test_image_to_video_in_the_browser(page, tmp_path):
    page.get_by_role("tab", name="Image to video").click()
    page.locator("#i2v-image input[type=file]").set_input_files(str(EXAMPLE_IMAGE))
    page.locator("#i2v-image img").wait_for()
    _type(page, page.locator("#i2v-prompt textarea"), "a red circle moving right")
    _set_steps(page, "i2v")
    src, frames, text = _generate_and_fetch(page, "i2v", tmp_path, "i2v")
    page.screenshot(path=tmp_path / "image_to_video.png", full_page=True)
    assert frames.shape == (16, 64, 64, 3)
    assert f"with {STEPS} steps" in text and "probe: red circle, moving right" in text

    # The embedded model is a DynamiCrafter one: the modes are offered, the last image only for interpolation.
    assert not page.locator("#i2v-last").is_visible()
    page.locator("#i2v-mode").get_by_text("interpolate to a last image", exact=True).click()
    page.locator("#i2v-last").wait_for()
    page.locator("#i2v-mode").get_by_text("loop", exact=True).click()
    page.locator("#i2v-last").wait_for(state="hidden")
    _, frames, text = _generate_and_fetch(page, "i2v", tmp_path, "i2v_loop", previous_src=src)
    assert f"generated 15 frames of 64x64 with {STEPS} steps" in text
    page.screenshot(path=tmp_path / "image_to_video_loop.png", full_page=True)
    assert frames.shape == (15, 64, 64, 3)  # a loop drops its closing frame, the first image again


def test_bad_input_shows_a_message(page, tmp_path):
    page.locator("#t2v-generate").click()  # no prompt
    page.get_by_text("the prompt is empty").wait_for()
    page.screenshot(path=tmp_path / "empty_prompt.png")

    page.get_by_role("tab", name="Image to video").click()
    page.locator("#i2v-generate").click()  # no image
    page.get_by_text("no image: upload the image to animate").wait_for()
    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"this is text, not a PNG")
    page.locator("#i2v-image input[type=file]").set_input_files(str(bad))
    page.locator("#i2v-generate").click()
    page.get_by_text("cannot read not_an_image.png as an image").wait_for()
    page.screenshot(path=tmp_path / "unreadable_image.png")

    page.get_by_role("tab", name="Text to image").click()
    _type(page, page.locator("#t2i-prompt textarea"), "a large yellow triangle")
    _fill_advanced(page, "t2i", "height", "64", "30")  # not a multiple of the autoencoder's factor: the pipeline says
    page.locator("#t2i-generate").click()
    page.get_by_text(re.compile(r"height must be a positive multiple of \d+", re.I)).wait_for()
    page.screenshot(path=tmp_path / "bad_size.png")
    assert "Traceback" not in page.locator("body").inner_text()


def test_nothing_leaves_this_machine(page, tmp_path, browser_requests, server_connections):
    for tab in ("Image to video", "Text to image", "Text to video"):
        page.get_by_role("tab", name=tab).click()
    page.locator("#t2v-advanced").click()
    page.wait_for_load_state("networkidle")
    page.screenshot(path=tmp_path / "page.png", full_page=True)
    assert len(browser_requests) > 10  # the other tests' requests are in here too
    outside = [url for url in browser_requests
               if urlparse(url).scheme not in ("data", "blob") and not _is_loopback(urlparse(url).hostname)]
    assert not outside, f"the page requested hosts outside this machine: {sorted(set(outside))}"
    assert not server_connections, f"the server connected outside this machine: {server_connections}"
    config = json.loads(urllib.request.urlopen(page.url.rstrip("/") + "/config", timeout=10).read())
    assert config["analytics_enabled"] is False and config["stylesheets"] == []


# ---------------------------------------------------------------------------------------------------------------------
# behind the page


def test_backend_refuses_bad_values(server):
    import gradio as gr

    from vidiff.serve import _for_page

    backend = server.backend
    with pytest.raises(ValueError, match="Guidance must be a finite number, got inf"):
        backend.text_to_video("a blue square", guidance=float("inf"))
    with pytest.raises(ValueError, match="Guidance must be a finite number, got nan"):
        backend.image_to_video(str(EXAMPLE_IMAGE), guidance=float("nan"))
    with pytest.raises(ValueError, match="Steps must be a whole number, got 2.5"):
        backend.text_to_image("a blue square", steps=2.5)
    with pytest.raises(ValueError, match="Width must be between 1 and 2048"):
        backend.text_to_video("a blue square", width=0)
    with pytest.raises(ValueError, match="image file not found: missing.png"):
        backend.image_to_video("/nowhere/missing.png")
    with pytest.raises(ValueError, match="interpolation needs a last image"):
        backend.image_to_video(str(EXAMPLE_IMAGE), mode="interpolate to a last image")
    with pytest.raises(gr.Error, match="the prompt is empty"):
        _for_page(backend.text_to_video)("   ")


def test_page_defaults_are_the_pipelines(server):
    """The form is filled from model_index.json without loading weights; it must match what the pipeline uses."""
    backend = server.backend
    for kind in ("t2v", "i2v", "t2i"):
        assert backend.models[kind].defaults == backend.pipeline(kind).defaults, kind


def test_cli_serve_port_in_use(capsys):
    from vidiff import cli_serve
    from vidiff.cli_common import ArgumentParser

    parser = ArgumentParser(prog="vidiff")
    cli_serve.add_parser(parser.add_subparsers(dest="command"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        args = parser.parse_args(["serve", "--port", str(taken.getsockname()[1])])
        assert cli_serve.run(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vidiff serve: error: port ") and "already in use" in err and "\n" not in err


def test_cli_serve_parser_imports_neither_torch_nor_gradio():
    code = ("import argparse, sys; from vidiff import cli_serve; "
            "cli_serve.add_parser(argparse.ArgumentParser().add_subparsers()); "
            "print(sorted(m for m in ('torch', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_serve_rejects_bad_port():
    from vidiff.cli_serve import port_arg

    assert port_arg("7860") == 7860
    for text in ("0", "70000", "http"):
        with pytest.raises(argparse.ArgumentTypeError):
            port_arg(text)
