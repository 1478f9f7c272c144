"""The implementations under test, built so that each pair computes the same function.

timm ``features_only`` and HF ``ConvNextBackbone``/``ConvNextV2Backbone`` are created with
random init, saved, and loaded into ours through our converter: ours vs timm without output
norms (timm applies none), ours vs HF with them (HF normalises every returned map). The timed
"ours" is the HF-weighted one with its output norms on, i.e. it does slightly more work than
timm features_only: a conservative comparison.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from convnext_backbone import ConvNextBackbone
from convnext_backbone.arch import config_from_preset_name
from convnext_backbone.presets import list_presets

STAGES = ["stage1", "stage2", "stage3", "stage4"]
_SIZE_LETTERS = {"atto": "A", "femto": "F", "pico": "P", "nano": "N", "tiny": "T", "small": "S", "base": "B",
                 "large": "L", "xlarge": "XL", "xxlarge": "XXL", "huge": "H"}
PEERS = ("timm", "hf")


def model_label(name: str) -> str:
    """``convnext_tiny`` -> ``V1-T``, ``convnextv2_atto`` -> ``V2-A``."""
    version, size = name.split("_", 1)
    return f"{'V2' if version == 'convnextv2' else 'V1'}-{_SIZE_LETTERS[size]}"


def resolve_model_name(name: str) -> str:
    """Accept a preset name (``convnextv2_atto``) or its label (``V2-A``); ValueError otherwise."""
    presets = list_presets()
    by_label = {model_label(p): p for p in presets}
    if name in presets:
        return name
    if name.upper() in by_label:
        return by_label[name.upper()]
    raise ValueError(f"unknown model {name!r}; expected a preset name {presets} or a label {sorted(by_label)}")


@dataclass
class Impl:
    """One implementation: its module and a call returning the feature maps as a sequence."""

    name: str
    model: nn.Module
    features: Callable[[torch.Tensor], Sequence[torch.Tensor]]
    is_peer: bool
    timed: bool = True  # False: only the memory run (the last warmup), no timed repeats


@torch.no_grad()
def _perturb_vectors_(model: nn.Module, seed: int) -> None:
    """Add noise to every 1-D parameter (norms, layer scale, GRN).

    Random init leaves norms at (1, 0), GRN at 0 and layer scale at 1e-6, which would make
    the equivalence check blind to half the computation.
    """
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.numel() == p.shape[-1]:
            p.add_(0.2 * torch.randn(p.shape, generator=g))


def _timm(name: str) -> nn.Module:
    import timm

    return timm.create_model(name, features_only=True, out_indices=(0, 1, 2, 3), pretrained=False)


def _hf(name: str) -> nn.Module:
    import transformers

    transformers.utils.logging.disable_progress_bar()  # save_pretrained's shard bar is noise here
    cfg = config_from_preset_name(name)
    kind = "ConvNextV2" if cfg.uses_grn else "ConvNext"
    hf_cfg = getattr(transformers, f"{kind}Config")(hidden_sizes=list(cfg.hidden_sizes), depths=list(cfg.depths),
                                                     out_features=list(STAGES))
    return getattr(transformers, f"{kind}Backbone")(hf_cfg)


def build_impls(name: str, workdir: Path, seed: int = 0) -> tuple[list[Impl], list[tuple[str, Impl, Impl]]]:
    """Return ``(timed impls, equivalence pairs)``; every model is in eval mode on the CPU.

    The pairs are ``(description, ours, peer)`` to compare before timing.
    """
    torch.manual_seed(seed)
    timm_model = _timm(name)
    _perturb_vectors_(timm_model, seed)
    timm_file = workdir / f"{name}-timm.pth"
    torch.save(timm_model.state_dict(), timm_file)
    ours_plain = ConvNextBackbone.from_pretrained(timm_file, out_features=list(STAGES), norm_outputs=False)

    hf_model = _hf(name)
    _perturb_vectors_(hf_model, seed + 1)
    hf_dir = workdir / f"{name}-hf"
    hf_model.save_pretrained(hf_dir)
    ours = ConvNextBackbone.from_pretrained(hf_dir, out_features=list(STAGES), norm_outputs=True)

    def maps(m):
        return lambda x: m(x).feature_maps

    impls = [
        Impl("ours", ours, maps(ours), False),
        Impl("timm", timm_model, timm_model, True),
        Impl("hf", hf_model, maps(hf_model), True),
    ]
    pairs = [
        ("ours(no output norms) vs timm", Impl("ours", ours_plain, maps(ours_plain), False), impls[1]),
        ("ours(output norms) vs hf", impls[0], impls[2]),
    ]
    for impl in impls + [pairs[0][1]]:
        impl.model.eval()
    return impls, pairs


def checkpointed_copy(ours: Impl) -> Impl:
    """Ours with gradient checkpointing on (same weights), for the training-memory comparison.

    Memory run only: its recompute cost is visible from the memory runs' times, and the
    full default benchmark must fit in about ten minutes on two cores.
    """
    model = copy.deepcopy(ours.model)
    model.set_gradient_checkpointing(True)
    return Impl("ours+ckpt", model, lambda x: model(x).feature_maps, False, timed=False)


@torch.no_grad()
def max_abs_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> tuple[float, float]:
    """``(max |a - b|, max |b|)`` over all maps; shapes must match."""
    if len(a) != len(b):
        raise AssertionError(f"different number of feature maps: {len(a)} vs {len(b)}")
    diff = ref = 0.0
    for x, y in zip(a, b):
        if x.shape != y.shape:
            raise AssertionError(f"feature map shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
        diff = max(diff, (x.float() - y.float()).abs().max().item())
        ref = max(ref, y.float().abs().max().item())
    return diff, ref
