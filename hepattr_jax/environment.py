"""What machine a result was measured on, for reports and benchmarks (no JAX state changed)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows, else "unknown"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def hardware() -> str:
    """E.g. ``"cpu: AMD EPYC (2 cores)"``, or the accelerator's platform and kind."""
    import jax

    dev = jax.devices()[0]
    if dev.platform != "cpu":
        return f"{dev.platform}: {dev.device_kind}"
    return f"cpu: {cpu_model()} ({os.cpu_count()} cores)"


def compute_environment() -> dict[str, str]:
    """What a computed number may depend on beyond its inputs: the JAX ``backend`` (cpu, gpu,
    tpu), the first device's ``device_kind``, and the ``jax`` and ``jaxlib`` versions.

    Score stores compare it when reopened (:mod:`hepattr_jax.store`), so chunks computed under
    another backend or JAX release are not silently mixed into one result.
    """
    import jax
    import jaxlib

    return {
        "backend": jax.default_backend(),
        "device_kind": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
    }


_PACKAGES = ("hepattr-jax", "jax", "jaxlib", "flax", "optax", "jraph", "orbax-checkpoint", "numpy")


def versions(packages: tuple[str, ...] = _PACKAGES) -> dict[str, str]:
    """Installed versions of ``packages`` (distribution names) and Python; "absent" if not
    installed."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def provenance(packages: tuple[str, ...] = _PACKAGES) -> dict:
    """The one record of what produced a result: versions, JAX backend and devices, CPU.

    Run records, score stores, reports, experiment results and benchmarks all call this, so
    they say the same things under the same keys. ``compute_environment()`` is its subset that
    stores compare on reopen.
    """
    import jax

    return {
        **compute_environment(),
        "n_devices": jax.device_count(),
        "hardware": hardware(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "versions": versions(packages),
    }
