"""The frozen VAE: diffusers folders and ComfyUI/ldm single files load offline to the same model."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from lua_core.train.synthetic import save_tiny_vae, save_tiny_vae_ldm  # noqa: E402
from lua_core.train.vae import load_vae  # noqa: E402


@pytest.fixture(scope="module")
def vaes(tmp_path_factory):
    d = tmp_path_factory.mktemp("vae")
    return {"folder": save_tiny_vae(d / "folder", seed=3),
            "ldm": save_tiny_vae_ldm(d / "ldm.safetensors", seed=3),
            "ldm_prefixed": save_tiny_vae_ldm(d / "full.safetensors", seed=3, prefix="first_stage_model."),
            "other_seed": save_tiny_vae(d / "other", seed=4)}


def images(n: int = 2, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_folder_vae_facts(vaes):
    vae = load_vae(vaes["folder"])
    assert (vae.latent_channels, vae.downscale) == (4, 2)
    assert vae.latent_format is None  # the tiny VAE's scaling factor matches no known space
    z = vae.encode(images())
    assert z.shape == (2, 4, 8, 8) and z.dtype == torch.float32
    info = vae.info()
    assert info["name"] == "folder" and info["latent_channels"] == 4


@pytest.mark.parametrize("kind", ["ldm", "ldm_prefixed"])
def test_ldm_single_file_is_the_same_model(vaes, kind):
    ref, single = load_vae(vaes["folder"]), load_vae(vaes[kind])
    x = images()
    z = ref.encode(x)
    assert torch.equal(single.encode(x), z)
    assert torch.equal(single.decode(z), ref.decode(z))
    # and the comparison can fail: another seed is another model
    assert not torch.equal(load_vae(vaes["other_seed"]).encode(x), z)


def test_flux_like_single_file_without_quant_convs(tmp_path):
    path = save_tiny_vae_ldm(tmp_path / "ae.safetensors", 16, quant_conv=False)
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        assert not any("quant_conv" in k for k in f.keys())
    vae = load_vae(path, latent_format="flux")
    assert vae.latent_channels == 16 and vae.latent_format == "flux"
    assert vae.vae.config.shift_factor == pytest.approx(0.1159)
    assert vae.encode(images()).shape == (2, 16, 8, 8)
    with pytest.raises(ValueError, match="4 channels"):
        load_vae(path, latent_format="sdxl")


def test_latent_format_guessed_from_a_diffusers_config(tmp_path):
    path = save_tiny_vae(tmp_path / "sdxl_like", 4, scaling_factor=0.13025)
    assert load_vae(path).latent_format == "sdxl"


def test_decode_is_differentiable_and_the_vae_frozen(vaes):
    vae = load_vae(vaes["folder"])
    z = vae.encode(images()).requires_grad_(True)
    vae.decode(z).square().mean().backward()
    assert z.grad is not None and float(z.grad.abs().sum()) > 0
    assert all(p.grad is None and not p.requires_grad for p in vae.parameters())
    vae.train()
    assert not vae.vae.training  # stays in eval mode


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_vae(tmp_path / "nope.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        load_vae(tmp_path / "empty")
    from safetensors.torch import save_file
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a VAE"):
        load_vae(tmp_path / "x.safetensors")


def test_guess_latent_format_from_a_vae_config():
    """The two numbers of a diffusers AutoencoderKL config name a format only when exactly one fits; FLUX.2
    and Wan 2.1 LATENTs are never a VAE's scaled latent (packed / per-channel), so they are never guessed."""
    from lua_core.train.vae import guess_latent_format

    assert guess_latent_format(16, 0.3611, 0.1159) == "flux"
    assert guess_latent_format(16, 1.5305, 0.0609) == "sd3"
    assert guess_latent_format(4, 0.13025, None) == "sdxl" and guess_latent_format(4, 0.18215, 0.0) == "sd15"
    assert guess_latent_format(16, 1.0, 0.0) == "cogview4", "not wan21, whose statistics are per channel"
    assert guess_latent_format(64, 0.75289, None) == "hunyuanimage21"
    assert guess_latent_format(32, 1.0, 0.0) is None and guess_latent_format(16, None, None) is None
