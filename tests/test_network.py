"""The Notochord network: size, conditioning semantics, scoring, incremental steps, errors."""

import itertools
import math

import numpy as np
import pytest
import torch
from tiny import FEW_FEATURES, tiny_config

from notochord_rt.errors import InputError
from notochord_rt.model.config import NotochordConfig
from notochord_rt.model.network import NotochordNet, order_mask, random_cond_mask

torch.set_num_threads(1)

TINY = tiny_config(rnn_layers=2, **FEW_FEATURES)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    net = NotochordNet(**{**TINY, **kw})
    # make the heads non-trivial (their output layers start near zero)
    with torch.no_grad():
        for head in net.heads:
            head.out.weight.normal_(0, 0.5)
        net.end_head.weight.normal_(0, 0.5)
    return net.eval()


def random_batch(b, t, seed=0):
    g = torch.Generator().manual_seed(seed)
    inst = torch.randint(1, 321, (b, t), generator=g)
    pitch = torch.randint(0, 128, (b, t), generator=g)
    time = torch.rand(b, t, generator=g) * 0.5
    vel = torch.randint(0, 128, (b, t), generator=g).float()
    inst[:, 0], pitch[:, 0], time[:, 0], vel[:, 0] = 0, 128, 0.0, 0.0
    return inst, pitch, time, vel


def test_default_size_is_reference_size():
    net = NotochordNet()
    assert sum(p.numel() for p in net.parameters()) == 17_744_100
    assert net.config == NotochordConfig()
    assert tuple(net.initial_state.shape) == (2, 1, 1024)


def test_config_round_trip_and_validation():
    cfg = NotochordConfig(**TINY, norm=None)
    assert NotochordConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown config keys"):
        NotochordConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="emb_size"):
        NotochordConfig(emb_size=0)
    assert NotochordConfig.from_reference(cfg.to_reference()) == cfg


def test_init_fixes_end_head_and_mlp_layers_zero():
    net = NotochordNet(**{**TINY, "mlp_layers": 0, "rnn_hidden": 40})
    # the ×0.01 end-head init takes effect (default Linear init is bounded by H**-0.5)
    assert net.end_head.weight.abs().max() <= 0.01 * 40 ** -0.5 + 1e-9
    inst, pitch, time, vel = random_batch(2, 5)
    out = net(inst, pitch, time, vel, cond="itpv")  # layers=0 with H != E runs
    assert out["inst"].shape == (2, 4)


def test_forward_shapes_and_cond_forms_agree():
    net = tiny()
    inst, pitch, time, vel = random_batch(3, 6)
    end = torch.zeros(3, 6)
    end[:, -1] = 1
    a = net(inst, pitch, time, vel, end=end, cond="vtip")
    mask = order_mask("vtip")
    b = net(inst, pitch, time, vel, end=end, cond=mask)
    c = net(inst, pitch, time, vel, end=end, cond=mask.expand(3, 5, 4, 4))
    for k in ("inst", "pitch", "time", "vel", "end"):
        assert a[k].shape == (3, 5)
        assert torch.isfinite(a[k]).all() and (a[k] <= 1e-6).all()
        torch.testing.assert_close(a[k], b[k])
        torch.testing.assert_close(a[k], c[k])


def test_order_mask_semantics():
    m = order_mask("vtip")  # m[target, source]
    i, p, t, v = range(4)
    assert not m[v].any()
    assert m[t, v] and not m[t, i] and not m[t, p]
    assert m[i, v] and m[i, t] and not m[i, p]
    assert m[p, v] and m[p, t] and m[p, i]
    with pytest.raises(InputError, match="order"):
        order_mask("itp")


def test_random_mask_statistics():
    m = random_cond_mask((200, 50), generator=torch.Generator().manual_seed(0))
    assert not m.diagonal(dim1=-2, dim2=-1).any()
    off = m[..., ~torch.eye(4, dtype=torch.bool)].float().mean().item()
    assert abs(off - 0.5) < 0.01


@pytest.mark.parametrize("order", ["itpv", "vtip", "pvit", "tpvi"])
def test_each_sub_event_sees_exactly_what_precedes_it(order):
    """Changing a later sub-event of the same event leaves earlier ones' scores unchanged."""
    net = tiny(1)
    inst, pitch, time, vel = random_batch(1, 4, seed=2)
    base = net(inst, pitch, time, vel, cond=order)
    changes = {"inst": (inst, 7), "pitch": (pitch, 3), "time": (time, 0.9), "vel": (vel, 5.0)}
    names = {"i": "inst", "p": "pitch", "t": "time", "v": "vel"}
    for pos, c in enumerate(order):
        name = names[c]
        tensor, value = changes[name]
        changed = tensor.clone()
        changed[0, 2] = value
        args = dict(inst=inst, pitch=pitch, time=time, vel=vel)
        args[name] = changed
        out = net(**args, cond=order)
        for before in order[:pos + 1]:  # itself and earlier sub-events of event 2
            key = names[before]
            if key != name:
                torch.testing.assert_close(out[key][0, 1], base[key][0, 1])
        for after in order[pos + 1:]:
            assert not torch.isclose(out[names[after]][0, 1], base[names[after]][0, 1])
        # earlier events are unaffected (causality)
        for key in names.values():
            torch.testing.assert_close(out[key][0, 0], base[key][0, 0])


@pytest.mark.parametrize("order", ["itpv", "vtip", "pvit", "tpvi"])
def test_factorisation_is_a_normalised_distribution(order):
    """Summing P(event) over a whole (small) event space gives 1 for every order."""
    net = tiny(3, num_instruments=3, num_pitches=4, time_bounds=(0.0, 0.1),
               vel_bounds=(0.0, 3.0))
    # the vocabularies include the start tokens (inst 0, pitch 4): the heads give them mass
    grid = list(itertools.product(range(4), range(5), np.linspace(0, 0.1, 11), range(4)))
    ev = torch.tensor(grid, dtype=torch.float64)
    n = len(grid)
    prefix = torch.tensor([[0, 4, 0.0, 0.0], [2, 1, 0.03, 2.0]], dtype=torch.float64)
    seq = torch.cat([prefix[None].expand(n, -1, -1), ev[:, None]], dim=1)  # n, 3, 4
    out = net(seq[..., 0].long(), seq[..., 1].long(), seq[..., 2].float(), seq[..., 3].float(),
              cond=order)
    logp = sum(out[k][:, -1].double() for k in ("inst", "pitch", "time", "vel"))
    assert torch.logsumexp(logp, 0).item() == pytest.approx(0.0, abs=1e-4)


def test_score_matches_forward_and_incremental_steps():
    net = tiny(4)
    inst = [1, 1, 129, 41, 1]
    pitch = [60, 64, 36, 72, 60]
    time = [0.0, 0.25, 0.0, 0.51, 1.2]
    vel = [90, 80, 100, 0, 0]
    s = net.score(inst, pitch, time, vel, order="pitv", end="last")
    assert set(s) == {"inst", "pitch", "time", "vel", "end"}
    assert all(v.shape == (5,) for v in s.values())
    # incremental: feed start + prefix with step(), then score event 3 under order pitv
    h = net.initial_hidden(1)
    seq = [(0, 128, 0.0, 0.0)] + list(zip(inst, pitch, time, vel))
    with torch.no_grad():
        for k in range(4):  # start, events 0..2
            x = net.embed_sum(*(torch.tensor([c]) for c in seq[k]))
            top, h = net.step(x, h)
        embs = net.embed(*(torch.tensor([c]) for c in seq[4]))
        ctx = net.head_inputs(top, embs, order_mask("pitv"))
        raw = [head(ctx[:, k]) for k, head in enumerate(net.heads)]
        lp_i = torch.log_softmax(raw[0], -1)[0, inst[3]]
        lp_p = torch.log_softmax(raw[1], -1)[0, pitch[3]]
        lp_t = net.time_dist.log_prob(raw[2], torch.tensor([time[3]]))[0]
        lp_v = net.vel_dist.log_prob(raw[3], torch.tensor([float(vel[3])]))[0]
        top, h = net.step(net.embed_sum(*(torch.tensor([c]) for c in seq[4])), h)
        lp_end = net.end_log_probs(top)[0, 0]
    for got, key in ((lp_i, "inst"), (lp_p, "pitch"), (lp_t, "time"), (lp_v, "vel"),
                     (lp_end, "end")):
        assert got.item() == pytest.approx(s[key][3].item(), abs=1e-5), key
    # end='last' flags only the last event; None means the piece goes on
    s_none = net.score(inst, pitch, time, vel, order="pitv")
    torch.testing.assert_close(s_none["end"][:-1], s["end"][:-1])
    assert math.isclose(math.exp(s_none["end"][-1]) + math.exp(s["end"][-1]), 1, rel_tol=1e-5)


def test_score_accepts_numpy_and_tensors_and_keeps_mode():
    net = tiny(5).train()
    args = (np.array([1, 2]), torch.tensor([60, 61]), [0.1, 0.2], np.array([64.0, 0.0]))
    a = net.score(*args)
    assert net.training
    b = net.score(*(list(map(float, x)) for x in args))
    torch.testing.assert_close(a["time"], b["time"])
    assert not a["inst"].requires_grad


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(inst=[1, 2], pitch=[60], time=[0.1, 0.1], vel=[64, 0]), "pitch"),
        (dict(inst=[[1, 2]], pitch=[[60, 61]], time=[[0, 0]], vel=[[1, 1]]), "inst"),
        (dict(inst=[0, 2], pitch=[60, 61], time=[0.1, 0.1], vel=[64, 0]), "inst"),
        (dict(inst=[1, 321], pitch=[60, 61], time=[0.1, 0.1], vel=[64, 0]), "inst"),
        (dict(inst=[1, 2.5], pitch=[60, 61], time=[0.1, 0.1], vel=[64, 0]), "inst"),
        (dict(inst=[1, 2], pitch=[60, 128], time=[0.1, 0.1], vel=[64, 0]), "pitch"),
        (dict(inst=[1, 2], pitch=[-1, 60], time=[0.1, 0.1], vel=[64, 0]), "pitch"),
        (dict(inst=[1, 2], pitch=[60, 61], time=[-0.1, 0.1], vel=[64, 0]), "time"),
        (dict(inst=[1, 2], pitch=[60, 61], time=[math.nan, 0.1], vel=[64, 0]), "time"),
        (dict(inst=[1, 2], pitch=[60, 61], time=[math.inf, 0.1], vel=[64, 0]), "time"),
        (dict(inst=[1, 2], pitch=[60, 61], time=[0.1, 0.1], vel=[64, 128]), "vel"),
        (dict(inst=[1, 2], pitch=[60, 61], time=[0.1, 0.1], vel=[math.nan, 0]), "vel"),
        (dict(inst=[1, 2], pitch=[60, 61], time=[0.1, 0.1], vel=[64, -1]), "vel"),
        (dict(inst=[], pitch=[], time=[], vel=[]), "inst"),
        (dict(inst=[1, 2], pitch=[60, 61], time=[0.1, 0.1], vel=[64, 0], order="itp"), "order"),
        (dict(inst=[1, 2], pitch=[60, 61], time=[0.1, 0.1], vel=[64, 0], end=[0, 2]), "end"),
        (dict(inst=[1, 2], pitch=[60, 61], time=[0.1, 0.1], vel=[64, 0], end="first"), "end"),
        (dict(inst=[1, 2], pitch=["a", 61], time=[0.1, 0.1], vel=[64, 0]), "pitch"),
    ],
)
def test_score_rejects_bad_input_naming_the_argument(kwargs, name):
    net = tiny()
    with pytest.raises(InputError, match=rf"\b{name}\b"):
        net.score(**kwargs)


def test_forward_rejects_bad_shapes():
    net = tiny()
    inst, pitch, time, vel = random_batch(2, 4)
    with pytest.raises(InputError, match="vel"):
        net(inst, pitch, time, vel[:, :3])
    with pytest.raises(InputError, match="cond"):
        net(inst, pitch, time, vel, cond=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(InputError, match="at least 2"):
        net(inst[:, :1], pitch[:, :1], time[:, :1], vel[:, :1])


def test_training_pass_reaches_every_parameter():
    torch.manual_seed(0)
    net = NotochordNet(**TINY).train()
    inst, pitch, time, vel = random_batch(4, 8)
    end = torch.zeros(4, 8)
    end[:, -3:] = 1
    out = net(inst, pitch, time, vel, end=end, diagnostics=True)
    loss = -sum(out[k].mean() for k in ("inst", "pitch", "time", "vel", "end"))
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert out["time_max_sharpness"] >= out["time_mean_sharpness"]


def test_normalisation_check_detects_an_inconsistent_mask():
    """Control for the test above: letting every sub-event see all others breaks the sum."""
    net = tiny(3, num_instruments=3, num_pitches=4, time_bounds=(0.0, 0.1),
               vel_bounds=(0.0, 3.0), time_sharp_init=0.0)  # wide components: a clear sum
    grid = list(itertools.product(range(4), range(5), np.linspace(0, 0.1, 11), range(4)))
    ev = torch.tensor(grid, dtype=torch.float64)
    seq = torch.cat([torch.tensor([[0, 4, 0.0, 0.0]], dtype=torch.float64)[None].expand(
        len(grid), -1, -1), ev[:, None]], dim=1)
    out = net(seq[..., 0].long(), seq[..., 1].long(), seq[..., 2].float(), seq[..., 3].float(),
              cond=torch.ones(4, 4, dtype=torch.bool))
    logp = sum(out[k][:, -1].double() for k in ("inst", "pitch", "time", "vel"))
    assert abs(torch.logsumexp(logp, 0).item()) > 1e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    net = tiny(6)
    seq = ([1, 129, 41, 300], [60, 36, 72, 61], [0.0, 0.1, 0.7, 11.0], [90, 100, 0, 127])
    cpu = net.score(*seq, order="vtip", end="last")
    gpu = net.cuda().score(*seq, order="vtip", end="last")
    for k in cpu:
        assert gpu[k].device.type == "cuda"
        torch.testing.assert_close(gpu[k].cpu(), cpu[k], atol=1e-4, rtol=1e-4)
    inst, pitch, time, vel = (x.cuda() for x in random_batch(2, 5))
    out = net.train()(inst, pitch, time, vel, cond="random")
    assert out["vel"].device.type == "cuda"
    x = net.time_dist.sample(net.time_dist.params(torch.zeros(3, net.time_dist.n_params).cuda()),
                             0.1, 0.2)
    assert x.device.type == "cuda" and ((x >= 0.1) & (x <= 0.2)).all()
