"""FGDLoss against the official arithmetic (tests/test_losses/official_fgd_mgd.py), its masks
by hand, gradients, and its refusals."""
import pytest
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData

import kd_det.losses  # noqa: F401  (registers the losses)
from kd_det.losses import box_masks
from kd_det.models.loss_wiring import build_losses
from official_fgd_mgd import official_fgd_level

# two levels of a non-square map (rows != columns), 3 images
LEVELS = [(2, 8, 10, 14), (2, 8, 5, 7)]
PARAMS = dict(temp=0.5, alpha_fgd=1e-3, beta_fgd=5e-4, gamma_fgd=5e-4, lambda_fgd=5e-6)


def samples(img_shapes, batch_shape=(80, 112)):
    """Image 0: two overlapping boxes, one touching the right and bottom edge of its image;
    image 1: one box; image 2 (if any): no box."""
    boxes = [torch.tensor([[8., 4., 60., 30.], [20., 10., 112., 80.]]),
             torch.tensor([[50., 33., 70., 70.]]),
             torch.zeros(0, 4)]
    out = []
    for i, shape in enumerate(img_shapes):
        sample = DetDataSample(metainfo=dict(img_shape=shape, batch_input_shape=batch_shape))
        sample.gt_instances = InstanceData(bboxes=boxes[i],
                                           labels=torch.zeros(len(boxes[i]), dtype=torch.long))
        out.append(sample)
    return out


def features(n=3, seed=0):
    torch.manual_seed(seed)
    teacher = [torch.randn(n, *shape[1:]) for shape in LEVELS]
    student = [(t + torch.randn_like(t)).requires_grad_() for t in teacher]
    return student, teacher


def build(**kwargs):
    loss = MODELS.build(dict(type='FGDLoss', in_channels=8, teacher_channels=8, num_levels=2,
                             **dict(PARAMS, **kwargs)))
    # random GcBlock weights (the last conv is zero-initialised: the global term would be
    # the plain feature MSE)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in loss.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return loss


def gc_weights(block):
    return (block.conv_mask.weight, block.conv_mask.bias,
            *[t for i in (0, 1, 3) for t in (block.channel_add_conv[i].weight,
                                             block.channel_add_conv[i].bias)])


def official_total(loss, student, teacher, batch, swap):
    metas = [dict(img_shape=s.metainfo['img_shape']) for s in batch]
    gts = [s.gt_instances.bboxes for s in batch]
    return sum(official_fgd_level(s, t, gts, metas, gc_weights(loss.gc_student[i]),
                                  gc_weights(loss.gc_teacher[i]), PARAMS['temp'],
                                  PARAMS['alpha_fgd'], PARAMS['beta_fgd'], PARAMS['gamma_fgd'],
                                  PARAMS['lambda_fgd'], swap)
               for i, (s, t) in enumerate(zip(student, teacher)))


@pytest.mark.parametrize('swap_xy', [False, True], ids=['c03a6cf3', 'initial-04900add'])
def test_equals_the_official_arithmetic_and_its_gradients(swap_xy):
    """box_scale='img_shape' is the official code: image 0 is padded (80 x 100 in an
    80 x 112 batch), image 1 not; the value and the gradients of the student features and of
    every GcBlock weight equal the transcription's."""
    batch = samples([(80, 100), (80, 112), (64, 112)])
    student, teacher = features()
    loss = build(box_scale='img_shape', swap_xy=swap_xy)
    ours = loss(student, teacher, batch)
    params = list(loss.parameters())
    grads = torch.autograd.grad(ours, student + params)
    reference = official_total(loss, student, teacher, batch, swap_xy)
    ref_grads = torch.autograd.grad(reference, student + params)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-7)
    # (the context-mask conv's bias has a zero gradient: a softmax ignores a shift)
    assert all(float(g.abs().sum()) > 0 for g in grads[:len(student)])
    named = dict(zip([n for n, _ in loss.named_parameters()], grads[len(student):]))
    assert all(float(g.abs().sum()) > 0 for n, g in named.items() if 'conv_mask.bias' not in n)


def test_batch_input_shape_equals_official_on_unpadded_images():
    batch = samples([(80, 112)] * 3)
    student, teacher = features()
    loss = build()  # box_scale='batch_input_shape', swap_xy=False
    torch.testing.assert_close(loss(student, teacher, batch),
                               official_total(loss, student, teacher, batch, False), rtol=1e-5,
                               atol=0)


def test_the_orientation_matters_on_non_square_maps():
    batch = samples([(80, 112)] * 3)
    student, teacher = features()
    assert not torch.isclose(build()(student, teacher, batch),
                             build(swap_xy=True)(student, teacher, batch), rtol=1e-3)


def test_masks_by_hand():
    """A 32 x 48 input at stride 8 (a 4 x 6 level): the box (9, 2, 23, 15) covers rows
    floor(2/8)=0 .. ceil(15/8)=2 and columns floor(9/8)=1 .. ceil(23/8)=3, value 1/(3*3);
    the background is the other 24 - 9 = 15 cells, each 1/15. Scaled by an img_shape of
    32 x 24 (the image padded to 48 wide), the same box is stretched to columns 2..6 (clipped
    to 5), and its value is 1/(3*5)."""
    box = [torch.tensor([[9., 2., 23., 15.]])]
    fg, bg = box_masks(box, [(4 / 32, 6 / 48)], (4, 6))
    expected = torch.zeros(4, 6)
    expected[0:3, 1:4] = 1 / 9
    torch.testing.assert_close(fg[0], expected)
    torch.testing.assert_close(bg[0], (expected == 0).float() / 15)
    fg, _ = box_masks(box, [(4 / 32, 6 / 24)], (4, 6))
    expected = torch.zeros(4, 6)
    expected[0:3, 2:6] = 1 / 15
    torch.testing.assert_close(fg[0], expected)
    # swapped: the x range 1..3 on rows, the y range 0..2 on columns
    fg, _ = box_masks(box, [(4 / 32, 6 / 48)], (4, 6), swap_xy=True)
    expected = torch.zeros(4, 6)
    expected[1:4, 0:3] = 1 / 9
    torch.testing.assert_close(fg[0], expected)


def test_every_parameter_gets_a_gradient_and_the_teacher_none():
    """Both GcBlocks of every level are trained (the teacher's through the global term),
    also with their zero-initialised last conv; the teacher features get no gradient."""
    loss = MODELS.build(dict(type='FGDLoss', in_channels=8, teacher_channels=8, num_levels=2))
    student, teacher = features()
    teacher = [t.requires_grad_() for t in teacher]
    loss(student, teacher, samples([(80, 112)] * 3)).backward()
    assert all(p.grad is not None for p in loss.parameters())
    assert float(loss.gc_teacher[0].channel_add_conv[3].weight.grad.abs().sum()) > 0
    assert all(t.grad is None for t in teacher)


def test_float32_under_autocast_and_loss_weight():
    batch = samples([(80, 112)] * 3)
    student, teacher = features()
    loss = build()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        value = loss([s.bfloat16() for s in student], [t.bfloat16() for t in teacher], batch)
    assert value.dtype == torch.float32 and value.shape == ()
    doubled = build(loss_weight=2.0)(student, teacher, batch)
    torch.testing.assert_close(doubled, 2 * loss(student, teacher, batch))


def test_bad_input_is_named():
    student, teacher = features()
    loss = build()
    no_boxes = samples([(80, 112)] * 3)
    del no_boxes[1].gt_instances
    with pytest.raises(ValueError, match='sample 1 has no gt_instances.bboxes'):
        loss(student, teacher, no_boxes)
    with pytest.raises(ValueError, match='one data sample with ground-truth boxes per image'):
        loss(student, teacher, None)
    with pytest.raises(ValueError, match="no metainfo 'img_shape'"):
        build(box_scale='img_shape')(student, teacher, [
            DetDataSample(gt_instances=InstanceData(bboxes=torch.zeros(0, 4)))] * 3)
    with pytest.raises(ValueError, match='built for 2 levels'):
        loss(student[:1], teacher[:1], samples([(80, 112)] * 3))
    with pytest.raises(ValueError, match='connectors'):
        MODELS.build(dict(type='FGDLoss', in_channels=4, teacher_channels=8, num_levels=2))
    with pytest.raises(ValueError, match='teacher_channels and num_levels'):
        MODELS.build(dict(type='FGDLoss'))
    with pytest.raises(ValueError, match="box_scale='pad'"):
        build(box_scale='pad')
    with pytest.raises(ValueError, match='-1'):
        build(gamma_fgd=-1)


@pytest.mark.parametrize('source', ['backbone', 'roi_cls', 'dense_cls'])
def test_a_source_without_neck_levels_is_refused_at_build(source):
    """The distiller's wiring refuses FGD/MGD on another source, naming the loss, the source
    and the one that works."""
    for loss_type in ('FGDLoss', 'MGDLoss'):
        with pytest.raises(ValueError, match=rf"{loss_type} cannot read source='{source}'.*"
                                             r"set source='neck'"):
            build_losses({'loss_x': dict(type=loss_type, source=source)}, {'loss_x': source},
                         {'loss_x': None if source.startswith('roi') else [0, 1]}, {})
