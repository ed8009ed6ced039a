import math
import multiprocessing
import socket

import pytest
import torch
import torch.nn.functional as F
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import HorizontalBoxes
from mmengine.structures import InstanceData

from kd_det.losses.rrd import RRDLoss, gather_variable_rows, map_boxes_to_levels


def _feats(n, channels, sizes, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, channels, s, s, generator=g).requires_grad_(requires_grad)
            for s in sizes]


def _samples(boxes_per_image):
    samples = []
    for boxes in boxes_per_image:
        sample = DetDataSample()
        sample.gt_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32)
                                           .reshape(-1, 4))
        samples.append(sample)
    return samples


def _reference_loss(s_emb, t_emb, memory, tau_s, tau_t):
    """-(1/B) sum_b sum_k p_t[b, k] log p_s[b, k], written out term by term (float64)."""
    total = 0.
    for b in range(s_emb.shape[0]):
        t_logits = [float(t_emb[b] @ q) / tau_t for q in memory]
        s_logits = [float(s_emb[b] @ q) / tau_s for q in memory]
        t_max, s_max = max(t_logits), max(s_logits)
        t_norm = sum(math.exp(x - t_max) for x in t_logits)
        s_lse = s_max + math.log(sum(math.exp(x - s_max) for x in s_logits))
        for tl, sl in zip(t_logits, s_logits):
            total -= math.exp(tl - t_max) / t_norm * (sl - s_lse)
    return total / s_emb.shape[0]


def _oldest_first(loss):
    """Queue content from the oldest to the newest entry."""
    n, ptr = int(loss.queue_len), int(loss.queue_ptr)
    if n < loss.queue.size(0):
        return loss.queue[:n]
    return torch.roll(loss.queue, -ptr, dims=0)


def test_matches_reference_formula_and_queue_order():
    torch.manual_seed(0)
    loss = RRDLoss(in_channels=4, teacher_channels=6, num_levels=2, embed_dim=5,
                   queue_size=8, loss_weight=2.0)
    history = []
    for step in range(4):  # 4 x 3 embeddings through a queue of 8: wraps around
        s = _feats(3, 4, (4, 2), seed=2 * step)
        t = _feats(3, 6, (4, 2), seed=2 * step + 1)
        out = loss(s, t)
        with torch.no_grad():
            s_vec = torch.cat([x.mean(dim=(2, 3)) for x in s], 1).double()
            t_vec = torch.cat([x.mean(dim=(2, 3)) for x in t], 1).double()
            s_emb = F.normalize(s_vec @ loss.student_head.weight.double().t() +
                                loss.student_head.bias.double(), dim=1)
            t_emb = F.normalize(t_vec @ loss.teacher_head.weight.double().t() +
                                loss.teacher_head.bias.double(), dim=1)
        history.extend(t_emb)
        memory = history[-8:]  # enqueued before the similarities
        expected = 2.0 * _reference_loss(s_emb, t_emb, memory, 0.1, 0.02)
        assert out.item() == pytest.approx(expected, rel=1e-4, abs=1e-5)
        assert torch.allclose(_oldest_first(loss).double(), torch.stack(memory), atol=1e-6)
    assert int(loss.queue_ptr) == 12 % 8 and int(loss.queue_len) == 8


def test_wrap_around_with_variable_counts():
    loss = RRDLoss(in_channels=2, teacher_channels=2, num_levels=1, embed_dim=3,
                   queue_size=5)
    history = []
    for n in (3, 0, 4, 1, 7, 2):  # partial fill, empty step, wrap, more than the queue
        keys = torch.randn(n, 3)
        loss._enqueue(keys)
        history.extend(keys)
        assert int(loss.queue_len) == min(len(history), 5)
        assert torch.equal(_oldest_first(loss), torch.stack(history[-5:]))


def test_state_dict_round_trip_restores_queue():
    torch.manual_seed(0)
    kwargs = dict(in_channels=4, teacher_channels=4, num_levels=2, queue_size=16)
    loss = RRDLoss(**kwargs)
    for step in range(3):
        loss(_feats(4, 4, (4, 2), seed=step), _feats(4, 4, (4, 2), seed=10 + step))
    state = loss.state_dict()
    assert {'queue', 'queue_ptr', 'queue_len', 'teacher_head.weight'} <= set(state)
    torch.manual_seed(1)
    restored = RRDLoss(**kwargs)
    restored.load_state_dict(state)
    assert torch.equal(restored.queue, loss.queue)
    assert int(restored.queue_ptr) == int(loss.queue_ptr) == 12
    s, t = _feats(4, 4, (4, 2), seed=20), _feats(4, 4, (4, 2), seed=21)
    assert torch.equal(restored(s, t), loss(s, t))
    assert torch.equal(restored.queue, loss.queue)


@pytest.mark.parametrize('mode', ['image', 'instance'])
def test_gradients_reach_student_and_head_not_teacher(mode):
    torch.manual_seed(0)
    loss = RRDLoss(in_channels=4, teacher_channels=4, num_levels=2, mode=mode,
                   strides=(4, 8), queue_size=32)
    s = _feats(2, 4, (32, 16), requires_grad=True, seed=0)
    t = _feats(2, 4, (32, 16), requires_grad=True, seed=1)
    samples = _samples([[[2., 2., 30., 40.], [10., 5., 60., 60.]],
                        [[0., 0., 20., 10.], [0., 0., 120., 120.]]])  # last: level 1
    loss(s, t, samples).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    assert all(x.grad is None for x in t)
    assert loss.student_head.weight.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss.teacher_head.parameters())
    assert loss.teacher_head.weight.grad is None


def test_float32_under_bf16_autocast():
    torch.manual_seed(0)
    loss = RRDLoss(in_channels=4, teacher_channels=4, num_levels=2, queue_size=8)
    s = [x.bfloat16() for x in _feats(2, 4, (4, 2), seed=0)]
    t = [x.bfloat16() for x in _feats(2, 4, (4, 2), seed=1)]
    reference = RRDLoss(in_channels=4, teacher_channels=4, num_levels=2, queue_size=8)
    reference.load_state_dict(loss.state_dict())
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = loss(s, t)
    assert out.dtype == torch.float32 and loss.queue.dtype == torch.float32
    expected = reference([x.float() for x in s], [x.float() for x in t])
    assert torch.allclose(out, expected, atol=1e-6)


def test_level_mapping_follows_fpn():
    sides = torch.tensor([16., 111., 112., 224., 448., 2000.])
    boxes = torch.stack([torch.zeros(6), torch.zeros(6), sides, sides], dim=1)
    assert map_boxes_to_levels(boxes, 5, 56.).tolist() == [0, 0, 1, 2, 3, 4]
    assert map_boxes_to_levels(boxes, 4, 56.).tolist() == [0, 0, 1, 2, 3, 3]


def test_instance_vectors_pool_the_assigned_level_of_the_right_image():
    loss = RRDLoss(in_channels=2, teacher_channels=2, num_levels=3, mode='instance',
                   strides=(4, 8, 16))
    # Level l of image i is the constant 10 * l + i: a box's vector tells both.
    feats = [torch.stack([torch.full((2, 64 // 2**lvl, 64 // 2**lvl), 10. * lvl + i)
                          for i in range(3)]) for lvl in range(3)]
    samples = _samples([[[0., 0., 200., 200.], [8., 8., 24., 24.]], [],
                        [[4., 4., 124., 124.], [0., 0., 250., 250.]]])
    # The pipeline's box type (HorizontalBoxes) works as well as a tensor.
    samples[2].gt_instances.bboxes = HorizontalBoxes(samples[2].gt_instances.bboxes)
    student, teacher = loss._instance_vectors(feats, feats, samples)
    # Levels 1, 0 of image 0, then levels 1, 2 of image 2 (image 1 has no boxes).
    expected = torch.tensor([10., 0., 12., 22.])
    assert torch.allclose(student[:, 0], expected) and torch.allclose(teacher, student)


def test_instance_mode_without_boxes():
    loss = RRDLoss(in_channels=4, teacher_channels=4, num_levels=2, mode='instance',
                   strides=(4, 8), queue_size=8)
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
    with pytest.raises(ValueError, match='levels'):
        RRDLoss(in_channels=4, teacher_channels=4, num_levels=2)(
            _feats(1, 4, (4, )), _feats(1, 4, (4, )))
    with pytest.raises(ValueError, match='data sample'):
        RRDLoss(in_channels=4, teacher_channels=4, num_levels=1, mode='instance',
                strides=(4, ))(_feats(1, 4, (4, )), _feats(1, 4, (4, )))


def _ddp_worker(rank, port, results):
    torch.set_num_threads(1)  # the parent's OpenMP pool does not survive fork
    torch.distributed.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}',
                                         rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # same heads on both ranks
        loss = RRDLoss(in_channels=4, teacher_channels=4, num_levels=2, mode='instance',
                       strides=(4, 8), queue_size=8)
        rows = gather_variable_rows(torch.full((2 * rank, 3), float(rank + 1)))
        boxes = [[[0., 0., 20., 20.], [4., 4., 40., 30.], [8., 0., 60., 60.]], []][rank]
        loss(_feats(1, 4, (16, 8), seed=rank), _feats(1, 4, (16, 8), seed=10 + rank),
             _samples([boxes]))
        results[rank] = (rows.tolist(), loss.queue.tolist(), int(loss.queue_len))
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_queue_gathers_all_ranks():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    ctx = multiprocessing.get_context('fork')
    with ctx.Manager() as manager:
        shared = manager.dict()
        procs = [ctx.Process(target=_ddp_worker, args=(r, port, shared)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        for p in procs:
            if p.is_alive():
                p.terminate()
        results = dict(shared)
    assert all(p.exitcode == 0 for p in procs)
    assert results[0][0] == results[1][0] == [[2., 2., 2.], [2., 2., 2.]]
    # Rank 0 had 3 boxes, rank 1 none: both queues hold the same 3 embeddings.
    assert results[0][1] == results[1][1] and results[0][2] == results[1][2] == 3
