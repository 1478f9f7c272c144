"""transformers adapter (integrations/transformers_convnext): real transformers, offline, CPU.

- AutoConfig / AutoBackbone registration, presets, the core's errors, save/load round trip;
- parity: transformers' UperNet with transformers' ConvNeXt (V1, V2) backbone, random weights,
  every vector parameter perturbed, saved with save_pretrained, loaded into the same UperNet with
  our backbone: logits within 1e-5 (fp32);
- a training step (loss, backward, gradients in the backbone) and inference of UperNet,
  Mask2Former and DETR built on our backbone config;
- core checkpoint formats into the backbone part of a transformers model.
"""
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may touch the network
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import huggingface_hub.constants

# huggingface_hub reads the variable once, when first imported (in a full run: by an earlier test module)
huggingface_hub.constants.HF_HUB_OFFLINE = True

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoModel,
    DetrConfig,
    DetrForObjectDetection,
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

from convnext_backbone import CheckpointError, ConvNextBackbone, build_backbone
from convnext_backbone.arch import config_from_preset_name
from transformers_convnext import (
    ConvNextBackboneConfig,
    ConvNextBackboneModel,
    convert_hf_checkpoint,
    find_backbone,
    from_hf_pretrained,
    load_backbone_weights,
)

from helpers import max_abs_diff, randomize_

TOL = 1e-5
ALL4 = ["stage1", "stage2", "stage3", "stage4"]
ATTO = ([2, 2, 6, 2], [40, 80, 160, 320])


@pytest.fixture(scope="module")
def pixels():
    torch.manual_seed(0)
    return torch.randn(2, 3, 64, 64)


def _backbone_grads_ok(model):
    """Every trainable backbone parameter got a finite gradient, and the first and last layers a nonzero one."""
    _, backbone = find_backbone(model)
    # nothing hooked into the backbone's modules: the core's fused paths stay eligible inside the model
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in backbone.modules())
    named = dict(backbone.named_parameters())
    missing = [n for n, p in named.items() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    assert all(torch.isfinite(p.grad).all() for p in named.values() if p.grad is not None)
    last = max(i for i in range(4) if f"stages.{i}.0.dwconv.weight" in named and named[f"stages.{i}.0.dwconv.weight"].grad is not None)
    for name in ("downsample_layers.0.0.weight", f"stages.{last}.0.dwconv.weight", f"stages.{last}.0.pwconv2.weight"):
        assert named[name].grad.abs().sum() > 0, name


# --- config and AutoBackbone ---------------------------------------------------------------------
def test_config_from_preset_and_core_errors():
    cfg = ConvNextBackboneConfig.from_preset("convnextv2_tiny", out_features=ALL4, drop_path_rate=0.2)
    assert (cfg.model_type, cfg.version) == ("convnext_backbone", "v2")
    assert cfg.depths == [3, 3, 9, 3] and cfg.hidden_sizes == [96, 192, 384, 768] and cfg.layer_scale_init_value == 0.0
    assert cfg.stage_names == ["stem"] + ALL4 and cfg.out_indices == [1, 2, 3, 4]
    assert cfg.to_core_config() == config_from_preset_name("convnextv2_tiny", out_features=ALL4, drop_path_rate=0.2)
    assert ConvNextBackboneConfig.from_preset("convnext_small", out_indices=[-2, -1]).out_features == ["stage3", "stage4"]
    assert ConvNextBackboneConfig().out_features == ["stage4"]  # HF default: the last stage
    cfg.out_indices = [2, 4]  # HF setter semantics: the other one follows
    assert cfg.out_features == ["stage2", "stage4"]
    assert type(AutoConfig.for_model("convnext_backbone", version="v2")) is ConvNextBackboneConfig
    nested = UperNetConfig(backbone_config=cfg.to_dict())  # as in a config.json: resolved through AutoConfig
    assert type(nested.backbone_config) is ConvNextBackboneConfig and nested.backbone_config.to_core_config() == cfg.to_core_config()

    with pytest.raises(ValueError, match=r"unknown preset 'convnextv2_gigantic'; the presets are \['convnext_tiny'"):
        ConvNextBackboneConfig.from_preset("convnextv2_gigantic")
    subset = r"out_features must be a subset of stage_names \['stem', 'stage1', 'stage2', 'stage3', 'stage4'\]; unknown: \['stage5'\]"
    with pytest.raises(ValueError, match=subset):
        ConvNextBackboneConfig.from_preset("convnextv2_atto", out_features=["stage5"])
    with pytest.raises(ValueError, match=r"out_features must follow the order of stage_names"):
        ConvNextBackboneConfig(out_features=["stage4", "stage1"])
    with pytest.raises(ValueError, match=r"must name the same stages"):
        ConvNextBackboneConfig(out_features=["stage1"], out_indices=[2])
    with pytest.raises(ValueError, match=r"out_features must be a subset of stage_names"):
        cfg.out_features = ["stage9"]
    with pytest.raises(ValueError, match=r"ConvNeXt V2 has no layer scale"):
        ConvNextBackboneConfig(version="v2", layer_scale_init_value=1e-6)
    with pytest.raises(ValueError, match=r"version must be one of 'v1', 'v2'"):
        ConvNextBackboneConfig(version="v3")
    with pytest.raises(ValueError, match=r"hidden_sizes .* and depths .* must both have num_stages=4 entries"):
        ConvNextBackboneConfig(depths=[1, 1, 1])


def test_autobackbone_wraps_the_core_and_round_trips(tmp_path, pixels):
    cfg = ConvNextBackboneConfig.from_preset("convnextv2_atto", out_features=["stage2", "stage4"], frozen_stages=1)
    model = AutoBackbone.from_config(cfg)
    assert type(model) is ConvNextBackboneModel and isinstance(model, transformers.PreTrainedModel)
    core = model.core_model
    assert type(core) is ConvNextBackbone
    # Same parameter names as the core (= official layout), and the very same tensors.
    assert list(model.state_dict()) == list(build_backbone("convnextv2_atto", out_features=["stage2", "stage4"]).state_dict())
    assert all(a is b for a, b in zip(model.parameters(), core.parameters()))
    assert (model.channels, model.strides, model.out_indices) == ([80, 320], [8, 32], [2, 4])
    assert model.stage_names == ["stem"] + ALL4 and model.out_feature_channels["stem"] == 40
    model.out_features = ["stage1", "stage4"]  # BackboneMixin semantics; the output norms follow
    assert (model.out_indices, model.config.out_indices, model.channels) == ([1, 4], [1, 4], [40, 320])
    assert {k.split(".")[0] for k in model.state_dict() if k.startswith("norm")} == {"norm0", "norm3"}
    assert list(model.state_dict()) == list(core.state_dict())
    with torch.no_grad():
        assert [f.shape[1] for f in model(pixels[:, :, :64, :64]).feature_maps] == [40, 320]
    with pytest.raises(ValueError, match="out_features must be a subset of stage_names"):
        model.out_features = ["stage5"]
    model.out_indices = [2, 4]
    assert model.out_features == ["stage2", "stage4"] and list(model.state_dict()) == list(core.state_dict())

    # train/eval and frozen stages follow the core's rules
    model.train()
    assert core.training and not core.downsample_layers[0].training and not core.stages[0].training and core.stages[1].training
    assert not core.stages[0][0].dwconv.weight.requires_grad and core.stages[1][0].dwconv.weight.requires_grad
    model.activation_checkpointing_enable()  # transformers' switch drives the core's per-block checkpointing
    assert core.gradient_checkpointing and model.is_activation_checkpointing
    model.activation_checkpointing_disable()
    assert not core.gradient_checkpointing

    randomize_(model).eval()
    with torch.no_grad():
        out = model(pixels, output_hidden_states=True)
        ref = core(pixels, output_hidden_states=True)
        as_tuple = model(pixels, return_dict=False)
    assert isinstance(out, transformers.modeling_outputs.BackboneOutput) and out.attentions is None
    assert [tuple(f.shape) for f in out.feature_maps] == [(2, 80, 8, 8), (2, 320, 2, 2)]
    assert len(out.hidden_states) == 5 and max_abs_diff(out.feature_maps, ref.feature_maps) == 0
    assert len(as_tuple) == 1 and max_abs_diff(as_tuple[0], out.feature_maps) == 0

    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "convnext_backbone" and saved["version"] == "v2" and saved["out_features"] == ["stage2", "stage4"]
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == sorted(model.state_dict())  # the official names on disk
    assert type(AutoConfig.from_pretrained(str(tmp_path))) is ConvNextBackboneConfig
    # transformers 5.23's AutoBackbone.from_pretrained asks the Hub (HfApi.repo_exists) before anything
    # else and so cannot open a local directory, for any backbone (HF's own ConvNextBackbone too);
    # AutoModel (registered too) and the class itself load through the same PreTrainedModel.from_pretrained.
    assert type(AutoModel.from_pretrained(str(tmp_path))) is ConvNextBackboneModel
    loaded = ConvNextBackboneModel.from_pretrained(str(tmp_path))
    assert type(loaded) is ConvNextBackboneModel and not loaded.training and not loaded.core_model.training
    assert loaded.config.to_core_config() == cfg.to_core_config()
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert not loaded.core_model.stages[0][0].dwconv.weight.requires_grad  # frozen_stages survives loading
    with torch.no_grad():
        # equal weights; only rounding differs (GEMM blocking follows the alignment of the mmap'd tensors)
        assert max_abs_diff(loaded(pixels).feature_maps, out.feature_maps) <= TOL


# --- weights: transformers' UperNet with HF's ConvNeXt -> the same UperNet with ours -------------------
def _hf_upernet(version):
    depths, hidden = ATTO
    cls = transformers.ConvNextConfig if version == "v1" else transformers.ConvNextV2Config
    backbone = cls(depths=depths, hidden_sizes=hidden, out_features=ALL4)
    config = UperNetConfig(backbone_config=backbone, hidden_size=32, auxiliary_channels=16, num_labels=5)
    model = randomize_(UperNetForSemanticSegmentation(config), seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # BatchNorm statistics too, so that nothing in the head is an identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_hf_upernet_checkpoint_loads_with_our_backbone(version, tmp_path, pixels):
    ref = _hf_upernet(version)
    hf_names = [n for n, _ in ref.backbone.named_parameters()]
    assert any("layer_scale_parameter" in n for n in hf_names) == (version == "v1")
    assert any(".grn." in n for n in hf_names) == (version == "v2")
    ref.save_pretrained(tmp_path / "hf")

    ours = from_hf_pretrained(tmp_path / "hf")
    assert type(ours) is UperNetForSemanticSegmentation and type(ours.backbone) is ConvNextBackboneModel
    assert ours.config.backbone_config.version == version and not ours.training
    assert ours.load_report.source_format == "hf" and ours.load_report.ok
    with torch.no_grad():
        expected = ref(pixels).logits
        assert max_abs_diff(ours(pixels).logits, expected) <= TOL

    # converted once, then plain transformers from_pretrained (only `import transformers_convnext` needed)
    convert_hf_checkpoint(tmp_path / "hf", tmp_path / "ours")
    reloaded = UperNetForSemanticSegmentation.from_pretrained(str(tmp_path / "ours"))
    assert type(reloaded.backbone) is ConvNextBackboneModel
    with torch.no_grad():
        assert max_abs_diff(reloaded(pixels).logits, expected) <= TOL


def test_hf_checkpoint_conversion_is_strict(tmp_path):
    backbone = transformers.ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], out_features=ALL4)
    config = UperNetConfig(backbone_config=backbone, hidden_size=16, auxiliary_channels=8, num_labels=3)
    UperNetForSemanticSegmentation(config).save_pretrained(tmp_path)
    full = load_file(str(tmp_path / "model.safetensors"))
    for key, message in [
        ("decode_head.classifier.weight", r"(?s)outside the backbone, .*missing from checkpoint: decode_head.classifier.weight"),
        ("backbone.encoder.stages.1.layers.0.dwconv.weight",
         r"(?s)backbone tensors \(under 'backbone.'\).*missing from checkpoint: stages.1.0.dwconv.weight"),
    ]:
        save_file({k: v for k, v in full.items() if k != key}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
        with pytest.raises(CheckpointError, match=message):
            from_hf_pretrained(tmp_path)
    not_convnext = r"expected a transformers ConvNeXt config \(model_type one of \['convnext', 'convnextv2'\]\), got model_type 'resnet'"
    with pytest.raises(ValueError, match=not_convnext):
        ConvNextBackboneConfig.from_hf_config(transformers.ResNetConfig())


def test_converter_never_writes_over_its_source(tmp_path, capsys):
    """``convert_hf_checkpoint(d, d)`` replaced transformers' files with ours; now refused before reading."""
    from transformers_convnext.checkpoint import main

    backbone = transformers.ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], out_features=ALL4)
    src = tmp_path / "hf"
    UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone, hidden_size=16, auxiliary_channels=8, num_labels=3)).save_pretrained(src)
    before = {p: p.read_bytes() for p in sorted(src.iterdir())}
    for source, dst, message in [(src, src, f"{src} is the input {src}"), (src, f"{src}/.", f"{src}/. is the input {src}"),
                                 (src / "model.safetensors", src, f"{src} is the directory that holds the input")]:
        with pytest.raises(ValueError, match=message):
            convert_hf_checkpoint(source, dst)
        capsys.readouterr()
        assert main([str(source), str(dst)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("convert failed: ") and message in err and err.count("\n") == 1, err
    assert {p: p.read_bytes() for p in sorted(src.iterdir())} == before
    assert main([str(src), str(tmp_path / "ours")]) == 0 and (tmp_path / "ours" / "config.json").is_file()


def test_config_fields_are_checked_by_the_core_at_construction_and_on_assignment():
    for kw, match in [(dict(hidden_sizes=[0, 80, 160, 320]), r"hidden_sizes must be a list of integers >= 1.*got \[0, 80, 160, 320\]"),
                      (dict(depths=[2, 2, 1.5, 2]), r"depths must be an integer, got 1\.5"),  # was int(1.5) = 1
                      (dict(layer_norm_eps=-1e-6), r"layer_norm_eps must be a number > 0")]:
        with pytest.raises(ValueError, match=match):
            ConvNextBackboneConfig.from_preset("convnextv2_atto", **kw)
    cfg = ConvNextBackboneConfig.from_preset("convnextv2_atto", out_features=ALL4)
    before = cfg.to_dict()
    for name, value, match in [("depths", [2, -1, 6, 2], r"depths must be a list of integers >= 1.*got \[2, -1, 6, 2\]"),
                               ("initializer_range", -0.02, r"initializer_range must be a number >= 0"),
                               ("drop_path_rate", 1.0, r"drop_path_rate must be in \[0, 1\)"),
                               ("version", "v3", r"version must be one of 'v1', 'v2'"),
                               ("layer_scale_init_value", 0.1, r"ConvNeXt V2 has no layer scale")]:
        with pytest.raises(ValueError, match=match):
            setattr(cfg, name, value)
    assert cfg.to_dict() == before
    cfg.depths = (1, 1, 1, 1)
    assert cfg.depths == [1, 1, 1, 1] and ConvNextBackboneModel(cfg).core_model.config.depths == [1, 1, 1, 1]


def test_hf_detr_checkpoint_loads_with_our_backbone(tmp_path, pixels):
    # DETR's save_pretrained renames its backbone path (backbone.conv_encoder): found by the stem weight
    depths, hidden = ATTO
    backbone = transformers.ConvNextV2Config(depths=depths, hidden_sizes=hidden, out_features=["stage4"])
    config = DetrConfig(
        backbone_config=backbone, d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=5, num_labels=3,
    )
    ref = randomize_(DetrForObjectDetection(config), seed=5).eval()
    ref.save_pretrained(tmp_path)
    ours = from_hf_pretrained(tmp_path)
    assert type(ours.model.backbone.model) is ConvNextBackboneModel and ours.load_report.ok
    mask = torch.ones(2, 64, 64, dtype=torch.long)
    with torch.no_grad():
        expected, got = ref(pixel_values=pixels, pixel_mask=mask), ours(pixel_values=pixels, pixel_mask=mask)
    assert max_abs_diff(got.logits, expected.logits) <= TOL and max_abs_diff(got.pred_boxes, expected.pred_boxes) <= TOL


def test_core_checkpoint_formats_initialise_the_backbone(tmp_path, pixels):
    import timm

    cfg = ConvNextBackboneConfig.from_preset("convnextv2_atto", out_features=ALL4)
    model = UperNetForSemanticSegmentation(UperNetConfig(backbone_config=cfg, hidden_size=32, auxiliary_channels=16, num_labels=3)).eval()

    core = randomize_(build_backbone("convnextv2_atto", out_features=ALL4), seed=3).eval()
    core.save_pretrained(tmp_path / "official")  # the core's own (official) layout
    report = load_backbone_weights(model, tmp_path / "official")
    assert report.ok and report.source_format == "official"
    with torch.no_grad():
        assert max_abs_diff(model.backbone(pixels).feature_maps, core(pixels).feature_maps) == 0

    ref = randomize_(timm.create_model("convnextv2_atto", pretrained=False, features_only=True, out_indices=(0, 1, 2, 3)), seed=4).eval()
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    report = load_backbone_weights(model, tmp_path / "timm.pth")
    assert report.source_format == "timm" and report.ok and sorted(report.initialized)[0].startswith("norm0")  # timm has no output norms
    with torch.no_grad():  # the raw stage outputs (before the output norms, which timm has not) are timm's
        assert max_abs_diff(model.backbone(pixels, output_hidden_states=True).hidden_states[1:], ref(pixels)) <= TOL


# --- training steps and inference of the three models -----------------------------------------------
def test_upernet_train_step_and_inference(pixels):
    cfg = ConvNextBackboneConfig.from_preset("convnextv2_atto", out_features=ALL4, drop_path_rate=0.1)
    model = UperNetForSemanticSegmentation(UperNetConfig(backbone_config=cfg, hidden_size=32, auxiliary_channels=16, num_labels=4))
    model.train()
    labels = torch.randint(0, 4, (2, 64, 64))
    out = model(pixel_values=pixels, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    _backbone_grads_ok(model)
    model.eval()
    with torch.no_grad():
        assert model(pixel_values=pixels).logits.shape == (2, 4, 64, 64)


def test_mask2former_train_step_and_inference(pixels):
    cfg = ConvNextBackboneConfig.from_preset("convnextv2_atto", out_features=ALL4)
    config = Mask2FormerConfig(
        backbone_config=cfg, feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64,
        dim_feedforward=64, encoder_layers=1, decoder_layers=2, num_attention_heads=2, num_queries=6, num_labels=3,
        train_num_points=256,
    )
    model = Mask2FormerForUniversalSegmentation(config)
    assert type(model.model.pixel_level_module.encoder) is ConvNextBackboneModel
    model.train()
    torch.manual_seed(0)
    mask_labels = [(torch.rand(2, 64, 64) > 0.5).float(), (torch.rand(1, 64, 64) > 0.5).float()]
    class_labels = [torch.tensor([0, 2]), torch.tensor([1])]
    out = model(pixel_values=pixels, mask_labels=mask_labels, class_labels=class_labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    _backbone_grads_ok(model)
    model.eval()
    with torch.no_grad():
        out = model(pixel_values=pixels)
    assert out.class_queries_logits.shape == (2, 6, 4) and out.masks_queries_logits.shape == (2, 6, 16, 16)


def test_detr_train_step_and_inference(pixels):
    cfg = ConvNextBackboneConfig.from_preset("convnext_tiny", out_features=["stage4"], drop_path_rate=0.1)
    config = DetrConfig(
        backbone_config=cfg, d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=5, num_labels=3,
    )
    model = DetrForObjectDetection(config)
    assert type(model.model.backbone.model) is ConvNextBackboneModel  # no timm involved
    model.train()
    labels = [
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.4]])},
        {"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.3]])},
    ]
    mask = torch.ones(2, 64, 64, dtype=torch.long)
    out = model(pixel_values=pixels, pixel_mask=mask, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    _backbone_grads_ok(model)
    model.eval()
    with torch.no_grad():
        out = model(pixel_values=pixels, pixel_mask=mask)
    assert out.logits.shape == (2, 5, 4) and out.pred_boxes.shape == (2, 5, 4)
