r"""Views (captum_hetattn.views): data checks without a browser, then every view saved to a file
and opened in headless Chromium (one session for the module): token elements, interaction,
a non-blank picture, no network request, no script error."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch

from captum_hetattn import CallMaps, Explanation, FlowShare, HeterogenousAttentionAttribution
from captum_hetattn.visualization.views import (
    View,
    head_view,
    model_view,
    neuron_view,
    relevance_flow,
)
from captum_hetattn.visualization.views._base import rounded
from captum_hetattn.zoo import load

torch.set_num_threads(1)

CROSS = "lxmert.encoder.x_layers.0.visual_attention.att"
NETWORK_REFERENCE = re.compile(
    r"""(?:\b(?:src|href|action|poster|data)\s*=\s*["']?\s*(?:https?:)?//)"""
    r"""|(?:url\(\s*["']?\s*(?:https?:)?//)|(?:@import)|(?:\brequire\()|(?:\bimport\s*\()""",
    re.IGNORECASE)


def _explain(name: str, n: int = 2) -> tuple[Explanation, list, object]:
    zoo = load(name)
    examples = zoo.make_examples(n, 0)
    batch = zoo.collate(examples)
    explainer = HeterogenousAttentionAttribution(
        zoo.forward_func, model=zoo.model, graph=zoo.graph, input_mappings=zoo.input_mappings)
    explanation = explainer.explain(batch.inputs, target=batch.targets,
                                    additional_forward_args=batch.additional_forward_args,
                                    return_maps=True)
    return explanation, examples, zoo


@pytest.fixture(scope="module")
def vqa() -> tuple[Explanation, dict[str, list[str]]]:
    explanation, examples, _ = _explain("shapes_vqa")
    return explanation, examples[0].tokens


@pytest.fixture(scope="module")
def vit() -> tuple[Explanation, dict[str, list[str]], object]:
    explanation, examples, zoo = _explain("shapes_vit")
    return explanation, examples[0].tokens, zoo


def _fake(n_query: int = 520, n_key: int = 8, heads: int = 2) -> Explanation:
    """A hand-made explanation: one cross-attention call from a long stream to a short one."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(1, heads, n_query, n_key, generator=generator)
    attention = scores.softmax(-1)
    gradient = torch.randn(attention.shape, generator=generator)
    maps = CallMaps("decoder.cross", 0, "B", "long", "short", attention, gradient,
                    gradient.clamp(min=0) * attention)
    flow = [FlowShare("input", "start", {"long": torch.ones(1), "short": torch.zeros(1)}),
            FlowShare("decoder.cross", "B", {"long": torch.ones(1), "short": torch.full((1,), .3)})]
    return Explanation(
        relevance={"long": torch.rand(1, n_query), "short": torch.rand(1, n_key)},
        readout_stream="long", readout_token=torch.zeros(1, dtype=torch.long), graph=None,
        sizes={"long": n_query, "short": n_key}, streams={"long": n_query, "short": n_key},
        sources={"long": "long", "short": "short"}, call_maps=[maps], flow=flow)


# ------------------------------------------------------------------ without a browser


def test_pages_are_offline_and_self_contained(vqa, vit, tmp_path):
    explanation, tokens = vqa
    vit_explanation, vit_tokens, _ = vit
    views = [head_view(explanation, tokens, grids={"image": (4, 4)}),
             model_view(explanation, tokens), relevance_flow(explanation),
             neuron_view(vit_explanation, 0, 0, 0, tokens=vit_tokens)]
    for view in views:
        assert isinstance(view, View)
        page = view.html
        assert page.startswith("<!DOCTYPE html>") and "</html>" in page
        assert not NETWORK_REFERENCE.search(page), NETWORK_REFERENCE.search(page)
        assert "<script src" not in page and "<link" not in page
        fragment = view._repr_html_()
        assert f'data-hetattn-view="{view.kind}"' in fragment and "<html" not in fragment
        path = view.save(tmp_path / f"{view.kind}.html")
        assert path.read_text(encoding="utf-8").count("<script>") == 1


def test_two_views_get_distinct_ids(vqa):
    explanation, tokens = vqa
    view = head_view(explanation, tokens)
    page = view.fragment() + view.fragment() + model_view(explanation).fragment()
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == 3 and len(set(ids)) == 3


def test_numbers_are_short():
    values = torch.tensor([0.123456, -9.87654321, 1.0e-9, 3.0e-7, 0.0])
    assert rounded(values) == [0.1235, -9.877, 0.0, 0.0, 0.0]  # below 1e-4 of the largest: 0
    assert rounded(torch.tensor([98765.4321, 12.0])) == [98770.0, 12.0]
    assert rounded(torch.tensor([[2.0 / 3.0, 1e-3 / 3.0]])) == [[0.6667, 0.0003333]]
    assert json.dumps(rounded(torch.rand(50, 50))).count(".") == 2500  # no 0.1234000000001


def test_head_view_data(vqa):
    explanation, tokens = vqa
    view = head_view(explanation, tokens, layer=(CROSS, 1), maps=("gradient",),
                     grids={"image": (4, 4)})
    data = view.data
    call = data["calls"][data["initial"]["call"]]
    assert (call["name"], call["index"], call["query"], call["key"]) == (CROSS, 1, "image", "text")
    assert list(call["maps"]) == ["gradient"] and call["signed"]["gradient"]
    assert len(call["maps"]["gradient"][0]) == 16 and len(call["maps"]["gradient"][0][0]) == 10
    assert data["grids"] == {"image": [0, 4, 4]} and data["tokens"]["text"] == tokens["text"]
    # missing streams are labelled #0, #1, ...; a subset of calls keeps the page small
    small = head_view(explanation, calls=[CROSS]).data
    assert len(small["calls"]) == 1 and small["tokens"]["image"][:2] == ["#0", "#1"]


def test_model_view_sections(vqa):
    explanation, _ = vqa
    data = model_view(explanation, map="attention").data
    titles = [s["title"] for s in data["sections"]]
    assert titles == ["TypeA: text \u2190 text", "TypeA: image \u2190 image",
                      "TypeB: text \u2190 image", "TypeB: image \u2190 text",
                      "TypeC: text \u2190 text", "TypeC: image \u2190 image"]
    assert sorted(i for s in data["sections"] for i in s["calls"]) == list(range(11))


def test_relevance_flow_leaves_the_identity_out(vqa):
    explanation, _ = vqa
    for example in (0, 1):
        data = relevance_flow(explanation, example=example).data
        steps = data["steps"]
        assert steps[0]["kind"] == "start" and set(steps[0]["values"].values()) == {0.0}
        assert len(steps) == len(explanation.flow) and data["identity"] == {"text": 1.0}
        token = int(explanation.readout_token[example])
        for source in ("text", "image"):  # the last step: the relevance less the readout
            relevance = explanation.relevance[source][example].clone()  # token's own entry
            if source == "text":
                relevance[token] = 0
            expected = float(relevance.sum())
            assert steps[-1]["values"][source] == pytest.approx(expected, rel=1e-3, abs=1e-6)
        assert "\u00d72" in steps[4]["label"]  # the two parallel cross calls of one x-layer
    assert steps[-1]["values"]["image"] > 0


def test_neuron_view_data(vit):
    explanation, tokens, _ = vit
    view = neuron_view(explanation, "vit.layers.1.attention", 3, -1, example=1, tokens=tokens)
    data = view.data
    assert data["initial"] == {"head": 3, "query": 36} and data["depth"] == 16
    assert len(data["q"]) == 4 and len(data["k"][3]) == 37 and len(data["q"][3][0]) == 16
    q = torch.tensor(data["q"][3][5])
    k = torch.tensor(data["k"][3])
    softmax = (k @ q * data["scale"]).softmax(-1)  # plain scaled dot-product attention here
    attention = torch.tensor(data["attention"][3][5])
    assert torch.allclose(softmax, attention, atol=2e-3)


def test_cross_attention_between_streams_of_different_lengths():
    explanation, examples, _ = _explain("reverse_seq2seq")
    call = "model.decoder.layers.1.encoder_attn"
    data = neuron_view(explanation, call, 2, 3, tokens=examples[0].tokens).data
    assert (data["query"], data["key"], data["type"]) == ("target", "source", "B")
    assert data["query_tokens"] == examples[0].tokens["target"] and len(data["key_tokens"]) == 10
    q, k = torch.tensor(data["q"][2][3]), torch.tensor(data["k"][2])
    assert torch.allclose((k @ q * data["scale"]).softmax(-1),
                          torch.tensor(data["attention"][2][3]), atol=2e-3)
    head = head_view(explanation, examples[0].tokens, layer=call).data
    shown = head["calls"][head["initial"]["call"]]
    assert len(shown["maps"]["attention"][0]) == 9 and len(shown["maps"]["attention"][0][0]) == 10


def test_patch_grids_from_input_mappings(vit):
    explanation, tokens, zoo = vit
    assert head_view(explanation, tokens, grids=zoo.input_mappings).data["grids"] == {
        "image": [1, 6, 6]}
    assert head_view(explanation, grids={"image": (6, 6)}).data["grids"] == {"image": [1, 6, 6]}


def test_bad_input_raises_clear_errors(vqa, vit):
    explanation, tokens = vqa
    vit_explanation, _, _ = vit
    no_maps = Explanation(explanation.relevance, explanation.readout_stream,
                          explanation.readout_token, explanation.graph, explanation.sizes)
    for make in (lambda: head_view(no_maps), lambda: model_view(no_maps),
                 lambda: neuron_view(no_maps, 0, 0, 0)):
        with pytest.raises(ValueError, match="return_maps=True"):
            make()
    with pytest.raises(ValueError, match="return_maps=True"):
        relevance_flow(no_maps)
    with pytest.raises(ValueError, match="'lxmert.encoder.layer.7.attention.self'"):
        head_view(explanation, layer="lxmert.encoder.layer.7.attention.self")
    with pytest.raises(ValueError, match="has no call 2"):
        head_view(explanation, layer=(CROSS, 2))
    with pytest.raises(ValueError, match="call 40 is out of range"):
        head_view(explanation, layer=40)
    with pytest.raises(ValueError, match="head=4 is out of range.*4 heads"):
        head_view(explanation, head=4)
    with pytest.raises(ValueError, match="example=2 is out of range"):
        head_view(explanation, example=2)
    with pytest.raises(ValueError, match="example=5 is out of range"):
        relevance_flow(explanation, example=5)
    with pytest.raises(ValueError, match=r"tokens\['text'\] has 3 labels.*10 tokens"):
        head_view(explanation, {"text": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="'audio', which is not a stream"):
        head_view(explanation, {"audio": ["a"]})
    with pytest.raises(ValueError, match=r"grids\['image'\].*16 tokens"):
        head_view(explanation, grids={"image": (5, 4)})
    with pytest.raises(ValueError, match="maps must name"):
        head_view(explanation, maps=("rollout",))
    with pytest.raises(ValueError, match=f"module '{CROSS}'.*attention interface"):
        neuron_view(explanation, CROSS, 0, 0)
    with pytest.raises(ValueError, match="head=4 is out of range"):
        neuron_view(vit_explanation, "vit.layers.0.attention", 4, 0)
    with pytest.raises(ValueError, match="query_token=37 is out of range.*37 tokens"):
        neuron_view(vit_explanation, "vit.layers.0.attention", 0, 37)
    with pytest.raises(ValueError, match="did you mean 'vit.layers.0.attention'"):
        neuron_view(vit_explanation, "vit.layer.0.attention", 0, 0)


# ------------------------------------------------------------------ in a browser


@pytest.fixture(scope="module")
def browser():
    from _browser import start_browser

    session = start_browser()
    yield session
    session.quit()


def _open(browser, view: View, path: Path) -> None:
    from _browser import external

    view.save(path)
    requests = browser.open(path)
    assert requests and not external(requests), requests
    assert browser.script(
        "return document.querySelector('[data-hetattn-view]').childElementCount") > 0


def _finish(browser, selector: str) -> None:
    """After the interactions: still no network request, no script error, a real picture."""
    from _browser import external, not_blank

    assert not external(browser.requests())
    assert browser.console_errors() == []
    assert not_blank(browser.screenshot(selector))


def _click(browser, selector: str, index: int = 0) -> None:
    browser.script("document.querySelectorAll(arguments[0])[arguments[1]]"
                   ".dispatchEvent(new MouseEvent('click', {bubbles: true}))", selector, index)


def _lines(browser) -> list[list[str]]:
    return browser.script(
        "return Array.from(document.querySelectorAll('svg.hv-svg line')).map(l => "
        "[l.getAttribute('y1'), l.getAttribute('stroke'), l.getAttribute('stroke-opacity'), "
        "l.getAttribute('data-head')])")


def test_head_view_in_browser(browser, vqa, tmp_path):
    explanation, tokens = vqa
    _open(browser, head_view(explanation, tokens, layer=CROSS, grids={"image": (4, 4)}),
          tmp_path / "head.html")
    count = "return document.querySelectorAll('text.hv-token[data-side=\"' + arguments[0] + '\"]')"
    assert browser.script(count + ".length", "query") == 10
    assert browser.script(count + ".length", "key") == 16
    assert browser.script(count + "[5].firstChild.nodeValue", "key") == tokens["image"][5]
    assert browser.script("return document.querySelectorAll('.hv-cell').length") == 16
    assert browser.script("return Array.from(document.querySelectorAll('text.hv-readout'))"
                          ".map(t => t.getAttribute('data-side') + t.getAttribute('data-index'))"
                          ) == ["query0"]  # [CLS], the readout token, is underlined
    every = _lines(browser)
    assert len(every) > 20 and {line[3] for line in every} == {"0", "1", "2", "3"}
    _click(browser, ".hv-head[data-head='2']")  # one head
    one = _lines(browser)
    assert 0 < len(one) < len(every) and {line[3] for line in one} == {"2"}
    _click(browser, ".hv-head[data-head='2']")  # again: all heads
    assert _lines(browser) == every
    _click(browser, "text.hv-token[data-side='query']", 3)  # isolate one query token's lines
    picked = _lines(browser)
    assert 0 < len(picked) < len(every) and len({line[0] for line in picked}) == 1
    _click(browser, "text.hv-token[data-side='query']", 3)
    assert _lines(browser) == every
    _click(browser, "button.hv-map[data-map='gradient']")  # signed gradient: red / blue
    strokes = {line[1] for line in _lines(browser)}
    assert strokes and strokes <= {"rgb(214,39,40)", "rgb(31,119,180)"} and len(strokes) == 2
    _click(browser, "button.hv-map[data-map='corrected']")
    assert _lines(browser) != every
    browser.script("var s = document.querySelector('select.hv-call'); s.value = '0';"
                   "s.dispatchEvent(new Event('change'))")  # layer 0: text self-attention
    assert browser.script(count + ".length", "key") == 10
    assert browser.script("return document.querySelectorAll('.hv-cell').length") == 0
    _finish(browser, ".hetattn-view")


def test_long_stream_scrolls_without_shrinking(browser, tmp_path):
    _open(browser, head_view(_fake(), maps=("attention",)), tmp_path / "long.html")
    sizes = browser.script(
        "var t = document.querySelectorAll('text.hv-token[data-side=\"query\"]');"
        "var s = document.querySelector('.hv-scroll');"
        "return [t.length, getComputedStyle(t[0]).fontSize, +t[1].getAttribute('y') - "
        "+t[0].getAttribute('y'), s.scrollHeight, s.clientHeight, getComputedStyle(s).overflowY]")
    assert sizes[0] == 520 and sizes[1] == "12px" and sizes[2] == 18
    assert sizes[3] > 9000 > 600 >= sizes[4] and sizes[5] == "auto"
    assert 0 < browser.script("return document.querySelectorAll('svg.hv-svg line').length") <= 6000
    _finish(browser, ".hetattn-view")


def test_model_view_in_browser(browser, vqa, tmp_path):
    explanation, tokens = vqa
    _open(browser, model_view(explanation, tokens, grids={"image": (4, 4)}),
          tmp_path / "model.html")
    assert browser.script("return document.querySelectorAll('canvas.mv-thumb').length") == 44
    assert browser.script("return document.querySelectorAll('.mv-section').length") == 6
    assert browser.script("return document.querySelectorAll('text.hv-token').length") == 0
    thumb = "canvas.mv-thumb[data-call='{}'][data-head='{}']"
    _click(browser, thumb.format(3, 1))  # text <- image, head 1
    state = "var d = document.querySelector('.mv-detail'); return [d.getAttribute('data-call'), " \
            "d.getAttribute('data-head'), d.querySelectorAll('text.hv-token').length, " \
            "d.querySelector('svg.hv-svg').getAttribute('data-head')]"
    assert browser.script(state) == ["3", "1", 26, "1"]
    _click(browser, thumb.format(2, 0))  # image self-attention
    assert browser.script(state) == ["2", "0", 32, "0"]
    assert browser.script("return document.querySelectorAll('canvas.mv-selected').length") == 1
    _finish(browser, ".mv-grid-wrap")


def test_neuron_view_in_browser(browser, vit, tmp_path):
    explanation, tokens, _ = vit
    _open(browser, neuron_view(explanation, "vit.layers.2.attention", 1, 0, tokens=tokens),
          tmp_path / "neuron.html")
    count = "return document.querySelectorAll(arguments[0]).length"
    assert browser.script(count, "text.nv-query") == 37
    assert browser.script(count, "text.nv-key") == 37
    assert browser.script(count, "rect.nv-prod") == 37 * 16
    assert browser.script(count, "rect.nv-q") == 16
    fills = ("return Array.from(document.querySelectorAll('rect.nv-prod'))"
             ".map(r => r.getAttribute('fill')).join(';')")
    before = browser.script(fills)
    _click(browser, "text.nv-query", 7)
    assert browser.script("return document.querySelector('svg.nv-svg').getAttribute("
                          "'data-query')") == "7"
    after = browser.script(fills)
    assert after != before
    browser.script("var s = document.querySelector('select.nv-head'); s.value = '3';"
                   "s.dispatchEvent(new Event('change'))")
    assert browser.script(fills) != after
    _finish(browser, ".nv-scroll")


def test_relevance_flow_in_browser(browser, vqa, tmp_path):
    explanation, _ = vqa
    _open(browser, relevance_flow(explanation), tmp_path / "flow.html")
    steps = len(explanation.flow)
    assert browser.script("return document.querySelectorAll('rect.rf-bar').length") == steps * 2
    assert browser.script("return document.querySelectorAll('.rf-legend-item').length") == 2
    heights = "return Array.from(document.querySelectorAll('rect.rf-bar')).map(r => " \
              "r.getAttribute('height'))"
    absolute = browser.script(heights)
    _click(browser, "button.rf-mode[data-mode='fraction']")
    assert browser.script(heights) != absolute
    _click(browser, "g.rf-step", steps - 1)
    cells = browser.script("return Array.from(document.querySelectorAll('.rf-info td.rf-value'))"
                           ".map(t => t.textContent)")
    assert len(cells) == 2 and all(float(c) > 0 for c in cells)
    assert browser.script("return document.querySelectorAll('g.rf-selected').length") == 1
    _finish(browser, ".hetattn-view")


def test_two_views_in_one_page(browser, vqa, tmp_path):
    explanation, tokens = vqa
    path = tmp_path / "two.html"
    path.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
                    + head_view(explanation, tokens).fragment()
                    + head_view(explanation, tokens, layer=CROSS).fragment()
                    + "</body></html>", encoding="utf-8")
    start = time.perf_counter()
    browser.open(path)
    counts = browser.script(
        "return Array.from(document.querySelectorAll('[data-hetattn-view]')).map(v => "
        "v.querySelectorAll('text.hv-token').length)")
    assert counts == [20, 26]
    _click(browser, ".hv-head[data-head='0']", 1)  # the second view's head square only
    heads = browser.script("return Array.from(document.querySelectorAll('svg.hv-svg')).map(s => "
                           "s.getAttribute('data-head'))")
    assert heads == ["all", "0"]
    assert browser.console_errors() == [] and time.perf_counter() - start < 20


def test_inline_display_renders_like_jupyterlab(browser, vqa, tmp_path):
    """JupyterLab sets an output's HTML with innerHTML, then replaces each <script> with a new
    one to run it (the notebook's output area does the same with jQuery): the view must draw."""
    explanation, tokens = vqa
    fragments = [head_view(explanation, tokens)._repr_html_(), relevance_flow(explanation)
                 ._repr_html_()]
    loader = (
        "<script>var outputs = " + json.dumps(fragments).replace("<", "\\u003c") + ";"
        "outputs.forEach(function (html) {"
        "  var host = document.createElement('div'); document.body.appendChild(host);"
        "  host.innerHTML = html;"
        "  host.querySelectorAll('script').forEach(function (old) {"
        "    var s = document.createElement('script');"
        "    Array.from(old.attributes).forEach(a => s.setAttribute(a.name, a.value));"
        "    s.textContent = old.textContent;"
        "    old.parentNode.replaceChild(s, old); });"
        "});</script>")
    path = tmp_path / "lab.html"
    path.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>" + loader
                    + "</body></html>", encoding="utf-8")
    browser.open(path)
    assert browser.script("return document.querySelectorAll('text.hv-token').length") == 20
    assert browser.script("return document.querySelectorAll('rect.rf-bar').length") == 20
    assert browser.console_errors() == []


def test_view_labels_are_whole_and_empty_maps_say_why(browser, vqa, tmp_path):
    """Model view: row labels wrap instead of being cut; a call whose maps are all zero (no
    gradient reached it) is drawn grey with a note, not as blank squares. Relevance flow: every
    step label lies inside the picture."""
    from dataclasses import replace

    explanation, tokens = vqa
    silent = replace(explanation.call_maps[0], gradient=torch.zeros_like(
        explanation.call_maps[0].gradient), corrected=torch.zeros_like(
        explanation.call_maps[0].corrected))
    explanation = replace(explanation, call_maps=[silent, *explanation.call_maps[1:]])
    _open(browser, model_view(explanation, tokens), tmp_path / "model.html")
    cut = ("return Array.from(document.querySelectorAll('.mv-row-label'))"
           ".filter(l => l.scrollWidth > l.clientWidth + 1).length")
    assert browser.script(cut) == 0
    notes = browser.script("return Array.from(document.querySelectorAll('.mv-empty'))"
                           ".map(n => n.textContent)")
    empty = [i for i, c in enumerate(explanation.call_maps) if not c.corrected[0].any()]
    assert 0 in empty and len(notes) == len(empty) and all("no gradient" in n for n in notes)
    pixel = ("var c = document.querySelector(\"canvas.mv-thumb[data-call='0']\");"
             "return Array.from(c.getContext('2d').getImageData(0, 0, 1, 1).data)")
    assert browser.script(pixel)[:3] == [214, 214, 214]
    _finish(browser, ".mv-grid-wrap")
    _open(browser, relevance_flow(vqa[0]), tmp_path / "flow.html")
    outside = ("var s = document.querySelector('svg.rf-svg').getBoundingClientRect();"
               "return Array.from(document.querySelectorAll('text.rf-label')).filter(t => {"
               "var r = t.getBoundingClientRect(); return r.left < s.left - 0.5 || "
               "r.bottom > s.bottom + 0.5 || r.top < s.top - 0.5}).length")
    assert browser.script("return document.querySelectorAll('text.rf-label').length") > 0
    assert browser.script(outside) == 0
    clipped = ("return Array.from(document.querySelectorAll('text.rf-label'))"
               ".filter(t => t.firstChild.nodeValue.endsWith('\u2026')).length")
    assert browser.script(clipped) == 0  # LXMERT's step names fit whole (≤ 44 characters)
    _finish(browser, ".hetattn-view")
