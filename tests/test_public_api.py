"""The public API survives the house rebuild: every name and every old import path still works."""

import importlib
import subprocess
import sys
import warnings

import pytest

import captum_hetattn

#: captum_hetattn.__all__ before the rebuild (round 3)
ROUND_3_NAMES = [
    "AttentionNode", "AttentionRollout", "AudioFrames", "CallMaps", "Contrast", "Explanation",
    "FlowShare", "GenericAttentionExplainability", "HeterogenousAttentionAttribution", "Junction",
    "NoAttribution", "PatchGrid", "Ratio", "RawAttention", "RelativeContrast", "Tokens",
    "to_heatmap", "AttentionRecord", "AttentionRecorder", "BoundNode", "BoundRecording",
    "LayerGraph", "Stream", "__version__", "bind_records", "generation_targets", "graph_for",
    "infer_graph", "preset", "register_preset",
]

#: old module -> (names it gave, the module they live in now)
MOVED_MODULES = {
    "captum_hetattn.attribution": (
        ["HeterogenousAttentionAttribution", "GenericAttentionExplainability",
         "AttentionRollout", "RawAttention", "Explanation", "CallMaps", "FlowShare",
         "generation_targets"], "captum_hetattn"),
    "captum_hetattn.infer": (["infer_graph", "graph_from_flow", "is_causal"],
                             "captum_hetattn.graph.inference"),
    "captum_hetattn.dataflow": (["DataFlow", "analyse"], "captum_hetattn.binding.dataflow"),
    "captum_hetattn.layouts": (["canonicalise", "TokenLayout"], "captum_hetattn.binding"
                               ".layouts"),
    "captum_hetattn.presets": (["preset", "graph_for", "register_preset", "PRESETS"],
                               "captum_hetattn.graph.presets"),
    "captum_hetattn.values": (["ValueWatcher", "value_terms"], "captum_hetattn.engine.values"),
    "captum_hetattn.flash": (["FlashAttention", "attention_map"],
                             "captum_hetattn.capture.backends.flash"),
    "captum_hetattn.views": (["head_view", "model_view", "neuron_view", "relevance_flow", "View"],
                             "captum_hetattn.visualization.views"),
}


def test_importing_the_package_warns_about_nothing():
    # a fresh interpreter: this one already imported the package
    check = "import captum_hetattn, captum_hetattn.evaluation, captum_hetattn.visualization"
    subprocess.run([sys.executable, "-W", "error", "-c", check], check=True)


@pytest.mark.parametrize("name", ROUND_3_NAMES)
def test_every_round_3_name_still_imports_from_the_package(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert getattr(captum_hetattn, name) is not None


@pytest.mark.parametrize("name", ["BoundNode", "BoundRecording", "bind_records"])
def test_binding_internals_warn_and_name_their_new_home(name):
    captum_hetattn.__dict__.pop(name, None)  # a cached earlier lookup does not warn again
    with pytest.warns(DeprecationWarning, match=f"captum_hetattn.{name} .*import it from"):
        value = getattr(captum_hetattn, name)
    home = "captum_hetattn.graph" if name == "BoundNode" else "captum_hetattn.binding"
    assert value is getattr(importlib.import_module(home), name)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        captum_hetattn.nothing_here  # noqa: B018


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_old_module_paths_warn_and_give_the_same_objects(old):
    names, new = MOVED_MODULES[old]
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match="moved"):
        module = importlib.import_module(old)
    target = importlib.import_module(new)
    for name in names:
        assert getattr(module, name) is getattr(target, name), f"{old}.{name}"


def test_no_module_of_the_package_imports_a_deprecated_alias():
    import ast
    from pathlib import Path

    package = Path(captum_hetattn.__file__).parent
    aliases = set(MOVED_MODULES)
    for path in package.rglob("*.py"):
        module = "captum_hetattn." + ".".join(path.relative_to(package).with_suffix("").parts)
        if module.removesuffix(".__init__") in aliases:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in aliases:
                raise AssertionError(f"{path} imports the deprecated {node.module}")
