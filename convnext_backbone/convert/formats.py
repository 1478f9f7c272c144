"""Format detection and the rename tables: every public layout -> the official one, and the
architecture read off the tensor shapes."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import CONFIG_CLASSES, ConvNextConfig, ConvNextV2Config, output_norm_name, stage_names_for
from ..presets import PRESET_FIELDS, preset_name
from .reading import CheckpointError

__all__ = ["Conversion", "convert_state_dict", "detect_format", "infer_config"]

_PREFIXES = ("module.", "backbone.bottom_up.", "backbone.", "encoder.", "model.")


def detect_format(state: Mapping[str, torch.Tensor]) -> str:
    """One of: official, fcmae, hf, dinov3_hf, timm, mmpretrain. Raises CheckpointError for anything else."""
    keys = list(state)
    joined = "\n".join(keys)
    if re.search(r"(^|\.)stages\.\d+\.(layers\.\d+\.depthwise_conv|downsample_layers\.\d)\.", joined, re.M):
        return "dinov3_hf"  # transformers' DINOv3ConvNextModel / DINOv3ConvNextBackbone
    if re.search(r"(^|\.)(embeddings\.patch_embeddings|stages\.\d+\.(layers|downsampling_layer))\.", joined, re.M):
        return "hf"
    if re.search(r"(^|\.)stages[._]\d+\.blocks\.\d+\.conv_dw\.", joined, re.M):
        return "timm"
    if re.search(r"(^|\.)stages\.\d+\.\d+\.depthwise_conv\.", joined, re.M):
        return "mmpretrain"
    if re.search(r"(^|\.)stages\.\d+\.\d+\.(dwconv\.kernel|pwconv1\.linear\.|norm\.ln\.)", joined, re.M):
        return "fcmae"
    if re.search(r"(^|\.)stages\.\d+\.\d+\.dwconv\.weight", joined, re.M):
        return "official"
    raise CheckpointError(
        "unrecognised checkpoint: no ConvNeXt layout (official, FCMAE, HF transformers, DINOv3, timm, open_clip, mmpretrain) matches its "
        f"keys; first keys: {keys[:8]}"
    )


def _strip_prefix(key: str) -> tuple[str, str]:
    """Remove wrappers around the trunk; return (key, prefix removed)."""
    removed = ""
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, removed, changed = key[len(p):], removed + p, True
    return key, removed


def _apply_rules(k: str, rules: list[tuple[str, str]]) -> str | None:
    """First matching (pattern, replacement) renames ``k``; None if no rule applies."""
    for pat, rep in rules:
        if re.match(pat, k):
            return re.sub(pat, rep, k)
    return None


def _hf_key(k: str) -> str | None:
    k = re.sub(r"^(convnext|convnextv2)\.", "", k)
    if k.startswith("stages."):  # `encoder.` was taken off with the other wrapper prefixes
        k = "encoder." + k
    rules = [
        (r"^embeddings\.patch_embeddings\.", "downsample_layers.0.0."),
        (r"^embeddings\.layernorm\.", "downsample_layers.0.1."),
        (r"^encoder\.stages\.(\d+)\.downsampling_layer\.(\d)\.", r"downsample_layers.\1.\2."),
        (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer_scale_parameter$", r"stages.\1.\2.gamma"),
        (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layernorm\.", r"stages.\1.\2.norm."),
        (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.grn\.weight$", r"stages.\1.\2.grn.gamma"),
        (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.grn\.bias$", r"stages.\1.\2.grn.beta"),
        (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.", r"stages.\1.\2."),
        (r"^hidden_states_norms\.stem\.", "norm_stem."),
        (r"^layernorm\.", "norm."),
        (r"^classifier\.", "head."),
    ]
    m = re.match(r"^hidden_states_norms\.stage(\d+)\.(.*)$", k)
    if m:
        return f"norm{int(m.group(1)) - 1}.{m.group(2)}"
    return _apply_rules(k, rules)


def _dinov3_hf_key(k: str) -> str | None:
    rules = [
        (r"^stages\.(\d+)\.downsample_layers\.(\d)\.", r"downsample_layers.\1.\2."),
        (r"^stages\.(\d+)\.layers\.(\d+)\.depthwise_conv\.", r"stages.\1.\2.dwconv."),
        (r"^stages\.(\d+)\.layers\.(\d+)\.layer_norm\.", r"stages.\1.\2.norm."),
        (r"^stages\.(\d+)\.layers\.(\d+)\.pointwise_conv(\d)\.", r"stages.\1.\2.pwconv\3."),
        (r"^stages\.(\d+)\.layers\.(\d+)\.gamma$", r"stages.\1.\2.gamma"),
        (r"^layer_norm\.", "norm."),  # applied to the pooled and patch tokens: the final norm, as a classifier's
    ]
    return _apply_rules(k, rules)


def _timm_key(k: str) -> str | None:
    k = re.sub(r"^(stem|stages)_(\d+)", r"\1.\2", k)  # features_only FeatureListNet names
    rules = [
        (r"^stem\.(\d)\.", r"downsample_layers.0.\1."),
        (r"^stages\.(\d+)\.downsample\.(\d)\.", r"downsample_layers.\1.\2."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.", r"stages.\1.\2.dwconv."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc(\d)\.", r"stages.\1.\2.pwconv\3."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.weight$", r"stages.\1.\2.grn.gamma"),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.bias$", r"stages.\1.\2.grn.beta"),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.(norm\.|gamma$)", r"stages.\1.\2.\3"),
        (r"^head\.norm\.", "norm."),
        (r"^head\.fc\.", "head."),
        (r"^head\.pre_logits\.fc\.", "head.pre_logits.fc."),  # convnext_large_mlp's MLP head: a classifier part
    ]
    return _apply_rules(k, rules)


def _mmpretrain_key(k: str) -> str | None:
    rules = [
        (r"^downsample_layers\.", "downsample_layers."),
        (r"^stages\.(\d+)\.(\d+)\.depthwise_conv\.", r"stages.\1.\2.dwconv."),
        (r"^stages\.(\d+)\.(\d+)\.pointwise_conv(\d)\.", r"stages.\1.\2.pwconv\3."),
        (r"^stages\.(\d+)\.(\d+)\.(norm\.|gamma$|grn\.)", r"stages.\1.\2.\3"),
        (r"^(norm\d+)\.", r"\1."),
        (r"^head\.fc\.", "head."),
    ]
    return _apply_rules(k, rules)


def _official_key(k: str) -> str | None:
    if re.match(r"^(downsample_layers\.\d+\.\d|stages\.\d+\.\d+|norm\d+|norm_stem|norm|head)\.", k):
        return k
    if re.match(r"^stages\.\d+\.\d+\.gamma$", k):
        return k
    return None


def _fcmae_key(k: str) -> str | None:
    if _official_key(k) is None and not re.match(r"^(downsample_layers|stages)\.", k):
        return None
    k = re.sub(r"\.kernel$", ".weight", k)
    k = re.sub(r"\.(ln|linear)\.", ".", k)
    return k


_KEY_MAPS = {"hf": _hf_key, "dinov3_hf": _dinov3_hf_key, "timm": _timm_key, "mmpretrain": _mmpretrain_key, "official": _official_key, "fcmae": _fcmae_key}

# Keys of a whole detector / segmentor / pre-training model that are not the trunk.
_NON_TRUNK = re.compile(
    r"^(decode_head|auxiliary_head|neck|rpn_head|roi_head|roi_heads|proposal_generator|bbox_head|mask_head|decoder|"
    r"mask_token|proj|pred|backbone\.fpn_|sem_seg_head|pixel_mean|pixel_std)"
)


def _fcmae_tensor(key: str, v: torch.Tensor) -> torch.Tensor:
    """Undo MinkowskiEngine layouts, as the official ``remap_checkpoint_keys`` does."""
    if key.endswith(".weight") and v.ndim == 3:  # sparse conv kernel (k*k, in, out)
        kv, cin, cout = v.shape
        ks = int(round(kv**0.5))
        return v.permute(2, 1, 0).reshape(cout, cin, ks, ks).transpose(3, 2).contiguous()
    if key.endswith("dwconv.weight") and v.ndim == 2:  # depthwise kernel (k*k, dim)
        kv, dim = v.shape
        ks = int(round(kv**0.5))
        return v.permute(1, 0).reshape(dim, 1, ks, ks).transpose(3, 2).contiguous()
    if key.endswith(".bias") and v.ndim != 1:
        return v.reshape(-1)
    return v


@dataclass
class Conversion:
    state_dict: dict[str, torch.Tensor]
    source_format: str
    mapping: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (key, why)
    unknown: list[str] = field(default_factory=list)
    layout: str = ""  # the source format, or the checkpoint kind around it: open_clip, eupe

    @property
    def head_classes(self) -> int | None:
        """Classes of the classification head in the file (1000, 21841, ...), if it has one."""
        head = self.state_dict.get("head.weight")
        return int(head.shape[0]) if head is not None else None


_WHOLE_MODEL = "not part of the backbone (detector/segmentor head or pre-training decoder)"
# Checkpoints that hold more than the image trunk: what else is in them, and why it is dropped.
_CLIP_TRUNK = "visual.trunk."
_CLIP_HEAD = (r"^visual\.head\.", "CLIP image projection head (image features -> the joint image-text space)")
_CLIP_TEXT = "CLIP text tower (not part of the image backbone)"
_DISTILL_EXTRAS = (r"^(norms|projectors)\.", "DINOv3/EUPE distillation feature norms and projectors (pre-training heads)")


def _split_trunk(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str], list[tuple[str, str]], str]:
    """``(trunk tensors by wrapper-free key, original key of each, dropped with why, layout)``."""
    stripped: dict[str, torch.Tensor] = {}
    originals: dict[str, str] = {}
    dropped: list[tuple[str, str]] = []
    layout = ""
    open_clip = any(_strip_prefix(k)[0].startswith(_CLIP_TRUNK) for k in state)
    for k, v in state.items():
        sk, _ = _strip_prefix(k)
        if open_clip:  # an open_clip model: the image tower's trunk is a timm ConvNeXt
            layout = "open_clip"
            if not sk.startswith(_CLIP_TRUNK):
                dropped.append((k, _CLIP_HEAD[1] if re.match(_CLIP_HEAD[0], sk) else _CLIP_TEXT))
                continue
            sk = sk[len(_CLIP_TRUNK):]
        elif re.match(_DISTILL_EXTRAS[0], sk):
            layout = "eupe"
            dropped.append((k, _DISTILL_EXTRAS[1]))
            continue
        if _NON_TRUNK.match(k) or _NON_TRUNK.match(sk):
            dropped.append((k, _WHOLE_MODEL))
            continue
        if sk.endswith("num_batches_tracked"):
            dropped.append((k, "bookkeeping buffer"))
            continue
        stripped[sk] = v
        originals[sk] = k
    return stripped, originals, dropped, layout


def convert_state_dict(state: Mapping[str, torch.Tensor], fmt: str | None = None) -> Conversion:
    """Rename and reshape any supported layout into the official one."""
    stripped, originals, dropped, layout = _split_trunk(state)
    fmt = fmt or detect_format(stripped)
    if fmt not in _KEY_MAPS:
        raise CheckpointError(f"unknown format {fmt!r}; expected one of {list(_KEY_MAPS)}")
    key_map = _KEY_MAPS[fmt]
    out: dict[str, torch.Tensor] = {}
    conv = Conversion(out, fmt, dropped=dropped, layout=layout or fmt)
    for sk, v in stripped.items():
        nk = key_map(sk)
        if nk is None:
            conv.unknown.append(originals[sk])
            continue
        if fmt == "fcmae":
            v = _fcmae_tensor(nk, v)
        if nk.endswith(("grn.gamma", "grn.beta")):
            v = v.reshape(1, 1, 1, -1)
        if fmt == "mmpretrain" and re.match(r"^norm\d+\.", nk) and any(k.startswith("head.") for k in stripped):
            # mmpretrain classifiers apply their last out norm to the pooled vector: our `norm`.
            nk = "norm." + nk.split(".", 1)[1]
        if re.search(r"\.pwconv\d\.weight$", nk) and v.ndim == 4:  # 1x1-conv MLPs (timm conv_mlp, small V2)
            v = v.reshape(v.shape[0], v.shape[1])
        out[nk] = v
        conv.mapping.append((originals[sk], nk))
    if not any(k.startswith("stages.") for k in out):
        raise CheckpointError(f"checkpoint has no ConvNeXt stage weights after conversion from {fmt!r}")
    return conv


def infer_config(state: Mapping[str, torch.Tensor], config_dict: Mapping[str, Any] | None = None, **overrides: Any) -> ConvNextConfig:
    """Build the config from a file's config.json if it has one, else from tensor shapes."""
    grn = any(".grn." in k for k in state)
    cls = ConvNextV2Config if grn else ConvNextConfig
    kw: dict[str, Any] = {}
    if config_dict and config_dict.get("model_type") in CONFIG_CLASSES:
        kw.update({k: v for k, v in config_dict.items() if k not in ("model_type", "architectures", "stage_names")})
        cls = CONFIG_CLASSES[config_dict["model_type"]]
        if "_out_features" in kw:  # an unusual serialisation of HF's private fields
            kw["out_features"] = kw.pop("_out_features")
            kw["out_indices"] = kw.pop("_out_indices", None)
    else:
        stem = state.get("downsample_layers.0.0.weight")
        if stem is None:
            raise CheckpointError("cannot infer the architecture: the stem weight downsample_layers.0.0.weight is missing")
        num_stages = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("stages."))
        depths = [1 + max(int(k.split(".")[2]) for k in state if k.startswith(f"stages.{i}.")) for i in range(num_stages)]
        hidden = [int(state[f"stages.{i}.0.dwconv.weight"].shape[0]) for i in range(num_stages)]
        kw.update(num_channels=int(stem.shape[1]), patch_size=int(stem.shape[-1]), num_stages=num_stages,
                  depths=depths, hidden_sizes=hidden, layer_norm_eps=1e-6)
        kw.update(PRESET_FIELDS.get(preset_name(cls.model_type, depths, hidden) or "", {}))  # xxlarge: timm's norm eps
        if not grn:
            kw["layer_scale_init_value"] = 1e-6 if "stages.0.0.gamma" in state else 0.0
        if "head.weight" in state:
            kw["num_labels"] = int(state["head.weight"].shape[0])
        names = stage_names_for(num_stages)
        norms = [i for i in range(num_stages + 1) if f"{output_norm_name(i)}.weight" in state]
        if norms:
            kw["out_indices"] = norms
            kw["out_features"] = [names[i] for i in norms]
    if "out_features" in overrides or "out_indices" in overrides:
        kw.pop("out_features", None)
        kw.pop("out_indices", None)
    kw.update(overrides)
    if cls is ConvNextV2Config:
        kw.pop("layer_scale_init_value", None)
    return cls(**kw)
