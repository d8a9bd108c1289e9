"""Write assets/model-configs/: config-only folders (no weights) for every Stable Diffusion family that
diffusers' single-file loader recognises, so A1111 single-file checkpoints load offline with `config=`.

    .venv/bin/python tools/build_model_configs.py [--out assets/model-configs]

Each family folder mirrors the diffusers layout of its reference repo (model_index.json, scheduler/, unet/,
vae/, text_encoder[_2]/, tokenizer[_2]/) with the values of that repo's config files. The CLIP BPE vocabulary
(49408 tokens) is the same for every family, so it is written once, to clip-tokenizer/, built from open_clip's
bundled bpe_simple_vocab_16e6.txt.gz; a family's tokenizer folders hold only tokenizer_config.json and
special_tokens_map.json (the pad token differs: "<|endoftext|>" for OpenAI CLIP ViT-L, "!" for OpenCLIP).
pipelines/single_file.py builds each tokenizer from the shared vocabulary and the family's settings.

Deliberate differences from the reference repos, each for loading single files:
- model_index.json: no safety checker / feature extractor (the studio never runs one).
- Training-only keys (EMA decay, optimisation step) and local `_name_or_path` values are left out.
- SD 2.x tokenizer_config.json names pad "!" like its special_tokens_map.json (the repo's tokenizer_config says
  "<|endoftext|>", but special_tokens_map.json wins when transformers loads it: the effective pad is "!").
- xl_inpaint VAE: force_upcast true, because a single-file SDXL inpainting checkpoint carries the original SDXL
  VAE, which overflows in float16 (the reference repo ships the fp16-fix VAE with force_upcast false).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "assets" / "model-configs"
SHARED_TOKENIZER = "clip-tokenizer"
VOCAB_SIZE = 49408

# ---- schedulers -------------------------------------------------------------------------------------------
_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
          "trained_betas": None, "clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": True,
          "steps_offset": 1}
PNDM = {"_class_name": "PNDMScheduler", **_BETAS}
DDIM = {"_class_name": "DDIMScheduler", **_BETAS}
DDIM_V = {**DDIM, "prediction_type": "v_prediction"}
EULER_XL = {"_class_name": "EulerDiscreteScheduler", **_BETAS, "interpolation_type": "linear",
            "prediction_type": "epsilon", "sample_max_value": 1.0, "timestep_spacing": "leading",
            "use_karras_sigmas": False}
EULER_TURBO = {**EULER_XL, "timestep_spacing": "trailing"}
EULER_A_TURBO = {**EULER_TURBO, "_class_name": "EulerAncestralDiscreteScheduler"}

# ---- UNets ------------------------------------------------------------------------------------------------
_SD_BLOCKS = {
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "act_fn": "silu", "norm_num_groups": 32,
    "norm_eps": 1e-05, "center_input_sample": False, "downsample_padding": 1, "flip_sin_to_cos": True,
    "freq_shift": 0, "mid_block_scale_factor": 1, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD1_UNET = {"_class_name": "UNet2DConditionModel", **_SD_BLOCKS, "attention_head_dim": 8,
            "cross_attention_dim": 768, "in_channels": 4, "sample_size": 64}
SD1_INPAINT_UNET = {**SD1_UNET, "in_channels": 9}
SD2_BASE_UNET = {"_class_name": "UNet2DConditionModel", **_SD_BLOCKS, "attention_head_dim": [5, 10, 20, 20],
                 "cross_attention_dim": 1024, "in_channels": 4, "sample_size": 64, "use_linear_projection": True,
                 "dual_cross_attention": False, "num_class_embeds": None, "only_cross_attention": False}
SD2_768_UNET = {**SD2_BASE_UNET, "sample_size": 96, "upcast_attention": True}
SD2_INPAINT_UNET = {**SD2_BASE_UNET, "in_channels": 9}
SDXL_UNET = {
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280], "center_input_sample": False, "class_embed_type": None,
    "class_embeddings_concat": False, "conv_in_kernel": 3, "conv_out_kernel": 3, "cross_attention_dim": 2048,
    "cross_attention_norm": None, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_only_cross_attention": None, "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05, "norm_num_groups": 32, "num_attention_heads": None, "num_class_embeds": None,
    "only_cross_attention": False, "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": False, "resnet_time_scale_shift": "default",
    "sample_size": 128, "time_cond_proj_dim": None, "time_embedding_act_fn": None, "time_embedding_dim": None,
    "time_embedding_type": "positional", "timestep_post_act": None, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "upcast_attention": None,
    "use_linear_projection": True,
}
SDXL_INPAINT_UNET = {**SDXL_UNET, "in_channels": 9, "attention_type": "default"}
SDXL_TURBO_UNET = {**SDXL_UNET, "sample_size": 64}
SDXL_REFINER_UNET = {
    **SDXL_UNET, "attention_head_dim": [6, 12, 24, 24], "block_out_channels": [384, 768, 1536, 1536],
    "cross_attention_dim": 1280, "projection_class_embeddings_input_dim": 2560, "transformer_layers_per_block": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}

# ---- VAEs -------------------------------------------------------------------------------------------------
SD_VAE = {"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
          "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
          "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
          "sample_size": 512}
SD1_INPAINT_VAE = {**SD_VAE, "sample_size": 256}
SD2_768_VAE = {**SD_VAE, "sample_size": 768}
SDXL_VAE = {**SD_VAE, "force_upcast": True, "sample_size": 1024, "scaling_factor": 0.13025}
SDXL_INPAINT_VAE = {**SDXL_VAE, "sample_size": 512}

# ---- text encoders ----------------------------------------------------------------------------------------
_CLIP_TEXT = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "attention_dropout": 0.0,
              "dropout": 0.0, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "initializer_factor": 1.0,
              "initializer_range": 0.02, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
              "vocab_size": VOCAB_SIZE, "torch_dtype": "float32"}
CLIP_L = {**_CLIP_TEXT, "hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072,
          "num_attention_heads": 12, "num_hidden_layers": 12, "projection_dim": 768}
OPEN_CLIP_H = {**_CLIP_TEXT, "hidden_act": "gelu", "hidden_size": 1024, "intermediate_size": 4096,
               "num_attention_heads": 16, "num_hidden_layers": 23, "projection_dim": 512}
OPEN_CLIP_BIGG = {**_CLIP_TEXT, "architectures": ["CLIPTextModelWithProjection"], "hidden_act": "gelu",
                  "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20,
                  "num_hidden_layers": 32, "projection_dim": 1280, "torch_dtype": "float16"}
CLIP_L_XL = {**CLIP_L, "torch_dtype": "float16"}

# ---- tokenizers (settings only; the vocabulary is shared) -------------------------------------------------
def _token(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def tokenizer_settings(pad: str) -> tuple[dict, dict]:
    """(tokenizer_config.json, special_tokens_map.json) of a CLIP tokenizer padding with `pad`."""
    specials = {"bos_token": _token("<|startoftext|>"), "eos_token": _token("<|endoftext|>"), "pad_token": pad,
                "unk_token": _token("<|endoftext|>")}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
              "add_prefix_space": False, "errors": "replace", "clean_up_tokenization_spaces": True,
              **{k: ({"__type": "AddedToken", **v} if isinstance(v, dict) else v) for k, v in specials.items()}}
    return config, specials


CLIP_PAD = "<|endoftext|>"  # OpenAI CLIP ViT-L (SD 1.x, SDXL's first encoder)
OPEN_CLIP_PAD = "!"  # OpenCLIP ViT-H / bigG (SD 2.x, SDXL's second encoder): token 0

# ---- families ---------------------------------------------------------------------------------------------
_SD_INDEX = {"feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
_XL_INDEX = {"force_zeros_for_empty_prompt": True, "add_watermarker": None,
             "text_encoder": ["transformers", "CLIPTextModel"],
             "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}


def sd_family(pipeline, reference, scheduler, unet, vae, text, pad):
    return {"reference": reference, "model_index": {"_class_name": pipeline, **_SD_INDEX},
            "scheduler": scheduler, "unet": unet, "vae": vae, "text_encoder": text, "tokenizer": pad}


def xl_family(pipeline, reference, scheduler, unet, vae):
    return {"reference": reference, "model_index": {"_class_name": pipeline, **_XL_INDEX},
            "scheduler": scheduler, "unet": unet, "vae": vae, "text_encoder": CLIP_L_XL, "tokenizer": CLIP_PAD,
            "text_encoder_2": OPEN_CLIP_BIGG, "tokenizer_2": OPEN_CLIP_PAD}


FAMILIES = {
    "v1": sd_family("StableDiffusionPipeline", "stable-diffusion-v1-5/stable-diffusion-v1-5", PNDM, SD1_UNET,
                    SD_VAE, CLIP_L, CLIP_PAD),
    "inpainting": sd_family("StableDiffusionInpaintPipeline", "stable-diffusion-v1-5/stable-diffusion-inpainting",
                            DDIM, SD1_INPAINT_UNET, SD1_INPAINT_VAE, CLIP_L, CLIP_PAD),
    "v2": sd_family("StableDiffusionPipeline", "stabilityai/stable-diffusion-2-1 (768, v-prediction)", DDIM_V,
                    SD2_768_UNET, SD2_768_VAE, OPEN_CLIP_H, OPEN_CLIP_PAD),
    "v2_base": sd_family("StableDiffusionPipeline", "stabilityai/stable-diffusion-2-1-base (512, epsilon)", PNDM,
                         SD2_BASE_UNET, SD_VAE, OPEN_CLIP_H, OPEN_CLIP_PAD),
    "inpainting_v2": sd_family("StableDiffusionInpaintPipeline", "stabilityai/stable-diffusion-2-inpainting", PNDM,
                               SD2_INPAINT_UNET, SD_VAE, OPEN_CLIP_H, OPEN_CLIP_PAD),
    "sd_turbo": sd_family("StableDiffusionPipeline", "stabilityai/sd-turbo (SD 2.1 base, trailing Euler)",
                          EULER_TURBO, SD2_BASE_UNET, SD_VAE, OPEN_CLIP_H, OPEN_CLIP_PAD),
    "xl_base": xl_family("StableDiffusionXLPipeline", "stabilityai/stable-diffusion-xl-base-1.0", EULER_XL,
                         SDXL_UNET, SDXL_VAE),
    "xl_inpaint": xl_family("StableDiffusionXLInpaintPipeline", "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
                            EULER_XL, SDXL_INPAINT_UNET, SDXL_INPAINT_VAE),
    "sdxl_turbo": xl_family("StableDiffusionXLPipeline", "stabilityai/sdxl-turbo (512, trailing Euler a)",
                            EULER_A_TURBO, SDXL_TURBO_UNET, SDXL_VAE),
    "xl_refiner": {
        "reference": "stabilityai/stable-diffusion-xl-refiner-1.0",
        "model_index": {"_class_name": "StableDiffusionXLImg2ImgPipeline", "force_zeros_for_empty_prompt": False,
                        "add_watermarker": None, "requires_aesthetics_score": True,
                        "text_encoder": [None, None], "tokenizer": [None, None],
                        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                        "tokenizer_2": ["transformers", "CLIPTokenizer"],
                        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]},
        "scheduler": EULER_XL, "unet": SDXL_REFINER_UNET, "vae": SDXL_VAE,
        "text_encoder_2": OPEN_CLIP_BIGG, "tokenizer_2": OPEN_CLIP_PAD,
    },
}


# ---- writing ----------------------------------------------------------------------------------------------
def clip_bpe() -> tuple[dict, list[str]]:
    """The CLIP BPE vocabulary (token -> id) and merges, built from open_clip's bundled BPE file exactly as
    open_clip's SimpleTokenizer builds them (the same 49408 tokens as the Hugging Face CLIP tokenizers)."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bpe) as fh:
        lines = fh.read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise RuntimeError(f"expected {VOCAB_SIZE} CLIP tokens, built {len(vocab)} from {bpe}")
    return vocab, merges


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_shared_tokenizer(folder: Path) -> None:
    vocab, merges = clip_bpe()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config, specials = tokenizer_settings(CLIP_PAD)
    write_json(folder / "tokenizer_config.json", config)
    write_json(folder / "special_tokens_map.json", specials)


def write_family(folder: Path, spec: dict) -> None:
    index = dict(spec["model_index"])
    index["scheduler"] = ["diffusers", spec["scheduler"]["_class_name"]]
    write_json(folder / "model_index.json", index)
    write_json(folder / "scheduler" / "scheduler_config.json", spec["scheduler"])
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if name in spec:
            write_json(folder / name / "config.json", spec[name])
    for name in ("tokenizer", "tokenizer_2"):
        if name in spec:
            config, specials = tokenizer_settings(spec[name])
            write_json(folder / name / "tokenizer_config.json", config)
            write_json(folder / name / "special_tokens_map.json", specials)
    (folder / "REFERENCE.txt").write_text(f"Configs of {spec['reference']} (no weights).\n", encoding="utf-8")


def build(out: Path = DEFAULT_OUT) -> Path:
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    write_shared_tokenizer(out / SHARED_TOKENIZER)
    for family, spec in FAMILIES.items():
        write_family(out / family, spec)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    out = build(parser.parse_args(argv).out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({len(FAMILIES)} families, {size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
