"""Every public ConvNeXt checkpoint format -> the official layout our model uses.

Formats: official classification (V1 ``{'model': ...}``, V2 fine-tuned), official V2 FCMAE
pre-training (``encoder.``, sparse ``kernel`` tensors), official det/seg (``backbone.``,
``norm0..3``), Hugging Face transformers (V1/V2, Model/Backbone/ForImageClassification),
timm (V1/V2, plain or ``features_only``), mmpretrain, Detectron2 ``.pkl``, and our own
``save_pretrained``. Loading is strict by default and every key ends up in a report.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .cli_errors import UserError
from .config import CONFIG_CLASSES, OUTPUT_NORM_KEY, ConvNextConfig, ConvNextV2Config, output_norm_name, stage_names_for
from .fileio import atomic_write, safetensors_bytes

__all__ = [
    "CheckpointError",
    "LoadReport",
    "convert_state_dict",
    "describe_mismatch",
    "detect_format",
    "infer_config",
    "load_checkpoint",
    "match_converted",
    "read_checkpoint",
    "save_pretrained",
    "from_pretrained",
]

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class CheckpointError(UserError):
    """A checkpoint that cannot be read, recognised or loaded as asked (a ``ValueError``; one line in a CLI)."""


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Detectron2 ``.pkl`` files are pickled dicts of numpy arrays; allow nothing else."""

    _allowed = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict"), ("builtins", "set"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only numpy arrays are allowed in .pkl weights)")


def _find_weight_file(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    candidates = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin", ".pth", ".pt", ".pkl", ".ckpt"))
    if len(candidates) == 1:
        return candidates[0]
    raise CheckpointError(
        f"{directory}: expected one of {list(WEIGHT_FILES)} (or a single .safetensors/.pth/.pkl file); found "
        f"{[p.name for p in candidates] or 'none'}"
    )


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Peel training-checkpoint wrappers: {'model': ...}, {'state_dict': ...}, {'module': ...}."""
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        if isinstance(obj, Mapping):
            for key in ("model", "state_dict", "model_state", "module", "params"):
                if key in obj and isinstance(obj[key], Mapping):
                    obj = obj[key]
                    break
            else:
                break
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError(f"{path}: no state dict of tensors found (top-level keys: {list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__})")


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Return ``(state_dict, config_dict_or_None)`` from a file or a directory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    config = None
    if path.is_dir():
        if (path / "config.json").is_file():
            try:
                config = json.loads((path / "config.json").read_text())
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{path / 'config.json'} is not valid JSON: {e}") from e
        path = _find_weight_file(path)
    elif (path.parent / "config.json").is_file() and path.name in WEIGHT_FILES:
        config = json.loads((path.parent / "config.json").read_text())
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        elif path.suffix == ".pkl":
            with open(path, "rb") as f:
                obj = _NumpyOnlyUnpickler(f, encoding="latin1").load()
            state = _numpy_to_torch(obj)
        else:
            # weights_only=True: never execute code from a file a user downloaded.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # torch, pickle, zip and safetensors each raise their own types
        raise CheckpointError(f"{path}: not a readable checkpoint ({_why_unreadable(path, e)})") from e
    return _unwrap(state, path), config


def _why_unreadable(path: Path, e: Exception) -> str:
    """One line. torch's own messages run to paragraphs, and for a file that is no checkpoint at
    all they advise ``weights_only=False``, which would execute whatever the file holds."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror}"
    if not head:
        return "the file is empty"
    if path.suffix not in (".safetensors", ".pkl"):
        if head.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(path):
            return "a zip archive as torch.save writes, but cut short: a truncated download or copy?"
        if not head.startswith(b"PK\x03\x04") and not head.startswith(b"\x80"):
            return "neither a zip archive (torch.save) nor a pickle: not a checkpoint file"
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    if "Unsupported" in text:  # torch.load(weights_only=True) met something other than tensors
        detail = text[text.index("Unsupported"):].split(". ")[0].split("\n")[0]
        return f"it holds objects that are not loaded, for safety ({detail})"
    return f"{type(e).__name__}: {text.strip().splitlines()[0] if text.strip() else ''}"


def _numpy_to_torch(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, Mapping):
        return {k: _numpy_to_torch(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    return obj


# ---------------------------------------------------------------------------------------------
# format detection and conversion
# ---------------------------------------------------------------------------------------------
_PREFIXES = ("module.", "backbone.bottom_up.", "backbone.", "encoder.", "model.")


def detect_format(state: Mapping[str, torch.Tensor]) -> str:
    """One of: official, fcmae, hf, timm, mmpretrain. Raises CheckpointError for anything else."""
    keys = list(state)
    joined = "\n".join(keys)
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
        "unrecognised checkpoint: no ConvNeXt layout (official, FCMAE, HF transformers, timm, mmpretrain) matches its "
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


_KEY_MAPS = {"hf": _hf_key, "timm": _timm_key, "mmpretrain": _mmpretrain_key, "official": _official_key, "fcmae": _fcmae_key}

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


def convert_state_dict(state: Mapping[str, torch.Tensor], fmt: str | None = None) -> Conversion:
    """Rename and reshape any supported layout into the official one."""
    stripped: dict[str, torch.Tensor] = {}
    originals: dict[str, str] = {}
    dropped: list[tuple[str, str]] = []
    for k, v in state.items():
        if _NON_TRUNK.match(k):
            dropped.append((k, "not part of the backbone (detector/segmentor head or pre-training decoder)"))
            continue
        sk, _ = _strip_prefix(k)
        if _NON_TRUNK.match(sk):
            dropped.append((k, "not part of the backbone (detector/segmentor head or pre-training decoder)"))
            continue
        if sk.endswith("num_batches_tracked"):
            dropped.append((k, "bookkeeping buffer"))
            continue
        stripped[sk] = v
        originals[sk] = k
    fmt = fmt or detect_format(stripped)
    if fmt not in _KEY_MAPS:
        raise CheckpointError(f"unknown format {fmt!r}; expected one of {list(_KEY_MAPS)}")
    key_map = _KEY_MAPS[fmt]
    out: dict[str, torch.Tensor] = {}
    conv = Conversion(out, fmt, dropped=dropped)
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


# ---------------------------------------------------------------------------------------------
# loading into a model
# ---------------------------------------------------------------------------------------------
@dataclass
class LoadReport:
    source_format: str
    loaded: list[str] = field(default_factory=list)
    initialized: list[str] = field(default_factory=list)  # output norms absent from the file: fresh init
    dropped: list[tuple[str, str]] = field(default_factory=list)  # recognised but unused here, with why
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # key, file, model

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def errors(self, prefix: str = "") -> list[str]:
        """Shape mismatches first: they say most about what went wrong (another architecture).
        ``prefix``: where the model sits in a larger one (``backbone.bottom_up.``), put before each key."""
        lines = [f"shape mismatch for {prefix}{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in self.mismatched]
        lines += [f"missing from checkpoint: {prefix}{k}" for k in self.missing]
        lines += [f"unexpected key in checkpoint: {prefix}{k}" for k in self.unexpected]
        return lines

    def summary(self) -> str:
        parts = [f"format={self.source_format}", f"loaded={len(self.loaded)}"]
        if self.initialized:
            parts.append(f"initialized (not in checkpoint)={', '.join(sorted({k.split('.')[0] for k in self.initialized}))}")
        if self.dropped:
            groups = sorted({k.split('.')[0] for k, _ in self.dropped})
            parts.append(f"dropped={len(self.dropped)} ({', '.join(groups[:6])}{'...' if len(groups) > 6 else ''})")
        if not self.ok:
            parts.append(f"errors={len(self.errors())}")
        return "; ".join(parts)


def _is_classifier(model: nn.Module) -> bool:
    return hasattr(model, "head")


def _classify_extra(key: str, model: nn.Module) -> str | None:
    """Why a recognised key is legitimately unused by this model, or None if it is an error."""
    if key.startswith(("head.", "norm.")) and not _is_classifier(model):
        return "classification head / final norm (not used by a backbone)"
    if OUTPUT_NORM_KEY.match(key) and _is_classifier(model):
        return "det/seg output norm (not used by a classifier)"
    if OUTPUT_NORM_KEY.match(key):
        return "output norm of a stage not in out_features (or norm_outputs=False)"
    return None


STRICT_HINT = "Pass strict=False to load what matches and get the report instead."


def load_checkpoint(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
    strict: bool = True,
    hint: str | None = STRICT_HINT,
) -> LoadReport:
    """Load any supported format into ``model``; strict raises on any real mismatch (``hint`` ends the message)."""
    state = read_checkpoint(checkpoint)[0] if isinstance(checkpoint, (str, os.PathLike)) else dict(checkpoint)
    conv = convert_state_dict(state)
    source = str(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "state dict"
    return load_converted(model, conv, strict=strict, source=source, hint=hint)


def _architectures(conv: Conversion, model: nn.Module) -> str:
    """``checkpoint is convnextv2_atto, model is convnextv2_small. `` when they differ, else ``''``."""
    config = getattr(model, "config", None)
    try:
        theirs = infer_config(conv.state_dict).architecture
    except (CheckpointError, ValueError, KeyError, IndexError):
        return ""
    ours = config.architecture if isinstance(config, ConvNextConfig) else type(model).__name__
    return f"checkpoint is {theirs}, model is {ours}. " if theirs != ours else ""


def match_converted(model: nn.Module, conv: Conversion) -> tuple[LoadReport, dict[str, torch.Tensor]]:
    """What loading ``conv`` into ``model`` would do, without doing it: the report, and the tensors that fit.

    Every tensor of the checkpoint is used, or dropped for a stated reason (a classifier head in
    a backbone, an output norm not returned), or an error: a key the model lacks (a deeper stage,
    an extra stage, layer scale into a model without it) is ``unexpected``, never ignored.
    """
    report = LoadReport(conv.source_format, dropped=list(conv.dropped), unexpected=list(conv.unknown))
    own = model.state_dict()
    to_load: dict[str, torch.Tensor] = {}
    for k, v in conv.state_dict.items():
        if k not in own:
            why = _classify_extra(k, model)
            if why:
                report.dropped.append((k, why))
            else:
                report.unexpected.append(k)
            continue
        if tuple(v.shape) != tuple(own[k].shape):
            report.mismatched.append((k, tuple(v.shape), tuple(own[k].shape)))
            continue
        to_load[k] = v
    for k in own:
        if k in to_load:
            continue
        if OUTPUT_NORM_KEY.match(k):
            report.initialized.append(k)
        elif not any(k == m for m, _, _ in report.mismatched):
            report.missing.append(k)
    return report, to_load


def describe_mismatch(report: LoadReport, conv: Conversion, model: nn.Module, prefix: str = "") -> str:
    """``checkpoint is <arch>, model is <arch>. N problem(s):`` and the first 20 (keys under ``prefix``)."""
    errs = report.errors(prefix)
    shown = "\n  ".join(errs[:20]) + (f"\n  ... and {len(errs) - 20} more" if len(errs) > 20 else "")
    return f"{_architectures(conv, model)}{len(errs)} problem(s):\n  {shown}"


def load_converted(model: nn.Module, conv: Conversion, strict: bool = True, source: str = "checkpoint",
                   hint: str | None = STRICT_HINT) -> LoadReport:
    """Load a converted state dict; with ``strict`` any real mismatch raises ``CheckpointError``
    naming both architectures when they differ, then the keys (shape mismatches first), then ``hint``
    (how to load anyway, in the terms of the caller: a keyword, a flag, a config key; None: no hint)."""
    report, to_load = match_converted(model, conv)
    if strict and not report.ok:
        raise CheckpointError(
            f"{source} ({conv.source_format} layout) does not match {type(model).__name__}: {describe_mismatch(report, conv, model)}"
            + (f"\n{hint}" if hint else "")
        )
    own = model.state_dict()
    with torch.no_grad():
        for k, v in to_load.items():
            own[k].copy_(v.to(own[k].dtype))
    report.loaded = sorted(to_load)
    return report


# ---------------------------------------------------------------------------------------------
# save / from_pretrained
# ---------------------------------------------------------------------------------------------
def save_pretrained(model: nn.Module, save_directory: str | os.PathLike) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into ``save_directory``, atomically.

    Also into the directory the model was loaded from (fine-tune, then save back: the usual
    transformers workflow): the caller named that directory, and the whole model is in memory.
    What refuses to write over its input is every command with a SRC and a DST (``convert``,
    ``export-onnx``, ...: ``fileio.check_not_overwriting``), whose output keeps only part of SRC.
    """
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    arch = "ConvNextForImageClassification" if _is_classifier(model) else "ConvNextBackbone"
    cfg = dict(model.config.to_dict(), architectures=[arch])
    atomic_write(out / "model.safetensors", safetensors_bytes(state, {"format": "pt", "layout": "convnext_backbone"}))
    atomic_write(out / "config.json", json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return out


def open_checkpoint(path: str | os.PathLike) -> tuple[Path, Conversion, dict[str, Any] | None]:
    """Resolve (hub id or path), read and convert: ``(local path, conversion, config.json or None)``."""
    from .hub import resolve_pretrained

    local = resolve_pretrained(path)
    state, config_dict = read_checkpoint(local)
    conv = convert_state_dict(state)
    if config_dict and config_dict.get("model_type") not in CONFIG_CLASSES:
        raise CheckpointError(f"{local}: config.json model_type {config_dict.get('model_type')!r} is not a ConvNeXt")
    return local, conv, config_dict


def from_pretrained(cls: type, path: str | os.PathLike, strict: bool = True, **overrides: Any):
    local, conv, config_dict = open_checkpoint(path)
    config = infer_config(conv.state_dict, config_dict, **overrides)
    model = cls(config)
    model.load_report = load_converted(model, conv, strict=strict, source=str(local))
    return model


def describe_conversion(conv: Conversion) -> str:
    """Human-readable mapping used by ``convnext-backbone convert``."""
    buf = io.StringIO()
    buf.write(f"source format: {conv.source_format}\n")
    buf.write(f"mapped {len(conv.mapping)} tensors\n")
    renamed = [(a, b) for a, b in conv.mapping if a != b]
    for a, b in renamed[:12]:
        buf.write(f"  {a} -> {b}\n")
    if len(renamed) > 12:
        buf.write(f"  ... and {len(renamed) - 12} more renamed\n")
    if conv.dropped:
        buf.write(f"dropped {len(conv.dropped)} tensors:\n")
        by_reason: dict[str, list[str]] = {}
        for k, why in conv.dropped:
            by_reason.setdefault(why, []).append(k)
        for why, keys in by_reason.items():
            buf.write(f"  {len(keys)} x {why} (e.g. {keys[0]})\n")
    if conv.unknown:
        buf.write(f"UNRECOGNISED {len(conv.unknown)} tensors (not converted): {conv.unknown[:8]}\n")
    return buf.getvalue()
