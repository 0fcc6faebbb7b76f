import torch
from torch import nn

from awdlstm.config import OptimConfig
from awdlstm.optim import NTASGD, nonmono_triggered


def run_trigger(curve, n=5):
    """Index of the check at which averaging starts, or None."""
    history = []
    for i, v in enumerate(curve):
        if nonmono_triggered(history, v, n):
            return i
        history.append(v)
    return None


def test_trigger_never_fires_while_validation_improves():
    assert run_trigger([10 - 0.1 * i for i in range(50)]) is None


def test_trigger_fires_when_worse_than_best_before_last_n():
    # At check 6 there are 6 earlier checks; the best of the first 6 - 5 = 1 is 5.0.
    assert run_trigger([5.0, 4.0, 3.9, 3.8, 3.7, 3.6, 5.1]) == 6
    # A plateau that never gets worse than the best outside the window does not fire...
    curve = [5.0, 4.0, 3.0, 3.1, 3.2, 3.1, 3.05, 3.0, 3.0]
    assert run_trigger(curve) is None
    # ...but one that rises above it does, as soon as the old best leaves the window.
    assert run_trigger([5.0, 4.0, 3.0, 3.1, 3.2, 3.1, 3.05, 3.08, 3.09, 3.01]) == 8


def test_trigger_needs_more_than_n_checks():
    assert not nonmono_triggered([1.0] * 5, 100.0, 5)
    assert nonmono_triggered([1.0] * 6, 100.0, 5)
    assert nonmono_triggered([1.0, 2.0], 1.5, 1)


def test_ntasgd_starts_on_trigger_and_averages_the_iterates():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    nt = NTASGD(model, OptimConfig(nonmono=1))
    assert not nt.check(1.0, step=0)
    assert not nt.check(2.0, step=1)  # worse, but only one earlier check: n = 1 needs two
    assert nt.check(1.5, step=2) and nt.averaging and nt.averaging_since == 2
    snapshots = [model.weight.detach().clone()]  # w_T is part of the average
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(4):
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
        nt.update()
        snapshots.append(model.weight.detach().clone())
    expected = torch.stack(snapshots).mean(0)
    assert torch.allclose(nt.eval_model().weight, expected, atol=1e-6)
    assert nt.num_averaged == 5
    assert not torch.allclose(nt.eval_model().weight, model.weight)


def test_ntasgd_state_round_trip():
    model = nn.Linear(3, 2)
    nt = NTASGD(model, OptimConfig(nonmono=1))
    for v in (2.0, 3.0, 2.5):
        nt.check(v, step=7)
    nt.update()
    other = NTASGD(nn.Linear(3, 2), OptimConfig(nonmono=1))
    other.model.load_state_dict(model.state_dict())
    other.load_state_dict(nt.state_dict())
    assert other.history == nt.history and other.averaging_since == 7
    assert torch.equal(other.eval_model().weight, nt.eval_model().weight)


def test_adam_and_disabled_ntasgd_never_average():
    model = nn.Linear(2, 2)
    for cfg in (OptimConfig(optimizer="adam", nonmono=1), OptimConfig(ntasgd=False, nonmono=1)):
        nt = NTASGD(model, cfg)
        for v in (1.0, 2.0, 3.0, 4.0):
            nt.check(v, step=0)
        assert not nt.averaging


def test_finetune_stop_rule():
    nt = NTASGD(nn.Linear(2, 2), OptimConfig(nonmono=2))
    assert [nt.should_stop(v) for v in (3.0, 2.0, 1.9, 1.8, 3.5)] == [False, False, False, False, True]
