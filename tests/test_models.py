"""Encoder, attention, decoder, CTC head and the whole model: shapes, lengths, masks, equivalences."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch

from earshot.config import (AttentionConfig, DecoderConfig, FeatureConfig, LossConfig,
                            ModelConfig)
from earshot.decoding.greedy import greedy_attention, greedy_ctc
from earshot.masks import lengths_to_mask
from earshot.models.encoders.conformer import ConformerConfig
from earshot.models.encoders.crdnn import CRDNNConfig
from earshot.models.attention import (ContentAttention, LocationAwareAttention,
                                      MultiHeadLocationAttention, reachable_conv)
from earshot.models.encoders.conformer import Conformer
from earshot.models.encoders.crdnn import (CRDNN, CNNBlock, PaddedRNN, pooled_lengths,
                                          stack_frames)
from earshot.models.ctc import CTCHead
from earshot.models.decoder import AttentionalDecoder
from earshot.models.dropout import Dropout

V, ENC = 11, 12


def tiny_encoder(**kw) -> CRDNNConfig:
    base = dict(cnn_channels=(3, 4), time_pool=(2, 3), rnn_units=6, rnn_layers=2,
                rnn_time_pool=2, dnn_units=7, dropout=0.3)
    base.update(kw)
    return CRDNNConfig(**base)


# ---------------------------------------------------------------------------
# CRDNN: lengths through every time-changing layer


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_cnn_block_lengths_and_zero_padding(factor):
    block = CNNBlock(2, 3, 3, time_pool=factor, freq_pool=2, dropout=0.0, freq=8)
    lens = torch.tensor([1, 2, 5, 7, 9])
    y, out = block(torch.randn(5, 9, 8, 2), lens)
    expected = [-(-n // factor) for n in lens.tolist()]
    assert out.tolist() == expected
    assert y.shape == (5, max(expected), 4, 3)
    assert y[~lengths_to_mask(out, y.size(1))].abs().sum() == 0


@pytest.mark.parametrize("kind, bidirectional", [("lstm", True), ("lstm", False), ("gru", True)])
def test_padded_rnn_matches_packed_torch_rnn_and_loads_its_weights(kind, bidirectional):
    """The unpacked RNN gives every valid frame what PyTorch's own multi-layer RNN gives it
    on packed sequences, from that module's state dict (the names earshot 0.2 saved)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    fused = getattr(torch.nn, kind.upper())(5, 4, num_layers=3, batch_first=True,
                                            bidirectional=bidirectional).eval()
    rnn = PaddedRNN(kind, 5, 4, 3, bidirectional, dropout=0.3).eval()
    rnn.load_state_dict(fused.state_dict())
    x, lens = torch.randn(4, 9, 5), torch.tensor([9, 5, 1, 7])
    packed = pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False)
    want, _ = pad_packed_sequence(fused(packed)[0], batch_first=True, total_length=9)
    got = rnn(x, lens)
    valid = lengths_to_mask(lens, 9)
    assert got.shape == want.shape
    torch.testing.assert_close(got[valid], want[valid], atol=1e-6, rtol=1e-5)
    # and the parameter order is nn.LSTM's (optimizer states of old checkpoints line up)
    assert [p.shape for p in rnn.parameters()] == [p.shape for p in fused.parameters()]


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_dropout_matches_nn_dropout_in_rate_scale_and_gradient(p):
    torch.manual_seed(0)
    drop = Dropout(p)
    x = torch.ones(400_000, requires_grad=True)
    y = drop(x)
    kept = y != 0
    # the same keep rate as nn.Dropout, on every one of the four lanes of a draw
    for lane in range(4):
        assert abs(kept[lane::4].float().mean().item() - (1 - p)) < 0.006
    assert torch.allclose(y[kept], torch.tensor(1 / (1 - p)))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient is the mask itself
    # two draws differ; bf16 input stays bf16
    assert not torch.equal(drop(torch.ones(1000)), drop(torch.ones(1000)))
    assert drop(torch.ones(8, dtype=torch.bfloat16)).dtype == torch.bfloat16
    drop.eval()
    assert drop(x) is x
    # the state dict and arguments are nn.Dropout's
    assert Dropout(p).state_dict() == torch.nn.Dropout(p).state_dict() == {}


@pytest.mark.parametrize("frames", [1, 4, 30])
@pytest.mark.parametrize("groups", [1, 2])
def test_reachable_conv_equals_the_full_kernel(frames, groups):
    conv = torch.nn.Conv1d(groups, 3 * groups, 21, padding=10, groups=groups, bias=False)
    x = torch.rand(5, groups, frames)
    torch.testing.assert_close(reachable_conv(conv, x), conv(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("frames", [3, 30])
def test_location_conv_training_path_gives_the_same_values_and_gradients(frames):
    # Training takes ATen's im2col kernel, decoding oneDNN's: the same function.
    conv = torch.nn.Conv1d(1, 10, 41, padding=20, bias=False)
    x = torch.rand(6, 1, frames, requires_grad=True)
    ours, theirs = reachable_conv(conv, x), conv(x)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    grads = [torch.autograd.grad((y * torch.arange(y.numel()).view_as(y).sin()).sum(),
                                 (x, conv.weight)) for y in (ours, theirs)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # decoding: oneDNN's numbers, bit for bit
        assert torch.equal(reachable_conv(conv, x), torch.nn.functional.conv1d(
            x, conv.weight[:, :, 20 - (frames - 1): 20 + frames] if frames <= 20 else conv.weight,
            padding=min(20, frames - 1)))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_stack_frames_lengths_and_layout(k):
    x = torch.arange(2 * 7 * 2, dtype=torch.float).view(2, 7, 2)
    lens = torch.tensor([7, 4])
    y, out = stack_frames(x, lens, k)
    assert out.tolist() == [-(-7 // k), -(-4 // k)]
    assert y.shape == (2, -(-7 // k), 2 * k)
    assert torch.equal(y[0].flatten()[:14], x[0].flatten())  # frames concatenated in order
    assert y[1].flatten()[4 * 2:].abs().sum() == 0  # padding stacked as zeros


@pytest.mark.parametrize("time_pool,stack", [((1, 2), 2), ((2, 3), 1), ((1, 1), 3)])
def test_crdnn_output_lengths(time_pool, stack):
    enc = CRDNN(tiny_encoder(time_pool=time_pool, rnn_time_pool=stack), input_dim=10).eval()
    lens = torch.tensor([1, 2, 5, 13, 30])
    h, h_lens = enc(torch.randn(5, 30, 10), lens)
    expected = lens.clone()
    for f in (*time_pool, stack):
        expected = pooled_lengths(expected, f)
    assert h_lens.tolist() == expected.tolist() == enc.output_lengths(lens).tolist()
    assert h.shape == (5, int(expected.max()), enc.output_dim)
    assert h[~lengths_to_mask(h_lens, h.size(1))].abs().sum() == 0


@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
def test_crdnn_batch_invariance_and_padding_content(rnn_type):
    torch.manual_seed(0)
    enc = CRDNN(tiny_encoder(rnn_type=rnn_type), input_dim=10).eval()
    assert_padding_invariant(enc, torch.tensor([23, 9, 14]))


def assert_padding_invariant(enc, lens, dim=10):
    """Each utterance encoded in a padded batch equals it encoded alone; garbage in the
    padding must not matter."""
    feats = torch.randn(len(lens), int(lens.max()), dim)
    feats[~lengths_to_mask(lens)] = 100.0
    h, h_lens = enc(feats, lens)
    for i in range(len(lens)):
        alone, alone_len = enc(feats[i:i + 1, : lens[i]], lens[i:i + 1])
        assert alone_len.item() == h_lens[i].item()
        torch.testing.assert_close(h[i, : h_lens[i]], alone[0], atol=1e-5, rtol=1e-5)


def test_crdnn_trains_with_gradients():
    enc = CRDNN(tiny_encoder(), input_dim=10).train()
    h, _ = enc(torch.randn(2, 20, 10), torch.tensor([20, 11]))
    h.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


# ---------------------------------------------------------------------------
# attention


@pytest.mark.parametrize("cls", [ContentAttention, LocationAwareAttention, MultiHeadLocationAttention])
def test_attention_masks_padding_and_is_batch_invariant(cls):
    torch.manual_seed(0)
    att = cls(AttentionConfig(dim=8, heads=2, location_channels=3, location_kernel=5), ENC, 5)
    lens = torch.tensor([7, 3])
    enc = torch.randn(2, 7, ENC)
    mask = lengths_to_mask(lens, 7)
    prev = att.init_state(enc, lens)
    torch.testing.assert_close(att.alignment(prev)[1], torch.tensor([1 / 3] * 3 + [0.0] * 4))
    query = torch.randn(2, 5)
    context, weights = att(query, enc, att.precompute(enc), mask, prev)
    assert context.shape == (2, ENC)
    assert weights[1, ..., 3:].eq(0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    e1 = enc[1:, :3]
    c1, w1 = att(query[1:], e1, att.precompute(e1), mask[1:, :3], prev[1:, ..., :3])
    torch.testing.assert_close(c1[0], context[1])
    torch.testing.assert_close(w1[0], weights[1, ..., :3])


def test_multihead_location_attention_keeps_one_alignment_per_head():
    torch.manual_seed(0)
    att = MultiHeadLocationAttention(AttentionConfig(dim=12, heads=3, location_kernel=3), ENC, 5)
    enc, lens = torch.randn(2, 6, ENC), torch.tensor([6, 4])
    _, weights = att(torch.randn(2, 5), enc, att.precompute(enc), lengths_to_mask(lens),
                     att.init_state(enc, lens))
    assert weights.shape == (2, 3, 6)
    assert not torch.allclose(weights[:, 0], weights[:, 1])  # the heads look at different frames
    torch.testing.assert_close(att.alignment(weights), weights.mean(1))


def test_location_attention_uses_previous_weights():
    torch.manual_seed(0)
    att = LocationAwareAttention(AttentionConfig(dim=8), ENC, 5)
    enc, lens = torch.randn(1, 6, ENC), torch.tensor([6])
    mask, keys, q = lengths_to_mask(lens), att.precompute(enc), torch.randn(1, 5)
    peak = torch.zeros(1, 6)
    peak[0, 4] = 1.0
    _, w_a = att(q, enc, keys, mask, att.init_state(enc, lens))
    _, w_b = att(q, enc, keys, mask, peak)
    assert not torch.allclose(w_a, w_b)


# ---------------------------------------------------------------------------
# decoder


def make_decoder(rnn_type="gru", attention="location", layers=1, dropout=0.0) -> AttentionalDecoder:
    att = AttentionConfig(type=attention, dim=8, heads=2, location_channels=3, location_kernel=5)
    cfg = DecoderConfig(rnn_type=rnn_type, layers=layers, units=10, embedding_dim=6,
                        dropout=dropout, attention=att)
    return AttentionalDecoder(cfg, V, ENC, bos_id=1)


def make_memory(dec, lens=(8, 5, 3)):
    torch.manual_seed(1)
    lens = torch.tensor(lens)
    enc = torch.randn(len(lens), int(lens.max()), ENC) * lengths_to_mask(lens).unsqueeze(-1)
    return dec.memory(enc, lens)


@pytest.mark.parametrize("rnn_type,attention,layers",
                         list(itertools.product(["gru", "lstm"],
                                                ["content", "location", "multihead_location"], [1, 2])))
def test_step_by_step_equals_teacher_forced_forward(rnn_type, attention, layers):
    torch.manual_seed(0)
    dec = make_decoder(rnn_type, attention, layers, dropout=0.3).eval()
    memory = make_memory(dec)
    tokens = torch.randint(0, V, (3, 6))
    tokens[:, 0] = 1
    forced = torch.log_softmax(dec(memory, tokens).float(), dim=-1)
    state = dec.init_state(memory)
    assert (state.cell is None) == (rnn_type == "gru")
    for t in range(tokens.size(1)):
        log_probs, state = dec.step(tokens[:, t], state, memory)
        torch.testing.assert_close(log_probs, forced[:, t], atol=1e-5, rtol=1e-5)


def test_repeat_memory_and_select_state():
    torch.manual_seed(0)
    dec = make_decoder("lstm").eval()
    memory = make_memory(dec)
    rep = dec.repeat_memory(memory, 2)
    assert rep.enc.size(0) == 6 and rep.enc_lens.tolist() == [8, 8, 5, 5, 3, 3]
    state = dec.init_state(rep)
    tokens = torch.tensor([1, 2, 1, 3, 1, 4])
    _, state = dec.step(tokens, state, rep)
    # keep only the second copy of each utterance, in reversed utterance order
    picked = dec.select_state(state, torch.tensor([5, 3, 1]))
    small = dec.init_state(memory)
    _, direct = dec.step(torch.tensor([2, 3, 4]), small, memory)
    order = torch.tensor([2, 1, 0])
    torch.testing.assert_close(picked.hidden, direct.hidden[:, order])
    torch.testing.assert_close(picked.cell, direct.cell[:, order])
    torch.testing.assert_close(picked.attn, direct.attn[order])
    torch.testing.assert_close(picked.context, direct.context[order])


def test_scheduled_sampling_zero_is_teacher_forcing():
    torch.manual_seed(0)
    dec = make_decoder(dropout=0.0).train()
    memory = make_memory(dec)
    tokens = torch.randint(0, V, (3, 5))
    torch.manual_seed(5)
    a = dec(memory, tokens, sampling_prob=0.0)
    torch.manual_seed(6)
    b = dec(memory, tokens)
    assert torch.equal(a, b)


def test_scheduled_sampling_one_feeds_predictions():
    torch.manual_seed(0)
    dec = make_decoder("gru", "content").eval()
    memory = make_memory(dec)
    tokens = torch.randint(0, V, (3, 6))
    tokens[:, 0] = 1
    sampled = dec(memory, tokens, sampling_prob=1.0)
    # Reference: feed the argmax of each step's prediction by hand.
    state, prev, expect = dec.init_state(memory), tokens[:, 0], []
    for _ in range(tokens.size(1)):
        log_probs, state = dec.step(prev, state, memory)
        expect.append(log_probs)
        prev = log_probs.argmax(-1)
    torch.testing.assert_close(torch.log_softmax(sampled, -1), torch.stack(expect, 1),
                               atol=1e-5, rtol=1e-5)
    forced = dec(memory, tokens)
    assert not torch.allclose(forced, sampled)


# ---------------------------------------------------------------------------
# CTC head


def test_ctc_head_is_float32_under_autocast():
    head = CTCHead(ENC, V)
    h = torch.randn(2, 4, ENC)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp = head(h.bfloat16())
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, torch.log_softmax(head.proj(h), -1), atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(2, 4))


# ---------------------------------------------------------------------------
# the whole model


TINY_ENCODERS = {
    "crdnn": CRDNNConfig(cnn_channels=(4,), time_pool=(2,), rnn_layers=1, rnn_units=32,
                         rnn_time_pool=2, dnn_layers=1, dnn_units=32, dropout=0.0),
    "conformer": ConformerConfig(dim=32, layers=2, heads=4, ffn_dim=64, conv_kernel=5,
                                 subsampling_channels=8, dropout=0.0),
    "conformer_relative": ConformerConfig(dim=32, layers=2, heads=4, ffn_dim=64, conv_kernel=5,
                                          subsampling_channels=8, dropout=0.0,
                                          positional="relative"),
}


def tiny_model_config(encoder: str = "crdnn", attention: str = "location") -> ModelConfig:
    return ModelConfig(
        features=FeatureConfig(num_mel_bins=16),
        encoder=TINY_ENCODERS[encoder],
        decoder=DecoderConfig(units=32, embedding_dim=16, dropout=0.0,
                              attention=AttentionConfig(type=attention, dim=32, heads=2,
                                                        location_channels=4, location_kernel=5)),
    )


SPECIALS = dict(blank=0, pad=1, bos=2, eos=3)


def tiny_batch():
    g = torch.Generator().manual_seed(0)
    t = torch.arange(4000) / 16000
    wavs = torch.stack([0.3 * torch.sin(2 * torch.pi * 440 * t),
                        0.3 * torch.sin(2 * torch.pi * 1200 * t)])
    wavs = wavs + 0.01 * torch.randn(wavs.shape, generator=g)
    wav_lens = torch.tensor([4000, 3000])
    wavs[1, 3000:] = 0
    tokens = torch.tensor([[4, 5, 6, 7], [8, 9, 10, 1]])
    return SimpleNamespace(wavs=wavs, wav_lens=wav_lens, tokens=tokens,
                           token_lens=torch.tensor([4, 3]))


def test_model_forward_and_decoder_io():
    from earshot.models.asr import EncoderDecoderASR

    torch.manual_seed(0)
    model = EncoderDecoderASR(tiny_model_config(), V, SPECIALS)
    batch = tiny_batch()
    tokens_in, targets = model.decoder_io(batch.tokens, batch.token_lens)
    assert tokens_in.tolist() == [[2, 4, 5, 6, 7], [2, 8, 9, 10, 1]]
    assert targets.tolist() == [[4, 5, 6, 7, 3], [8, 9, 10, 3, 1]]
    out = model(batch, LossConfig(ctc_weight=0.3, label_smoothing=0.0))
    assert out.ntokens == 9
    torch.testing.assert_close(out.loss.detach(), 0.3 * out.ctc + 0.7 * out.nll)
    out.loss.backward()
    trained = [n for n, p in model.named_parameters() if p.grad is None]
    assert trained == []


@pytest.mark.parametrize("encoder,attention", [("crdnn", "location"), ("conformer", "location"),
                                               ("conformer_relative", "content"),
                                               ("crdnn", "multihead_location")])
def test_model_overfits_two_utterances(encoder, attention):
    from earshot.models.asr import EncoderDecoderASR

    torch.manual_seed(0)
    model = EncoderDecoderASR(tiny_model_config(encoder, attention), V, SPECIALS)
    batch, loss_cfg = tiny_batch(), LossConfig(ctc_weight=0.3, label_smoothing=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        opt.zero_grad()
        out = model(batch, loss_cfg)
        out.loss.backward()
        opt.step()
        first = first if first is not None else out.loss.item()
    assert out.loss.item() < 0.1 * first
    model.eval()
    enc = model.encode(batch.wavs, batch.wav_lens)
    hyps = greedy_attention(model, enc.memory, 2, 3, 2.0)
    assert hyps == [[4, 5, 6, 7], [8, 9, 10]]
    assert greedy_ctc(enc.ctc_log_probs, enc.lens, blank_id=0) == hyps
    for i in range(2):  # front end + encoder: padding never changes an utterance
        wav, wav_len = batch.wavs[i:i + 1, : batch.wav_lens[i]], batch.wav_lens[i:i + 1]
        alone = model.encode(wav, wav_len)
        assert alone.lens.item() == enc.lens[i].item()
        torch.testing.assert_close(alone.memory.enc[0], enc.memory.enc[i, : enc.lens[i]],
                                   atol=1e-4, rtol=1e-4)


def test_model_parts_declare_their_tensors():
    from earshot.models.asr import EncoderDecoderASR

    model = EncoderDecoderASR(tiny_model_config(), V, SPECIALS)
    state = model.state_dict()
    assert set(model.statistics_names) == {"frontend.normalizer.mean", "frontend.normalizer.std"}
    for name in model.token_indexed_names:
        assert state[name].shape[0] == V, name
    assert len(model.token_indexed_names) == 5


def test_too_short_utterance_encodes_to_zero_frames():
    from earshot.models.asr import EncoderDecoderASR

    model = EncoderDecoderASR(tiny_model_config("conformer"), V, SPECIALS).eval()
    wavs = torch.randn(3, 4000) * 0.1
    lens = torch.tensor([4000, 10, 300])  # 10 samples: no 25 ms frame at all
    assert model.encoded_lengths(lens).tolist()[1] == 0
    enc = model.encode(wavs, lens)
    assert enc.lens.tolist() == model.encoded_lengths(lens).tolist()
    assert enc.lens[1] == 0 and enc.memory.enc[1].abs().sum() == 0
    alone = model.encode(wavs[:1], lens[:1])
    torch.testing.assert_close(alone.memory.enc[0], enc.memory.enc[0, : enc.lens[0]])


# ---------------------------------------------------------------------------
# Conformer


def tiny_conformer(**kw) -> ConformerConfig:
    base = dict(dim=16, layers=2, heads=2, ffn_dim=24, conv_kernel=5, subsampling_channels=4,
                dropout=0.0)
    base.update(kw)
    return ConformerConfig(**base)


@pytest.mark.parametrize("factor", [4, 6, 8])
def test_conformer_output_lengths(factor):
    enc = Conformer(tiny_conformer(subsampling=factor), input_dim=10).eval()
    lens = torch.tensor([1, 2, 5, 13, 30, 47])
    h, h_lens = enc(torch.randn(6, 47, 10), lens)
    expected = lens.clone()
    for stride in {4: (2, 2), 6: (2, 3), 8: (2, 2, 2)}[factor]:
        expected = -(-expected // stride)
    assert h_lens.tolist() == expected.tolist() == enc.output_lengths(lens).tolist()
    assert h.shape == (6, int(expected.max()), 16)
    assert h[~lengths_to_mask(h_lens, h.size(1))].abs().sum() == 0
    assert min(h_lens.tolist()) == 1  # never pooled to nothing


@pytest.mark.parametrize("positional", ["rotary", "relative"])
@pytest.mark.parametrize("factor", [4, 6])
def test_conformer_padding_never_changes_an_utterance(positional, factor):
    torch.manual_seed(0)
    enc = Conformer(tiny_conformer(positional=positional, subsampling=factor), input_dim=10).eval()
    assert_padding_invariant(enc, torch.tensor([41, 9, 23, 1]))


def test_conformer_positions_matter_and_all_parameters_train():
    torch.manual_seed(0)
    enc = Conformer(tiny_conformer(positional="relative"), input_dim=10)
    x, lens = torch.randn(2, 20, 10), torch.tensor([20, 13])
    enc.train()
    h, _ = enc(x, lens)
    h.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())
    enc.eval()
    block = enc.blocks[0].attn
    y = torch.randn(1, 6, 16)
    mask = torch.ones(1, 6, dtype=torch.bool)
    # Self-attention alone (no convolution) still tells positions apart: a reversed input
    # does not give the reversed output.
    for positional in ("rotary", "relative"):
        block.positional = positional
        if positional == "relative":
            torch.nn.init.normal_(block.pos_bias_v)
        out = block(y, mask)
        assert not torch.allclose(block(y.flip(1), mask).flip(1), out, atol=1e-4)


def test_intermediate_ctc_mixes_the_tapped_blocks_ctc_into_the_loss():
    from earshot.losses import ctc_loss
    from earshot.models.asr import EncoderDecoderASR

    torch.manual_seed(0)
    model = EncoderDecoderASR(tiny_model_config("conformer"), V, SPECIALS).eval()
    batch = tiny_batch()
    plain = model(batch, LossConfig(ctc_weight=0.3, label_smoothing=0.0))
    cfg = LossConfig(ctc_weight=0.3, label_smoothing=0.0, intermediate_ctc_weight=0.4,
                     intermediate_ctc_layers=(1,))
    out = model(batch, cfg)
    assert plain.intermediate_ctc is None
    torch.testing.assert_close(out.ctc, plain.ctc)  # the top block's CTC is the same
    torch.testing.assert_close(out.nll, plain.nll)
    # the tapped term is block 1's output through the same CTC head
    feats, lens = model.frontend(batch.wavs, batch.wav_lens)
    h, h_lens, (tapped,) = model.encoder.forward_with_taps(feats, lens, (1,))
    expected = ctc_loss(model.ctc(tapped), h_lens, batch.tokens, batch.token_lens, SPECIALS["blank"])
    torch.testing.assert_close(out.intermediate_ctc, expected.detach())
    assert abs(out.intermediate_ctc.item() - out.ctc.item()) > 1e-3
    torch.testing.assert_close(out.loss.detach(),
                               0.3 * (0.6 * out.ctc + 0.4 * out.intermediate_ctc) + 0.7 * out.nll)
    # the tapped block (and what is under it) gets the tapped term's gradient too
    model.zero_grad()
    model(batch, LossConfig(ctc_weight=1.0, label_smoothing=0.0, intermediate_ctc_weight=0.5,
                            intermediate_ctc_layers=(1,))).loss.backward()
    with_tap = model.encoder.blocks[0].ff1.net[1].weight.grad.clone()
    model.zero_grad()
    model(batch, LossConfig(ctc_weight=1.0, label_smoothing=0.0)).loss.backward()
    assert not torch.allclose(with_tap, model.encoder.blocks[0].ff1.net[1].weight.grad)
    # decoding never taps: encode gives no tapped outputs
    assert model.encode(batch.wavs, batch.wav_lens).tapped_ctc_log_probs == ()


def test_intermediate_ctc_taps_keep_rows_too_short_for_a_frame_at_zero():
    from earshot.models.asr import EncoderDecoderASR

    model = EncoderDecoderASR(tiny_model_config("conformer"), V, SPECIALS).eval()
    wavs = torch.randn(3, 4000) * 0.1
    lens = torch.tensor([4000, 10, 300])
    enc = model.encode(wavs, lens, taps=(1,))
    (tapped,) = enc.tapped_ctc_log_probs
    assert tapped.shape == enc.ctc_log_probs.shape
    alone = model.encode(wavs[:1], lens[:1], taps=(1,))
    torch.testing.assert_close(alone.tapped_ctc_log_probs[0][0], tapped[0, : enc.lens[0]])
    assert enc.select(torch.tensor([0])).tapped_ctc_log_probs[0].shape[0] == 1


def test_conformer_stochastic_depth_skips_layers_only_in_training():
    torch.manual_seed(0)
    enc = Conformer(tiny_conformer(layers=4, stochastic_depth=0.9), input_dim=10)
    x, lens = torch.randn(1, 12, 10), torch.tensor([12])
    assert [round(b.drop_prob, 3) for b in enc.blocks] == [0.225, 0.45, 0.675, 0.9]
    enc.eval()
    a, _ = enc(x, lens)
    b, _ = enc(x, lens)
    assert torch.equal(a, b)
    enc.train()
    outs = {enc(x, lens)[0].sum().item() for _ in range(8)}
    assert len(outs) > 1


@pytest.mark.parametrize("kind, bidirectional", [("lstm", True), ("lstm", False), ("gru", True)])
@pytest.mark.parametrize("time_pool,stack", [((1, 2), 1), ((2, 3), 2), ((1, 1), 3)])
def test_crdnn_without_padding_takes_the_fused_path_and_gives_the_padded_result(
        kind, bidirectional, time_pool, stack):
    """A batch whose rows are all full length (one utterance at a time) skips the masks
    and runs the RNN as one fused call: the same outputs as the general path, which the
    same rows take when a longer row pads them."""
    torch.manual_seed(0)
    enc = CRDNN(tiny_encoder(rnn_type=kind, bidirectional=bidirectional, time_pool=time_pool,
                             rnn_time_pool=stack), input_dim=10).eval()
    x = torch.randn(3, 13, 10)
    full, full_lens = enc(x, torch.tensor([13, 13, 13]))
    for row in range(3):  # the same row padded by a longer neighbour: the general path
        longer = torch.cat([x[row:row + 1], torch.randn(1, 13, 10)], 1)
        padded = torch.cat([longer, torch.randn(1, 26, 10)])
        h, h_lens = enc(padded, torch.tensor([13, 26]))
        n = int(full_lens[row])
        assert h_lens[0] == n
        torch.testing.assert_close(h[0, :n], full[row], atol=1e-6, rtol=1e-5)
    calls = []
    enc.rnn._fused = lambda x, original=enc.rnn._fused: calls.append(1) or original(x)
    enc(x, torch.tensor([13, 13, 13]))
    enc(x, torch.tensor([13, 12, 13]))
    enc.train()(x, torch.tensor([13, 13, 13]))  # training: per-layer dropout, general path
    assert calls == [1]
