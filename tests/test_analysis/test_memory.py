import pytest
import torch

from kd_det.analysis.memory import PeakMemory

MB = 10**6
BIG = 200 * MB


@pytest.mark.parametrize('device', ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason='needs CUDA'))])
def test_peak_growth_follows_the_tensors_of_each_phase(device):
    meter = PeakMemory(device)

    def allocate():  # writes the pages (resident on CPU), frees them at the end
        x = torch.ones(BIG // 4, device=device)
        assert x[-1].item() == 1

    kept = []
    growth = dict(big=meter.measure(allocate), idle=meter.measure(lambda: None),
                  again=meter.measure(allocate),
                  kept=meter.measure(lambda: kept.append(torch.ones(BIG // 4, device=device))),
                  after=meter.measure(lambda: None))
    # the peak counts though the tensor is freed before the phase ends; freed memory goes
    # back to the system, so the same allocation in a later phase is growth again
    assert growth['big'] >= 150 * MB and growth['again'] >= 150 * MB
    assert growth['kept'] >= 150 * MB
    # a phase that allocates nothing grows by ~0, after a freed or a kept tensor alike
    assert growth['idle'] < 20 * MB and growth['after'] < 20 * MB
