"""Tests of `isa4d.models.vae`: causality, shapes, chunked == one-shot, aux mapping, inflation from a
synthetic diffusers SD3 state dict (checked against a functional 2-D reference), discriminators."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from isa4d.models.vae import (
    VAE_MODELS,
    AuxImageDecoder,
    CausalConv3d,
    DiagonalGaussian,
    PatchGAN2D,
    PatchGAN3D,
    VideoVAE,
    aux_frame_indices,
    build_vae,
    inflate_sd3_state_dict,
    load_sd3_weights,
    vae_tiny,
)

F64 = torch.float64
TINY_WIDTHS = (24, 48, 48, 96)  # vae_tiny: base 24, channel_mults (1, 2, 2, 4)
TINY_GROUPS = 8
# fast float64 checks of the networks (without the block shortcut, whose last convs start at zero)
MICRO = {"base_channels": 8, "channel_mults": (1, 1, 2, 2), "norm_groups": 4, "shortcut": False}


def video(
    batch: int, frames: int, size: int, dtype: torch.dtype = torch.float32, seed: int = 0
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, size, size, generator=generator, dtype=dtype) * 2 - 1


@pytest.fixture(scope="module")
def tiny() -> VideoVAE:
    torch.manual_seed(0)
    return vae_tiny().eval()


@pytest.fixture(scope="module")
def micro64() -> VideoVAE:
    torch.manual_seed(0)
    return vae_tiny(**MICRO).double().eval()


# ---------------------------------------------------------------- causal conv


def test_causal_conv_pads_the_past_with_the_first_frame():
    torch.manual_seed(0)
    conv = CausalConv3d(2, 3, (3, 3, 3)).double()
    x = torch.randn(1, 2, 5, 6, 6, dtype=F64)
    padded = torch.cat([x[:, :, :1], x[:, :, :1], x], dim=2)
    torch.testing.assert_close(conv(x), F.conv3d(padded, conv.weight, conv.bias, padding=(0, 1, 1)))


@pytest.mark.parametrize("dilation", [1, 2])
def test_causal_conv_is_causal_and_streams_exactly(dilation):
    torch.manual_seed(0)
    conv = CausalConv3d(2, 3, (3, 3, 3), dilation_t=dilation).double()
    x = torch.randn(2, 2, 11, 5, 5, dtype=F64)
    full = conv(x)
    assert full.shape == (2, 3, 11, 5, 5)
    for k in range(11):
        changed = x.clone()
        changed[:, :, k] += 1.0
        out = conv(changed)
        torch.testing.assert_close(out[:, :, :k], full[:, :, :k], rtol=0, atol=0)
        assert not torch.allclose(out[:, :, k], full[:, :, k])
    for sizes in ([1] * 11, [3, 1, 2, 5], [6, 5]):  # chunks shorter than the cache included
        cache = {}
        chunks = [conv(part, cache) for part in x.split(sizes, dim=2)]
        torch.testing.assert_close(torch.cat(chunks, dim=2), full, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- whole model


@pytest.mark.parametrize("frames", [1, 17, 33])
def test_shapes(tiny, frames):
    x = video(1, frames, 64)
    with torch.no_grad():
        posterior = tiny.encode(x)
        x_hat = tiny.decode(posterior.sample())
    latent_frames = 1 + (frames - 1) // 4
    assert tiny.latent_frames(frames) == latent_frames
    assert posterior.mean.shape == (1, 16, latent_frames, 8, 8)
    assert x_hat.shape == x.shape


def test_invalid_lengths_are_rejected(tiny):
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        tiny.encode(video(1, 16, 16))
    with pytest.raises(ValueError, match="multiple of 4"):
        tiny.encode(video(1, 17, 16), chunk_frames=6)
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny.encode(video(1, 5, 12))


def test_encoder_is_causal(micro64):
    x = video(1, 17, 16, F64)
    with torch.no_grad():
        base = micro64.encoder(x)
        # an image is a valid input, and encodes to the video's first latent frame
        torch.testing.assert_close(micro64.encoder(x[:, :, :1]), base[:, :, :1], rtol=0, atol=1e-12)
        for k in (0, 3, 4, 5, 12, 16):
            changed = x.clone()
            changed[:, :, k] = -changed[:, :, k]
            out = micro64.encoder(changed)
            first_affected = math.ceil(k / 4)  # frames {0}, {1..4}, {5..8}, ...
            torch.testing.assert_close(
                out[:, :, :first_affected], base[:, :, :first_affected], rtol=0, atol=0
            )
            assert not torch.allclose(out[:, :, first_affected], base[:, :, first_affected])


def test_decoder_is_causal(micro64):
    z = torch.randn(1, 16, 5, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = micro64.decoder(z)
        for j in range(5):
            changed = z.clone()
            changed[:, :, j] += 1.0
            out = micro64.decoder(changed)
            first_affected = 0 if j == 0 else 4 * j - 3
            torch.testing.assert_close(
                out[:, :, :first_affected], base[:, :, :first_affected], rtol=0, atol=0
            )
            assert not torch.allclose(out[:, :, first_affected], base[:, :, first_affected])


@pytest.mark.parametrize(("dtype", "tol", "config"), [(torch.float32, 1e-5, {}), (F64, 1e-10, MICRO)])
def test_chunked_equals_one_shot(dtype, tol, config):
    torch.manual_seed(0)
    vae = vae_tiny(**config).to(dtype).eval()
    x = video(2, 25, 16, dtype)
    z = torch.randn(2, 16, 7, 2, 2, dtype=dtype, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        moments = vae.encode(x).mean
        frames = vae.decode(z)
        for chunk in (4, 8, 12, 24):
            torch.testing.assert_close(vae.encode(x, chunk_frames=chunk).mean, moments, rtol=0, atol=tol)
        for chunk in (1, 2, 4, 6):
            torch.testing.assert_close(vae.decode(z, chunk_latents=chunk), frames, rtol=0, atol=tol)


def test_streaming_by_hand_from_a_lone_first_frame(micro64):
    x = video(1, 13, 16, F64)
    z = torch.randn(1, 16, 5, 2, 2, dtype=F64)
    with torch.no_grad():
        cache = {}
        moments = [micro64.encoder(x[:, :, :1], cache)]
        moments += [micro64.encoder(chunk, cache) for chunk in x[:, :, 1:].split(4, dim=2)]
        torch.testing.assert_close(torch.cat(moments, 2), micro64.encoder(x), rtol=0, atol=1e-10)
        frames_cache = {}
        frames = [micro64.decoder(z[:, :, :1], frames_cache)]
        frames += [micro64.decoder(chunk, frames_cache) for chunk in z[:, :, 1:].split(2, dim=2)]
        torch.testing.assert_close(torch.cat(frames, 2), micro64.decoder(z), rtol=0, atol=1e-10)
        with pytest.raises(ValueError, match="2k in later ones, got 3"):
            micro64.encoder(x[:, :, 1:4], cache)  # a later chunk must hold whole 4-frame windows


def test_gradient_reaches_every_parameter():
    """Without the shortcut every parameter gets a gradient at once; with it (last convs zero) the last
    convs do, and after one optimiser step every parameter does (as with adaLN-Zero)."""
    x = video(1, 5, 16)

    def missing(vae: torch.nn.Module) -> list[str]:
        vae.zero_grad()
        x_hat, _ = vae(x)
        (x_hat - x).abs().mean().backward()
        return [n for n, p in vae.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]

    torch.manual_seed(0)
    assert not missing(vae_tiny(shortcut=False))
    vae = vae_tiny()
    first = missing(vae)
    assert "decoder.conv_out.weight" not in first and "encoder.conv_out.weight" not in first
    torch.optim.Adam(vae.parameters(), lr=1e-3).step()
    assert not missing(vae)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    vae = vae_tiny(**MICRO).double()
    x = video(1, 5, 16, F64)
    grads = []
    for enabled in (False, True):
        vae.zero_grad()
        vae.set_gradient_checkpointing(enabled)
        x_hat, _ = vae(x, sample_posterior=False)
        (x_hat - x).square().mean().backward()
        grads.append([p.grad.clone() for p in vae.parameters()])
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(checkpointed, plain, rtol=0, atol=1e-12)


def test_from_config_round_trip():
    torch.manual_seed(0)
    vae = vae_tiny(**MICRO).double().eval()
    vae.set_latent_stats(0.0609, torch.linspace(1.0, 2.0, 16))
    config = json.loads(json.dumps(vae.config))  # a checkpoint stores plain JSON/YAML values
    rebuilt = VideoVAE.from_config(config).double().eval()
    rebuilt.load_state_dict(vae.state_dict())
    x = video(1, 5, 16, F64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, sample_posterior=False)[0], vae(x, sample_posterior=False)[0])
    z = torch.randn(1, 16, 2, 2, 2, dtype=F64)
    expected = (z - 0.0609) * torch.linspace(1.0, 2.0, 16, dtype=F64).view(1, 16, 1, 1, 1)
    torch.testing.assert_close(rebuilt.normalize(z), expected)
    torch.testing.assert_close(rebuilt.denormalize(rebuilt.normalize(z)), z)


def test_registry():
    assert set(VAE_MODELS) == {"tiny", "sd3"}
    vae = build_vae("tiny", downsample="conv")
    assert vae.config["downsample"] == "conv" and vae.config["base_channels"] == 24
    with torch.device("meta"):
        sd3 = VAE_MODELS["sd3"]()
    assert sd3.config["channel_mults"] == [1, 2, 4, 4] and sd3.config["base_channels"] == 128
    assert sd3.config["z_channels"] == 16 and sd3.config["num_res_blocks"] == 2
    assert sd3.last_layer is sd3.decoder.conv_out.weight
    with pytest.raises(KeyError):
        build_vae("huge")


def test_posterior_mode_sample_and_kl():
    mean, logvar = torch.randn(2, 3, 2, 2, 2, dtype=F64), torch.randn(2, 3, 2, 2, 2, dtype=F64)
    posterior = DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    torch.testing.assert_close(posterior.mode(), mean)
    generator = torch.Generator().manual_seed(3)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    torch.testing.assert_close(posterior.sample(generator), mean + torch.exp(0.5 * logvar) * eps)
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, torch.exp(0.5 * logvar)), torch.distributions.Normal(0.0, 1.0)
    )
    torch.testing.assert_close(posterior.kl(), reference.flatten(1).sum(1))


# ---------------------------------------------------------------- auxiliary image decoder


def test_aux_frame_indices():
    assert aux_frame_indices(1).tolist() == [0, 0, 0, 0]
    assert aux_frame_indices(3).tolist() == [0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    indices = aux_frame_indices(5)
    for i in range(1, 5):
        for j in range(4):
            assert indices[4 * i + j] == 4 * (i - 1) + 1 + j


def test_aux_decoder_decodes_each_sub_latent_on_its_own():
    torch.manual_seed(0)
    aux = AuxImageDecoder(base_channels=8, norm_groups=4).double().eval()
    z = torch.randn(1, 16, 3, 2, 2, dtype=F64)
    x = video(1, 9, 16, F64)
    with torch.no_grad():
        predictions, targets = aux(z, x)
        assert predictions.shape == targets.shape == (1, 3, 12, 16, 16)
        torch.testing.assert_close(targets, x[:, :, [0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]])
        # sub-latent j of latent frame i = channels 4j..4j+3 of frame i -> prediction 4i + j only
        for i, j in [(0, 2), (1, 0), (2, 3)]:
            changed = z.clone()
            changed[:, 4 * j : 4 * j + 4, i] += 1.0
            out = aux.decode_sublatents(changed)
            differs = [(out[:, :, n] - predictions[:, :, n]).abs().max() > 0 for n in range(12)]
            assert [n for n, d in enumerate(differs) if d] == [4 * i + j]
    with pytest.raises(ValueError, match="latent frames"):
        aux(z, x[:, :, :5])


# ---------------------------------------------------------------- discriminators


def test_discriminator_shapes():
    x = video(2, 17, 64)
    assert PatchGAN2D(base_channels=16, norm_groups=8)(x).shape == (2, 1, 17, 6, 6)
    disc_3d = PatchGAN3D(base_channels=16, norm_groups=8)
    assert disc_3d(x).shape == (2, 1, 3, 6, 6)
    assert disc_3d(x[:, :, :1]).shape == (2, 1, 1, 6, 6)


# ---------------------------------------------------------------- SD3 inflation


def diffusers_vae_state_dict(widths, layers_per_block: int, latent_channels: int = 16, seed: int = 0):
    """Random weights with diffusers `AutoencoderKL` names and shapes (SD3: no quant convs)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=generator, dtype=F64) * scale

    def conv(name, cout, cin, k):
        state[f"{name}.weight"] = randn(cout, cin, k, k, scale=1.0 / math.sqrt(cin * k * k))
        state[f"{name}.bias"] = randn(cout, scale=0.1)

    def norm(name, c):
        state[f"{name}.weight"], state[f"{name}.bias"] = 1 + randn(c, scale=0.1), randn(c, scale=0.1)

    def linear(name, c):
        state[f"{name}.weight"], state[f"{name}.bias"] = randn(c, c, scale=c**-0.5), randn(c, scale=0.1)

    def resnet(prefix, cin, cout):
        norm(f"{prefix}.norm1", cin)
        conv(f"{prefix}.conv1", cout, cin, 3)
        norm(f"{prefix}.norm2", cout)
        conv(f"{prefix}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{prefix}.conv_shortcut", cout, cin, 1)

    def mid(prefix, c):
        resnet(f"{prefix}.resnets.0", c, c)
        norm(f"{prefix}.attentions.0.group_norm", c)
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            linear(f"{prefix}.attentions.0.{proj}", c)
        resnet(f"{prefix}.resnets.1", c, c)

    n = len(widths)
    conv("encoder.conv_in", widths[0], 3, 3)
    for i, width in enumerate(widths):
        for j in range(layers_per_block):
            resnet(f"encoder.down_blocks.{i}.resnets.{j}", widths[max(i - 1, 0)] if j == 0 else width, width)
        if i < n - 1:
            conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", width, width, 3)
    mid("encoder.mid_block", widths[-1])
    norm("encoder.conv_norm_out", widths[-1])
    conv("encoder.conv_out", 2 * latent_channels, widths[-1], 3)
    reversed_widths = widths[::-1]
    conv("decoder.conv_in", reversed_widths[0], latent_channels, 3)
    mid("decoder.mid_block", reversed_widths[0])
    for j, width in enumerate(reversed_widths):
        for k in range(layers_per_block + 1):
            cin = reversed_widths[max(j - 1, 0)] if k == 0 else width
            resnet(f"decoder.up_blocks.{j}.resnets.{k}", cin, width)
        if j < n - 1:
            conv(f"decoder.up_blocks.{j}.upsamplers.0.conv", width, width, 3)
    norm("decoder.conv_norm_out", widths[0])
    conv("decoder.conv_out", 3, widths[0], 3)
    return state


def ref_conv(sd, name, x, **kwargs):
    return F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], **kwargs)


def ref_norm(sd, name, x):
    return F.group_norm(x, TINY_GROUPS, sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)


def ref_resnet(sd, p, x):
    h = ref_conv(sd, f"{p}.conv1", F.silu(ref_norm(sd, f"{p}.norm1", x)), padding=1)
    h = ref_conv(sd, f"{p}.conv2", F.silu(ref_norm(sd, f"{p}.norm2", h)), padding=1)
    shortcut = ref_conv(sd, f"{p}.conv_shortcut", x) if f"{p}.conv_shortcut.weight" in sd else x
    return shortcut + h


def ref_mid(sd, p, x):
    x = ref_resnet(sd, f"{p}.resnets.0", x)
    b, c, h, w = x.shape
    tokens = ref_norm(sd, f"{p}.attentions.0.group_norm", x).flatten(2).transpose(1, 2)
    q, k, v = (
        F.linear(tokens, sd[f"{p}.attentions.0.{n}.weight"], sd[f"{p}.attentions.0.{n}.bias"])
        for n in ("to_q", "to_k", "to_v")
    )
    attention = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=-1) @ v
    out = F.linear(attention, sd[f"{p}.attentions.0.to_out.0.weight"], sd[f"{p}.attentions.0.to_out.0.bias"])
    return ref_resnet(sd, f"{p}.resnets.1", x + out.transpose(1, 2).reshape(b, c, h, w))


def ref_encoder(sd, x, n, layers):
    """SD3's 2-D encoder (diffusers semantics, strided-conv down-sampling) from the raw state dict."""
    h = ref_conv(sd, "encoder.conv_in", x, padding=1)
    for i in range(n):
        for j in range(layers):
            h = ref_resnet(sd, f"encoder.down_blocks.{i}.resnets.{j}", h)
        if i < n - 1:
            h = ref_conv(sd, f"encoder.down_blocks.{i}.downsamplers.0.conv", F.pad(h, (0, 1, 0, 1)), stride=2)
    h = ref_mid(sd, "encoder.mid_block", h)
    return ref_conv(sd, "encoder.conv_out", F.silu(ref_norm(sd, "encoder.conv_norm_out", h)), padding=1)


def ref_decoder(sd, z, n, layers):
    h = ref_mid(sd, "decoder.mid_block", ref_conv(sd, "decoder.conv_in", z, padding=1))
    for j in range(n):
        for k in range(layers + 1):
            h = ref_resnet(sd, f"decoder.up_blocks.{j}.resnets.{k}", h)
        if j < n - 1:
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = ref_conv(sd, f"decoder.up_blocks.{j}.upsamplers.0.conv", h, padding=1)
    return ref_conv(sd, "decoder.conv_out", F.silu(ref_norm(sd, "decoder.conv_norm_out", h)), padding=1)


def test_block_shortcut_default_and_pca_codecs():
    """A fresh tiny VAE is the shortcut alone (both last convs zero): sub-latent j of latent i >= 1 = the 8x8
    means of frame 4(i-1)+1+j, of latent 0 = frame 0, decoded by nearest up-sampling. `init_from_blocks`
    makes it the rank-16 PCA codec of the blocks (numpy's SVD projection), latents = component scores."""
    vae = vae_tiny().double().eval()
    assert not vae.decoder.conv_out.weight.any() and not vae.encoder.conv_out.weight.any()
    x = video(2, 9, 32, F64)
    with torch.no_grad():
        posterior = vae.encode(x)
        z, x_hat = posterior.mode(), vae.decode(posterior.mode())
    torch.testing.assert_close(posterior.std, torch.full_like(z, math.exp(-3.0)))  # log-variance bias -6
    means = x.reshape(2, 3, 9, 4, 8, 4, 8).mean(dim=(4, 6))  # (B, 3, T, 4, 4)
    for i, j in [(0, 0), (0, 3), (1, 0), (1, 2), (2, 3)]:
        frame = 0 if i == 0 else 4 * (i - 1) + 1 + j
        torch.testing.assert_close(z[:, 4 * j : 4 * j + 3, i], means[:, :, frame])
        assert not z[:, 4 * j + 3, i].any()
    torch.testing.assert_close(x_hat, means.repeat_interleave(8, dim=3).repeat_interleave(8, dim=4))
    moved = x.clone()
    moved[:, :, 5] += 0.5  # frame 5 belongs to latent frame 2 only, which decodes frames 5-8 only
    with torch.no_grad():
        z_moved = vae.encode(moved).mode()
        changed = (z_moved - z).abs().amax(dim=(0, 1, 3, 4)) > 0
        frames = (vae.decode(z_moved) - x_hat).abs().amax(dim=(0, 1, 3, 4)) > 0
    assert changed.tolist() == [False, False, True]
    assert frames.tolist() == [False] * 5 + [True] + [False] * 3  # its sub-latent 0 decodes frame 5

    # PCA: correlated blocks (a random low-rank-ish mixing); reconstruction = numpy's rank-16 projection
    generator = torch.Generator().manual_seed(0)
    mixing = (
        torch.randn(40, 768, generator=generator, dtype=F64) * torch.logspace(0, -2, 40, dtype=F64)[:, None]
    )
    data = torch.randn(500, 40, generator=generator, dtype=F64) @ mixing + 0.3
    shortcut = vae.shortcut
    kept = float(shortcut.init_from_blocks(data))
    array = data.numpy()
    centred = array - array.mean(0)
    _, singular, vh = np.linalg.svd(centred, full_matrices=False)
    projection = array.mean(0) + centred @ vh[:16].T @ vh[:16]
    with torch.no_grad():
        latents = shortcut.encode_blocks(data)
        np.testing.assert_allclose(shortcut.decode_blocks(latents).numpy(), projection, atol=1e-8)
    np.testing.assert_allclose(latents.mean(0).numpy(), 0, atol=1e-8)
    np.testing.assert_allclose(
        latents.std(0).numpy(), singular[:16] / np.sqrt(499), rtol=1e-6
    )  # not whitened
    assert kept == pytest.approx(float((singular[:16] ** 2).sum() / (singular**2).sum()))
    # the same through the VAE: videos -> blocks -> PCA -> the video's projection
    clip = video(1, 9, 32, F64, seed=3)  # 3 latent frames x 16 latent pixels = 48 blocks
    shortcut.init_from_blocks(shortcut.blocks(clip).flatten(0, -2))
    with torch.no_grad():
        blocks = shortcut.blocks(clip).flatten(0, -2)
        expected = shortcut.decode_blocks(shortcut.encode_blocks(blocks))
        got = shortcut.blocks(vae.decode(vae.encode(clip).mode())).flatten(0, -2)
    torch.testing.assert_close(got[16:], expected[16:])  # latents 1, 2; frame 0's block is averaged
    with pytest.raises(ValueError, match="at least 16 blocks"):
        shortcut.init_from_blocks(data[:8])
    # the networks' own outputs add to it, chunked or not
    torch.manual_seed(0)
    fresh = vae_tiny().double().eval()
    with torch.no_grad():
        for conv in (fresh.encoder.conv_out, fresh.decoder.conv_out):
            conv.weight.normal_(0.0, 0.02)
        torch.testing.assert_close(fresh.encode(x, chunk_frames=4).mean, fresh.encode(x).mean)
        z = fresh.encode(x).mode()
        torch.testing.assert_close(fresh.decode(z, chunk_latents=1), fresh.decode(z))
    with pytest.raises(ValueError, match="sub-latents"):
        vae_tiny(z_channels=8)


def test_sd3_inflation_matches_the_2d_vae_on_images():
    sd = diffusers_vae_state_dict(TINY_WIDTHS, layers_per_block=1)
    vae = vae_tiny(downsample="conv", shortcut=False).double().eval()
    report = inflate_sd3_state_dict(sd, vae)
    assert not report.missing and not report.unexpected and not report.mismatched
    assert len(report.loaded) == len(sd)
    kernel = vae.encoder.conv_in.weight
    torch.testing.assert_close(kernel[:, :, -1], sd["encoder.conv_in.weight"])
    assert not kernel[:, :, :-1].any()

    image = video(2, 1, 32, F64)
    with torch.no_grad():
        # single layers: a 3-D conv on T = 1 is the 2-D conv, and so is every frame of a static video
        expected = ref_conv(sd, "encoder.conv_in", image[:, :, 0], padding=1)
        torch.testing.assert_close(vae.encoder.conv_in(image)[:, :, 0], expected)
        static = vae.encoder.conv_in(image.expand(-1, -1, 5, -1, -1))
        torch.testing.assert_close(static, expected[:, :, None].expand_as(static))
        features = torch.randn(2, 96, 1, 8, 8, dtype=F64)
        conv = vae.decoder.up_blocks[1].resnets[0].conv1
        expected = ref_conv(sd, "decoder.up_blocks.1.resnets.0.conv1", features[:, :, 0], padding=1)
        torch.testing.assert_close(conv(features)[:, :, 0], expected)
        # whole networks
        moments = vae.encoder(image)[:, :, 0]
        torch.testing.assert_close(moments, ref_encoder(sd, image[:, :, 0], 4, 1), rtol=0, atol=1e-10)
        z = torch.randn(2, 16, 1, 4, 4, dtype=F64)
        torch.testing.assert_close(
            vae.decoder(z)[:, :, 0], ref_decoder(sd, z[:, :, 0], 4, 1), rtol=0, atol=1e-10
        )


def test_inflation_report_and_weights_file(tmp_path):
    sd = diffusers_vae_state_dict(TINY_WIDTHS, layers_per_block=1)
    sd["encoder.conv_out.bias"] = torch.zeros(7, dtype=F64)
    del sd["decoder.conv_in.bias"]
    vae = vae_tiny(shortcut=False).double()  # average pooling: SD3's down-sampling convs have no place
    report = inflate_sd3_state_dict(sd, vae)
    assert sorted(report.unexpected) == sorted(k for k in sd if ".downsamplers.0." in k)
    assert report.mismatched == ["encoder.conv_out.bias: (7,) -> (32,)"]
    assert report.missing == ["encoder.conv_out.bias", "decoder.conv_in.bias"]
    assert "missing 2" in str(report)

    path = tmp_path / "vae.pt"
    torch.save(diffusers_vae_state_dict(TINY_WIDTHS, layers_per_block=1, seed=5), path)
    with pytest.raises(ValueError, match="shortcut"):
        load_sd3_weights(path, vae_tiny(downsample="conv"))
    fresh = vae_tiny(downsample="conv", shortcut=False).double()
    assert not load_sd3_weights(path, fresh).missing
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        load_sd3_weights(path, fresh, sha256="00000000")
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        load_sd3_weights(tmp_path, fresh)
    # The real file format: a diffusers folder holding diffusion_pytorch_model.safetensors.
    state = diffusers_vae_state_dict(TINY_WIDTHS, layers_per_block=1, seed=5)
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(tmp_path / "diffusion_pytorch_model.safetensors")
    )
    from_safetensors = vae_tiny(downsample="conv", shortcut=False).double()
    assert not load_sd3_weights(tmp_path, from_safetensors).missing
    for name, tensor in from_safetensors.state_dict().items():
        torch.testing.assert_close(tensor, fresh.state_dict()[name], rtol=0, atol=0)
