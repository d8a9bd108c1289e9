"""Write the built-in model's card and curves from a finished training run.

    python -m training.model_card --work-dir runs/builtin --out assets/builtin-shapes [--prompts 48]

Evaluates every EMA snapshot (taken every N training minutes, clock paused) on a fixed prompt subset, plots
adherence per category against training minutes and the loss against minutes, and writes README.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from pathlib import Path

from training.curves import save_loss_curve, save_series_plot


def generate_pairs(pipe, prompts: list[tuple[str, int]], steps: int = 20, rewrite=lambda p: p,
                   cfg_scale: float = 7.5, cfg_rescale: float = 0.0) -> list:
    """(prompt, image) for each (prompt, seed), generated at 128x128 with `pipe` from `rewrite(prompt)`."""
    import torch

    return [(prompt, pipe(rewrite(prompt), num_inference_steps=steps, width=128, height=128,
                          guidance_scale=cfg_scale, guidance_rescale=cfg_rescale,
                          generator=torch.Generator().manual_seed(seed)).images[0]) for prompt, seed in prompts]


def score_pipeline(pipe, prompts: list[tuple[str, int]], steps: int = 20, rewrite=lambda p: p,
                   **guidance) -> dict[str, float]:
    """Generate each (prompt, seed) with `pipe` (from `rewrite(prompt)`; `guidance`: cfg_scale, cfg_rescale)
    and score the images against the prompt with the evaluator."""
    from training.evaluator import evaluate

    return evaluate(generate_pairs(pipe, prompts, steps, rewrite, **guidance))


def load_folder(model_dir: Path):
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model_dir, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def evaluate_folder(model_dir: Path, prompts: list[tuple[str, int]], steps: int = 20) -> dict[str, float]:
    return score_pipeline(load_folder(model_dir), prompts, steps)


def curve_subset(prompts: list, n: int) -> list:
    """`n` prompts spread evenly over the held-out set and over its blocks of five (3 training-style, 2 novel
    phrasings), so the curve sees novel phrasings in the same 40% share as the full set."""
    blocks = len(prompts) // 5
    picks = [5 * b + b % 5 for b in range(blocks)]
    return [prompts[i] for i in picks[:: max(1, blocks // n)]][:n]


def adherence_curve(work: Path, prompts: list[tuple[str, int]]) -> dict[float, dict[str, float]]:
    """Score each snapshot once; results cached in <work>/adherence.json (re-scored when the prompts change)."""
    cache_path = work / "adherence.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    signature = json.dumps(prompts)
    if cache.get("_prompts") != signature:
        cache = {"_prompts": signature}
    for snap in sorted((work / "snapshots").glob("min_*")):
        if snap.name.endswith(".tmp") or snap.name in cache:
            continue
        cache[snap.name] = evaluate_folder(snap, prompts)
        print(snap.name, {k: round(v, 3) for k, v in cache[snap.name].items()}, flush=True)
        cache_path.write_text(json.dumps(cache, indent=2))
    return {int(name.split("_")[1]): scores for name, scores in cache.items() if name.startswith("min_")}


def loss_by_minute(work: Path) -> list[tuple[float, float]]:
    points = []
    with open(work / "unet_loss.csv") as fh:
        for row in csv.DictReader(fh):
            points.append((float(row["train_seconds"]) / 60, float(row["loss"])))
    return points


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def command_lines(state: dict) -> str:
    """The training command, or every resumed piece's command when the options changed along the way."""
    pieces = state.get("pieces") or [{"from_unet_minute": 0, "command": state.get("command", "")}]
    if len(pieces) == 1:
        return ("- Command (resumable: run it again after a stop and it continues from its checkpoints):\n"
                f"  `{pieces[0]['command']}`")
    lines = [f"- Trained in {len(pieces)} pieces, each resuming the previous one's weights, optimizer and EMA (run "
             "them in order; each is itself resumable); each piece's learning rate decays to 10% over its own last "
             "`--decay-minutes`:"]
    lines += [f"  - from UNet minute {p['from_unet_minute']:g}: `{p['command']}`" for p in pieces]
    return "\n".join(lines)


def pieces_since(state: dict, option: str) -> str:
    """' from UNet minute N on' when `option` first appears in a later piece's command, else ''."""
    for piece in state.get("pieces", [])[1:]:
        if option in piece["command"]:
            return f" from UNet minute {piece['from_unet_minute']:g} on"
    return ""


def recommended_note(out: Path) -> str:
    """The card's paragraph on the folder's generation_defaults.json (the settings the studio generates with)."""
    from pipelines.registry import RECOMMENDED_FILE, ModelSource, recommended_settings

    if not (out / RECOMMENDED_FILE).exists():
        return ""
    settings = recommended_settings(ModelSource("card", "diffusers", str(out)))
    return (f"\n## Recommended settings\n`generation_defaults.json`: CFG scale {settings['cfg_scale']:g}, CFG rescale "
            f"{settings['cfg_rescale']:g} (diffusers' `guidance_rescale`); the studio generates with them unless "
            "told otherwise. The scores above were measured at diffusers' default CFG 7.5 without rescale; "
            "`./launch.sh bench` prints them at these settings.\n")


def write_card(work: Path, out: Path, curve: dict, final_scores: dict | None) -> None:
    state = json.loads((work / "state.json").read_text())
    minutes_vae = state["vae_seconds"] / 60
    minutes_unet = state["unet_seconds"] / 60
    rows = []
    cats = sorted({k for scores in curve.values() for k in scores})
    for minute in sorted(curve):
        rows.append(f"| {minute} | " + " | ".join(f"{curve[minute].get(c, float('nan')):.2f}" for c in cats) + " |")
    table = ("| minutes | " + " | ".join(cats) + " |\n|" + "---|" * (len(cats) + 1) + "\n" + "\n".join(rows)) \
        if rows else "(no snapshots evaluated)"
    final = ""
    if final_scores:
        groups = list(final_scores)
        final = ("| category | " + " | ".join(groups) + " |\n|" + "---|" * (len(groups) + 1) + "\n" +
                 "\n".join(f"| {cat} | " + " | ".join(f"{final_scores[g].get(cat, float('nan')):.3f}" for g in groups)
                           + " |" for cat in final_scores[groups[0]]))
    snr_minutes = state.get("min_snr_minutes", minutes_unet)
    weighting = (f"min-SNR-5 weighting for the first {snr_minutes:g} minutes, then plain v-MSE (min-SNR gives the "
                 "high-noise steps, where the layout is decided, almost no weight)" if snr_minutes else
                 "plain v-MSE throughout (min-SNR would give the high-noise steps, where the layout is decided, "
                 "almost no weight)")
    extras = ""
    if state.get("foreground_weight", 1) != 1:
        extras += f" Latent cells covered by objects weigh x{state['foreground_weight']:g} in the loss."
    if state.get("high_noise_share"):
        extras += (f" {state['high_noise_share']:.0%} of the timesteps are drawn from the noisiest 40% (where "
                   "position, two objects and counts are decided), the rest uniformly.")
    if state.get("position_pairs"):
        extras += (f" Each batch holds {state['position_pairs']} position-contrast pairs (one scene at two "
                   "off-centre positions, the same noise and timestep, captions differing only in the position word)"
                   f"{pieces_since(state, '--position-pairs')}.")
    caption_extras = ""
    if state.get("caption_noise") or state.get("caption_shuffle"):
        caption_extras = (f"{state.get('caption_noise', 0):.0%} of captions get 1-2 words that carry no scene "
                          "information (filler words or made-up letter strings) at random places, and "
                          f"{state.get('caption_shuffle', 0):.0%} of single-object captions put their object, "
                          "position and background phrases in any order, so words the model never learned do "
                          "not break the ones it did (the benchmark's novel templates are never used).")
    vae_origin = (f" Taken with `--vae-from` from the previously shipped model (its {minutes_vae:.1f} minutes "
                  f"count in the total), which trained it with `{state['vae_from']}`."
                  if state.get("vae_imported") else "")
    recommended = recommended_note(out)
    card = f"""# Built-in model: shapes world

A tiny Stable-Diffusion-architecture model (CLIP-style BPE tokenizer made from the world's vocabulary,
`CLIPTextModel`, `UNet2DConditionModel`, `AutoencoderKL`, DPM-Solver++ scheduler) trained from scratch by
`training/train_builtin.py` on procedural images of coloured shapes. It loads with
`StableDiffusionPipeline.from_pretrained(this_folder)` with no network. Weights are fp16 ({folder_mb(out):.1f} MB).
Native size 128x128.

## Training
{command_lines(state)}
- Seed: {state['seed']}. Hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU;
  torch bf16 autocast on CPU.
- Training time (training steps only, evaluation paused): VAE {minutes_vae:.1f} min ({state['vae_step']} steps),
  text encoder + UNet {minutes_unet:.1f} min ({state['unet_step']} steps); {minutes_vae + minutes_unet:.0f} of the
  180-minute budget in all. Latent cache: {state.get('latent_scale') and 'yes'}.
- Data recipe (`training/world.py`): 8 colours, circle/square/triangle, sizes small/large, five positions
  (left/right/top/bottom/center), plain (3/4) or striped (1/4) backgrounds; 70% single-object scenes, 15% two
  objects (left/right or top/bottom), 15% counts (1-3); captions re-phrased every time a scene is drawn, with
  each attribute dropped 15% of the time and 10% empty captions (for classifier-free guidance); {caption_extras}
  20,000 cached scenes. **Held out** of base training: the star shape and the dotted pattern (LoRA material).
- VAE: f8 (16x16x4 latents at 128x128), channels (32,64,64,64), trained on random 64x64 crops with a
  foreground-weighted L1+L2 loss (foreground x5) and a tiny KL (1e-6).{vae_origin}
- Text encoder: hidden 128, 4 layers, 4 heads, trained jointly with the UNet from scratch.
- UNet: channels (64,128,128), cross-attention at 16x16 and 8x8 and in the middle block, 1 layer per block.
- Objective: v-prediction with zero terminal SNR (rescaled betas), AdamW 6e-4, batch 32, EMA 0.998, trailing
  timestep spacing; {weighting}; the learning rate decays linearly to 10% over the last
  {state.get('decay_minutes', 0):g} minutes.{extras}

## Curves
- `loss.png`: training loss against training minutes.
- `adherence.png`: evaluator scores per category against training minutes (EMA snapshots).

{table}

## Final scores (240 held-out prompts, 20 steps; 40% in phrasings the training captions never use)
{final or '(see `./launch.sh bench`)'}
{recommended}

Written {time.strftime('%Y-%m-%d %H:%M')}.
"""
    (out / "README.md").write_text(card)


def main(argv=None):
    from training.evaluator import evaluate_by_phrasing, heldout_scenes

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default="runs/builtin")
    p.add_argument("--out", default="assets/builtin-shapes")
    p.add_argument("--prompts", type=int, default=48, help="prompts per snapshot for the curve")
    p.add_argument("--final", action="store_true", help="also score the exported model on the full set")
    args = p.parse_args(argv)
    work, out = Path(args.work_dir), Path(args.out)
    scenes = heldout_scenes()
    prompts = [(scene.caption, seed) for scene, seed in scenes]
    curve = adherence_curve(work, curve_subset(prompts, args.prompts))
    if curve:
        cats = sorted({k for scores in curve.values() for k in scores})
        series = {c: sorted((m, s[c]) for m, s in curve.items() if c in s) for c in cats}
        save_series_plot(series, out / "adherence.png", "Adherence vs training minutes", "UNet training minutes",
                         "score")
    save_loss_curve(loss_by_minute(work), out / "loss.png", "Built-in model training loss", "training minutes")
    final = None
    if args.final:
        final = evaluate_by_phrasing(generate_pairs(load_folder(out), prompts), scenes)
    write_card(work, out, curve, final)
    print(f"model card written to {out / 'README.md'}")


if __name__ == "__main__":
    main()
