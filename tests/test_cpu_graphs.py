"""Frozen UNet and VAE-decoder graphs on CPU: same images as the normal forward, one graph per shape, eager where
they can't serve."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.cpu_graphs import FrozenDecoderForward, FrozenUNetForward, speed_up_on_cpu, worth_freezing
from tests.tiny_models import tiny_sd_pipeline


def _image(pipe, seed: int = 0, size: int = 64, **kwargs) -> np.ndarray:
    with torch.inference_mode():
        out = pipe("a red circle", num_inference_steps=3, width=size, height=size, output_type="np",
                   generator=torch.Generator().manual_seed(seed), **kwargs)
    return out.images[0]


@pytest.fixture
def pipes(tmp_path):
    """The same tiny pipeline twice: one left eager, one sped up (both in eval mode, as from_pretrained gives)."""
    eager, fast = tiny_sd_pipeline(tmp_path / "a"), tiny_sd_pipeline(tmp_path / "b")
    for pipe in (eager, fast):
        pipe.unet.eval(), pipe.vae.eval()
    assert speed_up_on_cpu(fast, "cpu", freeze_after=0, decoder_freeze_after=0)
    return eager, fast


def _graphs(pipe) -> int:
    return len(pipe.unet.forward.graphs)


def _decoder_graphs(pipe) -> int:
    return len(pipe.vae.decoder.forward.graphs)


def test_frozen_graphs_give_the_eager_images_and_one_graph_per_shape(pipes):
    eager, fast = pipes
    assert isinstance(fast.unet.forward, FrozenUNetForward)
    assert isinstance(fast.vae.decoder.forward, FrozenDecoderForward)
    np.testing.assert_allclose(_image(fast), _image(eager), atol=1e-4)
    assert _graphs(fast) == 1 and _decoder_graphs(fast) == 1
    assert fast.vae.decoder.forward.graphs.served == 1, "the decoder ran through its graph"
    _image(fast, seed=1)
    assert _graphs(fast) == 1, "the same shapes reuse the frozen graph"
    np.testing.assert_allclose(_image(fast, size=32), _image(eager, size=32), atol=1e-4)
    assert _graphs(fast) == 2 and _decoder_graphs(fast) == 2, "a new size is a new graph"
    assert not speed_up_on_cpu(fast, "cpu"), "installing twice is a no-op"


def test_changed_weights_are_traced_again(pipes):
    eager, fast = pipes
    _image(fast)
    with torch.no_grad():
        for pipe in pipes:
            pipe.unet.conv_out.bias.add_(0.5)
    np.testing.assert_allclose(_image(fast), _image(eager), atol=1e-4)
    assert _graphs(fast) == 2


def test_lora_adapters_and_training_use_the_normal_forward(pipes):
    from peft import LoraConfig

    eager, fast = pipes
    plain = _image(fast)
    for pipe in pipes:
        torch.manual_seed(0)
        pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                         target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with_lora = _image(fast)
    assert np.abs(with_lora - plain).max() > 1e-3, "the adapter changes the output"
    np.testing.assert_allclose(with_lora, _image(eager), atol=1e-4)
    assert _graphs(fast) == 1, "no graph is frozen while an adapter is loaded"
    fast.unet.unload_lora()
    served = fast.unet.forward.graphs.served
    np.testing.assert_allclose(_image(fast), plain, atol=1e-4)
    assert fast.unet.forward.graphs.served == served + 3, "once the adapter is unloaded, the graph serves again"

    unet = fast.unet
    unet.train().requires_grad_(True)
    sample, context = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
    loss = unet(sample, torch.tensor(10), context).sample.square().mean()
    loss.backward()
    assert all(p.grad is not None for p in unet.parameters() if p.requires_grad), "gradients flow in training"


def test_only_small_unets_on_cpu_are_frozen(pipes):
    eager, _ = pipes
    assert worth_freezing(eager.unet, "cpu")
    assert not worth_freezing(eager.unet, "cuda")
    assert not speed_up_on_cpu(eager, "cuda")
    assert "forward" not in eager.unet.__dict__


def test_a_shape_is_frozen_only_after_an_image_of_eager_calls(tmp_path):
    """The first image after loading runs eager (no freezing wait); the next one at that size is frozen."""
    pipe = tiny_sd_pipeline(tmp_path)
    pipe.unet.eval(), pipe.vae.eval()
    speed_up_on_cpu(pipe, "cpu", freeze_after=3)  # 3 steps = 3 calls (CFG batches both halves)
    _image(pipe)
    assert _graphs(pipe) == 0 and pipe.unet.forward.graphs.served == 0
    assert _decoder_graphs(pipe) == 0, "the decoder too runs eager for the first image"
    _image(pipe)
    assert _graphs(pipe) == 1 and pipe.unet.forward.graphs.served == 3
    assert _decoder_graphs(pipe) == 1 and pipe.vae.decoder.forward.graphs.served == 1
