"""Every registered model: probabilities out, gradients everywhere, scriptable, and rows
independent of their batch (what batched serving relies on)."""

import pytest
import torch

from training import REGISTRY, build
from training.train import loss_fn

NAMES = list(REGISTRY)


def fitted(name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A freshly initialised model with its standardisation fitted, and test rows."""
    torch.manual_seed(0)
    ds = REGISTRY[name].dataset()
    model = build(name)
    model.standardize.fit(ds.train.x)
    return model, ds.test.x[:37], ds.test.y[:37]


@pytest.mark.parametrize("name", NAMES)
def test_forward_returns_probabilities(name):
    model, x, _ = fitted(name)
    probs = model.eval()(x)
    assert probs.shape == (37, REGISTRY[name].config().num_classes)
    assert torch.all(probs >= 0) and torch.all(probs <= 1)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(37))
    # forward is logits -> probabilities; training reads the logits
    logits = model.logits(x)
    assert not torch.allclose(logits, probs)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    model, x, y = fitted(name)
    loss_fn(model.train().logits(x), y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name}.{pname} got an all-zero gradient"


@pytest.mark.parametrize("name", NAMES)
def test_standardize_centres_the_training_split(name):
    model, _, _ = fitted(name)
    train_x = REGISTRY[name].dataset().train.x
    z = model.standardize(train_x)
    stats = model.standardize.mean.shape
    shared = [0] + [i + 1 for i, size in enumerate(stats) if size == 1]
    torch.testing.assert_close(
        z.mean(dim=shared), torch.zeros_like(z.mean(dim=shared)), atol=1e-4, rtol=0
    )
    assert "standardize.mean" in model.state_dict()  # saved, and exported, with the weights


@pytest.mark.parametrize("name", NAMES)
def test_rows_do_not_depend_on_their_batch(name):
    model, x, _ = fitted(name)
    model.eval()
    with torch.inference_mode():
        together = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_torchscript_compiles_and_matches_eager(name):
    model, x, _ = fitted(name)
    model.eval()
    scripted = torch.jit.script(model)
    with torch.inference_mode():
        torch.testing.assert_close(scripted(x), model(x), atol=1e-6, rtol=1e-5)


def test_mlp_rejects_a_non_binary_config():
    with pytest.raises(ValueError, match="binary"):
        build("mlp", {"num_classes": 3})


def test_unknown_model_names_the_registered_ones():
    with pytest.raises(KeyError, match="mlp, resnet, transformer"):
        build("vgg")
