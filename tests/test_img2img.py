"""The shared DDIM img2img loop, through its VD and SD adapters, on tiny random-weight models (CPU)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from brainrecon.models.registry import build_tiny, load_role
from brainrecon.models.diffusion import (
    Pipe,
    Sampler,
    img2img,
    make_generators,
    random_latents,
    sd_img2img,
    to_pil,
    vae_decode,
    vae_encode,
    vd_img2img,
)

torch.set_num_threads(1)


def S(steps=50, strength=0.75, guidance_scale=7.5, eta=0.0, posterior="sample", init_noise="consistent"):
    """A Sampler for these tests (the methods pass theirs from the config)."""
    return Sampler(steps=steps, strength=strength, guidance_scale=guidance_scale, eta=eta, posterior=posterior,
                   init_noise=init_noise)


def pipe(parts, unet=None):
    return Pipe(unet if unet is not None else parts.unet, parts.vae, parts.scheduler)


@pytest.fixture(scope="module")
def vd(tmp_path_factory):
    return load_role("vd", path=build_tiny("vd", tmp_path_factory.mktemp("m") / "vd", seed=0))


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return load_role("sd", path=build_tiny("sd", tmp_path_factory.mktemp("m") / "sd", seed=0))


@pytest.fixture(scope="module")
def vd_inputs(vd):
    from brainrecon.models.vd import encode_vd_image, encode_vd_text

    g = torch.Generator().manual_seed(11)
    init = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    text = encode_vd_text(["a red car", "a bowl of fruit"], vd.text_encoder, vd.tokenizer)
    image = encode_vd_image(torch.rand(2, 3, 40, 40, generator=g), vd.image_encoder, vd.image_feature_extractor)
    return init, text, image


class CallRecorder:
    """Forward hook counting UNet calls and recording the batch / context shapes."""

    def __init__(self, module):
        self.calls = []
        self.handle = module.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        ctx = kwargs.get("encoder_hidden_states")
        self.calls.append((tuple(args[0].shape), None if ctx is None else tuple(ctx.shape), int(args[1])))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


class StubUNet(torch.nn.Module):
    """A UNet stand-in: eps = fn(sample, encoder_hidden_states)."""

    def __init__(self, fn):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.fn = fn
        self.inputs = []

    def forward(self, sample, t, encoder_hidden_states=None, **kwargs):
        self.inputs.append(sample.shape)
        return SimpleNamespace(sample=self.fn(sample, encoder_hidden_states))


def _grid(n):
    """CompVis DDIM timesteps for n of 1000 training steps (offset 1), descending — independent of diffusers."""
    return [t + 1 for t in range(0, 1000, 1000 // n)][::-1]


# ----------------------------------------------------------------------------- step counts
def test_vd_strength_075_of_50_runs_37_unet_calls(vd, vd_inputs):
    init, text, image = vd_inputs
    with CallRecorder(vd.image_unet) as rec:
        res = vd_img2img(vd, init, text, image, mix_ratio=0.4, generator=[0, 1], sampler=S(50, 0.75, 7.5))
    assert len(rec.calls) == 37 == res.num_steps
    # cond and uncond in one call: batch 2B, dual context = 77 text + 17 image tokens
    assert all(c[0] == (4, 4, 8, 8) and c[1] == (4, 94, 32) for c in rec.calls)
    assert [c[2] for c in rec.calls] == res.timesteps == _grid(50)[-37:]
    assert res.timesteps[0] == 721
    assert res.images.shape == (2, 3, 32, 32) and res.images.dtype == torch.float32
    assert float(res.images.min()) >= 0.0 and float(res.images.max()) <= 1.0
    assert res.images.std() > 0


def test_sd_strength_08_of_50_runs_40_unet_calls(sd):
    from brainrecon.models.sd import encode_sd_text

    init = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    text = encode_sd_text(["a cat"], sd.text_encoder, sd.tokenizer)
    with CallRecorder(sd.unet) as rec:
        res = sd_img2img(sd, init, text, generator=[7], sampler=S(50, 0.8, 5.0))
    assert len(rec.calls) == 40 == res.num_steps
    assert [c[2] for c in rec.calls] == _grid(50)[-40:] and res.timesteps[0] == 781
    assert rec.calls[0][1] == (2, 77, 32)
    assert res.images.shape == (1, 3, 32, 32)
    again = sd_img2img(sd, init, text, generator=[7], sampler=S(50, 0.8, 5.0))
    assert torch.equal(res.images, again.images)
    assert len(to_pil(res.images)) == 1 and to_pil(res.images)[0].size == (32, 32)


@pytest.mark.parametrize("steps,strength,expected", [(10, 0.5, 5), (20, 0.29, 5), (50, 1.0, 50), (50, 0.0, 0)])
def test_step_truncation_is_int_of_strength_times_steps(sd, steps, strength, expected):
    init = torch.zeros(1, 3, 32, 32)
    ctx = torch.zeros(1, 77, 32)
    with CallRecorder(sd.unet) as rec:
        res = img2img(pipe(sd), init, ctx, generator=[0], sampler=S(steps, strength, 1.0))
    assert len(rec.calls) == res.num_steps == expected
    if expected:
        assert res.timesteps == _grid(steps)[-expected:]


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_images_different_seed_differs(vd, vd_inputs):
    init, text, image = vd_inputs
    kw = dict(mix_ratio=0.4, sampler=S(10, 0.5))
    a = vd_img2img(vd, init, text, image, generator=[3, 4], **kw)
    b = vd_img2img(vd, init, text, image, generator=make_generators([3, 4]), **kw)
    c = vd_img2img(vd, init, text, image, generator=[3, 5], **kw)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.images[0], c.images[0])  # image 0 has the same seed
    assert (a.images[1] - c.images[1]).abs().max() > 1e-3


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_batch_equals_single_runs(vd, vd_inputs, eta):
    init, text, image = vd_inputs
    kw = dict(mix_ratio=0.4, sampler=S(10, 0.6, eta=eta))
    both = vd_img2img(vd, init, text, image, generator=[21, 22], **kw)
    for i, seed in enumerate([21, 22]):
        one = vd_img2img(vd, init[i:i + 1], text[i:i + 1], image[i:i + 1], generator=[seed], **kw)
        assert torch.allclose(one.latents[0], both.latents[i], atol=1e-4)
        assert torch.allclose(one.images[0], both.images[i], atol=1e-4)


def test_eta_adds_seeded_step_noise(vd, vd_inputs):
    init, text, image = vd_inputs
    kw = dict(mix_ratio=0.4)
    e0 = vd_img2img(vd, init, text, image, generator=[1, 2], sampler=S(10, 0.6, eta=0.0), **kw)
    e1 = vd_img2img(vd, init, text, image, generator=[1, 2], sampler=S(10, 0.6, eta=1.0), **kw)
    e1b = vd_img2img(vd, init, text, image, generator=[1, 2], sampler=S(10, 0.6, eta=1.0), **kw)
    assert torch.equal(e1.latents, e1b.latents)
    assert (e0.latents - e1.latents).abs().max() > 1e-3


# ----------------------------------------------------------------------------- loop semantics
@pytest.mark.parametrize("strength, init_noise, noised, first", [
    (0.75, "reference", 741, 721),  # Brain-Diffuser's sampler: stochastic_encode at DDIM index 37, decode from 36
    (0.75, "consistent", 721, 721),
    (0.8, "reference", 801, 781),  # Takagi's: index 40, first step 781
    (0.8, "consistent", 781, 781),
    (1.0, "reference", 981, 981),  # no level above the grid: the first timestep
])
def test_init_noise_level(sd, strength, init_noise, noised, first):
    """With eps == 0 DDIM only rescales: from x = sqrt(a_n) z0 + sqrt(1 - a_n) noise (n = the init level),
    pred_x0 = x / sqrt(a_first) and the final latent = sqrt(a_end / a_first) x. The timesteps come from the
    CompVis grid (1 + 20 k), independent of diffusers."""
    stub = StubUNet(lambda x, ctx: torch.zeros_like(x))
    init = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(9)) * 2 - 1
    res = img2img(pipe(sd, stub), init, torch.zeros(1, 77, 32), torch.zeros(1, 77, 32), generator=[5, 6],
                  sampler=S(50, strength, init_noise=init_noise))
    n_keep = int(strength * 50)
    assert res.timesteps[0] == first == _grid(50)[-n_keep] and res.noise_timestep == noised
    if noised != first:
        assert noised == _grid(50)[-n_keep - 1]  # one grid step above the first denoised timestep
    # the same draws, in the loop's order: posterior sample, then the forward-diffusion noise
    gens = make_generators([5, 6])
    z0 = vae_encode(sd.vae, init, gens)
    noise = torch.stack([torch.randn(z0.shape[1:], generator=g) for g in gens])
    alphas = sd.scheduler.alphas_cumprod.double()
    a_n, a_first = alphas[noised], alphas[first]
    a_end = alphas[0]  # the step below t=1 has no timestep; set_alpha_to_one=False -> alphas_cumprod[0]
    x = a_n.sqrt() * z0.double() + (1 - a_n).sqrt() * noise.double()
    expected = (a_end / a_first).sqrt() * x
    assert len(stub.inputs) == n_keep
    assert torch.allclose(res.latents.double(), expected, atol=1e-4, rtol=1e-4)


def test_the_methods_default_to_the_reference_noise_level():
    """methods.braindiffuser / methods.takagi / encoding.img2img: init_noise defaults to the reference's."""
    from brainrecon.schema import defaults

    assert defaults("methods.braindiffuser")["init_noise"] == "reference"
    assert defaults("methods.takagi")["init_noise"] == "reference"
    assert defaults("encoding.img2img")["init_noise"] == "reference"
    with pytest.raises(ValueError, match="init_noise"):
        S(init_noise="diffusers")


def test_init_latents_start_the_same_schedule_as_encoded_images(sd):
    """Given latents z0 replace VAE encoding only: same noising to t1, same steps, same result."""
    init = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(7)) * 2 - 1
    kw = dict(sampler=S(10, 0.6, 3.0, posterior="mean"))
    ctx, unc = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1)), torch.zeros(1, 77, 32)
    encoded = img2img(pipe(sd), init, ctx, unc, generator=[3, 4], **kw)
    z0 = vae_encode(sd.vae, init, sample=False)
    given = img2img(pipe(sd), None, ctx, unc, generator=[3, 4], init_latents=z0, **kw)
    assert given.num_steps == encoded.num_steps == 6 and given.timesteps == encoded.timesteps
    assert torch.allclose(given.latents, encoded.latents, atol=1e-5)
    # random standard-normal latents: the loop's first draw is the noise to t1, after z0's draw
    gens = make_generators([5, 6])
    z = random_latents(sd.vae, 32, gens)
    ref = torch.stack([torch.randn(tuple(z.shape[1:]), generator=g) for g in make_generators([5, 6])])
    assert z.shape == (2, 4, 8, 8) and torch.equal(z, ref)
    stub = StubUNet(lambda x, c: torch.zeros_like(x))
    res = img2img(pipe(sd, stub), None, ctx, None, generator=gens, init_latents=z, sampler=S(50, 0.75, 1.0))
    again = make_generators([5, 6])
    z_ref = torch.stack([torch.randn(tuple(z.shape[1:]), generator=g) for g in again])
    noise = torch.stack([torch.randn(tuple(z.shape[1:]), generator=g) for g in again])
    alphas = sd.scheduler.alphas_cumprod.double()
    expected = alphas[0].sqrt() * (z_ref.double() + ((1 - alphas[721]) / alphas[721]).sqrt() * noise.double())
    assert torch.allclose(res.latents.double(), expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="not both"):
        img2img(pipe(sd), init, ctx, unc, generator=[3, 4], init_latents=z0, **kw)
    with pytest.raises(ValueError, match="init_latents must be"):
        img2img(pipe(sd), None, ctx, unc, generator=[3, 4], init_latents=z0[:, :2], **kw)


def test_classifier_free_guidance_combination_and_order(sd):
    """eps(ctx) = ctx[:, 0, 0]: CFG must give eps_u + g (eps_c - eps_u) with uncond first in the batch."""
    stub = StubUNet(lambda x, ctx: ctx[:, :1, :1, None].expand(-1, x.shape[1], x.shape[2], x.shape[3]) * 0.1)
    init = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    u, c, g = 0.3, -0.5, 4.0
    kw = dict(generator=[0])
    cfg = img2img(pipe(sd, stub), init, torch.full((1, 77, 32), c), torch.full((1, 77, 32), u),
                  sampler=S(10, 0.7, g), **kw)
    assert stub.inputs[0][0] == 2  # one call on [uncond; cond]
    stub.inputs.clear()
    direct = img2img(pipe(sd, stub), init, torch.full((1, 77, 32), u + g * (c - u)), None,
                     sampler=S(10, 0.7, 1.0), **kw)
    assert stub.inputs[0][0] == 1  # no guidance: conditional branch only
    assert torch.allclose(cfg.latents, direct.latents, atol=1e-5)


def test_strength_zero_is_vae_roundtrip(sd):
    init = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    res = img2img(pipe(sd), init, torch.zeros(1, 77, 32), torch.zeros(1, 77, 32), generator=[1, 2],
                  sampler=S(50, 0.0))
    ref = vae_decode(sd.vae, vae_encode(sd.vae, init, make_generators([1, 2])))
    assert res.num_steps == 0 and torch.allclose(res.images, ref, atol=1e-6)


def test_pil_init_equals_tensor_init(sd):
    u8 = torch.randint(0, 256, (1, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    from PIL import Image

    pil = Image.fromarray(u8[0].permute(1, 2, 0).numpy())
    kw = dict(generator=[3], sampler=S(10, 0.5, 1.0))
    ctx = torch.zeros(1, 77, 32)
    a = img2img(pipe(sd), pil, ctx, **kw)
    b = img2img(pipe(sd), u8.float() / 127.5 - 1, ctx, **kw)
    assert torch.allclose(a.images, b.images, atol=1e-5)


def test_extra_latent_channels_are_concatenated(sd):
    seen = []

    def fn(x, ctx):
        seen.append(x[:, 4:].clone())
        return torch.zeros_like(x[:, :4])

    stub = StubUNet(fn)
    depth = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    img2img(pipe(sd, stub), torch.zeros(2, 3, 32, 32), torch.zeros(2, 77, 32), torch.zeros(1, 77, 32),
            generator=[0, 1], sampler=S(10, 0.3), extra_latent_channels=depth)
    assert len(seen) == 3 and seen[0].shape == (4, 1, 8, 8)
    assert torch.equal(seen[0], depth.expand(4, 1, 8, 8))


def test_mix_ratio_changes_vd_result(vd, vd_inputs):
    init, text, image = vd_inputs
    kw = dict(generator=[0, 1], sampler=S(10, 0.6))
    a = vd_img2img(vd, init, text, image, mix_ratio=0.0, **kw)
    b = vd_img2img(vd, init, text, image, mix_ratio=1.0, **kw)
    c = vd_img2img(vd, init, text, image, mix_ratio=0.4, **kw)  # each run sets its own mix
    assert (a.latents - b.latents).abs().max() > 1e-3
    from brainrecon.models.vd import dual_blocks

    assert all(blk.mix_ratio == pytest.approx(0.4) for blk in dual_blocks(vd.image_unet))
    assert (c.latents - a.latents).abs().max() > 1e-4


# ----------------------------------------------------------------------------- errors
def test_bad_inputs_are_rejected(vd, vd_inputs, sd):
    init, text, image = vd_inputs
    ctx = torch.zeros(1, 77, 32)
    with pytest.raises(ValueError, match="generator"):
        img2img(pipe(sd), init, ctx, ctx, generator=None, sampler=S())
    with pytest.raises(ValueError, match="one per image"):
        img2img(pipe(sd), init, ctx, ctx, generator=[1], sampler=S())
    with pytest.raises(ValueError, match="uncond"):
        img2img(pipe(sd), init, ctx, None, generator=[1, 2], sampler=S(guidance_scale=5.0))
    with pytest.raises(ValueError, match="strength"):
        S(strength=1.5)
    with pytest.raises(ValueError, match="posterior"):
        S(posterior="mode")
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        img2img(pipe(sd), init * 3, ctx, ctx, generator=[1, 2], sampler=S())
    with pytest.raises(ValueError, match="batch size 3"):
        img2img(pipe(sd), init, torch.zeros(3, 77, 32), ctx, generator=[1, 2], sampler=S())
    with pytest.raises(ValueError, match="17 image tokens"):
        vd_img2img(vd, init, text, image[:, :10], mix_ratio=0.4, generator=[1, 2], sampler=S())
