"""torch.compile sees adapted models as one graph: our hooks and layers cause no graph break."""

import pytest
import torch

import compacter

from .tiny import tiny


def _explain(model, batch):
    torch._dynamo.reset()
    try:
        return torch._dynamo.explain(model)(**batch)
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("arch,training", [("t5", True), ("llama", False)])
def test_no_graph_break_from_adapters(arch, training):
    model, batch = tiny(arch)
    base = _explain(model, batch)
    compacter.add_adapters(model, compacter.CompacterConfig("compacter", reduction_factor=4))
    model.train(training)
    with torch.set_grad_enabled(training):
        adapted = _explain(model, batch)
    assert adapted.graph_break_count == base.graph_break_count == 0, [str(r.reason) for r in adapted.break_reasons]
    assert adapted.graph_count == 1
