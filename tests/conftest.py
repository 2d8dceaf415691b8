"""Shared test settings, and the skip of ``gpu``-marked tests on machines without CUDA."""

import contextlib
import logging
from collections.abc import Iterator

import pytest
import torch

#: A CI-sized search on the bundled digits data: the small CNN, a short PGD, a 3 + 3 epoch
#: baseline. Test modules add their own depths, k, MI and retry settings on top; modules that
#: share these fields also share one cached baseline.
DIGITS_SEARCH = dict(
    model="smallcnn",
    dataset="digits",
    attack="pgd",
    eps=0.1,
    alpha=0.03,
    steps=3,
    batch_size=64,
    lr=0.05,
    baseline_epochs=3,
    baseline_adv_epochs=3,
    epochs=2,
    trials_per_depth=1,
)


@contextlib.contextmanager
def package_logs() -> Iterator[list[str]]:
    """The messages the package logs (INFO and above) while the block runs, in order."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("semirobust_ray")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def logs() -> Iterator[list[str]]:
    """:func:`package_logs` for the whole test; ``logs.clear()`` starts a new record."""
    with package_logs() as lines:
        yield lines


#: Why a ``gpu`` test did not run, as pytest's summary (``-ra``) prints it.
NO_CUDA_REASON = "needs a CUDA GPU: torch.cuda.is_available() is False on this machine"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``@pytest.mark.gpu`` tests, with the reason, where CUDA is unavailable.

    A hook rather than a skipif in each module, so that any test marked ``gpu`` anywhere is
    covered, and CI (``-m 'not slow'``) reports them as skipped instead of failing on a CPU.
    """
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_CUDA_REASON)
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance of 2 CPUs for one test module, quiet about its workers' output."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def restore_numerics(monkeypatch: pytest.MonkeyPatch):
    """Put torch's process-wide numerics flags and ``CUBLAS_WORKSPACE_CONFIG`` back afterwards.

    ``deterministic: true`` changes global state; a test that turns it on must not leave the
    rest of the session running with it. Yields the flags as they were, with the variable unset.
    """
    from semirobust_ray.training import NumericsFlags

    # setenv first, so that monkeypatch records the variable's original state (possibly unset)
    # and restores it even though set_deterministic sets it outside monkeypatch.
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    before = NumericsFlags.current()
    yield before
    before.apply()


def first_epoch_state(exp, baseline, fb_layers: int, trial: int) -> dict:
    """The checkpoint ``run_trial`` hands over after its first epoch (``TrialState.to_dict()``),
    as a trial killed right after that epoch leaves it."""
    from semirobust_ray.algorithm1 import run_trial

    saved: list[dict] = []

    class Interrupt(Exception):
        pass

    def on_epoch(record, state):
        saved.append(state.to_dict())
        raise Interrupt

    with pytest.raises(Interrupt):
        run_trial(exp, baseline, fb_layers, trial, on_epoch=on_epoch)
    return saved[0]
