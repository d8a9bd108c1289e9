"""The real app served on 127.0.0.1: generate through gradio_client and through Debian chromium (Playwright)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from studio.training_service import PRESETS
from tests.conftest import TINY_MODEL_ID

CHROMIUM = "/usr/bin/chromium"


def require_chromium() -> None:
    """Fail in CI (launch.sh test installs chromium), skip on a developer machine without it."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("Debian chromium is missing: ./launch.sh test installs it")
        pytest.skip("Debian chromium is not installed")


def generate_args(prompt="a red circle", **kw):
    """Keyword arguments of the `generate` endpoint (every other field keeps its default)."""
    values = dict(model=TINY_MODEL_ID, mode="txt2img", prompt=prompt, sampler="Euler", steps=2, cfg_scale=7,
                  cfg_rescale=0.0, width=64, height=64, seed=5)
    values.update(kw)
    return values


def test_generate_through_gradio_client(served):
    from gradio_client import Client

    url, services = served
    client = Client(url, verbose=False)
    preview, gallery, info, status = client.predict(**generate_args(), api_name="/generate")
    assert len(gallery) == 1 and "Seed: 5" in info and "1 image" in status
    records, total = services.gallery.list(query="red circle")
    assert total >= 1 and (services.settings.data_dir / records[0]["path"]).exists()


def test_bad_input_gets_a_clear_error_and_app_keeps_serving(served):
    from gradio_client import Client

    url, _ = served
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="width must be a multiple of 8"):
        client.predict(**generate_args(width=100), api_name="/generate")
    with pytest.raises(Exception, match="150"):  # the slider itself refuses it, naming the range
        client.predict(**generate_args(steps=500), api_name="/generate")
    _, gallery, _, _ = client.predict(**generate_args(), api_name="/generate")
    assert len(gallery) == 1


def test_two_users_at_once_are_both_served(served):
    from gradio_client import Client

    url, _ = served
    results = {}

    def user(n):
        client = Client(url, verbose=False)
        results[n] = client.predict(**generate_args(f"user {n} square", seed=n), api_name="/generate")

    threads = [threading.Thread(target=user, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sorted(results) == [0, 1] and all(len(r[1]) == 1 for r in results.values())


def star_files(folder: Path, n: int = 2) -> list[str]:
    """n star images of the shapes world with their captions in .txt files beside them."""
    from training.world import concept_scene, render

    files = []
    for seed in range(n):
        scene = concept_scene(seed, "star")
        path = folder / f"star{seed}.png"
        render(scene, 64).save(path)
        path.with_suffix(".txt").write_text(scene.caption)
        files.append(str(path))
    return files


def test_train_and_generate_through_the_named_api(served, tmp_path):
    """A script drives the studio by the endpoint names the README lists: a dataset, a tiny run, its status,
    then an image with the new LoRA."""
    import time

    from gradio_client import Client, handle_file

    url, services = served
    client = Client(url, verbose=False)
    images = star_files(tmp_path)
    captions = [str(Path(f).with_suffix(".txt")) for f in images]  # uploads pair a .txt with its image by name
    _, _, summary = client.predict(files=[handle_file(f) for f in images + captions], api_name="/dataset_add_files")
    assert "**2** images, 2 captioned" in summary
    run_id = client.predict(base_model=TINY_MODEL_ID, name="api-star", max_steps=2, batch_size=1, resolution=64,
                            validation_every=0, checkpoint_every=0, api_name="/train")
    assert isinstance(run_id, str) and run_id in [r["id"] for r in services.training.list_runs()]
    deadline = time.time() + 240
    status = {}
    while time.time() < deadline:
        status = client.predict(run_id=run_id, api_name="/train_status")
        if status.get("status") in ("done", "failed", "stopped"):
            break
        time.sleep(0.5)
    assert status["status"] == "done" and status["step"] == 2, status
    assert Path(status["lora_path"]).name == "api-star.safetensors"
    assert client.predict(run_id=run_id, api_name="/train_stop") == f"run {run_id!r} is not running"
    _, gallery, info, _ = client.predict(**generate_args("a star <lora:api-star:0.8>"), api_name="/generate")
    assert len(gallery) == 1 and 'Lora weights: "api-star: 0.8"' in info


@pytest.mark.parametrize("typed", ["/etc", "../../..", "/", "~"])
def test_a_typed_folder_outside_the_allowed_roots_is_refused(served, typed):
    from gradio_client import Client

    url, services = served
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="folder .* is outside the folders the studio may read") as refused:
        client.predict(folder=typed, api_name="/dataset_add_folder")
    assert str(services.settings.data_dir) in str(refused.value)


@pytest.mark.browser
def test_browser_generates_an_image(served, tmp_path):
    require_chromium()
    from playwright.sync_api import sync_playwright

    url, _ = served
    with sync_playwright() as p:
        browser, page, errors = open_page(p, url)
        type_prompt(page, "a green square")
        page.click("#generate-button")
        page.wait_for_selector("#output-gallery img", timeout=120_000)
        page.wait_for_function("document.querySelector('#output-info textarea').value.includes('Steps:')",
                               timeout=60_000)
        page.screenshot(path=str(tmp_path / "generate.png"))
        for tab in ("Train", "Gallery", "Models"):
            page.get_by_role("tab", name=tab).click()
            page.wait_for_timeout(300)
        browser.close()
    assert not errors, errors


@pytest.mark.browser
def test_browser_training_plot_gains_points_while_it_runs(served, tmp_path):
    require_chromium()
    import re

    from playwright.sync_api import sync_playwright

    files = star_files(tmp_path, 4)
    url, services = served

    def step_shown(page) -> int:
        match = re.search(r"step (\d+)/", page.inner_text("#train-stats"))
        return int(match.group(1)) if match else 0

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.goto(url)
        page.get_by_role("tab", name="Train").click()
        # the fields open on the preset the dropdown shows
        assert page.get_by_label("Steps", exact=True).input_value() == str(PRESETS["quick"]["max_steps"])
        page.locator("#train-upload input[type=file]").set_input_files(files)
        page.wait_for_function("document.body.innerText.includes('Dataset: 4 images')", timeout=60_000)
        page.get_by_role("listbox", name="Base model").click()
        page.get_by_role("option", name=TINY_MODEL_ID).click()
        # a preset sets the advanced fields too: 'new shape' turns on the trigger embedding, 'quick' turns it off
        page.get_by_role("listbox", name="Preset").click()
        page.get_by_role("option", name="new shape").click()
        page.locator("#train-advanced").get_by_text("Advanced:").click()
        embedding_on = ("[...document.querySelectorAll('#train-advanced label')]"
                        ".find(l => l.innerText.includes('Trigger embedding'))?.querySelector('input')?.checked")
        page.wait_for_function(f"{embedding_on} === true", timeout=10_000)
        assert page.get_by_label("Embedding LR").input_value() == "0.04"
        assert page.get_by_label("LoRA dropout").first.input_value() == str(PRESETS["new shape"]["lora_dropout"])
        page.get_by_role("listbox", name="Preset").click()
        page.get_by_role("option", name="quick", exact=True).click()
        page.wait_for_function(f"{embedding_on} === false", timeout=10_000)
        page.get_by_label("Steps", exact=True).fill("100000")
        page.get_by_label("Trigger word", exact=True).fill("sks star")
        page.get_by_role("button", name="Add to all captions").click()
        page.wait_for_function("document.body.innerText.includes('4 captioned')", timeout=30_000)
        page.click("#train-button")
        try:
            page.wait_for_function("/step \\d+\\//.test(document.querySelector('#train-stats').innerText)",
                                   timeout=120_000)
            first = step_shown(page)
            page.wait_for_function(
                f"(document.querySelector('#train-stats').innerText.match(/step (\\d+)\\//) || [0, 0])[1] > {first}",
                timeout=120_000)
            assert step_shown(page) > first > 0
            assert page.locator("#train-plot canvas, #train-plot svg").count() > 0
            # the run list follows the run without a click on Refresh
            page.wait_for_function("document.querySelector('#train-runs').innerText.includes('running')",
                                   timeout=60_000)
            # the legend (which line is raw, which smoothed) lies inside the plot's block, not clipped below it
            page.wait_for_function("document.querySelector('#train-plot svg').textContent.includes('smoothed')",
                                   timeout=60_000)
            block = page.locator("#train-plot").bounding_box()
            legend = page.locator("#train-plot svg .role-legend").first.bounding_box()
            assert legend["y"] + legend["height"] <= block["y"] + block["height"], (legend, block)
            page.screenshot(path=str(tmp_path / "train.png"))
            page.click("#train-stop")
            page.wait_for_function("document.querySelector('#train-stats').innerText.includes('stopped')",
                                   timeout=120_000)
            page.wait_for_function("document.querySelector('#train-runs').innerText.includes('stopped')",
                                   timeout=60_000)
            # the page stays responsive: other tabs open and the Train tab comes back with its plot
            page.get_by_role("tab", name="Gallery").click()
            page.get_by_role("tab", name="Train").click(timeout=10_000)
            page.wait_for_selector("#train-plot svg", timeout=10_000)
        finally:
            services.training.stop()
            browser.close()
    assert services.training.list_runs()[0]["status"] == "stopped"


def open_page(p, url, width=1400, height=1000):
    """Debian chromium (headless) on the studio's page, once the Generate prompt is there:
    (browser, page, the page errors seen, then and later)."""
    browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
    page = browser.new_page(viewport={"width": width, "height": height})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_selector("#prompt textarea", timeout=60_000)
    return browser, page, errors


def type_prompt(page, text: str, selector: str = "#prompt textarea") -> None:
    for _ in range(20):  # a page still hydrating may drop the first keystrokes: type until it sticks
        page.fill(selector, text)
        page.wait_for_timeout(300)
        if page.input_value(selector) == text:
            return


@pytest.mark.browser
def test_browser_shell_on_a_phone_dark_mode_shortcuts_and_help(served, tmp_path):
    """At 390 px nothing is wider than the screen; the dark-mode choice survives a reload; Ctrl+Enter
    generates; '?' opens the shortcuts."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    url, _ = served
    with sync_playwright() as p:
        browser, page, errors = open_page(p, url, width=390, height=844)
        try:
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"the page is {overflow} px wider than a phone's screen"
            dark_before = page.evaluate("document.body.classList.contains('dark')")
            page.click("#theme-toggle")
            assert page.evaluate("document.body.classList.contains('dark')") is not dark_before
            page.reload()
            page.wait_for_selector("#prompt textarea", timeout=60_000)
            page.wait_for_function(f"document.body.classList.contains('dark') === {str(not dark_before).lower()}",
                                   timeout=10_000)
            type_prompt(page, "a blue triangle")
            page.focus("#prompt textarea")
            page.keyboard.press("Control+Enter")
            page.wait_for_function("document.querySelector('#output-info textarea').value.includes('blue triangle')",
                                   timeout=120_000)
            page.locator("body").click(position={"x": 5, "y": 5})
            page.keyboard.press("?")
            page.wait_for_function("document.querySelector('#help-panel').innerText.includes('Ctrl+Enter')",
                                   timeout=10_000)
            page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
