"""The rest of an A1111 models folder, offline, on the tiny model: kohya-format LoRAs and LoCons from Lora/ and
LyCORIS/, LyCORIS formats diffusers cannot load refused by name, LoRAs for another base refused naming both with
the pipeline left clean, textual inversions from embeddings/ used by name (and TI hashes in the infotext), VAE
overrides from VAE/ in diffusers and LDM key layouts, and `<checkpoint>.vae.safetensors` picked up beside a
single-file checkpoint."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from pipelines.embeddings import EmbeddingError, read_textual_inversion
from pipelines.loras import LoraError, inspect_lora, load_lora_file
from studio.errors import ValidationError
from studio.generation_service import GenerationRequest
from studio.infotext import parse_infotext, read_png_parameters
from tests.conftest import TINY_MODEL_ID, make_settings

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
CONV_TARGETS = ["conv1", "conv2", "conv_in", "conv_out", "conv_shortcut"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


# ---- helpers ------------------------------------------------------------------------------------------------
@pytest.fixture
def models(tmp_path, tiny_models_dir) -> Path:
    """A models folder of this test's own holding the tiny SD model (so the files a test adds stay its own)."""
    root = tmp_path / "models"
    shutil.copytree(tiny_models_dir / "Stable-diffusion" / "tiny-sd", root / "Stable-diffusion" / "tiny-sd")
    return root


@pytest.fixture
def studio(tmp_path, models):
    from studio.services import build_services

    built = build_services(make_settings(tmp_path, models))
    yield built
    built.training.shutdown()


def request(**kw) -> GenerationRequest:
    base = dict(prompt="a red circle", model=TINY_MODEL_ID, steps=2, width=64, height=64, seed=7, sampler="Euler")
    base.update(kw)
    return GenerationRequest(**base)


def pixels(result) -> np.ndarray:
    return np.asarray(Image.open(result.images[0].path), dtype=np.int16)


def infotext(result) -> dict:
    return parse_infotext(read_png_parameters(result.images[0].path))


def tiny_pipe(models: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(models / "Stable-diffusion" / "tiny-sd", safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def peft_lora(pipe, conv: bool = False, rank: int = 2, alpha: float = 4.0, seed: int = 0) -> dict:
    """A random (non-zero) peft LoRA on the tiny pipeline's UNet and text encoder: {component: peft state dict}
    with diffusers/peft key names (`down_blocks.1.attentions.0.….to_q.lora_A.weight`)."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False,
                                     target_modules=UNET_TARGETS + (CONV_TARGETS if conv else [])))
    pipe.text_encoder.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False,
                                             target_modules=TEXT_TARGETS))
    found = {"unet": get_peft_model_state_dict(pipe.unet), "text_encoder": get_peft_model_state_dict(pipe.text_encoder)}
    pipe.unload_lora_weights()
    return found


KOHYA_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"}


def to_kohya(layers: dict, alpha: float) -> dict:
    """peft/diffusers LoRA keys -> kohya/A1111 names: `<module path with . as _>.lora_down.weight` (lora_A),
    `.lora_up.weight` (lora_B) and `.alpha`, prefixed lora_unet_ / lora_te_ (SD 1.x kohya names are the diffusers
    module paths, which is what diffusers' _convert_non_diffusers_lora_to_diffusers reads back)."""
    out = {}
    for component, state in layers.items():
        for key, tensor in state.items():
            module, part = key.rsplit(".lora_", 1)
            name = KOHYA_PREFIX[component] + module.replace(".", "_")
            out[f"{name}.{'lora_down' if part.startswith('A') else 'lora_up'}.weight"] = tensor.contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def write(path: Path, tensors: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def adapter_layers(pipe) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(isinstance(m, BaseTunerLayer) for part in (pipe.unet, pipe.text_encoder) for m in part.modules())


def sdxl_lora() -> dict:
    """An SDXL LoRA as kohya writes it: sgm UNet block names, 2048-wide cross-attention, lora_te1_/lora_te2_."""
    pairs = {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k": (640, 2048),
             "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": (640, 640),
             "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
             "lora_te2_text_model_encoder_layers_0_self_attn_q_proj": (1280, 1280)}
    out = {}
    for name, (n_out, n_in) in pairs.items():
        out[f"{name}.lora_down.weight"] = torch.zeros(2, n_in)
        out[f"{name}.lora_up.weight"] = torch.zeros(n_out, 2)
        out[f"{name}.alpha"] = torch.tensor(2.0)
    return out


# ---- LoRA / LoCon ---------------------------------------------------------------------------------------------
def test_kohya_lora_and_locon_load_with_their_weights_and_change_the_image(studio, models):
    from peft.utils import get_peft_model_state_dict

    pipe = tiny_pipe(models)
    plain, locon = peft_lora(pipe, seed=1), peft_lora(pipe, conv=True, seed=2)
    write(models / "Lora" / "kohya-style.safetensors", to_kohya(plain, 4.0))
    write(models / "LyCORIS" / "locon-style.safetensors", to_kohya(locon, 4.0))
    assert studio.models.lora_names() == ["kohya-style", "locon-style"]

    info = inspect_lora(models / "LyCORIS" / "locon-style.safetensors")
    assert (info.format, info.supported, info.context_width) == ("LoCon", True, 32)
    assert inspect_lora(models / "Lora" / "kohya-style.safetensors").format == "kohya LoRA"
    # the kohya names come back to the very weights they were made from (alpha/rank scaling included)
    load_lora_file(pipe, models / "LyCORIS" / "locon-style.safetensors", "x")
    for component in ("unet", "text_encoder"):
        loaded = get_peft_model_state_dict(getattr(pipe, component), adapter_name="x")
        assert loaded.keys() == locon[component].keys()
        assert all(torch.equal(loaded[k], locon[component][k]) for k in loaded), component
    assert any(".conv1." in k for k in locon["unet"])
    assert {s for m in pipe.unet.modules() for s in getattr(m, "scaling", {}).values()} == {2.0}  # alpha 4 / rank 2

    before = studio.generation.generate(request())
    with_lora = studio.generation.generate(request(prompt="a red circle <lora:kohya-style:1>"))
    with_locon = studio.generation.generate(request(prompt="a red circle <lora:locon-style:1>"))
    assert np.abs(pixels(with_lora) - pixels(before)).mean() > 1
    assert np.abs(pixels(with_locon) - pixels(before)).mean() > 1
    assert infotext(with_locon)["Lora weights"] == "locon-style: 1"
    with studio.models.pipeline(TINY_MODEL_ID) as cached:
        assert adapter_layers(cached) == 0  # unloaded after each job
    assert np.array_equal(pixels(studio.generation.generate(request())), pixels(before))


def test_lora_and_lycoris_share_one_namespace_and_lora_wins_a_clash(studio, models):
    lora = write(models / "Lora" / "same.safetensors", sdxl_lora())
    write(models / "LyCORIS" / "same.safetensors", sdxl_lora())
    write(models / "LyCORIS" / "sub" / "other.safetensors", sdxl_lora())
    files = studio.models.registry.lora_files()
    assert files == {"same": lora, "sub/other": models / "LyCORIS" / "sub" / "other.safetensors"}
    with pytest.raises(ValidationError, match="under .*Lora or .*LyCORIS"):
        studio.generation.validate(request(prompt="a red circle <lora:missing:1>"))


@pytest.mark.parametrize("keys, name", [
    ({"lora_unet_down_blocks_1_attentions_0_proj_in.hada_w1_a": (2, 8), "lora_unet_down_blocks_1_attentions_0_proj_in"
      ".hada_w1_b": (2, 8), "lora_unet_down_blocks_1_attentions_0_proj_in.hada_w2_a": (8, 2),
      "lora_unet_down_blocks_1_attentions_0_proj_in.hada_w2_b": (2, 8)}, "LoHa (hada_*)"),
    ({"lora_unet_down_blocks_1_attentions_0_proj_in.lokr_w1": (2, 2),
      "lora_unet_down_blocks_1_attentions_0_proj_in.lokr_w2": (4, 4)}, "LoKr (lokr_*)"),
    ({"lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": (2, 4, 3, 3),
      "lora_unet_down_blocks_0_resnets_0_conv1.lora_mid.weight": (2, 2, 3, 3),
      "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": (4, 2, 1, 1)},
     "LoCon with CP/Tucker decomposition (lora_mid)"),
    ({"lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight": (2, 8),
      "lora_unet_down_blocks_1_attentions_0_proj_in.lora_up.weight": (8, 2),
      "lora_unet_down_blocks_1_attentions_0_proj_in.dora_scale": (1, 8)}, "DoRA (dora_scale)"),
    ({"lora_unet_down_blocks_1_attentions_0_proj_in.oft_blocks": (4, 2, 2)}, "OFT/BOFT (oft_*)"),
    ({"lora_unet_down_blocks_1_attentions_0_proj_in.diff": (8, 8)}, "full / diff-weight (.diff)"),
])
def test_lycoris_formats_diffusers_cannot_load_are_refused_by_name(studio, models, keys, name):
    write(models / "LyCORIS" / "odd.safetensors", {k: torch.zeros(shape) for k, shape in keys.items()})
    assert inspect_lora(models / "LyCORIS" / "odd.safetensors").format == name
    message = f"LoRA 'odd': {name} LoRAs are not supported; convert it to a plain LoRA"
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")) \
            as caught:
        studio.generation.generate(request(prompt="a red circle <lora:odd:1>"))
    assert caught.value.field == "lora"


def test_a_truncated_or_non_lora_file_is_refused(studio, models):
    (models / "Lora").mkdir(parents=True, exist_ok=True)
    (models / "Lora" / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    write(models / "Lora" / "weights.safetensors", {"model.diffusion_model.out.2.weight": torch.zeros(2, 2)})
    with pytest.raises(ValidationError, match="not a readable .safetensors"):
        studio.generation.validate(request(prompt="x <lora:broken:1>"))
    with pytest.raises(ValidationError, match="not a LoRA diffusers can load.*model.diffusion_model"):
        studio.generation.validate(request(prompt="x <lora:weights:1>"))


def test_an_sdxl_lora_on_an_sd_model_is_refused_naming_both_and_leaves_the_pipeline_clean(studio, models):
    write(models / "Lora" / "xl-detail.safetensors", sdxl_lora())
    info = inspect_lora(models / "Lora" / "xl-detail.safetensors")
    assert (info.base, info.context_width) == ("SDXL", 2048)
    before = studio.generation.generate(request())
    with pytest.raises(ValidationError, match=r"LoRA 'xl-detail' is for SDXL; the model 'tiny-sd' is SD 1\.x"):
        studio.generation.generate(request(prompt="a red circle <lora:xl-detail:0.8>"))
    with studio.models.pipeline(TINY_MODEL_ID) as pipe:
        assert adapter_layers(pipe) == 0 and not getattr(pipe.unet, "peft_config", None)
    assert np.array_equal(pixels(studio.generation.generate(request())), pixels(before))


def test_a_lora_that_fails_while_loading_leaves_no_adapter_of_its_own(models):
    """Shapes the header checks cannot see (a self-attention layer of another width) fail in peft; the failed
    adapter is removed and an adapter loaded before it stays."""
    pipe = tiny_pipe(models)
    good = write(models / "Lora" / "good.safetensors", to_kohya(peft_lora(pipe, seed=3), 4.0))
    bad_layers = {"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight":
                  torch.zeros(2, 320), "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
                  ".lora_up.weight": torch.zeros(8, 2)}
    bad = write(models / "Lora" / "bad.safetensors", bad_layers)
    load_lora_file(pipe, good, "lora0")
    kept = adapter_layers(pipe)
    with pytest.raises(LoraError, match=r"LoRA 'bad' .* does not fit the model 'tiny-sd', which is SD 1\.x.*mismatch"):
        load_lora_file(pipe, bad, "lora1", model="tiny-sd")
    assert pipe.get_list_adapters() == {"unet": ["lora0"], "text_encoder": ["lora0"]}
    assert adapter_layers(pipe) == kept
    assert not any("lora1" in getattr(m, "lora_A", {}) for m in pipe.unet.modules())
    alone = tiny_pipe(models)
    with pytest.raises(LoraError):
        load_lora_file(alone, bad, "lora0")
    assert adapter_layers(alone) == 0  # nothing left at all


# ---- embeddings -------------------------------------------------------------------------------------------------
def short_hash(path: Path) -> str:
    """A1111's short hash of an embedding in "TI hashes": the first 12 hex digits of the file's SHA-256."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_an_embedding_named_in_the_prompt_is_used_and_recorded_as_ti_hashes(studio, models):
    torch.manual_seed(5)
    path = write(models / "embeddings" / "shinytok.safetensors", {"emb_params": torch.randn(2, 32) * 3})
    negative = write(models / "embeddings" / "sub" / "negtok.safetensors", {"<negtok>": torch.randn(32) * 3})
    assert studio.models.embedding_names() == ["negtok", "shinytok"]
    with studio.models.pipeline(TINY_MODEL_ID) as pipe:
        vocab = len(pipe.tokenizer)
    plain = studio.generation.generate(request(prompt="a red circle, ShinyTok", negative_prompt="negtok"))
    assert infotext(plain)["TI hashes"] == f"shinytok: {short_hash(path)}, negtok: {short_hash(negative)}"
    assert 'TI hashes: "shinytok: ' in read_png_parameters(plain.images[0].path)
    with studio.models.pipeline(TINY_MODEL_ID) as pipe:
        assert len(pipe.tokenizer) == vocab and "<shinytok.0>" not in pipe.tokenizer.get_vocab()  # removed after

    path.unlink()
    negative.unlink()
    without = studio.generation.generate(request(prompt="a red circle, ShinyTok", negative_prompt="negtok"))
    assert "TI hashes" not in infotext(without)
    assert np.abs(pixels(plain) - pixels(without)).mean() > 1


def test_a_wrong_width_embedding_is_refused_naming_both_widths(studio, models):
    write(models / "embeddings" / "sd2style.safetensors", {"emb_params": torch.randn(1, 1024)})
    write(models / "embeddings" / "xlstyle.safetensors",
          {"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)})
    before = studio.generation.generate(request())
    with pytest.raises(ValidationError, match=r"embedding 'sd2style' is 1024 wide \(SD 2\.x\); the model's text "
                                              r"encoder takes 32") as caught:
        studio.generation.generate(request(prompt="a red circle in sd2style"))
    assert caught.value.field == "prompt"
    with pytest.raises(ValidationError, match=r"'xlstyle' is 768 \+ 1280 wide \(SDXL\)"):
        studio.generation.generate(request(prompt="a red circle", negative_prompt="xlstyle"))
    with studio.models.pipeline(TINY_MODEL_ID) as pipe:
        assert not [t for t in pipe.tokenizer.get_vocab() if t.startswith("<sd2style")]
    assert studio.generation.generate(request(prompt="a red circle sd2styles")).images  # not the word: unused
    assert np.array_equal(pixels(studio.generation.generate(request())), pixels(before))


def test_embedding_files_a1111_pt_read_safely_and_unsafe_pickles_refused(tmp_path):
    import pickle

    vectors = torch.randn(3, 32)
    torch.save({"string_to_token": {"*": torch.tensor(265)}, "string_to_param": {"*": vectors}, "name": "old",
                "step": 3000, "sd_checkpoint": "abc", "sd_checkpoint_name": "v1-5"}, tmp_path / "old.pt")
    found = read_textual_inversion(tmp_path / "old.pt")
    assert found.word == "old" and torch.equal(found.vectors["text_encoder"], vectors)
    assert found.tokens() == ["<old.0>", "<old.1>", "<old.2>"]

    class Boom:
        def __reduce__(self):
            return (print, ("unpickled!",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"string_to_param": {"*": Boom()}}))
    with pytest.raises(EmbeddingError, match=r"pickle that holds more than plain tensors.*\.safetensors"):
        read_textual_inversion(tmp_path / "evil.pt")
    write(tmp_path / "odd.safetensors", {"a": torch.zeros(2), "b": torch.zeros(2)})
    with pytest.raises(EmbeddingError, match="not a textual-inversion layout"):
        read_textual_inversion(tmp_path / "odd.safetensors")


def test_an_sdxl_embedding_goes_into_both_text_encoders_and_an_sd_one_is_refused(tmp_path):
    import copy

    from pipelines.embeddings import added_embeddings, check_widths, use_trigger_tokens
    from tests.tiny_models import tiny_sdxl_pipeline

    pipe = tiny_sdxl_pipeline(tmp_path / "tok")
    pipe.tokenizer_2 = copy.deepcopy(pipe.tokenizer)  # a real SDXL pipeline has two tokenizer objects
    sizes = [len(pipe.tokenizer), len(pipe.tokenizer_2), pipe.text_encoder_2.get_input_embeddings().weight.shape[0]]
    torch.manual_seed(0)
    xl = read_textual_inversion(write(tmp_path / "xlneg.safetensors", {"clip_l": torch.randn(2, 32) * 3,
                                                                        "clip_g": torch.randn(2, 32) * 3}))
    kwargs = dict(num_inference_steps=2, width=64, height=64, output_type="np")
    before = pipe("a red circle xlneg", generator=torch.Generator().manual_seed(0), **kwargs).images
    with added_embeddings(pipe, [xl]) as words:
        prompt = use_trigger_tokens("a red circle xlneg", words)
        assert prompt == "a red circle <xlneg.0> <xlneg.1>"
        after = pipe(prompt, generator=torch.Generator().manual_seed(0), **kwargs).images
    assert np.abs(after - before).mean() > 1e-3
    assert sizes == [len(pipe.tokenizer), len(pipe.tokenizer_2),
                     pipe.text_encoder_2.get_input_embeddings().weight.shape[0]]
    sd = read_textual_inversion(write(tmp_path / "sdneg.safetensors", {"emb_params": torch.randn(1, 32)}))
    with pytest.raises(EmbeddingError, match=r"'sdneg' is 32 wide; the model's text encoder takes 32 \+ 32 \(SDXL\)"):
        check_widths(pipe, sd)


# ---- VAE ---------------------------------------------------------------------------------------------------------
def other_vae(pipe, seed: int = 1, **changes):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL.from_config({**pipe.vae.config, **changes})


def test_a_vae_from_the_vae_folder_in_diffusers_or_ldm_keys_is_swapped_in_and_recorded(studio, models):
    from pipelines.ldm_keys import vae_to_ldm

    pipe = tiny_pipe(models)
    vae = other_vae(pipe)
    state = vae.state_dict()
    write(models / "VAE" / "alt-diffusers.safetensors", state)
    ldm = write(models / "VAE" / "alt-ldm.safetensors",
                {f"first_stage_model.{k}": v for k, v in vae_to_ldm(state, dict(vae.config)).items()})
    torch.save(state, models / "VAE" / "alt-pickled.pt")
    assert studio.models.vae_names() == ["alt-diffusers.safetensors", "alt-ldm.safetensors", "alt-pickled.pt"]
    assert [v for _, v in studio.models.vae_choices()][:2] == ["", "auto"]

    own = studio.generation.generate(request())
    by_ldm = studio.generation.generate(request(vae="alt-ldm.safetensors"))
    by_diffusers = studio.generation.generate(request(vae="alt-diffusers.safetensors"))
    by_pickle = studio.generation.generate(request(vae="alt-pickled.pt"))
    assert np.abs(pixels(by_ldm) - pixels(own)).mean() > 1
    assert np.array_equal(pixels(by_ldm), pixels(by_diffusers)) and np.array_equal(pixels(by_ldm), pixels(by_pickle))
    info = infotext(by_ldm)
    assert info["VAE"] == "alt-ldm.safetensors" and info["VAE hash"] == studio.models.hashes.autov2(ldm)
    assert "VAE" not in infotext(own)

    with studio.models.pipeline(TINY_MODEL_ID) as cached:
        assert torch.equal(cached.vae.decoder.conv_in.weight, pipe.vae.decoder.conv_in.weight)  # own one back
    entries = {e["kind"]: e for e in studio.models.stats().entries}
    assert entries["vae:VAE/alt-ldm.safetensors"]["model"] == TINY_MODEL_ID
    assert entries["vae:VAE/alt-ldm.safetensors"]["shared_with"] == "txt2img"
    studio.generation.generate(request(vae="alt-ldm.safetensors"))  # a cache hit: still one entry per VAE file
    assert sum(e["kind"].startswith("vae:") for e in studio.models.stats().entries) == 3
    assert np.array_equal(pixels(studio.generation.generate(request())), pixels(own))
    studio.models.unload(TINY_MODEL_ID)  # the model's VAE overrides go with it
    assert not studio.models.stats().entries


def test_unknown_and_wrong_latent_vaes_are_refused_naming_both(studio, models):
    pipe = tiny_pipe(models)
    write(models / "VAE" / "sd3-like.safetensors", other_vae(pipe, latent_channels=16).state_dict())
    write(models / "VAE" / "not-a-vae.safetensors", {"something.else": torch.zeros(2)})
    with pytest.raises(ValidationError, match=r"vae must be '' \(the model's own\), 'auto' or a file under .*VAE "
                                              r"\(not-a-vae.safetensors, sd3-like.safetensors\); got 'nope'"):
        studio.generation.validate(request(vae="nope"))
    before = studio.generation.generate(request())
    with pytest.raises(ValidationError, match=r"VAE 'sd3-like.safetensors' has 16 latent channels \(SD 3/Flux\); the "
                                              r"model 'tiny-sd' works in 4 latent channels") as caught:
        studio.generation.generate(request(vae="sd3-like.safetensors"))
    assert caught.value.field == "vae"
    with pytest.raises(ValidationError, match="holds no VAE decoder"):
        studio.generation.generate(request(vae="not-a-vae.safetensors"))
    assert not [e for e in studio.models.stats().entries if e["kind"].startswith("vae:")]
    assert np.array_equal(pixels(studio.generation.generate(request())), pixels(before))


def test_auto_vae_picks_up_checkpoint_vae_beside_a_single_file_checkpoint(tmp_path, models, monkeypatch):
    from pipelines import single_file
    from studio.services import build_services
    from tests.ldm_checkpoints import tiny_family

    (tmp_path / "family").mkdir()
    path, configs, source = tiny_family("sd", tmp_path / "family")
    monkeypatch.setattr(single_file, "CONFIGS_DIR", configs)  # the tiny "v1" folder stands in for the real one
    monkeypatch.setattr(single_file, "detect_family", lambda p, header=None: "v1")  # tiny shapes aren't SD1's
    shutil.copyfile(path, models / "Stable-diffusion" / "tiny-sd1.safetensors")
    write(models / "Stable-diffusion" / "tiny-sd1.vae.safetensors", other_vae(source).state_dict())
    studio = build_services(make_settings(tmp_path, models))
    try:
        single = dict(model="local:tiny-sd1.safetensors")
        own = studio.generation.generate(request(**single))
        auto = studio.generation.generate(request(vae="auto", **single))
        assert infotext(auto)["VAE"] == "tiny-sd1.vae.safetensors" and "VAE" not in infotext(own)
        assert np.abs(pixels(auto) - pixels(own)).mean() > 1
        # a diffusers folder has no file beside it: "auto" is the model's own VAE there
        assert "VAE" not in infotext(studio.generation.generate(request(vae="auto")))
    finally:
        studio.training.shutdown()


def test_the_generate_form_carries_the_vae_choice():
    from studio.ui.generate_tab import request_from_form

    req = request_from_form({"prompt": "a red circle", "mode": "txt2img", "model": TINY_MODEL_ID, "vae": "auto"})
    assert req.vae == "auto"
