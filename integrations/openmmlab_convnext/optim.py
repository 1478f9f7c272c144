"""ConvNeXt's no-weight-decay rule on top of an OpenMMLab ``LearningRateDecayOptimizerConstructor``.

MMSegmentation's and MMDetection's ``LearningRateDecayOptimizerConstructor`` already give
ConvNeXt the official layer-/stage-wise learning rates (our parameter names and class name are
what they look for) and exempt 1-D parameters and biases from weight decay. ConvNeXt V2's GRN
``gamma``/``beta`` are stored with shape ``(1, 1, 1, C)`` (official checkpoint layout), so that
rule decays them, while the official V2 fine-tuning code exempts every ``.gamma``/``.beta``.

``NoDecayRuleMixin`` is put in front of a framework's constructor by each adapter
(``ConvNeXtV2LearningRateDecayOptimizerConstructor`` in ``mmseg_convnext`` and
``mmdet_convnext``): after the framework built its groups, every parameter that
``convnext_backbone.optim.no_weight_decay`` exempts but a ``*_decay`` group holds moves to the
``*_no_decay`` group of the same layer (same lr, weight decay 0). For V1 models nothing moves,
so the groups are exactly the framework's.
"""
from __future__ import annotations

from typing import Any

from convnext_backbone.optim import no_weight_decay

__all__ = ["NoDecayRuleMixin", "apply_no_decay_rule"]


def apply_no_decay_rule(groups: list[dict[str, Any]]) -> None:
    """Move no-decay parameters out of the ``*_decay`` groups (in place; empty groups are dropped)."""
    by_name = {g["group_name"]: g for g in groups}
    for name, group in list(by_name.items()):
        if not name.endswith("_decay") or name.endswith("_no_decay"):
            continue
        moved = [i for i, (n, p) in enumerate(zip(group["param_names"], group["params"])) if no_weight_decay(n, p)]
        if not moved:
            continue
        target_name = name[: -len("decay")] + "no_decay"
        target = by_name.get(target_name)
        if target is None:
            target = dict(group, params=[], param_names=[], weight_decay=0.0, group_name=target_name)
            by_name[target_name] = target
            groups.append(target)
        for i in moved:
            target["params"].append(group["params"][i])
            target["param_names"].append(group["param_names"][i])
        keep = [i for i in range(len(group["params"])) if i not in set(moved)]
        group["params"] = [group["params"][i] for i in keep]
        group["param_names"] = [group["param_names"][i] for i in keep]
    groups[:] = [g for g in groups if g["params"]]


class NoDecayRuleMixin:
    """``class X(NoDecayRuleMixin, <framework>.LearningRateDecayOptimizerConstructor)``."""

    def add_params(self, params: list[dict], module: Any, **kwargs: Any) -> None:
        start = len(params)
        super().add_params(params, module, **kwargs)  # type: ignore[misc]
        added = params[start:]
        apply_no_decay_rule(added)
        params[start:] = added
