"""FCMAE pretraining (``eosfed pretrain``) on real EuroSAT tiles, labels ignored: the mask, the loss on masked
patches only, the written encoder as a specialist's ``--init-weights``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eosfed.cli import main
from geodata.readers.eurosat import build_eurosat_manifest
from specialists.encoder import build_encoder
from specialists.fcmae import Fcmae, random_patch_mask
from specialists.init import load_encoder_weights
from fusion_toys import TOLERANCE_NM


def test_mask_covers_the_ratio_in_whole_patches() -> None:
    mask = random_patch_mask(3, 32, 32, 8, 0.75, torch.Generator().manual_seed(0))
    assert mask.shape == (3, 1, 32, 32) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert torch.allclose(mask.mean((1, 2, 3)), torch.full((3,), 12 / 16))
    assert torch.equal(mask[:, :, ::8, ::8].repeat_interleave(8, 2).repeat_interleave(8, 3), mask)
    with pytest.raises(ValueError, match="multiple of the 8 px"):
        random_patch_mask(1, 30, 32, 8, 0.5, torch.Generator())


def test_encoder_sees_visible_pixels_only_and_the_loss_targets_masked_ones() -> None:
    torch.manual_seed(0)
    model = Fcmae(build_encoder(in_chans=4), 4, 8).eval()
    x = torch.randn(2, 4, 32, 32)
    mask = random_patch_mask(2, 32, 32, 8, 0.5, torch.Generator().manual_seed(1))
    with torch.no_grad():
        # What the encoder sees does not depend on masked pixels ...
        assert torch.equal(model._encode(x, mask), model._encode(x + 9 * mask * torch.randn_like(x), mask))
        # ... while the masked pixels are what the loss asks it to reconstruct.
        before = model.loss(x, mask)
        assert torch.isfinite(before) and not torch.allclose(before, model.loss(x + mask * torch.randn_like(x), mask))


def test_pretrain_command_on_real_tiles(shared_data: Path, tmp_path: Path) -> None:
    manifest = build_eurosat_manifest(shared_data / "eurosat-ms", tmp_path / "eurosat", train_per_class=2,
                                      val_per_class=1)
    out = tmp_path / "fcmae"
    argv = ["pretrain", "--manifest", str(tmp_path / "eurosat" / "manifest.json"), "--sensor", "sentinel2_l1c",
            "--out", str(out), "--epochs", "2", "--batch-size", "8", "--patch", "16"]
    assert main(argv) == 0
    record = json.loads((out / "pretrain.json").read_text())
    assert record["tiles"] == len(manifest.select(split="train")) == 20 and len(record["loss"]) == 2
    assert all(torch.isfinite(torch.tensor(record["loss"])))
    # The weights start a specialist: the encoder loads them strictly, every tensor equal.
    encoder = build_encoder(in_chans=len(record["bands"]))
    load_encoder_weights(encoder, out / "weights.safetensors", record["bands"], tolerance_nm=TOLERANCE_NM)
    saved = load_file(str(out / "weights.safetensors"))
    assert all(torch.equal(v, saved[k]) for k, v in encoder.state_dict().items())
    assert main(argv) == 2  # an existing output is refused without --overwrite
