"""The prompt library: A1111 styles and styles.csv, wildcard templates, saved-prompt versions, history, the builder,
variation seeds reproducible from their infotext, and the Prompts tab's API."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from PIL import Image

from studio.errors import ValidationError
from studio.generation_service import GenerationRequest
from studio.infotext import infotext_to_fields, parse_infotext, read_png_parameters
from studio.prompts.builder import BuilderLists, compose
from studio.prompts.history import PromptHistory
from studio.prompts.library import PromptLibrary
from studio.prompts.styles import Style, apply_styles, extract_styles, read_styles_csv, write_styles_csv
from studio.stores.atomic_storage import JsonStore
from tests.conftest import TINY_MODEL_ID


@pytest.fixture
def library(tmp_path) -> PromptLibrary:
    return PromptLibrary(tmp_path / "data")


def write_wildcard(library: PromptLibrary, name: str, lines: list[str]) -> None:
    path = library.wildcards.folders[0] / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------- styles
AWKWARD = [Style("Quoted, comma", 'a "quoted" {prompt}, with commas', "blurry, \"bad\""),
           Style("Multi-line", "line one\nline two, {prompt}", "neg\r\nsecond"),
           Style("Plain", "masterpiece", ""), Style("Ünïcode ✓", "日本画 {prompt}", "")]


def test_styles_csv_round_trips_with_a1111_columns_quotes_commas_and_newlines(library, tmp_path):
    text = write_styles_csv(AWKWARD)
    assert text.splitlines()[0] == "name,prompt,negative_prompt"
    assert read_styles_csv(text) == AWKWARD
    # as A1111 writes it to disk: utf-8 with a BOM, \r\n rows; and its old `text` column, dividers and spaces
    a1111 = ('\ufeffname,prompt,negative_prompt\r\n"# DIVIDER",,\r\nOld, "x, {prompt}", "bad, worse"\r\n')
    assert read_styles_csv(a1111) == [Style("Old", "x, {prompt}", "bad, worse")]
    assert read_styles_csv("name,text\nlegacy,old style\n") == [Style("legacy", "old style", "")]
    with pytest.raises(ValidationError, match="name, prompt, negative_prompt"):
        read_styles_csv("title,body\na,b\n")

    source = tmp_path / "styles.csv"
    source.write_text(text, encoding="utf-8-sig", newline="")
    assert library.import_styles_csv(source) == len(AWKWARD)
    exported = library.export_styles_csv(user_only=True)
    assert exported.read_bytes().startswith("\ufeff".encode("utf-8"))
    with open(exported, encoding="utf-8-sig", newline="") as fh:
        assert read_styles_csv(fh.read()) == AWKWARD


def test_styles_wrap_with_the_placeholder_append_without_it_and_stack_in_order():
    wrap, tail = Style("wrap", "photo of {prompt}, 35mm", "cartoon, {prompt}"), Style("tail", "masterpiece", "lowres")
    assert apply_styles("a cat", "", [wrap]) == ("photo of a cat, 35mm", "cartoon, ")
    assert apply_styles("a cat", "ugly", [tail]) == ("a cat, masterpiece", "ugly, lowres")
    assert apply_styles("", "", [tail]) == ("masterpiece", "lowres")
    prompt, negative = apply_styles("a cat", "ugly", [wrap, tail])
    assert (prompt, negative) == ("photo of a cat, 35mm, masterpiece", "cartoon, ugly, lowres")
    # reading an infotext back gives the styles (A1111's "Styles array") and the bare prompts
    assert extract_styles(prompt, negative, [tail, wrap]) == (["wrap", "tail"], "a cat", "ugly")


def test_library_applies_styles_and_the_negative_template_and_guards_shipped_presets(library):
    assert len(library.styles.names()) >= 12 and "Photograph" in library.styles.names()
    prompt, negative = library.prepare("a fox", "", ["Photograph"], "General cleanup")
    assert prompt.startswith("professional photograph of a fox,") and negative.startswith("lowres, worst quality")
    with pytest.raises(ValidationError, match="cannot be deleted"):
        library.styles.delete("Photograph")
    library.styles.save({"name": "Photograph", "prompt": "snapshot of {prompt}", "negative_prompt": ""})
    assert library.prepare("a fox", "", ["Photograph"])[0] == "snapshot of a fox"
    library.styles.delete("Photograph")  # the user's override goes; the shipped one is back
    assert library.styles.get("Photograph")["source"] == "shipped"
    with pytest.raises(ValidationError, match="'Nope' does not exist"):
        library.prepare("a fox", "", ["Nope"])


def test_the_generate_form_gets_its_template_expanded_for_a_fixed_seed_then_styled(library):
    from studio.ui.generate_tab import with_prompt_library

    values = with_prompt_library(library, {"prompt": "a {red|blue} __shape__", "negative_prompt": "", "seed": -1,
                                           "styles": ["High quality"], "negative_template": "General cleanup"})
    assert 0 <= values["seed"] < 2**32 and "styles" not in values and "negative_template" not in values
    expected = library.templates.expand("a {red|blue} __shape__", values["seed"]) + ", masterpiece"
    assert values["prompt"].startswith(expected)
    assert values["negative_prompt"].startswith("lowres, worst quality")
    plain = with_prompt_library(library, {"prompt": "a {word} stays", "negative_prompt": "", "seed": -1})
    assert (plain["prompt"], plain["seed"]) == ("a {word} stays", -1)


# ---------------------------------------------------------------------- templates and wildcards
def test_templates_expand_nested_choices_and_nested_wildcards_the_same_for_the_same_seed(library):
    write_wildcard(library, "animals/cats", ["tabby", "siamese {kitten|cat}"])
    write_wildcard(library, "mood", ["happy", "__animals/cats__ lookalike"])
    template = "a {big|{very|quite} small} __mood__ {red|green|blue} thing, {prompt}"
    samples = library.templates.samples(template, 40, seed=3)
    assert samples == library.templates.samples(template, 40, seed=3)
    assert library.templates.expand(template, 3 + 7) == samples[7]
    assert len(set(samples)) > 5 and all(s.endswith(", {prompt}") for s in samples)
    assert all("{" not in s[:-9] and "__" not in s for s in samples)
    assert any("very small" in s or "quite small" in s for s in samples)
    assert any("siamese kitten" in s or "siamese cat" in s for s in samples)
    # shipped examples are found too; the user's folder wins over them
    assert library.templates.expand("__color__", 1) in {"red", "green", "blue", "yellow", "purple", "orange",
                                                        "white", "black"}
    write_wildcard(library, "color", ["teal"])
    assert library.templates.expand("__color__", 1) == "teal"


def test_a_missing_wildcard_is_a_named_error_saying_where_it_looked(library):
    with pytest.raises(ValidationError) as caught:
        library.templates.check("a __nowhere__ cat")
    message = str(caught.value)
    assert "__nowhere__" in message and str(library.wildcards.folders[0] / "nowhere.txt") in message
    assert "assets" in message and caught.value.field == "wildcard"
    with pytest.raises(ValidationError, match="never closed"):
        library.templates.check("a {red|blue cat")
    with pytest.raises(ValidationError, match="empty choice"):
        library.templates.check("a {red||blue} cat")
    with pytest.raises(ValidationError, match="unknown variable"):
        library.templates.check("a {colour} cat", variables={"color": ["red"]})


def test_a_5000_line_wildcard_is_read_once_and_expands_fast(library):
    write_wildcard(library, "big", [f"option {i}" for i in range(5000)])
    start = time.perf_counter()
    picks = {library.templates.expand("__big__ and __big__", seed) for seed in range(1000)}
    assert time.perf_counter() - start < 1.0 and len(picks) > 900
    path = library.wildcards.folders[0] / "big.txt"
    cached = library.wildcards._cache[path][1]
    assert library.wildcards.options("big") is cached  # no re-read while the file is unchanged
    path.write_text("changed\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert library.wildcards.options("big") == ["changed"]


def test_the_schedule_service_expands_wildcards_with_the_same_expander(services):
    schedules = services.schedules
    assert type(schedules.templates) is type(services.prompts.templates)
    assert schedules.templates.expand("a __shape__ {x}", 5, {"x": ["on blue"]}) == \
        services.prompts.templates.expand("a __shape__ {x}", 5, {"x": ["on blue"]})


# ---------------------------------------------------------------------- saved prompts
def test_editing_a_saved_prompt_keeps_versions_to_compare_and_restore(library):
    saved = library.saved
    first = saved.save("fox", "a fox in the snow", "blurry", "Animals, winter, animals")
    assert first["tags"] == ["animals", "winter"] and len(first["versions"]) == 1
    edited = saved.save("fox", "a red fox in the snow", "blurry", "animals", prompt_id=first["id"])
    assert edited["prompt"] == "a red fox in the snow" and len(saved.versions(first["id"])) == 2
    assert saved.save("fox", "a red fox in the snow", "blurry", "animals", prompt_id=first["id"]) == \
        saved.get(first["id"])  # an unchanged save adds no version
    diff = saved.compare(first["id"], 1, 2)
    assert "-prompt: a fox in the snow" in diff and "+prompt: a red fox in the snow" in diff
    assert "-tags: animals, winter" in diff
    restored = saved.restore(first["id"], 1)
    assert restored["prompt"] == "a fox in the snow" and len(saved.versions(first["id"])) == 3
    with pytest.raises(ValidationError, match="version must be between 1 and 3"):
        saved.version(first["id"], 4)
    saved.save("cat", "a cat", tags="animals", favourite=True)
    assert [d["name"] for d in saved.list()] == ["cat", "fox"]  # favourites first
    assert [d["name"] for d in saved.list("snow")] == ["fox"]
    assert [d["name"] for d in saved.list(favourites_only=True)] == ["cat"]
    with pytest.raises(ValidationError, match="name must be"):
        saved.save("", "x")


# ---------------------------------------------------------------------- history
def test_history_is_newest_first_searchable_distinct_and_bounded(tmp_path):
    clock = iter(range(100)).__next__
    history = PromptHistory(JsonStore(tmp_path / "history.json"), max_entries=3, clock=clock)
    for prompt in ("a red circle", "a blue square", "a red circle", "a green star", "a red triangle"):
        history.record(prompt, "blurry")
    entries = history.search()
    assert [e["prompt"] for e in entries] == ["a red triangle", "a green star", "a red circle"]
    assert entries[2]["count"] == 2
    assert [e["prompt"] for e in history.search("red")] == ["a red triangle", "a red circle"]


def test_generating_records_the_prompt_in_the_history(services):
    services.generation.generate(GenerationRequest(prompt="a history circle", negative_prompt="noise",
                                                   model=TINY_MODEL_ID, steps=1, width=64, height=64, seed=1))
    entry = services.prompts.history.search("history")[0]
    assert (entry["prompt"], entry["negative_prompt"], entry["count"]) == ("a history circle", "noise", 1)


# ---------------------------------------------------------------------- builder
def test_builder_writes_weights_in_a1111_syntax(tmp_path):
    lists = BuilderLists(tmp_path)
    vocab = lists.vocabulary()
    assert "oil painting" in vocab.lists["medium"] and set(vocab.lists) == set(vocab.labels)
    prompt = compose(vocab, {"subject": ["a fox (red)"], "medium": ["oil painting"], "lighting": ["rim light",
                                                                                                   "neon"]},
                     {"medium": 1.2, "lighting": 0.85, "subject": 1})
    assert prompt == r"a fox \(red\), (oil painting:1.2), (rim light:0.85), (neon:0.85)"
    with pytest.raises(ValidationError, match="medium weight must be between 0.0 and 2.0"):
        compose(vocab, {"medium": ["x"]}, {"medium": 3})
    lists.save("medium", "gouache\n\n# comment\nfresco")
    assert lists.terms("medium") == ["gouache", "fresco"]
    builtin = lists.vocabulary(builtin=True)
    assert "circle" in builtin.lists["subject"] and "red" in builtin.lists["colours"]
    assert compose(builtin, {"subject": ["circle"], "colours": ["red"], "medium": ["small"],
                             "framing": ["at the top"], "lighting": ["on a blue background"]},
                   {"colours": 1.3}) == "a small (red:1.3) circle at the top on a blue background"


# ---------------------------------------------------------------------- variation seeds
def variation_request(**kw) -> GenerationRequest:
    base = dict(prompt="a red circle", model=TINY_MODEL_ID, steps=3, width=64, height=64, seed=11, sampler="Euler a",
                variation_seed=99, variation_strength=0.3)
    return GenerationRequest(**{**base, **kw})


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_a_variation_is_written_as_a1111_does_and_made_again_from_its_infotext(services):
    generation = services.generation
    first = generation.generate(variation_request(batch_count=2)).images
    assert [(i.seed, i.variation_seed) for i in first] == [(11, 99), (11, 100)]  # the seed stays, the variation counts
    text = read_png_parameters(first[1].path)
    assert "Variation seed: 100, Variation seed strength: 0.3" in text
    fields = infotext_to_fields(parse_infotext(text))
    assert (fields["seed"], fields["variation_seed"], fields["variation_strength"]) == (11, 100, 0.3)
    again = generation.generate(GenerationRequest(
        prompt=fields["prompt"], model=TINY_MODEL_ID, sampler=fields["sampler"], steps=fields["steps"],
        cfg_scale=fields["cfg_scale"], width=fields["width"], height=fields["height"], seed=fields["seed"],
        variation_seed=fields["variation_seed"], variation_strength=fields["variation_strength"])).images[0]
    assert np.array_equal(pixels(again.path), pixels(first[1].path))

    plain = generation.generate(variation_request(variation_strength=0)).images[0]
    assert "Variation seed" not in plain.infotext
    assert not np.array_equal(pixels(plain.path), pixels(first[0].path))
    varied = generation.generate(variation_request(variation_strength=1.0, seed=5, sampler="Euler")).images[0]
    own = generation.generate(variation_request(variation_strength=1.0, seed=6, sampler="Euler")).images[0]
    assert np.abs(pixels(varied.path) - pixels(own.path)).mean() < 2  # strength 1: the variation seed's noise


def test_variations_work_in_img2img_and_are_reproducible(services):
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    req = variation_request(mode="img2img", init_image=init, strength=0.8, sampler="Euler")
    one, two = (services.generation.generate(req).images[0] for _ in range(2))
    plain = services.generation.generate(variation_request(mode="img2img", init_image=init, strength=0.8,
                                                           sampler="Euler", variation_strength=0)).images[0]
    assert np.array_equal(pixels(one.path), pixels(two.path))
    assert not np.array_equal(pixels(one.path), pixels(plain.path))


@pytest.mark.parametrize(("changes", "field"), [
    (dict(variation_strength=1.5), "variation_strength"), (dict(variation_strength=-0.1), "variation_strength"),
    (dict(variation_seed=-2), "variation_seed"), (dict(variation_seed=2**32), "variation_seed"),
])
def test_variation_fields_are_validated_with_their_range(services, changes, field):
    with pytest.raises(ValidationError) as caught:
        services.generation.validate(variation_request(**changes))
    assert caught.value.field == field and "between" in str(caught.value)


# ---------------------------------------------------------------------- the Prompts tab's API
def table_rows(value) -> list:
    """A Dataframe output as gradio_client returns it ({"headers", "data"}) -> its rows."""
    return value["data"] if isinstance(value, dict) else value


def test_the_prompts_tab_api_answers(served):
    from gradio_client import Client

    url, services = served
    client = Client(url, verbose=False)
    styles = client.predict(api_name="/styles_list")
    assert any(row[0] == "Photograph" for row in styles)
    samples = client.predict(template_text="a {red|blue} __shape__", count=3, seed=4, api_name="/wildcards_preview")
    assert samples.splitlines() == services.prompts.templates.samples("a {red|blue} __shape__", 3, 4)
    with pytest.raises(Exception, match="__missing__"):
        client.predict(template_text="a __missing__", count=1, seed=0, api_name="/wildcards_preview")
    prompt_id, table, versions, _ = client.predict(prompt_id="", name="api fox", prompt="a fox",
                                                   negative_prompt="", tags="api", favourite=False,
                                                   api_name="/prompts_save")
    listed = client.predict(search="api fox", tag="", favourites=False, api_name="/prompts_list")
    assert [row[0] for row in table_rows(listed)] == [prompt_id] and table_rows(versions)[0][0] == 1
    composed = client.predict(builtin="Editable lists", subject=["a fox"], medium=["oil painting"],
                              medium_weight=1.2, api_name="/builder_compose")
    assert composed == "a fox, (oil painting:1.2)"
    _, grid, info, status = client.predict(model=TINY_MODEL_ID, prompt="a grid circle", steps=1, size=64, count=2,
                                           first_seed=30, api_name="/seed_explore")
    assert len(grid) == 2 and "Seed: 30" in info and "seed 30, 31" in status
    _, grid, info, _ = client.predict(model=TINY_MODEL_ID, prompt="a grid circle", steps=1, size=64, seed=30,
                                      count=2, strength=0.25, variation_seed=7, api_name="/seed_variations")
    assert len(grid) == 2 and "Variation seed: 7, Variation seed strength: 0.25" in info
    history = client.predict(search="grid circle", api_name="/history_search")
    assert table_rows(history)[0][3] == "a grid circle"


def test_png_info_gives_back_the_bare_prompt_and_the_styles_it_was_made_with(served):
    """A1111's "apply styles if any": an image made with a style reads back as its own prompt plus the style."""
    from gradio_client import Client, handle_file

    from tests.test_app_e2e import generate_args

    url, _ = served
    client = Client(url, verbose=False)
    _, images, info, _ = client.predict(**generate_args("a teal kite", styles=["Photograph"]), api_name="/generate")
    assert "professional photograph of a teal kite" in info
    out = client.predict(image=handle_file(images[0]["image"]), api_name="/png_info")
    values = [v.get("value") if isinstance(v, dict) and "__type__" in v else v for v in out]
    assert values[0] == "a teal kite" and values[-1] == ["Photograph"]


@pytest.mark.browser
def test_browser_previews_a_template_and_sends_it_to_generate_and_to_a_schedule(served):
    from playwright.sync_api import sync_playwright

    from tests.test_app_e2e import open_page, require_chromium, type_prompt

    require_chromium()
    url, _ = served
    template = "a {red|blue} __shape__ in the centre"
    with sync_playwright() as p:
        browser, page, errors = open_page(p, url)
        try:
            page.get_by_role("tab", name="Prompts").click()
            page.get_by_role("tab", name="Wildcards & templates").click()
            type_prompt(page, template, "#template-text textarea")
            page.click("#template-preview")
            samples = "document.querySelector('#template-samples textarea').value"
            page.wait_for_function(f"{samples}.split('\\n').filter(Boolean).length >= 8", timeout=30_000)
            lines = page.evaluate(samples).splitlines()
            assert all(("red" in s or "blue" in s) and "__" not in s and "{" not in s for s in lines if s)
            page.click("#template-send")
            page.wait_for_function(
                f"document.querySelector('#prompt textarea').value === {template!r}", timeout=30_000)
            page.get_by_role("tab", name="Prompts").click()
            page.click("#template-schedule")
            page.wait_for_function(f"document.querySelector('#schedule-prompts textarea').value === {template!r}",
                                   timeout=30_000)
            assert page.locator("#schedule-prompts textarea").is_visible()  # the Schedule tab is open
        finally:
            browser.close()
    assert not errors, errors
