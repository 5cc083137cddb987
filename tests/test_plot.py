"""quantlab.plot.save_for_slides: a PNG of the expected size, written atomically."""

import os
import struct
from pathlib import Path

import matplotlib
import pytest
from matplotlib.figure import Figure

from quantlab import plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) in pixels, read from the PNG's IHDR chunk."""
    header = path.read_bytes()[:24]
    assert header[:8] == PNG_SIGNATURE, "not a PNG file"
    assert header[12:16] == b"IHDR"
    return struct.unpack(">II", header[16:24])


def full_frame_figure(width: float, height: float) -> Figure:
    """A figure whose content (one axes, no ticks) fills it exactly, so the tight box is the whole figure."""
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.plot([0, 1], [0, 1])
    ax.set_axis_off()
    return fig


def test_writes_a_png_of_the_expected_size(tmp_path):
    folder = tmp_path / "figures"  # does not exist yet
    path = plot.save_for_slides(full_frame_figure(4, 3), "02_error_vs_bits", folder=folder)
    assert path == folder / "02_error_vs_bits.png"
    pad = matplotlib.rcParams["savefig.pad_inches"]  # the tight box is padded by this much on every side
    width, height = png_size(path)
    assert width == pytest.approx((4 + 2 * pad) * 200, abs=1)  # dpi 200 by default
    assert height == pytest.approx((3 + 2 * pad) * 200, abs=1)


def test_dpi_and_an_explicit_suffix(tmp_path):
    path = plot.save_for_slides(full_frame_figure(2, 1), "small.png", folder=tmp_path, dpi=50)
    assert path.name == "small.png"
    pad = matplotlib.rcParams["savefig.pad_inches"]
    assert png_size(path) == pytest.approx(((2 + 2 * pad) * 50, (1 + 2 * pad) * 50), abs=1)


def test_replaces_an_existing_file_atomically(tmp_path, monkeypatch):
    target = tmp_path / "fig.png"
    target.write_bytes(b"the previous version")
    replaced = []

    def spy_replace(src, dst):
        assert png_size(Path(src))  # complete before it is moved into place
        replaced.append((os.fspath(src), os.fspath(dst)))
        return real_replace(src, dst)

    real_replace = os.replace
    monkeypatch.setattr(plot.os, "replace", spy_replace)
    path = plot.save_for_slides(full_frame_figure(2, 2), "fig", folder=tmp_path)

    assert png_size(path)
    [(src, dst)] = replaced
    assert dst == os.fspath(target) and os.path.dirname(src) == os.fspath(tmp_path)  # same folder, one rename
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]  # no temporary file left


def test_a_failed_save_keeps_the_previous_file(tmp_path):
    target = tmp_path / "fig.png"
    target.write_bytes(b"the previous version")
    fig = full_frame_figure(2, 2)

    def broken_savefig(fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(PNG_SIGNATURE)  # half a file, then the renderer fails
        raise RuntimeError("renderer failed")

    fig.savefig = broken_savefig
    with pytest.raises(RuntimeError, match="renderer failed"):
        plot.save_for_slides(fig, "fig", folder=tmp_path)
    assert target.read_bytes() == b"the previous version"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]
