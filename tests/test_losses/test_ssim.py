"""SSIMLoss against kornia ('same') and pytorch_msssim ('valid'), plus its properties."""
import subprocess
import sys
import time
import warnings

import kornia
import numpy as np
import pytest
import pytorch_msssim
import torch
import torch.nn.functional as F
import torch.utils.cpp_extension

from kd_det.losses import gaussian_blur as blur_module
from kd_det.losses import ssim as ssim_module
from kd_det.losses.gaussian_blur import gaussian_blur, gaussian_window
from kd_det.losses.ssim import (SSIMLoss, _MeanSSIM, kernel_build_lock, minmax_normalize,
                                ssim_loss, ssim_map)
from testing_utils import REPO


@pytest.fixture(params=['kernel', 'torch'])
def ssim_impl(request, monkeypatch):
    """float32 on CPU through the fused C++ kernel (which must build) or through PyTorch."""
    if request.param == 'torch':
        monkeypatch.setattr(ssim_module, '_cpu_kernel', lambda: None)
    else:
        assert ssim_module._cpu_kernel() is not None, 'the fused SSIM CPU kernel did not build'
    return request.param


@pytest.fixture
def torch_impl(monkeypatch):
    monkeypatch.setattr(ssim_module, '_cpu_kernel', lambda: None)


@pytest.fixture
def small_blur_blocks(monkeypatch):
    """Blur every side in blocks of 3 outputs (CPU sides of 64 or more are blurred in blocks of
    16): blocks narrower than the window, at both edges and in the middle."""
    blur_module.blur_blocks.cache_clear()
    monkeypatch.setattr(blur_module, '_BLOCK', 3)
    monkeypatch.setattr(blur_module, '_BLOCKED_FROM', 1)
    yield
    blur_module.blur_blocks.cache_clear()


def structured_pair(n, c, h, w):
    """Ramps, a checkerboard, a blob and a constant patch in [0, 1], and a distorted copy."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing='ij')
    maps = [xx, yy, ((torch.arange(h)[:, None] // 2 + torch.arange(w) // 2) % 2).float(),
            torch.exp(-((xx - 0.4)**2 + (yy - 0.6)**2) / 0.05)]
    x = torch.stack([maps[i % len(maps)] for i in range(n * c)]).reshape(n, c, h, w).clone()
    x[..., : h // 3, : w // 3] = 0.5
    y = (0.8 * x + 0.1 + 0.1 * torch.sin(7 * xx + 3 * yy)).clamp(0, 1)
    return x, y


def random_pair(n, c, h, w):
    x = torch.rand(n, c, h, w)
    return x, (x + 0.3 * torch.rand(n, c, h, w)).clamp(0, 1)


# The map comparisons run in float64: on the structured maps (a 0/1 checkerboard next to a
# constant patch) sigma^2 = E[x^2] - mu^2 cancels, and float32 kornia itself is 2e-4 off.


PAIRS = [random_pair, structured_pair]


@pytest.mark.parametrize('make_pair', PAIRS)
@pytest.mark.parametrize('shape', [(2, 3, 32, 40), (1, 4, 13, 21), (2, 2, 6, 9), (1, 2, 67, 100)])
def test_same_matches_kornia(ssim_impl, make_pair, shape):
    x, y = make_pair(*shape)
    expected = kornia.metrics.ssim(x.double(), y.double(), 11, max_val=1.0, padding='same')
    torch.testing.assert_close(ssim_map(x.double(), y.double()), expected, rtol=0, atol=1e-5)
    # the module computes in float32
    loss = SSIMLoss(normalize=None)(x, y)
    expected_loss = kornia.losses.ssim_loss(x.double(), y.double(), 11, max_val=1.0)
    torch.testing.assert_close(loss.double(), expected_loss, rtol=0, atol=1e-5)


@pytest.mark.parametrize('make_pair', PAIRS)
@pytest.mark.parametrize('shape', [(2, 3, 32, 40), (1, 2, 13, 21), (2, 2, 8, 30), (1, 2, 5, 7),
                                   (1, 2, 67, 100)])
def test_valid_matches_pytorch_msssim(ssim_impl, make_pair, shape):
    """Per-channel SSIM ('valid', data_range 1); sides shorter than 11 are not blurred."""
    x, y = make_pair(*shape)
    x, y = x.double(), y.double()
    n, c, h, w = shape
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # pytorch_msssim warns when it skips a side
        expected = pytorch_msssim.ssim(x.reshape(n * c, 1, h, w), y.reshape(n * c, 1, h, w),
                                       data_range=1.0, size_average=False,
                                       nonnegative_ssim=False).reshape(n, c)
    torch.testing.assert_close(ssim_map(x, y, padding='valid').mean((2, 3)), expected,
                               rtol=0, atol=1e-5)
    loss = SSIMLoss(padding='valid', normalize=None)(x.float(), y.float())
    torch.testing.assert_close(loss.double(), (1 - expected.mean()) / 2, rtol=0, atol=1e-5)


@pytest.mark.parametrize('size', [(1, 1), (2, 3), (3, 5), (5, 4)])
def test_same_small_sides_reflect_repeatedly(size):
    """Levels smaller than the window: the full window over the repeated reflection (numpy's
    'reflect' padding), computed directly as a 2-D correlation in float64."""
    h, w = size
    x = torch.rand(1, 1, h, w, dtype=torch.float64)
    padded = torch.from_numpy(np.pad(x[0, 0].numpy(), 5, mode='reflect'))
    window = gaussian_window(11, 1.5)
    expected = F.conv2d(padded[None, None], (window[:, None] * window)[None, None])
    torch.testing.assert_close(gaussian_blur(x), expected)


@pytest.mark.parametrize('padding', ['same', 'valid'])
@pytest.mark.parametrize('shape', [(1, 2, 14, 17), (1, 1, 3, 5)])
def test_blocked_blur_matches_kornia_and_autograd(small_blur_blocks, padding, shape):
    """Blurring in blocks changes nothing: the loss against kornia / pytorch_msssim, and the
    analytic backward (blocked adjoint) against autograd through the blocked blur."""
    x, y = structured_pair(*shape)
    x, y = x.double(), y.double()
    expected = None  # sides shorter than the window: neither reference takes them
    if min(shape[2:]) >= 11 and padding == 'same':
        expected = kornia.losses.ssim_loss(x, y, 11, max_val=1.0)
    elif min(shape[2:]) >= 11:
        expected = (1 - pytorch_msssim.ssim(x, y, data_range=1.0, nonnegative_ssim=False)) / 2
    student = x.requires_grad_()
    loss = ssim_loss(student, y, padding=padding, normalize=None)
    if expected is not None:
        torch.testing.assert_close(loss, expected, rtol=0, atol=1e-5)
    reference = reference_loss(student, y, padding, None)
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(torch.autograd.grad(loss, student)[0],
                               torch.autograd.grad(reference, student)[0])


def test_loss_equals_mean_of_map_and_matches_kornia_after_normalisation():
    student, teacher = 3 * torch.randn(2, 3, 16, 20), torch.randn(2, 3, 16, 20) - 1
    loss = SSIMLoss(normalize='channel')(student, teacher)

    def normalise(x):
        low = x.amin((2, 3), keepdim=True)
        return (x - low) / (x.amax((2, 3), keepdim=True) - low + 1e-6)

    expected = kornia.losses.ssim_loss(normalise(student), normalise(teacher), 11)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize('normalize', ['channel', 'image', 'level'])
def test_normalisation_granularity(normalize):
    """Each granularity normalises over its own dims: an affine change per unit is invisible."""
    teacher = torch.randn(2, 3, 12, 12)
    student = teacher + 0.5 * torch.randn(2, 3, 12, 12)
    dims = {'channel': (2, 3, 1, 1), 'image': (2, 1, 1, 1), 'level': (1, 1, 1, 1)}[normalize]
    scale = torch.rand(dims) + 0.5
    loss = SSIMLoss(normalize=normalize)
    torch.testing.assert_close(loss(student * scale + 2, teacher), loss(student, teacher),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('padding', ['same', 'valid'])
def test_identical_inputs_zero_and_monotone(padding):
    teacher = torch.randn(2, 4, 20, 24)
    noise = torch.randn_like(teacher)
    loss = SSIMLoss(padding=padding)
    values = [loss(teacher + a * noise, teacher).item() for a in (2.0, 1.0, 0.5, 0.1, 0.0)]
    assert values == sorted(values, reverse=True)
    assert abs(values[-1]) < 1e-6


@pytest.mark.parametrize('padding', ['same', 'valid'])
@pytest.mark.parametrize('normalize', ['channel', None])
@pytest.mark.parametrize('shape', [(1, 2, 7, 9), (2, 1, 12, 13), (1, 1, 3, 2)])
def test_gradcheck(padding, normalize, shape):
    student = torch.rand(*shape, dtype=torch.float64, requires_grad=True)
    teacher = torch.rand(*shape, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda s: ssim_loss(s, teacher, padding=padding, normalize=normalize), (student,))


def test_invalid_arguments():
    for kwargs in (dict(window_size=4), dict(sigma=0), dict(padding='reflect'),
                   dict(normalize='batch')):
        with pytest.raises(ValueError):
            SSIMLoss(**kwargs)


def reference_loss(student, teacher, padding, normalize):
    """ssim_loss through plain autograd: min-max normalisation and the SSIM map."""
    if normalize is not None:
        student = minmax_normalize(student, normalize)
        teacher = minmax_normalize(teacher, normalize)
    return 0.5 * (1 - ssim_map(student, teacher, padding=padding).mean())


@pytest.mark.parametrize('padding', ['same', 'valid'])
@pytest.mark.parametrize('normalize', ['channel', 'image', 'level', None])
@pytest.mark.parametrize('shape', [(2, 3, 14, 17), (1, 2, 64, 70)])
def test_fused_backward_matches_autograd(padding, normalize, shape):
    """The analytic backward (normalisation included) against autograd, in float64."""
    student = torch.rand(*shape, dtype=torch.float64, requires_grad=True)
    teacher = torch.rand(*shape, dtype=torch.float64)
    if normalize is not None:
        student = (3 * student - 1).detach().requires_grad_()
    loss = ssim_loss(student, teacher, padding=padding, normalize=normalize)
    expected = reference_loss(student, teacher, padding, normalize)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(torch.autograd.grad(loss, student)[0],
                               torch.autograd.grad(expected, student)[0])


@pytest.mark.parametrize('normalize', ['image', 'level'])
def test_gradcheck_coarse_normalisation(normalize):
    student = torch.rand(2, 2, 9, 8, dtype=torch.float64, requires_grad=True)
    teacher = torch.rand(2, 2, 9, 8, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda s: ssim_loss(s, teacher, normalize=normalize), (student,))


@pytest.mark.parametrize('padding', ['same', 'valid'])
def test_channel_chunks_give_the_same_loss(torch_impl, monkeypatch, padding):
    student, teacher = torch.randn(2, 5, 12, 13, requires_grad=True), torch.randn(2, 5, 12, 13)
    loss = SSIMLoss(padding=padding)
    whole = loss(student, teacher)
    grad_whole, = torch.autograd.grad(whole, student)
    monkeypatch.setattr(_MeanSSIM, 'cpu_chunk_numel', 2 * 2 * 12 * 13)  # chunks of 2, 2, 1
    chunked = loss(student, teacher)
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(torch.autograd.grad(chunked, student)[0], grad_whole)


def test_no_gradient_work_under_no_grad(ssim_impl, monkeypatch):
    """The forward computes dL/dx only when autograd will ask for it."""
    grad_computed = []
    if ssim_impl == 'torch':
        blur = blur_module.separable_blur

        def spy(*args, adjoint=False):
            grad_computed.append(adjoint)
            return blur(*args, adjoint=adjoint)

        # the forward blurs through gaussian_blur, the backward calls separable_blur itself
        monkeypatch.setattr(blur_module, 'separable_blur', spy)
        monkeypatch.setattr(ssim_module, 'separable_blur', spy)
    else:
        kernel = ssim_module._cpu_kernel()

        class Spy:
            @staticmethod
            def ssim_forward(*args):
                grad_computed.append(args[-2])  # needs_grad
                return kernel.ssim_forward(*args)

        monkeypatch.setattr(ssim_module, '_cpu_kernel', lambda: Spy)
    student, teacher = torch.rand(1, 2, 12, 12, requires_grad=True), torch.rand(1, 2, 12, 12)
    with torch.no_grad():
        value = SSIMLoss()(student, teacher)
    assert grad_computed and not any(grad_computed) and value.grad_fn is None
    torch.testing.assert_close(SSIMLoss()(student, teacher), value)
    assert any(grad_computed)


@pytest.mark.parametrize('padding', ['same', 'valid'])
@pytest.mark.parametrize('normalize', ['channel', 'image', 'level', None])
@pytest.mark.parametrize('shape', [(2, 3, 14, 17), (1, 2, 67, 100), (2, 2, 1, 1), (1, 3, 3, 12)])
def test_kernel_matches_float64_autograd(padding, normalize, shape):
    # float32 against float64: on constant windows (1x1 levels) E[x^2] - mu^2 cancels
    # against C2 = 9e-4, which costs both implementations about 1e-4 of the gradient there
    """The fused CPU kernel (float32) against autograd through the SSIM map in float64."""
    assert ssim_module._cpu_kernel() is not None, 'the fused SSIM CPU kernel did not build'
    teacher = torch.rand(shape)
    student = (teacher + 0.5 * torch.rand(shape)).requires_grad_()
    if normalize is not None:
        student, teacher = (3 * student - 1).detach().requires_grad_(), 2 * teacher + 1
    loss = ssim_loss(student, teacher, padding=padding, normalize=normalize)
    grad, = torch.autograd.grad(loss, student)
    student64 = student.detach().double().requires_grad_()
    expected = reference_loss(student64, teacher.double(), padding, normalize)
    expected_grad, = torch.autograd.grad(expected, student64)
    torch.testing.assert_close(loss.double(), expected, rtol=0, atol=5e-5)
    relative = 1e-3 if min(shape[2:]) == 1 else 1e-4
    atol = relative * expected_grad.abs().max().item() + 1e-10
    torch.testing.assert_close(grad.double(), expected_grad, rtol=0, atol=atol)


def test_kernel_off_by_environment_and_fallback_on_build_failure(monkeypatch):
    build = ssim_module._cpu_kernel.__wrapped__
    monkeypatch.setenv('KD_DET_SSIM_KERNEL', '0')
    assert build() is None
    monkeypatch.delenv('KD_DET_SSIM_KERNEL')

    def no_compiler(*args, **kwargs):
        raise RuntimeError('Error building extension: g++ not found')

    monkeypatch.setattr(torch.utils.cpp_extension, 'load', no_compiler)
    with pytest.warns(UserWarning, match='g[+][+] not found.*falls back to its PyTorch'):
        assert build() is None


def test_teacher_gets_no_gradient_and_constant_maps_stay_finite():
    student = torch.randn(1, 3, 10, 10)
    student[:, 0] = 1.5  # a constant channel: min and max tie everywhere
    student.requires_grad_()
    teacher = torch.randn(1, 3, 10, 10, requires_grad=True)
    SSIMLoss()(student, teacher).backward()
    assert teacher.grad is None
    assert torch.isfinite(student.grad).all()
    # the normalised loss is invariant to a shift of each channel (the constant one's gradient
    # is of order 1 / eps: its min and max tie, and that term goes to a single element)
    grad = student.grad.flatten(2)
    assert (grad.sum(-1) / grad.abs().sum(-1)).abs().max() < 1e-5


def test_ssim_map_stays_differentiable():
    x = torch.rand(1, 2, 8, 9, dtype=torch.float64, requires_grad=True)
    y = torch.rand(1, 2, 8, 9, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: ssim_map(a, y).sum(), (x,))


HOLD_BUILD_LOCK = """
import sys, time
from kd_det.losses.ssim import kernel_build_lock
with kernel_build_lock(sys.argv[1]):
    open(sys.argv[1] + '/held', 'w').close()
    time.sleep(2)
    open(sys.argv[1] + '/released', 'w').close()
"""


@pytest.mark.skipif(sys.platform == 'win32', reason='flock')
def test_kernel_build_lock_waits_for_a_live_build_and_clears_a_dead_ones(tmp_path):
    """torch's build lock file, left by a build killed a moment ago (as a stopped machine
    leaves it), would make the next load wait forever: under kd_det's lock it is removed.
    A build still running in another process is waited for."""
    lock = tmp_path / 'lock'
    lock.write_text('')  # fresh: an age rule cannot tell it from a live build's
    with kernel_build_lock(str(tmp_path)):
        assert not lock.exists()
    holder = subprocess.Popen([sys.executable, '-c', HOLD_BUILD_LOCK, str(tmp_path)],
                              cwd=REPO)
    deadline = time.time() + 60
    while not (tmp_path / 'held').exists():
        assert holder.poll() is None and time.time() < deadline, 'the holder did not start'
        time.sleep(0.05)
    with kernel_build_lock(str(tmp_path)):
        assert (tmp_path / 'released').exists(), 'entered while another process held it'
    assert holder.wait(60) == 0
