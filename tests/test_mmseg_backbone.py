"""The MMSegmentation adapter in-process: registry, arguments, errors, pretrained loading, lr decay.

Real MMSegmentation/mmengine objects throughout (registry builds, EncoderDecoder, UPerHead,
MMSeg's own LearningRateDecayOptimizerConstructor); no mocks. Small presets, 64x64 inputs.
"""
from __future__ import annotations

import os
import re

import pytest
import torch
from mmengine.model import BaseModule
from mmseg.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS

import mmseg_convnext  # noqa: F401  (registers MMSegConvNeXt & co)
from convnext_backbone import CheckpointError, ConvNextBackbone, ConvNextForImageClassification
from convnext_backbone.arch import config_from_preset_name
from mmseg_convnext import MMSegConvNeXt

from helpers import official_layer_id, randomize_

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def build(**kw) -> MMSegConvNeXt:
    return MODELS.build(dict(type="MMSegConvNeXt", **kw))


def segmentor(backbone: dict, in_channels=(40, 80, 160, 320), aux=True) -> torch.nn.Module:
    norm = dict(type="BN", requires_grad=True)
    cfg = dict(
        type="EncoderDecoder",
        backbone=dict(type="MMSegConvNeXt", **backbone),
        decode_head=dict(type="UPerHead", in_channels=list(in_channels), in_index=[0, 1, 2, 3], pool_scales=(1, 2),
                         channels=16, num_classes=150, norm_cfg=norm, align_corners=False),
    )
    if aux:
        cfg["auxiliary_head"] = dict(type="FCNHead", in_channels=in_channels[2], in_index=2, channels=8, num_convs=1,
                                     concat_input=False, num_classes=150, norm_cfg=norm, align_corners=False)
    return MODELS.build(cfg)


# ------------------------------------------------------------------------------ build & forward
def test_registry_build_is_the_core_backbone_and_returns_a_tuple_of_maps():
    m = build(arch="convnextv2_atto")
    assert isinstance(m, ConvNextBackbone) and isinstance(m, BaseModule)
    assert "ConvNeXt" in type(m).__name__  # what MMSeg's LearningRateDecayOptimizerConstructor checks
    out = m(X)
    assert isinstance(out, tuple) and len(out) == 4
    assert [tuple(o.shape) for o in out] == [(2, 40, 16, 16), (2, 80, 8, 8), (2, 160, 4, 4), (2, 320, 2, 2)]
    assert m.channels == [40, 80, 160, 320] and m.strides == [4, 8, 16, 32]
    names = {n.split(".")[0] for n, _ in m.named_parameters()}
    assert names == {"downsample_layers", "stages", "norm0", "norm1", "norm2", "norm3"}


def test_outputs_equal_the_core_model_with_the_same_weights():
    m = build(arch="convnextv2_atto", out_indices=[1, 3])
    core = ConvNextBackbone(config_from_preset_name("convnextv2_atto", out_features=["stage2", "stage4"], layer_norm_eps=1e-6))
    randomize_(core)
    m.load_state_dict(core.state_dict(), strict=True)
    m.eval(), core.eval()
    with torch.no_grad():
        ours, ref = m(X), core(X).feature_maps
    assert len(ours) == 2 and all(torch.equal(a, b) for a, b in zip(ours, ref))


@pytest.mark.parametrize(
    "kw, version, dims",
    [
        (dict(arch="convnextv2_atto"), "convnextv2", [40, 80, 160, 320]),
        (dict(arch="atto"), "convnextv2", [40, 80, 160, 320]),  # only V2 has atto
        (dict(arch="tiny"), "convnext", [96, 192, 384, 768]),  # in both: V1, as mmpretrain/official
        (dict(arch="tiny", version="v2"), "convnextv2", [96, 192, 384, 768]),
        (dict(arch="convnext-small"), "convnext", [96, 192, 384, 768]),
        (dict(arch=dict(depths=[1, 1, 2, 1], dims=[16, 32, 64, 128])), "convnext", [16, 32, 64, 128]),
        (dict(arch=dict(depths=[1, 1, 2, 1], hidden_sizes=[16, 32, 64, 128]), version="v2"), "convnextv2", [16, 32, 64, 128]),
    ],
)
def test_arch_spellings(kw, version, dims):
    with torch.device("meta"):
        m = build(**kw)
    assert m.config.model_type == version and m.config.hidden_sizes == dims
    assert any(n.endswith(".grn.gamma") for n, _ in m.named_parameters()) == (version == "convnextv2")


def test_out_indices_follow_mmseg_convention_and_out_features_hf_names():
    m = build(arch="convnextv2_atto", out_indices=[-1])
    assert m.out_features == ["stage4"] and [o.shape[1] for o in m(X)] == [320]
    m = build(arch="convnextv2_atto", out_indices=(0, 2))
    assert m.out_features == ["stage1", "stage3"] and m.strides == [4, 16]
    m = build(arch="convnextv2_atto", out_indices=None, out_features=["stem", "stage1"])
    assert [tuple(o.shape[1:]) for o in m(X)] == [(40, 16, 16), (40, 16, 16)]


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(arch="convnext_gigantic"), r"unknown arch 'convnext_gigantic'.*convnext_tiny"),
        (dict(arch="gigantic"), r"unknown arch 'gigantic'"),
        (dict(arch="atto", version="v1"), r"'atto' does not exist in ConvNeXt V1"),
        (dict(arch="convnext_tiny", version="v2"), r"is a convnext preset but version='v2'"),
        (dict(arch="tiny", version="v3"), r"version must be one of 'v1', 'v2'"),
        (dict(arch=dict(depths=[3, 3, 9, 3])), r"needs both 'depths' and 'dims'"),
        (dict(arch="convnextv2_atto", out_indices=[0, 4]), r"invalid out_indices \[4\].*4 stages.*0\.\.3"),
        (dict(arch="convnextv2_atto", out_indices=[2, 1]), r"must follow the order of stage_names"),
        (dict(arch="convnextv2_atto", out_indices=[1, -3]), r"duplicates"),
        (dict(arch="convnextv2_atto", out_indices=[]), r"must be a non-empty list of ints in 0\.\.3"),
        (dict(arch="convnextv2_atto", out_indices=["stage1"]), r"must be a non-empty list of ints in 0\.\.3"),
        (dict(arch="convnextv2_atto", out_indices=[0], out_features=["stage2"]), r"disagree"),
        (dict(arch="convnextv2_atto", out_indices=None, out_features=["stage9"]), r"out_features must be a subset"),
        (dict(arch="convnextv2_atto", layer_scale_init_value=1.0), r"not allowed for ConvNeXt V2"),
        (dict(arch="convnextv2_atto", frozen_stages=5), r"frozen_stages must be in \[-1, 4\]"),
        (dict(arch="convnextv2_atto", drop_path_rate=1.5), r"drop_path_rate must be in \[0, 1\)"),
        # every field where it is set, in the words of this config (dims, in_channels, with_cp)
        (dict(arch=dict(depths=[2, 2, -1, 2], dims=[40, 80, 160, 320])), r"depths must be a list of integers >= 1.*got \[2, 2, -1, 2\]"),
        (dict(arch=dict(depths=[2, 2, 6, 2], dims=[0, 80, 160, 320])), r"dims must be a list of integers >= 1.*got \[0, 80, 160, 320\]"),
        (dict(arch=dict(depths=[2, 2, 1.5, 2], dims=[40, 80, 160, 320])), r"depths must be an integer, got 1\.5"),  # was int(1.5)
        (dict(arch="convnextv2_atto", in_channels=0), r"in_channels must be an integer >= 1 .*got 0"),
        (dict(arch="convnextv2_atto", with_cp="yes"), r"with_cp must be True or False .*got 'yes'"),
        (dict(arch="convnext_tiny", layer_scale_init_value=-1.0), r"layer_scale_init_value must be a number >= 0 .*got -1\.0"),
    ],
)
def test_bad_backbone_arguments_name_the_problem(kw, message):
    with pytest.raises(ValueError, match=message) as err:
        build(**kw)
    assert "MMSegConvNeXt" in str(err.value)  # mmengine's registry keeps our message and names the class


# ------------------------------------------------------------------------------ training knobs
def test_frozen_stages_freeze_stem_and_stage1_and_keep_them_in_eval():
    m = build(arch="convnextv2_atto", frozen_stages=1)
    m.train()
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("downsample_layers.0.", "stages.0.")) for n in frozen)
    assert {n for n, _ in m.named_parameters() if n.startswith(("downsample_layers.0.", "stages.0."))} == frozen
    assert not m.downsample_layers[0].training and not m.stages[0].training and m.stages[1].training


def test_with_cp_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = build(arch="convnextv2_atto", drop_path_rate=0.0)
    randomize_(plain)
    cp = build(arch="convnextv2_atto", with_cp=True)
    cp.load_state_dict(plain.state_dict())
    assert cp.gradient_checkpointing and not plain.gradient_checkpointing
    for m in (plain, cp):
        m.train()
        sum(o.square().mean() for o in m(X)).backward()
    for (n, a), (_, b) in zip(plain.named_parameters(), cp.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_norm_outputs_off_returns_raw_stage_maps():
    m = build(arch="convnextv2_atto", norm_outputs=False)
    assert not any(n.startswith("norm") for n, _ in m.named_parameters())
    hidden = ConvNextBackbone.forward(m, X, output_hidden_states=True).hidden_states
    assert all(torch.equal(a, b) for a, b in zip(m(X), hidden[1:]))


# ------------------------------------------------------------------------------ init_cfg Pretrained
@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory):
    """An official-layout classification checkpoint ({'model': ...}) with random weights."""
    cls = randomize_(ConvNextForImageClassification(config_from_preset_name("convnextv2_atto", layer_norm_eps=1e-6)), seed=3)
    path = tmp_path_factory.mktemp("ckpt") / "convnextv2_atto_1k_224_ema.pt"
    torch.save({"model": cls.state_dict(), "epoch": 3}, path)
    return path, cls.state_dict()


def _assert_trunk_loaded(model: torch.nn.Module, ref: dict, prefix: str = "") -> None:
    own = model.state_dict()
    trunk = [k for k in ref if k.startswith(("downsample_layers.", "stages."))]
    assert trunk
    for k in trunk:
        assert torch.equal(own[prefix + k], ref[k]), k


def test_init_cfg_pretrained_official_file_through_segmentor_init_weights(classifier_ckpt, caplog):
    path, ref = classifier_ckpt
    seg = segmentor(dict(arch="convnextv2_atto", init_cfg=dict(type="Pretrained", checkpoint=str(path))))
    assert not torch.equal(seg.state_dict()["backbone.stages.0.0.pwconv1.weight"], ref["stages.0.0.pwconv1.weight"])
    seg.init_weights()  # what mmengine's Runner calls
    _assert_trunk_loaded(seg, ref, prefix="backbone.")


def test_init_cfg_pretrained_reads_segmentor_checkpoints_with_and_without_prefix(classifier_ckpt, tmp_path):
    path, ref = classifier_ckpt
    seg = segmentor(dict(arch="convnextv2_atto"))
    seg.backbone.load_pretrained(str(path))
    mm = tmp_path / "iter_160000.pth"  # an MMSeg training checkpoint: backbone.* + heads + meta
    torch.save({"meta": {"iter": 160000}, "state_dict": seg.state_dict()}, mm)
    for prefix in (None, "backbone."):
        m = build(arch="convnextv2_atto", init_cfg=dict(type="Pretrained", checkpoint=str(mm), prefix=prefix))
        m.init_weights()
        _assert_trunk_loaded(m, ref)
        torch.testing.assert_close(m.norm2.weight, seg.backbone.norm2.weight)  # det/seg output norms too
    with pytest.raises(CheckpointError, match="no keys start with prefix 'encoder.'"):
        build(arch="convnextv2_atto", init_cfg=dict(type="Pretrained", checkpoint=str(mm), prefix="encoder.")).init_weights()


def test_init_cfg_pretrained_save_pretrained_dir_url_and_deprecated_pretrained(classifier_ckpt, tmp_path, monkeypatch):
    path, ref = classifier_ckpt
    src = build(arch="convnextv2_atto", pretrained=str(path))  # deprecated MMSeg spelling
    src.init_weights()
    _assert_trunk_loaded(src, ref)
    directory = src.save_pretrained(tmp_path / "saved")
    m = build(arch="convnextv2_atto", init_cfg=dict(type="Pretrained", checkpoint=str(directory)))
    m.init_weights()
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), src.state_dict().values()))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # URLs land in torch's hub cache
    m = build(arch="convnextv2_atto", init_cfg=dict(type="Pretrained", checkpoint=path.as_uri()))
    m.init_weights()
    _assert_trunk_loaded(m, ref)
    assert (tmp_path / "torch_home" / "hub" / "checkpoints" / path.name).is_file()


def test_init_cfg_pretrained_mismatch_and_unsafe_files_are_refused(classifier_ckpt, tmp_path):
    path, _ = classifier_ckpt
    with pytest.raises(CheckpointError, match=r"shape mismatch for stages\.0\.0\.dwconv\.weight"):
        build(arch="convnextv2_femto", init_cfg=dict(type="Pretrained", checkpoint=str(path))).init_weights()
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": _Evil(marker)}, evil)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        build(arch="convnextv2_atto", init_cfg=dict(type="Pretrained", checkpoint=str(evil))).init_weights()
    assert not marker.exists()
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        build(arch="convnextv2_atto", init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "nope.pth"))).init_weights()


def test_a_deeper_backbone_checkpoint_is_refused_by_init_cfg_and_by_load_from(tmp_path, caplog):
    """init_cfg goes through the core (strict). ``load_from`` / resume went through mmengine non-strictly:
    a deeper backbone's extra blocks were an 'unexpected key' log line; now they name both architectures."""

    from mmseg_convnext.runner import ConvNeXtSegRunner

    deeper = segmentor(dict(arch=dict(depths=[2, 2, 8, 2], dims=[40, 80, 160, 320]), version="v2"))
    path = tmp_path / "iter_100.pth"
    torch.save({"meta": {"iter": 100}, "state_dict": deeper.state_dict()}, path)
    arch = r"checkpoint is convnextv2\(depths=\[2, 2, 8, 2\], hidden_sizes=\[40, 80, 160, 320\]\), model is convnextv2_atto\."
    with pytest.raises(CheckpointError, match=rf"(?s){arch}.*unexpected key in checkpoint: stages\.2\.6\."):
        build(arch="convnextv2_atto", init_cfg=dict(type="Pretrained", checkpoint=str(path))).init_weights()
    seg = segmentor(dict(arch="convnextv2_atto"))
    other_head = segmentor(dict(arch="convnextv2_atto"), aux=False)
    runner = ConvNeXtSegRunner(model=seg, work_dir=str(tmp_path / "work"), default_scope="mmseg")
    with pytest.raises(CheckpointError, match=rf"(?s){arch}.*unexpected key in checkpoint: backbone\.stages\.2\.6\..*"
                                              r"load_from_strict_backbone=False"):
        runner.load_checkpoint(str(path))
    runner.cfg.load_from_strict_backbone = False  # asked for: what fits loads, the rest is a warning
    runner.load_checkpoint(str(path))
    assert torch.equal(seg.backbone.stages[0][0].dwconv.weight, deeper.backbone.stages[0][0].dwconv.weight)
    # the same backbone with another head (a new dataset) stays mmengine's business: loads, with its warning
    torch.save({"state_dict": other_head.state_dict()}, tmp_path / "no_aux.pth")
    runner.cfg.load_from_strict_backbone = True
    runner.load_checkpoint(str(tmp_path / "no_aux.pth"))
    assert torch.equal(seg.backbone.stages[2][5].dwconv.weight, other_head.backbone.stages[2][5].dwconv.weight)


class _Evil:
    """Unpickling this runs a shell command: what weights_only loading must refuse."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ------------------------------------------------------------------------------ layer-wise lr decay
def _groups_by_param(model, constructor: str, decay_type: str, num_layers: int, base_lr=1e-4, wd=0.05):
    cons = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type=constructor,
        optim_wrapper_cfg=dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=base_lr, weight_decay=wd)),
        paramwise_cfg=dict(decay_rate=0.9, decay_type=decay_type, num_layers=num_layers)))
    wrapper = cons(model)
    by_id = {id(p): g for g in wrapper.optimizer.param_groups for p in g["params"]}
    return {n: (by_id[id(p)]["lr"], by_id[id(p)]["weight_decay"]) for n, p in model.named_parameters() if id(p) in by_id}


@pytest.mark.parametrize("decay_type", ["layer_wise", "stage_wise"])
def test_mmseg_lr_decay_constructor_assigns_the_official_rates(decay_type):
    num_layers, base = 12, 1e-4
    seg = segmentor(dict(arch="convnext_tiny", frozen_stages=0), in_channels=(96, 192, 384, 768))
    got = _groups_by_param(seg, "LearningRateDecayOptimizerConstructor", decay_type, num_layers, base)
    trainable = {n for n, p in seg.named_parameters() if p.requires_grad}
    assert set(got) == trainable and not any(n.startswith("backbone.downsample_layers.0.") for n in got)  # frozen stem skipped
    for name, p in seg.named_parameters():
        if name not in got:
            continue
        lr, wd = got[name]
        expected_lr = base * 0.9 ** (num_layers + 1 - official_layer_id(name, decay_type, num_layers))
        expected_wd = 0.0 if p.ndim == 1 or name.endswith(".bias") else 0.05
        assert lr == pytest.approx(expected_lr, rel=1e-12), name
        assert wd == expected_wd, name
    # spot checks with the numbers written out
    head = got["decode_head.conv_seg.weight"]
    assert head == (pytest.approx(base), 0.05)
    assert got["backbone.norm3.weight"][0] == pytest.approx(base)  # det/seg output norms: head lr, as official
    assert got["backbone.stages.0.0.gamma"][1] == 0.0  # V1 layer scale: no weight decay
    if decay_type == "layer_wise":
        assert got["backbone.stages.2.8.pwconv1.weight"][0] == pytest.approx(base * 0.9 ** 8)  # id 3 + 8 // 3 = 5
        assert got["backbone.downsample_layers.3.1.weight"][0] == pytest.approx(base * 0.9)  # id 12
        assert got["backbone.stages.0.1.dwconv.weight"][0] == pytest.approx(base * 0.9 ** 12)  # id 1
    else:
        assert got["backbone.downsample_layers.2.1.weight"][0] == pytest.approx(base * 0.9 ** 13)
        assert got["backbone.stages.3.2.pwconv2.weight"][0] == pytest.approx(base * 0.9 ** 9)
        assert got["backbone.stages.0.0.norm.weight"] == (pytest.approx(base * 0.9 ** 12), 0.0)


def test_v2_constructor_exempts_grn_from_weight_decay_and_changes_nothing_else():
    seg = segmentor(dict(arch="convnextv2_atto"))
    mmseg = _groups_by_param(seg, "LearningRateDecayOptimizerConstructor", "stage_wise", 6)
    ours = _groups_by_param(seg, "ConvNeXtV2LearningRateDecayOptimizerConstructor", "stage_wise", 6)
    assert set(ours) == set(mmseg)
    grn = [n for n in ours if re.search(r"\.grn\.(gamma|beta)$", n)]
    assert len(grn) == 2 * 12  # 2 + 2 + 6 + 2 blocks
    for name in ours:
        if name in grn:
            assert mmseg[name][1] == 0.05 and ours[name] == (mmseg[name][0], 0.0), name
        else:
            assert ours[name] == mmseg[name], name
    v1 = segmentor(dict(arch=dict(depths=[1, 1, 3, 1], dims=[16, 32, 64, 128])), in_channels=(16, 32, 64, 128))
    assert _groups_by_param(v1, "ConvNeXtV2LearningRateDecayOptimizerConstructor", "layer_wise", 6) == \
        _groups_by_param(v1, "LearningRateDecayOptimizerConstructor", "layer_wise", 6)


def test_segmentor_forward_and_loss_with_upernet():
    seg = segmentor(dict(arch="convnextv2_atto"))
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    samples = []
    for _ in range(2):
        s = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 150, (1, 64, 64))))
        s.set_metainfo(dict(img_shape=(64, 64), pad_shape=(64, 64), ori_shape=(64, 64)))
        samples.append(s)
    losses = seg.loss(X, samples)
    assert {"decode.loss_ce", "aux.loss_ce"} <= set(losses) and all(torch.isfinite(v) for k, v in losses.items() if "loss" in k)
    sum(v for k, v in losses.items() if "loss" in k).backward()
    assert seg.backbone.stages[0][0].dwconv.weight.grad.abs().sum() > 0
