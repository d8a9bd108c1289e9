"""The real app served on 127.0.0.1: generate through gradio_client and through Debian chromium (Playwright)."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from studio.training_service import PRESETS
from tests.conftest import TINY_MODEL_ID, make_settings

CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_models_dir):
    from app import create_app, launch_kwargs

    tmp = tmp_path_factory.mktemp("app")
    settings = make_settings(tmp, tiny_models_dir, port=free_port())
    demo, services = create_app(settings)
    kwargs = launch_kwargs(settings)
    kwargs.update(prevent_thread_lock=True, quiet=True, inbrowser=False)
    demo.launch(**kwargs)
    yield f"http://127.0.0.1:{settings.port}/", services
    services.training.shutdown()
    demo.close()


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


@pytest.mark.browser
def test_browser_generates_an_image(served, tmp_path):
    require_chromium()
    from playwright.sync_api import sync_playwright

    url, _ = served
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        page.wait_for_selector("#prompt textarea", timeout=60_000)
        for _ in range(20):  # a page still hydrating may drop the first keystrokes: type until it sticks
            page.fill("#prompt textarea", "a green square")
            page.wait_for_timeout(300)
            if page.input_value("#prompt textarea") == "a green square":
                break
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

    from training.world import concept_scene, render

    files = []
    for seed in range(4):
        scene = concept_scene(seed, "star")
        path = tmp_path / f"star{seed}.png"
        render(scene, 64).save(path)
        path.with_suffix(".txt").write_text(scene.caption)
        files.append(str(path))
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
