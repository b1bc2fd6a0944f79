"""Front ends: the name table, declared dimensions and frame rates, length arithmetic,
padding invariance, and statistics gathered through the front end (one process and two)."""

import os

import pytest
import torch

from earshot.config import FeatureConfig
from earshot.choices import FRONTENDS
from earshot.frontends import build_frontend
from earshot.masks import lengths_to_mask

KINDS = {
    "fbank": FeatureConfig(kind="fbank", sample_rate=8000, num_mel_bins=12),
    "mfcc": FeatureConfig(kind="mfcc", sample_rate=8000, num_mel_bins=15, num_ceps=7, deltas=True),
    "waveform": FeatureConfig(kind="waveform", sample_rate=8000),
}


def _batch(lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lens)
    wavs = 0.1 * torch.randn(len(lens), int(lens.max()), generator=g)
    return wavs.masked_fill(~lengths_to_mask(lens, wavs.size(1)), 0.0), lens


def test_the_table_names_every_kind():
    assert set(FRONTENDS) == {"fbank", "mfcc", "waveform"}
    assert {kind: type(build_frontend(FeatureConfig(kind=kind))).__name__ for kind in FRONTENDS} == {
        "fbank": "FilterbankFrontEnd", "mfcc": "FilterbankFrontEnd", "waveform": "WaveformFrontEnd"}


@pytest.mark.parametrize("kind", KINDS)
def test_declared_dimension_rate_and_lengths(kind):
    fe = build_frontend(KINDS[kind])
    wavs, lens = _batch([8000, 4000, 199, 200, 10])
    x, x_lens = fe(wavs, lens)
    assert x.shape[2] == fe.out_dim and x.dtype == torch.float32
    assert x_lens.tolist() == fe.num_frames(lens).tolist() == [int(n) for n in fe.num_frames(lens)]
    assert x.shape[1] == int(x_lens.max())
    assert x[~lengths_to_mask(x_lens, x.shape[1])].abs().sum() == 0
    expected_rate = {"fbank": 100.0, "mfcc": 100.0, "waveform": 8000.0}[kind]
    assert fe.frame_rate == expected_rate
    if kind != "waveform":  # 25 ms windows, 10 ms shift, snip edges
        assert x_lens.tolist() == [98, 48, 0, 1, 0]
    assert fe.out_dim == {"fbank": 12, "mfcc": 21, "waveform": 1}[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_padding_never_changes_an_utterance(kind):
    fe = build_frontend(KINDS[kind])
    acc = fe.new_statistics()
    if acc is not None:  # non-trivial statistics, so normalisation is exercised too
        fe.accumulate(acc, *_batch([8000, 5000], seed=3))
        fe.set_statistics(acc)
    wavs, lens = _batch([6000, 3100, 900])
    x, x_lens = fe(wavs, lens)
    for i in range(3):
        alone, alone_lens = fe(wavs[i:i + 1, : lens[i]], lens[i:i + 1])
        assert alone_lens.item() == x_lens[i].item()
        torch.testing.assert_close(alone[0], x[i, : x_lens[i]])


def test_waveform_front_end_normalises_each_utterance_or_not():
    wavs, lens = _batch([3000, 1000])
    x, _ = build_frontend(KINDS["waveform"])(3.0 * wavs + 0.5, lens)
    valid = x[1, :1000, 0]
    assert abs(valid.mean().item()) < 1e-5 and abs(valid.std(unbiased=False).item() - 1) < 1e-3
    raw, _ = build_frontend(FeatureConfig(kind="waveform", waveform_norm="none"))(wavs, lens)
    assert torch.equal(raw[:, :, 0], wavs)
    assert build_frontend(KINDS["waveform"]).new_statistics() is None
    assert not build_frontend(KINDS["waveform"]).spectral


def test_statistics_come_from_the_front_ends_own_features():
    fe = build_frontend(KINDS["fbank"])
    wavs, lens = _batch([8000, 3000])
    acc = fe.new_statistics()
    fe.accumulate(acc, wavs, lens)
    fe.set_statistics(acc)
    raw, raw_lens = fe.raw(wavs, lens)
    valid = raw[lengths_to_mask(raw_lens, raw.shape[1])].double()
    torch.testing.assert_close(fe.normalizer.mean, valid.mean(0).float())
    x, x_lens = fe(wavs, lens)
    normed = x[lengths_to_mask(x_lens, x.shape[1])]
    assert normed.mean(0).abs().max() < 1e-4


def _rank_statistics(rank, world, port, shards, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fe = build_frontend(KINDS["fbank"])
        acc = fe.new_statistics()
        for wavs, lens in shards[rank]:
            fe.accumulate(acc, wavs, lens)
        acc.all_reduce()
        fe.set_statistics(acc)
        torch.save({"mean": fe.normalizer.mean, "std": fe.normalizer.std}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_get_the_statistics_of_the_whole_set(tmp_path):
    """Unequal shards: summing counts and sums over ranks equals one process over all the
    data; averaging the ranks' mean and std (what 0.1 did) would not."""
    import socket

    import torch.multiprocessing as mp

    batches = [_batch([8000, 7000], seed=1), _batch([2000], seed=2), _batch([5000, 900, 4000], seed=4)]
    shards = [batches[:1], batches[1:]]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank_statistics, args=(2, port, shards, str(tmp_path)), nprocs=2,
                       start_method="spawn")
    fe = build_frontend(KINDS["fbank"])
    acc = fe.new_statistics()
    for wavs, lens in batches:
        fe.accumulate(acc, wavs, lens)
    mean, std = acc.finalize()
    per_rank = []
    for rank in range(2):
        got = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["mean"], mean)
        torch.testing.assert_close(got["std"], std)
        single = fe.new_statistics()
        for wavs, lens in shards[rank]:
            fe.accumulate(single, wavs, lens)
        per_rank.append(single.finalize())
    averaged_std = (per_rank[0][1] + per_rank[1][1]) / 2
    assert not torch.allclose(averaged_std, std, atol=1e-3)
