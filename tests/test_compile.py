"""torch.compile of ISA-DiT: no graph breaks (whole forward and per layer), compiled = eager."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from isa4d.geometry import intrinsics_from_fov, look_at, mvp_matrix, plucker_image
from isa4d.models.dit import dit_tiny
from test_dit_modules import C, make_conditions, randomize

TINIEST = {
    "hidden_size": 32,
    "num_heads": 2,
    "image_encoder": {"name": "small", "embed_dim": 16, "width": 4, "input_size": 16},
}


def _inputs(padded_person: bool = False):
    """A 5-frame clip (2 latent frames) at a 4x4 latent; optionally with person 1 padded (a key mask)."""
    cond = make_conditions(B=1, P=2, T=5, N=8, h=4, w=4)
    if padded_person:
        cond = dataclasses.replace(cond, person_mask=torch.tensor([[True, False]]))
    x = torch.randn(1, C, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    return x, torch.tensor([0.3]), cond


@pytest.mark.slow
def test_dit_forward_traces_as_one_graph() -> None:
    """The whole forward (embeddings, camera geometry, body tokens with a key mask, layers) is one graph:
    no `.item()`/`bool(tensor)` left on the way (camera checks, the all-keys-valid test)."""
    torch.manual_seed(0)
    model = randomize(dit_tiny(**TINIEST, depth=1)).eval()
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(*_inputs(padded_person=True))
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1


@pytest.mark.slow
def test_compile_blocks_is_fullgraph_per_layer_equal_to_eager_and_keeps_the_state_dict() -> None:
    """`compile_blocks` compiles every layer with fullgraph=True (a graph break inside a layer raises);
    the output equals eager's; parameter names are unchanged (checkpoints load either way)."""
    torch.manual_seed(0)
    eager = randomize(dit_tiny(**TINIEST, depth=2)).eval()
    compiled = dit_tiny(**TINIEST, depth=2).eval()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_blocks(backend="eager")
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    inputs = _inputs(padded_person=True)
    with torch.no_grad():
        reference = eager(*inputs)
        assert torch.equal(compiled(*inputs), reference) and reference.abs().amax() > 1e-3
        cross = compiled.layers[0].cross
        forward = cross.forward

        def broken(*args: object) -> torch.Tensor:
            torch._dynamo.graph_break()
            return forward(*args)

        cross.forward = broken
        torch._dynamo.reset()
        with pytest.raises(torch._dynamo.exc.Unsupported):
            compiled(*inputs)


@pytest.mark.slow
def test_compiled_layers_give_eager_gradients() -> None:
    """Training through compiled layers (AOTAutograd traces forward and backward, `aot_eager`): the
    gradients of every parameter equal eager's."""
    torch.manual_seed(0)
    eager = randomize(dit_tiny(**TINIEST, depth=2)).train()
    compiled = dit_tiny(**TINIEST, depth=2).train()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_blocks(backend="aot_eager")
    grads = []
    for model in (eager, compiled):
        model(*_inputs(padded_person=True)).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[1], grads[0], atol=1e-6) and grads[0].abs().amax() > 0


def test_camera_geometry_compiles_without_graph_breaks_and_still_checks_eagerly() -> None:
    """`mvp_matrix` and `plucker_image` trace in one graph (the intrinsics value check is skipped while
    compiling); eager calls still reject a bad K."""
    K = intrinsics_from_fov(torch.full((2,), 50.0), (64, 48))
    R, t = look_at(torch.tensor([[0.0, 0.5, 3.0], [1.0, 0.3, 3.0]]), torch.zeros(2, 3))
    for fn, args in ((mvp_matrix, (K, R, t, (64, 48))), (plucker_image, (K, R, t, (64, 48), (8, 6)))):
        compiled = torch.compile(fn, fullgraph=True, backend="eager")
        assert torch.allclose(compiled(*args), fn(*args), atol=1e-6)
    bad = K.clone()
    bad[..., 0, 0] = -1.0
    with pytest.raises(ValueError, match="focal lengths must be positive"):
        mvp_matrix(bad, R, t, (64, 48))


@pytest.mark.parametrize("padded_person", [False, True])
def test_body_tokens_compile_in_one_graph(padded_person: bool) -> None:
    """The 3-D tokens (geometry, ISPE, reference features, the ISA key mask) trace in one graph: eager
    drops an all-valid mask (None, FlashAttention-eligible) after reading it, compiled code keeps it
    (all True, the same attention) instead of breaking the graph."""
    model = randomize(dit_tiny(**TINIEST, depth=1)).eval()
    _, _, cond = _inputs(padded_person)
    no_drop = torch.zeros(1, dtype=torch.bool)
    args = (cond, no_drop, no_drop, (4, 4), slice(None))
    with torch.no_grad():
        eager = model._body_tokens(*args)
        compiled = torch.compile(model._body_tokens, fullgraph=True, backend="eager")(*args)
    for a, b in zip(eager[:1] + eager[2:], compiled[:1] + compiled[2:], strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    if padded_person:
        assert torch.equal(compiled[1], eager[1]) and not eager[1].all()
    else:
        assert eager[1] is None and compiled[1].all()


@pytest.mark.slow
def test_inductor_compiled_model_equals_eager() -> None:
    """`ISADiT(compile=True)` (the `compile` key of conf/model/dit_*.yaml): inductor-compiled layers give
    the eager output to 1e-5 (the tiniest model: CPU compilation takes ~40 s)."""
    torch.manual_seed(0)
    eager = randomize(dit_tiny(**TINIEST, depth=1)).eval()
    compiled = dit_tiny(**TINIEST, depth=1, compile=True).eval()
    compiled.load_state_dict(eager.state_dict())
    assert compiled.config["compile"] is True
    x, t, cond = _inputs()
    with torch.no_grad():
        reference, out = eager(x, t, cond), compiled(x, t, cond)
    assert torch.allclose(out, reference, atol=1e-5, rtol=1e-5)
    assert reference.abs().amax() > 1e-3
