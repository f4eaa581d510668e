"""Eq. 13 and the policy update of Algorithm 1 on synthetic inputs whose answer is known."""

import numpy as np
import torch

from tads_assets.core.method import dvn


def _inputs(n=400, k=3, seed=0):
    rng = np.random.default_rng(seed)
    h = rng.random((n, k))
    h /= np.linalg.norm(h, axis=1, keepdims=True)
    return dvn.standardise_inputs(rng.random(n), h, rng.uniform(0.01, 1.0, n))


def test_dvn_outputs_probabilities_near_the_initial_rate():
    torch.manual_seed(0)
    net = dvn.DataValueNetwork(dvn.DvnConfig(n_tasks=3, init_rate=0.4))
    v = net(*_inputs())
    assert ((v > 0) & (v < 1)).all() and abs(float(v.mean()) - 0.4) < 0.05


def test_one_update_raises_v_on_the_cluster_with_positive_advantage():
    for seed in range(3):
        torch.manual_seed(seed)
        q, h, d = _inputs(seed=seed)
        clusters = torch.as_tensor(np.repeat([0, 1], 200))
        q = torch.where(clusters == 1, q * 0.3, 0.7 + 0.3 * q)  # the clusters differ in quality
        net = dvn.DataValueNetwork(dvn.DvnConfig(n_tasks=3))
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        before = net(q, h, d).detach()
        loss = dvn.policy_loss(net(q, h, d), clusters, {0: 1.0}, net.parameters(), beta=1e-4)
        opt.zero_grad()
        loss.backward()
        opt.step()
        after = net(q, h, d).detach()
        assert after[clusters == 0].mean() > before[clusters == 0].mean() + 1e-3, seed


def test_a_saved_dvn_loads_back_with_the_same_values(tmp_path):
    import pytest

    torch.manual_seed(0)
    net = dvn.DataValueNetwork(dvn.DvnConfig(n_tasks=3))
    inputs = _inputs()
    dvn.save_dvn(net, tmp_path / "m", {"tasks": ["a", "b", "c"]})
    loaded, info = dvn.load_dvn(tmp_path / "m")
    assert info["tasks"] == ["a", "b", "c"] and info["config"]["n_tasks"] == 3
    with torch.no_grad():
        assert torch.equal(net.eval()(*inputs), loaded(*inputs))
    with pytest.raises(FileNotFoundError, match="materialize trained_dvn first"):
        dvn.load_dvn(tmp_path / "none")


def test_the_alignment_stream_is_part_of_the_network_and_old_checkpoints_keep_three_streams(tmp_path):
    import pytest

    q, h, d = _inputs()
    a = np.random.default_rng(1).normal(0.3, 0.1, len(q))
    with_a = dvn.standardise_inputs(q.numpy(), h.numpy(), np.exp(d.numpy()), a=a)
    assert len(with_a) == 4 and abs(float(with_a[3].mean())) < 1e-5 and abs(float(with_a[3].std()) - 1) < 1e-2
    torch.manual_seed(0)
    net = dvn.DataValueNetwork(dvn.DvnConfig(n_tasks=3, alignment_stream=True))
    assert net.fuse[0].in_features == 4 * net.config.embed_dim
    with torch.no_grad():  # a reaches v: other alignments, other values
        v = net(*with_a)
        assert not torch.allclose(v, net(*with_a[:3], -with_a[3]))
    with pytest.raises(ValueError, match="pass the pairs' alignment"):
        net(q, h, d)
    paper = dvn.DataValueNetwork(dvn.DvnConfig(n_tasks=3))  # the paper's eq. 13
    with pytest.raises(ValueError, match="no alignment stream"):
        paper(*with_a)
    with pytest.raises(ValueError, match="non-finite values .first at row 2"):
        dvn.standardise_inputs(q.numpy(), h.numpy(), np.exp(d.numpy()), a=np.r_[a[:2], np.nan, a[3:]])
    dvn.save_dvn(paper, tmp_path / "old", {})
    import json
    info = json.loads((tmp_path / "old" / dvn.DVN_INFO).read_text())
    del info["config"]["alignment_stream"]  # a checkpoint written before the stream existed
    (tmp_path / "old" / dvn.DVN_INFO).write_text(json.dumps(info))
    loaded, _ = dvn.load_dvn(tmp_path / "old")
    assert loaded.e_a is None
    dvn.save_dvn(net, tmp_path / "four", {"alignment_stats": [0.3, 0.1]})  # what trained_dvn writes by default
    loaded, info = dvn.load_dvn(tmp_path / "four")
    assert info["config"]["alignment_stream"] and loaded.e_a is not None
    with torch.no_grad():
        assert torch.equal(net.eval()(*with_a), loaded(*with_a))
