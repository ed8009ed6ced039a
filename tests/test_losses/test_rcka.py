"""RCKALoss against direct transcriptions of CKA and of the official Klayand/PCKA loss."""
import pytest
import torch
from official_pcka import official_cka, official_pcka_loss

from kd_det.losses.rcka import RCKALoss, cka_terms, rcka_loss


def hsic(gram_x, gram_y):
    """Kornblith et al.'s HSIC estimator tr(K H L H) / (n - 1)^2, H = I - 11^T / n."""
    n = gram_x.shape[0]
    h = torch.eye(n, dtype=gram_x.dtype) - torch.ones(n, n, dtype=gram_x.dtype) / n
    return torch.trace(gram_x @ h @ gram_y @ h) / (n - 1)**2


def kornblith_cka(x, y):
    """Centred linear CKA of (n, d) representations, rows are samples."""
    gram_x, gram_y = x @ x.t(), y @ y.t()
    return hsic(gram_x, gram_y) / torch.sqrt(hsic(gram_x, gram_x) * hsic(gram_y, gram_y))


def centred_row_normalised_cka(x, y):
    """Centre the Gram matrices, then the official row normalisation, then the cosine."""
    n = x.shape[0]
    h = torch.eye(n, dtype=x.dtype) - 1 / n
    grams = [h @ a @ a.t() @ h for a in (x, y)]
    grams = [g / torch.sqrt(torch.diag(g))[:, None] for g in grams]
    return (grams[0] * grams[1]).sum() / (grams[0].norm() * grams[1].norm())


@pytest.mark.parametrize('n, d', [(7, 5), (5, 9), (6, 6)])
def test_cka_terms_match_direct_definitions(n, d):
    x = torch.randn(3, n, d, dtype=torch.float64)
    y = x + torch.randn(3, n, d, dtype=torch.float64)
    cases = {
        (False, False): lambda a, b: official_cka(a, b),
        (False, True): lambda a, b: official_cka(a, b, with_l2_norm=True),
        (True, False): kornblith_cka,
        (True, True): centred_row_normalised_cka,
    }
    for (centered, l2), reference in cases.items():
        intra, inter = cka_terms(x, y, centered, l2)
        for i in range(3):
            torch.testing.assert_close(intra[i], reference(x[i], y[i]))
            # the inter term is the CKA of the transposes, built here as (d, d) Gram matrices
            torch.testing.assert_close(inter[i], reference(x[i].t(), y[i].t()))


@pytest.mark.parametrize('shape', [(2, 3, 32, 48), (1, 4, 20, 37), (2, 2, 40, 17), (1, 2, 9, 5)])
@pytest.mark.parametrize('inter_weight', [None, 10.0])
@pytest.mark.parametrize('with_l2_norm', [False, True])
def test_patch_mode_matches_official(shape, inter_weight, with_l2_norm):
    """Values of the official patch loss, whose inter term builds (N*256)^2 Gram matrices."""
    teacher = torch.randn(shape, dtype=torch.float64)
    student = teacher + torch.randn(shape, dtype=torch.float64)
    # (1, 2, 9, 5) is a single patch, where the official code's squeeze() fails; the
    # transcription, without squeeze(), gives intra CKA 1 and the inter cosine^2
    expected = official_pcka_loss(student, teacher, 10.0, inter_weight, with_l2_norm)
    value = rcka_loss(student, teacher, 10.0, 10.0 if inter_weight else 0.0,
                      with_l2_norm=with_l2_norm)
    torch.testing.assert_close(value, expected)
    loss = RCKALoss(10.0, inter_weight=inter_weight, with_l2_norm=with_l2_norm)
    torch.testing.assert_close(loss(student.float(), teacher.float()), expected.float())


def test_inter_weight_is_used_as_given():
    """inter_weight weights the inter term (never replaced by loss_weight); the official
    code, which weights it by intra_weight, is reproduced with inter_weight == loss_weight."""
    teacher = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    student = teacher + torch.randn(2, 3, 32, 32, dtype=torch.float64)
    intra = -official_pcka_loss(student, teacher, 1.0, None)  # official intra CKA, mean
    inter = -official_pcka_loss(student, teacher, 1.0, 1.0) - intra
    loss = RCKALoss(10.0, inter_weight=1.0)
    assert loss.inter_weight == 1.0
    torch.testing.assert_close(loss(student.float(), teacher.float()).double(),
                               -10.0 * intra - 1.0 * inter, rtol=1e-5, atol=1e-5)
    official = RCKALoss(10.0, inter_weight=10.0)(student.float(), teacher.float())
    torch.testing.assert_close(official.double(),
                               official_pcka_loss(student, teacher, 10.0, 1.0),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('with_l2_norm', [False, True])
def test_plain_mode_matches_official_logits_loss(with_l2_norm):
    """Official ``CenterKernelAlignmentSeg``: rows (N) and, for the inter term, columns."""
    teacher = torch.randn(8, 20, dtype=torch.float64)
    student = teacher + torch.randn(8, 20, dtype=torch.float64)
    expected = -15 * official_cka(teacher, student, with_l2_norm) \
        - 15 * official_cka(teacher.t(), student.t(), with_l2_norm)
    value = rcka_loss(student, teacher, 15.0, 15.0, None, False, with_l2_norm)
    torch.testing.assert_close(value, expected)
    loss = RCKALoss(15.0, inter_weight=15.0, patch_size=None, with_l2_norm=with_l2_norm)
    torch.testing.assert_close(loss(student.float(), teacher.float()), expected.float())
    pooled = RCKALoss(15.0, patch_size=None)(student.reshape(8, 5, 2, 2), teacher.reshape(8, 5, 2, 2))
    torch.testing.assert_close(pooled.double(), -15 * official_cka(teacher, student), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize('kwargs', [dict(), dict(inter_weight=1.0), dict(centered=True),
                                    dict(centered=True, inter_weight=1.0, with_l2_norm=True),
                                    dict(patch_size=None, inter_weight=1.0)])
def test_identical_inputs_hit_bound_and_loss_falls(kwargs):
    loss = RCKALoss(10.0, **kwargs)
    teacher = torch.randn(2, 4, 24, 40)
    noise = torch.randn_like(teacher)
    bound = -(10.0 + kwargs.get('inter_weight', 0.0))
    values = [loss(teacher + a * noise, teacher).item() for a in (3.0, 1.0, 0.3, 0.0)]
    assert values == sorted(values, reverse=True)
    assert values[-1] == pytest.approx(bound, abs=1e-4)


@pytest.mark.parametrize('kwargs', [dict(patch_size=4), dict(patch_size=4, centered=True),
                                    dict(patch_size=4, with_l2_norm=True),
                                    dict(patch_size=None), dict(patch_size=None, centered=True)])
@pytest.mark.parametrize('shape', [(2, 2, 8, 8), (1, 2, 5, 6)])
def test_gradcheck(kwargs, shape):
    student = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(shape, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda s: rcka_loss(s, teacher, 2.0, 1.0, **kwargs), (student,))


def test_plain_mode_shape_error_names_both():
    with pytest.raises(ValueError, match=r'\(4, 10\).*\(4, 12\)'):
        RCKALoss(patch_size=None)(torch.randn(4, 10), torch.randn(4, 12))


def test_invalid_arguments():
    with pytest.raises(ValueError, match='-1'):
        RCKALoss(inter_weight=-1)
    with pytest.raises(TypeError, match='official_inter_weight'):
        RCKALoss(inter_weight=1.0, official_inter_weight=True)  # removed: it replaced inter_weight
    with pytest.raises(ValueError):
        RCKALoss(patch_size=0)
