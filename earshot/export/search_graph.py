"""Joint CTC/attention beam search as one onnxruntime graph.

At batch 1 a step of beam search is a decoder step and about 150 small tensor operators
(CTC prefix scores of every candidate, length and eos rules, top-k, the next beam), and
in eager torch each operator costs microseconds of dispatch: more than its arithmetic.
Here the whole search is one ONNX ``Loop`` that onnxruntime runs in a single call:

    body = the export's decoder-step graph  ->  the library's own step, traced:
           ``score_full`` + ``decide`` (beam_search.py) + every scorer's ``select_state``

The step is traced from the same Python functions the eager search runs, at run time,
for the beam size, weights and rules of the search at hand (it holds no weights), then
joined to ``decoder_step.onnx`` and kept for the next search with the same settings.
Each iteration records what the step decided (ranked extensions, those that finished,
the next beam's parents and tokens); the hypotheses are read back from those records
as the eager loop would have collected them. Utterances that are done stay in the
batch (masked) instead of being dropped.

It runs when the scorers are the attention decoder of an export, CTC prefix scoring
without a window and the length bonus; any other search (a language model, coverage,
attention-shift limits, a CTC window) runs step by step in Python over the same graphs.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
import numpy as np
import torch
from torch import nn

from earshot.decoding import ctc_prefix
from earshot.decoding.beam_search import SearchSpec, _Beam, _Live, decide, score_full
from earshot.decoding.scorers import CTCPrefixScorer, DecoderScorer, LengthBonus, _DecoderRows
from earshot.export.graph_join import CUSTOM, join_search
from earshot.export.runtime import _session
from earshot.models.decoder import AttentionalDecoder, DecoderState, Memory

log = logging.getLogger(__name__)


# what the step graph carries from one iteration to the next, after the decoder's state
_CARRIED = ("score", "raw", "n_finished", "best_final", "done")
_CTC_CARRIED = ("ctc_a", "ctc_b", "ctc_psi", "ctc_last")
_CONSTANTS = ("row_min", "row_max", "max_lens", "offsets")
_CTC_CONSTANTS = ("ctc_log_probs", "ctc_probs", "ctc_utt", "ctc_row_lens", "ctc_padding",
                  "ctc_last_frame", "ctc_by_label", "ctc_label_base")
# what each iteration records (stacked over iterations by the loop)
_RECORDS = ("top", "rows", "final", "ext_raw", "new_rows", "new_tokens", "new_score",
            "new_raw", "n_finished", "done_now")


def _logaddexp(g, a, b):
    """ONNX for torch.logaddexp (the exporter has none): ReduceLogSumExp over the pair,
    max + log(exp(a - max) + exp(b - max)), which onnxruntime keeps -inf where both are."""
    axis = g.op("Constant", value_t=torch.tensor([-1]))
    pair = g.op("Concat", g.op("Unsqueeze", a, axis), g.op("Unsqueeze", b, axis), axis_i=-1)
    return g.op("ReduceLogSumExp", pair, axis, keepdims_i=0)


def _logcumsumexp(g, x, dim, *args):
    """A placeholder node, replaced by ``_scan_nodes`` once the graph is exported."""
    from torch.onnx import symbolic_helper

    out = g.op(f"{CUSTOM}::LogCumSumExp", x, axis_i=symbolic_helper._get_const(dim, "i", "dim"))
    out.setType(x.type())
    return out


class _Precomputed:
    """The decoder as ``DecoderScorer`` sees it, when the step it asks for has already run
    (in the decoder-step graph, whose outputs are this graph's inputs)."""

    def __init__(self, log_probs, state: DecoderState, attention) -> None:
        self.log_probs, self.state, self.attention = log_probs, state, attention

    def step(self, tokens, state, memory):
        return self.log_probs, self.state

    select_state = staticmethod(AttentionalDecoder.select_state)

    def alignment(self, state: DecoderState):
        return self.attention.alignment(state.attn)


class _Step(nn.Module):
    """One iteration after the decoder, over flat tensors: ``score_full``, ``decide`` and
    the scorers' ``select_state``, as the eager loop runs them."""

    def __init__(self, scorers, spec: SearchSpec, attention, lstm: bool) -> None:
        super().__init__()
        self.scorers, self.spec, self.attention, self.lstm = scorers, spec, attention, lstm
        self.ctc = next((i for i, ws in enumerate(scorers) if ws.scorer.partial), None)
        if self.ctc is not None:
            self.register_buffer("excluded", scorers[self.ctc].scorer.excluded.clone())
        self.register_buffer("vocab_ids", torch.arange(spec.vocab_size).unsqueeze(0))

    def input_names(self) -> list[str]:
        names = ["step", *_CARRIED] + list(_CTC_CARRIED) * (self.ctc is not None)
        names += list(_CONSTANTS) + list(_CTC_CONSTANTS) * (self.ctc is not None)
        return names + ["log_probs", "new_hidden"] + ["new_cell"] * self.lstm + [
            "new_context", "new_attn"]

    def output_names(self) -> list[str]:
        carried = ["tokens", "hidden"] + ["cell"] * self.lstm + ["context", "attn"]
        carried += list(_CARRIED) + list(_CTC_CARRIED) * (self.ctc is not None) + ["step"]
        return ["keep_going"] + [f"next_{n}" for n in carried] + [f"rec_{n}" for n in _RECORDS]

    def forward(self, *inputs):
        named = dict(zip(self.input_names(), inputs))
        step = named["step"]
        state = DecoderState(named["new_hidden"], named.get("new_cell"), named["new_context"],
                             named["new_attn"])
        scorers, states = [], []
        for i, ws in enumerate(self.scorers):
            scorer, st = ws.scorer, None
            if isinstance(scorer, DecoderScorer):
                decoder = _Precomputed(named["log_probs"], state, self.attention)
                scorer = DecoderScorer(decoder, None, scorer.temperature)
                st = _DecoderRows(state, None)
            elif i == self.ctc:
                scorer = self._ctc(scorer, named)
                st = ctc_prefix.PrefixState(*(named[n] for n in _CTC_CARRIED))
            scorers.append(type(ws)(ws.name, scorer, ws.weight))
            states.append(st)
        live = _Live(None, None, named["max_lens"], named["n_finished"], named["best_final"],
                     named["row_min"], named["row_max"], named["offsets"])
        score = named["score"]
        beam = _Beam(score.unsqueeze(1), score, named["raw"])  # scorers read only its row count
        full = score_full(scorers, beam.tokens, states, step)
        d = decide(scorers, self.spec, full, beam, states, live, step, self.vocab_ids)
        new_states = [ws.scorer.select_state(st, d.new_rows, d.new_tokens)
                      for ws, st in zip(scorers, d.states)]
        was_done = named["done"]
        final = d.final & ~was_done.unsqueeze(1)  # an utterance that is done is not searched
        done = was_done | d.done
        dec = next(s.dec for s in new_states if isinstance(s, _DecoderRows))
        out = [(~done).any(), d.new_tokens, dec.hidden] + [dec.cell] * self.lstm + [
            dec.context, dec.attn, d.new_score, d.new_raw, d.n_finished, d.best_final, done]
        if self.ctc is not None:
            ctc = new_states[self.ctc]
            out += [ctc.a, ctc.b, ctc.psi, ctc.last]
        out.append(step + 1)
        out += [d.top, d.rows, final, d.ext_raw, d.new_rows, d.new_tokens, d.new_score,
                d.new_raw, d.n_finished, done & ~was_done]
        return tuple(out)

    def _ctc(self, scorer: CTCPrefixScorer, named: dict) -> CTCPrefixScorer:
        """The CTC scorer with its per-search tensors taken from the graph's inputs."""
        out = object.__new__(CTCPrefixScorer)
        out.log_probs, out.probs = named["ctc_log_probs"], named["ctc_probs"]
        out.lens = None  # read only through rows
        out.rows = ctc_prefix.Rows(*(named[n] for n in _CTC_CONSTANTS[2:]))
        out.blank, out.eos, out.window, out.excluded = scorer.blank, scorer.eos, 0, self.excluded
        out.max_step_score = scorer.max_step_score
        return out


_INPUTS = ("in_enc", "in_enc_lens", "in_mask", "in_keys", "in_ctc_log_probs", "in_min_lens",
           "in_max_lens")


class _Start(nn.Module):
    """The search's first state from its inputs (``beam_search.start``): the beam, the
    scorers' first states (the decoder's memory repeated per row, the CTC posteriors
    prepared) and the limits, named as the loop takes them."""

    def __init__(self, scorers, spec: SearchSpec, decoder, bos: int) -> None:
        super().__init__()
        self.scorers, self.spec, self.decoder, self.bos = scorers, spec, decoder, bos

    def forward(self, enc, enc_lens, mask, keys, ctc_log_probs, min_lens, max_lens):
        from earshot.decoding.beam_search import start

        memory = Memory(enc, enc_lens, mask, keys)
        scorers, ctc = [], None
        for ws in self.scorers:
            scorer = ws.scorer
            if isinstance(scorer, DecoderScorer):
                scorer = DecoderScorer(self.decoder, memory, scorer.temperature)
            elif isinstance(scorer, CTCPrefixScorer):
                exclude = tuple(scorer.excluded.nonzero().flatten().tolist())
                scorer = ctc = CTCPrefixScorer(ctc_log_probs, enc_lens, scorer.blank, scorer.eos,
                                               0, exclude)
            scorers.append(type(ws)(ws.name, scorer, ws.weight))
        b = enc.shape[0]
        beam, states, live = start(scorers, b, self.spec.k, self.bos, min_lens, max_lens,
                                   self.spec.cfg.nbest)
        rows = next(st for st in states if isinstance(st, _DecoderRows))
        out = {"init_tokens": beam.tokens[:, -1], "init_hidden": rows.dec.hidden}
        if rows.dec.cell is not None:
            out["init_cell"] = rows.dec.cell
        out.update({"init_context": rows.dec.context, "init_attn": rows.dec.attn,
                    "init_score": beam.score, "init_raw": beam.raw,
                    "init_n_finished": live.n_finished, "init_best_final": live.best_final,
                    "init_done": torch.zeros_like(live.max_lens, dtype=torch.bool)})
        if ctc is not None:
            st = next(st for st in states if isinstance(st, ctc_prefix.PrefixState))
            out.update({"init_ctc_a": st.a, "init_ctc_b": st.b, "init_ctc_psi": st.psi,
                        "init_ctc_last": st.last})
        out["init_step"] = torch.zeros((), dtype=torch.long)
        out.update({"enc": rows.memory.enc, "mask": rows.memory.mask, "keys": rows.memory.keys,
                    "row_min": live.row_min, "row_max": live.row_max, "max_lens": live.max_lens,
                    "offsets": live.offsets})
        if ctc is not None:
            r = ctc.rows
            out.update({"ctc_log_probs": ctc.log_probs, "ctc_probs": ctc.probs,
                        "ctc_utt": r.utt, "ctc_row_lens": r.lens, "ctc_padding": r.padding,
                        "ctc_last_frame": r.last_frame, "ctc_by_label": r.by_label,
                        "ctc_label_base": r.label_base})
        return out


# -- running it ------------------------------------------------------------------------

class _Tuple(nn.Module):
    """A module returning a dict of tensors, as the tuple of its values (for export)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        return tuple(self.inner(*args).values())


@dataclass
class _Graph:
    model: bytes  # the search model, serialised
    inputs: set[str]  # the input names it kept
    session: object = None  # its onnxruntime session, made on first use


class SearchGraphs:
    """Whole-search graphs for one ``OnnxASR``, made on demand and kept per search
    configuration (``beam_search``'s ``graphs`` argument). ``threads``: onnxruntime's
    threads."""

    def __init__(self, model, threads: int = 1) -> None:
        self.model, self.threads = model, threads
        self.searches: dict = {}

    def search(self, scorers, spec: SearchSpec, min_lens: torch.Tensor, max_lens: torch.Tensor,
               bos: int):
        """(finished, fallback) as ``beam_search`` collects them, or None when these
        scorers do not run as one graph."""
        kinds = [type(ws.scorer) for ws in scorers]
        if kinds.count(DecoderScorer) != 1 or any(
                k not in (DecoderScorer, CTCPrefixScorer, LengthBonus) for k in kinds):
            return None
        dec = scorers[kinds.index(DecoderScorer)].scorer
        ctc = scorers[kinds.index(CTCPrefixScorer)].scorer if CTCPrefixScorer in kinds else None
        if dec.decoder is not self.model or (ctc is not None and ctc.window > 0):
            return None
        memory = dec.memory
        # without CTC the start graph does not read the posteriors: any (B, T, V) stands in
        log_probs = ctc.log_probs if ctc is not None else memory.enc.new_zeros(1, 1, 1)
        inputs = [memory.enc, memory.enc_lens, memory.mask, memory.keys, log_probs,
                  min_lens, max_lens]
        key = (spec, bos, tuple((ws.name, ws.weight, type(ws.scorer).__name__) for ws in scorers),
               dec.temperature,
               None if ctc is None else (ctc.blank, ctc.eos, tuple(ctc.excluded.tolist())))
        if key not in self.searches:
            self.searches[key] = self._build(scorers, spec, inputs, bos)
        graph = self.searches[key]
        if graph.session is None:
            graph.session = _session(graph.model, self.threads)
        session, used = graph.session, graph.inputs
        feeds = {"trips": np.array(int(max_lens.max()) + 1, dtype=np.int64)}
        feeds.update({n: x.detach().contiguous().numpy() for n, x in zip(_INPUTS, inputs)
                      if n in used})
        records = dict(zip(_RECORDS, session.run(None, feeds)))
        return _read_records(records, np.arange(len(max_lens)), spec.k)

    def _build(self, scorers, spec: SearchSpec, inputs: list, bos: int):
        import onnx

        from earshot.export.onnx import OPSET

        model = self.model
        start = _Start(scorers, spec, model.skeleton.decoder, bos).eval()
        with torch.no_grad():
            first = start(*inputs)  # the first state, as example inputs of the step
        lstm = "init_cell" in first
        step = _Step(scorers, spec, model.skeleton.decoder.attention, lstm).eval()
        init = {n.removeprefix("init_"): x for n, x in first.items() if n.startswith("init_")}
        dec_state = DecoderState(init["hidden"], init.get("cell"), init["context"], init["attn"])
        memory = Memory(first["enc"], first["mask"].sum(1), first["mask"], first["keys"])
        log_probs, new = model.step(init["tokens"], dec_state, memory)
        example = {**init, **first, "log_probs": log_probs, "new_hidden": new.hidden,
                   "new_cell": new.cell, "new_context": new.context, "new_attn": new.attn}
        torch.onnx.register_custom_op_symbolic("aten::logaddexp", _logaddexp, OPSET)
        torch.onnx.register_custom_op_symbolic("aten::logcumsumexp", _logcumsumexp, OPSET)
        rows, utts, frames = {0: "rows"}, {0: "utts"}, {1: "frames"}
        start_axes = {"in_enc": {0: "utts", 1: "frames"}, "in_enc_lens": utts,
                      "in_mask": {0: "utts", 1: "frames"}, "in_keys": {0: "utts", 1: "frames"},
                      "in_ctc_log_probs": {0: "utts", 1: "frames"}, "in_min_lens": utts,
                      "in_max_lens": utts}
        start_model = _export(_Tuple(start), inputs, list(_INPUTS), list(first), start_axes,
                              OPSET, custom=False)
        names = step.input_names()
        axes = {n: dict(rows) for n in ("score", "raw", "row_min", "row_max", "ctc_a", "ctc_b",
                                         "ctc_psi", "ctc_last", "ctc_utt", "ctc_row_lens",
                                         "ctc_padding", "ctc_last_frame", "ctc_label_base",
                                         "log_probs", "new_context", "new_attn")}
        axes.update({n: dict(utts) for n in ("n_finished", "best_final", "done", "max_lens",
                                              "offsets", "ctc_log_probs", "ctc_probs")})
        axes.update({n: {1: "rows"} for n in ("new_hidden", "new_cell")})
        axes["ctc_by_label"] = {0: "utt_labels", 1: "frames"}
        for n in ("ctc_a", "ctc_b", "ctc_padding", "ctc_log_probs", "ctc_probs"):
            axes[n].update(frames)
        axes["new_attn"][example["new_attn"].dim() - 1] = "frames"
        step_model = _export(step, [example[n] for n in names], names, step.output_names(),
                             {n: a for n, a in axes.items() if n in names}, OPSET,
                             custom=step.ctc is not None)
        decoder = onnx.load(str(model.directory / "decoder_step.onnx"))
        carried = ["tokens", "hidden"] + ["cell"] * lstm + ["context", "attn"]
        carried += [n for n in names if n in _CARRIED + _CTC_CARRIED] + ["step"]
        typed = [(n, onnx.helper.np_dtype_to_tensor_dtype(init[n].numpy().dtype), init[n].dim())
                 for n in carried]
        joined = join_search(start_model, decoder, step_model, typed, _RECORDS,
                             "ctc_padding" if step.ctc is not None else None)
        log.debug("beam search graph for beam %d built", spec.k)
        return _Graph(joined.SerializeToString(), {i.name for i in joined.graph.input})


def _export(module: nn.Module, args: list, inputs: list[str], outputs: list[str], axes: dict,
            opset: int, custom: bool):
    """``module`` traced to an ONNX model (in memory)."""
    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(args), buffer, input_names=inputs, output_names=outputs,
                          opset_version=opset, dynamo=False, dynamic_axes=axes,
                          custom_opsets={CUSTOM: 1} if custom else None)
    return onnx.load_from_string(buffer.getvalue())


def _read_records(rec: dict, ids: np.ndarray, k: int):
    """``beam_search``'s (finished, fallback) from the loop's records, collected as the
    eager loop collects them: a finished extension takes its parent row's tokens, read
    back through the rows' parents (in iteration, utterance, rank order, as the loop
    finds them), and an utterance that ended with none finished takes its top row."""
    parents, tokens = rec["new_rows"].tolist(), rec["new_tokens"].tolist()  # (steps, N)

    def history(length: int, row: int) -> list[int]:
        """The tokens of beam row ``row`` after ``length`` iterations."""
        out = [0] * length
        for j in range(length - 1, -1, -1):
            out[j], row = tokens[j][row], parents[j][row]
        return out

    steps, utt, pos = np.nonzero(rec["final"])
    rows = rec["rows"][steps, utt, pos].tolist()
    finished = [(ids[utt], [history(s, r) for s, r in zip(steps.tolist(), rows)],
                 rec["top"][steps, utt, pos], rec["ext_raw"][steps, utt, pos])]
    fallback = {}
    ended = rec["done_now"] & (rec["n_finished"] == 0)
    for s, u in zip(*(x.tolist() for x in np.nonzero(ended))):
        row = u * k
        fallback[int(ids[u])] = (history(s + 1, row), float(rec["new_score"][s][row]),
                                 rec["new_raw"][s][row].tolist())
    return finished, fallback
