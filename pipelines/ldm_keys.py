"""Diffusers -> original (LDM / A1111) state-dict keys, so a diffusers pipeline can be saved as the single
`.safetensors` file A1111 users have: `model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE),
`cond_stage_model.transformer.*` (SD 1.x CLIP), `cond_stage_model.model.*` (SD 2.x OpenCLIP) and
`conditioner.embedders.{0,1}.*` (SDXL).

It is the inverse of what diffusers' single-file loader reads (`convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`, `convert_open_clip_checkpoint`), written for any block count from the UNet's
config, so tiny test models and real SD 1.5/SDXL models go through the same code.
"""

from __future__ import annotations

import re

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPEN_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
    "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
    "class_embedding.linear_1.": "label_emb.0.0.", "class_embedding.linear_2.": "label_emb.0.2.",
}
_RESNET = (("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("time_emb_proj.", "emb_layers.1."),
           ("norm2.", "out_layers.0."), ("conv2.", "out_layers.3."), ("conv_shortcut.", "skip_connection."))


def unet_prefixes(config: dict) -> list[tuple[str, str, bool]]:
    """(diffusers prefix, LDM prefix, is_resnet) for every block of a UNet2DConditionModel config."""
    per_level = config["layers_per_block"]
    down, up = config["down_block_types"], config["up_block_types"]
    pairs = []
    for i, kind in enumerate(down):
        for j in range(per_level):
            index = 1 + i * (per_level + 1) + j
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{index}.0.", True))
            if "CrossAttn" in kind:
                pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{index}.1.", False))
        if i < len(down) - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * (per_level + 1)}.0.op.",
                          False))
    pairs += [("mid_block.resnets.0.", "middle_block.0.", True), ("mid_block.attentions.0.", "middle_block.1.", False),
              ("mid_block.resnets.1.", "middle_block.2.", True)]
    for i, kind in enumerate(up):
        attention = "CrossAttn" in kind
        for j in range(per_level + 1):
            index = i * (per_level + 1) + j
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{index}.0.", True))
            if attention:
                pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{index}.1.", False))
        if i < len(up) - 1:
            last = i * (per_level + 1) + per_level
            pairs.append((f"up_blocks.{i}.upsamplers.0.conv.", f"output_blocks.{last}.{2 if attention else 1}.conv.",
                          False))
    return pairs


def unet_to_ldm(state_dict: dict, config: dict) -> dict:
    """A diffusers UNet2DConditionModel state dict under LDM names (without the `model.diffusion_model.` prefix)."""
    pairs = unet_prefixes(config)
    out = {}
    for key, value in state_dict.items():
        new = None
        for old, ldm in _UNET_TOP.items():
            if key.startswith(old):
                new = ldm + key[len(old):]
        for old, ldm, resnet in pairs:
            if new is None and key.startswith(old):
                rest = key[len(old):]
                if resnet:
                    for a, b in _RESNET:
                        if rest.startswith(a):
                            rest = b + rest[len(a):]
                new = ldm + rest
        if new is None:
            raise KeyError(f"no LDM name for UNet weight {key!r}")
        out[new] = value
    return out


def vae_to_ldm(state_dict: dict, config: dict) -> dict:
    """A diffusers AutoencoderKL state dict under LDM names (without the `first_stage_model.` prefix); the
    mid-block attention's linear weights become 1x1 convolutions as in the original."""
    levels = len(config["up_block_types"])
    out = {}
    for key, value in state_dict.items():
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", key)
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.",
                     lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.block.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                     lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.upsample.", new)
        new = re.sub(r"\.mid_block\.resnets\.(\d+)\.", lambda m: f".mid.block_{int(m.group(1)) + 1}.", new)
        new = new.replace(".conv_norm_out.", ".norm_out.").replace(".conv_shortcut.", ".nin_shortcut.")
        if ".mid_block.attentions.0." in new:
            new = new.replace(".mid_block.attentions.0.", ".mid.attn_1.")
            for a, b in (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                         ("to_out.0.", "proj_out.")):
                new = new.replace(".attn_1." + a, ".attn_1." + b)
            if value.ndim == 2:
                value = value.reshape(*value.shape, 1, 1)
        out[new] = value
    return out


_OPEN_CLIP_TOP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
_OPEN_CLIP_LAYER = (("self_attn.out_proj.", "attn.out_proj."), ("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."),
                    ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj."))


def open_clip_to_ldm(state_dict: dict) -> dict:
    """A transformers CLIPTextModel[WithProjection] state dict under OpenCLIP names (q/k/v fused into
    in_proj, text_projection transposed), as SD 2.x and SDXL's second encoder store it."""
    import torch

    out, fused = {}, {}
    for key, value in state_dict.items():
        if key in _OPEN_CLIP_TOP:
            out[_OPEN_CLIP_TOP[key]] = value
            continue
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
            continue
        match = re.match(r"^text_model\.encoder\.layers\.(\d+)\.(.+)$", key)
        if not match:
            if key.endswith("position_ids"):
                continue
            raise KeyError(f"no OpenCLIP name for text encoder weight {key!r}")
        layer, rest = match.groups()
        qkv = re.match(r"^self_attn\.([qkv])_proj\.(weight|bias)$", rest)
        if qkv:
            fused.setdefault((layer, qkv.group(2)), {})[qkv.group(1)] = value
            continue
        for a, b in _OPEN_CLIP_LAYER:
            if rest.startswith(a):
                rest = b + rest[len(a):]
        out[f"transformer.resblocks.{layer}.{rest}"] = value
    for (layer, kind), parts in fused.items():
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def clip_to_ldm(state_dict: dict) -> dict:
    """SD 1.x and SDXL's first encoder keep the transformers CLIPTextModel names."""
    return {k: v for k, v in state_dict.items() if not k.endswith("position_ids")}


def pipeline_to_ldm(pipe, open_clip_text_encoder: bool = False) -> dict:
    """The whole A1111 single-file state dict of an SD 1.x/2.x or SDXL diffusers pipeline.

    `open_clip_text_encoder` stores an SD pipeline's text encoder the SD 2.x way (OpenCLIP names under
    `cond_stage_model.model.`) instead of the SD 1.x way."""
    ckpt = {UNET_PREFIX + k: v for k, v in unet_to_ldm(pipe.unet.state_dict(), dict(pipe.unet.config)).items()}
    ckpt.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config)).items()})
    text_encoder = getattr(pipe, "text_encoder", None)
    text_encoder_2 = getattr(pipe, "text_encoder_2", None)
    if text_encoder_2 is not None:
        if text_encoder is not None:
            ckpt.update({SDXL_CLIP_PREFIX + k: v for k, v in clip_to_ldm(text_encoder.state_dict()).items()})
            second = SDXL_OPEN_CLIP_PREFIX
        else:  # the SDXL refiner has only the OpenCLIP encoder, as embedder 0
            second = "conditioner.embedders.0.model."
        ckpt.update({second + k: v for k, v in open_clip_to_ldm(text_encoder_2.state_dict()).items()})
    elif open_clip_text_encoder:
        ckpt.update({OPEN_CLIP_PREFIX + k: v for k, v in open_clip_to_ldm(text_encoder.state_dict()).items()})
    else:
        ckpt.update({CLIP_PREFIX + k: v for k, v in clip_to_ldm(text_encoder.state_dict()).items()})
    return {k: v.contiguous() for k, v in ckpt.items()}
