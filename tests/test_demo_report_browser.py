r"""The demo report (``captum-hetattn demo``) opened in headless Chromium: it renders (a non-blank
screenshot, every figure decoded), its embedded views draw their token elements, and the page
asks for nothing from the network and logs no script error."""

from __future__ import annotations

import pytest
import torch

from captum_hetattn.cli import run_demo


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from _browser import binaries

    if binaries() is None:  # skip before running the demo for nothing
        pytest.skip("the browser test of the demo report needs chromium and chromium-driver")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("demo")
    run_demo(out, n=8, n_show=1, seed=12345, with_ig=False)
    torch.set_num_threads(before)
    return out / "report.html"


def test_demo_report_renders_offline_with_its_views(report):
    from _browser import external, not_blank, start_browser

    browser = start_browser()
    try:
        requests = browser.open(report)
        assert requests and not external(requests), requests
        count = "return document.querySelectorAll(arguments[0]).length"
        # every figure is an inline PNG that decodes
        assert browser.script(count, "img") == 4  # example, image + text, curves, inspection
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
