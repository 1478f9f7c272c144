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

``BackboneNoDecayMixin`` does the same for mmengine's ``DefaultOptimWrapperConstructor``, the one
the query-based recipes use (Mask2Former, DINO: a backbone lr multiplier through
``paramwise_cfg.custom_keys``). There a ``'backbone'`` custom key sets one weight decay for every
backbone parameter and overrides ``norm_decay_mult``, which is why MMSegmentation's Mask2Former-Swin
configs list Swin's norm layers by name; with the mixin the ConvNeXt backbone's no-decay set
(norms, biases, V1 layer scale, V2 GRN) gets weight decay 0 at its custom lr, and every other
parameter keeps what mmengine gave it (``ConvNeXtOptimWrapperConstructor`` in both adapters).
"""
from __future__ import annotations

from typing import Any

from convnext_backbone.optim import no_weight_decay

__all__ = ["BackboneNoDecayMixin", "NoDecayRuleMixin", "apply_no_decay_rule"]


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


class BackboneNoDecayMixin:
    """``class X(BackboneNoDecayMixin, mmengine.optim.DefaultOptimWrapperConstructor)``.

    mmengine builds one group per parameter (lr and weight decay from ``custom_keys``,
    ``norm_decay_mult`` and the rest); afterwards every parameter of a ConvNeXt ``model.backbone``
    that ``no_weight_decay`` exempts gets ``weight_decay=0`` (and ``decay_mult=0`` where a custom
    key put one in its group), its lr unchanged. Models with another backbone are left as built.
    Without a ``paramwise_cfg`` mmengine would hand the optimizer every parameter in one group;
    here its per-parameter path always runs, so the rule applies then too.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None) -> None:
        super().__init__(optim_wrapper_cfg, paramwise_cfg or dict(custom_keys={}))  # type: ignore[call-arg]

    def add_params(self, params: list[dict], module: Any, prefix: str = "", **kwargs: Any) -> None:
        start = len(params)
        super().add_params(params, module, prefix=prefix, **kwargs)  # type: ignore[misc]
        if prefix:  # mmengine recurses into children with their prefix: act once, at the top
            return
        exempt = {id(p) for n, p in backbone_parameters(module) if no_weight_decay(n, p)}
        changed = 0
        for group in params[start:]:
            if len(group["params"]) == 1 and id(group["params"][0]) in exempt:
                group["weight_decay"] = 0.0
                if "decay_mult" in group:
                    group["decay_mult"] = 0.0
                changed += 1
        if changed:
            from mmengine.logging import print_log

            print_log(f"ConvNeXt no-weight-decay rule: {changed} backbone parameters (norms, biases, layer scale, GRN) "
                      "get weight_decay=0", logger="current")


def backbone_parameters(model: Any) -> list[tuple[str, Any]]:
    """``(name, parameter)`` of ``model.backbone`` if it is a ConvNeXt, names as the backbone knows them."""
    from convnext_backbone import ConvNextBackbone

    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, ConvNextBackbone):
        return []
    return [(n, p) for n, p in backbone.named_parameters() if p.requires_grad]
