import math

import pytest
import torch
import torch.nn.functional as F
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import HorizontalBoxes
from mmengine.structures import InstanceData

from kd_det.losses.rrd import RRDLoss, relational_distribution_loss, teacher_target_statistics
from testing_utils import run_gloo_ranks

OFFICIAL = dict(exclude='none', divergence='cross_entropy', teacher_tau=0.02)


def _feats(n, channels, sizes, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, channels, s, s, generator=g).requires_grad_(requires_grad)
            for s in sizes]


def _samples(boxes_per_image, img_ids=None):
    samples = []
    for i, boxes in enumerate(boxes_per_image):
        sample = DetDataSample(metainfo=dict(img_id=i if img_ids is None else img_ids[i]))
        sample.gt_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32)
                                           .reshape(-1, 4))
        samples.append(sample)
    return samples


def _reference_loss(s_emb, t_emb, memory, tau_s, tau_t, related=None, kl=False):
    """Mean over the rows with an entry to relate to of -sum_k p_t[b, k] log p_s[b, k]
    (minus the teacher entropy if ``kl``), the softmaxes running over the entries k with
    ``related(b, k)``; written out term by term (float64)."""
    total, rows = 0., 0
    for b in range(s_emb.shape[0]):
        entries = [q for k, q in enumerate(memory) if related is None or related(b, k)]
        if not entries:
            continue
        rows += 1
        t_logits = [float(t_emb[b] @ q) / tau_t for q in entries]
        s_logits = [float(s_emb[b] @ q) / tau_s for q in entries]
        t_max, s_max = max(t_logits), max(s_logits)
        t_lse = t_max + math.log(sum(math.exp(x - t_max) for x in t_logits))
        s_lse = s_max + math.log(sum(math.exp(x - s_max) for x in s_logits))
        for tl, sl in zip(t_logits, s_logits):
            total -= math.exp(tl - t_lse) * ((sl - s_lse) - (tl - t_lse if kl else 0))
    return total / max(rows, 1)


def _oldest_first(loss, buffer=None):
    """Queue (or ``buffer``, e.g. ``queue_ids``) from the oldest to the newest entry."""
    buffer = loss.queue if buffer is None else buffer
    n, ptr = int(loss.queue_len), int(loss.queue_ptr)
    if n < buffer.size(0):
        return buffer[:n]
    return torch.roll(buffer, -ptr, dims=0)


def _embeddings(loss, s, t):
    with torch.no_grad():
        s_vec = torch.cat([x.mean(dim=(2, 3)) for x in s], 1).double()
        t_vec = torch.cat([x.mean(dim=(2, 3)) for x in t], 1).double()
        s_emb = F.normalize(s_vec @ loss.student_head.weight.double().t() +
                            loss.student_head.bias.double(), dim=1)
        t_emb = F.normalize(t_vec @ loss.teacher_head.weight.double().t() +
                            loss.teacher_head.bias.double(), dim=1)
    return s_emb, t_emb


def test_official_options_match_reference_formula_and_queue_order():
    torch.manual_seed(0)
    loss = RRDLoss(mode='image', in_channels=4, teacher_channels=6, num_levels=2, embed_dim=5,
                   queue_size=8, loss_weight=2.0, **OFFICIAL)
    history = []
    for step in range(4):  # 4 x 3 embeddings through a queue of 8: wraps around
        s = _feats(3, 4, (4, 2), seed=2 * step)
        t = _feats(3, 6, (4, 2), seed=2 * step + 1)
        out = loss(s, t)
        s_emb, t_emb = _embeddings(loss, s, t)
        history.extend(t_emb)
        memory = history[-8:]  # enqueued before the similarities
        expected = 2.0 * _reference_loss(s_emb, t_emb, memory, 0.1, 0.02)
        assert out.item() == pytest.approx(expected, rel=1e-4, abs=1e-5)
        assert torch.allclose(_oldest_first(loss).double(), torch.stack(memory), atol=1e-6)
    assert int(loss.queue_ptr) == 12 % 8 and int(loss.queue_len) == 8


@pytest.mark.parametrize('exclude', ['self', 'image'])
def test_exclusion_matches_reference(exclude):
    """Each row relates to the memory less its own entry ('self') or less every entry of
    its image, this step's and earlier steps' ('image'); KL = cross-entropy - entropy."""
    torch.manual_seed(0)
    loss = RRDLoss(mode='image', in_channels=4, teacher_channels=6, num_levels=2, embed_dim=5,
                   queue_size=8, teacher_tau=0.5, exclude=exclude)
    history, ids = [], []
    for step, step_ids in enumerate([[0, 1, 2], [3, 0, 4], [1, 5, 6], [7, 0, 2]]):
        s = _feats(3, 4, (4, 2), seed=2 * step)
        t = _feats(3, 6, (4, 2), seed=2 * step + 1)
        out = loss(s, t, _samples([[]] * 3, step_ids))
        s_emb, t_emb = _embeddings(loss, s, t)
        history.extend(t_emb)
        ids.extend(step_ids)
        memory, memory_ids = history[-8:], ids[-8:]
        first = len(history[-8:]) - 3  # this step's entries in ``memory``

        def related(b, k):
            if exclude == 'self':
                return k != first + b
            return memory_ids[k] != step_ids[b]

        expected = _reference_loss(s_emb, t_emb, memory, 0.1, 0.5, related, kl=True)
        assert out.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
        assert _oldest_first(loss, loss.queue_ids).tolist() == memory_ids


def test_kl_is_cross_entropy_less_teacher_entropy_with_the_same_gradient():
    g = torch.Generator().manual_seed(0)
    s_emb = F.normalize(torch.randn(4, 6, generator=g), dim=1).requires_grad_()
    t_emb = F.normalize(torch.randn(4, 6, generator=g), dim=1)
    memory = F.normalize(torch.randn(9, 6, generator=g), dim=1)
    valid = torch.rand(4, 9, generator=g) > 0.3
    valid[0] = False  # a row without entries adds nothing
    ce = relational_distribution_loss(s_emb, t_emb, memory, 0.1, 0.05, valid, 'cross_entropy')
    (grad_ce, ) = torch.autograd.grad(ce, s_emb)
    kl = relational_distribution_loss(s_emb, t_emb, memory, 0.1, 0.05, valid, 'kl')
    (grad_kl, ) = torch.autograd.grad(kl, s_emb)
    entropy = teacher_target_statistics(t_emb, memory, 0.05, valid)['entropy']
    assert kl.item() == pytest.approx(ce.item() - entropy, abs=1e-5)
    assert torch.allclose(grad_ce, grad_kl, atol=1e-6) and grad_ce[0].abs().max() == 0
    # the KL of the teacher with itself is 0
    same = relational_distribution_loss(t_emb, t_emb, memory, 0.05, 0.05, valid)
    assert abs(same.item()) < 1e-5


def _clustered_images(step, num_images=4, clusters=4, channels=8, noise=1.0):
    """Per-image features around one of ``clusters`` centres: images of a cluster are
    similar, not identical (a structured input like the demo's boxes)."""
    g = torch.Generator().manual_seed(100 + step)
    centres = torch.randn(clusters, channels, generator=torch.Generator().manual_seed(0))
    vectors = centres[torch.arange(num_images) % clusters] + \
        noise * torch.randn(num_images, channels, generator=g)
    return [vectors[:, :, None, None].expand(-1, -1, 2, 2).contiguous()]


def _fill(loss, steps=4):
    """Relate ``steps`` steps of 4 clustered images (ids 4 * step + i) to the memory."""
    for step in range(steps):
        loss.measure_teacher_target(_clustered_images(step),
                                    _samples([[]] * 4, [4 * step + i for i in range(4)]))


@pytest.mark.parametrize('exclude', ['none', 'self', 'image'])
def test_exclusion_spreads_the_teacher_target(exclude):
    """Official ('none'): the target is (almost) one-hot on each embedding's own entry;
    leaving it out spreads the target over similar entries of other images."""
    torch.manual_seed(0)
    loss = RRDLoss(mode='image', in_channels=8, teacher_channels=8, num_levels=1, embed_dim=8,
                   queue_size=64, teacher_tau=0.05, exclude=exclude)
    _fill(loss)
    stats = loss.measure_teacher_target(_clustered_images(4),
                                        _samples([[]] * 4, [16 + i for i in range(4)]))
    assert stats['rows'] == 4
    if exclude == 'none':
        assert stats['self_weight'] > 0.95 and stats['entropy'] < 0.15
    else:
        assert stats['self_weight'] == 0 and stats['entropy'] > 0.5


@pytest.mark.parametrize('exclude', ['none', 'self', 'image'])
def test_image_exclusion_leaves_out_copies_from_earlier_steps(exclude):
    """An image seen again (a later epoch): its identical earlier copy takes the target
    unless whole images are excluded."""
    torch.manual_seed(0)
    loss = RRDLoss(mode='image', in_channels=8, teacher_channels=8, num_levels=1, embed_dim=8,
                   queue_size=64, teacher_tau=0.02, exclude=exclude)
    _fill(loss)  # step 0 wrote images 0..3 into slots 0..3
    teacher_emb, memory, valid, _ = loss._teacher_side(
        loss._vectors(_clustered_images(0), None), torch.arange(4))
    on_copy = teacher_target_statistics(teacher_emb, memory, 0.02, valid,
                                        own_slots=torch.arange(4))['self_weight']
    expected = dict(none=0.5, self=1., image=0.)[exclude]  # 'none': shared with itself
    assert on_copy == pytest.approx(expected, abs=0.02)


def test_string_image_ids_exclude_the_same_image_in_later_steps():
    """Ids such as 'street_cam0_a' (custom and XML datasets): an image seen again relates
    neither to its own entries nor to its earlier copies, and to every other image."""
    torch.manual_seed(0)
    loss = RRDLoss(mode='image', in_channels=8, teacher_channels=8, num_levels=1, embed_dim=8,
                   queue_size=64, exclude='image')
    names = ['street_cam0_a', 'street_cam0_b', 'cam1-0007', 'x']
    student = [f.requires_grad_() for f in _clustered_images(1)]
    loss(student, _clustered_images(0), _samples([[]] * 4, names))  # step 1
    stats = loss.measure_teacher_target(_clustered_images(0), _samples([[]] * 4, names))
    target = stats['target']  # (4 images, 8 entries: step 1's, then this step's)
    for row, name in enumerate(names):
        same = [k for k in range(8) if names[k % 4] == name]
        assert target[row, same].sum() == 0 and target[row].sum() == pytest.approx(1.)
        assert (target[row, [k for k in range(8) if k not in same]] > 0).all()


def test_teacher_target_statistics():
    memory = torch.eye(3)
    stats = teacher_target_statistics(memory[:2], memory, 1e-3, own_slots=torch.tensor([0, -1]))
    assert stats == pytest.approx(dict(rows=2, entropy=0., max_weight=1., self_weight=0.5))
    uniform = teacher_target_statistics(torch.zeros(1, 3), memory, 1.0)
    assert uniform['entropy'] == pytest.approx(math.log(3))
    valid = torch.tensor([[False, True, True], [False, False, False]])
    masked = teacher_target_statistics(torch.zeros(2, 3), memory, 1.0, valid)
    assert masked['rows'] == 1 and masked['entropy'] == pytest.approx(math.log(2))


def test_first_step_without_other_images_gives_attached_zero():
    loss = RRDLoss(mode='image', in_channels=4, teacher_channels=4, num_levels=2, queue_size=8)
    s = _feats(2, 4, (4, 2), requires_grad=True, seed=0)
    out = loss(s, _feats(2, 4, (4, 2), seed=1), _samples([[], []], [7, 7]))
    out.backward()
    assert out.item() == 0 and int(loss.queue_len) == 2
    assert s[0].grad is not None and loss.student_head.weight.grad is not None
    out = loss(s, _feats(2, 4, (4, 2), seed=1), _samples([[], []], [8, 7]))
    assert out.item() > 0  # image 8 relates to the entries of image 7


def test_state_dict_round_trip_restores_queue():
    torch.manual_seed(0)
    kwargs = dict(mode='image', in_channels=4, teacher_channels=4, num_levels=2, queue_size=16)
    loss = RRDLoss(**kwargs)
    for step in range(3):
        loss(_feats(4, 4, (4, 2), seed=step), _feats(4, 4, (4, 2), seed=10 + step),
             _samples([[]] * 4, [4 * step + i for i in range(4)]))
    state = loss.state_dict()
    assert {'queue', 'queue_ids', 'queue_ptr', 'queue_len', 'teacher_head.weight'} <= set(state)
    torch.manual_seed(1)
    restored = RRDLoss(**kwargs)
    restored.load_state_dict(state)
    assert torch.equal(restored.queue, loss.queue)
    assert torch.equal(restored.queue_ids, loss.queue_ids)
    assert int(restored.queue_ptr) == int(loss.queue_ptr) == 12
    s, t = _feats(4, 4, (4, 2), seed=20), _feats(4, 4, (4, 2), seed=21)
    samples = _samples([[]] * 4, [0, 20, 21, 22])
    assert torch.equal(restored(s, t, samples), loss(s, t, samples))
    assert torch.equal(restored.queue, loss.queue)


@pytest.mark.parametrize('mode', ['image', 'instance'])
@pytest.mark.parametrize('exclude', ['none', 'image'])
def test_gradients_reach_student_and_head_not_teacher(mode, exclude):
    torch.manual_seed(0)
    loss = RRDLoss(in_channels=4, teacher_channels=4, num_levels=2, mode=mode,
                   strides=(4, 8), finest_scale=56., queue_size=32, exclude=exclude)
    s = _feats(2, 4, (32, 16), requires_grad=True, seed=0)
    t = _feats(2, 4, (32, 16), requires_grad=True, seed=1)
    samples = _samples([[[2., 2., 30., 40.], [10., 5., 60., 60.]],
                        [[0., 0., 20., 10.], [0., 0., 120., 120.]]])  # last: level 1
    # a first step puts other images in the memory: in mode 'image' two images alone
    # relate each to the other only (a one-entry softmax, no gradient)
    with torch.no_grad():
        loss(s, t, _samples([[[0., 0., 50., 50.]]] * 2, [10, 11]))
    loss(s, t, samples).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    assert all(x.grad is None for x in t)
    assert loss.student_head.weight.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss.teacher_head.parameters())
    assert loss.teacher_head.weight.grad is None


def test_float32_under_bf16_autocast():
    torch.manual_seed(0)
    loss = RRDLoss(mode='image', in_channels=4, teacher_channels=4, num_levels=2, queue_size=8)
    s = [x.bfloat16() for x in _feats(2, 4, (4, 2), seed=0)]
    t = [x.bfloat16() for x in _feats(2, 4, (4, 2), seed=1)]
    reference = RRDLoss(mode='image', in_channels=4, teacher_channels=4, num_levels=2, queue_size=8)
    reference.load_state_dict(loss.state_dict())
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = loss(s, t, _samples([[], []]))
    assert out.dtype == torch.float32 and loss.queue.dtype == torch.float32
    expected = reference([x.float() for x in s], [x.float() for x in t], _samples([[], []]))
    assert torch.allclose(out, expected, atol=1e-6)


def test_instance_vectors_pool_the_assigned_level_of_the_right_image():
    loss = RRDLoss(in_channels=2, teacher_channels=2, num_levels=3, mode='instance',
                   strides=(4, 8, 16), finest_scale=56.)
    # Level l of image i is the constant 10 * l + i: a box's vector tells both.
    feats = [torch.stack([torch.full((2, 64 // 2**lvl, 64 // 2**lvl), 10. * lvl + i)
                          for i in range(3)]) for lvl in range(3)]
    samples = _samples([[[0., 0., 200., 200.], [8., 8., 24., 24.]], [],
                        [[4., 4., 124., 124.], [0., 0., 250., 250.]]])
    # The pipeline's box type (HorizontalBoxes) works as well as a tensor.
    samples[2].gt_instances.bboxes = HorizontalBoxes(samples[2].gt_instances.bboxes)
    selection, image_index = loss._selection(feats, samples, None)
    vectors = loss._vectors(feats, selection)
    # Levels 1, 0 of image 0, then levels 1, 2 of image 2 (image 1 has no boxes).
    assert torch.allclose(vectors[:, 0], torch.tensor([10., 0., 12., 22.]))
    assert image_index.tolist() == [0, 0, 2, 2]


def test_instance_mode_without_boxes():
    loss = RRDLoss(in_channels=4, teacher_channels=4, num_levels=2, mode='instance',
                   strides=(4, 8), finest_scale=56., queue_size=8, **OFFICIAL)
    s = _feats(2, 4, (16, 8), requires_grad=True, seed=0)
    t = _feats(2, 4, (16, 8), seed=1)
    out = loss(s, t, _samples([[], []]))
    out.backward()
    assert out.item() == 0 and int(loss.queue_len) == 0
    assert s[0].grad is not None and loss.student_head.weight.grad is not None
    # One image with a box, one without: only the box is related and enqueued.
    out = loss(s, t, _samples([[], [[1., 1., 30., 30.]]]))
    assert out.item() == pytest.approx(0, abs=1e-7)  # a single memory entry
    assert int(loss.queue_len) == 1
    out = loss(s, t, _samples([[[2., 2., 40., 30.]], []]))
    assert torch.isfinite(out) and out.item() > 0 and int(loss.queue_len) == 2


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match='-1'):
        RRDLoss(loss_weight=-1)
    with pytest.raises(ValueError, match="'others'"):
        RRDLoss(exclude='others')
    with pytest.raises(ValueError, match="'mse'"):
        RRDLoss(divergence='mse')
    with pytest.raises(ValueError, match='needs strides and finest_scale: the distiller'):
        RRDLoss(in_channels=4, teacher_channels=4, num_levels=1, mode='instance',
                strides=(4, ))(_feats(1, 4, (4, )), _feats(1, 4, (4, )), _samples([[]]))
    with pytest.raises(ValueError, match='needs strides and finest_scale'):
        RRDLoss(in_channels=4, teacher_channels=4, num_levels=1, mode='instance',
                finest_scale=56.)(_feats(1, 4, (4, )), _feats(1, 4, (4, )), _samples([[]]))
    with pytest.raises(ValueError, match=r'3 strides \(4, 8, 16\) for 2 levels'):
        RRDLoss(num_levels=2, strides=(4, 8, 16), finest_scale=56.)
    with pytest.raises(ValueError, match='levels'):
        RRDLoss(mode='image', in_channels=4, teacher_channels=4, num_levels=2)(
            _feats(1, 4, (4, )), _feats(1, 4, (4, )))
    with pytest.raises(ValueError, match='data sample'):
        RRDLoss(in_channels=4, teacher_channels=4, num_levels=1, mode='instance',
                strides=(4, ), finest_scale=56.)(_feats(1, 4, (4, )), _feats(1, 4, (4, )))
    no_id = [DetDataSample()]
    with pytest.raises(ValueError, match='img_id'):
        RRDLoss(mode='image', in_channels=4, teacher_channels=4, num_levels=1)(
            _feats(1, 4, (4, )), _feats(1, 4, (4, )), no_id)
    # without image ids, the other exclusions work
    out = RRDLoss(mode='image', in_channels=4, teacher_channels=4, num_levels=1, exclude='self')(
        _feats(2, 4, (4, )), _feats(2, 4, (4, )))
    assert torch.isfinite(out)


def _rrd_step_queue(rank):
    torch.manual_seed(0)  # same heads on both ranks
    loss = RRDLoss(in_channels=4, teacher_channels=4, num_levels=2, mode='instance',
                   strides=(4, 8), finest_scale=56., queue_size=8)
    boxes = [[[0., 0., 20., 20.], [4., 4., 40., 30.], [8., 0., 60., 60.]], []][rank]
    loss(_feats(1, 4, (16, 8), seed=rank), _feats(1, 4, (16, 8), seed=10 + rank),
         _samples([boxes], [5 + rank]))
    return loss.queue.tolist(), loss.queue_ids.tolist(), int(loss.queue_len)


def test_ddp_queue_gathers_all_ranks():
    results = run_gloo_ranks(_rrd_step_queue)
    # Rank 0 had 3 boxes, rank 1 none: both queues hold the same 3 embeddings.
    assert results[0][0] == results[1][0] and results[0][2] == results[1][2] == 3
    assert results[0][1] == results[1][1] == [5, 5, 5] + [-1] * 5
