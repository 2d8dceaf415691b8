"""Attack registry: FGSM, I-FGSM (BIM), PGD, APGD-CE, C&W (L2), AutoAttack behind one interface.

Every attack takes float images in [0, 1] (models carry their own input normalisation, so ε is
measured in pixel space exactly as in the paper) and returns adversarial images in [0, 1]::

    attack = create_attack("pgd", model, eps=8 / 255, alpha=1 / 255, steps=10, seed=0)
    x_adv = attack(x, y)

Guarantees, whatever mode the model is in and whatever grad mode the caller runs under:

* the model runs in eval mode during the attack and every submodule gets back its own
  train/eval flag afterwards (a model with a frozen, eval-mode part stays mixed);
* parameters and buffers are not modified, and no ``.grad`` is written to parameters: their
  ``requires_grad`` is switched off during the attack, which also makes every gradient step
  compute only the gradient with respect to the input;
* L∞ attacks (fgsm, ifgsm, pgd, apgd-ce, autoattack) stay inside the ε-ball around ``x`` and
  in [0, 1];
* randomness (PGD's random start, APGD-CE, AutoAttack) comes from the attack's ``seed`` and
  never touches the global RNG, so two attacks built with the same seed produce the same x_adv.

Besides the registry names (:data:`ATTACKS`), an attack spec may be ``torchattacks:NAME``, any
attack class of torchattacks (wrapped by :class:`TorchAttacks`: seeded, guarded like ours), or
an import path ``package.module:Class`` naming a subclass of :class:`Attack` written anywhere
(``docs/extending.md``). Both are imported in the process that runs the attack, so on a Ray
cluster the module must be importable on every worker, exactly like a user's model. Options of
an attack's own (PGD's ``random_start``, C&W's ``c``) are keyword-only arguments of its class;
a config passes them through ``attack_kwargs``.

FGSM, I-FGSM and PGD are implemented here rather than taken from torchattacks: the loop is the
same (the tests check that they agree with torchattacks), but the random start uses a private
generator instead of the global RNG. C&W wraps ``torchattacks.CW``; APGD-CE and AutoAttack wrap
the official implementation (``pyautoattack``), AutoAttack in its standard version.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from semirobust_ray.names import did_you_mean
from semirobust_ray.specs import import_spec, module_fingerprint
from semirobust_ray.storage import first_line as _first_line

__all__ = [
    "APGDCE",
    "ATTACKS",
    "PAPER_ATTACK_STEPS",
    "PAPER_EPSILONS",
    "Attack",
    "AttackError",
    "TORCHATTACKS_PREFIX",
    "TorchAttacks",
    "attack_aliases",
    "attack_spec_problem",
    "create_attack",
    "default_steps",
    "external_attack_fingerprint",
    "is_external_attack",
    "register_attack",
]

#: ε values of the paper (L∞, pixel scale 0..1).
PAPER_EPSILONS: tuple[float, ...] = (8 / 255, 16 / 255, 32 / 255)

#: Iterations the paper uses for each ε with step 1/255 (Kurakin et al.'s rule, see default_steps).
PAPER_ATTACK_STEPS: dict[float, int] = {8 / 255: 10, 16 / 255: 20, 32 / 255: 36}

#: Step size of the paper's iterative attacks.
PAPER_ALPHA = 1 / 255

#: Prefix of an attack spec taken from torchattacks by class name (``torchattacks:MIFGSM``).
TORCHATTACKS_PREFIX = "torchattacks:"

#: The options every attack gets from the config's own keys, never from ``attack_kwargs``.
COMMON_OPTIONS = ("eps", "alpha", "steps", "seed")

# ``package.module:Class`` (the class may be a dotted attribute path, ``mod:Outer.Inner``).
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")

#: The forms an attack spec may take besides a registry name, as the errors list them.
EXTERNAL_FORMS = ("torchattacks:NAME", "package.module:Class")


class AttackError(ValueError):
    """A bad attack name or parameter; the message names the value and what is allowed."""


def default_steps(eps: float) -> int:
    """Iterations for an iterative attack at ``eps`` with step 1/255, as in the paper.

    Kurakin et al. (2018): ``min(ε·255 + 4, 1.25·ε·255)``, which gives 10, 20 and 36 for
    ε = 8, 16 and 32 /255.
    """
    _check_eps(eps)
    pixels = eps * 255.0
    # round() before ceil() so 8/255*255 = 7.999… does not become 11 steps.
    return max(1, math.ceil(round(min(pixels + 4.0, 1.25 * pixels), 6)))


# --------------------------------------------------------------------------- base class


class Attack:
    """Base class: validates inputs, guards the model, and calls :meth:`_perturb`.

    Subclasses set :attr:`norm` and implement ``_perturb(x, y) -> x_adv`` on tensors that are
    already on the model's device; :meth:`__call__` takes care of everything else. Options of
    their own are keyword-only arguments of ``__init__`` after the four common ones.

    The class attributes below are the registry's metadata: the help texts, the error messages
    and the contract tests (``tests/test_attacks.py``) read them, so a new attack declares what
    it is once, here, and is tested for it without anyone editing a list.
    """

    name: str = "attack"
    #: Threat model: "Linf" attacks stay within ``eps`` of x in every pixel (the contract tests
    #: hold them to it); "L2" ones do not promise an ε-ball (C&W is a minimum-norm attack).
    norm: str = "Linf"
    #: Meant for adversarial training. False for attacks that return every image they cannot
    #: break unperturbed (right for robust accuracy, wrong for training on its output).
    trains: bool = True
    #: Cheap enough (well under a second on a hundred digits images) for every contract test;
    #: slow attacks (AutoAttack) get a small test of their own instead.
    fast: bool = True

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float = 8 / 255,
        alpha: float = PAPER_ALPHA,
        steps: int | None = 10,
        seed: int = 0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise AttackError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        _check_eps(eps)
        _check_alpha(alpha)
        if steps is None:
            steps = default_steps(eps)
        _check_steps(steps)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise AttackError(f"seed must be an integer, got {seed!r}")
        self.model = model
        self.eps = float(eps)
        self.alpha = float(alpha)
        self.steps = int(steps)
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return adversarial examples for images ``x`` (float, [0, 1]) with labels ``y``.

        The result is detached, has the shape and device of ``x``, and lies in [0, 1].
        """
        _check_batch(x, y)
        if torch.is_inference_mode_enabled():
            raise AttackError("attacks need autograd: call them outside torch.inference_mode()")
        device = _model_device(self.model, x.device)
        x_in = x.detach().to(device=device)
        y_in = y.detach().to(device=device, dtype=torch.long)
        if len(x_in) == 0:
            return x.detach().clone()
        with _attack_guard(self.model), torch.enable_grad():
            x_adv = self._perturb(x_in, y_in)
        return x_adv.detach().clamp_(0.0, 1.0).to(device=x.device, dtype=x.dtype)

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _generator(self, device: torch.device) -> torch.Generator:
        """The attack's private RNG on ``device``, seeded with ``seed`` on first use.

        It advances from call to call (each batch of an adversarial epoch gets a fresh random
        start); the n-th call of two attacks with the same seed draws the same numbers.
        """
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def _call_seed(self) -> int:
        """A fresh seed for one call of third-party code that seeds itself, drawn from the
        CPU generator (a host integer whatever the images' device): the n-th calls of two
        attacks with the same ``seed`` agree, successive calls differ."""
        return int(
            torch.randint(0, 2**31 - 1, (1,), generator=self._generator(torch.device("cpu")))
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(eps={self.eps:.6g}, alpha={self.alpha:.6g}, "
            f"steps={self.steps}, seed={self.seed})"
        )


#: Registry of attack classes by name (aliases point to the same class).
ATTACKS: dict[str, type[Attack]] = {}


def register_attack(name: str, *aliases: str) -> Callable[[type[Attack]], type[Attack]]:
    """Class decorator that registers an :class:`Attack` subclass under ``name`` and aliases."""

    def decorator(cls: type[Attack]) -> type[Attack]:
        for key in (name, *aliases):
            if key in ATTACKS:
                raise ValueError(f"attack {key!r} is already registered")
            ATTACKS[key] = cls
        cls.name = name
        return cls

    return decorator


def attack_aliases() -> dict[str, tuple[str, ...]]:
    """Each registered attack's name with its aliases, in registration order."""
    out: dict[str, tuple[str, ...]] = {}
    for key, cls in ATTACKS.items():
        if key != cls.name:
            out[cls.name] = (*out.get(cls.name, ()), key)
        else:
            out.setdefault(key, ())
    return out


def is_external_attack(spec: str) -> bool:
    """Whether ``spec`` is a ``torchattacks:NAME`` or ``package.module:Class`` spec."""
    return isinstance(spec, str) and (
        spec.startswith(TORCHATTACKS_PREFIX) or bool(_IMPORT_PATH.match(spec))
    )


def attack_spec_problem(spec: str, what: str = "attack") -> str | None:
    """Why ``spec`` is not a valid attack spec, or None; checks the form only, imports nothing
    (a Ray worker re-validates a config before it has imported a user's module).

    ``what`` words the message: ``"value"`` after a config key, ``"attack"`` on its own.
    """
    if spec in ATTACKS:
        return None
    if isinstance(spec, str) and spec.startswith(TORCHATTACKS_PREFIX):
        if spec[len(TORCHATTACKS_PREFIX) :]:
            return None
        return "'torchattacks:' needs an attack class name, e.g. torchattacks:MIFGSM"
    if is_external_attack(spec):
        return None
    names = sorted(ATTACKS)
    hint = did_you_mean(str(spec).lower(), names, cutoff=0.5)
    return f"unknown {what} '{spec}'{hint}; valid: {', '.join([*names, *EXTERNAL_FORMS])}"


def _import_class(spec: str) -> type[Attack]:
    """The :class:`Attack` subclass a ``package.module:Class`` spec names; one line otherwise."""
    obj = import_spec(spec, "attack", "runs the attack", AttackError, "docs/extending.md")
    attr = spec.partition(":")[2]
    if not (isinstance(obj, type) and issubclass(obj, Attack)):
        what = "a class" if isinstance(obj, type) else f"a {type(obj).__name__}"
        raise AttackError(
            f"attack '{spec}': '{attr}' ({what}) is not a subclass of "
            "semirobust_ray.attacks.Attack; valid forms: a registered name, torchattacks:NAME, "
            "or package.module:Class with Class a subclass of semirobust_ray.attacks.Attack "
            "(docs/extending.md)"
        )
    return obj


def _unknown_options(spec: str, given: Mapping[str, Any], accepted: set[str]) -> None:
    common = sorted(set(given) & set(COMMON_OPTIONS))
    if common:
        raise AttackError(
            f"attack {spec!r}: {', '.join(common)}: set by the config key"
            f"{'s' if len(common) > 1 else ''} of the same name, not by attack_kwargs"
        )
    unknown = sorted(set(given) - accepted)
    if unknown:
        raise AttackError(
            f"attack {spec!r} does not take option(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(sorted(accepted)) or 'none beyond eps, alpha, steps, seed'}"
        )


def create_attack(
    name: str,
    model: nn.Module,
    *,
    eps: float = 8 / 255,
    alpha: float = PAPER_ALPHA,
    steps: int | None = 10,
    seed: int = 0,
    **kwargs: Any,
) -> Attack:
    """Build the attack ``name`` against ``model`` (which takes images in [0, 1]).

    Args:
        name: a registered name (:data:`ATTACKS`: ``fgsm``, ``ifgsm`` alias ``bim``, ``pgd``,
            ``apgd-ce`` alias ``apgd``, ``cw``, ``autoattack``), ``torchattacks:NAME`` (any
            torchattacks attack class) or ``package.module:Class`` (a subclass of
            :class:`Attack`).
        model: the classifier; attacks never change its mode, parameters, buffers or grads.
        eps: L∞ radius in pixel scale, in (0, 1]; the paper uses 8, 16, 32 /255. Not a bound
            for ``cw`` (a minimum-L2 attack).
        alpha: step size of ifgsm / pgd (> 0); the paper uses 1/255.
        steps: iterations of ifgsm / pgd / apgd-ce, optimisation steps of cw (≥ 1); ``None``
            picks the paper's count for ``eps`` (:func:`default_steps`: 10, 20, 36).
        seed: seeds the attack's private RNG (PGD random start, AutoAttack).
        **kwargs: attack-specific options (the config's ``attack_kwargs``), e.g.
            ``random_start`` (pgd), ``c``, ``kappa``, ``lr`` (cw), ``version``, ``batch_size``
            (autoattack), ``decay`` (torchattacks:MIFGSM).

    Raises:
        AttackError: unknown name (with the closest valid one), a module that cannot be
            imported, a class that is not an :class:`Attack`, an out-of-range parameter, or an
            option the attack does not take.
    """
    problem = attack_spec_problem(name)
    if problem is not None:
        raise AttackError(problem)
    if name.startswith(TORCHATTACKS_PREFIX):
        return TorchAttacks(
            model, eps=eps, alpha=alpha, steps=steps, seed=seed, attack=name, options=kwargs
        )
    cls = _import_class(name) if is_external_attack(name) else ATTACKS[name]
    accepted = {
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    } - set(COMMON_OPTIONS)
    _unknown_options(name, kwargs, accepted)
    try:
        return cls(model, eps=eps, alpha=alpha, steps=steps, seed=seed, **kwargs)
    except AttackError:
        raise
    except Exception as err:  # a user's class refusing its options (a missing one, a bad value)
        raise AttackError(
            f"attack '{name}': {cls.__name__}(...) raised {type(err).__name__}: {_first_line(err)}"
        ) from None


def external_attack_fingerprint(spec: str) -> str | None:
    """What identifies the code of a non-registry attack, for the baseline cache key:
    torchattacks' version for ``torchattacks:``, a hash of the class's module source for an
    import path (editing the attack invalidates cached baselines); None for a registered
    attack, whose code is this module's and fingerprinted with it."""
    if not is_external_attack(spec):
        return None
    if spec.startswith(TORCHATTACKS_PREFIX):
        import torchattacks

        return f"torchattacks-{torchattacks.__version__}"
    return module_fingerprint(spec)


# --------------------------------------------------------------------------- attacks


@register_attack("fgsm")
class FGSM(Attack):
    """Fast Gradient Sign Method (Goodfellow et al., 2015): one step of size ε."""

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        grad = _input_grad(self.model, x, y)
        return (x + self.eps * grad.sign()).clamp(0.0, 1.0)


@register_attack("pgd")
class PGD(Attack):
    """Projected gradient descent (Madry et al., 2018) under L∞, with a uniform random start.

    Matches ``torchattacks.PGD``: each step moves ``alpha`` along the sign of the input gradient
    of the cross-entropy and projects back onto the ε-ball and [0, 1].
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float = 8 / 255,
        alpha: float = PAPER_ALPHA,
        steps: int | None = 10,
        seed: int = 0,
        random_start: bool = True,
    ) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, seed=seed)
        self.random_start = bool(random_start)

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = x.clone()
        if self.random_start:
            noise = torch.empty_like(x).uniform_(
                -self.eps, self.eps, generator=self._generator(x.device)
            )
            x_adv = (x_adv + noise).clamp(0.0, 1.0)
        for _ in range(self.steps):
            grad = _input_grad(self.model, x_adv, y)
            x_adv = x_adv + self.alpha * grad.sign()
            # Same projection as torchattacks so the two agree to the last bit.
            delta = torch.clamp(x_adv - x, min=-self.eps, max=self.eps)
            x_adv = torch.clamp(x + delta, min=0.0, max=1.0)
        return x_adv


@register_attack("ifgsm", "bim")
class IFGSM(PGD):
    """Iterative FGSM / Basic Iterative Method (Kurakin et al., 2017): PGD without random start."""

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float = 8 / 255,
        alpha: float = PAPER_ALPHA,
        steps: int | None = 10,
        seed: int = 0,
    ) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, seed=seed, random_start=False)


@register_attack("cw")
class CW(Attack):
    """Carlini & Wagner L2 attack (``torchattacks.CW``), untargeted.

    A minimum-norm attack: ``eps`` does not bound it (the paper's ε-ball applies to the L∞
    attacks) and ``alpha`` is unused; ``steps`` is the number of Adam steps. torchattacks'
    default ``lr = 0.01`` barely moves in ten steps, hence the larger default here (chosen on the
    digits test model so that the paper's 10 steps already find adversarials).
    """

    norm = "L2"

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float = 8 / 255,
        alpha: float = PAPER_ALPHA,
        steps: int | None = 10,
        seed: int = 0,
        c: float = 1.0,
        kappa: float = 0.0,
        lr: float = 0.1,
    ) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, seed=seed)
        for key, value, ok, allowed in (
            ("c", c, c > 0, "> 0"),
            ("kappa", kappa, kappa >= 0, ">= 0"),
            ("lr", lr, lr > 0, "> 0"),
        ):
            if not (ok and math.isfinite(value)):
                raise AttackError(f"cw {key} must be {allowed}, got {value!r}")
        self.c, self.kappa, self.lr = float(c), float(kappa), float(lr)

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import torchattacks

        attack = torchattacks.CW(
            self.model, c=self.c, kappa=self.kappa, steps=self.steps, lr=self.lr
        )
        attack.set_device(x.device)
        # CW is deterministic, but fork the RNG anyway in case a model draws random numbers.
        with _forked_rng(x.device):
            return attack(x, y)


@register_attack("autoattack")
class AutoAttack(Attack):
    """Official AutoAttack (Croce & Hein, 2020) from ``pyautoattack``, standard version, L∞.

    Runs APGD-CE, APGD-T, FAB-T and Square; ``alpha`` and ``steps`` are unused (AutoAttack is
    parameter-free). With fewer than 10 classes the targeted attacks use every other class as
    target instead of 9 (which would fail). Seeded through AutoAttack's own ``seed``; the global
    RNG, which AutoAttack reseeds, is restored afterwards.
    """

    trains = False  # returns the images it cannot break unperturbed
    fast = False  # four attacks, seconds per batch even on digits

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float = 8 / 255,
        alpha: float = PAPER_ALPHA,
        steps: int | None = 10,
        seed: int = 0,
        version: str = "standard",
        norm: str = "Linf",
        batch_size: int = 500,
    ) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, seed=seed)
        if version not in ("standard", "plus", "rand"):
            raise AttackError(
                f"autoattack version must be one of standard, plus, rand, got {version!r}"
            )
        if norm not in ("Linf", "L2"):
            raise AttackError(f"autoattack norm must be Linf or L2, got {norm!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise AttackError(f"autoattack batch_size must be an integer >= 1, got {batch_size!r}")
        self.version, self.norm, self.batch_size = version, norm, batch_size

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from pyautoattack import AutoAttack as _AutoAttack

        with torch.no_grad():
            num_classes = int(self.model(x[:1]).shape[1])
        if num_classes < 3:
            raise AttackError(
                f"autoattack needs at least 3 classes (DLR loss), the model has {num_classes}"
            )
        aa = _AutoAttack(
            self.model,
            eps=self.eps,
            norm=self.norm,
            version=self.version,
            device=x.device,
            seed=self.seed,
        )
        targets = min(9, num_classes - 1)
        aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, targets)
        aa.fab.n_target_classes = min(aa.fab.n_target_classes, targets)
        with _forked_rng(x.device):
            # pyautoattack returns (x_adv, y_adv), unlike upstream AutoAttack.
            x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=self.batch_size)
        return x_adv


@register_attack("apgd-ce", "apgd")
class APGDCE(Attack):
    """APGD-CE (Croce & Hein, 2020): the official ``pyautoattack`` Auto-PGD on cross-entropy, L∞.

    AutoAttack's first stage on its own: one restart, the step size starts at 2ε and halves at
    APGD's checkpoints when the loss stops rising, with momentum 0.75. ``alpha`` is unused (the
    step size is APGD's own).

    Iterations: ``steps``, as for PGD, so ``stop_attack: apgd-ce`` costs no more than the PGD
    check it replaces (less: APGD skips images that are misclassified already). Not APGD's own
    100: on the VGG16 reproduction (BENCHMARKS.md, "Stop attack") 7, 20 and 100 iterations made
    the same stop decision at every split depth and epoch, their validation accuracies were
    within 0.8 points, and 100 cost about ten times as much as 7.

    Each image comes back as a misclassified iterate if APGD found one, otherwise unperturbed,
    which is what robust accuracy needs. As a training attack that would leave every image it
    cannot break clean, so use it to evaluate or to check (``eval_attack``, ``stop_attack``),
    not to train.

    Seeding: APGD reseeds the global RNG with its ``seed`` and draws its random start there, so
    every call gets a seed drawn from this attack's private generator (the n-th calls of two
    attacks with the same ``seed`` agree; successive calls get fresh starts) and the global RNG
    is restored afterwards.
    """

    trains = False  # returns the images it cannot break unperturbed

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from pyautoattack.autopgd_base import APGDAttack

        call_seed = self._call_seed()
        apgd = APGDAttack(
            self.model,
            n_iter=self.steps,
            norm="Linf",
            n_restarts=1,
            eps=self.eps,
            seed=call_seed,
            loss="ce",
            eot_iter=1,
            rho=0.75,
            device=x.device,
        )
        with _forked_rng(x.device):
            return apgd.perturb(x, y)

    def __repr__(self) -> str:
        return f"APGDCE(eps={self.eps:.6g}, steps={self.steps}, seed={self.seed})"


class TorchAttacks(Attack):
    """Any torchattacks attack class, by name (``torchattacks:MIFGSM``), behind our interface.

    ``eps``, ``alpha`` and ``steps`` go to the class where its constructor takes them (FGSM
    takes only ``eps``); ``options`` (the config's ``attack_kwargs``) are its other keyword
    arguments, checked against its signature. The wrapper adds what torchattacks leaves to the
    caller: every call draws a seed from this attack's private generator and runs with the
    global RNG seeded with it and restored afterwards (torchattacks draws its random starts
    there), and the base class's guard (eval mode, frozen parameters) applies as to ours.

    ``norm`` is read from the class, which torchattacks does not declare: ``options["norm"]``
    where the class takes one, "L2" for a name containing L2 or a class without ``eps`` (the
    minimum-norm attacks: CW, DeepFool), else "Linf".
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float = 8 / 255,
        alpha: float = PAPER_ALPHA,
        steps: int | None = 10,
        seed: int = 0,
        attack: str = "torchattacks:PGD",
        options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, seed=seed)
        try:
            import torchattacks
        except ImportError:
            raise AttackError(
                f"attack '{attack}' needs torchattacks: pip install torchattacks"
            ) from None
        cls_name = attack[len(TORCHATTACKS_PREFIX) :]
        cls = getattr(torchattacks, cls_name, None)
        if not (isinstance(cls, type) and issubclass(cls, torchattacks.attack.Attack)):
            names = [n for n in torchattacks.__all__ if n not in ("Attack", "MultiAttack")]
            hint = did_you_mean(cls_name, names, prefix=TORCHATTACKS_PREFIX)
            raise AttackError(
                f"attack '{attack}': torchattacks has no attack class '{cls_name}'{hint}"
            )
        options = dict(options or {})
        params = inspect.signature(cls.__init__).parameters
        takes = {p for p in params if p not in ("self", "model")}
        _unknown_options(attack, options, takes - set(COMMON_OPTIONS))
        common = {"eps": self.eps, "alpha": self.alpha, "steps": self.steps}
        args = {k: v for k, v in common.items() if k in takes}
        try:
            self._attack = cls(model, **args, **options)
        except Exception as err:
            raise AttackError(
                f"attack '{attack}': torchattacks.{cls_name} refused its arguments "
                f"({type(err).__name__}: {_first_line(err)})"
            ) from None
        self.name = attack
        self.options = options
        if "norm" in options:
            self.norm = str(options["norm"])
        else:
            self.norm = "L2" if "L2" in cls_name or "eps" not in takes else "Linf"

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        call_seed = self._call_seed()
        self._attack.set_device(x.device)
        with _forked_rng(x.device):
            torch.manual_seed(call_seed)
            return self._attack(x, y)

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in sorted(self.options.items()))
        return f"TorchAttacks({self.name!r}, eps={self.eps:.6g}, seed={self.seed}{extra})"


# --------------------------------------------------------------------------- helpers


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of the summed cross-entropy w.r.t. the input only.

    Parameters have ``requires_grad`` off inside the guard, so autograd records nothing for
    them. The sum (not mean) keeps per-example gradients from shrinking with the batch size; the
    sign, which is all the attacks use, is the same.
    """
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad


@contextlib.contextmanager
def _attack_guard(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters for the duration of an attack, restored per module."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad in flags:
            p.requires_grad_(requires_grad)


@contextlib.contextmanager
def _forked_rng(device: torch.device) -> Iterator[None]:
    """Restore the global RNG (and the CUDA one of ``device``) after third-party code reseeds it."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        yield


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return fallback


def _check_eps(eps: float) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 < eps <= 1.0:
        raise AttackError(f"eps must be in (0, 1] (pixel scale, e.g. 8/255), got {eps!r}")


def _check_alpha(alpha: float) -> None:
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float))
        or not (alpha > 0.0 and math.isfinite(alpha))
    ):
        raise AttackError(f"alpha (step size) must be > 0, got {alpha!r}")


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise AttackError(f"steps must be an integer >= 1, got {steps!r}")


def _check_batch(x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise AttackError(
            f"x must be a float tensor in [0, 1], got {getattr(x, 'dtype', type(x).__name__)} "
            "(convert uint8 images with semirobust_ray.data.to_unit)"
        )
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or len(y) != len(x):
        raise AttackError(
            f"y must be a 1-D label tensor with one label per image ({len(x)}), "
            f"got shape {tuple(getattr(y, 'shape', ()))}"
        )
    if len(x) and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise AttackError(
            f"x must lie in [0, 1], got range [{float(x.min()):.4g}, {float(x.max()):.4g}] "
            "(normalisation belongs inside the model)"
        )
