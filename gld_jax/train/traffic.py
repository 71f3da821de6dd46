"""HBM traffic of a train step: the least it can move, and where a compiled
program moves it.

The floor (`traffic_floor`) is the traffic one step cannot avoid on one device,
under these assumptions:

- the parameters are read once (the forward) and written once (the update);
  their gradients written once (the backward) and read once (the update);
  each optimizer slot (Adam's two moments) and the EMA read and written once;
- each activation the backward pass needs (the residuals `jax.vjp` keeps, as
  traced: gld_jax.train.costs) is written once and read once, per micro-batch;
- the input batch (uint8 pixels) is read once, per micro-batch;
- nothing else reaches HBM: every other intermediate lives in on-chip memory,
  and no parameter, gradient or activation is read twice.

It is a bound, not a target: a real step re-reads weights in the backward,
spills what does not fit on chip, and writes the gradients of activations. The
compiled program's own count (XLA's "bytes accessed") over the floor is the
distance to the limit; `hlo_traffic` says where the bytes go, instruction by
instruction, named by the layers (jax.named_scope) they come from.
"""

from __future__ import annotations

import dataclasses
import re

__all__ = [
    "OpTraffic",
    "TrafficFloor",
    "hlo_traffic",
    "layer_table",
    "tile_padding_bytes",
    "top_traffic",
    "traffic_by_layer",
    "traffic_floor",
]


@dataclasses.dataclass(frozen=True)
class TrafficFloor:
    """The floor's parts, bytes per device per step."""

    parameters: float  # read + written: 2 x params
    gradients: float  # written + read: 2 x params
    optimizer: float  # 2 x slots x params (+ EMA)
    activations: float  # 2 x residuals x micro-batches
    inputs: float  # the uint8 batch, read once

    @property
    def total(self) -> float:
        return self.parameters + self.gradients + self.optimizer + self.activations + self.inputs


def traffic_floor(
    *,
    param_bytes: float,
    optimizer_slots: int,
    ema: bool,
    residual_bytes: float,
    input_bytes: float,
    micro_batches: int = 1,
) -> TrafficFloor:
    """The least HBM traffic of one train step on one device (module docstring).

    Args:
      param_bytes: the device's parameters (its share of sharded ones), bytes.
      optimizer_slots: state arrays per parameter (AdamW 2, momentum SGD 1).
      ema: whether an EMA of the weights is kept.
      residual_bytes: what the backward pass keeps from one micro-batch's
        forward on this device, bytes.
      input_bytes: one micro-batch's input on this device, bytes.
      micro_batches: micro-batches per update (accumulation).
    """
    slots = optimizer_slots + (1 if ema else 0)
    return TrafficFloor(
        parameters=2.0 * param_bytes,
        gradients=2.0 * param_bytes,
        optimizer=2.0 * slots * param_bytes,
        activations=2.0 * residual_bytes * micro_batches,
        inputs=float(input_bytes) * micro_batches,
    )


# ------------------------------------------------------------ compiled traffic

_ITEMSIZE = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
}
_ARRAY = re.compile(
    r"\b(pred|[su](?:8|16|32|64)|bf16|f16|f32|f64|c64)\[([\d,]*)\](\{[\d,]*(?::T\((\d+),(\d+)\))?)?"
)
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([\w\-]+)\((.*)$")
# A computation's header: "%name (params...) -> shape {" or "ENTRY %name (...) ...";
# its parameter list may hold "/*index=5*/" comments, so no "=" test tells it
# from an instruction: an instruction has " = " right after its name.
_COMP = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
# Instructions that move no data of their own.
_FREE = {
    "parameter",
    "constant",
    "get-tuple-element",
    "tuple",
    "bitcast",
    "while",
    "conditional",
    "call",
    "after-all",
    "partition-id",
    "replica-id",
    "iota",
}
_SCOPE_WRAPPERS = re.compile(r"^(?:jvp|transpose|remat|checkpoint|vmap|pjit|jit)\((.*)\)$")


def _bytes(shape_text: str) -> tuple[int, int]:
    """(logical bytes, bytes in the layout's tiles) of a shape as HLO prints it,
    e.g. "bf16[4,272,272,144]{3,0,2,1:T(4,128)(2,1)}": a TPU tiles the two most
    minor dimensions (here 4 x 128), so 144 channels take 256 lanes. XLA:TPU's
    "bytes accessed" counts the tiles."""
    logical = tiled = 0
    for dtype, dims, layout, rows, lanes in _ARRAY.findall(shape_text):
        shape = [int(d) for d in dims.split(",") if d]
        padded = list(shape)
        order = [int(d) for d in layout[1:].split(":")[0].split(",") if d] if layout else []
        if rows and order and len(shape) >= 2:
            minor, second = order[0], order[1]
            padded[minor] = -(-padded[minor] // int(lanes)) * int(lanes)
            padded[second] = -(-padded[second] // int(rows)) * int(rows)
        elif rows and shape:
            padded[0] = -(-padded[0] // int(rows)) * int(rows)
        n = t = _ITEMSIZE[dtype]
        for a, b in zip(shape, padded, strict=True):
            n, t = n * a, t * b
        logical, tiled = logical + n, tiled + t
    return logical, tiled


@dataclasses.dataclass(frozen=True)
class OpTraffic:
    """One instruction of a compiled program: its operands' and result's bytes
    (times its loop's trip count), and where it comes from."""

    name: str
    opcode: str
    bytes: int  # in the layout's tiles, as XLA counts them
    logical_bytes: int  # the arrays' own sizes, without tile padding
    layer: str  # the named scopes of its op_name, e.g. "block3b/dwconv"
    backward: bool  # from the gradient (a transpose of the forward)


def _layer(op_name: str) -> tuple[str, bool]:
    """("block3b/dwconv", backward?) from an op_name such as
    "jit(train_step_fn)/transpose(jvp(block3b))/dwconv/conv_general_dilated"."""
    backward = "transpose(" in op_name
    parts = op_name.split("/")[1:-1]  # drop jit(fn) and the primitive
    names = []
    for part in parts:
        while (m := _SCOPE_WRAPPERS.match(part)) is not None:
            part = m.group(1)
        if part and "(" not in part:
            names.append(part)
    return "/".join(names) or "(unnamed)", backward


def hlo_traffic(hlo_text: str) -> list[OpTraffic]:
    """Every data-moving instruction of a compiled HLO module (`compiled.as_text()`)
    outside fused computations, with bytes = operands + result in their layouts'
    tiles (XLA's own way of counting a fusion's traffic: on a TPU program these
    sum to XLA's "bytes accessed"), multiplied by the known trip count of the
    loop it runs in (gradient accumulation)."""
    computations: dict[str, list[tuple[str, str, str, str]]] = {}
    current = None
    for line in hlo_text.splitlines():
        m = _COMP.match(line)
        if m and not _INSTR.match(line):
            current = m.group(1)
            computations[current] = []
            continue
        if current is None:
            continue
        im = _INSTR.match(line)
        if im:
            computations[current].append(im.groups())
    fused, trips = set(), {}
    for instrs in computations.values():
        for _, _, opcode, rest in instrs:
            for callee in re.findall(r"(?:calls|to_apply|select|scatter)=%?([\w.\-]+)", rest):
                if opcode != "while":
                    fused.add(callee)
            if opcode == "while":
                body = re.search(r"body=%?([\w.\-]+)", rest)
                n = re.search(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"', rest)
                if body:
                    trips[body.group(1)] = int(n.group(1)) if n else 1
    out = []
    for comp, instrs in computations.items():
        if comp in fused:
            continue
        shapes = {name: shape for name, shape, _, _ in instrs}
        repeat = trips.get(comp, 1)
        for name, shape, opcode, rest in instrs:
            if opcode in _FREE:
                continue
            args = rest.split(")", 1)[0]
            operands = re.findall(r"%([\w.\-]+)", args)
            sizes = [_bytes(shape), *(_bytes(shapes.get(o, "")) for o in operands)]
            logical, tiled = (sum(x) * repeat for x in zip(*sizes, strict=True))
            meta = re.search(r'op_name="([^"]*)"', rest)
            layer, backward = _layer(meta.group(1) if meta else "")
            out.append(OpTraffic(name, opcode, tiled, logical, layer, backward))
    return out


def top_traffic(ops: list[OpTraffic], n: int = 8) -> list[dict]:
    """The `n` instructions that move the most bytes, largest first, as dicts
    for the dry run's report."""
    ranked = sorted(ops, key=lambda o: -o.bytes)[:n]
    return [
        {
            "layer": o.layer,
            "pass": (
                "backward"
                if o.backward
                else "update"
                if o.layer.startswith("optimizer")
                else "forward"
            ),
            "op": o.opcode,
            "gb": o.bytes / 1e9,
            "instruction": o.name,
        }
        for o in ranked
    ]


def tile_padding_bytes(ops: list[OpTraffic]) -> int:
    """Bytes of the traffic that are tile padding: dimensions rounded up to the
    layout's tiles (a TPU's 128 lanes hold 40, 80 or 144 channels as 128, 128
    and 256)."""
    return sum(o.bytes - o.logical_bytes for o in ops)


def _per_layer(ops: list[OpTraffic]) -> dict[str, tuple[float, float]]:
    """{top-level named scope: (bytes, tile padding bytes)}, largest first."""
    totals: dict[str, tuple[float, float]] = {}
    for o in ops:
        key = o.layer.split("/")[0]
        moved, padding = totals.get(key, (0.0, 0.0))
        totals[key] = (moved + o.bytes, padding + o.bytes - o.logical_bytes)
    return dict(sorted(totals.items(), key=lambda kv: -kv[1][0]))


def traffic_by_layer(ops: list[OpTraffic]) -> dict[str, float]:
    """Bytes per top-level named scope (a block, the stem, the head...)."""
    return {k: moved for k, (moved, _) in _per_layer(ops).items()}


def layer_table(ops: list[OpTraffic], n: int = 6) -> list[dict]:
    """The `n` top-level named scopes that move the most bytes, largest first:
    {"layer", "gb", "padding_gb"} (forward, backward and update together), so
    that the tile padding can be traced to the layers whose channels cause it."""
    ranked = list(_per_layer(ops).items())[:n]
    return [{"layer": k, "gb": b / 1e9, "padding_gb": p / 1e9} for k, (b, p) in ranked]
