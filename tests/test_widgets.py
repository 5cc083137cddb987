"""quantlab.widgets: the controls redraw with the new settings (ipywidgets 7.7 on Colab, 8 elsewhere)."""

import matplotlib
import torch

from quantlab import widgets

matplotlib.use("Agg")


def test_explorer_redraws_when_a_control_changes(capsys):
    weight = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    explorer = widgets.quantization_explorer(weight, bits=4, group_size=128)
    bits, grouping, method = explorer.children[:3]
    explorer.update()
    assert "4-bit zero-point (asymmetric), groups of 128" in capsys.readouterr().out
    bits.value, grouping.value, method.value = 3, "per channel", True
    assert "3-bit absmax (symmetric), per channel" in capsys.readouterr().out
