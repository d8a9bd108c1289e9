"""Tiny Stable Diffusion components built from configs (as diffusers' own tests do), with an offline tokenizer."""

from __future__ import annotations

from pathlib import Path


UNET_BASE = dict(block_out_channels=(4, 8), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))


def offline_tokenizer(tmp_dir: Path):
    """A real CLIP tokenizer written by the project (no download); returns (tokenizer, vocab size)."""
    from transformers import CLIPTokenizer

    from training.builtin_model import write_tokenizer

    vocab_size = write_tokenizer(Path(tmp_dir))
    return CLIPTokenizer.from_pretrained(tmp_dir), vocab_size


def tiny_unet(**config):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(**{**UNET_BASE, **config})


def tiny_sd_components(tmp_dir: Path) -> dict:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer, vocab_size = offline_tokenizer(tmp_dir)
    unet = tiny_unet(cross_attention_dim=32, norm_num_groups=2, attention_head_dim=2)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False)
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[4, 8], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4, norm_num_groups=2)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
        num_attention_heads=4, num_hidden_layers=5, vocab_size=vocab_size,
    ))
    return {"unet": unet, "scheduler": scheduler, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer}


def tiny_sd_pipeline(tmp_dir: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**tiny_sd_components(tmp_dir), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(tmp_dir: Path):
    """A tiny StableDiffusionXLPipeline from configs (two text encoders, added time/text embeddings)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, vocab_size = offline_tokenizer(tmp_dir)
    unet = tiny_unet(attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
                     addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                     projection_class_embeddings_input_dim=80, cross_attention_dim=64, norm_num_groups=1)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear",
                                       timestep_spacing="leading")
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[4, 8], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4, norm_num_groups=2,
                        sample_size=128)
    config = CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, hidden_size=32, intermediate_size=37,
                            layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=5, vocab_size=vocab_size,
                            hidden_act="gelu", projection_dim=32)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(config)
    text_encoder_2 = CLIPTextModelWithProjection(config)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_blip_captioner(out: Path) -> Path:
    """A randomly initialised BLIP captioning model (32x32 input, 18-word vocabulary) saved as a local folder."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    out.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "red", "blue", "green", "circle", "square",
             "star", "on", "the", "left", "right", "background"]
    (out / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(out / "vocab.txt"))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(out)
    torch.manual_seed(0)
    text = dict(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=37, encoder_hidden_size=32, bos_token_id=5, pad_token_id=0, sep_token_id=3,
                eos_token_id=3, max_position_embeddings=40)
    vision = dict(hidden_size=32, image_size=32, patch_size=8, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=37)
    BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=32)) \
        .save_pretrained(out)
    return out
