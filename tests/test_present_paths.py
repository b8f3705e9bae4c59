"""The present rooms' old import paths (deprecated aliases, re-exports) and the one method table."""

import importlib
import subprocess
import sys
import warnings

import pytest


def test_views_alias_warns_and_reexports():
    from captum_hetattn.visualization import views

    sys.modules.pop("captum_hetattn.views", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module("captum_hetattn.views")
    assert any(issubclass(w.category, DeprecationWarning)
               and "captum_hetattn.visualization.views" in str(w.message) for w in caught)
    for name in ("View", "head_view", "model_view", "neuron_view", "relevance_flow"):
        assert getattr(old, name) is getattr(views, name)


def test_visualization_keeps_its_names_and_the_backend():
    code = (
        "import matplotlib; before = matplotlib.get_backend()\n"
        "import captum_hetattn.visualization as v\n"
        "names = ['draw_overlay', 'explanation_readout_token', 'figure_png', 'grid_heatmap',"
        " 'plot_contrast', 'plot_explanation', 'plot_image_text', 'png_tag', 'relevance_scale',"
        " 'report_html', 'text_html', 'token_colors', 'MAGNITUDE_CMAP', 'SIGNED_CMAP',"
        " 'READOUT_FACE', 'READOUT_TEXT', 'REPORT_STYLE']\n"
        "assert all(hasattr(v, n) for n in names)\n"
        "assert matplotlib.get_backend() == before, (before, matplotlib.get_backend())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bench_and_cli_entry_points():
    from captum_hetattn import bench, cli

    for name in ("SECTIONS", "TITLES", "TARGETS", "main", "run_benchmarks", "add_arguments",
                 "run_from_args", "machine", "median_times"):
        assert hasattr(bench, name), name
    assert callable(cli.main) and callable(cli.run_demo)


def test_one_method_table():
    from captum_hetattn.evaluation import (
        check_method_names,
        segmentation_methods,
        select_methods,
        standard_methods,
    )
    from captum_hetattn.evaluation.segmentation import METHOD_ORDER

    assert list(segmentation_methods()) == list(METHOD_ORDER)
    assert set(METHOD_ORDER) - {"ODAM"} <= set(standard_methods(False))
    assert list(select_methods(["rollout", "GAE"])) == ["rollout", "GAE"]
    assert list(select_methods(None, include_integrated_gradients=False)) == list(
        standard_methods(include_integrated_gradients=False))
    assert check_method_names(["GAE", "ours (pos)"]) is None
    assert "unknown method(s) ['nope']" in check_method_names(["nope"])
    with pytest.raises(ValueError, match="unknown method"):
        select_methods(["nope"])
