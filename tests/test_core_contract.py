"""The backbone contract: out_features/out_indices rules, shapes, errors, training knobs."""
import pytest
import torch
import transformers

from convnext_backbone import (
    ConvNextBackbone,
    ConvNextConfig,
    ConvNextForImageClassification,
    ConvNextV2Config,
    build_backbone,
    list_presets,
)
from convnext_backbone.config import resolve_out_features_out_indices
from convnext_backbone.presets import PRESETS

from helpers import max_abs_diff, randomize_

STAGES = ["stem", "stage1", "stage2", "stage3", "stage4"]

# (out_features, out_indices): valid and invalid cases; transformers decides which is which.
CASES = [
    (None, None),
    (["stage4"], None),
    (None, [4]),
    (["stem", "stage2"], None),
    (None, [0, 2]),
    (["stage1", "stage2", "stage3", "stage4"], [1, 2, 3, 4]),
    (None, [-1]),
    (None, [-4, -3, -2, -1]),
    (["stage2", "stage4"], [2, -1]),
    (["stage5"], None),
    (["stage2", "stage1"], None),
    (["stage1", "stage1"], None),
    (None, [5]),
    (None, [-6]),
    (None, [3, 1]),
    (None, [1, 1]),
    (None, [4, -1]),
    (["stage1"], [2]),
    (["stage1", "stage2"], [1]),
    (["stem"], [0]),
]


def _hf_resolution(out_features, out_indices):
    try:
        cfg = transformers.ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                                          out_features=out_features, out_indices=out_indices)
    except (ValueError, IndexError):  # transformers rejects [-6] with an IndexError; we raise ValueError
        return None
    n = len(cfg.stage_names)
    return list(cfg.out_features), [i % n for i in cfg.out_indices]


@pytest.mark.parametrize("out_features,out_indices", CASES)
def test_out_features_resolution_matches_transformers(out_features, out_indices):
    expected = _hf_resolution(out_features, out_indices)
    if expected is None:
        with pytest.raises(ValueError) as err:
            resolve_out_features_out_indices(out_features, out_indices, STAGES)
        msg = str(err.value)
        assert "stage" in msg  # names what is allowed
    else:
        assert resolve_out_features_out_indices(out_features, out_indices, STAGES) == expected
        cfg = ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                             out_features=out_features, out_indices=out_indices)
        assert (cfg.out_features, cfg.out_indices) == expected


def test_invalid_out_features_message_names_allowed_values():
    with pytest.raises(ValueError, match=r"stem.*stage4"):
        ConvNextConfig(out_features=["res5"])


def test_setters_rederive_the_other():
    cfg = ConvNextV2Config.from_preset("atto")
    assert cfg.out_features == ["stage4"] and cfg.out_indices == [4]
    cfg.out_indices = [-3, -1]
    assert cfg.out_features == ["stage2", "stage4"] and cfg.out_indices == [2, 4]
    cfg.out_features = ["stem", "stage1"]
    assert cfg.out_indices == [0, 1]


def test_presets_match_published_shapes():
    assert list_presets("convnext") == [f"convnext_{s}" for s in ["tiny", "small", "base", "large", "xlarge", "xxlarge"]]
    assert list_presets("convnextv2") == [f"convnextv2_{s}" for s in ["atto", "femto", "pico", "nano", "tiny", "base", "large", "huge"]]
    assert PRESETS["convnextv2"]["huge"] == ((3, 3, 27, 3), (352, 704, 1408, 2816))
    assert PRESETS["convnext"]["xxlarge"] == ((3, 4, 30, 3), (384, 768, 1536, 3072))  # CLIP's ConvNeXt-XXL (timm)
    xxl = ConvNextConfig.from_preset("xxlarge")
    assert xxl.norm_eps == 1e-5 and ConvNextConfig.from_preset("xlarge").norm_eps == 1e-6  # as timm builds them
    cfg = ConvNextV2Config.from_preset("nano")
    assert cfg.depths == [2, 2, 8, 2] and cfg.hidden_sizes == [80, 160, 320, 640]
    assert type(build_backbone("convnext_small").config) is ConvNextConfig
    assert type(build_backbone("convnextv2_atto").config) is ConvNextV2Config


@pytest.mark.parametrize("name", ["convnext_tiny", "convnextv2_atto"])
def test_shapes_channels_strides(name):
    model = build_backbone(name, out_features=STAGES).eval()
    x = torch.randn(1, 3, 96, 160)
    out = model(x)
    assert model.stage_names == tuple(STAGES)
    assert model.strides == [4, 4, 8, 16, 32]
    h = model.config.hidden_sizes
    assert model.channels == [h[0], h[0], h[1], h[2], h[3]]
    assert len(out.feature_maps) == 5
    for fmap, c, s in zip(out.feature_maps, model.channels, model.strides):
        assert tuple(fmap.shape) == (1, c, 96 // s, 160 // s)
    assert list(model.forward_dict(x)) == STAGES


def test_outputs_follow_out_features_order_and_norm_switch():
    model = randomize_(build_backbone("convnextv2_atto", out_indices=[1, 3], norm_outputs=True)).eval()
    x = torch.randn(2, 3, 64, 64)
    full = model(x, output_hidden_states=True)
    assert len(full.hidden_states) == 5
    normed = model(x).feature_maps
    # each map is its stage's hidden state through its own LayerNorm
    assert max_abs_diff(normed[0], model.norm0(full.hidden_states[1])) == 0
    assert max_abs_diff(normed[1], model.norm2(full.hidden_states[3])) == 0
    raw = ConvNextBackbone(model.config.copy(norm_outputs=False))
    raw.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("norm")})
    raw.eval()
    assert max_abs_diff(raw(x).feature_maps, (full.hidden_states[1], full.hidden_states[3])) == 0
    assert not hasattr(raw, "norm0")


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.randn(1, 4, 64, 64), r"4 channels.*num_channels=3"),
        (torch.randn(3, 64, 64), r"4-D"),
        (torch.randn(1, 3, 16, 64), r"smaller than the total stride 32"),
    ],
)
def test_bad_input_errors(bad, match):
    model = build_backbone("convnextv2_atto")
    with pytest.raises(ValueError, match=match):
        model(bad)


def test_small_image_allowed_when_only_shallow_outputs_requested():
    model = build_backbone("convnextv2_atto", out_features=["stem", "stage1"])
    out = model(torch.randn(1, 3, 8, 8))
    assert tuple(out.feature_maps[1].shape) == (1, 40, 2, 2)
    with pytest.raises(ValueError, match="total stride 4"):
        model(torch.randn(1, 3, 3, 8))


def test_unknown_preset_errors():
    with pytest.raises(ValueError, match=r"unknown preset 'convnext_gigantic'.*convnextv2_atto"):
        build_backbone("convnext_gigantic")
    with pytest.raises(ValueError, match=r"did you mean 'tiny'\? \(the presets are \['atto'"):
        ConvNextV2Config.from_preset("tiny2")
    with pytest.raises(ValueError, match="layer scale"):
        ConvNextV2Config(layer_scale_init_value=1e-6)


def test_drop_path_changes_training_outputs_not_eval():
    torch.manual_seed(0)
    model = randomize_(build_backbone("convnextv2_atto", drop_path_rate=0.5, out_indices=[4]))
    x = torch.randn(4, 3, 64, 64)
    model.train()
    a, b = model(x).feature_maps[0], model(x).feature_maps[0]
    assert max_abs_diff(a, b) > 1e-2
    model.eval()
    ref = ConvNextBackbone(model.config.copy(drop_path_rate=0.0)).eval()
    ref.load_state_dict(model.state_dict())
    assert max_abs_diff(model(x).feature_maps, ref(x).feature_maps) == 0
    rates = [blk.drop_path.drop_prob for stage in model.stages for blk in stage if hasattr(blk.drop_path, "drop_prob")]
    assert rates[-1] == pytest.approx(0.5) and rates == sorted(rates)  # linear over blocks


@pytest.mark.parametrize("frozen", [0, 2])
def test_frozen_stages_get_no_gradient_and_stay_in_eval(frozen):
    model = build_backbone("convnextv2_atto", out_indices=[1, 2, 3, 4], frozen_stages=frozen, drop_path_rate=0.2)
    model.train()
    sum(f.sum() for f in model(torch.randn(2, 3, 64, 64)).feature_maps).backward()
    frozen_prefixes = ["downsample_layers.0."] + [f"stages.{i}." for i in range(frozen)] + [f"downsample_layers.{i}." for i in range(1, frozen)]
    for name, p in model.named_parameters():
        is_frozen = any(name.startswith(pre) for pre in frozen_prefixes)
        assert p.requires_grad is not is_frozen, name
        assert (p.grad is None) is is_frozen, name
    for name, m in model.named_modules():
        is_frozen = any((name + ".").startswith(pre) for pre in frozen_prefixes)
        if name and is_frozen:
            assert not m.training, name
    assert model.stages[frozen].training and model.norm0.training


def test_gradient_checkpointing_same_outputs_and_grads():
    torch.manual_seed(0)
    model = randomize_(build_backbone("convnextv2_atto", out_indices=[1, 2, 3, 4])).train()
    x = torch.randn(2, 3, 64, 64)

    def grads():
        model.zero_grad()
        loss = sum((f**2).mean() for f in model(x).feature_maps)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    l1, g1 = grads()
    model.set_gradient_checkpointing(True)
    l2, g2 = grads()
    assert torch.allclose(l1, l2, atol=1e-6)
    assert max(max_abs_diff(a, b) for a, b in zip(g1, g2)) < 1e-6


def test_channels_last_is_a_memory_layout_only():
    model = randomize_(build_backbone("convnext_tiny", out_indices=[0, 1, 2, 3, 4])).eval()
    other = ConvNextBackbone(model.config.copy(channels_last=not model.config.channels_last)).eval()
    other.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 64, 96)
    assert max_abs_diff(model(x).feature_maps, other(x).feature_maps) < 1e-5


def test_config_json_roundtrip(tmp_path):
    cfg = ConvNextV2Config.from_preset("femto", out_indices=[-1, ], drop_path_rate=0.1, frozen_stages=1)
    cfg.to_json_file(tmp_path / "c.json")
    back = ConvNextConfig.from_json_file(tmp_path / "c.json")
    assert type(back) is ConvNextV2Config and back == cfg and back.out_indices == [4]


def test_save_and_from_pretrained_roundtrip(tmp_path):
    model = randomize_(build_backbone("convnextv2_atto", out_features=["stem", "stage2", "stage4"])).eval()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    back = ConvNextBackbone.from_pretrained(tmp_path / "m").eval()
    assert back.out_features == ["stem", "stage2", "stage4"] and back.load_report.ok
    x = torch.randn(1, 3, 64, 64)
    assert max_abs_diff(model(x).feature_maps, back(x).feature_maps) == 0
    # override: fewer outputs; the unused output norms are reported as dropped, not an error
    sub = ConvNextBackbone.from_pretrained(tmp_path / "m", out_features=["stage4"]).eval()
    assert {k.split(".")[0] for k, _ in sub.load_report.dropped} == {"norm_stem", "norm1"}
    assert max_abs_diff(sub(x).feature_maps[0], back(x).feature_maps[2]) == 0


def test_classifier_model_shapes():
    model = ConvNextForImageClassification(ConvNextV2Config.from_preset("atto", num_labels=7)).eval()
    out = model(torch.randn(2, 3, 64, 64))
    assert tuple(out.logits.shape) == (2, 7) and tuple(out.pooler_output.shape) == (2, 320)


@pytest.mark.parametrize("name", ["convnext_tiny", "convnextv2_atto"])
def test_inference_fast_path_equals_autograd_and_reference_paths(name):
    """The streamed inference path, the accelerated autograd path and the reference model compute the same maps."""
    model = randomize_(build_backbone(name, out_indices=[0, 1, 2, 3, 4])).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        fast = model(x).feature_maps
    slow = model(x.clone().requires_grad_()).feature_maps
    assert max_abs_diff(fast, [s.detach() for s in slow]) < 1e-5
    model.accelerate = False
    with torch.no_grad():
        reference = model(x).feature_maps
    model.accelerate = True
    assert max_abs_diff(fast, reference) < 1e-5
    with torch.no_grad():  # the reused workspace does not leak between calls of different sizes
        small = model(torch.randn(1, 3, 32, 32)).feature_maps
        again = model(x).feature_maps
    assert max_abs_diff(fast, again) == 0 and small[-1].shape[-1] == 1


@pytest.mark.parametrize("drop_path_rate", [0.0, 0.3])
def test_cpu_training_path_equals_plain_autograd(drop_path_rate):
    """The accelerated CPU training path (C depthwise kernel, lean MLP, patch GEMMs) gives the
    reference model's outputs and gradients, drop path included (same random mask: same seed)."""
    net = randomize_(build_backbone("convnext_tiny", out_indices=[1, 2, 3, 4], depths=[1, 1, 2, 1],
                                    drop_path_rate=drop_path_rate)).train()
    x = torch.randn(2, 3, 64, 96)

    def run():
        net.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        maps = net(x).feature_maps
        sum((f * f).mean() for f in maps).backward()
        return [m.detach() for m in maps], {k: p.grad.clone() for k, p in net.named_parameters()}

    fast_maps, fast_grads = run()
    net.accelerate = False
    slow_maps, slow_grads = run()
    assert max_abs_diff(fast_maps, slow_maps) < 1e-5
    for k in slow_grads:
        scale = slow_grads[k].abs().max().item() + 1e-12
        assert (fast_grads[k] - slow_grads[k]).abs().max().item() <= 1e-4 * scale, k


def test_concurrent_inference_threads_get_their_own_workspace():
    import threading

    model = randomize_(build_backbone("convnextv2_atto", out_indices=[1, 2, 3, 4])).eval()
    inputs = [torch.randn(1, 3, 64 + 32 * i, 64) for i in range(4)]
    with torch.no_grad():
        expected = [model(x).feature_maps for x in inputs]
    results = {}

    def run(i):
        with torch.no_grad():
            for _ in range(3):
                results[i] = model(inputs[i]).feature_maps

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        assert max_abs_diff(results[i], expected[i]) == 0


@pytest.mark.parametrize("name", ["convnext_tiny", "convnextv2_atto"])
def test_bfloat16_autocast_inference_and_training(name):
    model = randomize_(build_backbone(name, out_indices=[1, 2, 3, 4])).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x).feature_maps
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x).feature_maps
    # bf16 GEMMs ran (the result differs from fp32); the residual stream may stay fp32 where a
    # float32 parameter (V1 layer scale, as in the official code) multiplies it
    assert max_abs_diff(ref, low) > 0 and all(f.dtype in (torch.bfloat16, torch.float32) for f in low)
    for a, b in zip(ref, low):
        assert (a - b.float()).abs().max() < 0.1 * a.abs().max()  # bf16 has 8 bits of mantissa
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sum(f.float().pow(2).mean() for f in model(x).feature_maps)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_workspace_survives_switching_between_inference_mode_and_no_grad():
    from convnext_backbone import release_workspace

    release_workspace()
    model = randomize_(build_backbone("convnextv2_atto", out_indices=[1, 2, 3, 4])).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():  # the workspace is first created here
        a = model(x).feature_maps
    with torch.no_grad():
        b = model(x).feature_maps
    with torch.inference_mode():
        c = model(x).feature_maps
    assert max_abs_diff(a, b) == 0 and max_abs_diff(a, c) == 0


# ---------------------------------------------------------------------------------------------
# the rest of transformers' backbone contract, and bad input
# ---------------------------------------------------------------------------------------------
def test_transformers_backbone_attributes_and_output():
    ours = build_backbone("convnextv2_atto", out_indices=[1, 3])
    hf = transformers.ConvNextV2Backbone(transformers.ConvNextV2Config(
        hidden_sizes=[40, 80, 160, 320], depths=[2, 2, 6, 2], out_indices=[1, 3]))
    assert ours.out_feature_channels == dict(hf.out_feature_channels)
    assert ours.backbone_type == hf.backbone_type.value
    out = ours(torch.randn(1, 3, 64, 64))
    assert out.attentions is None and out.hidden_states is None


def test_config_output_hidden_states_is_the_default():
    model = build_backbone("convnextv2_atto", depths=[1, 1, 1, 1], output_hidden_states=True).eval()
    x = torch.randn(1, 3, 64, 64)
    assert len(model(x).hidden_states) == 5
    assert model(x, output_hidden_states=False).hidden_states is None
    cls = ConvNextForImageClassification(ConvNextV2Config.from_preset("atto", depths=[1, 1, 1, 1], num_labels=3)).eval()
    assert cls(x).hidden_states is None
    out = cls(x, output_hidden_states=True)
    assert [h.shape[1] for h in out.hidden_states] == [40, 40, 80, 160, 320] and out.logits.shape == (1, 3)


@pytest.mark.parametrize("attr,value,names", [("out_features", ["stem", "stage3"], ["stem", "stage3"]),
                                              ("out_indices", [-1, ], ["stage4"]), ("out_indices", [1, 2, 3, 4], STAGES[1:])])
def test_outputs_can_change_on_a_built_backbone_and_norms_follow(attr, value, names):
    model = randomize_(build_backbone("convnext_tiny", depths=[1, 1, 1, 1], out_indices=[2, 4])).eval()
    x = torch.randn(1, 3, 64, 64)
    setattr(model, attr, value)
    assert model.out_features == names and model.channels == [model.out_feature_channels[n] for n in names]
    norm_keys = {k.split(".")[0] for k in model.state_dict() if k.startswith("norm")}
    assert norm_keys == {("norm_stem" if n == "stem" else f"norm{int(n[-1]) - 1}") for n in names}  # none stale, none missing
    with torch.no_grad():
        maps = model(x).feature_maps
        fresh = build_backbone("convnext_tiny", depths=[1, 1, 1, 1], out_features=names)
        fresh.load_state_dict(model.state_dict())
        assert max_abs_diff(maps, fresh.eval()(x).feature_maps) == 0
    for m, name in zip(maps, names):  # each map normalised over channels
        norm = model.output_norms()[name]
        if name not in ("stage2", "stage4"):  # a new norm starts as identity-affine LayerNorm
            assert torch.equal(norm.weight, torch.ones_like(norm.weight))
            assert m.mean(dim=1).abs().max() < 1e-4 and (m.var(dim=1, unbiased=False) - 1).abs().max() < 1e-2
    with pytest.raises(ValueError, match="must be a subset of stage_names"):
        model.out_features = ["stage9"]
    assert model.out_features == names  # a rejected change leaves the model as it was


def test_from_pretrained_is_in_eval_mode(tmp_path):
    build_backbone("convnextv2_atto", depths=[1, 1, 1, 1], drop_path_rate=0.5).save_pretrained(tmp_path)
    model = ConvNextBackbone.from_pretrained(tmp_path)
    assert not model.training
    x = torch.randn(2, 3, 64, 64)
    assert max_abs_diff(model(x).feature_maps, model(x).feature_maps) == 0  # no random drop path


def test_empty_selection_and_resolver_inputs_are_value_errors():
    with pytest.raises(ValueError, match="out_features is empty"):
        build_backbone("convnextv2_atto", out_features=[])
    with pytest.raises(ValueError, match="out_indices is empty"):
        ConvNextV2Config(out_indices=())
    with pytest.raises(ValueError, match="stage_names must be a list"):
        resolve_out_features_out_indices(["stage1"], None, None)


@pytest.mark.parametrize("kwargs,match", [
    (dict(out_indice=[1, 2]), r"unknown ConvNextConfig field 'out_indice'; did you mean 'out_indices'\?"),
    (dict(frozen_stage=2), r"'frozen_stage'; did you mean 'frozen_stages'\?"),
    (dict(hidden_size=[8, 16, 32, 64]), r"'hidden_size'; did you mean 'hidden_sizes'\?"),
    (dict(frozen_stages=1.5), r"frozen_stages must be an integer, got 1.5"),
    (dict(depths=[1, 1, "2", 1]), r"depths must be an integer, got '2'"),
])
def test_misspelt_or_wrongly_typed_keywords_are_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_backbone("convnext_tiny", **kwargs)


def test_preset_typo_suggests_the_closest_and_config_json_extras_are_accepted():
    with pytest.raises(ValueError, match=r"unknown preset 'convnextv2_atoo'; did you mean 'convnextv2_atto'\?"):
        build_backbone("convnextv2_atoo")
    # every key transformers writes into a ConvNeXt config.json reads without error
    for hf in (transformers.ConvNextConfig(), transformers.ConvNextV2Config()):
        cfg = (ConvNextV2Config if hf.model_type == "convnextv2" else ConvNextConfig).from_dict(hf.to_dict())
        assert cfg.hidden_sizes == list(hf.hidden_sizes)


def test_v2_and_v1_on_an_empty_batch_return_empty_maps():
    for name in ("convnext_tiny", "convnextv2_atto"):
        for mode in ("eval", "train"):
            model = getattr(build_backbone(name, depths=[1, 1, 1, 1], out_indices=[1, 2, 3, 4]), mode)()
            out = model(torch.randn(0, 3, 64, 64)).feature_maps
            assert [tuple(f.shape) for f in out] == [(0, c, 64 // s, 64 // s) for c, s in zip(model.channels, model.strides)]


def test_loading_another_size_names_both_architectures_and_shapes_first(tmp_path):
    from convnext_backbone import CheckpointError, load_checkpoint

    build_backbone("convnextv2_atto").save_pretrained(tmp_path / "atto")
    model = build_backbone("convnextv2_femto")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, tmp_path / "atto")
    msg = str(err.value)
    assert "checkpoint is convnextv2_atto, model is convnextv2_femto" in msg
    lines = [line.strip() for line in msg.splitlines()]
    problems = [line for line in lines if line.startswith(("shape mismatch", "missing", "unexpected"))]
    assert problems[0].startswith("shape mismatch") and msg.index("checkpoint is") < msg.index("shape mismatch")
    assert lines[-1].startswith("Pass strict=False")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, tmp_path / "atto", hint=None)
    assert "strict=False" not in str(err.value)


def test_save_pretrained_writes_identical_bytes_for_identical_weights(tmp_path):
    import hashlib

    model = build_backbone("convnextv2_atto", depths=[1, 1, 1, 1])
    digests = []
    for run in ("a", "b", "c"):
        model.save_pretrained(tmp_path / run)
        digests.append({f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in (tmp_path / run).iterdir()})
    assert digests[0] == digests[1] == digests[2]


# Each: the field, a value no model can have, and what the error must say (field, value, allowed range).
BAD_FIELDS = [
    ("hidden_sizes", [0, 80, 160, 320], r"hidden_sizes must be a list of integers >= 1, one per stage \(channels of each stage\), got \[0, 80, 160, 320\]"),
    ("hidden_sizes", [-8, 80, 160, 320], r"hidden_sizes must be a list of integers >= 1.*got \[-8, 80, 160, 320\]"),
    ("hidden_sizes", 96, r"hidden_sizes must be a list of integers >= 1, one per stage .*got 96"),
    ("depths", [2, -1, 6, 2], r"depths must be a list of integers >= 1, one per stage \(blocks of each stage\), got \[2, -1, 6, 2\]"),
    ("depths", [2, 0, 6, 2], r"depths must be a list of integers >= 1.*got \[2, 0, 6, 2\]"),
    ("num_channels", 0, r"num_channels must be an integer >= 1 \(channels of the input image\), got 0"),
    ("patch_size", -4, r"patch_size must be an integer >= 1 .*got -4"),
    ("num_stages", 0, r"num_stages must be an integer >= 1 .*got 0"),
    ("layer_norm_eps", -1e-6, r"layer_norm_eps must be a number > 0 .*got -1e-06"),
    ("layer_norm_eps", 0.0, r"layer_norm_eps must be a number > 0 .*got 0.0"),
    ("layer_norm_eps", "1e-6", r"layer_norm_eps must be a number > 0 .*got '1e-6'"),
    ("initializer_range", -0.02, r"initializer_range must be a number >= 0 .*got -0.02"),
    ("drop_path_rate", float("nan"), r"drop_path_rate must be in \[0, 1\) .*got nan"),
    ("drop_path_rate", 1.0, r"drop_path_rate must be in \[0, 1\) .*got 1.0"),
    ("image_size", 0, r"image_size must be an integer >= 1 .*got 0"),
    ("num_labels", 0, r"num_labels must be an integer >= 1 .*got 0"),
    ("frozen_stages", 5, r"frozen_stages must be in \[-1, 4\] .*got 5"),
    ("frozen_stages", -2, r"frozen_stages must be in \[-1, 4\] .*got -2"),
    ("norm_outputs", "false", r"norm_outputs must be True or False .*got 'false'"),
    ("channels_last", None, r"channels_last must be True or False .*got None"),
]


@pytest.mark.parametrize("field,value,match", BAD_FIELDS, ids=[f"{f}={v!r}" for f, v, _ in BAD_FIELDS])
def test_every_field_is_checked_where_it_is_set(field, value, match):
    """At construction (not later in the model: 'groups must be a positive integer', a raw RuntimeError,
    or never) and on assignment to a built config, which then keeps its old value."""
    with pytest.raises(ValueError, match=match):
        ConvNextV2Config.from_preset("atto", **{field: value})
    cfg = ConvNextV2Config.from_preset("atto")
    before = cfg.to_dict()
    with pytest.raises(ValueError, match=match):
        setattr(cfg, field, value)
    assert cfg.to_dict() == before


def test_a_width_no_model_can_have_stops_at_the_config_not_in_the_model():
    for widths in ([0, 80, 160, 320], [-8, 80, 160, 320]):  # were "groups must be a positive integer" / a RuntimeError
        with pytest.raises(ValueError, match=r"^hidden_sizes must be a list of integers >= 1"):
            build_backbone("convnextv2_atto", hidden_sizes=widths)


def test_v1_layer_scale_range_and_the_rules_between_fields_on_assignment():
    with pytest.raises(ValueError, match=r"layer_scale_init_value must be a number >= 0 .*got -1e-06"):
        ConvNextConfig(layer_scale_init_value=-1e-6)
    cfg = ConvNextV2Config.from_preset("atto")
    cfg.depths = (1, 1, 1, 1)  # a valid change is taken (as a list, like the constructor does)
    assert cfg.depths == [1, 1, 1, 1] and build_backbone("convnextv2_atto", depths=[1, 1, 1, 1]).config == cfg
    with pytest.raises(ValueError, match=r"must both have num_stages=4 entries; to change the number of stages, make a new config"):
        cfg.depths = [1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match=r"ConvNeXt V2 has no layer scale"):
        cfg.layer_scale_init_value = 1e-6
    assert cfg.depths == [1, 1, 1, 1] and cfg.layer_scale_init_value == 0.0
    five = cfg.copy(num_stages=5, depths=[1] * 5, hidden_sizes=[8, 16, 32, 64, 128], out_features=["stage5"])
    assert five.stage_names[-1] == "stage5" and five.strides[-1] == 64


def test_models_built_from_one_config_do_not_share_it():
    """A model keeps its own copy of the config: changing one model's outputs (or the caller's
    config afterwards) changes nothing else."""
    cfg = ConvNextV2Config.from_preset("atto", out_features=["stage2", "stage4"])
    a, b = ConvNextBackbone(cfg), ConvNextBackbone(cfg)
    a.out_features = ["stage1"]
    assert a.out_features == ["stage1"]
    assert b.out_features == ["stage2", "stage4"] and cfg.out_features == ["stage2", "stage4"]
    cfg.frozen_stages = 2
    cfg.out_indices = [4]
    assert b.config.frozen_stages == -1 and b.out_features == ["stage2", "stage4"]
    assert a.config is not cfg and b.config is not a.config


def test_the_constructor_does_not_call_an_overridable_init_hook():
    """Frameworks give ``init_weights`` their own meaning (mmengine: apply init_cfg); the core
    initialises itself without calling it, so a subclass needs no construction-order guard."""

    class Framework(ConvNextBackbone):
        def init_weights(self):
            raise AssertionError("called during construction")

    model = Framework(ConvNextV2Config.from_preset("atto"))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(AssertionError, match="construction"):
        model.init_weights()
