"""The web page in a real browser: headless Chromium (Debian's, driven by Selenium) against the running service.

It uploads a generated 10 s clip, follows the job's progress and reads the verdict, the modalities,
the timeline and a keyframe with its heat-map from the DOM; a screenshot lands in the test's temp
dir. Debian's `chromium` and `chromium-driver` are installed here when missing and possible
(root with apt-get); otherwise the test skips and says why. Nothing is downloaded by Selenium.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.mediagen import talking_face_video

pytestmark = pytest.mark.serve

WAIT_S = 240


def _chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installing Debian's packages when possible; skips otherwise."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if all(found):
        return found  # type: ignore[return-value]
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("no chromium/chromedriver, and not root with apt-get to install Debian's chromium chromium-driver")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium", "chromium-driver"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0 and command[1] == "install":
            pytest.skip(f"could not install chromium: {done.stderr[-500:]}")
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if not all(found):
        pytest.skip("chromium-driver installed but chromium or chromedriver is not on PATH")
    return found  # type: ignore[return-value]


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service as DriverService

    chromium, chromedriver = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,2900",
                "--disable-gpu", "--no-first-run"):
        options.add_argument(arg)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not fetch a browser or driver
    driver = webdriver.Chrome(service=DriverService(executable_path=chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_analyses_an_upload_in_a_real_browser(service, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(talking_face_video(seconds=10.0, size=(320, 240), fps=25, with_audio=True, seed=21))
    browser.get(service.url + "/")
    wait = WebDriverWait(browser, WAIT_S)
    browser.find_element(By.ID, "file").send_keys(str(clip))
    browser.find_element(By.ID, "go").click()

    # Progress from the job API while it runs, then the result.
    wait.until(ready.visibility_of_element_located((By.ID, "progress")))
    stages = browser.execute_script("return [...document.querySelectorAll('#stages li')].map(li => li.textContent)")
    assert stages == ["queued", "decoding", "triage", "keyframes", "branches", "fusion", "done"], stages
    seen = set()

    def finished(d) -> bool:  # the list is redrawn at each poll of the job: read it in one script call
        seen.add(d.execute_script("const li = document.querySelector('#stages li[aria-current]'); "
                                  "return li ? li.textContent : null"))
        return d.find_element(By.ID, "result").is_displayed() or "error" in d.find_element(By.ID, "status").get_attribute("innerHTML")

    WebDriverWait(browser, WAIT_S, poll_frequency=0.1).until(finished)
    assert browser.find_element(By.ID, "result").is_displayed(), browser.find_element(By.ID, "status").text
    assert seen & {"decoding", "triage", "keyframes", "branches", "fusion"}, seen  # the job's real stages showed

    verdict = browser.find_element(By.ID, "verdict").text
    assert any(words in verdict for words in ("Likely manipulated", "Likely authentic", "Cannot tell")), verdict
    assert "Probability that it was manipulated:" in browser.find_element(By.ID, "meaning").text
    rows = browser.find_elements(By.CSS_SELECTOR, "#modalities tr")
    modalities = {r.find_elements(By.TAG_NAME, "td")[0].text for r in rows}
    assert {"triage", "visual", "av", "audio"} <= modalities, modalities
    assert browser.find_elements(By.CSS_SELECTOR, "#timeline circle.keyframe")
    assert browser.find_elements(By.CSS_SELECTOR, "#models li")

    # A keyframe thumbnail, large, then the heat-map of where the visual model looked.
    thumbs = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#thumbs button img"))
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", thumbs[0]) > 0
    thumbs[0].find_element(By.XPATH, "..").click()
    wait.until(ready.element_to_be_clickable((By.ID, "explain"))).click()
    wait.until(lambda d: not d.find_element(By.ID, "heat").text.startswith("Computing"))  # an image, or why not
    heat = browser.find_elements(By.CSS_SELECTOR, "#heat img.heatmap")
    assert heat, browser.find_element(By.ID, "heat").text  # the first keyframe shows the face
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", heat[0]) > 0)
    assert "Model: compression_resilient/" in browser.find_element(By.ID, "heat").text

    # The analyst's judgement goes back to the service with the file the job kept.
    browser.find_element(By.ID, "family").send_keys("lipsync")
    browser.find_element(By.ID, "mark-fake").click()
    wait.until(lambda d: d.find_element(By.ID, "feedback-status").text)
    assert browser.find_element(By.ID, "feedback-status").text == "Recorded as fake with the file."

    shot = tmp_path / "page.png"
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
