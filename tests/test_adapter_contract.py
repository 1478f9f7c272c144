"""Every adapter's backbone keeps the core contract (forward_features, forward_dict, channels,
strides, extract_features and export work on it) while forward returns its framework's format:
Detectron2, MMSegmentation, MMDetection and transformers."""
from __future__ import annotations

import pytest
import torch

import detectron2_convnext  # noqa: F401  (a missing framework must fail loudly, not skip)
import mmseg_convnext  # noqa: F401
from convnext_backbone import build_backbone, extract_features
from convnext_backbone.export.onnx_export import export_onnx, verify_onnx
from detectron2_convnext import D2ConvNeXt
from mmdet_convnext import MMDetConvNeXt
from mmseg_convnext import MMSegConvNeXt
from transformers_convnext import ConvNextBackboneConfig, ConvNextBackboneModel

from helpers import max_abs_diff, randomize_

NAMES = ["stage1", "stage2", "stage3", "stage4"]


def _adapters():
    d2 = D2ConvNeXt(name="convnextv2_atto", out_features=NAMES)
    mm = MMSegConvNeXt(arch="convnextv2_atto", out_indices=(0, 1, 2, 3))
    mmdet = MMDetConvNeXt(arch="convnextv2_atto", out_indices=(0, 1, 2, 3))
    hf = ConvNextBackboneModel(ConvNextBackboneConfig.from_preset("convnextv2_atto", out_features=NAMES))
    return {"detectron2": d2, "mmseg": mm, "mmdet": mmdet, "transformers": hf}


@pytest.fixture(scope="module")
def pair():
    core = randomize_(build_backbone("convnextv2_atto", out_features=NAMES)).eval()
    adapters = {k: m.eval() for k, m in _adapters().items()}
    for m in adapters.values():
        m.load_state_dict(core.state_dict())
    return core, adapters


def test_forward_keeps_each_frameworks_format_and_the_core_contract_holds(pair):
    core, adapters = pair
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = core(x).feature_maps
        d2, mm, mmdet, hf = (adapters[k] for k in ("detectron2", "mmseg", "mmdet", "transformers"))
        assert isinstance(d2(x), dict) and list(d2(x)) == NAMES and max_abs_diff(list(d2(x).values()), ref) == 0
        assert isinstance(mm(x), tuple) and max_abs_diff(mm(x), ref) == 0
        assert isinstance(mmdet(x), tuple) and max_abs_diff(mmdet(x), ref) == 0
        hf_out = hf(x)
        assert type(hf_out).__module__.startswith("transformers.") and max_abs_diff(list(hf_out.feature_maps), ref) == 0
        for name, model in adapters.items():
            assert list(model.stage_names) == list(core.stage_names) and model.out_features == NAMES, name
            assert model.channels == core.channels and model.strides == core.strides, name
            out = model.forward_features(x, output_hidden_states=True)
            assert max_abs_diff(out.feature_maps, ref) == 0 and len(out.hidden_states) == 5, name
            got = model.forward_dict(x)
            assert list(got) == NAMES and max_abs_diff(list(got.values()), ref) == 0, name
            assert list(model.output_norms()) == NAMES, name


def test_extract_features_on_adapter_models(pair):
    core, adapters = pair
    x = torch.randn(3, 3, 64, 64)
    want = extract_features(core, x, batch_size=2)
    for model in adapters.values():
        got = extract_features(model, x, features="stage2,stage4", batch_size=2)
        assert list(got) == ["stage2", "stage4"]
        assert max_abs_diff([got["stage2"], got["stage4"]], [want["stage2"], want["stage4"]]) == 0


@pytest.mark.parametrize("framework", ["detectron2", "mmseg", "mmdet", "transformers"])
def test_onnx_export_of_adapter_models(pair, framework, tmp_path):
    model = pair[1][framework]
    path = export_onnx(model, tmp_path / f"{framework}.onnx")
    diffs = verify_onnx(model, path, shapes=((1, 3, 64, 96),))
    assert list(diffs[0]) == NAMES and max(diffs[0].values()) < 1e-4
