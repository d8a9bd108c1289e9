"""Tiny A1111-format (original LDM keys) single-file checkpoints for tests, their tiny config folders, and fake
headers that look like each real family to diffusers' detection (real key names and shapes, no real weights)."""

from __future__ import annotations

from pathlib import Path

from pipelines.ldm_keys import pipeline_to_ldm


def save_single_file(pipe, path: Path, open_clip_text_encoder: bool = False) -> Path:
    """Save a diffusers pipeline as one A1111 `.safetensors` file with LDM keys."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(pipeline_to_ldm(pipe, open_clip_text_encoder), str(path))
    return path


def config_folder(pipe, folder: Path) -> Path:
    """A config-only folder of a pipeline (what assets/model-configs/<family>/ holds for real models): its
    save_pretrained output with every weights file removed."""
    pipe.save_pretrained(folder)
    for weights in list(folder.rglob("*.safetensors")) + list(folder.rglob("*.bin")):
        weights.unlink()
    return folder


def tiny_sdxl_pipeline(tmp_dir: Path):
    """A tiny SDXL pipeline whose two text encoders differ in width (32 and 48), as CLIP-L and OpenCLIP-bigG do:
    diffusers tells SDXL's encoders apart in a single file by that width."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from tests.tiny_models import offline_tokenizer, tiny_unet

    tokenizer, vocab_size = offline_tokenizer(tmp_dir)
    common = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
              "pad_token_id": tokenizer.pad_token_id, "layer_norm_eps": 1e-05, "num_attention_heads": 4,
              "num_hidden_layers": 2, "vocab_size": vocab_size, "hidden_act": "gelu", "projection_dim": 32}
    unet = tiny_unet(attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
                     addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                     projection_class_embeddings_input_dim=8 * 6 + 32, cross_attention_dim=32 + 48,
                     norm_num_groups=1)
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[4, 8], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        norm_num_groups=2, sample_size=64, scaling_factor=0.13025)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, **common))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=48, intermediate_size=64, **common))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       beta_schedule="scaled_linear", timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_family(kind: str, root: Path) -> tuple[Path, Path, object]:
    """A tiny model of `kind` ("sd" or "sdxl"): (its single file, a configs root holding its config folder as
    family "v1" or "xl_base", the diffusers pipeline it came from)."""
    from tests.tiny_models import tiny_sd_pipeline

    pipe = tiny_sd_pipeline(root / "tok") if kind == "sd" else tiny_sdxl_pipeline(root / "tok")
    family = "v1" if kind == "sd" else "xl_base"
    configs = root / "configs"
    config_folder(pipe, configs / family)
    return save_single_file(pipe, root / f"tiny-{kind}.safetensors"), configs, pipe


# ---- fake headers: the real names and shapes of the tensors diffusers and the studio inspect --------------
_V1_SKIP = "model.diffusion_model.output_blocks.11.0.skip_connection.weight"
_ATTN2_K = "model.diffusion_model.input_blocks.{}.1.transformer_blocks.0.attn2.to_k.weight"
_VAE = "first_stage_model.decoder.conv_in.weight"


def real_family_shapes(family: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape for the keys that identify `family` in a real A1111 checkpoint."""
    unet_in = lambda c: {"model.diffusion_model.input_blocks.0.0.weight": (320 if c != 1280 else 384, c, 3, 3)}
    vae = {_VAE: (512, 4, 3, 3)}
    if family in ("v1", "inpainting"):
        ch = 9 if family == "inpainting" else 4
        return {**unet_in(ch), _V1_SKIP: (320, 640, 1, 1), _ATTN2_K.format(1): (320, 768), **vae,
                "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 768)}
    if family in ("v2", "inpainting_v2"):
        ch = 9 if family == "inpainting_v2" else 4
        return {**unet_in(ch), _V1_SKIP: (320, 640, 1, 1), _ATTN2_K.format(1): (320, 1024),
                _ATTN2_K.format(2): (320, 1024), **vae, "cond_stage_model.model.token_embedding.weight": (49408, 1024)}
    if family in ("xl_base", "xl_inpaint"):
        ch = 9 if family == "xl_inpaint" else 4
        return {**unet_in(ch), _ATTN2_K.format(4): (640, 2048), **vae,
                "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight": (77, 768),
                "conditioner.embedders.1.model.positional_embedding": (77, 1280),
                "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,)}
    if family == "xl_refiner":
        return {**unet_in(4), _ATTN2_K.format(4): (768, 1280), **vae,
                "conditioner.embedders.0.model.text_projection": (1280, 1280),
                "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,)}
    raise ValueError(family)


def write_header_file(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    """A safetensors file of zero tensors with these shapes (float16; a few MB at most). OpenCLIP's token
    embedding is only looked up by name, so it is stored small."""
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: torch.zeros(shape, dtype=torch.float16) for k, shape in shapes.items()
               if k != "cond_stage_model.model.token_embedding.weight"}
    if "cond_stage_model.model.token_embedding.weight" in shapes:  # 49408x1024 would be 100 MB: keep the name
        tensors["cond_stage_model.model.token_embedding.weight"] = torch.zeros((1, 1024), dtype=torch.float16)
    save_file(tensors, str(path))
    return path
