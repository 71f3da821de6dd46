"""Mesh shapes and sharding rules (8 fake CPU devices from conftest)."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from gld_jax.train import mesh as mesh_lib


@pytest.mark.parametrize(
    "data, model, n, expected",
    [
        (-1, 1, 8, (8, 1)),
        (2, -1, 8, (2, 4)),
        (-1, 4, 8, (2, 4)),
        (1, 8, 8, (1, 8)),
        (-1, 1, 1, (1, 1)),
    ],
)
def test_resolve_mesh_shape(data, model, n, expected):
    assert mesh_lib.resolve_mesh_shape(data, model, n) == expected


@pytest.mark.parametrize("data, model, n", [(3, -1, 8), (-1, -1, 8), (4, 4, 8), (-1, 3, 8)])
def test_resolve_mesh_shape_rejects(data, model, n):
    with pytest.raises(ValueError):
        mesh_lib.resolve_mesh_shape(data, model, n)


def test_head_is_class_sharded_and_the_rest_replicated():
    assert jax.device_count() == 8
    mesh = mesh_lib.make_mesh(2, 4)
    tree = {
        "head": {"centers": jnp.zeros((12, 3, 16))},
        "backbone": {"stem": {"kernel": jnp.zeros((3, 3, 3, 8))}},
    }
    sh = mesh_lib.tree_shardings(tree, mesh)
    assert sh["head"]["centers"].spec == P("model", None, None)
    assert sh["backbone"]["stem"]["kernel"].spec == P()
    # optimizer moments carry the parameter path after a prefix
    opt = {"0": {"mu": tree}}
    assert mesh_lib.tree_shardings(opt, mesh)["0"]["mu"]["head"]["centers"].spec == P(
        "model", None, None
    )


def test_uneven_class_count_falls_back_to_replicated():
    mesh = mesh_lib.make_mesh(2, 4)
    sh = mesh_lib.tree_shardings({"head": {"centers": jnp.zeros((10, 3, 16))}}, mesh)
    assert sh["head"]["centers"].spec == P()


def test_fsdp_splits_large_leaves_over_data_and_keeps_the_head_rule():
    from jax.sharding import AbstractMesh

    mesh = AbstractMesh((4, 2), ("data", "model"))
    spec = mesh_lib.spec_for
    # the largest dimension that 4 divides carries 'data'
    assert spec("backbone/conv/kernel", (3, 3, 64, 96), mesh, fsdp=True) == mesh_lib.P(
        None, None, None, "data"
    )
    assert spec("neck/linear/kernel", (1280, 512), mesh, fsdp=True) == mesh_lib.P("data")
    assert spec("backbone/conv/kernel", (3, 3, 7, 11), mesh, fsdp=True) == mesh_lib.P()
    assert spec("backbone/bn/scale", (64,), mesh, fsdp=True) == mesh_lib.P()  # small
    assert spec("head/centers", (64, 3, 512), mesh, fsdp=True) == mesh_lib.P("model", None, None)
    assert spec("neck/linear/kernel", (1280, 512), mesh) == mesh_lib.P()  # off by default
