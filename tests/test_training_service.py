"""TrainingService: datasets, validation, background runs with history, LoRA in Generate, one run at a time."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.errors import BusyError, ValidationError
from studio.generation_service import GenerationRequest
from studio.training_service import DatasetItem
from tests.conftest import TINY_MODEL_ID
from training.lora_trainer import LoraTrainingConfig
from training.world import concept_scene, render


@pytest.fixture
def star_folder(tmp_path):
    folder = tmp_path / "stars"
    folder.mkdir()
    for seed in range(5):
        scene = concept_scene(seed, "star")
        render(scene, 64).save(folder / f"{seed}.png")
        (folder / f"{seed}.txt").write_text(scene.caption)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return folder


def cfg(**kw):
    values = dict(base_model="", name="stars", rank=4, alpha=4, learning_rate=5e-3, max_steps=20, batch_size=2,
                  resolution=64, checkpoint_every=10, validation_every=10, validation_prompts=["a star"],
                  validation_steps=2)
    values.update(kw)
    return LoraTrainingConfig(**values)


def wait_for(services, run_id, statuses=("done", "stopped", "failed"), timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        live = services.training.live(run_id)
        if live and live.status in statuses:
            return live
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not finish")


def test_dataset_skips_corrupt_images_and_reads_captions(services, star_folder):
    items, skipped = services.training.load_dataset([str(star_folder)])
    assert [i.caption for i in items] == [concept_scene(seed, "star").caption for seed in range(5)]
    assert len(skipped) == 1 and skipped[0].startswith("broken.png: "), skipped  # the error's name varies with PIL
    tagged = services.training.add_trigger(items, "sks")
    assert all(i.caption.startswith("sks, ") for i in tagged)


def test_caption_files_with_several_lines_become_phrasing_variants(services, star_folder, tmp_path):
    """A .txt with one phrasing per line reads as "|"-separated variants; the trigger word goes on each."""
    import shutil

    shutil.copy(star_folder / "0.png", tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a red star\n\nstar, red, on blue\n")
    items, _ = services.training.load_dataset([str(tmp_path / "a.png")])
    assert items[0].caption == "a red star | star, red, on blue"
    tagged = services.training.add_trigger(items, "sks")
    assert tagged[0].caption == "sks, a red star | sks, star, red, on blue"
    assert services.training.add_trigger(tagged, "sks") == tagged


@pytest.mark.parametrize("overrides,field", [
    ({"rank": 0}, "rank"), ({"learning_rate": 5.0}, "learning_rate"), ({"max_steps": 0}, "max_steps"),
    ({"name": "../evil"}, "name"), ({"lr_scheduler": "magic"}, "lr_scheduler"),
    ({"train_embedding": True}, "trigger_word"),
    ({"train_embedding": True, "trigger_word": "two words"}, "trigger_word"),
    ({"train_embedding": True, "trigger_word": "star", "embedding_learning_rate": 9.0}, "embedding_learning_rate"),
    ({"subject_weight": 0.5}, "subject_weight"), ({"min_snr_gamma": -1}, "min_snr_gamma"),
    ({"min_snr_gamma": 50}, "min_snr_gamma"), ({"lora_dropout": -0.1}, "lora_dropout"),
    ({"lora_dropout": 1.0}, "lora_dropout"),
    ({"train_text_encoder": True, "text_encoder_learning_rate": 0.5}, "text_encoder_learning_rate"),
    ({"loraplus_lr_ratio": 0.5}, "loraplus_lr_ratio"), ({"loraplus_lr_ratio": 100}, "loraplus_lr_ratio"),
    ({"train_embedding": True, "trigger_word": "star", "embedding_init": "x" * 201}, "embedding_init"),
    ({"train_embedding": True, "trigger_word": "star", "max_steps": 10, "embedding_only_steps": 10},
     "embedding_only_steps"),
    ({"train_attention": False, "train_conv": False}, "lora_layers"),
    ({"prior_distillation": True}, "prior_distillation"),
    ({"skip_blocks": ["up_blocks.1", "decoder"]}, "skip_blocks"),
])
def test_bad_parameters_name_the_field(services, star_folder, overrides, field):
    items, _ = services.training.load_dataset([str(star_folder)])
    with pytest.raises(ValidationError) as err:
        services.training.start(cfg(**overrides), items, TINY_MODEL_ID)
    assert err.value.field == field


def test_skip_blocks_are_read_from_text_and_checked_against_the_base_unet(services, star_folder):
    from studio.training_service import parse_skip_blocks

    assert parse_skip_blocks(" up_blocks.1,mid_block  up_blocks.1 ") == ["up_blocks.1", "mid_block"]
    assert parse_skip_blocks("") == []
    items, _ = services.training.load_dataset([str(star_folder)])
    run_id = services.training.start(cfg(max_steps=2, validation_every=0, skip_blocks=["up_blocks.7"]), items,
                                     TINY_MODEL_ID)
    live = wait_for(services, run_id)
    assert live.status == "failed" and "no block 'up_blocks.7'" in live.error


def test_empty_dataset_and_missing_captions(services, star_folder):
    with pytest.raises(ValidationError, match="dataset is empty"):
        services.training.start(cfg(), [], TINY_MODEL_ID)
    no_caption = [DatasetItem(str(star_folder / "0.png"), "")]
    with pytest.raises(ValidationError, match="captions missing"):
        services.training.start(cfg(), no_caption, TINY_MODEL_ID)


def test_regularization_images_are_copied_and_checked(services, star_folder, tmp_path):
    items, _ = services.training.load_dataset([str(star_folder)])
    with pytest.raises(ValidationError) as err:
        services.training.start(cfg(regularization_share=0.5), items, TINY_MODEL_ID)
    assert err.value.field == "regularization"
    with pytest.raises(ValidationError) as err:
        services.training.start(cfg(regularization_share=0.95), items, TINY_MODEL_ID, items)
    assert err.value.field == "regularization_share"
    prior = [DatasetItem(i.path, "a shape") for i in items[:2]]
    run_id = services.training.start(cfg(max_steps=4, regularization_share=0.5, prior_distillation=True,
                                         validation_every=0), items, TINY_MODEL_ID, prior)
    assert wait_for(services, run_id).status == "done"
    run_dir = services.training.root / "runs" / run_id
    assert sorted(p.name for p in (run_dir / "regularization").iterdir()) == ["0000.png", "0000.txt", "0001.png",
                                                                            "0001.txt"]
    record = next(r for r in services.training.list_runs() if r["id"] == run_id)
    assert record["regularization_size"] == 2


def test_run_in_background_records_history_and_lora_changes_generation(services, star_folder):
    items, _ = services.training.load_dataset([str(star_folder)])
    run_id = services.training.start(cfg(max_steps=30), items, TINY_MODEL_ID)
    with pytest.raises(BusyError):
        services.training.start(cfg(name="second"), items, TINY_MODEL_ID)
    live = wait_for(services, run_id)
    assert live.status == "done", live.error
    assert [s for s, _ in live.losses] == list(range(1, 31))
    assert len(live.validation) == 3 and live.lora_path.endswith("stars.safetensors")
    record = services.training.list_runs()[0]
    assert record["status"] == "done" and record["final_loss"] == live.losses[-1][1] and record["step"] == 30
    assert services.training.lora_file("stars") == Path(live.lora_path) and Path(live.lora_path).is_file()
    assert (services.settings.data_dir / "training" / "runs" / run_id / "loss.png").exists()

    base = dict(prompt="a star", model=TINY_MODEL_ID, steps=2, width=64, height=64, seed=3, sampler="Euler")
    plain = services.generation.generate(GenerationRequest(**base)).images[0]
    tagged = services.generation.generate(GenerationRequest(**dict(base, prompt="a star <lora:stars:1>"))).images[0]
    again = services.generation.generate(GenerationRequest(**base)).images[0]
    a, b, c = (np.asarray(Image.open(x.path), dtype=np.float32) for x in (plain, tagged, again))
    assert np.abs(a - b).mean() > 0.01
    assert np.array_equal(a, c), "the LoRA is unloaded after the run"
    assert 'Lora weights: "stars: 1"' in tagged.infotext

    grid = services.training.compare(run_id, "a star", 1, [0.0, 1.0], steps=2)
    assert grid.size == (110 + 2 * (64 + 4), 18 + 3 * (64 + 4))  # labels; 2 weights x checkpoints 10, 20, 30


def test_trigger_embedding_travels_with_the_lora_into_generate(services, star_folder):
    """Pivotal tuning through the studio: the sidecar is installed beside the LoRA (not listed as a LoRA of its
    own), `star` in a prompt with the LoRA uses the trained token, and the tokenizer is clean afterwards."""
    from pipelines.embeddings import sidecar_path

    items, _ = services.training.load_dataset([str(star_folder)])
    run_id = services.training.start(cfg(max_steps=6, name="starpt", trigger_word="star", train_embedding=True,
                                         validation_every=3), items, TINY_MODEL_ID)
    live = wait_for(services, run_id)
    assert live.status == "done", live.error
    assert sidecar_path(live.lora_path).exists() and "starpt" in services.models.registry.lora_files()
    assert not any(name.endswith(".embedding") for name in services.models.registry.lora_files())

    base = dict(model=TINY_MODEL_ID, steps=2, width=64, height=64, seed=3, sampler="Euler")
    with_star = services.generation.generate(GenerationRequest(prompt="a star <lora:starpt:1>", **base)).images[0]
    sidecar_path(live.lora_path).rename(live.lora_path + ".off")  # the same LoRA without its embedding
    no_embedding = services.generation.generate(GenerationRequest(prompt="a star <lora:starpt:1>", **base)).images[0]
    a, b = (np.asarray(Image.open(x.path), dtype=np.float32) for x in (with_star, no_embedding))
    assert np.abs(a - b).mean() > 0.01, "the trained embedding changes what 'star' means"
    assert "a star <lora:starpt:1>" in with_star.infotext  # the user's prompt is recorded as typed
    with services.models.pipeline(TINY_MODEL_ID, "txt2img") as pipe:
        assert "<star>" not in pipe.tokenizer.get_vocab()

    # a later LoRA of the same name without an embedding does not inherit the old one's
    Path(live.lora_path + ".off").rename(sidecar_path(live.lora_path))
    again = services.training.start(cfg(max_steps=2, name="starpt", validation_every=0), items, TINY_MODEL_ID)
    assert wait_for(services, again).status == "done" and not sidecar_path(live.lora_path).exists()


def test_unknown_lora_is_refused(services):
    with pytest.raises(ValidationError) as err:
        services.generation.validate(GenerationRequest(prompt="x <lora:nope:1>", model=TINY_MODEL_ID,
                                                       width=64, height=64))
    assert err.value.field == "lora"


def test_stop_and_resume_continue_the_curve(services, star_folder):
    items, _ = services.training.load_dataset([str(star_folder)])
    run_id = services.training.start(cfg(max_steps=400, checkpoint_every=5, validation_every=0), items,
                                     TINY_MODEL_ID)
    deadline = time.time() + 120
    while time.time() < deadline and (services.training.live(run_id).step < 8):
        time.sleep(0.1)
    services.training.stop(run_id)
    live = wait_for(services, run_id)
    assert live.status == "stopped"
    stopped_at = live.step
    services.training.runs.update_where("id", run_id, {"config": {**services.training.list_runs()[0]["config"],
                                                                  "max_steps": stopped_at + 5}})
    services.training.resume(run_id)
    live = wait_for(services, run_id)
    assert live.status == "done" and [s for s, _ in live.losses] == list(range(1, stopped_at + 6))


def test_every_builtin_preset_sets_every_field_with_valid_values(services, star_folder):
    from studio.training_service import PRESET_FIELDS, PRESETS, lora_layers

    items, _ = services.training.load_dataset([str(star_folder)])
    for name, params in PRESETS.items():
        assert tuple(params) == PRESET_FIELDS, name
        layers = params["lora_layers"]
        values = {k: v for k, v in params.items() if k != "lora_layers"}
        checked = services.training.validate(cfg(trigger_word="star", **values, **lora_layers(layers)), items)
        assert checked.max_steps == params["max_steps"] and checked.rank == params["rank"], name
    shape = PRESETS["new shape"]
    assert shape["train_embedding"] and shape["lora_layers"] == "convolutions only" and shape["lora_dropout"] > 0


def test_user_presets_and_epochs(services):
    services.training.save_preset("mine", {"rank": 12, "learning_rate": 3e-4})
    assert services.training.presets()["mine"] == {"rank": 12, "learning_rate": 3e-4}
    assert set(services.training.presets()) == {"quick", "balanced", "quality", "new shape", "mine"}
    with pytest.raises(ValidationError):
        services.training.save_preset("quick", {"rank": 1})
    with pytest.raises(ValidationError):
        services.training.save_preset("bad", {"colour": 1})
    assert services.training.steps_for_epochs(2, 30, 4) == 15


def test_lora_layer_choices_map_to_the_trainer_switches():
    from studio.training_service import LORA_LAYERS, lora_layers

    assert lora_layers("convolutions only") == {"train_attention": False, "train_conv": True}
    assert all(any(lora_layers(choice).values()) for choice in LORA_LAYERS)
    with pytest.raises(ValidationError) as err:
        lora_layers("everything")
    assert err.value.field == "lora_layers" and "attention" in str(err.value)


def test_validation_images_use_the_base_models_recommended_guidance(tmp_path, tiny_models_dir, star_folder):
    """A model folder's generation_defaults.json (CFG scale and rescale) sets how validation images are drawn,
    as the Generate tab would draw them."""
    from tests.conftest import services_with_recommended

    services = services_with_recommended(tmp_path, tiny_models_dir, {"cfg_scale": 4.5, "cfg_rescale": 0.7})
    try:
        items, _ = services.training.load_dataset([str(star_folder)])
        run_id = services.training.start(cfg(max_steps=4, validation_every=4, checkpoint_every=4), items,
                                         TINY_MODEL_ID)
        live = wait_for(services, run_id)
        assert live.status == "done", live.error
        assert len(live.validation) == 1
        config = services.training.list_runs()[0]["config"]
        assert (config["validation_guidance"], config["validation_rescale"]) == (4.5, 0.7)
    finally:
        services.training.shutdown()
