"""Ahead-of-time compilation for a TPU slice, on any machine (no TPU needed).

libtpu (requirements-tpu.txt) carries the XLA:TPU compiler. Given a topology
name such as "v3:4x4" it describes the slice's devices without touching
hardware; a jitted function lowered with abstract inputs placed on a mesh of
those devices compiles exactly as it would on the pod, and XLA then reports
its own per-device memory (arguments, outputs, temporaries) and cost (FLOPs,
bytes accessed). `--dry_run --compile` uses this for every stage of a config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator

import jax

# Per accelerator kind: the topology-name prefix, JAX devices per chip, how the
# chips are laid out (2-D torus or 3-D), and the libtpu chip config. v3 exposes
# both TensorCores of a chip as devices; v4 and v5p run as one "megacore"
# device per chip, v5e and v6e have one TensorCore per chip.
TOPOLOGY_KINDS: dict[str, tuple[str, int, int, str | None]] = {
    "tpu_v3": ("v3", 2, 2, None),
    "tpu_v4": ("v4", 1, 3, "megacore"),
    "tpu_v5e": ("v5e", 1, 2, None),
    "tpu_v5p": ("v5p", 1, 3, "megacore"),
    "tpu_v6e": ("v6e", 1, 2, None),
}

INSTALL_HINT = "pip install -r requirements-tpu.txt (make test installs it)"


class TopologyError(ValueError):
    """A target that cannot be compiled for; str() is one line naming the key."""


def chip_grid(chips: int, dims: int) -> tuple[int, ...]:
    """The slice shape Cloud TPU uses for `chips` chips: 2-D as square as
    possible (16 -> 4x4, 32 -> 4x8), 3-D from 2x2x1 doubling the last smallest
    axis (16 -> 2x2x4, 32 -> 2x4x4).

    Raises:
      ValueError: `chips` is not a power of two (>= 4 for 3-D slices).
    """
    if chips < 1 or chips & (chips - 1):
        raise ValueError(f"{chips} chips is not a power of two")
    if dims == 2:
        x = 2 ** (int(math.log2(chips)) // 2)
        return (x, chips // x)
    if chips < 4:
        raise ValueError("3-D slices start at 4 chips (2x2x1)")
    shape = [2, 2, 1]
    while math.prod(shape) < chips:
        smallest = min(shape)
        i = max(i for i, s in enumerate(shape) if s == smallest)
        shape[i] *= 2
    return tuple(shape)


def default_topology(accelerator: str, num_devices: int) -> str:
    """The topology name of a slice of `num_devices` JAX devices, e.g.
    ("tpu_v3", 32) -> "v3:4x4" (a v3-32), ("tpu_v5e", 8) -> "v5e:2x4".

    Raises:
      TopologyError: not a TPU, or a device count no slice has.
    """
    if accelerator not in TOPOLOGY_KINDS:
        raise TopologyError(
            f"target.accelerator: {accelerator!r} cannot be compiled without the device; "
            f"--compile knows the TPUs {', '.join(sorted(TOPOLOGY_KINDS))}"
        )
    prefix, per_chip, dims, _ = TOPOLOGY_KINDS[accelerator]
    if num_devices % per_chip:
        raise TopologyError(
            f"target.num_devices: {num_devices} is not a whole number of {prefix} chips "
            f"({per_chip} devices each)"
        )
    try:
        grid = chip_grid(num_devices // per_chip, dims)
    except ValueError as e:
        raise TopologyError(
            f"target.num_devices: no {prefix} slice has {num_devices} devices ({e}); "
            "set target.topology, e.g. v3:4x4"
        ) from None
    return f"{prefix}:{'x'.join(map(str, grid))}"


def _kind_of(topology: str) -> str | None:
    prefix = topology.split(":", 1)[0]
    return next((k for k, v in TOPOLOGY_KINDS.items() if v[0] == prefix), None)


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Collects what C++ code writes to fd 2 (libtpu warns about TPU_* variables
    it cannot find on a machine without TPUs); the text is handed back for
    error messages and otherwise dropped."""
    out: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


def topology_devices(topology: str) -> list[jax.Device]:
    """The devices of a TPU slice, e.g. "v3:4x4" -> 32 devices on 4 hosts
    (`process_index` 0..3), for compiling only.

    Raises:
      TopologyError: libtpu missing, or a topology libtpu does not know.
    """
    try:
        import libtpu  # noqa: F401  (the compiler; jax finds it by itself)
    except ImportError:
        raise TopologyError(
            f"--compile needs libtpu, the XLA:TPU compiler: {INSTALL_HINT}"
        ) from None
    from jax.experimental import topologies

    kind = _kind_of(topology)
    chip_config = TOPOLOGY_KINDS[kind][3] if kind else None
    # libtpu takes a lock file for the process; a second compiling process on
    # the same machine (tests, two dry runs) would otherwise fail to load it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    kwargs = {"chip_config_name": chip_config} if chip_config else {}
    with _captured_stderr():
        try:
            topo = topologies.get_topology_desc(topology_name=topology, platform="tpu", **kwargs)
            devices = list(topo.devices)
        except Exception as e:  # libtpu reports bad names as assorted runtime errors
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            devices, error = None, reason
    if devices is None:
        hint = "" if kind else f"; known kinds: {', '.join(v[0] for v in TOPOLOGY_KINDS.values())}"
        raise TopologyError(
            f"target.topology: libtpu does not know {topology!r} ({error[:160]}){hint}"
        )
    return devices


def resolve_target_devices(target, num_devices: int) -> tuple[str, list[jax.Device]]:
    """(topology name, its devices) for a config's `target`: `target.topology`
    when set, else the slice of `num_devices` devices of `target.accelerator`.

    Raises:
      TopologyError: unknown topology, or one whose device count differs from
        the `num_devices` the mesh is planned for.
    """
    topology = target.get("topology", "") or default_topology(target.accelerator, num_devices)
    devices = topology_devices(topology)
    if len(devices) != num_devices:
        raise TopologyError(
            f"target.topology: {topology} has {len(devices)} devices but the plan is for "
            f"{num_devices} (target.num_devices); make them agree"
        )
    kind = _kind_of(topology)
    if kind is not None and kind != target.accelerator:
        raise TopologyError(
            f"target.topology: {topology} is a {kind} slice but target.accelerator is "
            f"{target.accelerator!r}"
        )
    return topology, devices


@dataclasses.dataclass(frozen=True)
class CompiledFigures:
    """XLA's own figures for one compiled program, per device.

    Bytes: arguments (inputs), outputs, alias (outputs written in place of
    donated inputs), temporaries (the working set), and `peak` = arguments +
    outputs - alias + temporaries, what the program needs resident. flops and
    bytes_accessed come from XLA's cost analysis of the per-device program;
    `loop_trips` is how many times a loop body (gradient accumulation) runs,
    which XLA counts once, so both are multiplied by it.
    """

    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    flops: float
    bytes_accessed: float
    compile_seconds: float
    loop_trips: int = 1

    @property
    def peak_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    def roofline_seconds(self, peak_flops: float, hbm_bytes_per_second: float) -> float:
        """A lower bound on the step time: max(FLOPs / peak FLOP/s, bytes / HBM
        bandwidth) per device. Collectives, launch overheads and imperfect
        overlap only add to it."""
        return max(self.flops / peak_flops, self.bytes_accessed / hbm_bytes_per_second)


def compile_figures(lowered, *, loop_trips: int = 1) -> tuple[object, CompiledFigures]:
    """(compiled executable, its CompiledFigures) for a `jax.jit(...).lower(...)`."""
    t0 = time.perf_counter()
    with _captured_stderr():
        compiled = lowered.compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return compiled, CompiledFigures(
        argument_bytes=int(mem.argument_size_in_bytes),
        output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes),
        temp_bytes=int(mem.temp_size_in_bytes),
        flops=float(cost.get("flops", 0.0)) * loop_trips,
        bytes_accessed=float(cost.get("bytes accessed", 0.0)) * loop_trips,
        compile_seconds=seconds,
        loop_trips=loop_trips,
    )


_COLLECTIVE = re.compile(
    r"=\s*(?P<result>[^=\n]*?)\s(?P<op>all-gather|all-reduce|reduce-scatter|all-to-all|"
    r"collective-permute)(-start)?\("
)
_SHAPE = re.compile(r"\b[a-z]+\d*\[[\d,]*\]")


def collectives(hlo_text: str) -> list[tuple[str, list[str]]]:
    """(op, result shapes) of every collective in compiled HLO text, e.g.
    ("all-gather", ["f32[64,512]"]); combined collectives list several shapes."""
    return [(m["op"], _SHAPE.findall(m["result"])) for m in _COLLECTIVE.finditer(hlo_text)]
