"""The playground page (GET /) end to end in headless Chromium, against a real server.

Loads the page, generates greedily and checks the streamed tokens, their colours and the
alternatives panel against the model itself, ranks continuations in the language-distribution
panel in `generation.score`'s order, and shows the server's error messages.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them in CI); skips
elsewhere, saying why. ``LMFORGE_SCREENSHOT=docs/img/playground.png`` saves a screenshot of the
page at the end; ``LMFORGE_PLAYGROUND_RUN=RUN`` serves that run instead of the tiny one made
here (the README's screenshot comes from a trained model).
"""

from __future__ import annotations

import base64
import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmforge.cli import main
from lmforge.fileio import atomic_write_bytes
from lmforge.generation import SampleConfig, generate, prompt_ids, score
from lmforge.runs import load_run
from tests.conftest import REPO
from tests.serving.conftest import running_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MISSING = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"needs Debian's chromium and chromium-driver ({', '.join(MISSING)} missing): "
    "apt-get install chromium chromium-driver",
)

BROWSER_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    # Without these Chromium phones home, and this closed network refuses its connections.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PROMPT = "the cat "
LENGTH = 30
CONTINUATIONS = ["sat on the mat", "ate the rat", "tac eht", "the hat"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A character bigram trained for a few steps on simple sentences (or the run named by
    LMFORGE_PLAYGROUND_RUN)."""
    if os.environ.get("LMFORGE_PLAYGROUND_RUN"):
        return Path(os.environ["LMFORGE_PLAYGROUND_RUN"])
    folder = tmp_path_factory.mktemp("playground")
    corpus = folder / "cats.txt"
    lines = ["the cat sat on the mat.", "the rat ate the hat.", "a cat and a rat sat."]
    corpus.write_text("\n".join(lines[i % 3] for i in range(400)) + "\n", encoding="utf-8")
    run = folder / "cats"
    train = ["train", "--corpus", str(corpus), "--model", "bigram", "--out", str(run)]
    steps = ["--max-steps", "40", "--eval-interval", "40", "--eval-iters", "1"]
    options = ["--learning-rate", "0.3", "--batch-size", "8", "--block-size", "16"]
    assert main([*train, *steps, *options, "--device", "cpu", "--quiet"]) == 0
    return run


@pytest.fixture(scope="module")
def server_url(run_dir: Path) -> Iterator[str]:
    """A real server on a loopback port serving ``run_dir``, stopped even when a test fails."""
    with running_server([run_dir]) as server:
        yield server.url


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Headless Chromium driven by selenium, with a profile of its own."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (extra peers)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument("--window-size=1280,800")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: object, condition, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def _fill(driver: object, element_id: str, text: str) -> None:
    """Replace a field's value as a user would (select all, type)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.ID, element_id)
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    field.send_keys(text)


def _next_token_logprobs(run, text: str) -> torch.Tensor:
    """log p(next token | text) under the run's model, from its raw logits."""
    ids = torch.tensor([prompt_ids(run.tokenizer, text)])
    with torch.inference_mode():
        logits, _ = run.model(ids)
    return F.log_softmax(logits[0, -1].float(), dim=-1)


def test_the_playground_streams_explains_and_ranks(run_dir, server_url, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver = browser
    run = load_run(run_dir, device="cpu")
    find = driver.find_element
    driver.get(server_url + "/")
    _wait(driver, lambda d: find(By.ID, "model").get_attribute("value") == run_dir.name)
    assert not driver.find_elements(By.CSS_SELECTOR, "#output .tok")

    # Generate greedily: the streamed tokens are the model's, coloured by their probability.
    _fill(driver, "prompt", PROMPT)
    driver.execute_script("document.getElementById('temperature').value = '0'")
    _fill(driver, "max-tokens", str(LENGTH))
    find(By.ID, "generate").click()
    _wait(driver, lambda d: "reached the length" in find(By.ID, "gen-stats").text)
    spans = driver.find_elements(By.CSS_SELECTOR, "#output .tok")
    generated = "".join(s.get_attribute("textContent") for s in spans)
    (expected,) = generate(run.model, run.tokenizer, PROMPT, SampleConfig(LENGTH, temperature=0))
    assert len(spans) == LENGTH  # one span per character token
    assert generated == expected
    assert find(By.CSS_SELECTOR, "#output .prompt").get_attribute("textContent") == PROMPT
    for span in spans[:3]:
        assert span.value_of_css_property("background-color") not in ("", "rgba(0, 0, 0, 0)")

    # Hover a token: the alternatives are the model's top tokens at that point, most likely
    # first, with the chosen one marked and its probability.
    index = 5
    ActionChains(driver).move_to_element(spans[index]).perform()
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#alternatives .alt-row.chosen"))
    logprobs = _next_token_logprobs(run, PROMPT + generated[:index])
    top = torch.topk(logprobs, 5)
    rows = driver.find_elements(By.CSS_SELECTOR, "#alternatives .alt-row[data-token]")
    shown = [(r.get_attribute("data-token"), float(r.get_attribute("data-prob"))) for r in rows]
    want = [(run.tokenizer.decode([i]), math.exp(lp)) for lp, i in zip(*top, strict=True)]
    assert [t for t, _ in shown] == [t for t, _ in want]
    assert [p for _, p in shown] == pytest.approx([p for _, p in want], abs=1e-4)
    chosen = find(By.CSS_SELECTOR, "#alternatives .alt-row.chosen")
    assert chosen.get_attribute("data-token") == generated[index]
    assert float(spans[index].get_attribute("data-logprob")) == pytest.approx(
        float(logprobs[run.tokenizer.encode(generated[index])[0]]), abs=1e-4
    )

    # The language distribution: ranked in generation.score's order, with its numbers.
    _fill(driver, "dist-prompt", PROMPT.strip())
    _fill(driver, "dist-continuations", "\n".join(CONTINUATIONS))
    find(By.ID, "score").click()
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#dist-results tr.dist-row"))
    rows = driver.find_elements(By.CSS_SELECTOR, "#dist-results tr.dist-row")
    ranked = [r.find_element(By.CSS_SELECTOR, "td.cont .text").text for r in rows]
    scored = score(run.model, run.tokenizer, PROMPT.strip(), CONTINUATIONS)
    assert ranked == [s.continuation for s in scored]
    assert [float(r.get_attribute("data-logprob")) for r in rows] == pytest.approx(
        [s.logprob for s in scored], abs=1e-4
    )

    # The page fits a narrow window without sideways scrolling.
    driver.set_window_size(500, 800)  # Chromium's narrowest window
    assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    driver.set_window_size(1280, 800)

    screenshot = os.environ.get("LMFORGE_SCREENSHOT")
    if screenshot:
        _showcase(driver, server_url, REPO / screenshot)


def test_the_playground_shows_the_server_s_errors(server_url, browser):
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(server_url + "/")
    _wait(driver, lambda d: d.find_element(By.ID, "model").get_attribute("value"))
    driver.execute_script(
        "const m = document.getElementById('model');"
        "m.append(new Option('no-such-model', 'no-such-model')); m.value = 'no-such-model';"
    )
    driver.find_element(By.ID, "score").click()
    error = _wait(driver, lambda d: d.find_element(By.ID, "dist-error").text)
    assert "no-such-model" in error
    assert not driver.find_elements(By.CSS_SELECTOR, "#dist-results tr")


def test_the_page_asks_for_the_key_of_a_server_that_has_one(run_dir, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    find = driver.find_element
    with running_server([run_dir], api_key="sk-playground") as server:
        driver.get(server.url + "/")
        error = _wait(driver, lambda d: find(By.ID, "models-error").text)
        assert "API key" in error
        assert find(By.ID, "generate").get_attribute("disabled")
        find(By.ID, "api-key").send_keys("sk-playground", Keys.TAB)
        _wait(driver, lambda d: find(By.ID, "model").get_attribute("value") == run_dir.name)
        assert find(By.ID, "models-error").text == ""
        driver.refresh()  # the key is remembered
        _wait(driver, lambda d: find(By.ID, "model").get_attribute("value") == run_dir.name)


def test_an_empty_model_list_says_so(server_url, browser):
    from selenium.webdriver.common.by import By

    driver = browser
    no_models = """
        const realFetch = window.fetch;
        window.fetch = (url, options) => String(url).endsWith("/v1/models")
            ? Promise.resolve(new Response('{"object": "list", "data": []}'))
            : realFetch(url, options);
    """
    script = driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": no_models})
    try:
        driver.get(server_url + "/")
        error = _wait(driver, lambda d: d.find_element(By.ID, "models-error").text)
        assert "serves no models" in error
        assert driver.find_element(By.ID, "generate").get_attribute("disabled")
        assert driver.find_element(By.ID, "score").get_attribute("disabled")
    finally:
        driver.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", script)


def _showcase(driver: object, url: str, path: Path) -> None:
    """Save a PNG of the whole page, 1280 px wide, as a user first sees it: the page's own
    prompt and settings generated (seed 1), a token of middling probability picked, and the
    seed's continuations scored."""
    from selenium.webdriver.common.by import By

    driver.get(url + "/")
    _wait(driver, lambda d: d.find_element(By.ID, "model").get_attribute("value"))
    _fill(driver, "seed", "1")
    driver.find_element(By.ID, "generate").click()

    def finished(d: object) -> str:
        return d.find_element(By.ID, "gen-stats").text or d.find_element(By.ID, "gen-error").text

    done = _wait(driver, finished, timeout=120)
    error = driver.find_element(By.ID, "gen-error").text
    if error:
        pytest.fail(
            f"the page's own prompt does not generate with this run ({error}); set "
            "LMFORGE_PLAYGROUND_RUN to a run trained on Tiny Shakespeare for the screenshot"
        )
    assert done
    spans = driver.find_elements(By.CSS_SELECTOR, "#output .tok")
    probs = [math.exp(float(s.get_attribute("data-logprob"))) for s in spans]
    middling = [s for s, p in zip(spans, probs, strict=True) if 0.1 < p < 0.4]
    (middling[len(middling) // 2 :] or spans)[0].click()
    driver.find_element(By.ID, "score").click()
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#dist-results tr.dist-row"))

    def emulate(height: int) -> None:
        metrics = {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)

    emulate(800)
    emulate(driver.execute_script("return document.documentElement.scrollHeight"))
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, base64.b64decode(shot["data"]))
