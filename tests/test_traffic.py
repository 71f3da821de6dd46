"""The train step's traffic floor against a hand count, and the compiled
program's traffic parsed from HLO text written by hand (the compiled TPU step
is checked in test_tpu_compile.py)."""

import jax
import jax.numpy as jnp
import pytest

from gld_jax.train.costs import residual_bytes
from gld_jax.train.traffic import (
    hlo_traffic,
    layer_table,
    tile_padding_bytes,
    top_traffic,
    traffic_by_layer,
    traffic_floor,
)

B, DIN, H, DOUT = 8, 5, 7, 3


@pytest.mark.parametrize("dtype, itemsize", [(jnp.float32, 4), (jnp.bfloat16, 2)])
def test_floor_of_a_two_layer_model_equals_the_hand_count(dtype, itemsize):
    """y = (x W1) W2, float32 parameters, computed in `dtype`. By hand: the
    backward needs the hidden activation x W1 (for W2's gradient), B x H values;
    in float32 it has everything else already (its own inputs). In bfloat16 it
    also keeps the bfloat16 copies of x, W1 and W2 (new values: the casts),
    which the products' gradients read. One
    AdamW step reads and writes the parameters, the gradients and two moments
    once each (2 x 4 x P bytes each), writes and reads the hidden activation, and
    reads the batch (uint8 pixels in the real step; float32 here)."""

    def model(p, x):
        return (x.astype(dtype) @ p["w1"].astype(dtype)) @ p["w2"].astype(dtype)

    params = {
        "w1": jax.ShapeDtypeStruct((DIN, H), jnp.float32),
        "w2": jax.ShapeDtypeStruct((H, DOUT), jnp.float32),
    }
    x = jax.ShapeDtypeStruct((B, DIN), jnp.float32)
    residuals = residual_bytes(model, params, x)
    copies = 0 if dtype == jnp.float32 else itemsize * (B * DIN + DIN * H + H * DOUT)
    assert residuals == B * H * itemsize + copies
    param_bytes = 4 * (DIN * H + H * DOUT)
    floor = traffic_floor(
        param_bytes=param_bytes,
        optimizer_slots=2,
        ema=False,
        residual_bytes=residuals,
        input_bytes=4 * B * DIN,
    )
    hand = 2 * param_bytes + 2 * param_bytes + 2 * 2 * param_bytes
    hand += 2 * (B * H * itemsize + copies)
    assert floor.total == hand + 4 * B * DIN
    # Two micro-batches: activations and inputs twice, the update once; an EMA
    # adds one more state read and written.
    two = traffic_floor(
        param_bytes=param_bytes,
        optimizer_slots=2,
        ema=True,
        residual_bytes=residuals,
        input_bytes=4 * B * DIN,
        micro_batches=2,
    )
    assert two.total == floor.total + 2 * param_bytes + 2 * residuals + 4 * B * DIN


# Compiled HLO lines are long; the text is what XLA prints.
HLO = """\
HloModule step

%body (arg: (s32[], f32[16,16])) -> (s32[], f32[16,16]) {
  %arg = (s32[], f32[16,16]{1,0}) parameter(0)
  %w = f32[16,16]{1,0} get-tuple-element(%arg), index=1
  %u = f32[16,16]{1,0} add(%w, %w), metadata={op_name="jit(step)/optimizer/add"}
  ROOT %t = (s32[], f32[16,16]{1,0}) tuple(%i, %u)
}

%fused_computation (p0: bf16[4,8,8,16]) -> bf16[4,8,8,16] {
  %p0 = bf16[4,8,8,16]{3,2,1,0} parameter(0)
  ROOT %n = bf16[4,8,8,16]{3,2,1,0} negate(%p0)
}

ENTRY %main (x: bf16[4,8,8,16], w: f32[16,16], /*index=2*/a: f32[], b: f32[]) -> bf16[4,8,8,16] {
  %x = bf16[4,8,8,16]{3,2,1,0} parameter(0)
  %w = f32[16,16]{1,0} parameter(1)
  %f = bf16[4,8,8,16]{3,2,1,0:T(8,128)(2,1)} fusion(%x), kind=kLoop, calls=%fused_computation, metadata={op_name="jit(step)/jvp(block2a)/dwconv/neg"}
  %g = bf16[4,8,8,16]{3,2,1,0} fusion(%f), kind=kLoop, calls=%fused_computation, metadata={op_name="jit(step)/transpose(jvp(block2a))/dwconv/neg"}
  %l = (s32[], f32[16,16]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  ROOT %r = bf16[4,8,8,16]{3,2,1,0} copy(%g)
}
"""


def test_compiled_traffic_is_counted_per_instruction_with_its_layer():
    """By hand: an activation [4, 8, 8, 16] bf16 is 8,192 bytes; each fusion
    reads one and writes one (16,384); the copy the same; the loop body's add
    reads two [16, 16] f32 and writes one (3,072 bytes) three times (its trip
    count); parameters, tuples and the fused computation's own ops move nothing.
    %f's result is laid out in TPU tiles of 8 x 128 on its two minor dimensions
    (channels 16 -> 128 lanes, 8 rows): 4 x 8 x 8 x 128 x 2 = 65,536 bytes in
    tiles, which %f writes and %g reads."""
    ops = {o.name: o for o in hlo_traffic(HLO)}
    assert set(ops) == {"f", "g", "r", "u"}
    assert (ops["f"].logical_bytes, ops["g"].logical_bytes) == (16_384, 16_384)
    assert (ops["f"].bytes, ops["g"].bytes) == (65_536 + 8_192, 65_536 + 8_192)
    assert ops["r"].bytes == ops["r"].logical_bytes == 16_384
    assert ops["u"].bytes == 3 * 3_072
    assert tile_padding_bytes(list(ops.values())) == 2 * (65_536 - 8_192)
    assert (ops["f"].layer, ops["f"].backward) == ("block2a/dwconv", False)
    assert (ops["g"].layer, ops["g"].backward) == ("block2a/dwconv", True)
    assert ops["u"].layer == "optimizer"
    assert traffic_by_layer(list(ops.values()))["block2a"] == 2 * 73_728
    # by layer: block2a's two fusions hold all of the padding; the optimizer none
    table = layer_table(list(ops.values()), 2)
    assert [t["layer"] for t in table] == ["block2a", "(unnamed)"]
    assert table[0]["gb"] == 2 * 73_728 / 1e9
    assert table[0]["padding_gb"] == 2 * (65_536 - 8_192) / 1e9
    assert table[1] == {"layer": "(unnamed)", "gb": 16_384 / 1e9, "padding_gb": 0.0}
    top = top_traffic(list(ops.values()), 2)
    assert [t["gb"] for t in top] == [73_728 / 1e9] * 2
    assert top_traffic([ops["u"]], 1)[0]["pass"] == "update"
