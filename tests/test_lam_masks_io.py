"""Saved masks round-trip through .npz without pickles, and `lamflow viz-masks` renders them as PNGs."""
import numpy as np
import pytest
import torch
from PIL import Image

from lamflow.errors import DataFileError
from lamflow.cli import main
from lamflow.lam import LAMConfig, LAMEncoder, load_masks, render_masks, save_masks

SEGMENTS = [("text", 0, 4), ("video", 4, 10), ("audio", 10, 14)]


def encoder_masks(mask_per_head=False):
    torch.manual_seed(0)
    cfg = LAMConfig(dim=16, depth=3, heads=2, max_len=16, mask="multi", attention="eager", mask_per_head=mask_per_head)
    encoder = LAMEncoder(cfg).eval()
    with torch.no_grad():
        for p in encoder.generators.parameters():
            p.normal_(0.0, 0.3)
        pad = torch.zeros(2, 14, dtype=torch.bool)
        pad[1, 2:4] = True  # a short text block in sample 1
        return encoder(torch.randn(2, 14, 16), pad, return_masks=True).masks, pad


def test_save_and_load_round_trip(tmp_path):
    masks, pad = encoder_masks()
    path = save_masks(tmp_path / "masks.npz", masks, SEGMENTS, pad)
    saved = load_masks(path)
    assert saved.masks.shape == (2, 3, 14, 14)
    np.testing.assert_allclose(saved.masks[1, 2], masks[2][1].numpy())
    assert saved.segments == SEGMENTS
    assert saved.padding[1].tolist() == pad[1].tolist()


def test_loading_never_unpickles(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, masks=np.zeros((1, 1, 2, 2)), segment_names=np.array([object()]), segment_bounds=np.zeros((1, 2)),
             padding=np.zeros((1, 2), bool))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_masks(path)


def test_loading_a_foreign_npz_names_the_missing_arrays(tmp_path):
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(ValueError, match=r"lacks array\(s\) \['masks'"):
        load_masks(tmp_path / "other.npz")


def test_viz_masks_cli_writes_one_png_per_layer(tmp_path, capsys):
    masks, pad = encoder_masks()
    path = save_masks(tmp_path / "masks.npz", masks, SEGMENTS, pad)
    assert main(["viz-masks", str(path), "--out", str(tmp_path / "png"), "--sample", "1"]) == 0
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert [p.name for p in pngs] == ["layer_00.png", "layer_01.png", "layer_02.png"]
    assert capsys.readouterr().out.split() == [str(p) for p in pngs]
    with Image.open(pngs[0]) as image:
        assert image.width > 200 and image.height > 200


def test_render_selected_layers_of_per_head_masks(tmp_path):
    masks, pad = encoder_masks(mask_per_head=True)
    path = save_masks(tmp_path / "masks.npz", masks, SEGMENTS, pad)
    assert load_masks(path).masks.shape == (2, 3, 2, 14, 14)
    paths = render_masks(path, tmp_path / "png", layers=[2])
    assert [p.name for p in paths] == ["layer_02.png"]


def test_render_rejects_out_of_range_sample_and_layer(tmp_path):
    masks, pad = encoder_masks()
    path = save_masks(tmp_path / "masks.npz", masks, SEGMENTS, pad)
    with pytest.raises(DataFileError, match=r"--sample 5 is out of range: the file holds samples 0\.\.1"):
        render_masks(path, tmp_path, sample=5)
    with pytest.raises(DataFileError, match=r"--layers \[3\] are out of range"):
        render_masks(path, tmp_path, layers=[3])


def test_save_rejects_segments_outside_the_mask(tmp_path):
    masks, pad = encoder_masks()
    with pytest.raises(ValueError, match="segment 'audio'"):
        save_masks(tmp_path / "m.npz", masks, [("audio", 10, 20)], pad)


def write_npz(path, masks, names, bounds, padding):
    np.savez(path, masks=masks, segment_names=np.array(names), segment_bounds=np.array(bounds), padding=padding)
    return path


@pytest.mark.parametrize("names, bounds, padding, fragment", [
    (["text", "video"], [[0, 2], [2, 9]], np.zeros((1, 4), bool), "segment 'video' [2, 9) lies outside the mask length 4"),
    (["text", "video"], [[0, 2]], np.zeros((1, 4), bool), "one [start, end) pair per segment name (2 names)"),
    (["text"], [[0, 4]], np.zeros((1, 6), bool), "padding has shape (1, 6), expected (1, 4)"),
], ids=["segment outside the mask", "a segment without bounds", "padding of another length"])
def test_viz_masks_refuses_a_file_whose_segments_or_padding_do_not_fit_the_masks(tmp_path, capsys, names, bounds,
                                                                              padding, fragment):
    path = write_npz(tmp_path / "bad.npz", np.ones((1, 1, 4, 4), np.float32), names, bounds, padding)
    assert main(["viz-masks", str(path), "--out", str(tmp_path / "png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lamflow viz-masks: error: {path}: ") and fragment in err and err.count("\n") == 1
    assert not (tmp_path / "png").exists()  # refused before anything is drawn
