"""Half precision: pure float16/bfloat16 models and autocast stay finite and close to float32,
where a naive float16 statistic would overflow (issue: ConvNeXt V2 fp16 NaNs)."""
import copy

import pytest
import torch

from convnext_backbone import ConvNextConfig, ConvNextForImageClassification, ConvNextV2Config, build_backbone

from helpers import randomize_

# V1 at the small V2 widths (V1 has no smaller preset than tiny; the width is what matters here)
SMALL = {"v1": dict(name="convnext_tiny", hidden_sizes=[40, 80, 160, 320]), "v2": dict(name="convnextv2_atto")}
FP16_MAX = torch.finfo(torch.float16).max


def _trained_magnitude(version: str, scale: float) -> torch.nn.Module:
    """Hidden activations of trained magnitude: pwconv1 weights x scale, GRN gamma ~ N(0, 0.5)."""
    spec = dict(SMALL[version])
    model = build_backbone(spec.pop("name"), depths=[1, 1, 1, 1], out_indices=[1, 2, 3, 4], **spec).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("pwconv1.weight"):
                p.mul_(scale)
            elif name.endswith("grn.gamma"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return model


def _first_hidden(model, x):
    """The first block's 4x-wide hidden activation (what GRN takes its statistic of)."""
    block = model.stages[0][0]
    t = block.norm(block.dwconv(model.downsample_layers[0](x)).permute(0, 2, 3, 1))
    return block.act(block.pwconv1(t))


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("scale", [12.0, 24.0])
def test_pure_half_at_1024_is_finite_and_close_to_float32(version, scale, spy):
    """float16 runs the reference blocks; bfloat16 the accelerator (its GRN statistic summed in float32
    by the C kernel, in the pass that applies GELU), and the reference blocks once more to compare."""
    model = _trained_magnitude(version, scale)
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x).feature_maps
        hidden = _first_hidden(model, x)
        # not trivially safe: a float16 sum of squares of these activations overflows
        naive = (hidden.half() * hidden.half()).sum(dim=(1, 2))
        assert torch.isinf(naive).any() and (hidden.double() ** 2).sum(dim=(1, 2)).max() > FP16_MAX
        dtypes = (torch.float16, torch.bfloat16) if scale == 12.0 else (torch.float16,)
        for dtype, tol in ((torch.float16, 1e-2), (torch.bfloat16, 5e-2)):
            if dtype not in dtypes:
                continue
            low = copy.deepcopy(model).to(dtype)
            before = spy["block"]
            with torch.profiler.profile() as prof:
                out = low(x.to(dtype)).feature_maps
            accelerated = dtype == torch.bfloat16
            assert spy["block"] - before == (4 if accelerated else 0), dtype
            if accelerated and version == "v2":
                assert any(e.name == "convnext::bias_gelu_sumsq" for e in prof.events())
                low.accelerate = False
                out_ref = low(x.to(dtype)).feature_maps
            for stage, (a, r) in enumerate(zip(out, ref), start=1):
                assert a.dtype == dtype and torch.isfinite(a).all(), (dtype, stage)
                rel = ((a.float() - r).norm() / r.norm()).item()
                assert rel < tol, (dtype, stage, rel)
                if accelerated and version == "v2":  # no further from float32 than the reference blocks
                    rel_ref = ((out_ref[stage - 1].float() - r).norm() / r.norm()).item()
                    assert rel <= 1.1 * rel_ref + 1e-4, (stage, rel, rel_ref)


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_pure_half_training_step_backbone_and_classifier(version, dtype):
    torch.manual_seed(0)
    cfg_cls = ConvNextConfig if version == "v1" else ConvNextV2Config
    cfg = cfg_cls(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128], out_indices=[1, 2, 3, 4], num_labels=5,
                  drop_path_rate=0.1)
    x = torch.randn(2, 3, 64, 64, dtype=dtype)
    backbone = randomize_(build_backbone("convnext_tiny" if version == "v1" else "convnextv2_atto",
                                         depths=[1, 1, 1, 1], out_indices=[1, 2, 3, 4], drop_path_rate=0.1)).to(dtype).train()
    classifier = randomize_(ConvNextForImageClassification(cfg)).to(dtype).train()
    for model, loss_of in ((backbone, lambda out: sum(f.float().pow(2).mean() for f in out.feature_maps)),
                           (classifier, lambda out: torch.nn.functional.cross_entropy(out.logits.float(), torch.tensor([1, 3])))):
        loss = loss_of(model(x))
        loss.backward()
        assert torch.isfinite(loss)
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert grads and all(g is not None and g.dtype == dtype and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["convnext_tiny", "convnextv2_atto"])
def test_autocast_training_step_is_finite(name):
    model = randomize_(build_backbone(name, depths=[1, 1, 2, 1], out_indices=[1, 2, 3, 4], drop_path_rate=0.1)).train()
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sum(f.float().pow(2).mean() for f in model(x).feature_maps)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_non_float_pixels_are_a_clear_error(dtype):
    model = build_backbone("convnextv2_atto", depths=[1, 1, 1, 1])
    with pytest.raises(ValueError, match=rf"floating point.*{str(dtype).removeprefix('torch.')}"):
        model(torch.zeros(1, 3, 64, 64, dtype=dtype))
