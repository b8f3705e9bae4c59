r"""The demo report (``captum-hetattn demo``), written once for the module: self-contained (every
link and image inline), with the figures, views and method table it promises; and opened in
headless Chromium: it renders (a non-blank screenshot, every figure decoded), its embedded views
draw their token elements, and the page asks for nothing from the network and logs no script
error."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from captum_hetattn.cli import run_demo
from captum_hetattn.evaluation import standard_methods

#: per example shown: the methods' overlays and ours as image + text; the curves; the yes/no
#: contrast maps (logical inspection)
FIGURES = ["example_0.png", "example_0_image_text.png", "example_1.png",
           "example_1_image_text.png", "logical_inspection.png", "perturbation_curves.png"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory, one_thread):
    r"""``run_demo`` once (40 examples, 2 shown, IntegratedGradients too): ``(folder, metrics,
    printed)``."""
    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        metrics = run_demo(out, n=40, n_show=2, seed=12345)
    return out, metrics, printed.getvalue()


def test_demo_writes_a_self_contained_report(demo):
    out, metrics, printed = demo
    html = (out / "report.html").read_text()
    for attribute in ("src=", "href="):
        for part in html.split(attribute)[1:]:
            value = part[1:].split(part[0])[0]
            assert value.startswith("data:") or value.startswith("#"), value
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures == FIGURES
    assert html.count("data:image/png;base64,") == len(figures)
    assert "Contrast(yes, no)" in html and 'alt="logical inspection"' in html
    assert html.count('alt="example 0: image and text"') == 1
    # the readout token ([CLS]) is greyed in every text row rather than swamping it
    text_rows = html.count("</td><td class='name'><span")
    assert text_rows >= 2 * 5 and html.count('class="readout"') == text_rows
    # head view, model view and relevance flow of one example, inline with distinct ids
    assert [html.count(f'data-hetattn-view="{kind}"') for kind in ("head", "model", "flow")] \
        == [1, 1, 1]
    saved = json.loads((out / "metrics.json").read_text())
    methods = {entry["method"] for entry in saved["evaluation"]["methods"]}
    assert methods == set(standard_methods()) == set(metrics["methods"])
    assert "ours (pos)" in printed


def test_demo_report_renders_offline_with_its_views(demo):
    from _browser import binaries, external, not_blank, start_browser

    if binaries() is None:
        pytest.skip("the browser test of the demo report needs chromium and chromium-driver")
    report = demo[0] / "report.html"
    browser = start_browser()
    try:
        requests = browser.open(report)
        assert requests and not external(requests), requests
        count = "return document.querySelectorAll(arguments[0]).length"
        # every figure is an inline PNG that decodes
        assert browser.script(count, "img") == len(FIGURES)
        assert browser.script(
            "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert browser.script(count, "img[alt='logical inspection']") == 1
        # the three views, each drawn into its own element
        kinds = browser.script("return Array.from(document.querySelectorAll("
                               "'[data-hetattn-view]')).map(e => e.dataset.hetattnView)")
        assert kinds == ["head", "model", "flow"]
        assert browser.script("return Array.from(document.querySelectorAll("
                              "'[data-hetattn-view]')).every(e => e.childElementCount > 0)")
        ids = browser.script("return Array.from(document.querySelectorAll('[id]')).map(e => e.id)")
        assert len(ids) == len(set(ids)), ids
        head = "[data-hetattn-view='head'] text.hv-token"
        assert browser.script(count, head) >= 10  # the question's tokens (and more)
        labels = browser.script(
            "return Array.from(document.querySelectorAll(arguments[0])).map(t => t.textContent)",
            head)
        assert any(label.startswith("[CLS]") for label in labels), labels  # (+ its tooltip)
        assert browser.script(count, "[data-hetattn-view='model'] canvas.mv-thumb") > 0
        assert browser.script(count, "[data-hetattn-view='flow'] rect.rf-bar") > 0
        # the readout token is greyed in the text rows
        assert browser.script(count, "span.readout") >= 1
        assert not_blank(browser.screenshot())
        assert not_blank(browser.screenshot("[data-hetattn-view='head']"))
        assert browser.console_errors() == []
        assert not external(browser.requests())
    finally:
        browser.quit()
