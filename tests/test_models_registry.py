"""Model registry (tiny <-> real layout), Versatile Diffusion dual guidance and CLIP conditioning.

Everything runs on tiny random-weight models (same classes as the real ones) on CPU.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from brainrecon.models import tiny
from brainrecon.models.registry import build_tiny, get_role, load_role, select_repo_files

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {role: build_tiny(role, root / role, seed=0) for role in ("vd", "sd", "clip")}


@pytest.fixture(scope="module")
def vd_raw(tiny_dirs):
    """VD components as loaded, before the dual-guided conversion."""
    return load_role("vd", path=tiny_dirs["vd"], postprocess=False)


@pytest.fixture(scope="module")
def vd(tiny_dirs):
    return load_role("vd", path=tiny_dirs["vd"])


def _files(folder):
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def _same_state(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ----------------------------------------------------------------------------- layout
def test_tiny_vd_saved_in_hub_layout(tiny_dirs):
    root = tiny_dirs["vd"]
    assert _files(root) == ["model_index.json"]
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] == "VersatileDiffusionPipeline"
    assert index["image_unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModelWithProjection"]
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(
        ["image_unet", "text_unet", "vae", "text_encoder", "image_encoder", "tokenizer",
         "image_feature_extractor", "scheduler"])
    for sub in ("image_unet", "text_unet", "vae"):
        assert _files(root / sub) == ["config.json", "diffusion_pytorch_model.safetensors"]
    for sub in ("text_encoder", "image_encoder"):
        assert _files(root / sub) == ["config.json", "model.safetensors"]
    assert _files(root / "tokenizer") == ["merges.txt", "special_tokens_map.json", "tokenizer_config.json",
                                          "vocab.json"]
    assert _files(root / "image_feature_extractor") == ["preprocessor_config.json"]
    assert _files(root / "scheduler") == ["scheduler_config.json"]
    assert json.loads((root / "text_unet" / "config.json").read_text())["_class_name"] == "UNetFlatConditionModel"


def test_tiny_sd_and_clip_saved_in_hub_layout(tiny_dirs):
    sd = tiny_dirs["sd"]
    assert _files(sd) == ["model_index.json"]
    assert sorted(p.name for p in sd.iterdir() if p.is_dir()) == ["scheduler", "text_encoder", "tokenizer",
                                                                    "unet", "vae"]
    assert _files(sd / "unet") == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert _files(sd / "text_encoder") == ["config.json", "model.safetensors"]
    # SD v1-4 ships a PNDM scheduler config
    assert json.loads((sd / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "PNDMScheduler"
    clip = tiny_dirs["clip"]
    assert _files(clip) == ["config.json", "merges.txt", "model.safetensors", "preprocessor_config.json",
                            "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.json"]


# ----------------------------------------------------------------------------- loading
@pytest.mark.parametrize("role,builder", [("sd", tiny.build_sd_components), ("clip", tiny.build_clip_components)])
def test_load_role_gives_the_built_weights(tiny_dirs, role, builder):
    loaded = load_role(role, path=tiny_dirs[role])
    built = builder(0)  # same seed -> same weights
    for comp in get_role(role).components:
        if comp.kind == "model":
            _same_state(built[comp.name], getattr(loaded, comp.name))
    other = builder(1)
    first_model = next(c.name for c in get_role(role).components if c.kind == "model")
    assert not all(torch.equal(a, b) for a, b in zip(other[first_model].state_dict().values(),
                                                     built[first_model].state_dict().values()))


def test_load_vd_raw_weights_and_classes(vd_raw):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.pipelines.deprecated.versatile_diffusion.modeling_text_unet import UNetFlatConditionModel
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    built = tiny.build_vd_components(0)
    for name in ("image_unet", "text_unet", "vae", "text_encoder", "image_encoder"):
        _same_state(built[name], getattr(vd_raw, name))
    assert isinstance(vd_raw.image_unet, UNet2DConditionModel)
    assert isinstance(vd_raw.text_unet, UNetFlatConditionModel)
    assert isinstance(vd_raw.vae, AutoencoderKL)
    assert isinstance(vd_raw.text_encoder, CLIPTextModelWithProjection)
    assert isinstance(vd_raw.image_encoder, CLIPVisionModelWithProjection)
    assert isinstance(vd_raw.scheduler, DDIMScheduler)
    assert not any(p.requires_grad for p in vd_raw.image_unet.parameters())


def test_tokenizer_roundtrip_offline(tiny_dirs):
    mem = tiny.tiny_clip_tokenizer()
    for role in ("vd", "sd", "clip"):
        tok = load_role(role, path=tiny_dirs[role]).tokenizer
        assert tok.model_max_length == 77
        for text in ["a photo of a cat!", "Two dogs, running on the beach.", ""]:
            ids = tok(text, padding="max_length", max_length=77, truncation=True).input_ids
            assert ids == mem(text, padding="max_length", max_length=77, truncation=True).input_ids
            assert len(ids) == 77 and ids[0] == tok.bos_token_id
        # byte-level: "ab" is spelled "a", "b</w>"
        assert tok("ab").input_ids[1:3] == [tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b</w>")]


def test_sd_scheduler_loaded_as_ddim_with_compvis_grid(tiny_dirs):
    from diffusers import DDIMScheduler

    sd = load_role("sd", path=tiny_dirs["sd"])
    assert isinstance(sd.scheduler, DDIMScheduler)
    # reference DDIM: no x0 clipping (DDIMScheduler's default would clip), last step to alphas_cumprod[0]
    assert sd.scheduler.config.clip_sample is False and sd.scheduler.config.set_alpha_to_one is False
    assert float(sd.scheduler.final_alpha_cumprod) == float(sd.scheduler.alphas_cumprod[0])
    sd.scheduler.set_timesteps(50)
    # CompVis DDIM: range(0, 1000, 20) + 1, descending
    assert sd.scheduler.timesteps.tolist() == list(range(981, 0, -20))


def test_load_role_errors(tmp_path, tiny_dirs):
    with pytest.raises(KeyError, match="unknown model role 'nope'"):
        load_role("nope", path=tiny_dirs["sd"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_role("sd", path=tmp_path / "missing")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "unet").mkdir()
    with pytest.raises(FileNotFoundError, match="no 'vae' folder"):
        load_role("sd", path=tmp_path / "half")
    with pytest.raises(ValueError, match="source"):
        load_role("sd", source="internet", path=tiny_dirs["sd"])


def test_select_repo_files_prefers_safetensors_and_skips_variants():
    listing = [
        "model_index.json", "sd-v1-4.ckpt", "README.md",
        "unet/config.json", "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.non_ema.bin",
        "vae/config.json", "vae/diffusion_pytorch_model.bin",
        "text_encoder/config.json", "text_encoder/model.safetensors.index.json",
        "text_encoder/model-00001-of-00002.safetensors", "text_encoder/model-00002-of-00002.safetensors",
        "text_encoder/pytorch_model.bin", "text_encoder/model.fp16.safetensors",
        "tokenizer/merges.txt", "tokenizer/vocab.json", "tokenizer/tokenizer_config.json",
        "tokenizer/special_tokens_map.json",
        "scheduler/scheduler_config.json",
        "safety_checker/config.json", "safety_checker/model.safetensors",
    ]
    got = select_repo_files("sd", listing)
    assert got == sorted([
        "model_index.json",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.bin",
        "text_encoder/config.json", "text_encoder/model.safetensors.index.json",
        "text_encoder/model-00001-of-00002.safetensors", "text_encoder/model-00002-of-00002.safetensors",
        "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "scheduler/scheduler_config.json",
    ])
    with pytest.raises(FileNotFoundError, match="vae"):
        select_repo_files("sd", [f for f in listing if not f.startswith("vae/diffusion")])


def test_select_repo_files_on_tiny_folders_lists_every_file(tiny_dirs):
    for role, root in tiny_dirs.items():
        listing = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
        assert select_repo_files(role, listing) == sorted(listing)


# ----------------------------------------------------------------------------- VD dual guidance
def _unet_inputs(unet, text_len, image_len, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    dim = unet.config.cross_attention_dim
    size = unet.config.sample_size
    sample = torch.randn(batch, 4, size, size, generator=g)
    text = torch.randn(batch, text_len, dim, generator=g)
    image = torch.randn(batch, image_len, dim, generator=g)
    return sample, text, image


def test_vd_postprocess_builds_dual_unet_from_both_unets(vd, vd_raw):
    from brainrecon.models.vd import MaskTolerantDualTransformer2DModel, dual_blocks

    blocks = dual_blocks(vd.image_unet)
    n_transformers = sum(1 for n, m in vd_raw.image_unet.named_modules() if type(m).__name__ == "Transformer2DModel")
    assert len(blocks) == n_transformers >= 3  # down, mid, up blocks of the tiny UNet
    assert all(isinstance(b, MaskTolerantDualTransformer2DModel) for b in blocks)
    assert vd.text_unet is None
    assert (vd.text_len, vd.image_len) == (77, 17)
    for b in blocks:
        assert b.mix_ratio == pytest.approx(0.4)
        assert b.condition_lengths == [77, 17]
        assert b.transformer_index_for_condition == [1, 0]
    # transformers[0] holds the image UNet's weights, transformers[1] the text UNet's
    state = vd.image_unet.state_dict()
    img_state, txt_state = vd_raw.image_unet.state_dict(), vd_raw.text_unet.state_dict()
    n_checked = 0
    for key, value in state.items():
        if ".transformers.0." in key:
            assert torch.equal(value, img_state[key.replace(".transformers.0.", ".")])
            n_checked += 1
        elif ".transformers.1." in key:
            assert torch.equal(value, txt_state[key.replace(".transformers.1.", ".")])
            n_checked += 1
        else:
            assert torch.equal(value, img_state[key])
    assert n_checked > 0
    assert vd.image_unet.config.dual_cross_attention is True


def test_library_dual_transformer_fails_and_adaptation_fixes_it(vd_raw):
    """Pins upstream issue #13651: diffusers' DualTransformer2DModel.forward lacks encoder_attention_mask."""
    from diffusers.models import DualTransformer2DModel

    from brainrecon.models.vd import convert_to_dual_guided, make_mask_tolerant, set_dual_guidance

    unet = convert_to_dual_guided(copy.deepcopy(vd_raw.image_unet), vd_raw.text_unet, dual_cls=DualTransformer2DModel)
    set_dual_guidance(unet, 0.4, ("text", "image"), 77, 17)
    sample, text, image = _unet_inputs(unet, 77, 17)
    ctx = torch.cat([text, image], 1)
    with torch.no_grad():
        with pytest.raises(TypeError, match="encoder_attention_mask"):
            unet(sample, 500, encoder_hidden_states=ctx)
        n_blocks = sum(1 for m in unet.modules() if type(m) is DualTransformer2DModel)
        assert n_blocks >= 3 and make_mask_tolerant(unet) == n_blocks
        assert make_mask_tolerant(unet) == 0  # idempotent
        out = unet(sample, 500, encoder_hidden_states=ctx).sample
        ref = convert_to_dual_guided(copy.deepcopy(vd_raw.image_unet), vd_raw.text_unet)
        set_dual_guidance(ref, 0.4, ("text", "image"), 77, 17)
        assert torch.allclose(out, ref(sample, 500, encoder_hidden_states=ctx).sample, atol=1e-6)
    assert out.shape == sample.shape and torch.isfinite(out).all()


def test_tolerant_forward_matches_library_forward_per_block(vd):
    from diffusers.models import DualTransformer2DModel

    from brainrecon.models.vd import dual_blocks

    block = dual_blocks(vd.image_unet)[0]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, block.transformers[0].config.in_channels, 8, 8, generator=g)
    ctx = torch.randn(2, 77 + 17, vd.image_unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        ours = block(x, ctx, return_dict=False)[0]
        lib = DualTransformer2DModel.forward(block, x, ctx, return_dict=False)[0]
    assert torch.allclose(ours, lib, atol=1e-6)


def test_encoder_attention_mask_is_accepted_and_sliced(vd):
    unet = vd.image_unet
    sample, text, image = _unet_inputs(unet, 77, 17)
    ctx = torch.cat([text, image], 1)
    with torch.no_grad():
        plain = unet(sample, 300, encoder_hidden_states=ctx).sample
        ones = unet(sample, 300, encoder_hidden_states=ctx, encoder_attention_mask=torch.ones(2, 94)).sample
        assert torch.allclose(plain, ones, atol=1e-5)
        # masked tokens (last 5 image tokens) must not influence the output
        mask = torch.ones(2, 94)
        mask[:, -5:] = 0
        ctx2 = ctx.clone()
        ctx2[:, -5:] = torch.randn(2, 5, ctx.shape[-1]) * 10
        a = unet(sample, 300, encoder_hidden_states=ctx, encoder_attention_mask=mask).sample
        b = unet(sample, 300, encoder_hidden_states=ctx2, encoder_attention_mask=mask).sample
        c = unet(sample, 300, encoder_hidden_states=ctx2).sample
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, plain, atol=1e-4)
    assert not torch.allclose(c, plain, atol=1e-4)


def test_mix_ratio_selects_text_or_image_condition(vd, vd_raw):
    """mix_ratio=1 -> the text UNet's blocks on the text context only; 0 -> the image UNet on the image context."""
    from brainrecon.models.vd import _set_child, set_dual_guidance

    dual = vd.image_unet
    image_only = vd_raw.image_unet  # original single-condition UNet (image transformers)
    text_blocks = copy.deepcopy(vd_raw.image_unet)  # same UNet with the text UNet's transformer blocks
    names = [n for n, m in text_blocks.named_modules() if type(m).__name__ == "Transformer2DModel"]
    for n in names:
        _set_child(text_blocks, n, vd_raw.text_unet.get_submodule(n))
    sample, text, image = _unet_inputs(dual, 77, 17, seed=5)
    ctx = torch.cat([text, image], 1)
    try:
        with torch.no_grad():
            set_dual_guidance(dual, 1.0, ("text", "image"), 77, 17)
            out_text = dual(sample, 400, encoder_hidden_states=ctx).sample
            ref_text = text_blocks(sample, 400, encoder_hidden_states=text).sample
            set_dual_guidance(dual, 0.0, ("text", "image"), 77, 17)
            out_image = dual(sample, 400, encoder_hidden_states=ctx).sample
            ref_image = image_only(sample, 400, encoder_hidden_states=image).sample
            set_dual_guidance(dual, 0.4, ("text", "image"), 77, 17)
            out_mix = dual(sample, 400, encoder_hidden_states=ctx).sample
            # the same mix written in (image, text) order: weight of condition 0 (image) = 0.6
            set_dual_guidance(dual, 0.6, ("image", "text"), 77, 17)
            out_mix_swapped = dual(sample, 400, encoder_hidden_states=torch.cat([image, text], 1)).sample
    finally:
        set_dual_guidance(dual, 0.4, ("text", "image"), 77, 17)
    assert torch.allclose(out_text, ref_text, atol=1e-5)
    assert torch.allclose(out_image, ref_image, atol=1e-5)
    assert not torch.allclose(out_text, out_image, atol=1e-3)
    assert not torch.allclose(out_mix, out_text, atol=1e-4) and not torch.allclose(out_mix, out_image, atol=1e-4)
    assert torch.allclose(out_mix, out_mix_swapped, atol=1e-5)


def test_set_dual_guidance_validates(vd, vd_raw):
    from brainrecon.models.vd import set_dual_guidance

    with pytest.raises(ValueError, match="mix_ratio"):
        set_dual_guidance(vd.image_unet, 1.5)
    with pytest.raises(ValueError, match="condition_types"):
        set_dual_guidance(vd.image_unet, 0.4, ("text", "text"))
    with pytest.raises(ValueError, match="convert_to_dual_guided"):
        set_dual_guidance(vd_raw.image_unet, 0.4)
    sample, text, image = _unet_inputs(vd.image_unet, 77, 17)
    with pytest.raises(ValueError, match="94 tokens"):
        vd.image_unet(sample, 10, encoder_hidden_states=text)


# ----------------------------------------------------------------------------- CLIP conditioning
def test_encode_vd_text_normalised_by_projected_pooled_output(vd):
    from brainrecon.models.vd import encode_vd_text

    prompts = ["a cat on a mat", "two dogs", ""]
    ctx = encode_vd_text(prompts, vd.text_encoder, vd.tokenizer)
    assert ctx.shape == (3, 77, vd.text_encoder.config.projection_dim) and ctx.dtype == torch.float32
    tokens = vd.tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        pooled = vd.text_encoder(tokens).text_embeds
    eos = (tokens == vd.tokenizer.eos_token_id).int().argmax(dim=1)
    # the EOS token's row is the pooled output's direction, with unit norm
    rows = ctx[torch.arange(3), eos]
    assert torch.allclose(rows.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(rows, pooled / pooled.norm(dim=-1, keepdim=True), atol=1e-5)
    # batching does not change the result
    assert torch.allclose(encode_vd_text(prompts[1], vd.text_encoder, vd.tokenizer)[0], ctx[1], atol=1e-5)


def test_encode_vd_image_normalised_by_cls_norm(vd):
    from brainrecon.models.vd import encode_vd_image

    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 48, 40, generator=g)
    ctx = encode_vd_image(images, vd.image_encoder, vd.image_feature_extractor)
    assert ctx.shape == (2, 17, vd.image_encoder.config.projection_dim)
    assert torch.allclose(ctx[:, 0].norm(dim=-1), torch.ones(2), atol=1e-5)
    pixels = vd.image_feature_extractor(images=list(images), do_rescale=False, return_tensors="pt").pixel_values
    with torch.no_grad():
        embeds = vd.image_encoder(pixels).image_embeds  # projection of post_layernorm(CLS)
    assert torch.allclose(ctx[:, 0], embeds / embeds.norm(dim=-1, keepdim=True), atol=1e-5)
    # PIL and uint8 inputs give the same as the float tensor
    from PIL import Image

    u8 = (images * 255).round().to(torch.uint8)
    pil = [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in u8]
    ctx_pil = encode_vd_image(pil, vd.image_encoder, vd.image_feature_extractor)
    ctx_u8 = encode_vd_image(u8, vd.image_encoder, vd.image_feature_extractor)
    assert torch.allclose(ctx_pil, ctx_u8, atol=1e-5)
    assert torch.allclose(ctx_u8, ctx, atol=2e-2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        encode_vd_image(images * 2 - 1, vd.image_encoder, vd.image_feature_extractor)


def test_vd_unconditional_is_empty_prompt_and_grey_image(vd):
    from brainrecon.models.vd import encode_vd_image, encode_vd_text, vd_unconditional

    text_u, image_u = vd_unconditional(vd)
    assert text_u.shape == (1, 77, 32) and image_u.shape == (1, 17, 32)
    assert torch.allclose(text_u, encode_vd_text([""], vd.text_encoder, vd.tokenizer))
    grey_small = encode_vd_image(torch.full((1, 3, 40, 40), 0.5), vd.image_encoder, vd.image_feature_extractor)
    black = encode_vd_image(torch.zeros(1, 3, 40, 40), vd.image_encoder, vd.image_feature_extractor)
    assert torch.allclose(image_u, grey_small, atol=1e-5)
    assert not torch.allclose(image_u, black, atol=1e-3)


def test_load_role_without_path_builds_tiny_in_a_temp_folder():
    parts = load_role("sd", source="tiny", seed=0)
    built = tiny.build_sd_components(0)
    _same_state(built["unet"], parts.unet)
    assert parts.source == "tiny" and parts.names() == ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]


def test_fetch_model_downloads_selected_files_atomically(tmp_path, monkeypatch):
    """fetch_model with the hub client replaced by a fake (no network here): right files, atomic folder."""
    import huggingface_hub

    from brainrecon.models.registry import fetch_model

    listing = ["model_index.json", "sd-v1-4.ckpt", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
               "unet/diffusion_pytorch_model.fp16.safetensors", "vae/config.json",
               "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json",
               "text_encoder/model.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt",
               "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json"]
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def list_repo_files(self, repo_id, revision=None):
            calls["listed"] = (repo_id, revision)
            return listing

    def fake_download(repo_id, revision=None, allow_patterns=None, local_dir=None, token=None, skip=()):
        calls["allow"] = list(allow_patterns)
        for f in allow_patterns:
            if f in skip:
                continue
            p = tmp_path.joinpath(local_dir, f)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("x")
        (tmp_path / local_dir / ".cache").mkdir()
        return local_dir

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    dest = fetch_model("sd", tmp_path / "models" / "sd", revision="abc")
    assert calls["listed"] == ("CompVis/stable-diffusion-v1-4", "abc")
    assert "sd-v1-4.ckpt" not in calls["allow"] and "unet/diffusion_pytorch_model.fp16.safetensors" not in calls["allow"]
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert got == sorted(calls["allow"]) and not (dest / ".cache").exists()
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["sd"]  # no temporary folder left

    # an incomplete download raises and leaves nothing under the final name
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda *a, **k: fake_download(*a, **k, skip=("vae/config.json",)))
    with pytest.raises(FileNotFoundError, match="vae/config.json"):
        fetch_model("sd", tmp_path / "models2" / "sd")
    assert list((tmp_path / "models2").iterdir()) == []


def test_vdvae_role_tiny_roundtrip_and_real_layout(tmp_path):
    from brainrecon.models.registry import load_model
    from brainrecon.models.vdvae import VDVAE, VDVAEConfig
    from brainrecon.models.vdvae_role import VDVAE_FILE

    spec = get_role("vdvae")  # the role's hooks are vdvae_role's (verified download)
    from brainrecon.models import vdvae_role

    assert (spec.fetch, spec.write_tiny, spec.load) == (vdvae_role.fetch, vdvae_role.write_tiny, vdvae_role.load)

    folder = build_tiny("vdvae", tmp_path / "vdvae", seed=3)
    assert sorted(p.name for p in folder.iterdir()) == sorted([VDVAE_FILE, "vdvae_config.json"])
    parts = load_model("vdvae", folder)  # the registry's name is brainrecon.models.load_model
    assert parts.names() == ["model"] and isinstance(parts.model, VDVAE)
    assert parts.source == "tiny" and parts.config == VDVAEConfig.tiny()
    with tiny.seeded(3):
        ref = VDVAE(VDVAEConfig.tiny())
    _same_state(ref, parts.model)
    # a folder without vdvae_config.json is the real checkpoint: loaded with the ImageNet64 config
    (folder / "vdvae_config.json").unlink()
    with pytest.raises(ValueError, match="does not match the model"):
        load_model("vdvae", folder)


def test_resolve_device_dtype():
    from brainrecon.models.registry import resolve_device_dtype

    # the policy of brainrecon.models.resolve_device / resolve_dtype: CPU always computes in float32
    assert resolve_device_dtype("cpu", "bfloat16") == (torch.device("cpu"), torch.float32)
    assert resolve_device_dtype("cpu", "float16") == (torch.device("cpu"), torch.float32)
    dev, _ = resolve_device_dtype("auto", torch.float32)
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="float64"):
        resolve_device_dtype("cpu", "float64")
    if torch.cuda.is_available():
        assert resolve_device_dtype("cuda", "bfloat16") == (torch.device("cuda"), torch.bfloat16)
    else:
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device_dtype("cuda", "float16")


def test_load_role_component_subset(tiny_dirs, tmp_path):
    """components=: only those, no post-load step; validated against the role."""
    parts = load_role("vd", path=tiny_dirs["vd"], components=["image_encoder", "image_feature_extractor"])
    assert parts.names() == ["image_encoder", "image_feature_extractor"]
    assert not hasattr(parts, "image_unet") and not hasattr(parts, "text_len")  # no dual-guided conversion
    _same_state(tiny.build_vd_components(0)["image_encoder"], parts.image_encoder)
    assert not parts.image_encoder.training and not any(p.requires_grad for p in parts.image_encoder.parameters())
    with pytest.raises(KeyError, match="no component 'unet'"):
        load_role("vd", path=tiny_dirs["vd"], components=["unet"])
    with pytest.raises(ValueError, match="no components"):
        load_role("vd", path=tiny_dirs["vd"], components=[])
    with pytest.raises(TypeError, match="whole role"):
        load_role("vd", path=tiny_dirs["vd"], components=["vae"], text_len=77)
    # only the asked components' folders must exist
    (tmp_path / "sd").mkdir()
    import shutil

    shutil.copytree(tiny_dirs["sd"] / "vae", tmp_path / "sd" / "vae")
    assert load_role("sd", path=tmp_path / "sd", components=["vae"]).names() == ["vae"]
    with pytest.raises(FileNotFoundError, match="no 'unet' folder"):
        load_role("sd", path=tmp_path / "sd")
    # hook roles: the hook's components only
    vdvae = build_tiny("vdvae", tmp_path / "vdvae", seed=0)
    assert load_role("vdvae", path=vdvae, components=["model"]).names() == ["model"]
    with pytest.raises(ValueError, match="one component 'model'"):
        load_role("vdvae", path=vdvae, components=["decoder"])


def test_prepare_role_options_go_to_the_fetcher(tmp_path, monkeypatch):
    from brainrecon.models import registry, vdvae_role
    from brainrecon.models.registry import prepare_role

    seen = {}

    def fake_fetch(folder, revision=None, **options):
        seen.update(options, revision=revision)
        vdvae_role.write_tiny(folder, seed=0)

    import dataclasses

    monkeypatch.setitem(registry.ROLES, "vdvae", dataclasses.replace(registry.ROLES["vdvae"], fetch=fake_fetch))
    dest = prepare_role("vdvae", tmp_path / "models" / "vdvae", "pretrained", url="file:///x", retries=0)
    assert seen == {"url": "file:///x", "retries": 0, "revision": None}
    assert sorted(p.name for p in dest.iterdir()) == sorted([vdvae_role.VDVAE_FILE, vdvae_role.CONFIG_FILE])
    with pytest.raises(TypeError, match="url"):
        prepare_role("sd", tmp_path / "models" / "sd", "pretrained", url="file:///x")
    with pytest.raises(TypeError, match="retries"):
        prepare_role("vdvae", tmp_path / "models" / "tiny", "tiny", retries=0)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["vdvae"]
    assert registry.folder_source("vdvae", dest) == "tiny" and registry.folder_source("sd", dest) is None
