"""Numerical parity with the references, through checkpoints written to disk in their own formats.

Each test builds the reference with random weights, saves it as its users would, loads the file
through our public API (format detected, no flag) and compares outputs at fp32, max abs <= 1e-5.
"""
import pickle

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import transformers
from PIL import Image

from convnext_backbone import ConvNextBackbone, ConvNextForImageClassification, ConvNextImageProcessor, load_checkpoint

from helpers import max_abs_diff, randomize_

TOL = 1e-5
ALL = ["stem", "stage1", "stage2", "stage3", "stage4"]
PRESETS = {  # (depths, hidden_sizes)
    "convnext_tiny": ([3, 3, 9, 3], [96, 192, 384, 768]),
    "convnext_small": ([3, 3, 27, 3], [96, 192, 384, 768]),
    "convnextv2_atto": ([2, 2, 6, 2], [40, 80, 160, 320]),
    "convnextv2_tiny": ([3, 3, 9, 3], [96, 192, 384, 768]),
}


@pytest.fixture(scope="module")
def pixels():
    torch.manual_seed(0)
    return torch.randn(2, 3, 64, 96)


def _hf_backbone(name, out_features=ALL):
    depths, hidden = PRESETS[name]
    if name.startswith("convnextv2"):
        cfg = transformers.ConvNextV2Config(depths=depths, hidden_sizes=hidden, out_features=out_features)
        return randomize_(transformers.ConvNextV2Backbone(cfg)).eval()
    cfg = transformers.ConvNextConfig(depths=depths, hidden_sizes=hidden, out_features=out_features)
    return randomize_(transformers.ConvNextBackbone(cfg)).eval()


# --- Hugging Face transformers ------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PRESETS))
def test_hf_backbone_parity(name, tmp_path, pixels):
    ref = _hf_backbone(name)
    ref.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    ours = ConvNextBackbone.from_pretrained(tmp_path).eval()
    assert ours.load_report.source_format == "hf" and ours.load_report.ok
    assert ours.out_features == ALL and type(ours.config).__name__ == ("ConvNextV2Config" if "v2" in name else "ConvNextConfig")
    with torch.no_grad():
        assert max_abs_diff(ref(pixels).feature_maps, ours(pixels).feature_maps) <= TOL


@pytest.mark.parametrize("name", ["convnext_tiny", "convnextv2_atto"])
def test_hf_backbone_parity_from_pytorch_model_bin_with_subset(name, tmp_path, pixels):
    ref = _hf_backbone(name, out_features=["stage2", "stage4"])
    ref.config.to_json_file(str(tmp_path / "config.json"))
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    ours = ConvNextBackbone.from_pretrained(tmp_path / "pytorch_model.bin").eval()
    assert ours.out_features == ["stage2", "stage4"]
    with torch.no_grad():
        assert max_abs_diff(ref(pixels).feature_maps, ours(pixels).feature_maps) <= TOL


@pytest.mark.parametrize("name", ["convnext_tiny", "convnextv2_atto"])
def test_hf_classifier_parity(name, tmp_path, pixels):
    depths, hidden = PRESETS[name]
    if "v2" in name:
        ref = transformers.ConvNextV2ForImageClassification(transformers.ConvNextV2Config(depths=depths, hidden_sizes=hidden, num_labels=10))
    else:
        ref = transformers.ConvNextForImageClassification(transformers.ConvNextConfig(depths=depths, hidden_sizes=hidden, num_labels=10))
    randomize_(ref).eval()
    ref.save_pretrained(tmp_path)
    ours = ConvNextForImageClassification.from_pretrained(tmp_path).eval()
    assert ours.config.num_labels == 10 and ours.load_report.ok
    with torch.no_grad():
        assert max_abs_diff(ref(pixels).logits, ours(pixels).logits) <= TOL


def test_hf_model_parity_last_hidden_state(tmp_path, pixels):
    ref = randomize_(transformers.ConvNextV2Model(transformers.ConvNextV2Config(depths=[2, 2, 6, 2], hidden_sizes=[40, 80, 160, 320]))).eval()
    ref.save_pretrained(tmp_path)
    ours = ConvNextBackbone.from_pretrained(tmp_path, norm_outputs=False).eval()
    assert [k for k, _ in ours.load_report.dropped] == ["norm.bias", "norm.weight"]  # the pooled-output norm
    with torch.no_grad():
        assert max_abs_diff(ref(pixels).last_hidden_state, ours(pixels).feature_maps[-1]) <= TOL


# --- timm -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PRESETS))
def test_timm_features_only_parity(name, tmp_path, pixels):
    ref = randomize_(timm.create_model(name, pretrained=False, features_only=True, out_indices=(0, 1, 2, 3))).eval()
    torch.save(ref.state_dict(), tmp_path / "timm_features.pth")
    ours = ConvNextBackbone.from_pretrained(tmp_path / "timm_features.pth", out_indices=[1, 2, 3, 4], norm_outputs=False).eval()
    assert ours.load_report.source_format == "timm" and ours.load_report.ok
    with torch.no_grad():
        assert max_abs_diff(ref(pixels), ours(pixels).feature_maps) <= TOL


@pytest.mark.parametrize("name", ["convnext_tiny", "convnextv2_atto"])
def test_timm_classifier_parity_and_backbone_from_classifier(name, tmp_path, pixels):
    ref = randomize_(timm.create_model(name, pretrained=False, num_classes=5)).eval()
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    cls = ConvNextForImageClassification.from_pretrained(tmp_path / "timm.pth").eval()
    backbone = ConvNextBackbone.from_pretrained(tmp_path / "timm.pth", out_indices=[1, 2, 3, 4], norm_outputs=False).eval()
    assert {k.split(".")[0] for k, _ in backbone.load_report.dropped} == {"head", "norm"}
    with torch.no_grad():
        assert max_abs_diff(ref(pixels), cls(pixels).logits) <= TOL
        assert max_abs_diff(ref.forward_intermediates(pixels, intermediates_only=True), backbone(pixels).feature_maps) <= TOL


# --- official layouts (written by the test from a timm reference, mapping spelled out here) ----------
def _timm_to_official(sd):
    """The official ConvNeXt (V1/V2) repo layout, written independently of the library."""
    out = {}
    for k, v in sd.items():
        k = k.replace("stem_", "stem.").replace("stages_", "stages.")
        parts = k.split(".")
        if parts[0] == "stem":
            nk = "downsample_layers.0." + ".".join(parts[1:])
        elif parts[0] == "stages" and parts[2] == "downsample":
            nk = f"downsample_layers.{parts[1]}." + ".".join(parts[3:])
        elif parts[0] == "stages":
            rest = ".".join(parts[4:])
            rest = rest.replace("conv_dw", "dwconv").replace("mlp.fc1", "pwconv1").replace("mlp.fc2", "pwconv2")
            if rest.startswith("mlp.grn"):
                rest = rest.replace("mlp.grn.weight", "grn.gamma").replace("mlp.grn.bias", "grn.beta")
                v = v.reshape(1, 1, 1, -1)
            nk = f"stages.{parts[1]}.{parts[3]}.{rest}"
        elif k.startswith("head.norm."):
            nk = "norm." + parts[-1]
        elif k.startswith("head.fc."):
            nk = "head." + parts[-1]
        else:
            raise AssertionError(k)
        out[nk] = v.clone()
    return out


def _official_to_fcmae(sd):
    """Official V2 -> FCMAE pre-training layout (MinkowskiEngine tensors), the inverse of its remap."""
    out = {}
    for k, v in sd.items():
        if k.startswith(("norm.", "head.")):
            continue  # FCMAE encoders have no classifier
        if k.startswith("downsample_layers.0."):
            nk = k  # the stem is dense
        elif k.startswith("downsample_layers.") and ".0." in k:
            nk = k.replace(".0.", ".0.ln.", 1)
        elif k.startswith("downsample_layers.") and k.endswith(".1.weight"):
            cout, cin, ks, _ = v.shape
            nk, v = k[:-len("weight")] + "kernel", v.permute(3, 2, 1, 0).reshape(ks * ks, cin, cout)  # [x*ks+y, i, o]
        elif k.startswith("downsample_layers.") and k.endswith(".1.bias"):
            nk, v = k, v.reshape(1, -1)
        elif ".dwconv.weight" in k:
            c, _, ks, _ = v.shape
            nk, v = k.replace("weight", "kernel"), v[:, 0].permute(2, 1, 0).reshape(ks * ks, c)
        elif ".dwconv.bias" in k:
            nk, v = k, v.reshape(1, -1)
        elif ".norm." in k:
            nk = k.replace(".norm.", ".norm.ln.")
        elif ".pwconv" in k:
            nk = k.replace(".weight", ".linear.weight").replace(".bias", ".linear.bias")
        elif ".grn." in k:
            nk, v = k, v.reshape(1, -1)
        else:
            raise AssertionError(k)
        out["encoder." + nk] = v.contiguous()
    out.update({"mask_token": torch.zeros(1, 320, 1, 1), "proj.weight": torch.zeros(512, 320, 1, 1),
                "decoder.0.dwconv.weight": torch.zeros(512, 1, 7, 7), "pred.weight": torch.zeros(48, 512, 1, 1)})
    return out


@pytest.mark.parametrize("name", ["convnext_small", "convnextv2_tiny"])
def test_official_classification_checkpoint(name, tmp_path, pixels):
    ref = randomize_(timm.create_model(name, pretrained=False)).eval()
    torch.save({"model": _timm_to_official(ref.state_dict()), "epoch": 299}, tmp_path / "official.pth")
    cls = ConvNextForImageClassification.from_pretrained(tmp_path / "official.pth").eval()
    assert cls.load_report.source_format == "official" and cls.config.num_labels == 1000
    with torch.no_grad():
        assert max_abs_diff(ref(pixels), cls(pixels).logits) <= TOL


def test_fcmae_pretraining_checkpoint(tmp_path, pixels):
    ref = randomize_(timm.create_model("convnextv2_atto", pretrained=False, features_only=True)).eval()
    official = _timm_to_official(ref.state_dict())
    torch.save({"model": _official_to_fcmae(official), "optimizer": {}, "epoch": 1599}, tmp_path / "fcmae.pt")
    ours = ConvNextBackbone.from_pretrained(tmp_path / "fcmae.pt", out_indices=[1, 2, 3, 4], norm_outputs=False).eval()
    rep = ours.load_report
    assert rep.source_format == "fcmae" and rep.ok
    assert {k for k, _ in rep.dropped} == {"mask_token", "proj.weight", "decoder.0.dwconv.weight", "pred.weight"}
    with torch.no_grad():
        assert max_abs_diff(ref(pixels), ours(pixels).feature_maps) <= TOL


def _layer_norm_2d(x, w, b):
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), w, b, 1e-6).permute(0, 3, 1, 2)


def _det_seg_state(ref, prefix):
    """An official det/seg checkpoint: `backbone.` trunk, norm0..3 output norms, plus head keys."""
    g = torch.Generator().manual_seed(1)
    state = {prefix + k: v for k, v in _timm_to_official(ref.state_dict()).items()}
    norms = {}
    for i, c in enumerate(ref.feature_info.channels()):
        norms[i] = (1 + 0.2 * torch.randn(c, generator=g), 0.1 * torch.randn(c, generator=g))
        state[f"{prefix}norm{i}.weight"], state[f"{prefix}norm{i}.bias"] = norms[i]
    return state, norms


def test_official_det_seg_checkpoint(tmp_path, pixels):
    ref = randomize_(timm.create_model("convnext_tiny", pretrained=False, features_only=True)).eval()
    state, norms = _det_seg_state(ref, "backbone.")
    state["decode_head.conv_seg.weight"] = torch.zeros(150, 512, 1, 1)
    state["auxiliary_head.conv_seg.weight"] = torch.zeros(150, 256, 1, 1)
    torch.save({"meta": {"iter": 160000}, "state_dict": state}, tmp_path / "upernet.pth")
    ours = ConvNextBackbone.from_pretrained(tmp_path / "upernet.pth").eval()
    assert ours.out_features == ["stage1", "stage2", "stage3", "stage4"]  # inferred from norm0..3
    assert ours.load_report.source_format == "official" and not ours.load_report.initialized
    with torch.no_grad():
        expected = [_layer_norm_2d(f, *norms[i]) for i, f in enumerate(ref(pixels))]
        assert max_abs_diff(expected, ours(pixels).feature_maps) <= TOL


def test_detectron2_pkl_checkpoint(tmp_path, pixels):
    ref = randomize_(timm.create_model("convnextv2_atto", pretrained=False, features_only=True)).eval()
    state, norms = _det_seg_state(ref, "backbone.bottom_up.")
    state["backbone.fpn_lateral2.weight"] = torch.zeros(256, 40, 1, 1)
    state["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(81, 1024)
    with open(tmp_path / "model_final.pkl", "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "test", "matching_heuristics": True}, f)
    ours = ConvNextBackbone.from_pretrained(tmp_path / "model_final.pkl").eval()
    with torch.no_grad():
        expected = [_layer_norm_2d(f, *norms[i]) for i, f in enumerate(ref(pixels))]
        assert max_abs_diff(expected, ours(pixels).feature_maps) <= TOL


def test_mmpretrain_checkpoint(tmp_path, pixels):
    ref = randomize_(timm.create_model("convnextv2_atto", pretrained=False, num_classes=3)).eval()
    state = {}
    for k, v in _timm_to_official(ref.state_dict()).items():
        if k.startswith("norm."):
            state["backbone.norm3." + k.split(".")[1]] = v  # mmpretrain's last out norm, applied after pooling
        elif k.startswith("head."):
            state["head.fc." + k.split(".")[1]] = v
        else:
            k = k.replace("dwconv", "depthwise_conv").replace("pwconv", "pointwise_conv")
            state["backbone." + k] = v.reshape(-1) if ".grn." in k else v
    torch.save({"meta": {"mmpretrain_version": "1.2.0"}, "state_dict": state}, tmp_path / "mmpretrain.pth")
    cls = ConvNextForImageClassification.from_pretrained(tmp_path / "mmpretrain.pth").eval()
    assert cls.load_report.source_format == "mmpretrain"
    with torch.no_grad():
        assert max_abs_diff(ref(pixels), cls(pixels).logits) <= TOL


def test_load_checkpoint_into_existing_model(tmp_path, pixels):
    ref = _hf_backbone("convnextv2_atto")
    ref.save_pretrained(tmp_path)
    ours = ConvNextBackbone.from_preset("convnextv2_atto", out_features=ALL).eval()
    report = load_checkpoint(ours, tmp_path)
    assert report.ok and len(report.loaded) == len(ours.state_dict())
    with torch.no_grad():
        assert max_abs_diff(ref(pixels).feature_maps, ours(pixels).feature_maps) <= TOL


# --- preprocessing ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    {},  # shortest_edge 384: warp to a square
    {"size": {"shortest_edge": 224}, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
    {"size": {"shortest_edge": 160}, "crop_pct": 0.95, "resample": 2},
])
def test_image_processor_parity(kwargs):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(300, 200), (151, 97), (480, 640)]]
    images.append(Image.fromarray(rng.integers(0, 256, (120, 90), dtype=np.uint8)).convert("RGB"))
    ref = transformers.ConvNextImageProcessor(**kwargs)
    ours = ConvNextImageProcessor(**kwargs)
    for im in images:
        expected = ref(im, return_tensors="pt")["pixel_values"]
        got = ours(im)["pixel_values"]
        assert max_abs_diff(expected, got) <= TOL


@pytest.mark.parametrize("name", ["convnext_tiny", "convnextv2_tiny"])
def test_fp32_error_against_fp64_no_worse_than_reference(name, tmp_path, pixels):
    """Guards the fast path: our fp32 rounding error stays at the reference's own level."""
    ref = randomize_(timm.create_model(name, pretrained=False, features_only=True)).eval()
    torch.save(ref.state_dict(), tmp_path / "t.pth")
    ours = ConvNextBackbone.from_pretrained(tmp_path / "t.pth", out_indices=[1, 2, 3, 4], norm_outputs=False).eval()
    with torch.no_grad():
        ref_fp32, ours_fp32 = ref(pixels), ours(pixels).feature_maps
        truth = ref.double()(pixels.double())
    ref_err = max_abs_diff([a.double() for a in ref_fp32], truth)
    ours_err = max_abs_diff([a.double() for a in ours_fp32], truth)
    assert ours_err <= 2 * ref_err + 1e-6, (ours_err, ref_err)


@pytest.mark.parametrize("name", ["convnext_tiny", "convnextv2_atto"])
def test_training_gradients_match_timm(name, tmp_path, pixels):
    """The folded layer scale / GRN of our training path give the reference's gradients."""
    from convnext_backbone.convert import convert_state_dict

    ref = randomize_(timm.create_model(name, pretrained=False, features_only=True)).train()
    torch.save(ref.state_dict(), tmp_path / "t.pth")
    ours = ConvNextBackbone.from_pretrained(tmp_path / "t.pth", out_indices=[1, 2, 3, 4], norm_outputs=False).train()
    for model, feats in ((ref, lambda m: m(pixels)), (ours, lambda m: m(pixels).feature_maps)):
        sum((f * f).mean() for f in feats(model)).backward()
    ref_grads = {k: p.grad for k, p in ref.named_parameters()}
    our_grads = dict(ours.named_parameters())
    mapping = convert_state_dict(ref.state_dict()).mapping
    assert len(mapping) == len(our_grads)
    worst = 0.0
    for src, dst in mapping:
        g_ref, g_ours = ref_grads[src], our_grads[dst].grad
        scale = g_ref.abs().max().item() + 1e-12
        worst = max(worst, max_abs_diff(g_ref.reshape(g_ours.shape), g_ours) / scale)
    assert worst < 1e-4, worst  # relative to each tensor's largest gradient
