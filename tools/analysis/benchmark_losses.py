"""Time the distillation losses side by side with reference implementations.

Forward + backward over FPN-shaped student / teacher features (batch 2, 256 channels, strides
4..64 of a 512x512 input on CPU, of 800x1333 on CUDA), one row per loss:

    python tools/analysis/benchmark_losses.py [--batch 2] [--channels 256] [--size H W]
        [--repeats 5] [--device cpu|cuda] [--threads 2]

Columns: median wall time of forward + backward over the levels, its ratio to FeatureMSELoss,
and the peak extra memory above the inputs during one forward + backward: on CUDA the peak of
``torch.cuda.max_memory_allocated`` minus the memory allocated before; on CPU the rise of the
process's peak resident set size (VmHWM, reset through /proc/self/clear_refs) over the resident
size before. 'x inputs' divides it by the bytes of the student and teacher features the row
uses. All rows are timed first, with the allocator as training has it; only then is glibc told
to return freed blocks to the system (which the CPU memory column needs, and which would charge
every row page faults on fresh memory if it were on while timing).
"""
import argparse
import math
import statistics
import time
import warnings
from typing import Callable, List, Optional, Sequence

import kornia
import pytorch_msssim
import torch
import torch.nn.functional as F
from torch import Tensor

from kd_det.analysis.memory import PeakMemory
from kd_det.losses.cwd import CWDLoss
from kd_det.losses.feature_mse import FeatureMSELoss
from kd_det.losses.pkd import PKDLoss
from kd_det.losses.rcka import RCKALoss
from kd_det.losses import ssim as ssim_module
from kd_det.losses.ssim import SSIMLoss

STRIDES = (4, 8, 16, 32, 64)
PCKA_LEVELS = 4  # the official detection configs distil FPN levels 0..3


def official_cka(x: Tensor, y: Tensor) -> Tensor:
    """Klayand/PCKA's CKA: Gram matrices of the rows, uncentred."""
    gram_x, gram_y = x @ x.t(), y @ y.t()
    return torch.trace(gram_x @ gram_y.t()) / torch.sqrt(
        torch.trace(gram_x @ gram_x.t()) * torch.trace(gram_y @ gram_y.t()))


def official_pcka(student: Tensor, teacher: Tensor, weight: float = 10.0) -> Tensor:
    """Klayand/PCKA's patch loss with the inter term (weighted by the intra weight)."""
    student, teacher = student.permute(1, 0, 2, 3), teacher.permute(1, 0, 2, 3)
    c, n, h, w = student.shape
    size = [math.ceil(h / 16) * 16, math.ceil(w / 16) * 16]

    def patches(x: Tensor) -> Tensor:
        x = F.interpolate(x, size, mode='bilinear')
        x = x.reshape(c, n, size[0] // 16, 16, size[1] // 16, 16).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(c, -1, n * 256)

    s_patches, t_patches = patches(student), patches(teacher)
    loss = 0
    for i in range(c):
        loss = loss - weight * official_cka(t_patches[i], s_patches[i])
        loss = loss - weight * official_cka(t_patches[i].t(), s_patches[i].t())
    return loss / c


def level_shapes(batch: int, channels: int, height: int, width: int) -> List[tuple]:
    """FPN level shapes of an input padded to a multiple of 32, as mmdet does."""
    height, width = math.ceil(height / 32) * 32, math.ceil(width / 32) * 32
    return [(batch, channels, math.ceil(height / s), math.ceil(width / s)) for s in STRIDES]


def per_level(loss: Callable[[Tensor, Tensor], Tensor], levels: int = len(STRIDES)):
    """Sum of ``loss`` over the first ``levels`` levels, as the distilling detector does."""
    def run(students: Sequence[Tensor], teachers: Sequence[Tensor]) -> Tensor:
        return sum(loss(s, t) for s, t in zip(students[:levels], teachers[:levels]))
    run.levels = levels
    return run


def without_cpu_kernel(loss: Callable[[Tensor, Tensor], Tensor]):
    """``loss`` through SSIMLoss's PyTorch implementation (what runs where the fused CPU
    kernel cannot be built)."""
    def run(student: Tensor, teacher: Tensor) -> Tensor:
        kernel = ssim_module._cpu_kernel
        ssim_module._cpu_kernel = lambda: None
        try:
            return loss(student, teacher)
        finally:
            ssim_module._cpu_kernel = kernel
    return run


def msssim_loss(student: Tensor, teacher: Tensor) -> Tensor:
    return 1 - pytorch_msssim.ssim(student, teacher, data_range=1.0, nonnegative_ssim=False)


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def forward_backward(run, students, teachers, device) -> None:
    for s in students:
        s.grad = None
    run(students, teachers).backward()
    synchronize(device)


def time_ms(run, students, teachers, device, repeats: int) -> float:
    forward_backward(run, students, teachers, device)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward_backward(run, students, teachers, device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def peak_extra_bytes(meter: PeakMemory, run, students, teachers, device) -> Optional[int]:
    """Peak memory above what was in use before one forward + backward (see module doc);
    None where the CPU meter cannot read /proc."""
    for s in students:
        s.grad = None
    try:
        return meter.measure(lambda: forward_backward(run, students, teachers, device))
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--channels', type=int, default=256)
    parser.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'),
                        help='input size (default 512 512 on CPU, 800 1333 on CUDA)')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int, help='torch CPU threads (default: torch)')
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or ((800, 1333) if device.type == 'cuda' else (512, 512))
    warnings.filterwarnings('ignore', message='Skipping Gaussian Smoothing')

    shapes = level_shapes(args.batch, args.channels, *size)
    generator = torch.Generator().manual_seed(0)
    teachers = [torch.rand(shape, generator=generator).to(device) for shape in shapes]
    students = [(t + 0.3 * torch.rand(t.shape, generator=generator).to(device)).requires_grad_()
                for t in teachers]
    level_bytes = [2 * t.numel() * t.element_size() for t in teachers]

    rows = [
        ('FeatureMSELoss', per_level(FeatureMSELoss())),
        ('PKDLoss', per_level(PKDLoss())),
        ('CWDLoss', per_level(CWDLoss())),
        ("SSIMLoss 'same'", per_level(SSIMLoss())),
        ("SSIMLoss 'valid'", per_level(SSIMLoss(padding='valid'))),
        ("SSIMLoss 'same', PyTorch path", per_level(without_cpu_kernel(SSIMLoss()))),
        ('kornia.losses.ssim_loss', per_level(lambda s, t: kornia.losses.ssim_loss(s, t, 11))),
        ('pytorch_msssim.ssim', per_level(msssim_loss)),
        ('RCKALoss intra (4 lv)', per_level(RCKALoss(10.0), PCKA_LEVELS)),
        ('RCKALoss intra+inter (4 lv)', per_level(RCKALoss(10.0, inter_weight=10.0), PCKA_LEVELS)),
        ('official PCKA intra+inter (4 lv)', per_level(official_pcka, PCKA_LEVELS)),
    ]

    print(f'device {device}, threads {torch.get_num_threads()}, torch {torch.__version__}, '
          f'input {size[0]}x{size[1]}, levels {[s[2:] for s in shapes]}, batch {args.batch}, '
          f'channels {args.channels}, median of {args.repeats}')
    memory = 'CUDA max allocated' if device.type == 'cuda' else 'peak RSS rise'
    print(f'{"loss":34s} {"ms":>9s} {"x MSE":>7s} {memory + " MB":>22s} {"x inputs":>9s}')
    times = [time_ms(run, students, teachers, device, args.repeats) for _, run in rows]
    mse_ms = times[0]
    meter = PeakMemory(device, mmap_threshold=128 * 1024, trim_threshold=128 * 1024)
    for (name, run), ms in zip(rows, times):
        extra = peak_extra_bytes(meter, run, students, teachers, device)
        inputs = sum(level_bytes[:run.levels])
        memory_cols = (f'{extra / 2**20:22.1f} {extra / inputs:9.2f}' if extra is not None
                       else f'{"n/a":>22s} {"n/a":>9s}')
        print(f'{name:34s} {ms:9.1f} {ms / mse_ms:7.2f} {memory_cols}', flush=True)

    with torch.no_grad():
        fast = per_level(RCKALoss(10.0, inter_weight=10.0), PCKA_LEVELS)(students, teachers)
        official = per_level(official_pcka, PCKA_LEVELS)(students, teachers)
    print(f'RCKA fast vs official (intra+inter, {PCKA_LEVELS} levels): {fast.item():.6f} vs '
          f'{official.item():.6f}, |diff| {abs(fast - official).item():.2e}, '
          f'agree: {torch.allclose(fast, official, rtol=1e-4, atol=1e-5)}')


if __name__ == '__main__':
    main()
