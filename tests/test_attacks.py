"""Tests of the attack registry against a small CNN trained on the real digits data.

The contract tests run over every registered attack, grouped by the registry's own metadata
(``Attack.fast``, ``Attack.norm``, ``Attack.trains``), and over one attack through each door
from outside the package (``torchattacks:NAME`` and a ``package.module:Class`` in
``tests/myattacks``): a new attack is held to them the moment it is registered.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from semirobust_ray.attacks import (
    ATTACKS,
    PAPER_ATTACK_STEPS,
    AttackError,
    attack_aliases,
    create_attack,
    default_steps,
)
from semirobust_ray.data import load_dataset, to_unit


def _norm(name: str) -> str:
    return create_attack(name, nn.Linear(1, 1), **EXTERNAL.get(name, {})).norm


def _trains(name: str) -> bool:
    return ATTACKS[name].trains if name in ATTACKS else True


EPS = 0.1  # digits is easy: at 8/255 almost nothing flips, so test strength at a larger budget
ALPHA = EPS / 4  # DESIGN.md §5: steps of at least ε/4 so PGD reaches the ball's corners
#: One attack through each door from outside the package, with the options it is built with.
EXTERNAL = {"torchattacks:MIFGSM": {"decay": 0.5}, "myattacks:MIFGSM": {"decay": 0.5}}
#: Every registered attack (by name; an alias is the same class) cheap enough for the contract,
#: and the external ones; the L∞ ones are held to their ε-ball as well.
FAST_ATTACKS = [name for name in attack_aliases() if ATTACKS[name].fast] + list(EXTERNAL)
L_INF_ATTACKS = [name for name in FAST_ATTACKS if _norm(name) == "Linf"]
#: Registered attacks that return every image they cannot break unperturbed (Attack.trains).
EVAL_ONLY = [name for name in FAST_ATTACKS if not _trains(name)]


class TinyCNN(nn.Module):
    """Two convolutions (one with BatchNorm, so buffers exist) and a linear head for 8×8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(32 * 4 * 4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def trained() -> tuple[TinyCNN, torch.Tensor, torch.Tensor]:
    """A TinyCNN trained for a few seconds on digits, plus 200 test images in [0, 1]."""
    torch.manual_seed(0)
    data = load_dataset("digits", seed=0)
    x_train, y_train = to_unit(data.x_train), data.y_train
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        perm = torch.randperm(len(y_train), generator=gen)
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()
    x, y = to_unit(data.x_test[:200]), data.y_test[:200]
    assert _accuracy(model, x, y) > 0.9
    return model, x, y


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _make(name: str, model: nn.Module, **kwargs) -> object:
    defaults = {"eps": EPS, "alpha": ALPHA, "steps": 10, **EXTERNAL.get(name, {})}
    return create_attack(name, model, **{**defaults, **kwargs})


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "modes": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "grads": {
            name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()
        },
    }


def _assert_untouched(model: nn.Module, before: dict) -> None:
    after = _snapshot(model)
    assert after["modes"] == before["modes"]
    assert after["requires_grad"] == before["requires_grad"]
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), f"{k} changed"
    for k, g in before["grads"].items():
        if g is None:
            assert after["grads"][k] is None, f"attack left .grad on {k}"
        else:
            assert torch.equal(after["grads"][k], g), f"attack changed .grad of {k}"


# --------------------------------------------------------------------------- strength, budget


def test_registry_names() -> None:
    assert {"fgsm", "ifgsm", "bim", "pgd", "apgd-ce", "cw", "autoattack"} <= set(ATTACKS)
    assert ATTACKS["bim"] is ATTACKS["ifgsm"]
    assert ATTACKS["apgd"] is ATTACKS["apgd-ce"]


@pytest.mark.parametrize("name", FAST_ATTACKS)
def test_every_attack_lowers_accuracy(trained, name: str) -> None:
    model, x, y = trained
    x_adv = _make(name, model)(x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert _accuracy(model, x_adv, y) < _accuracy(model, x, y) - 0.2


@pytest.mark.parametrize("name", L_INF_ATTACKS)
@pytest.mark.parametrize("eps", [8 / 255, EPS])
def test_linf_ball_and_unit_range(trained, name: str, eps: float) -> None:
    model, x, y = trained
    x_adv = _make(name, model, eps=eps, alpha=eps / 4)(x, y)
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    # Digits has many pure-black pixels: the [0, 1] clamp must actually bite there.
    assert bool(((x == 0) & (x_adv == 0)).any())


def test_cw_stays_in_unit_range(trained) -> None:
    model, x, y = trained
    x_adv = _make("cw", model)(x, y)
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


def test_pgd_at_least_as_strong_as_fgsm_at_matched_budget(trained) -> None:
    model, x, y = trained
    acc_fgsm = _accuracy(model, _make("fgsm", model)(x, y), y)
    acc_pgd = _accuracy(model, _make("pgd", model, alpha=EPS / 4, steps=10)(x, y), y)
    acc_bim = _accuracy(model, _make("ifgsm", model, alpha=EPS / 4, steps=10)(x, y), y)
    assert acc_pgd <= acc_fgsm and acc_bim <= acc_fgsm


def test_matches_torchattacks(trained) -> None:
    """Our loops are torchattacks' loops with a private RNG: same result for the same start."""
    model, x, y = trained
    ours = _make("fgsm", model)(x, y)
    assert torch.equal(ours, torchattacks.FGSM(model, eps=EPS)(x, y))

    ours = _make("ifgsm", model)(x, y)
    theirs = torchattacks.BIM(model, eps=EPS, alpha=ALPHA, steps=10)(x, y)
    # BIM projects with a different (equivalent) formula: equal up to float rounding.
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0)

    ours = _make("pgd", model, seed=5)(x, y)
    with torch.random.fork_rng():
        torch.manual_seed(5)  # torchattacks draws its random start from the global RNG
        theirs = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=10)(x, y)
    assert torch.equal(ours, theirs)

    ours = _make("pgd", model, random_start=False)(x, y)
    theirs = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=10, random_start=False)(x, y)
    assert torch.equal(ours, theirs)


def test_paper_steps() -> None:
    for eps, steps in PAPER_ATTACK_STEPS.items():
        assert default_steps(eps) == steps
    assert default_steps(4 / 255) == 5
    model = TinyCNN()
    for eps, steps in PAPER_ATTACK_STEPS.items():
        assert create_attack("pgd", model, eps=eps, steps=None).steps == steps


# --------------------------------------------------------------------------- model invariants


def _mixed_mode_model() -> TinyCNN:
    """Train mode overall, but a frozen, eval-mode first block (as f*_a is during a trial)."""
    torch.manual_seed(1)
    model = TinyCNN().train()
    model.features[:2].eval()
    for p in model.features[:2].parameters():
        p.requires_grad_(False)
    return model


@pytest.mark.parametrize("name", FAST_ATTACKS)
@pytest.mark.parametrize("setup", ["train", "eval", "mixed", "stale_grads"])
def test_attack_leaves_model_untouched(trained, name: str, setup: str) -> None:
    _, x, y = trained
    if setup == "mixed":
        model = _mixed_mode_model()
    else:
        torch.manual_seed(2)
        model = TinyCNN().train(setup != "eval")
    if setup == "stale_grads":  # an attack in the middle of a training step must keep them
        F.cross_entropy(model(x[:16]), y[:16]).backward()
    before = _snapshot(model)
    _make(name, model)(x[:32], y[:32])
    _assert_untouched(model, before)


@pytest.mark.parametrize("name", L_INF_ATTACKS)
def test_inner_steps_need_no_parameter_gradients(trained, name: str) -> None:
    """During the attack the model runs in eval mode with every parameter frozen."""
    model = TinyCNN().train()
    seen: list[tuple[bool, bool]] = []

    def hook(module: nn.Module, args: tuple) -> None:
        seen.append((module.training, any(p.requires_grad for p in module.parameters())))

    handle = model.register_forward_pre_hook(hook)
    try:
        _make(name, model)(trained[1][:8], trained[2][:8])
    finally:
        handle.remove()
    assert seen and all(state == (False, False) for state in seen)


def test_works_under_no_grad(trained) -> None:
    model, x, y = trained
    with torch.no_grad():
        x_adv = _make("pgd", model)(x, y)
    assert _accuracy(model, x_adv, y) < _accuracy(model, x, y) - 0.2


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", FAST_ATTACKS)
def test_every_attack_is_seeded_and_leaves_the_global_rng_alone(trained, name: str) -> None:
    model, x, y = trained
    x, y = x[:64], y[:64]
    rng = torch.get_rng_state()
    first = _make(name, model, seed=3)(x, y)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(_make(name, model, seed=3)(x, y), first)


@pytest.mark.parametrize("name", EVAL_ONLY)
def test_eval_only_attacks_return_what_they_cannot_break_unperturbed(trained, name: str) -> None:
    """What ``Attack.trains = False`` declares (the help text says so from it)."""
    model, x, y = trained
    x_adv = _make(name, model)(x, y)
    unbroken = _predict(model, x_adv) == y
    assert unbroken.any() and torch.equal(x_adv[unbroken], x[unbroken])


def test_same_seed_same_result_and_global_rng_untouched(trained) -> None:
    model, x, y = trained
    rng = torch.get_rng_state()
    a = _make("pgd", model, seed=3)(x, y)
    b = _make("pgd", model, seed=3)(x, y)
    c = _make("pgd", model, seed=4)(x, y)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_random_start_advances_between_calls(trained) -> None:
    model, x, y = trained
    attack = _make("pgd", model, seed=3, steps=1)
    first, second = attack(x, y), attack(x, y)
    assert not torch.equal(first, second)
    replay = _make("pgd", model, seed=3, steps=1)
    assert torch.equal(replay(x, y), first) and torch.equal(replay(x, y), second)


# --------------------------------------------------------------------------- APGD-CE


@pytest.mark.parametrize("budget", [5, 10, 20])
def test_apgd_at_least_as_strong_as_pgd_at_matched_budget(trained, budget: int) -> None:
    """Same ε, same number of gradient steps; PGD at step ε/4 (DESIGN.md §5), APGD its own."""
    model, x, y = trained
    acc_pgd = _accuracy(model, _make("pgd", model, steps=budget)(x, y), y)
    acc_apgd = _accuracy(model, _make("apgd-ce", model, steps=budget)(x, y), y)
    assert acc_apgd <= acc_pgd


def test_apgd_is_the_official_implementation(trained) -> None:
    """Our wrapper returns what pyautoattack's APGD-CE returns for the seed it hands it."""
    from pyautoattack.autopgd_base import APGDAttack

    model, x, y = trained
    ours = _make("apgd-ce", model, seed=7)(x, y)
    call_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(7)))
    with torch.random.fork_rng():
        theirs = APGDAttack(model, n_iter=10, norm="Linf", eps=EPS, seed=call_seed, loss="ce")
        theirs = theirs.perturb(x, y)
    assert torch.equal(ours, theirs)


def test_apgd_seeded_fresh_per_call_and_global_rng_untouched(trained) -> None:
    model, x, y = trained
    rng = torch.get_rng_state()
    attack = _make("apgd-ce", model, seed=3, steps=2)
    first, second = attack(x, y), attack(x, y)
    replay = _make("apgd-ce", model, seed=3, steps=2)
    other = _make("apgd-ce", model, seed=4, steps=2)(x, y)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(replay(x, y), first) and torch.equal(replay(x, y), second)
    assert not torch.equal(first, second) and not torch.equal(first, other)


def test_apgd_iterations_are_steps(trained) -> None:
    """APGD's n_iter is ``steps``; ``None`` gives the paper's count for ε, as for PGD."""
    model, x, y = trained
    assert create_attack("apgd-ce", model, steps=7).steps == 7
    assert create_attack("apgd-ce", model, eps=16 / 255, steps=None).steps == 20
    # Different budgets really run different numbers of iterations.
    one = _make("apgd-ce", model, steps=1)(x, y)
    assert not torch.equal(one, _make("apgd-ce", model, steps=10)(x, y))
    with pytest.raises(AttackError, match="steps must be an integer >= 1, got 0"):
        create_attack("apgd-ce", model, steps=0)


# --------------------------------------------------------------------------- AutoAttack


def test_autoattack_standard_fast(trained) -> None:
    """Standard AutoAttack on 8 images; a large ε lets APGD-CE finish the job so it stays fast."""
    model, x, y = trained
    x, y = x[:8], y[:8]
    model.train()  # mode must survive pyautoattack too
    before = _snapshot(model)
    rng = torch.get_rng_state()
    start = time.perf_counter()
    attack = create_attack("autoattack", model, eps=0.3, seed=0)
    a = attack(x, y)
    elapsed = time.perf_counter() - start
    _assert_untouched(model, before)
    model.eval()
    assert torch.equal(torch.get_rng_state(), rng)
    assert attack.version == "standard"
    assert (
        float((a - x).abs().max()) <= 0.3 + 1e-6 and 0.0 <= float(a.min()) <= float(a.max()) <= 1.0
    )
    assert _accuracy(model, a, y) < _accuracy(model, x, y)
    assert torch.equal(create_attack("autoattack", model, eps=0.3, seed=0)(x, y), a)
    assert elapsed < 60


@pytest.mark.slow
def test_autoattack_standard_50_images(trained) -> None:
    model, x, y = trained
    x, y = x[:50], y[:50]
    a = create_attack("autoattack", model, eps=EPS, seed=0)(x, y)
    assert float((a - x).abs().max()) <= EPS + 1e-6
    acc_aa = _accuracy(model, a, y)
    acc_pgd = _accuracy(model, _make("pgd", model)(x, y), y)
    assert acc_aa <= acc_pgd  # AutoAttack starts with APGD and only adds attacks


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"eps": 0.0}, "eps must be in (0, 1]"),
        ({"eps": -0.1}, "-0.1"),
        ({"eps": 8.0}, "got 8.0"),
        ({"alpha": 0.0}, "alpha (step size) must be > 0, got 0.0"),
        ({"alpha": float("nan")}, "alpha"),
        ({"steps": 0}, "steps must be an integer >= 1, got 0"),
        ({"steps": 2.5}, "got 2.5"),
        ({"seed": "x"}, "seed must be an integer"),
    ],
)
def test_bad_parameters(trained, kwargs: dict, fragment: str) -> None:
    with pytest.raises(AttackError) as err:
        create_attack("pgd", trained[0], **kwargs)
    assert fragment in str(err.value)


def test_unknown_attack_and_option(trained) -> None:
    with pytest.raises(AttackError) as err:
        create_attack("pgdd", trained[0])
    assert "'pgdd'" in str(err.value) and "fgsm" in str(err.value)
    assert "did you mean 'pgd'" in str(err.value)
    with pytest.raises(AttackError, match="does not take option.*kappa"):
        create_attack("pgd", trained[0], kappa=1.0)
    with pytest.raises(AttackError, match="cw lr must be > 0"):
        create_attack("cw", trained[0], lr=0.0)
    with pytest.raises(AttackError, match="version"):
        create_attack("autoattack", trained[0], version="fast")


def test_bad_inputs(trained) -> None:
    model, x, y = trained
    attack = _make("fgsm", model)
    with pytest.raises(AttackError, match="float tensor"):
        attack((x * 255).to(torch.uint8), y)
    with pytest.raises(AttackError, match=r"\[0, 1\]"):
        attack(x * 2 - 0.5, y)
    with pytest.raises(AttackError, match="one label per image"):
        attack(x, y[:-1])
    empty = attack(x[:0], y[:0])
    assert empty.shape == (0, *x.shape[1:])


# --------------------------------------------------------------------------- from outside


def test_torchattacks_door_is_torchattacks_seeded_from_the_attack() -> None:
    """``torchattacks:NAME`` computes what torchattacks computes, its random start drawn from
    the attack's seed (the global RNG seeded per call and restored)."""
    model = TinyCNN().eval()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(16) % 10
    ours = create_attack("torchattacks:PGD", model, eps=EPS, alpha=ALPHA, steps=3, seed=7)
    assert ours.norm == "Linf" and ours._attack.eps == EPS and ours._attack.steps == 3
    out = ours(x, y)
    call_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(7)))
    with torch.random.fork_rng():
        torch.manual_seed(call_seed)
        theirs = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=3)(x, y)
    assert torch.equal(out, theirs)
    # Options of its own are the class's keyword arguments; eps goes only where it is taken.
    assert (
        create_attack("torchattacks:PGD", model, random_start=False)._attack.random_start is False
    )
    assert create_attack("torchattacks:CW", model, c=2.0).norm == "L2"
    assert create_attack("torchattacks:PGDL2", model).norm == "L2"


@pytest.mark.parametrize(
    ("spec", "kwargs", "fragment"),
    [
        ("torchattacks:MIFGS", {}, "torchattacks has no attack class 'MIFGS' (did you mean "),
        ("torchattacks:PGD", {"kappa": 1.0}, "does not take option(s) kappa; it takes: "),
        ("myattacks:MIFGSM", {"decay": 0.5, "beta": 1}, "does not take option(s) beta"),
        ("myattacks:MIFGSM", {}, "MIFGSM(...) raised TypeError: "),
        ("myattacks:MIFGSM", {"decay": -1}, "MIFGSM(...) raised ValueError: decay must be >= 0"),
        ("myattacks:Missing", {}, "module 'myattacks' has no attribute 'Missing'"),
        ("myattacks:NotAnAttack", {}, "'NotAnAttack' (a class) is not a subclass of "),
        ("myattacks:build", {}, "'build' (a function) is not a subclass of semirobust_ray.attacks"),
        ("no_such_package.attacks:X", {}, "cannot import module 'no_such_package.attacks'"),
        ("pgdd", {}, "unknown attack 'pgdd' (did you mean 'pgd'?); valid: apgd,"),
    ],
)
def test_attacks_from_outside_fail_in_one_line(spec: str, kwargs: dict, fragment: str) -> None:
    with pytest.raises(AttackError) as err:
        create_attack(spec, TinyCNN(), **kwargs)
    assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)
    if "subclass" in fragment or "valid: apgd" in fragment:  # the valid forms are named
        assert "torchattacks:NAME" in str(err.value)
        assert "package.module:Class" in str(err.value)


def test_an_external_attack_trains_and_evaluates_through_algorithm1(tmp_path, monkeypatch) -> None:
    """Both doors in both roles, without Ray: torchattacks PGD trains (baseline and f_b), the
    user's MIFGSM (its option from attack_kwargs) measures Acc*, Acc_sr and Acc."""
    import myattacks

    from semirobust_ray import attacks
    from semirobust_ray.config import ExperimentConfig
    from semirobust_ray.runner import run_algorithm1

    config = ExperimentConfig.from_dict(
        dict(
            dataset="digits", max_train=200, max_test=60, batch_size=50, lr=0.05, eps=EPS,
            alpha=ALPHA, steps=2, baseline_epochs=1, baseline_adv_epochs=1, epochs=1, trials_per_depth=1,
            split_depths=[2], mi=False, k=0.999, cache_dir=str(tmp_path),
            attack="torchattacks:PGD", eval_attack="myattacks:MIFGSM",
            attack_kwargs={"torchattacks:PGD": {"random_start": False},
                           "myattacks:MIFGSM": {"decay": 0.5}},
        )
    )  # fmt: skip
    calls: list[tuple[str, object]] = []
    for cls, option in ((attacks.TorchAttacks, "random_start"), (myattacks.MIFGSM, "decay")):
        real = cls._perturb

        def perturb(self, x, y, real=real, option=option):
            source = self._attack if isinstance(self, attacks.TorchAttacks) else self
            calls.append((type(self).__name__, getattr(source, option)))
            return real(self, x, y)

        monkeypatch.setattr(cls, "_perturb", perturb)
    results = run_algorithm1(config)
    assert set(calls) == {("TorchAttacks", False), ("MIFGSM", 0.5)}, set(calls)
    (trial,) = results["trials"]
    assert trial["fb_layers"] == 2 and trial["epochs_run"] == 1
