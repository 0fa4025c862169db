"""Tests of `isa4d.losses`: LPIPS from fixture weight files against torchvision/torchmetrics references,
GAN terms, KL, reductions and the combined `VAELoss`, each against a hand computation."""

from __future__ import annotations

import pytest
import torch
import torchvision
from einops import rearrange

from isa4d.losses import (
    LPIPS,
    VAELoss,
    adaptive_weight,
    bundled_lin_path,
    disc_factor,
    hinge_d_loss,
    hinge_g_loss,
    kl_loss,
    l1_loss,
    perceptual_loss,
)
from isa4d.losses.lpips import TAP_CHANNELS
from isa4d.models.vae import AuxImageDecoder, DiagonalGaussian, PatchGAN2D, PatchGAN3D, vae_tiny
from isa4d.utils.files import file_sha256

F64 = torch.float64
VGG_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))  # torchvision features -> relu1_2 ... relu5_3


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """A randomly initialised torchvision VGG16 (its `features.*`, the part LPIPS reads) and random
    non-negative LPIPS linear weights, saved in the original files' formats."""
    folder = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    features = torchvision.models.vgg16().features
    vgg = {f"features.{key}": value for key, value in features.state_dict().items()}
    torch.save(vgg, folder / "vgg16_fixture.pth")
    torch.save(vgg, folder / "vgg16-397923af.pth")  # the real file's name, not its content
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(TAP_CHANNELS)}
    torch.save(lin, folder / "vgg.pth")
    return folder / "vgg16_fixture.pth", folder / "vgg.pth", folder


@pytest.fixture(scope="module")
def lpips(weight_files) -> LPIPS:
    vgg_path, lin_path, _ = weight_files
    return LPIPS(vgg_path, lin_path, vgg_sha256=file_sha256(vgg_path)).double()


def images(n: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=F64) * 2 - 1


def reference_lpips(vgg_path, lin_path, x, y):
    """LPIPS written out with torchvision's VGG16 slices (lpips' own formulation)."""
    net = torchvision.models.vgg16().features.double()
    net.load_state_dict({k.removeprefix("features."): v for k, v in torch.load(vgg_path).items()})
    lin = torch.load(lin_path)
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=F64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=F64).view(1, 3, 1, 1)
    hx, hy, total = (x - shift) / scale, (y - shift) / scale, 0.0
    for layer, (start, stop) in enumerate(VGG_SLICES):
        hx, hy = net[start:stop](hx), net[start:stop](hy)
        nx = hx / (hx.square().sum(1, keepdim=True).sqrt() + 1e-10)
        ny = hy / (hy.square().sum(1, keepdim=True).sqrt() + 1e-10)
        w = lin[f"lin{layer}.model.1.weight"].double()
        total = total + ((nx - ny).square() * w.view(1, -1, 1, 1)).sum(1).mean(dim=(1, 2))
    return total


def test_lpips_matches_an_independent_computation(lpips, weight_files):
    vgg_path, lin_path, _ = weight_files
    x, y = images(seed=0), images(seed=1)
    # lpips divides by (|f| + 1e-10); LPIPS uses F.normalize (|f| clamped below by 1e-10, no NaN
    # gradient at f = 0): the two differ by ~1e-10 / |f| relatively
    torch.testing.assert_close(lpips(x, y), reference_lpips(vgg_path, lin_path, x, y), rtol=1e-8, atol=0)


def test_lpips_matches_torchmetrics_with_the_same_weights(lpips, weight_files):
    lpips_module = pytest.importorskip("torchmetrics.functional.image.lpips")
    vgg_path, lin_path, _ = weight_files
    # pnet_rand=True builds torchvision's VGG without downloading; the fixture weights go in by hand
    reference = lpips_module._LPIPS(pretrained=True, net="vgg", pnet_rand=True, model_path=str(lin_path))
    vgg = torch.load(vgg_path)
    for number, (start, stop) in enumerate(VGG_SLICES, start=1):
        slice_ = getattr(reference.net, f"slice{number}")
        slice_.load_state_dict(
            {k[len("features.") :]: v for k, v in vgg.items() if start <= int(k.split(".")[1]) < stop}
        )
    x, y = images(seed=2).float(), images(seed=3).float()
    expected = reference(x, y).flatten().double()
    torch.testing.assert_close(lpips(x.double(), y.double()), expected, rtol=1e-4, atol=1e-6)


def test_lpips_properties(lpips):
    x, y = images(2, seed=4), images(2, seed=5)
    assert torch.equal(lpips(x, x), torch.zeros(2, dtype=F64))
    torch.testing.assert_close(lpips(x, y), lpips(y, x))
    assert (lpips(x, y) > 0).all()
    x.requires_grad_(True)
    lpips(x, y).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not list(lpips.parameters()) and not lpips.state_dict()  # frozen, never checkpointed


def test_lpips_weight_files_are_checked(weight_files, tmp_path):
    vgg_path, lin_path, folder = weight_files
    with pytest.raises(FileNotFoundError) as error:
        LPIPS(tmp_path / "vgg16-397923af.pth", tmp_path / "vgg.pth")
    for needle in ("vgg16-397923af.pth", "vgg.pth", "vgg_path", "lin_path"):
        assert needle in str(error.value)
    with pytest.raises(FileNotFoundError, match="vgg_path"):
        LPIPS(None, lin_path)
    # a torch-hub file name carries a SHA-256 prefix, which the random fixture does not match
    with pytest.raises(ValueError, match="SHA-256 mismatch.*397923af"):
        LPIPS(folder / "vgg16-397923af.pth", lin_path)
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        LPIPS(vgg_path, lin_path, lin_sha256="deadbeef")
    negative = {f"lin{i}.model.1.weight": -torch.rand(1, c, 1, 1) for i, c in enumerate(TAP_CHANNELS)}
    torch.save(negative, tmp_path / "negative.pth")
    with pytest.raises(ValueError, match="non-negative"):
        LPIPS(vgg_path, tmp_path / "negative.pth")


def test_lpips_defaults_to_torchmetrics_linear_weights(weight_files):
    bundled = bundled_lin_path()
    if bundled is None:
        pytest.skip("torchmetrics' LPIPS weights are not installed")
    metric = LPIPS(weight_files[0])
    torch.testing.assert_close(metric.lin0, torch.load(bundled, map_location="cpu")["lin0.model.1.weight"])


# ---------------------------------------------------------------- GAN terms


def test_hinge_losses_on_known_logits():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, 0.5, 2], relu(1 + fake) = [0, 1, 2]
    torch.testing.assert_close(hinge_d_loss(real, fake), torch.tensor(0.5 * (2.5 / 3 + 3 / 3)))
    torch.testing.assert_close(hinge_g_loss(fake), torch.tensor(1.0 / 3))


def test_adaptive_weight_is_the_ratio_of_gradient_norms():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 3, dtype=F64, generator=generator, requires_grad=True)
    a, target, v = (torch.randn(3, dtype=F64, generator=generator) for _ in range(3))
    output = weight @ a  # a last layer with known gradients
    nll = (output - target[:1]).abs().sum()
    g = -(v[:1] * output).mean()
    # d nll / dW = sign(W a - t) a^T, d g / dW = -(v / 4) a^T
    nll_norm = torch.outer(torch.sign(output - target[:1]), a).norm()
    g_norm = torch.outer(-(v[:1] / 4).expand(4), a).norm()
    expected = nll_norm / (g_norm + 1e-4)
    result = adaptive_weight(nll, g, weight)
    torch.testing.assert_close(result, expected.detach())
    assert not result.requires_grad
    assert adaptive_weight(nll, g * 1e-12, weight, max_weight=50.0) == 50.0
    nll.backward()  # graphs are kept for the real backward


def test_disc_factor():
    assert disc_factor(99, 100) == 0.0 and disc_factor(100, 100) == 1.0 and disc_factor(5, 0, 0.5) == 0.5
    ramp = [disc_factor(step, 100, warmup=4) for step in range(99, 106)]
    assert ramp == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert disc_factor(101, 100, 0.5, warmup=4) == 0.25


# ---------------------------------------------------------------- reductions and KL


def test_l1_perceptual_and_kl_reductions():
    x, y = torch.zeros(2, 3, 5, 4, 4), torch.full((2, 3, 5, 4, 4), 0.5)
    y[1] = -1.0
    torch.testing.assert_close(l1_loss(x, y), torch.tensor((0.5 + 1.0) * 3 * 5 * 16 / 2))

    def fake_lpips(a, b):  # one value per frame: the frame's index within its clip + 1
        return torch.arange(a.shape[0], dtype=a.dtype) % 5 + 1

    # per clip: sum_t (t + 1) = 15 frames' worth, each counted on its 3 * 4 * 4 pixels
    torch.testing.assert_close(perceptual_loss(fake_lpips, x, y), torch.tensor(15.0 * 48))

    mean, logvar = torch.randn(2, 4, 3, 2, 2, dtype=F64), torch.randn(2, 4, 3, 2, 2, dtype=F64)
    posterior = DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, torch.exp(0.5 * logvar)), torch.distributions.Normal(0.0, 1.0)
    )
    torch.testing.assert_close(kl_loss(posterior), reference.sum(dim=(1, 2, 3, 4)).mean())
    zero = DiagonalGaussian(torch.zeros(2, 8, 3, 2, 2))
    assert kl_loss(zero) == 0.0


# ---------------------------------------------------------------- VAELoss


@pytest.fixture
def setup():
    torch.manual_seed(0)
    vae = vae_tiny()
    loss = VAELoss(
        disc_2d=PatchGAN2D(base_channels=8, num_layers=2, norm_groups=4),
        disc_3d=PatchGAN3D(base_channels=8, num_layers=2, norm_groups=4),
        aux_decoder=AuxImageDecoder(base_channels=8, norm_groups=4),
        disc_start=10,
    )
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    posterior = vae.encode(x)
    z = posterior.sample()
    return vae, loss, x, posterior, z, vae.decode(z)


def test_vae_loss_before_disc_start(setup):
    vae, loss, x, posterior, z, x_hat = setup
    total, logs = loss(x, x_hat, posterior, step=9, z=z, last_layer=vae.last_layer)
    predictions, targets = loss.aux_decoder(z, x)
    expected_reg = l1_loss(targets, predictions)
    expected = l1_loss(x, x_hat) + 1e-6 * kl_loss(posterior) + expected_reg
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(logs["reg"], expected_reg.detach())
    assert "g_2d" not in logs and logs["disc_factor"] == 0.0
    assert set(logs) == {"nll", "l1", "kl", "reg", "reg_l1", "disc_factor", "total"}


def test_vae_loss_with_gan_terms(setup):
    vae, loss, x, posterior, z, x_hat = setup
    total, logs = loss(x, x_hat, posterior, step=10, z=z, last_layer=vae.last_layer)
    nll = l1_loss(x, x_hat)
    expected = nll + 1e-6 * kl_loss(posterior) + logs["reg"]
    for name, disc in (("2d", loss.disc_2d), ("3d", loss.disc_3d)):
        g = hinge_g_loss(disc(x_hat))
        weight = adaptive_weight(nll, g, vae.last_layer)
        torch.testing.assert_close(logs[f"d_weight_{name}"], weight)
        expected = expected + 0.5 * weight * g
    torch.testing.assert_close(total, expected)
    total.backward()
    assert vae.last_layer.grad is not None and loss.aux_decoder.decoder.conv_out.weight.grad is not None

    loss.eval()
    with torch.no_grad():
        _, logs = loss(x, x_hat, posterior, step=10, z=z)
    assert logs["d_weight_2d"] == 0.0 and logs["d_weight_3d"] == 0.0
    with pytest.raises(ValueError, match="latent `z`"):
        loss(x, x_hat, posterior, step=0)


def test_vae_loss_with_perceptual_term(weight_files, setup):
    vae, _, x, posterior, z, x_hat = setup
    lpips = LPIPS(*weight_files[:2])
    loss = VAELoss(perceptual=lpips, aux_decoder=AuxImageDecoder(base_channels=8, norm_groups=4))
    total, logs = loss(x, x_hat, posterior, step=0, z=z)
    predictions, targets = loss.aux_decoder(z, x)
    frame = perceptual_loss(lpips, x, x_hat)
    reg = l1_loss(targets, predictions) + perceptual_loss(lpips, targets, predictions)
    torch.testing.assert_close(logs["lpips"], frame.detach())
    torch.testing.assert_close(total, l1_loss(x, x_hat) + frame + 1e-6 * kl_loss(posterior) + reg)


def test_discriminator_loss(setup):
    _, loss, x, _, _, x_hat = setup
    total, logs = loss.discriminator_loss(x, x_hat, step=10)
    expected = sum(hinge_d_loss(d(x), d(x_hat)) for d in (loss.disc_2d, loss.disc_3d))
    torch.testing.assert_close(total, expected)
    total.backward()
    assert all(p.grad is not None for p in loss.discriminator_parameters())
    assert all(p.grad is None for p in loss.aux_decoder.parameters())
    assert loss.discriminator_loss(x, x_hat, step=0)[0] == 0.0
    assert set(logs) == {
        "disc_total",
        *(f"{k}_{n}" for k in ("d", "logits_real", "logits_fake") for n in ("2d", "3d")),
    }


def test_perceptual_loss_reduction_uses_video_layout(lpips):
    x, y = (rearrange(images(4, seed=s), "(b t) c h w -> b c t h w", b=2) for s in (6, 7))
    per_frame = lpips(rearrange(x, "b c t h w -> (b t) c h w"), rearrange(y, "b c t h w -> (b t) c h w"))
    torch.testing.assert_close(perceptual_loss(lpips, x, y), per_frame.sum() * 3 * 32 * 32 / 2)
