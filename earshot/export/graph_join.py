"""Joining exported ONNX graphs into earshot's search model (``search_graph.py``), and
the scan that stands in for torch.logcumsumexp, which ONNX lacks.

Each graph's values are prefixed apart (``_rename``) so that the start graph, the
decoder step and the traced search step share one scope, joined by their interface
names; the step graph's ``LogCumSumExp`` placeholder nodes (domain ``CUSTOM``) become
``_blocked_scan`` nodes.
"""

from __future__ import annotations

import numpy as np

CUSTOM = "earshot"  # domain of the placeholder node for torch.logcumsumexp


def _elem(info) -> int:
    return info.type.tensor_type.elem_type


def _rank(info) -> int:
    return len(info.type.tensor_type.shape.dim)


def _rename(graph, prefix: str, keep: set[str]) -> None:
    """Prefix every value and node name of ``graph`` (and of its subgraphs) except
    ``keep`` (its interface), so that two exported graphs can share one scope."""
    def name(n: str) -> str:
        return n if not n or n in keep else prefix + n

    for node in graph.node:
        node.name = prefix + node.name
        node.input[:] = [name(n) for n in node.input]
        node.output[:] = [name(n) for n in node.output]
        for attr in node.attribute:
            for sub in [attr.g] * (attr.type == attr.GRAPH) + list(attr.graphs):
                _rename(sub, prefix, keep)
    for init in graph.initializer:
        init.name = name(init.name)
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        info.name = name(info.name)


def _const(name: str, value) -> object:
    from onnx import helper, numpy_helper

    return helper.make_node("Constant", [], [name],
                            value=numpy_helper.from_array(np.asarray(value), name))


def _scan_nodes(node, prefix: str, frames_like: str | None) -> list:
    """Nodes computing torch.logcumsumexp along axis 1 of a float64 (N, T) input, in place
    of the placeholder ``node`` (``_blocked_scan``)."""
    axis = next(a.i for a in node.attribute if a.name == "axis")
    if axis != 1:
        raise ValueError(f"LogCumSumExp over axis {axis}: only axis 1 is supported")
    return _blocked_scan(node.input[0], node.output[0], prefix, frames_like=frames_like)


# frames per block of ``_blocked_scan``: the quadratic step across blocks stays small for
# long inputs (750 frames: 24 blocks); inputs of up to SCAN_ONE_BLOCK frames are one block
SCAN_BLOCK = 32
SCAN_ONE_BLOCK = 64
# a partial sum below this, relative to its block's shift, may have lost digits: exact scan
SCAN_TINY = 1e-290


def _blocked_scan(x: str, y: str, p: str, block: int = SCAN_BLOCK,
                  frames_like: str | None = None) -> list:
    """logcumsumexp in blocks of ``block`` frames (one block up to ``SCAN_ONE_BLOCK``
    frames), with about two exponentials or logs per element and no loop (a log-space
    doubling scan needs 2 log2(T) of them, in log2(T) loop rounds of a dozen operators):

      within block j, shifted by its maximum c_j:  s_t = cumsum_{s in j, s <= t} exp(x_s - c_j)
      before it, across blocks (quadratic in their number):  k_j = logsumexp_{i<j} total_i
      y_t = m_j + log(s_t exp(c_j - m_j) + exp(k_j - m_j)),  m_j = max(c_j, k_j)

    Exact unless a value the block shift pushes below float64's range still matters: a
    partial sum under ``SCAN_TINY`` at a frame with mass (a finite x_t, or a finite k_j),
    which takes a block whose values rise by more than ~670 nats past the earlier ones.
    Then an ``If`` runs the exact ``_doubling_scan`` instead. ``frames_like``: a value
    whose axis 1 has x's length, when one exists outside the loop the scan runs in (its
    shape arithmetic is then loop-invariant, ``_hoist``); default x itself."""
    from onnx import TensorProto, helper

    def node(op, inputs, output, **attrs):
        return helper.make_node(op, [i if i == x else p + i for i in inputs], [p + output],
                                **attrs)

    def any_of(flags: str, out: str) -> list:
        """A scalar bool: whether any element of the bool tensor ``flags`` is set."""
        return [node("Cast", [flags], f"{flags}_u8", to=TensorProto.UINT8),
                node("ReduceMax", [f"{flags}_u8"], f"{out}_u8", keepdims=0),
                node("Cast", [f"{out}_u8"], out, to=TensorProto.BOOL)]

    def branch(name: str, nodes: list, outputs: list[tuple[str, int]]):
        return helper.make_graph(nodes, p + name, [], [
            helper.make_tensor_value_info(p + out, elem, None) for out, elem in outputs])

    ints = {"zero": [0], "one": [1], "two": [2], "block": [block], "block_last": [block - 1],
            "blocks_shape": [0, -1, block], "row_shape": [0, 1, -1], "flat_shape": [0, -1],
            "one_block": [SCAN_ONE_BLOCK]}
    consts = [_const(f"{p}{k}", np.array(v, np.int64)) for k, v in ints.items()]
    consts += [_const(f"{p}{k}", np.array(v, np.int64)) for k, v in (("r0", 0), ("r1", 1))]
    consts += [_const(f"{p}ninf", np.array(-np.inf)), _const(f"{p}floor", np.array(-1e300)),
               _const(f"{p}tiny", np.array(SCAN_TINY))]
    sizes = [
        helper.make_node("Shape", [frames_like or x], [f"{p}frames"], start=1, end=2),
        node("LessOrEqual", ["frames", "one_block"], "short_1"),
        node("Squeeze", ["short_1"], "short"),
        node("Neg", ["frames"], "neg_frames"),
        node("Mod", ["neg_frames", "block"], "pad"),
        node("Concat", ["zero", "zero", "zero", "pad"], "pads", axis=0),
        node("Add", ["frames", "pad"], "padded_frames"),
        node("Div", ["padded_frames", "block"], "blocks_1"),
        node("Squeeze", ["blocks_1"], "blocks"),
        node("Range", ["r0", "blocks", "r1"], "ids"),
        node("Unsqueeze", ["ids", "one"], "ids_col"),
        node("Less", ["ids", "ids_col"], "earlier"),  # [j, i]: i < j
    ]
    # one block: the frames as they are (an all -inf row is shifted by -1e300, not -inf)
    whole = [
        node("ReduceMax", [x, "one"], "w_peak", keepdims=1),
        node("Max", ["w_peak", "floor"], "w_shift"),
        node("Sub", [x, "w_shift"], "w_centred"),
        node("Exp", ["w_centred"], "w_e"),
        node("CumSum", ["w_e", "one"], "w_sums"),
        node("Log", ["w_sums"], "w_log_sums"),
        node("Add", ["w_log_sums", "w_shift"], "w_fast"),
        node("Greater", [x, "ninf"], "w_has_mass"),
        node("Less", ["w_sums", "tiny"], "w_small"),
        node("And", ["w_has_mass", "w_small"], "w_lost"),
        *any_of("w_lost", "w_any_lost"),
    ]
    blocks = [
        # pad the frames to whole blocks with -inf (log 0): (N, blocks, block)
        node("Pad", [x, "pads", "ninf"], "padded"),
        node("Reshape", ["padded", "blocks_shape"], "xb"),
        node("ReduceMax", ["xb", "two"], "peak", keepdims=1),
        node("Max", ["peak", "floor"], "shift"),
        node("Sub", ["xb", "shift"], "centred"),
        node("Exp", ["centred"], "e"),
        node("CumSum", ["e", "two"], "sums"),
        node("Slice", ["sums", "block_last", "block", "two"], "block_sum"),
        node("Log", ["block_sum"], "log_block_sum"),
        node("Add", ["log_block_sum", "shift"], "totals"),  # (N, blocks, 1)
        # across blocks: k_j from the totals of the blocks before j, (N, blocks, 1)
        node("Reshape", ["totals", "row_shape"], "totals_row"),
        node("Where", ["earlier", "totals_row", "ninf"], "carried"),
        node("ReduceLogSumExp", ["carried", "two"], "carry", keepdims=1),
        # both, shifted by the larger
        node("Max", ["shift", "carry"], "top"),
        node("Sub", ["shift", "top"], "shift_gap"),
        node("Exp", ["shift_gap"], "shift_scale"),
        node("Sub", ["carry", "top"], "carry_gap"),
        node("Exp", ["carry_gap"], "carry_scale"),
        node("Mul", ["sums", "shift_scale"], "scaled"),
        node("Add", ["scaled", "carry_scale"], "linear"),
        node("Log", ["linear"], "log_linear"),
        node("Add", ["log_linear", "top"], "yb"),
        node("Reshape", ["yb", "flat_shape"], "y_padded"),
        node("Slice", ["y_padded", "zero", "frames", "one"], "b_fast"),
        node("Greater", ["xb", "ninf"], "has_mass"),
        node("Greater", ["carry", "ninf"], "has_carry"),
        node("Or", ["has_mass", "has_carry"], "counts"),
        node("Less", ["linear", "tiny"], "small"),
        node("And", ["counts", "small"], "lost"),
        *any_of("lost", "b_any_lost"),
    ]
    double, flag = TensorProto.DOUBLE, TensorProto.BOOL
    fast = [helper.make_node(
        "If", [f"{p}short"], [f"{p}fast", f"{p}any_lost"], name=f"{p}size",
        then_branch=branch("whole", whole, [("w_fast", double), ("w_any_lost", flag)]),
        else_branch=branch("blocks", blocks, [("b_fast", double), ("b_any_lost", flag)]))]
    # lost digits anywhere: the exact scan
    exact = branch("exact_branch", _doubling_scan(x, f"{p}exact", f"{p}exact/"),
                   [("exact", double)])
    keep = branch("fast_branch", [helper.make_node("Identity", [f"{p}fast"], [f"{p}fast_out"])],
                  [("fast_out", double)])
    choose = [helper.make_node("If", [f"{p}any_lost"], [y], then_branch=exact,
                               else_branch=keep, name=f"{p}if")]
    return consts + sizes + fast + choose


def _doubling_scan(x: str, y: str, p: str) -> list:
    """A log-space Hillis-Steele scan: ceil(log2 T) rounds of x_t <- logaddexp(x_t, x_{t-d}),
    d = 1, 2, 4, ..., in a Loop; max itself where both are -inf (no -inf - -inf)."""
    from onnx import TensorProto, helper

    body_nodes = [
        helper.make_node("Shape", [f"{p}x_in"], [f"{p}shape"]),
        _const(f"{p}zero", np.array([0], np.int64)), _const(f"{p}one", np.array([1], np.int64)),
        _const(f"{p}two", np.array([2], np.int64)), _const(f"{p}ninf", np.array(-np.inf)),
        _const(f"{p}unit", np.array(1.0)),
        helper.make_node("Gather", [f"{p}shape", f"{p}one"], [f"{p}frames"], axis=0),
        helper.make_node("Concat", [f"{p}zero", f"{p}d_in", f"{p}zero", f"{p}zero"],
                         [f"{p}pads"], axis=0),
        helper.make_node("Pad", [f"{p}x_in", f"{p}pads", f"{p}ninf"], [f"{p}padded"]),
        helper.make_node("Slice", [f"{p}padded", f"{p}zero", f"{p}frames", f"{p}one"],
                         [f"{p}shifted"]),
        helper.make_node("Max", [f"{p}x_in", f"{p}shifted"], [f"{p}big"]),
        helper.make_node("Min", [f"{p}x_in", f"{p}shifted"], [f"{p}small"]),
        helper.make_node("Sub", [f"{p}small", f"{p}big"], [f"{p}gap"]),
        helper.make_node("Exp", [f"{p}gap"], [f"{p}ratio"]),
        helper.make_node("Add", [f"{p}ratio", f"{p}unit"], [f"{p}sum"]),
        helper.make_node("Log", [f"{p}sum"], [f"{p}log_sum"]),
        helper.make_node("Add", [f"{p}big", f"{p}log_sum"], [f"{p}both"]),
        helper.make_node("IsNaN", [f"{p}both"], [f"{p}empty"]),
        helper.make_node("Where", [f"{p}empty", f"{p}big", f"{p}both"], [f"{p}x_out"]),
        helper.make_node("Mul", [f"{p}d_in", f"{p}two"], [f"{p}d_out"]),
        helper.make_node("Identity", [f"{p}cond_in"], [f"{p}cond_out"]),
    ]
    double = TensorProto.DOUBLE
    body = helper.make_graph(
        body_nodes, f"{p}body",
        [helper.make_tensor_value_info(f"{p}i", TensorProto.INT64, []),
         helper.make_tensor_value_info(f"{p}cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info(f"{p}x_in", double, None),
         helper.make_tensor_value_info(f"{p}d_in", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info(f"{p}cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info(f"{p}x_out", double, None),
         helper.make_tensor_value_info(f"{p}d_out", TensorProto.INT64, [1])])
    return [
        helper.make_node("Shape", [x], [f"{p}outer_shape"]),
        _const(f"{p}outer_one", np.array([1], np.int64)),
        _const(f"{p}ln2", np.array([np.log(2.0)])), _const(f"{p}go", np.array(True)),
        # rounding guards log(2^k) / log(2) landing just above k
        _const(f"{p}eps", np.array([1e-9])),
        helper.make_node("Gather", [f"{p}outer_shape", f"{p}outer_one"], [f"{p}t"], axis=0),
        helper.make_node("Cast", [f"{p}t"], [f"{p}t_real"], to=double),
        helper.make_node("Log", [f"{p}t_real"], [f"{p}log_t"]),
        helper.make_node("Div", [f"{p}log_t", f"{p}ln2"], [f"{p}log2_t"]),
        helper.make_node("Sub", [f"{p}log2_t", f"{p}eps"], [f"{p}log2_low"]),
        helper.make_node("Ceil", [f"{p}log2_low"], [f"{p}rounds_real"]),
        helper.make_node("Cast", [f"{p}rounds_real"], [f"{p}rounds_1"], to=TensorProto.INT64),
        helper.make_node("Squeeze", [f"{p}rounds_1"], [f"{p}rounds"]),
        helper.make_node("Loop", [f"{p}rounds", f"{p}go", x, f"{p}outer_one"],
                         [y, f"{p}d_last"], body=body, name=f"{p}loop"),
    ]


def _skip_identity_casts(graph) -> None:
    """Remove Casts of a graph input to its own type (a traced ``masked_fill`` makes
    them), readers reading the input itself: onnxruntime would remove them too, but
    cannot rename what a loop body reads from outside."""
    types = {i.name: _elem(i) for i in graph.input}
    outputs = {o.name for o in graph.output}
    same = {}
    for node in graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if (node.op_type == "Cast" and types.get(node.input[0]) == to
                and node.output[0] not in outputs):
            same[node.output[0]] = node.input[0]
    kept = [n for n in graph.node if n.output[0] not in same]
    for node in kept:
        node.input[:] = [same.get(i, i) for i in node.input]
    del graph.node[:]
    graph.node.extend(kept)


def _hoist(nodes: list, loop_values: set[str], keep: set[str]) -> tuple[list, list]:
    """Loop-invariant code motion: (nodes that read nothing the loop changes, to run once
    before it; the rest, in order). ``loop_values``: the body's inputs; ``keep``: values
    the body must produce itself (its outputs). Nodes with subgraphs stay."""
    varying, before, inside = set(loop_values), [], []
    for node in nodes:
        reads_loop = any(i in varying for i in node.input if i)
        has_graph = any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute)
        if reads_loop or has_graph or keep.intersection(node.output):
            inside.append(node)
            varying.update(node.output)
        else:
            before.append(node)
    return before, inside


def join_search(start, decoder, step, carried: list[tuple[str, int, int]],
                records: tuple[str, ...], frames_like: str | None = None):
    """The search model: inputs ``trips`` and the start graph's; the start graph; one Loop
    whose body is the decoder-step graph then the step graph (its LogCumSumExp placeholders
    replaced by scans), over ``carried`` (name, element type, rank) from the start graph's
    init_<name> outputs to the step graph's next_<name>, while its keep_going holds;
    outputs all_<record> for the step graph's rec_<record> ``records``, stacked over the
    iterations run. ``frames_like``: a start-graph output whose axis 1 has the length of
    the scanned tensors. Nodes of the body that read nothing the loop changes run once,
    before it (``_hoist``)."""
    import onnx
    from onnx import TensorProto, helper

    for part, prefix in ((start, "start/"), (decoder, "dec/"), (step, "step/")):
        interface = {v.name for v in list(part.graph.input) + list(part.graph.output)}
        _rename(part.graph, prefix, interface)
    _skip_identity_casts(step.graph)
    nodes = list(decoder.graph.node)
    for i, node in enumerate(step.graph.node):
        if node.domain == CUSTOM and node.op_type == "LogCumSumExp":
            nodes += _scan_nodes(node, f"scan{i}/", frames_like)
        else:
            nodes.append(node)
    step_outputs = {o.name: o for o in step.graph.output}
    for out in step.graph.output:  # sizes as traced: unknown, the ranks kept
        for dim in out.type.tensor_type.shape.dim:
            dim.Clear()
    body_outputs = ["keep_going"] + [f"next_{n}" for n, _, _ in carried] + [
        f"rec_{n}" for n in records]
    body_inputs = [helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
                   helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])] + [
        helper.make_tensor_value_info(n, t, [None] * r) for n, t, r in carried]
    once, nodes = _hoist(nodes, {i.name for i in body_inputs}, set(body_outputs))
    body = helper.make_graph(nodes, "search_step", body_inputs,
                             [step_outputs[n] for n in body_outputs])
    loop = helper.make_node(
        "Loop", ["trips", "go"] + [f"init_{n}" for n, _, _ in carried],
        [f"last_{n}" for n, _, _ in carried] + [f"all_{n}" for n in records], body=body,
        name="search")
    go = helper.make_node("Constant", [], ["go"],
                          value=helper.make_tensor("go", TensorProto.BOOL, [], [True]))
    graph = helper.make_graph(
        list(start.graph.node) + once + [go, loop], "beam_search",
        [helper.make_tensor_value_info("trips", TensorProto.INT64, [])]
        + list(start.graph.input),
        [helper.make_tensor_value_info(f"all_{n}", _elem(step_outputs[f"rec_{n}"]),
                                       [None] * (_rank(step_outputs[f"rec_{n}"]) + 1))
         for n in records],
        initializer=[*start.graph.initializer, *decoder.graph.initializer,
                     *step.graph.initializer])
    opsets = {o.domain: o.version for m in (start, decoder, step) for o in m.opset_import
              if o.domain != CUSTOM}
    model = helper.make_model(graph, ir_version=max(m.ir_version for m in (start, decoder, step)),
                              opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    onnx.checker.check_model(model)
    return model
