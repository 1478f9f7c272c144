"""Layer-wise lr decay for ConvNeXt V2 segmentors: MMSegmentation's rule plus V2's no-decay set.

MMSegmentation's ``LearningRateDecayOptimizerConstructor`` already gives ConvNeXt the official
layer-/stage-wise learning rates (our parameter names and class name are what it looks for),
and exempts 1-D parameters and biases from weight decay. ConvNeXt V2's GRN ``gamma``/``beta``
are stored with shape ``(1, 1, 1, C)`` (official checkpoint layout), so that rule decays them,
while the official V2 fine-tuning code (``optim_factory.get_parameter_groups``) exempts every
``.gamma``/``.beta``. ``ConvNeXtV2LearningRateDecayOptimizerConstructor`` is MMSeg's
constructor with those parameters moved to the ``no_decay`` group of the same layer (same lr);
for V1 models it builds exactly the same groups as MMSeg's.
"""
from __future__ import annotations

import re

from mmseg.engine.optimizers import LearningRateDecayOptimizerConstructor
from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS

__all__ = ["ConvNeXtV2LearningRateDecayOptimizerConstructor", "GRN_PARAM"]

GRN_PARAM = re.compile(r"\.grn\.(gamma|beta)$")


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ConvNeXtV2LearningRateDecayOptimizerConstructor(LearningRateDecayOptimizerConstructor):
    """MMSeg's ``LearningRateDecayOptimizerConstructor``; GRN gamma/beta get no weight decay."""

    def add_params(self, params, module, **kwargs):
        start = len(params)
        super().add_params(params, module, **kwargs)
        groups = {g["group_name"]: g for g in params[start:]}
        for name, group in list(groups.items()):
            if not name.endswith("_decay") or name.endswith("_no_decay"):
                continue
            moved = [i for i, n in enumerate(group["param_names"]) if GRN_PARAM.search(n)]
            if not moved:
                continue
            target_name = name[: -len("decay")] + "no_decay"
            target = groups.get(target_name)
            if target is None:
                target = dict(group, params=[], param_names=[], weight_decay=0.0, group_name=target_name)
                groups[target_name] = target
                params.append(target)
            for i in moved:
                target["params"].append(group["params"][i])
                target["param_names"].append(group["param_names"][i])
            keep = [i for i in range(len(group["params"])) if i not in set(moved)]
            group["params"] = [group["params"][i] for i in keep]
            group["param_names"] = [group["param_names"][i] for i in keep]
        params[:] = [g for g in params if g["params"]]
