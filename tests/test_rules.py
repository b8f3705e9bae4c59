import random

import pytest
import torch

from captum_hetattn import AttentionNode, LayerGraph
from captum_hetattn.rules import (
    AttentionFlow,
    Gae,
    Ours,
    Rollout,
    aggregate_heads,
    attention_rollout,
    cross_rule,
    gae_cross_increment,
    noise_link,
    propagate,
    propagate_row,
    resolve_correction,
    self_rule,
)

T = torch.tensor


def close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, atol=atol), (actual, expected)


# ----------------------------------------------------------------- hand-computed rules
A_HEADS = T([[[[0.5, 0.5], [0.2, 0.8]], [[1.0, 0.0], [0.4, 0.6]]]])  # (1, 2 heads, 2, 2)
G_HEADS = T([[[[1.0, -1.0], [2.0, 0.0]], [[-1.0, 3.0], [0.5, -2.0]]]])


@pytest.mark.parametrize(
    "correction, expected",
    [
        ("pos", [[0.25, 0.0], [0.3, 0.0]]),
        ("full", [[-0.25, -0.25], [0.3, -0.6]]),
        ("abs", [[0.75, 0.25], [0.3, 0.6]]),
        ("none", [[0.75, 0.25], [0.3, 0.7]]),
    ],
)
def test_aggregate_heads_by_hand(correction, expected):
    close(aggregate_heads(A_HEADS, G_HEADS, correction), [expected])


def test_aggregate_heads_computes_in_float32_for_half_maps():
    out = aggregate_heads(A_HEADS.half(), G_HEADS.bfloat16().half(), "full")
    assert out.dtype == torch.float32
    close(out, [[[-0.25, -0.25], [0.3, -0.6]]], atol=1e-3)
    assert aggregate_heads(A_HEADS.double(), G_HEADS.double()).dtype == torch.float64


def test_aggregate_heads_errors():
    with pytest.raises(ValueError, match="needs the gradient"):
        aggregate_heads(A_HEADS, None, "pos")
    with pytest.raises(ValueError, match="Unknown correction 'positive'"):
        aggregate_heads(A_HEADS, G_HEADS, "positive")
    with pytest.raises(ValueError, match="batch, heads"):
        aggregate_heads(A_HEADS[0], G_HEADS[0])
    with pytest.raises(ValueError, match="gradient shape"):
        aggregate_heads(A_HEADS, G_HEADS[:, :1])


def test_per_type_correction():
    per_type = {"A": "abs", "B": "pos", "C": "full"}
    assert [resolve_correction(per_type, t) for t in "ABC"] == ["abs", "pos", "full"]
    assert resolve_correction("none", "B") == "none"
    with pytest.raises(ValueError, match="nothing for type C"):
        resolve_correction({"A": "abs", "B": "pos"}, "C")
    with pytest.raises(ValueError, match="unknown node type"):
        resolve_correction({"X": "abs"}, "A")


def test_self_rule_by_hand():
    close(self_rule(torch.eye(2)[None], T([[[0.25, 0.0], [0.3, 0.0]]])), [[[1.25, 0], [0.3, 1]]])
    close(self_rule(T([[[1.0, 2.0], [0.0, 1.0]]]), T([[[0.0, 1.0], [1.0, 0.0]]])),
          [[[1, 3], [1, 3]]])


def test_cross_rule_by_hand():
    query_rel = T([[[0.0, 0.0], [1.0, 0.0]]])  # R[q, s], q: 2 tokens, s: 2 tokens
    attention = T([[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]])  # q (2) <- k (3)
    key_rel = T([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]])  # R[k, s]
    close(cross_rule(query_rel, attention, key_rel), [[[0.5, 0.5], [3, 2]]])


def test_noise_link_by_hand_and_zero_rows_stay_identity():
    close(noise_link(T([[[2.0, 1.0], [0.0, 1.0]]])), [[[1.5, 0.5], [0, 1]]])
    close(noise_link(T([[[0.0, -1.0], [0.0, 1.0]]])), [[[1.5, 0.5], [0, 1]]])
    identity = noise_link(torch.eye(3).expand(2, 3, 3))
    assert torch.isfinite(identity).all()
    close(identity, torch.eye(3).expand(2, 3, 3))


def test_gae_cross_increment_by_hand():
    query_self = T([[[2.0, 1.0], [0.0, 3.0]]])  # R̄ = [[1.5, .5], [0, 2]]
    key_self = T([[[1.0, 1.0], [1.0, 2.0]]])  # R̄ = [[1, 1], [.5, 1.5]]
    attention = torch.eye(2)[None]
    close(gae_cross_increment(query_self, attention, key_self), [[[1.5, 1.5], [1.5, 3.5]]])
    close(gae_cross_increment(query_self, attention, key_self, normalize=False),
          [[[2, 2], [4, 7]]])


def test_gae_cross_increment_drops_where_reference_divides_by_zero():
    # DETR's first decoder layer: R[q, q] is still I, so the reference code gets NaN and its
    # nan_to_num drops the whole increment; we must get the same zeros, per example, no NaN.
    query_self = torch.stack([torch.eye(2), T([[2.0, 1.0], [0.0, 3.0]])])
    key_self = T([[1.0, 1.0], [1.0, 2.0]]).expand(2, 2, 2)
    out = gae_cross_increment(query_self, torch.eye(2).expand(2, 2, 2), key_self)
    assert torch.isfinite(out).all()
    close(out[0], torch.zeros(2, 2))
    close(out[1], [[1.5, 1.5], [1.5, 3.5]])


def test_attention_rollout_by_hand():
    first = T([[[0.5, 0.5], [0.0, 1.0]]])  # rownorm(A + I) = [[.75, .25], [0, 1]]
    second = T([[[1.0, 0.0], [0.5, 0.5]]])  # rownorm(A + I) = [[1, 0], [.25, .75]]
    close(attention_rollout([first]), [[[0.75, 0.25], [0, 1]]])
    close(attention_rollout([first, second]), [[[0.75, 0.25], [0.1875, 0.8125]]])


def random_maps(batch: int, layers: int, heads: int, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(layers, batch, heads, n, n, generator=gen, dtype=torch.float64).softmax(-1)


def test_self_rule_without_correction_is_two_to_the_l_times_rollout():
    layers = 4
    maps = random_maps(batch=3, layers=layers, heads=2, n=5, seed=0)
    averaged = [aggregate_heads(m, correction="none") for m in maps]
    ours = propagate({"x": 5}, [AttentionFlow("x", "x", a) for a in averaged])[("x", "x")]
    close(ours, 2**layers * attention_rollout(averaged), atol=1e-10)


# ----------------------------------------------------------------- propagation over graphs
def random_graph(seed: int) -> LayerGraph:
    """A graph over three streams with A, B, C nodes, layer blocks and parallel groups."""
    rng = random.Random(seed)
    streams = ["a", "b", "c"]
    steps: list = []
    for block in range(rng.randint(3, 5)):
        body = []
        for part in range(rng.randint(1, 3)):
            query = rng.choice(streams)
            key = rng.choice(streams) if rng.random() < 0.5 else query
            node = AttentionNode(f"block{block}.*.part{part}", query=query, key=key)
            if rng.random() < 0.3:
                partner = rng.choice([s for s in streams if s != query])
                other = AttentionNode(f"block{block}.*.part{part}", query=partner, key=query,
                                      call_index=1)
                node = AttentionNode(node.module, query=query, key=key, call_index=0)
                body.append((node, other))
            else:
                body.append(node)
        steps.extend(body)
    used = {n.query for s in steps for n in (s if isinstance(s, tuple) else (s,))}
    used |= {n.key for s in steps for n in (s if isinstance(s, tuple) else (s,))}
    steps.extend(AttentionNode(f"tail.{s}", query=s) for s in streams if s not in used)
    return LayerGraph(streams=streams, steps=steps)


def graph_flows(graph: LayerGraph, sizes: dict, batch: int, seed: int, signed: bool):
    """Bind the graph to two layers per block and give every call a random Ā."""
    names = {n.module.replace("*", str(i)) for n in graph.nodes for i in range(2)}
    gen = torch.Generator().manual_seed(seed)
    steps = []
    for step in graph.bind(sorted(names)):
        group = []
        for node in step:
            shape = (batch, sizes[node.query], sizes[node.key])
            weights = torch.rand(shape, generator=gen, dtype=torch.float64)
            if signed:
                weights = weights - 0.4
            group.append(AttentionFlow(node.query, node.key, weights / shape[-1], node.name))
        steps.append(group)
    return steps


@pytest.mark.parametrize("seed", range(8))
def test_row_propagation_equals_full_propagation_on_random_graphs(seed):
    graph = random_graph(seed)
    types = {node.type for node in graph.nodes}
    assert "A" in types or "C" in types
    sizes = {"a": 4, "b": 3, "c": 5}
    steps = graph_flows(graph, sizes, batch=3, seed=seed, signed=seed % 2 == 1)
    full = propagate(sizes, steps)
    readout = torch.tensor([0, 3, 1])
    rows = propagate_row(sizes, steps, "a", readout)
    for source in sizes:
        expected = full[("a", source)][torch.arange(3), readout]
        close(rows[source], expected, atol=1e-10)


def test_random_graphs_cover_all_node_types():
    types = {node.type for seed in range(8) for node in random_graph(seed).nodes}
    assert types == {"A", "B", "C"}
    assert any(isinstance(s, tuple) for seed in range(8) for s in random_graph(seed).steps)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"method": Ours(noise_link=True)},
        {"method": Gae()},
        {"method": Gae(normalize=False)},
    ],
)
def test_batch_of_n_equals_n_single_calls(options):
    graph = random_graph(3)
    sizes = {"a": 4, "b": 3, "c": 5}
    steps = graph_flows(graph, sizes, batch=4, seed=1, signed=False)
    batched = propagate(sizes, steps, **options)
    rows = propagate_row(sizes, steps, "b", 2)
    for i in range(4):
        single = [
            [AttentionFlow(f.query, f.key, f.attention[i : i + 1], f.label) for f in group]
            for group in steps
        ]
        alone = propagate(sizes, single, **options)
        alone_rows = propagate_row(sizes, single, "b", 2)
        for block, value in alone.items():
            close(batched[block][i : i + 1], value, atol=1e-12)
        for stream, value in alone_rows.items():
            close(rows[stream][i : i + 1], value, atol=1e-12)


def test_parallel_group_reads_the_state_from_before_the_group():
    a_from_b = T([[[1.0, 0.0]]])  # a (1 token) <- b (2 tokens)
    b_from_a = T([[[1.0], [1.0]]])  # b (2 tokens) <- a (1 token)
    flows = [AttentionFlow("a", "b", a_from_b), AttentionFlow("b", "a", b_from_a)]
    parallel = propagate({"a": 1, "b": 2}, [flows])
    sequential = propagate({"a": 1, "b": 2}, flows)
    # in parallel, b reads R[a, b] = 0 from before the group: no relevance of b returns to b
    close(parallel[("b", "b")], torch.eye(2)[None])
    close(parallel[("a", "b")], [[[1.0, 0.0]]])
    close(parallel[("b", "a")], [[[1.0], [1.0]]])
    # sequentially, b reads the updated R[a, b]
    close(sequential[("b", "b")], [[[2.0, 0.0], [1.0, 1.0]]])


def test_noise_link_applies_to_the_key_streams_own_block_only():
    sizes = {"q": 1, "k": 2}
    key_self = AttentionFlow("k", "k", T([[[0.0, 2.0], [0.0, 0.0]]]))  # R[k,k] -> [[1,2],[0,1]]
    cross = AttentionFlow("q", "k", T([[[1.0, 1.0]]]))
    linked = propagate(sizes, [key_self, cross], Ours(noise_link=True))
    plain = propagate(sizes, [key_self, cross])
    close(plain[("q", "k")], [[[1.0, 3.0]]])
    # noise_link([[1, 2], [0, 1]]) = [[1, 1], [0, 1]] (row 2 of R - I is zero: stays identity)
    close(linked[("q", "k")], [[[1.0, 2.0]]])


def test_propagate_errors_name_the_call():
    flow = AttentionFlow("text", "image", torch.rand(1, 3, 4), "x_layers.0.visual_attention")
    with pytest.raises(ValueError, match="'x_layers.0.visual_attention' has map shape"):
        propagate({"text": 3, "image": 5}, [flow])
    with pytest.raises(ValueError, match="unknown key stream 'image'"):
        propagate({"text": 3}, [flow])
    with pytest.raises(ValueError, match="out of range for stream 'text'"):
        propagate_row({"text": 3, "image": 4}, [flow], "text", 3)
    with pytest.raises(ValueError, match="Nothing to propagate"):
        propagate({"text": 3}, [])
    with pytest.raises(ValueError, match="rule must be"):
        propagate({"text": 3, "image": 4}, [flow], method="lrp")


# ----------------------------------------------------------------- the paper's GAE claim
def reference_style_gae(text_self, image_self, x_layers, *, normalize, direct):
    """Two-stream GAE written like the reference code (explicit R_tt, R_ti, R_it, R_ii).

    ``x_layers``: per cross-modality layer ``(Ā text<-image, Ā image<-text, Ā text, Ā image)``;
    ``direct`` replaces GAE's eq. 10 by the paper's ``R[q, k] += Ā · R[k, k]``.
    """
    def handle_residual(r):
        eye = torch.eye(r.shape[-1], dtype=r.dtype)
        s = r - eye
        return s / s.sum(-1, keepdim=True) + eye

    def bi_modal(r_ss, r_sq, r_qq, r_qs, a):  # query stream s, key stream q
        if direct:
            add_sq = a @ r_qq
        elif normalize:
            add_sq = handle_residual(r_ss).T @ a @ handle_residual(r_qq)
        else:
            add_sq = r_ss.T @ a @ r_qq
        return r_sq + add_sq, r_ss + a @ r_qs

    n_t, n_i = text_self[0].shape[-1], image_self[0].shape[-1]
    f64 = torch.float64
    r_tt, r_ii = torch.eye(n_t, dtype=f64), torch.eye(n_i, dtype=f64)
    r_ti, r_it = torch.zeros(n_t, n_i, dtype=f64), torch.zeros(n_i, n_t, dtype=f64)
    for a in text_self:
        r_tt = r_tt + a @ r_tt
    for a in image_self:
        r_ii = r_ii + a @ r_ii
    for a_ti, a_it, a_t, a_i in x_layers:
        new_ti, new_tt = bi_modal(r_tt, r_ti, r_ii, r_it, a_ti)
        new_it, new_ii = bi_modal(r_ii, r_it, r_tt, r_ti, a_it)
        r_tt, r_ti, r_it, r_ii = new_tt, new_ti, new_it, new_ii
        r_tt, r_ti = r_tt + a_t @ r_tt, r_ti + a_t @ r_ti
        r_ii, r_it = r_ii + a_i @ r_ii, r_it + a_i @ r_it
    return r_tt, r_ti


@pytest.mark.parametrize("normalize, direct", [(True, False), (False, False), (False, True)])
def test_gae_reference_and_the_papers_equivalence_claim(normalize, direct):
    gen = torch.Generator().manual_seed(7)
    n_t, n_i, heads = 5, 4, 3

    def pos_map(n_q, n_k):
        attention = torch.randn(1, heads, n_q, n_k, generator=gen, dtype=torch.float64)
        gradient = torch.randn(1, heads, n_q, n_k, generator=gen, dtype=torch.float64)
        return aggregate_heads(attention.softmax(-1), gradient, "pos")

    text_self = [pos_map(n_t, n_t) for _ in range(3)]
    image_self = [pos_map(n_i, n_i) for _ in range(2)]
    x_layers = [
        (pos_map(n_t, n_i), pos_map(n_i, n_t), pos_map(n_t, n_t), pos_map(n_i, n_i))
        for _ in range(2)
    ]
    steps = [AttentionFlow("text", "text", a) for a in text_self]
    steps += [AttentionFlow("image", "image", a) for a in image_self]
    for a_ti, a_it, a_t, a_i in x_layers:
        steps.append([AttentionFlow("text", "image", a_ti), AttentionFlow("image", "text", a_it)])
        steps += [AttentionFlow("text", "text", a_t), AttentionFlow("image", "image", a_i)]
    sizes = {"text": n_t, "image": n_i}
    ref_tt, ref_ti = reference_style_gae(
        [a[0] for a in text_self], [a[0] for a in image_self],
        [tuple(a[0] for a in layer) for layer in x_layers],
        normalize=normalize, direct=direct,
    )
    if direct:
        # the paper's claim: GAE without normalisation, eq. 10 replaced == our method (pos)
        ours = propagate(sizes, steps)
        ours_row = propagate_row(sizes, steps, "text", 0)
        close(ours[("text", "text")][0], ref_tt, atol=1e-10)
        close(ours[("text", "image")][0], ref_ti, atol=1e-10)
        close(ours_row["image"][0], ref_ti[0], atol=1e-10)
        gae_direct = propagate(sizes, steps, Gae(normalize=False, cross_term="direct"))
        close(gae_direct[("text", "image")][0], ref_ti, atol=1e-10)
    else:
        gae = propagate(sizes, steps, Gae(normalize=normalize))
        close(gae[("text", "text")][0], ref_tt, atol=1e-10)
        close(gae[("text", "image")][0], ref_ti, atol=1e-10)
        # and GAE really differs from ours here (the claim is not vacuous)
        ours = propagate(sizes, steps)
        assert not torch.allclose(gae[("text", "image")], ours[("text", "image")])


def test_rules_depend_on_torch_only_and_graph_on_nothing():
    import ast
    import sys
    from pathlib import Path

    import captum_hetattn

    package = Path(captum_hetattn.__file__).parent
    graph = ("graph/spec.py", "graph/nodes.py", "graph/junctions.py", "graph/layer_graph.py")
    # a room is a module or a package; each may import its own modules (and the graph the binder
    # LayerGraph.bind hands over to)
    allowed = {"rules": ({"torch"}, ("captum_hetattn.rules.",)),
               **{room: (set(), ("captum_hetattn.graph.", "captum_hetattn.binding.bind"))
                  for room in graph}}
    for room, (third_party, own) in allowed.items():
        path = package / room
        for filename in [path] if path.is_file() else sorted(path.glob("*.py")):
            tree = ast.parse(filename.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    roots = {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom):
                    if (node.module or "").startswith(own):
                        continue
                    roots = {(node.module or "").split(".")[0]}
                else:
                    continue
                for root in roots:
                    known = sys.stdlib_module_names | third_party | {"__future__"}
                    assert root in known, f"{filename} imports {root}"


def test_rollout_mode_is_attention_rollout_on_one_stream():
    maps = random_maps(batch=2, layers=3, heads=2, n=4, seed=5)
    averaged = [aggregate_heads(m, correction="none") for m in maps]
    flows = [AttentionFlow("x", "x", a) for a in averaged]
    reference = attention_rollout(averaged)
    close(propagate({"x": 4}, flows, Rollout())[("x", "x")], reference, atol=1e-12)
    close(propagate_row({"x": 4}, flows, "x", 1, method=Rollout())["x"], reference[:, 1],
          atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_rollout_row_mode_equals_full_mode_on_random_graphs(seed):
    graph = random_graph(seed)
    sizes = {"a": 4, "b": 3, "c": 5}
    steps = graph_flows(graph, sizes, batch=2, seed=seed, signed=False)
    full = propagate(sizes, steps, Rollout())
    rows = propagate_row(sizes, steps, "c", 2, method=Rollout())
    for source in sizes:
        close(rows[source], full[("c", source)][:, 2], atol=1e-12)


def test_gae_zero_row_check_ignores_padding_rows():
    # a padded token's row of R - I is always zero; it must not drop GAE's cross term
    query_self = torch.eye(3).expand(1, 3, 3).clone()
    query_self[0, 0, 1] = 1.0
    query_self[0, 1, 0] = 1.0  # rows 0 and 1 carry relevance, row 2 is padding
    key_self = T([[[1.0, 1.0], [1.0, 2.0]]])
    attention = torch.ones(1, 3, 2)
    dropped = gae_cross_increment(query_self, attention, key_self)
    kept = gae_cross_increment(
        query_self, attention, key_self, query_padding=torch.tensor([[False, False, True]])
    )
    assert (dropped == 0).all() and (kept != 0).any()


# ----------------------------------------------------------------- junctions (token maps)
def _junction_steps(seed: int):
    from captum_hetattn.rules import TokenMap

    gen = torch.Generator().manual_seed(seed)
    sizes = {"image": 4, "text": 6, "keys": 2}

    def amap(q, k):
        return AttentionFlow(q, k, torch.rand(2, sizes[q], sizes[k], generator=gen))

    splice = torch.zeros(2, 6, 4)
    rows = torch.zeros(2, 6, dtype=torch.bool)
    for b, start in enumerate((1, 2)):  # image tokens 1..3 replace three placeholders
        splice[b, start + torch.arange(3), torch.arange(1, 4)] = 1
        rows[b, start:start + 3] = True
    merge = torch.zeros(2, 2, 4)
    merge[:, 0, :2] = merge[:, 1, 2:] = 0.5  # 2 -> 1 token merge, mean
    steps = [
        amap("image", "image"),
        TokenMap("text", "image", splice, rows),
        amap("image", "image"),  # after the junction: must not reach the text rows
        TokenMap("keys", "image", merge, torch.ones(2, 2, dtype=torch.bool)),
        amap("text", "text"),
        amap("text", "keys"),
        amap("text", "text"),
    ]
    return sizes, steps


@pytest.mark.parametrize("seed", range(4))
def test_junctions_row_mode_equals_full_mode_and_batch_equals_singles(seed):
    sizes, steps = _junction_steps(seed)
    full = propagate(sizes, steps)
    for stream, token in (("text", 5), ("keys", 1), ("image", 0)):
        rows = propagate_row(sizes, steps, stream, token)
        for s in sizes:
            close(rows[s], full[(stream, s)][:, token], atol=1e-5)
    # a junction replaces the placeholder rows' own identity: their text columns stay empty
    late = propagate(sizes, steps[:2])
    close(late[("text", "text")][0, 1:4], torch.zeros(3, 6))
    close(late[("text", "image")][0, 1:4], propagate(sizes, steps[:1])[("image", "image")][0, 1:4])
    from captum_hetattn.rules import TokenMap

    for b in range(2):
        single = [
            s if isinstance(s, list) else (
                TokenMap(s.into, s.origin, s.weights[b:b + 1], s.rows[b:b + 1])
                if isinstance(s, TokenMap) else AttentionFlow(s.query, s.key, s.attention[b:b + 1])
            )
            for s in steps
        ]
        one = propagate_row(sizes, single, "text", 5)
        batched = propagate_row(sizes, steps, "text", 5)
        for s in sizes:
            close(one[s][0], batched[s][b], atol=1e-5)


def test_readout_weights_sum_over_streams():
    sizes, steps = _junction_steps(0)
    full = propagate(sizes, steps)
    weights = {"text": torch.rand(2, 6), "keys": torch.rand(2, 2)}
    rows = propagate_row(sizes, steps, weights)
    for s in sizes:
        expected = sum((w.unsqueeze(1) @ full[(x, s)]).squeeze(1) for x, w in weights.items())
        close(rows[s], expected, atol=1e-5)
    with pytest.raises(ValueError, match="readout weights for stream 'text' must be \\(2, 6\\)"):
        propagate_row(sizes, steps, {"text": torch.rand(2, 5)})
