"""Each training loss against its formula: hand-computed cases, closed forms, independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lua_core.train import losses as L
from lua_core.train.data import make_lr


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# -- L1 and FFT ---------------------------------------------------------------------------------

def test_l1_hand_case():
    a = torch.tensor([[[[1.0, -2.0], [0.5, 0.0]]]])
    b = torch.tensor([[[[0.0, 1.0], [0.5, 2.0]]]])
    assert float(L.l1_loss(a, b)) == pytest.approx((1 + 3 + 0 + 2) / 4)


def test_fft_loss_of_identical_inputs_is_zero():
    x = rand(2, 4, 8, 8)
    assert float(L.fft_magnitude_l1(x, x.clone())) == 0.0


@pytest.mark.parametrize("pos", [(0, 0), (3, 5)])
def test_fft_loss_impulse_closed_form(pos):
    # |FFT| of an impulse of height a is a everywhere (a / N unitary), wherever it sits
    n, a = 8, 3.0
    x = torch.zeros(1, 1, n, n)
    x[0, 0, pos[0], pos[1]] = a
    assert float(L.fft_magnitude_l1(x, torch.zeros_like(x))) == pytest.approx(a / n, rel=1e-6)
    assert float(L.fft_magnitude_l1(x, torch.zeros_like(x), norm="backward")) == pytest.approx(a, rel=1e-6)


def test_fft_loss_constant_and_cosine_closed_forms():
    n = 8
    c = 0.7
    const = torch.full((1, 1, n, n), c)
    # unitary DC bin = c * n * n / n = c * n, every other bin 0: mean over n*n bins = c / n
    assert float(L.fft_magnitude_l1(const, torch.zeros_like(const))) == pytest.approx(c / n, rel=1e-6)
    k = 2
    cos = torch.cos(2 * math.pi * k * torch.arange(n) / n).expand(1, 1, n, n)
    # two bins (0, +-k) of magnitude n*n/2 / n = n/2 each: mean = n / n^2 = 1/n
    assert float(L.fft_magnitude_l1(cos, torch.zeros_like(cos))) == pytest.approx(1 / n, rel=1e-5)


def test_fft_loss_ignores_circular_shift_but_l1_does_not():
    x = rand(1, 3, 8, 8, seed=1)
    shifted = torch.roll(x, shifts=(2, 3), dims=(-2, -1))
    assert float(L.fft_magnitude_l1(x, shifted)) < 1e-6
    assert float(L.l1_loss(x, shifted)) > 0.1


def test_losses_compute_in_fp32_and_check_shapes():
    x = rand(1, 3, 8, 8).bfloat16()
    for fn in (L.l1_loss, L.fft_magnitude_l1, L.high_frequency_l1, L.eagle_loss):
        assert fn(x, x).dtype == torch.float32
    with pytest.raises(ValueError, match="same shape"):
        L.l1_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))


# -- Gaussian blur and high frequencies -----------------------------------------------------------

def test_gaussian_kernel_sums_to_one_and_has_the_formula():
    k = L.gaussian_kernel2d(5, 1.0)
    assert k.shape == (5, 5)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(k, k.T) and torch.equal(k, k.flip(0))
    z = sum(math.exp(-0.5 * (i - 2) ** 2) for i in range(5))
    assert float(k[2, 2]) == pytest.approx(1 / z ** 2, rel=1e-6)
    assert float(k[0, 2]) == pytest.approx(math.exp(-2) / z ** 2, rel=1e-6)
    with pytest.raises(ValueError):
        L.gaussian_kernel1d(4, 1.0)


def test_gaussian_kernel_matches_kornia():
    kornia = pytest.importorskip("kornia")
    ref = kornia.filters.get_gaussian_kernel2d((5, 5), (1.0, 1.0))[0]
    torch.testing.assert_close(L.gaussian_kernel2d(5, 1.0), ref, rtol=1e-6, atol=1e-7)


def test_gaussian_blur_matches_torchvision():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    x = rand(2, 3, 12, 10, seed=2)
    torch.testing.assert_close(L.gaussian_blur(x, 5, 1.0), tvf.gaussian_blur(x, [5, 5], [1.0, 1.0]),
                               rtol=1e-5, atol=1e-6)


def test_high_frequency_l1_hand_cases():
    x = rand(1, 3, 9, 9, seed=3)
    assert float(L.high_frequency_l1(x, x.clone())) == 0.0
    # the blur keeps constants, so two different flat images have no high-frequency difference
    a, b = torch.full((1, 1, 9, 9), 0.3), torch.full((1, 1, 9, 9), -0.8)
    assert float(L.high_frequency_l1(a, b)) < 1e-6
    # an impulse far from the border: |delta - kernel| sums to 2 (1 - k_center)
    d = torch.zeros(1, 1, 9, 9)
    d[0, 0, 4, 4] = 1.0
    kc = float(L.gaussian_kernel2d(5, 1.0)[2, 2])
    assert float(L.high_frequency_l1(d, torch.zeros_like(d))) == pytest.approx(2 * (1 - kc) / 81, rel=1e-5)


# -- downsample consistency -----------------------------------------------------------------------

def test_downsample_consistency_zero_for_the_source_image_and_constant_gap():
    hr = rand(2, 3, 16, 16, seed=4)
    assert float(L.downsample_consistency_l1(hr, make_lr(hr, 2))) < 1e-7
    up, lr = torch.full((1, 3, 16, 16), 0.25), torch.full((1, 3, 4, 4), -0.5)
    assert float(L.downsample_consistency_l1(up, lr)) == pytest.approx(0.75, abs=1e-6)


# -- EAGLE ----------------------------------------------------------------------------------------

def test_luminance_scharr_and_patch_variance_hand_cases():
    rgb = torch.eye(3).view(3, 3, 1, 1).expand(3, 3, 2, 2)  # pure red, green, blue images
    torch.testing.assert_close(L.rgb_to_luminance(rgb)[:, 0, 0, 0], torch.tensor(L.LUMA_WEIGHTS))
    ramp = (0.1 * torch.arange(8.0)).expand(1, 1, 8, 8)  # x-ramp of slope 0.1
    gx, gy = L.scharr_gradients(ramp)
    # interior: (3 + 10 + 3) * (x+1 - (x-1)) * 0.1 = 3.2; no vertical change
    torch.testing.assert_close(gx[..., 1:-1, 1:-1], torch.full((1, 1, 6, 6), 3.2))
    torch.testing.assert_close(gy[..., 1:-1, 1:-1], torch.zeros(1, 1, 6, 6), atol=1e-6, rtol=0)
    v = L.patch_variance(torch.arange(9.0).view(1, 1, 3, 3), 3)
    assert v.shape == (1, 1, 1, 1) and float(v) == pytest.approx(7.5)  # unbiased variance of 0..8


def test_gaussian_highpass_formula():
    w = L.gaussian_highpass((4, 4), cutoff=0.5)  # fftfreq(4) = [0, .25, -.5, -.25]
    assert float(w[0, 0]) == 0.0
    assert float(w[2, 0]) == pytest.approx(1 - math.exp(-0.25 / (2 * 0.25)), rel=1e-6)
    assert float(w[1, 3]) == pytest.approx(1 - math.exp(-(0.0625 + 0.0625) / 0.5), rel=1e-6)


def _eagle_numpy(pred: np.ndarray, target: np.ndarray, p: int = 3, fc: float = 0.5) -> float:
    """Independent loop-based reading of EAGLE, for comparison."""
    def lum(x):
        return 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]

    kx = np.array([[-3, 0, 3], [-10, 0, 10], [-3, 0, 3]], dtype=np.float64)

    def conv(img, k):
        h, w = img.shape
        pad = np.pad(img, 1, mode="edge")
        return np.array([[np.sum(pad[i:i + 3, j:j + 3] * k) for j in range(w)] for i in range(h)])

    def pvar(g):
        hp, wp = g.shape[0] // p, g.shape[1] // p
        return np.array([[np.var(g[i * p:(i + 1) * p, j * p:(j + 1) * p], ddof=1) for j in range(wp)]
                         for i in range(hp)])

    total = 0.0
    for k in (kx, kx.T):
        vp, vt = pvar(conv(lum(pred), k)), pvar(conv(lum(target), k))
        u = np.fft.fftfreq(vp.shape[0])[:, None]
        v = np.fft.fftfreq(vp.shape[1])[None, :]
        w = 1 - np.exp(-(u ** 2 + v ** 2) / (2 * fc ** 2))
        total += np.mean(np.abs(w * np.abs(np.fft.fft2(vp)) - w * np.abs(np.fft.fft2(vt))))
    return total


def test_eagle_matches_an_independent_reference():
    pred, target = rand(1, 3, 14, 13, seed=5), rand(1, 3, 14, 13, seed=6)
    ref = _eagle_numpy(pred[0].double().numpy(), target[0].double().numpy())
    assert ref > 0
    assert float(L.eagle_loss(pred, target)) == pytest.approx(ref, rel=1e-4)


def test_eagle_properties():
    x = rand(2, 3, 12, 12, seed=7)
    assert float(L.eagle_loss(x, x.clone())) == 0.0
    # a global brightness offset moves no gradient: nothing for an edge loss to see
    assert float(L.eagle_loss(x + 0.3, x)) < 1e-3 * float(L.eagle_loss(rand(2, 3, 12, 12, seed=8), x))
    # gradients stay finite on flat images (|FFT| of all-zero variance maps)
    flat = torch.zeros(1, 3, 12, 12, requires_grad=True)
    L.eagle_loss(flat, torch.zeros(1, 3, 12, 12)).backward()
    assert torch.isfinite(flat.grad).all()


def test_psnr_hand_case():
    a = torch.zeros(1, 3, 4, 4)
    b = torch.full((1, 3, 4, 4), 0.2)  # MSE 0.04 with range 2: 10 log10(4 / 0.04) = 20 dB
    assert float(L.psnr(a, b)[0]) == pytest.approx(20.0, rel=1e-5)
