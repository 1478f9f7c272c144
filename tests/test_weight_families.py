"""Modern ConvNeXt weight families: DINOv3 (transformers and Meta's original layout with its
distillation extras), open_clip / CLIP ConvNeXt checkpoints, timm's MLP-head and XXL models.

Each reference is built with random weights, written to disk in its own layout, loaded through the
converter (format detected, no flag) and compared at the parity tolerance; the load report must say
what was dropped and why, and which family the weights are (its normalisation and license), which
then travels into ``convert``'s output and ``export``.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import transformers

from convnext_backbone import ConvNextBackbone, ConvNextImageProcessor
from convnext_backbone.convert import convert_state_dict, infer_config
from convnext_backbone.families import CLIP_MEAN, CLIP_STD, FAMILIES, IMAGENET_MEAN, detect_family, normalisation_mismatch

from helpers import max_abs_diff, randomize_

TOL = 1e-5
ROOT = Path(__file__).resolve().parents[1]
STAGES = [1, 2, 3, 4]


@pytest.fixture(scope="module")
def pixels():
    torch.manual_seed(0)
    return torch.randn(2, 3, 64, 96)


def _timm_features(model, pixels):
    with torch.no_grad():
        return model.forward_intermediates(pixels, intermediates_only=True)


def _dropped(report) -> dict[str, set[str]]:
    """why -> the top-level key groups dropped for it."""
    out: dict[str, set[str]] = {}
    for key, why in report.dropped:
        out.setdefault(why, set()).add(key.split(".")[0])
    return out


# --- DINOv3 ------------------------------------------------------------------------------------------
def test_transformers_dinov3_convnext_model_hidden_states(tmp_path, pixels):
    cfg = transformers.DINOv3ConvNextConfig(depths=[1, 1, 2, 1], hidden_sizes=[40, 80, 160, 320])
    ref = randomize_(transformers.DINOv3ConvNextModel(cfg)).eval()
    ref.save_pretrained(tmp_path / "dinov3-convnext")
    assert json.loads((tmp_path / "dinov3-convnext" / "config.json").read_text())["model_type"] == "dinov3_convnext"
    ours = ConvNextBackbone.from_pretrained(tmp_path / "dinov3-convnext", out_indices=STAGES, norm_outputs=False)
    report = ours.load_report
    assert report.source_format == "dinov3_hf" and report.ok
    assert report.weights_family == "dinov3_lvd1689m" and ours.config.weights_family == "dinov3_lvd1689m"
    assert "DINOv3 License" in report.summary()
    assert {k for k, _ in report.dropped} == {"norm.bias", "norm.weight"}  # layer_norm, on the pooled and patch tokens: a final norm
    with torch.no_grad():
        want = ref(pixels, output_hidden_states=True).hidden_states
        got = ours(pixels, output_hidden_states=True).hidden_states
    assert len(want) == 5
    assert max_abs_diff(list(want[1:]), list(got[1:])) <= TOL  # the stages
    assert max_abs_diff(want[0], pixels) == 0 or max_abs_diff(want[0], got[0]) <= TOL  # the input or the stem


def _official_state(timm_model) -> dict[str, torch.Tensor]:
    """timm's ConvNeXt -> the official key names (as Meta's DINOv3 ConvNeXt files use), via our converter."""
    conv = convert_state_dict(timm_model.state_dict())
    return {k: v for k, v in conv.state_dict.items() if not k.startswith(("head.", "norm."))}


def test_dinov3_original_layout_with_distillation_extras(tmp_path, pixels):
    ref = randomize_(timm.create_model("convnext_tiny", pretrained=False, num_classes=0)).eval()
    state = _official_state(ref)
    extras = {"norms.0.weight": torch.ones(768), "norms.0.bias": torch.zeros(768),
              "projectors.0.weight": torch.randn(1024, 768), "projectors.0.bias": torch.zeros(1024)}
    torch.save({**state, **extras}, tmp_path / "eupe_convnext_tiny.pth")
    ours = ConvNextBackbone.from_pretrained(tmp_path / "eupe_convnext_tiny.pth", out_indices=STAGES, norm_outputs=False)
    report = ours.load_report
    assert report.ok and report.source_format == "official"
    assert _dropped(report) == {"DINOv3/EUPE distillation feature norms and projectors (pre-training heads)": {"norms", "projectors"}}
    assert report.weights_family == "eupe_lvd1689m" and "Noncommercial" in FAMILIES["eupe_lvd1689m"].license
    with torch.no_grad():
        assert max_abs_diff(_timm_features(ref, pixels), ours(pixels).feature_maps) <= TOL
    torch.save(state, tmp_path / "convnext_tiny_dinov3_lvd1689m.pth")  # no extras: the name tells the family
    named = ConvNextBackbone.from_pretrained(tmp_path / "convnext_tiny_dinov3_lvd1689m.pth", out_indices=STAGES)
    assert named.load_report.weights_family == "dinov3_lvd1689m"


# --- CLIP / open_clip --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_base():
    """timm convnext_base as open_clip's image trunk (num_classes=0: the head norm stays)."""
    return randomize_(timm.create_model("convnext_base", pretrained=False, num_classes=0)).eval()


def _open_clip_state(trunk, head: str) -> dict[str, torch.Tensor]:
    width, embed = trunk.num_features, 64
    state = {f"visual.trunk.{k}": v for k, v in trunk.state_dict().items()}
    if head == "proj":
        state["visual.head.proj.weight"] = torch.randn(embed, width)
    else:
        state.update({"visual.head.mlp.fc1.weight": torch.randn(width, width), "visual.head.mlp.fc1.bias": torch.zeros(width),
                      "visual.head.mlp.fc2.weight": torch.randn(embed, width)})
    text = {"positional_embedding": torch.randn(77, 32), "text_projection": torch.randn(32, embed), "logit_scale": torch.tensor(4.6),
            "token_embedding.weight": torch.randn(100, 32), "transformer.resblocks.0.attn.in_proj_weight": torch.randn(96, 32),
            "ln_final.weight": torch.ones(32), "ln_final.bias": torch.zeros(32)}
    return {**state, **text}


@pytest.mark.parametrize("head", ["proj", "mlp"])
def test_open_clip_checkpoint_in_a_training_wrapper(head, clip_base, tmp_path, pixels):
    state = _open_clip_state(clip_base, head)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 32, "name": "run"}, tmp_path / "epoch_32.pt")
    ours = ConvNextBackbone.from_pretrained(tmp_path / "epoch_32.pt", out_indices=STAGES, norm_outputs=False)
    report = ours.load_report
    assert report.ok and report.source_format == "timm"
    dropped = _dropped(report)
    assert dropped["CLIP text tower and contrastive logit scale (not part of the image backbone)"] == {
        "module"} and len([k for k, w in report.dropped if "text tower" in w]) == 7
    assert any("projection head" in why for why in dropped)
    assert any(key.endswith(f"visual.head.{'proj' if head == 'proj' else 'mlp.fc1'}.weight") for key, _ in report.dropped)
    assert report.weights_family == "clip_laion2b" and report.normalisation == (CLIP_MEAN, CLIP_STD)
    with torch.no_grad():
        assert max_abs_diff(_timm_features(clip_base, pixels), ours(pixels).feature_maps) <= TOL


def test_timm_mlp_head_is_dropped_by_a_backbone(tmp_path, pixels):
    # convnext_large_mlp's layout (head.pre_logits.fc), at small depths/widths: the layout is under test
    ref = randomize_(timm.create_model("convnext_large_mlp", pretrained=False, depths=(1, 1, 2, 1), dims=(40, 80, 160, 320),
                                       head_hidden_size=320, num_classes=7)).eval()
    assert "head.pre_logits.fc.weight" in ref.state_dict()
    torch.save(ref.state_dict(), tmp_path / "convnext_large_mlp.clip_laion2b_ft_in1k.pth")
    ours = ConvNextBackbone.from_pretrained(tmp_path / "convnext_large_mlp.clip_laion2b_ft_in1k.pth", out_indices=STAGES,
                                            norm_outputs=False)
    report = ours.load_report
    assert report.ok
    assert {k for k, _ in report.dropped} >= {"head.pre_logits.fc.weight", "head.pre_logits.fc.bias", "head.weight", "norm.weight"}
    assert report.weights_family == "clip_laion2b_ft_in1k"  # fine-tuned CLIP weights keep CLIP's normalisation
    with torch.no_grad():
        assert max_abs_diff(_timm_features(ref, pixels), ours(pixels).feature_maps) <= TOL


def test_convnext_xxlarge_preset_is_inferred_with_timms_norm_eps():
    with torch.device("meta"):  # 846M parameters: the shapes are what is under test here
        ref = timm.create_model("convnext_xxlarge", pretrained=False, num_classes=0)
    config = infer_config(convert_state_dict(ref.state_dict()).state_dict)
    assert config.architecture == "convnext_xxlarge" and config.norm_eps == 1e-5
    assert all(m.eps == 1e-5 for m in ref.modules() if isinstance(m, torch.nn.LayerNorm))


def test_convnext_xxlarge_widths_against_timm(tmp_path, pixels):
    # the XXL widths and timm's eps at one block per stage (the full model's shapes are checked above)
    ref = randomize_(timm.create_model("convnext_xxlarge", pretrained=False, num_classes=0, depths=(1, 1, 1, 1))).eval()
    torch.save({f"visual.trunk.{k}": v for k, v in ref.state_dict().items()}, tmp_path / "clip_xxl.pt")
    ours = ConvNextBackbone.from_pretrained(tmp_path / "clip_xxl.pt", out_indices=STAGES, norm_outputs=False, norm_eps=1e-5)
    assert ours.config.hidden_sizes == [384, 768, 1536, 3072]
    with torch.no_grad():
        assert max_abs_diff(_timm_features(ref, pixels), ours(pixels).feature_maps) <= TOL


# --- the family travels: report, convert output, processor, export -------------------------------------
def test_converted_clip_checkpoint_carries_clips_normalisation_into_export(clip_base, tmp_path):
    torch.save({"state_dict": _open_clip_state(clip_base, "proj"), "epoch": 1}, tmp_path / "open_clip.pt")
    run = subprocess.run([sys.executable, "-m", "convnext_backbone.cli", "convert", str(tmp_path / "open_clip.pt"), str(tmp_path / "conv")],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "clip_laion2b" in run.stdout and "CLIP text tower" in run.stdout
    saved = json.loads((tmp_path / "conv" / "preprocessor_config.json").read_text())
    assert saved["image_mean"] == list(CLIP_MEAN) and saved["image_std"] == list(CLIP_STD)
    assert json.loads((tmp_path / "conv" / "config.json").read_text())["weights_family"] == "clip_laion2b"
    assert ConvNextImageProcessor.from_pretrained(tmp_path / "conv").image_mean == list(CLIP_MEAN)

    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 30), (200, 100, 50)).save(tmp_path / "images" / "a.png")
    export = [sys.executable, "-m", "convnext_backbone.cli", "export", "--weights", str(tmp_path / "conv"), "--input",
              str(tmp_path / "images"), "--size", "64", "--no-progress", "--workers", "0"]
    run = subprocess.run([*export, "--out", str(tmp_path / "feats")], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    recorded = json.loads((tmp_path / "feats" / "export_config.json").read_text())
    assert recorded["preprocess"]["mean"] == list(CLIP_MEAN) and recorded["preprocess"]["std"] == list(CLIP_STD)
    assert "preprocessor_config.json" in recorded["normalisation_from"] and recorded["weights_family"] == "clip_laion2b"
    run = subprocess.run([*export, "--out", str(tmp_path / "feats-imagenet"), "--image-mean", "0.485,0.456,0.406",
                          "--image-std", "0.229,0.224,0.225"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    recorded = json.loads((tmp_path / "feats-imagenet" / "export_config.json").read_text())
    assert recorded["preprocess"]["mean"] == list(IMAGENET_MEAN) and recorded["normalisation_from"].startswith("given")


def test_the_user_sets_the_family_where_the_file_cannot_tell(tmp_path):
    model = ConvNextBackbone.from_preset("convnextv2_atto")
    model.save_pretrained(tmp_path / "plain")
    assert not (tmp_path / "plain" / "preprocessor_config.json").exists()  # nothing claimed about unknown weights
    loaded = ConvNextBackbone.from_pretrained(tmp_path / "plain")
    assert loaded.load_report.weights_family is None and "not recognisable" in loaded.load_report.weights_family_source
    told = ConvNextBackbone.from_pretrained(tmp_path / "plain", weights_family="clip_laion2b")
    assert told.load_report.weights_family == "clip_laion2b" and told.load_report.weights_family_source == "set in the config"
    with pytest.raises(ValueError, match="unknown weights family 'clip_laion'; did you mean 'clip_laion2b'"):
        ConvNextBackbone.from_pretrained(tmp_path / "plain", weights_family="clip_laion")


@pytest.mark.parametrize("name,v2,family", [
    ("convnext_tiny_1k_224_ema.pth", False, "fb_in1k"),
    ("convnext_tiny_22k_224.pth", False, "fb_in22k"),
    ("convnext_tiny_22k_1k_384.pth", False, "fb_in22k_ft_in1k"),
    ("convnextv2_tiny_1k_224_fcmae.pt", True, "fcmae"),
    ("convnextv2_tiny_1k_224_ema.pt", True, "fcmae_ft_in1k"),
    ("convnextv2_tiny_22k_384_ema.pt", True, "fcmae_ft_in22k_in1k"),
    ("timm/convnext_base.clip_laion2b_augreg", False, "clip_laion2b"),
    ("laion/CLIP-convnext_base_w-laion2B-s13B-b82K", False, "clip_laion2b"),
    ("facebook/dinov3-convnext-tiny-pretrain-lvd1689m", False, "dinov3_lvd1689m"),
    ("weights/model.safetensors", False, None),
])
def test_family_from_the_file_or_hub_name(name, v2, family):
    got, how = detect_family("official", v2, None, name)
    assert (got.name if got else None) == family, how


def test_normalisation_mismatch_speaks_each_frameworks_scale_and_channel_order():
    clip = FAMILIES["clip_laion2b"]
    assert normalisation_mismatch(clip, CLIP_MEAN, CLIP_STD) is None
    assert normalisation_mismatch(clip, [v * 255 for v in CLIP_MEAN], [v * 255 for v in CLIP_STD], scale=255) is None
    bgr_mean, bgr_std = [CLIP_MEAN[2] * 255, CLIP_MEAN[1] * 255, CLIP_MEAN[0] * 255], [CLIP_STD[2] * 255, CLIP_STD[1] * 255, CLIP_STD[0] * 255]
    assert normalisation_mismatch(clip, bgr_mean, bgr_std, scale=255, bgr=True) is None
    message = normalisation_mismatch(clip, [123.675, 116.28, 103.53], [58.395, 57.12, 57.375], scale=255,
                                     where="MODEL.PIXEL_MEAN/PIXEL_STD", keys="MODEL.PIXEL_MEAN and MODEL.PIXEL_STD")
    assert "clip_laion2b" in message and "[122.7709, 116.746, 104.0937]" in message
    assert "[123.675, 116.28, 103.53]" in message and "set MODEL.PIXEL_MEAN and MODEL.PIXEL_STD" in message
