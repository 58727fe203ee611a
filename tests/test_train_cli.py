"""The training commands end to end: prepare -> train (stopped, resumed) -> export -> evaluate -> finetune."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

import lua_core  # noqa: E402
from lua_core.__main__ import main  # noqa: E402
from lua_core.checkpoints import read_metadata  # noqa: E402
from lua_core.train.synthetic import save_tiny_vae, save_tiny_vae_ldm, write_synthetic_images  # noqa: E402

RUN = ["--model-config", "tiny", "--workers", "0", "--no-tensorboard", "--quiet", "--log-every", "1"]


def test_commands_are_listed(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("prepare", "train", "finetune", "evaluate", "export"))


def test_full_run_from_images_to_a_checkpoint(tmp_path, capsys):
    vae = save_tiny_vae(tmp_path / "vae")
    write_synthetic_images(tmp_path / "img", 4, (40, 36))
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["prepare", str(tmp_path / "img"), str(data), "--vae", str(vae), "--crop", "32",
                 "--shard-size", "2", "--quiet"]) == 0
    assert "4 pairs from 4 images in 2 shard(s)" in capsys.readouterr().out

    args = ["train", str(data), str(run), "--stages", "1", "--steps", "4", "--batch-size", "2", *RUN]
    assert main([*args, "--stop-at", "2"]) == 0
    assert "stopped at step 2" in capsys.readouterr().out
    assert (run / "stage1" / "checkpoints" / "step_00000002.pt").is_file()
    assert not (run / "stage1" / "final.safetensors").exists()
    # resuming with another model config or seed is refused, not silently done with the checkpoint's
    assert main([*args[:-len(RUN)], "--model-config", "released", *RUN[2:]]) == 1
    assert "another model config" in capsys.readouterr().err
    assert main([*args, "--seed", "7"]) == 1
    assert "--seed 0, not 7" in capsys.readouterr().err
    assert main(args) == 0  # resumes stage 1 at step 2 and finishes it
    assert f"wrote {run / 'lua.safetensors'}" in capsys.readouterr().out
    # stage 2 on its own starts from stage 1's result (with lr 0 it keeps those weights exactly)
    assert main(["train", str(data), str(run), "--stages", "2", "--steps", "2", "--batch-size", "2", "--lr", "0",
                 *RUN]) == 0
    s1 = lua_core.load_model(run / "stage1" / "final.safetensors").state_dict()
    s2 = lua_core.load_model(run / "stage2" / "final.safetensors").state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    meta = read_metadata(run / "lua.safetensors")
    assert meta["training_stage"] == "2" and meta["training_step"] == "2" and meta["trained_for_vae"] == "vae"
    model = lua_core.load_model(run / "lua.safetensors")
    assert lua_core.upscale_latent(model, torch.randn(1, 4, 8, 8), 4).shape == (1, 4, 32, 32)

    ckpt = sorted((run / "stage2" / "checkpoints").glob("step_*.pt"))[-1]
    assert main(["export", str(ckpt), str(tmp_path / "exported.safetensors")]) == 0
    assert read_metadata(tmp_path / "exported.safetensors")["weights"] == "ema"

    assert main(["evaluate", str(data), "--model", str(run / "lua.safetensors"), "--no-lpips"]) == 0
    table = capsys.readouterr().out
    assert "bicubic latent" in table and "VAE reconstruction" in table and "x4" in table

    # cross-VAE: a 16-channel VAE's latents, stage-1 fine-tuning of the trained model
    ae = save_tiny_vae_ldm(tmp_path / "ae.safetensors", 16, quant_conv=False)
    data16 = tmp_path / "data16"
    assert main(["prepare", str(tmp_path / "img"), str(data16), "--vae", str(ae), "--latent-format", "flux",
                 "--crop", "32", "--no-pixels", "--quiet"]) == 0
    out = tmp_path / "lua_flux.safetensors"
    assert main(["finetune", str(run / "lua.safetensors"), str(data16), str(tmp_path / "ft"), "--steps", "2",
                 "--batch-size", "2", "--freeze-trunk", "--out", str(out), *RUN[2:]]) == 0
    meta = read_metadata(out)
    assert meta["latent_format"] == "flux" and meta["trunk_frozen"] == "true"
    assert lua_core.load_model(out).latent_channels == 16


def test_impossible_run_settings_are_refused(tmp_path, capsys):
    from lua_core.train.curriculum import paper_stage
    from lua_core.train.trainer import TrainOptions

    with pytest.raises(ValueError, match="grad_clip must be a positive"):
        paper_stage(1, grad_clip=-1.0)
    for bad in (dict(log_every=0), dict(save_every=0)):
        with pytest.raises(ValueError, match="must be at least 1 step"):
            TrainOptions(**bad)
    prepare = ["prepare", str(tmp_path), str(tmp_path / "o"), "--vae", str(tmp_path / "vae")]
    for command in (["train", str(tmp_path), str(tmp_path / "run")], prepare):
        assert main([*command, "--device", "bogus"]) == 1
        err = capsys.readouterr().err
        assert "--device bogus cannot be used here" in err and "Traceback" not in err


def test_usage_errors_are_reported(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nothing"), str(tmp_path / "run"), *RUN]) == 1
    assert "prepare it first" in capsys.readouterr().err
    assert main(["train", str(tmp_path), str(tmp_path / "run"), "--stages", "4", *RUN]) == 1
    assert "unknown stage" in capsys.readouterr().err


def test_prepare_takes_every_image_format_and_its_aliases(tmp_path, capsys):
    """--latent-format takes every 2-D format name and the aliases users type; the channel count comes from the
    format and is checked against the VAE's; FLUX.2's packed LATENTs are refused with why."""
    import json

    write_synthetic_images(tmp_path / "img", 2, (40, 36))
    ae16 = save_tiny_vae_ldm(tmp_path / "ae16.safetensors", 16, quant_conv=False)
    for alias, name in (("qwen-image", "wan21"), ("z-image", "flux"), ("cogview4", "cogview4")):
        data = tmp_path / f"data_{name}"
        assert main(["prepare", str(tmp_path / "img"), str(data), "--vae", str(ae16), "--latent-format", alias,
                     "--crop", "32", "--no-pixels", "--quiet"]) == 0
        assert json.loads((data / "manifest.json").read_text())["vae"]["latent_format"] == name
    capsys.readouterr()
    assert main(["prepare", str(tmp_path / "img"), str(tmp_path / "x"), "--vae", str(ae16), "--latent-format",
                 "hunyuanimage21", "--crop", "32", "--quiet"]) == 1
    assert "'hunyuanimage21' has 64 channels but the VAE ae16.safetensors makes 16-channel" in capsys.readouterr().err
    ae32 = save_tiny_vae_ldm(tmp_path / "ae32.safetensors", 32, quant_conv=False)
    assert main(["prepare", str(tmp_path / "img"), str(tmp_path / "y"), "--vae", str(ae32), "--latent-format",
                 "klein", "--crop", "32", "--quiet"]) == 1
    assert "packed 2x2 into 128 channels" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prepare", str(tmp_path / "img"), str(tmp_path / "z"), "--vae", str(ae16), "--latent-format", "pixart"])
    assert "unknown latent_format 'pixart'" in capsys.readouterr().err
