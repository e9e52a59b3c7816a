"""Model loading through the real from_pretrained path, on tiny models saved to disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import seeded

from poseguide.models import (
    TINY_SD,
    ModelNotFoundError,
    build_controlnet,
    encode_prompts,
    load_sd_parts,
    resolve_pretrained,
)


def test_tiny_pipeline_is_an_sd_folder(tiny_sd: str) -> None:
    folder = Path(tiny_sd)
    for sub in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / sub).is_dir(), sub
    assert list(folder.rglob("*.safetensors")), "weights must be safetensors"
    assert resolve_pretrained(TINY_SD) == tiny_sd  # built once, reused


def test_parts_are_frozen_and_read_from_configs(tiny_sd: str) -> None:
    parts = load_sd_parts(tiny_sd)
    for module in (parts.vae, parts.unet, parts.text_encoder):
        assert not any(p.requires_grad for p in module.parameters())
        assert not module.training
    assert parts.scheduler.config.prediction_type == "epsilon"
    assert parts.scheduler.config.num_train_timesteps == 1000
    emb = encode_prompts(parts, ["a person standing on grass", ""])
    assert emb.shape == (2, 77, parts.unet.config.cross_attention_dim)
    assert not torch.allclose(emb[0], emb[1])


def test_controlnet_from_unet_copies_the_encoder(tiny_sd: str) -> None:
    parts = load_sd_parts(tiny_sd)
    with seeded(0):
        controlnet = build_controlnet(parts.unet)
    assert controlnet.dtype == torch.float32 and controlnet.training
    assert all(p.requires_grad for p in controlnet.parameters())
    unet_state = parts.unet.state_dict()
    for name, tensor in controlnet.state_dict().items():
        if name.startswith(("down_blocks", "mid_block", "conv_in", "time_embedding")):
            assert torch.equal(tensor, unet_state[name]), name
    # zero convolutions start at zero: an untrained ControlNet does not change the UNet.
    assert all(
        float(p.detach().abs().sum()) == 0 for p in controlnet.controlnet_down_blocks.parameters()
    )


def test_controlnet_round_trips_through_save_pretrained(tiny_sd: str, tmp_path: Path) -> None:
    parts = load_sd_parts(tiny_sd)
    with seeded(0):
        controlnet = build_controlnet(parts.unet)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in controlnet.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.01)
    controlnet.save_pretrained(tmp_path / "cn", safe_serialization=True)
    loaded = build_controlnet(parts.unet, init=str(tmp_path / "cn"))
    for (name, a), b in zip(
        controlnet.state_dict().items(), loaded.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    "name", ["stable-diffusion-v1-5/stable-diffusion-v1-5", "lllyasviel/sd-controlnet-openpose"]
)
def test_unreachable_hub_id_fails_fast_with_a_howto(name: str, no_network: list[str]) -> None:
    with pytest.raises(ModelNotFoundError, match="pass the folder instead of the id") as info:
        resolve_pretrained(name)
    assert no_network == []  # offline (HF_HUB_OFFLINE=1): not even a connection attempt
    assert name in str(info.value) and "hf download" in str(info.value)


def test_unreachable_hub_id_fails_fast_even_when_not_marked_offline(
    monkeypatch: pytest.MonkeyPatch, no_network: list[str], online: None
) -> None:
    # No HF_HUB_OFFLINE, but the hub endpoint is unreachable (a closed local port; no_network
    # refuses the connection as that port would, and records it).
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    with pytest.raises(ModelNotFoundError, match="could not be fetched"):
        resolve_pretrained("someone/some-model")
    # Fast means no retries (each with a back-off sleep): huggingface_hub 2.4 tries the closed
    # port twice; a retry loop (its http_backoff: 5 retries) would try it 6 times. Nothing else
    # is contacted.
    assert 1 <= len(no_network) <= 3, no_network
    assert all("127.0.0.1', 9)" in attempt for attempt in no_network), no_network


def test_a_file_or_a_broken_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        resolve_pretrained(str(tmp_path / "weights.bin"))
    with pytest.raises(ModelNotFoundError, match="must be a diffusers pipeline folder"):
        load_sd_parts(str(tmp_path))


def test_the_fp32_unet_for_an_untrained_controlnet_honours_the_variant(
    tiny_sd: str, tmp_path: Path
) -> None:
    """Mixed precision: the untrained ControlNet is copied from an fp32 load of the same UNet,
    from the variant the run loads (here the only weights there are), not the default file."""
    import shutil

    from poseguide.models import untrained_controlnet

    folder = tmp_path / "sd"
    shutil.copytree(tiny_sd, folder)
    for weights in folder.glob("*/diffusion_pytorch_model.safetensors"):
        weights.rename(weights.with_name("diffusion_pytorch_model.ema.safetensors"))
    for weights in folder.glob("text_encoder/model.safetensors"):
        weights.rename(weights.with_name("model.ema.safetensors"))
    with torch.no_grad():  # the variant holds other weights than the default
        unet = load_sd_parts(tiny_sd).unet
        for p in unet.parameters():
            p.add_(0.5)
        unet.save_pretrained(folder / "unet", variant="ema")
    parts = load_sd_parts(str(folder), variant="ema", dtype=torch.bfloat16)
    controlnet = untrained_controlnet(parts, seed=0)
    assert controlnet.dtype == torch.float32
    expected = unet.state_dict()["conv_in.weight"]  # fp32, not rounded through bf16
    assert torch.equal(controlnet.state_dict()["conv_in.weight"], expected)
