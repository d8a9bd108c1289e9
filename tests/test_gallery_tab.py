"""The Gallery tab served for real: its named search API with filters, and a browser that searches, filters,
opens the lightbox, moves with the arrow keys, closes it with Esc and sends an image to img2img."""

from __future__ import annotations

import pytest

from studio.generation_service import GenerationRequest
from tests.conftest import TINY_MODEL_ID
from tests.test_app_e2e import open_page, require_chromium

WORD = "zanzibar"  # a prompt word no other test uses


def _make_images(services, n: int = 3) -> list[str]:
    ids = []
    for i in range(n):
        req = GenerationRequest(prompt=f"a {WORD} circle number{i}", model=TINY_MODEL_ID, sampler="Euler", steps=2,
                                width=64, height=64, seed=100 + i)
        ids += [img.id for img in services.generation.generate(req).images]
    return ids


@pytest.fixture(scope="module")
def made(served):
    url, services = served
    found = services.gallery.list(query=WORD)[1]
    return _make_images(services) if not found else [r["id"] for r in services.gallery.list(query=WORD)[0]]


def test_gallery_search_api_filters_and_pages(served, made):
    from gradio_client import Client

    url, services = served
    client = Client(url, verbose=False)
    items, status, *_ = client.predict(text=WORD, page_size=50, api_name="/gallery_search")
    assert len(items) == 3 and "**3**" in status
    items, status, *_ = client.predict(text=f'{WORD} -number1', page_size=50, api_name="/gallery_search")
    assert len(items) == 2
    items, *_ = client.predict(text=f'"{WORD} circle number2"', api_name="/gallery_search")
    assert len(items) == 1
    items, *_ = client.predict(text=WORD, seed=101, api_name="/gallery_search")
    assert len(items) == 1 and "number1" in items[0]["caption"]
    with pytest.raises(Exception, match="seed must be a whole number"):
        client.predict(text=WORD, seed="1e5", api_name="/gallery_search")
    with pytest.raises(Exception, match="date_from"):
        client.predict(text=WORD, date_from="yesterday", api_name="/gallery_search")
    items, *_ = client.predict(text=WORD, sampler="Euler", image_size="64x64", sort="oldest",
                               api_name="/gallery_search")
    assert [i["caption"][-1] for i in items] == ["0", "1", "2"]
    summary, plot, models, loras, words, storage = client.predict(api_name="/gallery_stats")
    total = services.gallery.stats()["images"]
    assert f"**{total:,}** images" in summary and plot is not None
    assert words["data"] and storage["data"] and models["data"]


@pytest.mark.browser
def test_browser_search_lightbox_arrows_and_send_to_img2img(served, made, tmp_path):
    require_chromium()
    from playwright.sync_api import sync_playwright

    url, services = served
    with sync_playwright() as p:
        browser, page, errors = open_page(p, url)
        try:
            page.get_by_role("tab", name="Gallery").click()
            page.fill("#gallery-query textarea", WORD)
            page.click("#gallery-search")
            page.wait_for_function("document.querySelector('#gallery-status').innerText.includes('3')",
                                   timeout=30_000)
            page.click("#gallery-filters")  # opening the filters filters nothing yet
            page.click("#gallery-search")
            status = "document.querySelector('#gallery-status').innerText"
            page.wait_for_timeout(1000)
            page.wait_for_function(f"{status}.startsWith('3 image')", timeout=30_000)
            page.fill("#gallery-filter-seed textarea, #gallery-filter-seed input", "101")  # the seed of one image
            page.press("#gallery-filter-seed textarea, #gallery-filter-seed input", "Enter")
            page.wait_for_function(f"{status}.startsWith('1 image')", timeout=30_000)
            page.fill("#gallery-filter-seed textarea, #gallery-filter-seed input", "")
            page.press("#gallery-filter-seed textarea, #gallery-filter-seed input", "Enter")
            page.wait_for_function(f"{status}.startsWith('3 image')", timeout=30_000)
            thumbs = page.locator("#gallery-grid button.thumbnail-item")
            thumbs.nth(0).click()
            page.wait_for_selector("#gallery-full img", timeout=30_000)
            info = "document.querySelector('#gallery-info textarea').value"
            page.wait_for_function(f"{info}.includes('number2')", timeout=30_000)  # newest first
            page.locator("body").click(position={"x": 5, "y": 5})
            page.keyboard.press("ArrowRight")
            page.wait_for_function(f"{info}.includes('number1')", timeout=30_000)
            page.keyboard.press("ArrowLeft")
            page.wait_for_function(f"{info}.includes('number2')", timeout=30_000)
            page.screenshot(path=str(tmp_path / "lightbox.png"), full_page=True)
            page.keyboard.press("Escape")
            page.wait_for_function(f"{info} === ''", timeout=30_000)
            thumbs.nth(1).click()
            page.wait_for_function(f"{info}.includes('number1')", timeout=30_000)
            page.click("#gallery-to-img2img")
            page.wait_for_function(
                "document.querySelector('#prompt textarea').value.includes('number1')", timeout=30_000)
            assert page.locator("#prompt textarea").is_visible()
            page.wait_for_selector("#init-image img", timeout=30_000)
            page.get_by_role("tab", name="Gallery").click()  # the open image goes to the Upscale tab
            page.wait_for_function(f"{info}.includes('number1')", timeout=30_000)
            page.click("#gallery-to-upscale")
            page.wait_for_function("document.querySelector('#upscale-ids textarea').value.length === 32",
                                   timeout=30_000)
            shown = page.input_value("#upscale-ids textarea")
            assert "number1" in services.gallery.get(shown)["prompt"] and page.locator("#upscale-go").is_visible()
        finally:
            browser.close()
    assert not errors, errors
