"""semirobust_ray: find the minimal robust subnetwork f*_a of a network (``import semirobust_ray as sr``).

Implements Algorithm 1 of Craig, Andle, Nowak & Yasaei Sekeh ("Does the half adversarial
robustness represent the whole?"): adversarially train the whole network once (Acc*), freeze its
first part f*_a, adversarially train only the last |f_b| trainable layers, and measure the
class-conditional mutual information between consecutive layers (the rho values). The answer is
the smallest f*_a that must be robust for that to come within k of Acc*.

``sr.search``, ``sr.load`` and ``sr.run_algorithm1`` are the Python API (docs/python-api.md).
"""

__version__ = "0.1.0"

#: The Python API (``import semirobust_ray as sr``), imported on first use so that importing a
#: module of the package (as every Ray worker does) does not load pandas and the report first.
_API = {
    "search": "semirobust_ray.api",
    "load": "semirobust_ray.api",
    "run_algorithm1": "semirobust_ray.api",
    "SearchResult": "semirobust_ray.api",
    "ExperimentConfig": "semirobust_ray.config",
    "load_config": "semirobust_ray.config",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'semirobust_ray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
