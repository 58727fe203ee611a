"""The training losses of LUA (arXiv 2511.10629, appendix "Training"), one function each.

Every function takes ``pred`` and ``target`` of the same shape ``(B, C, H, W)`` and returns a
scalar (the mean over all elements, like ``F.l1_loss``). They compute in fp32 whatever the input
dtype, so they can be called inside a bf16/fp16 autocast region (FFTs and variances are not
reliable in half precision). Images are in the VAE's range [-1, 1].

Where the paper gives a number, it is the default here; where it does not, the choice is ours and
the docstring says so:

* ``fft_magnitude_l1``: L1 between FFT magnitudes. The paper does not give the FFT's
  normalisation; we use ``norm="ortho"`` (unitary: a term then has the scale of the spatial L1,
  whatever the size, so the paper's weights 0.1 (stage I) and 1 (stage III) stay meaningful).
* ``eagle_loss``: our reading of EAGLE (Sun et al., arXiv 2403.10695) as the LUA appendix
  describes it; see its docstring.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: ITU-R BT.601 luma weights (also the EAGLE reference code's RGB-to-gray weights, rounded)
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
#: Scharr x-derivative kernel (unnormalised, as in EAGLE); the y kernel is its transpose
SCHARR_X = ((-3.0, 0.0, 3.0), (-10.0, 0.0, 10.0), (-3.0, 0.0, 3.0))


def _check(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")


# --------------------------------------------------------------------------------------------
# Stage I: latent losses
# --------------------------------------------------------------------------------------------

def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error: the latent L1 of stage I (weight 1.0) and the pixel L1 of stage III (10)."""
    _check(pred, target)
    return (pred.float() - target.float()).abs().mean()


def fft_magnitude_l1(pred: torch.Tensor, target: torch.Tensor, norm: str = "ortho") -> torch.Tensor:
    """Mean over frequency bins of ``| |FFT2(pred)| - |FFT2(target)| |`` (2-D FFT over H, W per channel).

    Stage I uses it on latents (weight 0.1), stage III on decoded images (weight 1). Magnitudes
    ignore phase, so a circular shift of the target costs nothing here: the term pushes the
    spectrum (amount of detail per frequency), the L1 terms its placement.
    """
    _check(pred, target)
    fp = torch.fft.fft2(pred.float(), norm=norm)
    ft = torch.fft.fft2(target.float(), norm=norm)
    return (fp.abs() - ft.abs()).abs().mean()


# --------------------------------------------------------------------------------------------
# Stage II: consistency through the frozen decoder
# --------------------------------------------------------------------------------------------

def downsample(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic resize, the one ``lua_core.train`` uses everywhere an image is made
    smaller (the paper's "bicubic downsampling" of the training pairs, and stage II's consistency)."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    return F.interpolate(img, size=size, mode="bicubic", align_corners=False, antialias=True)


def downsample_consistency_l1(decoded: torch.Tensor, lr_image: torch.Tensor) -> torch.Tensor:
    """L1 between the decoded upscale, downsampled to the low-res image's size, and that image.

    Stage II (weight 0.1): whatever detail the upscaler invents, the result must still *be* the
    input once made small again. ``decoded``: (B, 3, sH, sW), ``lr_image``: (B, 3, H, W).
    """
    if decoded.shape[:2] != lr_image.shape[:2]:
        raise ValueError(f"decoded {tuple(decoded.shape)} and lr_image {tuple(lr_image.shape)} differ in batch or "
                         "channels")
    small = downsample(decoded.float(), tuple(lr_image.shape[-2:]))
    return (small - lr_image.float()).abs().mean()


def gaussian_kernel1d(kernel_size: int = 5, sigma: float = 1.0, device: torch.device | None = None) -> torch.Tensor:
    """Normalised samples of exp(-x^2 / (2 sigma^2)) at integer offsets, summing to 1."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    x = torch.arange(kernel_size, dtype=torch.float32, device=device) - (kernel_size - 1) / 2
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_kernel2d(kernel_size: int = 5, sigma: float = 1.0, device: torch.device | None = None) -> torch.Tensor:
    """(k, k) separable Gaussian, the outer product of ``gaussian_kernel1d``; sums to 1."""
    k = gaussian_kernel1d(kernel_size, sigma, device)
    return k[:, None] * k[None, :]


def gaussian_blur(x: torch.Tensor, kernel_size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """Per-channel Gaussian blur with reflect padding (same output as torchvision's gaussian_blur)."""
    c = x.shape[1]
    k = gaussian_kernel2d(kernel_size, sigma, x.device).to(x.dtype)
    p = kernel_size // 2
    x = F.pad(x, (p, p, p, p), mode="reflect")
    return F.conv2d(x, k.expand(c, 1, kernel_size, kernel_size), groups=c)


def high_pass(x: torch.Tensor, kernel_size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """``x - GaussianBlur(x)``: what the blur removes, i.e. the edges and texture."""
    return x - gaussian_blur(x, kernel_size, sigma)


def high_frequency_l1(pred: torch.Tensor, target: torch.Tensor, kernel_size: int = 5,
                      sigma: float = 1.0) -> torch.Tensor:
    """L1 between the high-pass parts ``x - GaussianBlur(x)`` (kernel 5, sigma 1: paper, stage II, weight 0.05).

    Plain L1 is dominated by low frequencies and tolerates blur; this term only sees detail.
    """
    _check(pred, target)
    return (high_pass(pred.float(), kernel_size, sigma) - high_pass(target.float(), kernel_size, sigma)).abs().mean()


# --------------------------------------------------------------------------------------------
# Stage III: EAGLE, the edge-aware loss
# --------------------------------------------------------------------------------------------

def rgb_to_luminance(img: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) luma (BT.601); 1-channel input is returned as is."""
    if img.shape[1] == 1:
        return img
    if img.shape[1] != 3:
        raise ValueError(f"expected an RGB (3-channel) or gray (1-channel) image, got {img.shape[1]} channels")
    w = torch.tensor(LUMA_WEIGHTS, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    return (img * w).sum(dim=1, keepdim=True)


def scharr_gradients(gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(gx, gy) of a (B, 1, H, W) image with the unnormalised Scharr kernels, replicate padding.

    The EAGLE reference code pads with zeros, which on a crop in [-1, 1] invents an edge along the
    border whose strength is the border's brightness; replicating the border invents none, so the
    loss sees only real edges (and stays blind to a global brightness offset, as an edge loss should).
    """
    kx = torch.tensor(SCHARR_X, dtype=gray.dtype, device=gray.device).view(1, 1, 3, 3)
    g = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(g, kx), F.conv2d(g, kx.transpose(-1, -2))


def patch_variance(x: torch.Tensor, patch_size: int = 3) -> torch.Tensor:
    """Unbiased variance inside each non-overlapping ``patch_size`` square: (B, C, H//p, W//p).

    Rows and columns beyond a multiple of ``patch_size`` are dropped (EAGLE's unfold does the same).
    """
    b, c, h, w = x.shape
    p = patch_size
    hp, wp = h // p, w // p
    if hp == 0 or wp == 0:
        raise ValueError(f"image {h}x{w} is smaller than one {p}x{p} patch")
    x = x[..., : hp * p, : wp * p].reshape(b, c, hp, p, wp, p)
    return x.permute(0, 1, 2, 4, 3, 5).reshape(b, c, hp, wp, p * p).var(dim=-1, unbiased=True)


def gaussian_highpass(size: tuple[int, int], cutoff: float = 0.5, device: torch.device | None = None) -> torch.Tensor:
    """``1 - exp(-(u^2 + v^2) / (2 fc^2))`` on the FFT grid of ``size``; u, v in cycles per sample
    (``torch.fft.fftfreq``, in [-0.5, 0.5)). 0 at DC, rising towards the highest frequencies."""
    u = torch.fft.fftfreq(size[0], device=device).view(-1, 1)
    v = torch.fft.fftfreq(size[1], device=device).view(1, -1)
    return 1.0 - torch.exp(-(u ** 2 + v ** 2) / (2.0 * cutoff ** 2))


def highpass_fft_l1(pred: torch.Tensor, target: torch.Tensor, cutoff: float = 0.5) -> torch.Tensor:
    """Mean of ``| W * |FFT2(pred)| - W * |FFT2(target)| |`` with W = ``gaussian_highpass`` (unnormalised FFT)."""
    _check(pred, target)
    w = gaussian_highpass(tuple(pred.shape[-2:]), cutoff, pred.device)
    return (w * torch.fft.fft2(pred).abs() - w * torch.fft.fft2(target).abs()).abs().mean()


def eagle_loss(pred: torch.Tensor, target: torch.Tensor, patch_size: int = 3, cutoff: float = 0.5) -> torch.Tensor:
    """EAGLE edge-aware loss on luminance (stage III, weight 5e-5).

    Our reading of EAGLE (arXiv 2403.10695) with the settings the LUA appendix gives:

    1. luminance of both images (BT.601 weights);
    2. Scharr gradients gx, gy (unnormalised kernels; replicate padding, see ``scharr_gradients``);
    3. the variance of each gradient map in non-overlapping 3x3 patches ("3x3 variance pooling"):
       a map of how much the edges vary locally, i.e. where texture and edges are;
    4. for gx and gy separately, the L1 between the high-pass-weighted FFT magnitudes of the two
       variance maps (unnormalised FFT, as the reference code; hence the small weight 5e-5), with
       the Gaussian high-pass ``1 - exp(-(u^2+v^2) / (2 fc^2))``, fc = 0.5;
    5. the sum of the x and y terms.

    Note: the EAGLE reference code writes its high-pass as ``1 - exp(-(|f| - fc)^2 / 2)``; we follow
    the formula the LUA paper states (and the EAGLE paper's Gaussian high-pass), which is 0 at DC.
    """
    _check(pred, target)
    gp = rgb_to_luminance(pred.float())
    gt = rgb_to_luminance(target.float())
    loss = pred.new_zeros((), dtype=torch.float32)
    for a, b in zip(scharr_gradients(gp), scharr_gradients(gt)):
        loss = loss + highpass_fft_l1(patch_variance(a, patch_size), patch_variance(b, patch_size), cutoff)
    return loss


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-image PSNR in dB, (B,): ``10 log10(range^2 / MSE)``; images in [-1, 1] have range 2."""
    _check(pred, target)
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range ** 2 / mse.clamp_min(1e-12))


__all__ = ["LUMA_WEIGHTS", "SCHARR_X", "downsample", "downsample_consistency_l1", "eagle_loss",
           "fft_magnitude_l1", "gaussian_blur", "gaussian_highpass", "gaussian_kernel1d", "gaussian_kernel2d",
           "high_frequency_l1", "high_pass", "highpass_fft_l1", "l1_loss", "patch_variance", "psnr",
           "rgb_to_luminance", "scharr_gradients"]

