"""mmcv's compiled ops (the wheel scripts/build_mmcv_wheel.sh builds) give the right answers.

The wheel is built locally (-g0, precompiled header): these tests check that its `mmcv._ext`
has the ops our configs use and that they agree with independent references on fixed random
inputs: torchvision's roi_align / nms / batched_nms, and a plain-Python soft-NMS. No skips:
a missing or broken mmcv fails here.
"""
import math

import pytest
import torch
import torchvision


def _boxes(n, size=64.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 2 + 1
    scores = torch.rand(n, generator=g) * 0.95 + 0.05  # distinct, none below min_score
    return torch.cat([xy, xy + wh], 1), scores


def test_ext_is_the_compiled_extension():
    from mmcv.utils import ext_loader

    ext = ext_loader.load_ext("_ext", ["roi_align_forward", "roi_align_backward", "nms", "softnms",
                                       "ms_deform_attn_forward"])
    assert ext.__name__ == "mmcv._ext"
    assert ext.__file__.endswith(".so")


# ----------------------------------------------------------------------------- RoIAlign


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("output_size", [7, 14])
def test_roi_align_matches_torchvision(aligned, sampling_ratio, output_size):
    from mmcv.ops import RoIAlign

    g = torch.Generator().manual_seed(1)
    feat = torch.randn(2, 8, 32, 40, generator=g)
    boxes, _ = _boxes(24, size=120.0, seed=2)
    rois = torch.cat([torch.randint(0, 2, (24, 1), generator=g).float(), boxes], 1)
    scale = 0.25
    x1 = feat.clone().requires_grad_()
    x2 = feat.clone().requires_grad_()
    ours = RoIAlign(output_size, scale, sampling_ratio, aligned=aligned)(x1, rois)
    ref = torchvision.ops.roi_align(x2, rois, output_size, scale, sampling_ratio, aligned)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    grad = torch.randn(ref.shape, generator=g)
    ours.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- NMS


@pytest.mark.parametrize("iou", [0.3, 0.5, 0.7])
def test_nms_matches_torchvision(iou):
    from mmcv.ops import nms

    boxes, scores = _boxes(300, seed=3)
    dets, keep = nms(boxes, scores, iou)
    ref = torchvision.ops.nms(boxes, scores, iou)
    assert 0 < len(ref) < len(boxes)
    assert keep.tolist() == ref.tolist()
    torch.testing.assert_close(dets, torch.cat([boxes[ref], scores[ref, None]], 1))


def test_batched_nms_matches_torchvision():
    from mmcv.ops import batched_nms

    boxes, scores = _boxes(400, seed=4)
    labels = torch.randint(0, 5, (400,), generator=torch.Generator().manual_seed(5))
    dets, keep = batched_nms(boxes, scores, labels, dict(type="nms", iou_threshold=0.5))
    ref = torchvision.ops.batched_nms(boxes, scores, labels, 0.5)
    assert keep.tolist() == ref.tolist()
    torch.testing.assert_close(dets, torch.cat([boxes[ref], scores[ref, None]], 1))
    # class-agnostic = plain NMS over all boxes
    _, keep = batched_nms(boxes, scores, labels, dict(type="nms", iou_threshold=0.5), class_agnostic=True)
    assert keep.tolist() == torchvision.ops.nms(boxes, scores, 0.5).tolist()


# ----------------------------------------------------------------------------- soft-NMS


def _soft_nms_reference(boxes, scores, iou_threshold, sigma, min_score, method):
    """Soft-NMS (Bodla et al. 2017) in plain Python: repeatedly take the highest-scoring box,
    decay the others' scores by their IoU with it (linear: s *= 1 - iou when iou >= threshold;
    gaussian: s *= exp(-iou^2 / sigma)) and drop those that fall below min_score."""
    live = [(i, [float(v) for v in b], float(s)) for i, (b, s) in enumerate(zip(boxes, scores))]
    kept = []

    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
        return inter / (area(a) + area(b) - inter)

    while live:
        best = max(range(len(live)), key=lambda k: live[k][2])
        i, box, score = live.pop(best)
        kept.append((i, score))
        rest = []
        for j, other, s in live:
            o = iou(box, other)
            if method == "linear":
                s *= 1 - o if o >= iou_threshold else 1.0
            else:
                s *= math.exp(-(o * o) / sigma)
            if s >= min_score:
                rest.append((j, other, s))
        live = rest
    return [i for i, _ in kept], [s for _, s in kept]


@pytest.mark.parametrize("method,iou,sigma", [("linear", 0.3, 0.5), ("linear", 0.6, 0.5),
                                              ("gaussian", 0.3, 0.5), ("gaussian", 0.3, 0.1)])
def test_soft_nms_matches_python_reference(method, iou, sigma):
    from mmcv.ops import soft_nms

    boxes, scores = _boxes(120, size=48.0, seed=6)
    dets, inds = soft_nms(boxes, scores, iou, sigma=sigma, min_score=0.05, method=method)
    ref_inds, ref_scores = _soft_nms_reference(boxes.tolist(), scores.tolist(), iou, sigma, 0.05, method)
    assert 0 < len(ref_inds) < len(boxes)
    assert inds.tolist() == ref_inds
    torch.testing.assert_close(dets[:, :4], boxes[inds])
    torch.testing.assert_close(dets[:, 4], torch.tensor(ref_scores), rtol=1e-5, atol=1e-6)


def test_batched_soft_nms_as_configured():
    """configs/mmdet/mask_rcnn_convnextv2_base_fpn_3x_coco.py: rcnn nms=dict(type='soft_nms'),
    iou_threshold 0.5 (mmdet's default): per class, the plain-Python reference."""
    from mmcv.ops import batched_nms

    boxes, scores = _boxes(150, size=48.0, seed=7)
    labels = torch.randint(0, 3, (150,), generator=torch.Generator().manual_seed(8))
    dets, keep = batched_nms(boxes, scores, labels, dict(type="soft_nms", iou_threshold=0.5))
    got = sorted(zip(keep.tolist(), dets[:, 4].tolist()))
    want = []
    for c in range(3):
        idx = (labels == c).nonzero().flatten()
        i, s = _soft_nms_reference(boxes[idx].tolist(), scores[idx].tolist(), 0.5, 0.5, 1e-3, "linear")
        want += [(idx[k].item(), v) for k, v in zip(i, s)]
    want.sort()
    assert [k for k, _ in got] == [k for k, _ in want]
    torch.testing.assert_close(torch.tensor([v for _, v in got]), torch.tensor([v for _, v in want]),
                               rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- deformable attention


def test_multi_scale_deformable_attention_cpu_path():
    """Off CUDA, MultiScaleDeformableAttention runs its PyTorch fallback: with the attention
    weights one-hot on a sampling point that sits on a pixel centre, it returns that pixel."""
    from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttention, multi_scale_deformable_attn_pytorch

    g = torch.Generator().manual_seed(9)
    shapes = torch.tensor([[6, 8], [3, 4]])
    heads, dim, points = 2, 4, 2
    value = torch.randn(1, 6 * 8 + 3 * 4, heads, dim, generator=g)
    loc = torch.rand(1, 5, heads, 2, points, 2, generator=g)
    # query 0, every head: level 0 point 0 on the centre of pixel (x=3, y=2)
    loc[0, 0, :, 0, 0] = torch.tensor([(3 + 0.5) / 8, (2 + 0.5) / 6])
    weights = torch.zeros(1, 5, heads, 2, points)
    weights[0, :, :, 0, 0] = 1.0
    out = multi_scale_deformable_attn_pytorch(value, shapes, loc, weights)
    assert out.shape == (1, 5, heads * dim)
    torch.testing.assert_close(out[0, 0].view(heads, dim), value[0, 2 * 8 + 3])

    attn = MultiScaleDeformableAttention(embed_dims=16, num_heads=2, num_levels=2, num_points=2, batch_first=True)
    q = torch.randn(1, 5, 16, generator=g)
    v = torch.randn(1, 6 * 8 + 3 * 4, 16, generator=g)
    ref = torch.rand(1, 5, 2, 2, generator=g)
    start = torch.tensor([0, 48])
    y = attn(q, value=v, reference_points=ref, spatial_shapes=shapes, level_start_index=start)
    assert y.shape == (1, 5, 16) and torch.isfinite(y).all()
