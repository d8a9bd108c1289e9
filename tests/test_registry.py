"""ModelRegistry: listing an A1111-style folder, resolving ids, refusing unsafe or unknown models."""

from __future__ import annotations

import pytest

from pipelines.registry import BUILTIN_ID, ModelNotFound, ModelRegistry, check_relative_name


def make_registry(tmp_path, offline=True, builtin=False):
    builtin_dir = tmp_path / "builtin"
    if builtin:
        builtin_dir.mkdir()
        (builtin_dir / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    models = tmp_path / "models"
    (models / "Stable-diffusion" / "sub").mkdir(parents=True)
    folder = models / "Stable-diffusion" / "sub" / "mymodel"
    folder.mkdir()
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
    (models / "Stable-diffusion" / "broken.safetensors").write_bytes(b"\x00" * 64)
    (models / "Stable-diffusion" / "old.ckpt").write_bytes(b"pickle")
    return ModelRegistry(builtin_dir, models, offline=offline)


def test_lists_builtin_first_then_folder_models(tmp_path):
    reg = make_registry(tmp_path, builtin=True)
    ids = [m.id for m in reg.list_models()]
    assert ids[0] == BUILTIN_ID
    assert ids[1:] == ["local:broken.safetensors", "local:sub/mymodel"]
    assert not any(i.endswith(".ckpt") for i in ids)
    assert reg.resolve("local:sub/mymodel").family == "sdxl"


def test_no_model_installed_message(tmp_path):
    reg = make_registry(tmp_path)
    with pytest.raises(ModelNotFound, match="No model is installed"):
        reg.resolve(BUILTIN_ID)


@pytest.mark.parametrize("name", ["../x", "a/../../b", "/etc/passwd", "a\\b", ""])
def test_path_escapes_refused(name):
    with pytest.raises(ValueError):
        check_relative_name(name)


def test_corrupt_and_pickled_files_get_clear_errors(tmp_path):
    reg = make_registry(tmp_path)
    with pytest.raises(ValueError, match="not a readable .safetensors"):
        reg.resolve("local:broken.safetensors")
    with pytest.raises(ValueError, match="pickled checkpoints"):
        reg.resolve("local:old.ckpt")
    with pytest.raises(ValueError, match="'..'"):
        reg.resolve("local:../secrets")


def test_hub_ids_offline_and_online(tmp_path):
    with pytest.raises(ModelNotFound, match="offline"):
        make_registry(tmp_path).resolve("stabilityai/sd-turbo")
    online = ModelRegistry(tmp_path / "b", tmp_path / "m", offline=False)
    source = online.resolve("stabilityai/sdxl-turbo")
    assert (source.kind, source.location, source.family) == ("hub", "stabilityai/sdxl-turbo", "sdxl")
    with pytest.raises(ValueError):
        online.resolve("not a model id")


def test_hub_download_reports_progress_and_loads_from_the_fetched_folder(tmp_path, tiny_models_dir, monkeypatch):
    """A Hugging Face id is fetched with byte progress, then loaded from the local folder (no network here)."""
    import huggingface_hub

    from pipelines.devices import choose_device
    from pipelines.loading import load_pipeline
    from pipelines.registry import ModelSource

    folder = str(tiny_models_dir / "Stable-diffusion" / "tiny-sd")

    def fake_snapshot_download(repo, local_files_only, allow_patterns, tqdm_class=None):
        assert repo == "owner/tiny" and not local_files_only
        bar = tqdm_class(total=1000, unit="B", disable=True)
        for _ in range(4):
            bar.update(250)
        bar.close()
        return folder

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    seen = []
    pipe = load_pipeline(ModelSource("hf:owner/tiny", "hub", "owner/tiny"), choose_device("cpu", "float32"),
                         offline=False, report=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (1000, 1000) and len(seen) == 4
    assert pipe.config._name_or_path == folder and tuple(pipe.unet.config.block_out_channels) == (4, 8)


def test_recommended_settings_fall_back_on_defaults(tmp_path):
    from pipelines.registry import DEFAULT_GENERATION, ModelSource, recommended_settings

    folder = tmp_path / "m"
    folder.mkdir()
    source = ModelSource("local:m", "diffusers", str(folder))
    assert recommended_settings(source) == DEFAULT_GENERATION
    (folder / "generation_defaults.json").write_text("{not json")
    assert recommended_settings(source) == DEFAULT_GENERATION
    (folder / "generation_defaults.json").write_text('{"cfg_scale": 5, "cfg_rescale": "high"}')
    assert recommended_settings(source) == {"cfg_scale": 5.0, "cfg_rescale": 0.0}


def test_model_card_names_the_recommended_settings(tmp_path):
    from training.model_card import recommended_note

    assert recommended_note(tmp_path) == ""
    (tmp_path / "generation_defaults.json").write_text('{"cfg_scale": 5, "cfg_rescale": 0.7}')
    assert "CFG scale 5, CFG rescale 0.7" in recommended_note(tmp_path)


def test_a_diffusers_folder_is_one_model_and_its_parts_are_not_listed(tmp_path):
    reg = make_registry(tmp_path)
    folder = reg.checkpoints_dir() / "sub" / "mymodel"
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors", "text_encoder_2/model.safetensors"):
        (folder / part).parent.mkdir(parents=True, exist_ok=True)
        (folder / part).write_bytes(b"\x00" * 16)
    (folder / "nested" / "inner").mkdir(parents=True)
    (folder / "nested" / "inner" / "model_index.json").write_text("{}")
    (reg.checkpoints_dir() / "sub" / "beside.safetensors").write_bytes(b"\x00" * 16)
    ids = [m.id for m in reg.list_models()]
    assert ids == ["local:broken.safetensors", "local:sub/beside.safetensors", "local:sub/mymodel"]
    for part in ("sub/mymodel/unet/diffusion_pytorch_model.safetensors", "sub/mymodel/nested/inner",
                 "sub/mymodel/text_encoder/model.safetensors"):
        with pytest.raises(ValueError, match="is a part of the diffusers model 'sub/mymodel'.*'local:sub/mymodel'"):
            reg.resolve(f"local:{part}")
    assert reg.resolve("local:sub/mymodel").kind == "diffusers"


def test_a_vae_beside_a_checkpoint_is_not_listed_as_a_model(tmp_path):
    root = tmp_path / "models" / "Stable-diffusion"
    root.mkdir(parents=True)
    (root / "anime.safetensors").write_bytes(b"")
    (root / "anime.vae.safetensors").write_bytes(b"")
    ids = [m.id for m in ModelRegistry(tmp_path / "none", tmp_path / "models").list_models()]
    assert ids == ["local:anime.safetensors"]
