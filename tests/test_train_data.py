"""prepare: crops, bicubic pairs, latents, shards; deterministic and resumable. Reading them back."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from safetensors.torch import load_file  # noqa: E402

from lua_core.train.data import Crop, PrepareConfig, load_crop, make_lr, prepare, read_manifest, to_unit  # noqa: E402
from lua_core.train.dataset import BatchOrder, LatentPairs, epoch_permutation  # noqa: E402
from lua_core.train.synthetic import save_tiny_vae, synthetic_image, write_synthetic_images  # noqa: E402
from lua_core.train.vae import load_vae  # noqa: E402

CFG = PrepareConfig(crop=32, crops_per_image=2, shard_size=4, latent_dtype="fp32")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    vae = load_vae(save_tiny_vae(root / "vae"))
    write_synthetic_images(root / "img", 6, (48, 40))
    synthetic_image((20, 20), 99).save(root / "img" / "small.png")  # too small for a 32 px crop
    (root / "img" / "broken.png").write_bytes(b"not an image")
    data = root / "out"
    manifest = prepare(root / "img", data, vae, CFG, progress=False)
    return {"root": root, "vae": vae, "data": data, "manifest": manifest}


def shards(folder):
    return {p.name: load_file(str(p)) for p in sorted(folder.glob("shard_*.safetensors"))}


def test_manifest_and_shapes(env):
    m = env["manifest"]
    assert m["complete"] and m["num_images"] == 6 and m["num_items"] == 12
    assert m["skipped"] == {"too_small": 1, "unreadable": 1}
    assert (m["latent_channels"], m["downscale"], m["hr_latent_size"]) == (4, 2, 16)
    assert m["lr_latent_sizes"] == {"2": 8, "4": 4}
    assert [s["count"] for s in m["shards"]] == [4, 4, 4]
    s = shards(env["data"])["shard_00000.safetensors"]
    assert s["hr"].shape == (4, 4, 16, 16) and s["lr_x2"].shape == (4, 4, 8, 8) and s["lr_x4"].shape == (4, 4, 4, 4)
    assert s["hr_pixels"].shape == (4, 3, 32, 32) and s["hr_pixels"].dtype == torch.uint8


def test_pairs_are_the_crop_its_bicubic_versions_and_their_latents(env):
    from PIL import Image
    plan = json.loads((env["data"] / "plan.json").read_text())
    first_image = plan["images"][0][0]
    import random
    rng = random.Random(f"{CFG.seed}:{first_image}:0")
    x, y = rng.randrange(48 - 32 + 1), rng.randrange(40 - 32 + 1)
    ref = np.asarray(Image.open(env["root"] / "img" / first_image).convert("RGB"))[y:y + 32, x:x + 32]
    s = shards(env["data"])["shard_00000.safetensors"]
    assert np.array_equal(s["hr_pixels"][0].permute(1, 2, 0).numpy(), ref)
    hr = to_unit(s["hr_pixels"][:2])
    vae = env["vae"]
    torch.testing.assert_close(s["hr"][:2], vae.encode(hr), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s["lr_x2"][:2], vae.encode(make_lr(hr, 2)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s["lr_x4"][:2], vae.encode(make_lr(hr, 4)), rtol=1e-5, atol=1e-5)


def test_make_lr_is_antialiased_bicubic_and_in_range():
    hr = torch.rand(1, 3, 16, 16) * 2 - 1
    lr = make_lr(hr, 4)
    assert lr.shape == (1, 3, 4, 4) and lr.abs().max() <= 1
    flat = torch.full((1, 3, 16, 16), 0.4)
    torch.testing.assert_close(make_lr(flat, 2), torch.full((1, 3, 8, 8), 0.4))
    with pytest.raises(ValueError, match="divisible"):
        make_lr(torch.zeros(1, 3, 10, 10), 4)


def test_deterministic_for_a_seed_and_different_for_another(env, tmp_path):
    again = prepare(env["root"] / "img", tmp_path / "a", env["vae"], CFG, progress=False)
    assert again["plan"] == env["manifest"]["plan"]
    a, b = shards(env["data"]), shards(tmp_path / "a")
    assert all(torch.equal(a[f][k], b[f][k]) for f in a for k in a[f])
    other = PrepareConfig(**{**CFG.__dict__, "seed": 1})
    prepare(env["root"] / "img", tmp_path / "b", env["vae"], other, progress=False)
    c = shards(tmp_path / "b")
    assert not torch.equal(a["shard_00000.safetensors"]["hr_pixels"], c["shard_00000.safetensors"]["hr_pixels"])


def test_resume_redoes_only_missing_shards(env, tmp_path):
    data = tmp_path / "copy"
    shutil.copytree(env["data"], data)
    before = shards(data)
    (data / "shard_00001.safetensors").unlink()
    m = json.loads((data / "manifest.json").read_text())
    m["complete"] = False
    (data / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="partly prepared"):
        read_manifest(data)
    mtimes = {p.name: p.stat().st_mtime_ns for p in data.glob("shard_*.safetensors")}
    prepare(env["root"] / "img", data, env["vae"], CFG, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in data.glob("shard_*.safetensors")
            if p.name in mtimes} == mtimes  # untouched
    after = shards(data)
    assert all(torch.equal(before[f][k], after[f][k]) for f in before for k in before[f])
    assert read_manifest(data)["num_items"] == 12


def test_resume_refuses_other_settings(env, tmp_path):
    data = tmp_path / "copy"
    shutil.copytree(env["data"], data)
    with pytest.raises(ValueError, match="other settings"):
        prepare(env["root"] / "img", data, env["vae"], PrepareConfig(crop=16, shard_size=4), progress=False)


def test_crop_must_fit_vae_and_scales(env, tmp_path):
    with pytest.raises(ValueError, match="multiple of 8"):
        prepare(env["root"] / "img", tmp_path / "x", env["vae"], PrepareConfig(crop=36), progress=False)


@pytest.mark.parametrize("bad", [dict(crop=0), dict(crop=-32), dict(scales=(0,)), dict(scales=()),
                                 dict(crops_per_image=0), dict(shard_size=0)])
def test_impossible_settings_are_refused(bad):
    with pytest.raises(ValueError, match="must be"):
        PrepareConfig(**bad)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    """Pillow's convert('RGB') clips 16-bit grey at 255 (a near-white crop, silently)."""
    from PIL import Image

    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    got = load_crop(tmp_path, Crop("g16.png", 0, 0), 32)
    expect = torch.from_numpy(np.round(ramp / 257.0).astype(np.uint8))
    assert got.shape == (3, 32, 32) and torch.equal(got[0], expect) and torch.equal(got[1], got[2])
    Image.fromarray(ramp.astype(np.int32) * 1000, mode="I").save(tmp_path / "i32.tiff")
    with pytest.raises(ValueError, match="32-bit integer"):
        load_crop(tmp_path, Crop("i32.tiff", 0, 0), 32)


def test_dataset_reads_rows_in_the_order_asked(env):
    data = LatentPairs(env["data"])
    assert len(data) == 12 and data.scales == (2, 4) and data.latent_channels == 4
    s = shards(env["data"])
    rows = data.read([5, 0, 11], data.fields(pixels=True))
    torch.testing.assert_close(rows["hr"][0], s["shard_00001.safetensors"]["hr"][1])
    torch.testing.assert_close(rows["lr_x4"][2], s["shard_00002.safetensors"]["lr_x4"][3])
    assert torch.equal(rows["hr_pixels"][1], s["shard_00000.safetensors"]["hr_pixels"][0])


def test_batch_order_is_a_function_of_seed_and_batch_number():
    perm = epoch_permutation(12, seed=3, epoch=0)
    assert sorted(perm.tolist()) == list(range(12))
    assert not torch.equal(perm, epoch_permutation(12, seed=3, epoch=1))
    full = BatchOrder(12, 4, seed=3)
    it = iter(full)
    first = [next(it) for _ in range(7)]  # crosses two epoch boundaries
    assert sorted(sum(first[:3], [])) == list(range(12))  # one epoch sees every row once
    resumed = iter(BatchOrder(12, 4, seed=3, start=4))
    assert [next(resumed) for _ in range(3)] == first[4:7]
    assert first[5] == full.batch(5)
    with pytest.raises(ValueError, match="larger than the data"):
        BatchOrder(3, 4, seed=0)


def test_no_pixels_data_refuses_pixel_fields(env, tmp_path):
    cfg = PrepareConfig(crop=32, shard_size=8, store_pixels=False)
    prepare(env["root"] / "img", tmp_path / "np", env["vae"], cfg, progress=False)
    data = LatentPairs(tmp_path / "np")
    assert "hr_pixels" not in load_file(str(tmp_path / "np" / "shard_00000.safetensors"))
    with pytest.raises(ValueError, match="without pixels"):
        data.fields(pixels=True)
    assert os.path.getsize(tmp_path / "np" / "shard_00000.safetensors") > 0
