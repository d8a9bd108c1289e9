"""Faster small pipelines on CPU: UNet and VAE-decoder calls run through TorchScript graphs frozen per input shape.

A small UNet or VAE decoder on a CPU spends much of each call on per-operator overhead (oneDNN re-packing
convolution weights on every call, dispatch), not on arithmetic. Tracing the module for the shapes of a
generation and freezing the graph pre-packs the weights once, and channels-last weights make the convolutions
cheaper. Anything a frozen graph cannot reproduce exactly (gradients, LoRA adapters, ControlNet residuals,
extra conditioning) runs the normal forward, so outputs change only by float rounding (channels-last kernels may
round a last bit differently: one pixel level in about 1 of 10,000 values on an AVX-512 CPU), not in content.

TorchScript is deprecated upstream in favour of torch.compile, which gained less here (1.1x against 1.3x on
the UNet) after a two-minute compile; the pinned torch keeps TorchScript working.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections import OrderedDict

log = logging.getLogger(__name__)

SMALL_UNET_PARAMS = 100_000_000  # above this, arithmetic dominates and a frozen copy would only cost memory
MAX_GRAPHS = 4  # shapes kept per module (a size change or a batch change is a new shape)
FREEZE_AFTER_CALLS = 20  # eager UNet calls of a shape before it is frozen: one 20-step image, so the first image
#                          after loading (or at a new size) never waits the few seconds freezing takes
DECODER_FREEZE_AFTER_CALLS = 1  # the decoder runs once per image: freeze from the second image on
PASSIVE_KWARGS = {"timestep_cond", "cross_attention_kwargs", "added_cond_kwargs", "down_block_additional_residuals",
                  "mid_block_additional_residual", "down_intrablock_additional_residuals",
                  "encoder_attention_mask", "attention_mask", "class_labels"}


def _is_unset(value) -> bool:
    return value is None or (isinstance(value, dict) and not value)


def parameter_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def worth_freezing(unet, device: str) -> bool:
    """Frozen graphs pay off for small UNets on a CPU (the built-in model's is about 1.3x faster)."""
    return device == "cpu" and parameter_count(unet) <= SMALL_UNET_PARAMS


def _traceable(module, forward):
    """What torch.jit.trace sees: `forward(module, *tensors)` (the class's own forward, so not the installed
    frozen one) as a Module taking positional tensors and returning one tensor."""
    import torch

    class Traceable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, *tensors):
            return forward(self.inner, *tensors)

    return Traceable()


def _unet_sample(unet, sample, timestep, encoder_hidden_states):
    return type(unet).forward(unet, sample, timestep, encoder_hidden_states, return_dict=False)[0]


def _decoded(decoder, sample):
    return type(decoder).forward(decoder, sample)


class FrozenGraphs:
    """One module's frozen graphs, one per input shape: a shape is traced and frozen once it has been seen
    `freeze_after` times, at most `max_graphs` are kept (least recently used dropped first), and weights changed
    in place (`fuse_lora`) are noticed through the parameters' version counters and traced again."""

    def __init__(self, module, traced_target, max_graphs: int = MAX_GRAPHS, freeze_after: int = FREEZE_AFTER_CALLS):
        self._module = module
        self._target = traced_target  # a torch Module taking the positional tensors, returning a tensor
        # the same Parameter objects live on through .to() and in-place edits; adapters that add modules are
        # seen through peft_config and run eager
        self._parameters = list(module.parameters())
        self._max_graphs = max_graphs
        self._freeze_after = freeze_after
        self._graphs: OrderedDict = OrderedDict()
        self._seen: dict = {}  # eager calls per shape not frozen yet
        self.served = 0  # calls answered by a frozen graph
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._graphs)

    @property
    def calls_to_freeze(self) -> int:
        """Calls of one shape until its graph serves: the next call after `freeze_after` freezes it."""
        return self._freeze_after + 1

    def run(self, inputs: tuple):
        """The output of a frozen graph for these tensors, or None: the caller runs the normal forward."""
        key = self._key(inputs)
        graph = self._graph(key, inputs) if key is not None else None
        if graph is None:
            return None
        self.served += 1
        return graph(*inputs)

    def _key(self, inputs: tuple):
        import torch

        module = self._module
        if torch.is_grad_enabled() or module.training or getattr(module, "peft_config", None):
            return None
        if not all(isinstance(t, torch.Tensor) for t in inputs):
            return None
        weights = tuple((p.data_ptr(), p._version) for p in self._parameters)
        return tuple((tuple(t.shape), t.dtype, t.device) for t in inputs) + (hash(weights),)

    def _graph(self, key, inputs: tuple):
        with self._lock:
            if key in self._graphs:
                self._graphs.move_to_end(key)
                return self._graphs[key]
            if len(self._seen) > 8 * self._max_graphs:
                self._seen.clear()
            self._seen[key] = self._seen.get(key, 0) + 1
            if self._seen[key] <= self._freeze_after:
                return None
            del self._seen[key]
            graph = self._freeze(inputs)
            self._graphs[key] = graph
            while len(self._graphs) > self._max_graphs:
                self._graphs.popitem(last=False)
            return graph

    def _freeze(self, inputs: tuple):
        """Trace and freeze for these shapes; None (the normal forward for them from now on) if that fails."""
        import torch

        try:
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer notes on shape asserts; TorchScript's deprecation notice
                traced = torch.jit.trace(self._target, tuple(t.clone() for t in inputs), check_trace=False)
                return torch.jit.freeze(traced.eval())
        except Exception as exc:  # an unusual module: keep it eager, never fail a generation
            log.warning("%s kept eager for shapes %s: %s: %s", type(self._module).__name__,
                        [tuple(t.shape) for t in inputs], type(exc).__name__, exc)
            return None


class FrozenUNetForward:
    """Installed as `unet.forward`: frozen graphs for plain calls, the class's own forward for the rest."""

    def __init__(self, unet, max_graphs: int = MAX_GRAPHS, freeze_after: int = FREEZE_AFTER_CALLS):
        self._unet = unet
        self.graphs = FrozenGraphs(unet, _traceable(unet, _unet_sample), max_graphs, freeze_after)

    def __call__(self, sample, timestep, encoder_hidden_states=None, *args, return_dict: bool = True, **kwargs):
        plain = not args and all(k in PASSIVE_KWARGS and _is_unset(v) for k, v in kwargs.items())
        out = self.graphs.run((sample, timestep, encoder_hidden_states)) if plain else None
        if out is None:
            return type(self._unet).forward(self._unet, sample, timestep, encoder_hidden_states, *args,
                                            return_dict=return_dict, **kwargs)
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)


class FrozenDecoderForward:
    """Installed as `vae.decoder.forward`: frozen graphs for latents alone, the class's own forward otherwise."""

    def __init__(self, decoder, max_graphs: int = MAX_GRAPHS, freeze_after: int = DECODER_FREEZE_AFTER_CALLS):
        self._decoder = decoder
        self.graphs = FrozenGraphs(decoder, _traceable(decoder, _decoded), max_graphs, freeze_after)

    def __call__(self, sample, latent_embeds=None):
        out = self.graphs.run((sample,)) if latent_embeds is None else None
        if out is None:
            return type(self._decoder).forward(self._decoder, sample, latent_embeds)
        return out


def speed_up_on_cpu(pipe, device: str, freeze_after: int = FREEZE_AFTER_CALLS,
                    decoder_freeze_after: int = DECODER_FREEZE_AFTER_CALLS) -> bool:
    """Channels-last weights and frozen per-shape graphs for a small pipeline's UNet and VAE decoder on a CPU;
    True if applied. A shape is frozen once `freeze_after` (decoder: `decoder_freeze_after`) calls used it."""
    import torch

    unet = getattr(pipe, "unet", None)
    if unet is None or not worth_freezing(unet, device) or isinstance(unet.__dict__.get("forward"), FrozenUNetForward):
        return False
    unet.to(memory_format=torch.channels_last)
    unet.forward = FrozenUNetForward(unet, freeze_after=freeze_after)
    decoder = getattr(getattr(pipe, "vae", None), "decoder", None)
    if decoder is not None:
        pipe.vae.to(memory_format=torch.channels_last)
        decoder.forward = FrozenDecoderForward(decoder, freeze_after=decoder_freeze_after)
    return True


def warm_up_steps(pipe) -> list[int]:
    """Step counts of warm-up runs at one size that leave the UNet's and the VAE decoder's graphs for that size
    frozen (each run calls the decoder once), so the first real image neither runs eager nor waits for a
    freeze; [1] for a pipeline without frozen graphs (one step loads and sets up everything else)."""
    unet_forward = pipe.unet.__dict__.get("forward")
    if not isinstance(unet_forward, FrozenUNetForward):
        return [1]
    decoder_forward = pipe.vae.decoder.__dict__.get("forward")
    decoder_calls = (decoder_forward.graphs.calls_to_freeze if isinstance(decoder_forward, FrozenDecoderForward)
                     else 1)
    return [unet_forward.graphs.calls_to_freeze] + [1] * (decoder_calls - 1)
