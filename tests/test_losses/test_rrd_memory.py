import pytest
import torch

from kd_det.losses.rrd_memory import enqueue, gather_variable_rows, related_entries
from testing_utils import run_gloo_ranks


def _memory(size, dim):
    """Empty memory buffers: queue, queue_ids, queue_ptr, queue_len."""
    return (torch.zeros(size, dim), torch.full((size, ), -1, dtype=torch.long),
            torch.zeros((), dtype=torch.long), torch.zeros((), dtype=torch.long))


def _oldest_first(queue, queue_ptr, queue_len):
    """Queue entries from the oldest to the newest."""
    n, ptr = int(queue_len), int(queue_ptr)
    if n < queue.size(0):
        return queue[:n]
    return torch.roll(queue, -ptr, dims=0)


def test_wrap_around_with_variable_counts():
    memory = _memory(5, 3)
    queue, queue_ids, queue_ptr, queue_len = memory
    history, ids = [], []
    for n in (3, 0, 4, 1, 7, 2):  # partial fill, empty step, wrap, more than the queue
        keys = torch.randn(n, 3)
        key_ids = torch.arange(len(ids), len(ids) + n)
        slots = enqueue(*memory, keys, key_ids)
        history.extend(keys)
        ids.extend(key_ids.tolist())
        assert int(queue_len) == min(len(history), 5)
        assert torch.equal(_oldest_first(queue, queue_ptr, queue_len), torch.stack(history[-5:]))
        assert _oldest_first(queue_ids, queue_ptr, queue_len).tolist() == ids[-5:]
        kept = slots >= 0
        assert kept.sum() == min(n, 5) and kept[n - min(n, 5):].all()
        assert torch.equal(queue[slots[kept]], keys[kept])
        assert torch.equal(queue_ids[slots[kept]], key_ids[kept])


def test_enqueue_casts_keys_to_the_queue_dtype():
    memory = _memory(4, 2)
    slots = enqueue(*memory, torch.ones(2, 2, dtype=torch.bfloat16), torch.tensor([3, 4]))
    assert slots.tolist() == [0, 1] and memory[0].dtype == torch.float32
    assert memory[0][:2].tolist() == [[1., 1.]] * 2


@pytest.mark.parametrize('exclude', ['none', 'self', 'image'])
def test_related_entries(exclude):
    memory_ids = torch.tensor([7, 8, 7, 9])
    image_ids = torch.tensor([7, 9, 8])
    own_slots = torch.tensor([2, 3, -1])  # the last row's embedding did not fit
    valid = related_entries(memory_ids, image_ids, own_slots, exclude)
    if exclude == 'none':
        assert valid is None
    elif exclude == 'self':
        assert valid.tolist() == [[True, True, False, True], [True, True, True, False],
                                  [True] * 4]
    else:
        assert valid.tolist() == [[False, True, False, True], [True, True, True, False],
                                  [True, False, True, True]]


def test_gather_is_identity_when_not_distributed():
    x = torch.randn(3, 2)
    rows, offset = gather_variable_rows(x)
    assert rows is x and offset == 0


def _gather_and_enqueue(rank):
    rows, offset = gather_variable_rows(torch.full((2 * rank + 1, 3), float(rank + 1)))
    empty, empty_offset = gather_variable_rows(torch.zeros([(3, 2), (0, 2)][rank]))
    memory = _memory(6, 3)
    ids, _ = gather_variable_rows(torch.full((2 * rank + 1, ), 5 + rank))
    slots = enqueue(*memory, rows, ids)[offset:offset + 2 * rank + 1]
    return (rows.tolist(), offset, tuple(empty.shape), empty_offset, memory[0].tolist(),
            memory[1].tolist(), slots.tolist())


def test_ddp_gather_variable_rows_fills_the_same_memory_on_all_ranks():
    results = run_gloo_ranks(_gather_and_enqueue)
    assert results[0][0] == results[1][0] == [[1., 1., 1.]] + [[2., 2., 2.]] * 3
    assert (results[0][1], results[1][1]) == (0, 1)  # where each rank's rows start
    # rank 1 gives no rows: it still takes part and gets rank 0's
    assert results[0][2] == results[1][2] == (3, 2) and (results[0][3], results[1][3]) == (0, 3)
    assert results[0][4] == results[1][4] == [[1., 1., 1.]] + [[2., 2., 2.]] * 3 + [[0.] * 3] * 2
    assert results[0][5] == results[1][5] == [5, 6, 6, 6, -1, -1]
    assert (results[0][6], results[1][6]) == ([0], [1, 2, 3])  # each rank's own slots
