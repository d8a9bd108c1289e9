"""A1111 single-file checkpoints: bundled configs, offline loading (sockets blocked), SDXL, family detection from
real key layouts, A1111's .yaml beside a checkpoint, clear errors for bad files, and --offline."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
from PIL import Image

from pipelines import single_file
from pipelines.single_file import FAMILIES, SingleFileError, detect_family, family_from_yaml, load_single_file
from studio.errors import StudioError
from studio.generation_service import GenerationRequest
from tests.conftest import make_settings
from tests.ldm_checkpoints import real_family_shapes, tiny_family, write_header_file


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """(single file, configs root with a tiny "v1" folder, source pipeline)."""
    return tiny_family("sd", tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    return tiny_family("sdxl", tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection attempt is refused and recorded."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] or args)
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def installed(tmp_path, source, name):
    """A models folder holding `source` as Stable-diffusion/<name>."""
    import shutil

    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, models / "Stable-diffusion" / name)
    return models


# ---- the bundled config folders -----------------------------------------------------------------------------
def test_every_family_has_a_bundled_config_folder_matching_its_architecture():
    root = single_file.CONFIGS_DIR
    for name, family in FAMILIES.items():
        index = json.loads((root / name / "model_index.json").read_text())
        unet = json.loads((root / name / "unet" / "config.json").read_text())
        assert (unet["in_channels"], unet["cross_attention_dim"]) == (family.in_channels, family.context_dim), name
        assert (root / name / "vae" / "config.json").is_file() and (root / name / "scheduler").is_dir()
        for part in ("text_encoder", "text_encoder_2"):
            if (index.get(part) or [None])[0]:
                assert (root / name / part / "config.json").is_file(), (name, part)
                assert (root / name / part.replace("text_encoder", "tokenizer") / "special_tokens_map.json").is_file()
        assert not list((root / name).rglob("*.safetensors")) and not list((root / name).rglob("*.bin"))
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size < 3_000_000, size


def test_shared_tokenizer_is_the_real_clip_vocabulary_with_each_familys_pad():
    tok = single_file.family_tokenizer(single_file.CONFIGS_DIR / "v1", "tokenizer", single_file.CONFIGS_DIR)
    assert len(tok) == 49408 and tok.model_max_length == 77
    # ids of the real openai/clip-vit-large-patch14 tokenizer for this text
    assert tok("a red circle").input_ids == [49406, 320, 736, 7117, 49407]
    assert tok.pad_token_id == 49407
    sd2 = single_file.family_tokenizer(single_file.CONFIGS_DIR / "v2", "tokenizer", single_file.CONFIGS_DIR)
    assert sd2.pad_token == "!" and sd2.pad_token_id == 0
    xl2 = single_file.family_tokenizer(single_file.CONFIGS_DIR / "xl_base", "tokenizer_2", single_file.CONFIGS_DIR)
    assert xl2.pad_token_id == 0


def test_the_bundled_folders_are_what_the_build_tool_writes(tmp_path):
    from tools.build_model_configs import build

    out = build(tmp_path / "configs")
    bundled = single_file.CONFIGS_DIR
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(bundled).as_posix() for p in bundled.rglob("*") if p.is_file())
    assert all((out / n).read_bytes() == (bundled / n).read_bytes() for n in names)


def test_ldm_key_mapping_is_the_inverse_of_diffusers_conversion_at_real_size():
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from pipelines.ldm_keys import unet_to_ldm, vae_to_ldm

    for name in ("v1", "inpainting", "v2", "xl_base", "xl_refiner"):
        folder = single_file.CONFIGS_DIR / name
        with init_empty_weights():
            unet = UNet2DConditionModel.from_config(json.loads((folder / "unet" / "config.json").read_text()))
            vae = AutoencoderKL.from_config(json.loads((folder / "vae" / "config.json").read_text()))
        ldm = {"model.diffusion_model." + k: v for k, v in unet_to_ldm(unet.state_dict(), dict(unet.config)).items()}
        assert set(convert_ldm_unet_checkpoint(ldm, dict(unet.config))) == set(unet.state_dict()), name
        vae_ldm = {"first_stage_model." + k: v for k, v in vae_to_ldm(vae.state_dict(), dict(vae.config)).items()}
        assert set(convert_ldm_vae_checkpoint(vae_ldm, dict(vae.config))) == set(vae.state_dict()), name
        assert len(ldm) == {"xl_base": 1680, "xl_refiner": 1220}.get(name, 686) and len(vae_ldm) == 248


# ---- loading ------------------------------------------------------------------------------------------------
def test_sd1_single_file_loads_offline_with_sockets_blocked_and_generates(tmp_path, tiny_sd, monkeypatch,
                                                                          no_network):
    """End to end through the studio: registry -> bundled-config load -> 1 image, 2 steps, 64x64."""
    from studio.services import build_services

    path, configs, source = tiny_sd
    monkeypatch.setattr(single_file, "CONFIGS_DIR", configs)  # the tiny "v1" folder stands in for the real one
    monkeypatch.setattr(single_file, "detect_family", lambda p, header=None: "v1")  # tiny shapes aren't SD1's
    models = installed(tmp_path, path, "tiny-sd1.safetensors")
    services = build_services(make_settings(tmp_path, models, model="local:tiny-sd1.safetensors"))
    try:
        assert os.environ["HF_HUB_OFFLINE"] == "1"
        result = services.generation.generate(GenerationRequest(
            prompt="a red circle", model="local:tiny-sd1.safetensors", steps=2, width=64, height=64, seed=3,
            sampler="Euler"))
        assert Image.open(result.images[0].path).size == (64, 64)
        with services.models.pipeline("local:tiny-sd1.safetensors") as pipe:
            assert same_weights(pipe.unet, source.unet) and same_weights(pipe.vae, source.vae)
            assert same_weights(pipe.text_encoder, source.text_encoder)
    finally:
        services.training.shutdown()
    assert no_network == []


def test_sdxl_single_file_loads_and_generates(tiny_sdxl, no_network):
    path, configs, source = tiny_sdxl
    pipe = load_single_file(path, torch.float32, family="xl_base", configs_dir=configs)
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert same_weights(getattr(pipe, part), getattr(source, part)), part
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=2, width=64, height=64,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)
    assert no_network == []


def test_bad_files_give_clear_errors_and_leave_the_cache_usable(tmp_path, tiny_sd, tiny_models_dir):
    import shutil

    from safetensors.torch import save_file

    from studio.services import build_services

    path, _, _ = tiny_sd
    models = installed(tmp_path, path, "unknown-family.safetensors")  # real detection: tiny shapes fit no family
    shutil.copytree(tiny_models_dir / "Stable-diffusion" / "tiny-sd", models / "Stable-diffusion" / "tiny-sd")
    data = path.read_bytes()
    (models / "Stable-diffusion" / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    save_file({"weight": torch.randn(3, 3), "bias": torch.zeros(3)},
              str(models / "Stable-diffusion" / "random.safetensors"))
    services = build_services(make_settings(tmp_path, models))
    try:
        ok = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, "seed": 1, "sampler": "Euler"}
        services.generation.generate(GenerationRequest(model="local:tiny-sd", **ok))
        expected = {"truncated": "not a readable .safetensors checkpoint",
                    "random": "holds no Stable Diffusion UNet weights; found 2 tensors: ",
                    "unknown-family": "not a Stable Diffusion 1.x/2.x/SDXL checkpoint the studio knows; found"}
        for name, message in expected.items():
            with pytest.raises(StudioError, match=message) as err:
                services.generation.generate(GenerationRequest(model=f"local:{name}.safetensors", **ok))
            assert name + ".safetensors" in str(err.value)
        with pytest.raises(StudioError, match=r"UNet in_channels=4, context_dim=32"):
            services.generation.generate(GenerationRequest(model="local:unknown-family.safetensors", **ok))
        assert [e["model"] for e in services.models.stats().entries if e["kind"] == "txt2img"] == ["local:tiny-sd"]
        assert services.generation.generate(GenerationRequest(model="local:tiny-sd", **ok)).images
    finally:
        services.training.shutdown()


# ---- A1111's <name>.yaml ------------------------------------------------------------------------------------
V1_YAML = """model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.00085
    linear_end: 0.0120
    {extra}
    scale_factor: {scale}
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        in_channels: {in_channels}
        out_channels: 4
        model_channels: 320
        context_dim: {context}
"""
SDXL_YAML = """model:
  target: sgm.models.diffusion.DiffusionEngine
  params:
    scale_factor: 0.13025
    denoiser_config:
      target: sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser
      params:
        scaling_config:
          target: sgm.modules.diffusionmodules.denoiser_scaling.{scaling}
    network_config:
      target: sgm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        adm_in_channels: 2816
        in_channels: {in_channels}
        context_dim: {context}
"""


def v1_yaml(context=768, in_channels=4, v=False, scale=0.18215):
    return V1_YAML.format(extra='parameterization: "v"' if v else "", scale=scale, in_channels=in_channels,
                          context=context)


@pytest.mark.parametrize("text, family, prediction", [
    (v1_yaml(), "v1", "epsilon"),
    (v1_yaml(v=True), "v1", "v_prediction"),
    (v1_yaml(in_channels=9), "inpainting", "epsilon"),
    (v1_yaml(context=1024, v=True), "v2", "v_prediction"),
    (v1_yaml(context=1024), "v2_base", "epsilon"),
    (v1_yaml(context=1024, in_channels=9), "inpainting_v2", "epsilon"),
    (SDXL_YAML.format(scaling="EpsScaling", in_channels=4, context=2048), "xl_base", "epsilon"),
    (SDXL_YAML.format(scaling="VScaling", in_channels=4, context=2048), "xl_base", "v_prediction"),
    (SDXL_YAML.format(scaling="EpsScaling", in_channels=9, context=2048), "xl_inpaint", "epsilon"),
    (SDXL_YAML.format(scaling="EpsScaling", in_channels=4, context=1280), "xl_refiner", "epsilon"),
])
def test_a1111_yaml_maps_to_a_family(tmp_path, text, family, prediction):
    path = tmp_path / "model.yaml"
    path.write_text(text)
    found, settings = family_from_yaml(path)
    assert (found, settings["prediction_type"]) == (family, prediction)


def test_yaml_beside_a_checkpoint_is_honoured(tmp_path, tiny_sd):
    import shutil

    path, configs, _ = tiny_sd
    ckpt = tmp_path / "anime-v.safetensors"
    shutil.copyfile(path, ckpt)
    (tmp_path / "anime-v.yaml").write_text(v1_yaml(v=True, scale=0.5))
    pipe = load_single_file(ckpt, torch.float32, family="v1", configs_dir=configs)
    assert pipe.scheduler.config.prediction_type == "v_prediction" and pipe.vae.config.scaling_factor == 0.5
    without = load_single_file(path, torch.float32, family="v1", configs_dir=configs)
    assert without.scheduler.config.prediction_type == "epsilon"

    fake = write_header_file(tmp_path / "sd15-finetune.safetensors", real_family_shapes("v1"))
    (tmp_path / "sd15-finetune.yaml").write_text(v1_yaml(context=1024, v=True))
    with pytest.raises(SingleFileError, match="describes SD 2.x 768 v-prediction but sd15-finetune.safetensors "
                                              "holds SD 1.x weights"):
        single_file.resolve_family(fake)
    (tmp_path / "sd15-finetune.yaml").write_text(v1_yaml(v=True))
    resolved = single_file.resolve_family(fake)
    assert (resolved.family.name, resolved.source, resolved.prediction_type) == ("v1", "yaml", "v_prediction")


# ---- family detection from real key layouts -----------------------------------------------------------------
@pytest.mark.parametrize("family", ["v1", "inpainting", "v2", "inpainting_v2", "xl_base", "xl_inpaint",
                                    "xl_refiner"])
def test_family_is_detected_from_real_key_names_and_shapes(tmp_path, family):
    path = write_header_file(tmp_path / f"{family}.safetensors", real_family_shapes(family))
    assert detect_family(path) == family
    resolved = single_file.resolve_family(path)
    assert resolved.source == "keys" and resolved.probe_v_prediction == (family == "v2")
    from pipelines.registry import detect_family_from_file

    assert detect_family_from_file(path) == ("sdxl" if family.startswith("xl") else "sd")


def test_turbo_files_and_incomplete_files(tmp_path):
    turbo = write_header_file(tmp_path / "sd_xl_turbo_1.0_fp16.safetensors", real_family_shapes("xl_base"))
    assert detect_family(turbo) == "sdxl_turbo"
    sd_turbo = write_header_file(tmp_path / "sd_turbo.safetensors", real_family_shapes("v2"))
    assert detect_family(sd_turbo) == "sd_turbo"
    shapes = {k: v for k, v in real_family_shapes("v1").items() if not k.startswith("first_stage_model.")}
    unet_only = write_header_file(tmp_path / "unet-only.safetensors", shapes)
    with pytest.raises(SingleFileError, match=r"unet-only.safetensors \(SD 1.x\) holds no VAE weights; found "
                                              r".*model.diffusion_model.\* \(3\)"):
        detect_family(unet_only)


def test_sd2_v_prediction_test_reads_the_unets_answer():
    class FakeUNet(torch.nn.Module):
        def __init__(self, offset):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.offset = offset
            self.config = type("C", (), {"in_channels": 4, "cross_attention_dim": 8})()

        def forward(self, x, t, encoder_hidden_states):
            return type("O", (), {"sample": x + self.offset})()

    assert single_file.uses_v_prediction(FakeUNet(-2.0)) and not single_file.uses_v_prediction(FakeUNet(0.1))


# ---- offline ------------------------------------------------------------------------------------------------
def test_enforce_offline_switches_the_hub_off_even_after_import(monkeypatch, no_network):
    import huggingface_hub
    from huggingface_hub import constants

    from pipelines.offline import OFFLINE_ENV, enforce_offline, is_offline

    for name in OFFLINE_ENV:  # restored after the test
        monkeypatch.setenv(name, os.environ.get(name, ""))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    enforce_offline()
    assert is_offline() and os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    with pytest.raises(Exception) as err:
        huggingface_hub.hf_hub_download("stabilityai/sd-turbo", "model_index.json", cache_dir="/nonexistent-cache")
    assert "offline" in f"{type(err.value).__name__} {err.value}".lower() or "local" in str(err.value).lower()
    assert no_network == []


def test_main_goes_offline_before_anything_heavy_is_built(tmp_path, monkeypatch):
    import app

    seen = {}

    def fake_create_app(settings):
        seen["env"] = os.environ.get("HF_HUB_OFFLINE")
        raise SystemExit(0)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(app, "create_app", fake_create_app)
    with pytest.raises(SystemExit):
        app.main(["--offline", "--data-dir", str(tmp_path)])
    assert seen["env"] == "1"


def test_random_checkpoint_tool_writes_the_same_weights_as_folder_and_single_file(tmp_path, tiny_sd):
    """tools/make_random_checkpoint.py on the tiny "v1" config folder (the real run uses the bundled SD 1.5 one)."""
    from diffusers import StableDiffusionPipeline

    from tools.make_random_checkpoint import make_random_checkpoint

    _, configs, _ = tiny_sd
    folder, single = make_random_checkpoint(tmp_path / "models", "random", configs_dir=configs, dtype="float32")
    from_folder = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    from_file = load_single_file(single, torch.float32, family="v1", configs_dir=configs)
    for part in ("unet", "vae", "text_encoder"):
        assert same_weights(getattr(from_folder, part), getattr(from_file, part)), part
