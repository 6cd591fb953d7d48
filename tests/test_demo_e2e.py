"""End-to-end: ``lgrnet demo`` served in a subprocess, driven by headless Chromium (Debian's system browser through
Selenium; no browser download). Loads the page, submits a SynthRef example, checks that a result image and a box
come back, that a bad request gets a message and leaves the server up, and takes a screenshot.

Needs /usr/bin/chromium and /usr/bin/chromedriver (``make browser`` installs them; ``make test`` depends on it).
Set LGRNET_DEMO_SCREENSHOT=path.png to keep the screenshot (the README's docs/images/demo.png comes from here) and
LGRNET_DEMO_CHECKPOINT=folder to serve a trained model rather than an untrained tiny one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from inference_helpers import make_tiny_checkpoint
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # LGRNET_DEMO_CHECKPOINT: serve a trained model instead (to refresh the README screenshot).
    checkpoint = os.environ.get("LGRNET_DEMO_CHECKPOINT") or make_tiny_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "tiny")
    port = _free_port()
    log = tmp_path_factory.mktemp("log") / "demo.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    script = Path(sys.executable).with_name("lgrnet")
    with log.open("w") as handle:
        process = subprocess.Popen([str(script), "demo", "--checkpoint", str(checkpoint), "--port", str(port)],
                                   stdout=handle, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"lgrnet demo exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"lgrnet demo did not answer on {url} within 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not Path(binary).exists():
            pytest.fail(f"{binary} is missing: run `make browser` (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}", "--window-size=1400,1500"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _value(driver, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector).get_attribute("value") or ""


def test_demo_in_headless_chromium(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, process = server
    browser.get(url)
    wait = WebDriverWait(browser, 120)
    # The preloaded SynthRef examples: clicking one fills the image and the expression.
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#examples [data-testid="dataset-cell-0-0"]'))[0].click()
    page = browser.find_element(By.TAG_NAME, "body").text
    assert "10 MB" in page and "40 megapixels" in page  # both upload limits the server enforces
    wait.until(lambda d: _value(d, "#expression textarea").strip())
    expression = _value(browser, "#expression textarea")
    browser.find_element(By.ID, "locate").click()
    wait.until(lambda d: _value(d, "#status textarea").startswith(("box", "Error")))
    status = _value(browser, "#status textarea")
    assert status.startswith("box ("), status
    overlay = browser.find_elements(By.CSS_SELECTOR, "#overlay img")
    attention = browser.find_elements(By.CSS_SELECTOR, "#attention img")
    assert overlay and overlay[0].get_attribute("src") and attention and attention[0].get_attribute("src")
    assert overlay[0].get_attribute("naturalWidth") not in (None, "0")
    result = browser.find_element(By.ID, "result").text
    assert "box_xyxy" in result and "coord" in result and expression.split()[0] in result
    time.sleep(1)  # let the images paint before the screenshot
    shot = Path(os.environ.get("LGRNET_DEMO_SCREENSHOT") or tmp_path / "demo.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot))
    assert Image.open(shot).size[0] >= 1000

    # A bad request (empty expression) gets a clear message; the server stays up and keeps answering.
    box = browser.find_element(By.CSS_SELECTOR, "#expression textarea")
    box.clear()
    box.send_keys(" ")
    browser.find_element(By.ID, "locate").click()
    wait.until(lambda d: _value(d, "#status textarea").startswith("Error"))
    assert "type an expression" in _value(browser, "#status textarea")
    assert process.poll() is None
    box.clear()
    box.send_keys("the leftmost shape")
    browser.find_element(By.ID, "locate").click()
    wait.until(lambda d: _value(d, "#status textarea").startswith("box"))


def test_demo_api_rejects_bad_uploads_and_stays_up(server, tmp_path):
    """Uploads that never display in a browser, sent through Gradio's API: a clear message for each, a 413 for an
    over-large file, and the server still answers."""
    from gradio_client import Client, handle_file
    from inference_helpers import make_bad_inputs

    url, process = server
    corpus = {c.name: c for c in make_bad_inputs(tmp_path / "corpus")}
    client = Client(url, verbose=False)
    for name in ("text.jpg", "truncated.png", "bomb.png"):
        overlay, attention, result, status = client.predict(handle_file(str(corpus[name].path)), "the square",
                                                            [1], api_name="/locate")
        assert status.startswith("Error:") and name in status and overlay is None, status
    *_, status = client.predict(handle_file(str(corpus["cmyk.jpg"].path)), "the square", [2],
                                api_name="/locate")
    assert status.startswith("box ("), status
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(11 * 1024 * 1024))
    boundary = "lgrnetboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + big.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url + "gradio_api/upload", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=60)
    assert info.value.code == 413  # over the 10 MB cap
    assert process.poll() is None
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200

