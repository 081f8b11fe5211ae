"""The unified model API (brainrecon.models.prepare_model / load_model) and VDVAE as a model role.

The real VDVAE checkpoint is stood in for by a file with the official ImageNet64 keys and shapes whose tensors
are 1-element storages expanded to full shape (a few bytes on disk), served through a file:// URL.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from brainrecon.models import (
    MODEL_ROLES,
    load_model,
    prepare_model,
    resolve_device,
    resolve_dtype,
)
from brainrecon.models import tiny as tiny_models
from brainrecon.models.vdvae import VDVAE, VDVAEConfig, latent_dims
from brainrecon.models.vdvae_role import CONFIG_FILE, VDVAE_FILE, VDVAE_URL
from brainrecon.fetch import DownloadError
from conftest import REPO, run_snakemake

torch.set_num_threads(1)


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _official_keys_and_shapes() -> dict:
    with torch.device("meta"):
        model = VDVAE(VDVAEConfig())
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _write_expanded_checkpoint(path, shapes: dict) -> None:
    """Tensor i is the constant (i + 1) / 7 expanded to its shape (storage of one element)."""
    sd = {k: torch.full((1,), (i + 1) / 7.0).expand(shp) for i, (k, shp) in enumerate(shapes.items())}
    torch.save(sd, path)


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------------------------------------- VDVAE tiny
def test_tiny_vdvae_folder_has_official_layout_and_loads_strictly(tmp_path):
    folder = prepare_model("vdvae", tmp_path / "vdvae", "tiny", seed=3)
    assert sorted(p.name for p in folder.iterdir()) == sorted([VDVAE_FILE, CONFIG_FILE])
    # the .th is a plain state dict in the official key layout; the json records the tiny hyperparameters
    sd = torch.load(folder / VDVAE_FILE, weights_only=True)
    assert isinstance(sd, dict) and all(isinstance(v, torch.Tensor) for v in sd.values())
    assert {"encoder.in_conv.weight", "decoder.gain", "decoder.bias", "decoder.out_net.out_conv.weight"} <= set(sd)
    assert any(re.fullmatch(r"decoder\.dec_blocks\.\d+\.z_proj\.weight", k) for k in sd)
    assert json.loads((folder / CONFIG_FILE).read_text()) == dataclasses.asdict(VDVAEConfig.tiny())

    parts = load_model("vdvae", folder)
    assert parts.role == "vdvae" and parts.source == "tiny" and parts.names() == ["model"]
    assert isinstance(parts.model, VDVAE) and parts.config == VDVAEConfig.tiny()
    assert not parts.model.training and not any(p.requires_grad for p in parts.model.parameters())
    with tiny_models.seeded(3):
        ref = VDVAE(VDVAEConfig.tiny())
    _assert_same_state(_state(ref), _state(parts.model))

    # same seed -> same bytes of weights; another seed -> other weights
    again = prepare_model("vdvae", tmp_path / "again", "tiny", seed=3)
    _assert_same_state(sd, torch.load(again / VDVAE_FILE, weights_only=True))
    other = torch.load(prepare_model("vdvae", tmp_path / "other", "tiny", seed=4) / VDVAE_FILE, weights_only=True)
    assert not torch.equal(other["encoder.in_conv.weight"], sd["encoder.in_conv.weight"])

    # strict: one extra key in the checkpoint is an error naming it
    sd["decoder.extra.weight"] = torch.zeros(1)
    torch.save(sd, folder / VDVAE_FILE)
    with pytest.raises(ValueError, match=r"unexpected key.*decoder\.extra\.weight"):
        load_model("vdvae", folder)


def test_vdvae_folder_without_config_is_read_as_imagenet64(tmp_path):
    folder = prepare_model("vdvae", tmp_path / "vdvae", "tiny", seed=0)
    (folder / CONFIG_FILE).unlink()
    with pytest.raises(ValueError, match="does not match the model"):
        load_model("vdvae", folder)


def test_vdvae_load_options_override_latent_layers(tmp_path):
    folder = prepare_model("vdvae", tmp_path / "vdvae", "tiny", seed=0)
    parts = load_model("vdvae", folder, num_latent_layers=5)
    assert parts.config.num_latent_layers == 5
    x = torch.zeros(1, 64, 64, 3)
    assert len(parts.model.encode_latents(x, generator=torch.Generator().manual_seed(0))) == 5
    with pytest.raises(TypeError, match="no_such_option"):
        load_model("vdvae", folder, no_such_option=1)


# --------------------------------------------------------------------------------------------- VDVAE real
def test_fetch_official_layout_from_url(tmp_path):
    assert VDVAE_URL.endswith("/vdvae-assets-2/" + VDVAE_FILE)
    src = tmp_path / "server" / VDVAE_FILE
    src.parent.mkdir()
    shapes = _official_keys_and_shapes()
    _write_expanded_checkpoint(src, shapes)
    assert src.stat().st_size < 5_000_000

    dest = prepare_model("vdvae", tmp_path / "models" / "vdvae", "pretrained", url=src.as_uri(), retries=0,
                         progress=False)
    assert _leftovers(dest) == [VDVAE_FILE]  # no vdvae_config.json: the real folder
    assert (dest / VDVAE_FILE).read_bytes() == src.read_bytes()
    assert _leftovers(tmp_path / "models") == ["vdvae"]

    parts = load_model("vdvae", dest)
    assert parts.source == "pretrained" and parts.config == VDVAEConfig()
    assert latent_dims(parts.config, 31) == 91168
    loaded = parts.model.state_dict()
    assert {k: tuple(v.shape) for k, v in loaded.items()} == shapes
    for i, k in enumerate(shapes):
        if i % 97 == 0:
            assert float(loaded[k].reshape(-1)[0]) == pytest.approx((i + 1) / 7.0), k


def test_fetch_rejects_wrong_checkpoint_and_leaves_nothing(tmp_path):
    src = prepare_model("vdvae", tmp_path / "tiny", "tiny", seed=0) / VDVAE_FILE  # not ImageNet64
    models = tmp_path / "models"
    models.mkdir()
    with pytest.raises(ValueError, match=rf"{VDVAE_FILE} downloaded from file://.*does not match the model"):
        prepare_model("vdvae", models / "vdvae", "pretrained", url=src.as_uri(), retries=0, progress=False)
    assert _leftovers(models) == []

    with pytest.raises(DownloadError):
        prepare_model("vdvae", models / "vdvae", "pretrained", url=(tmp_path / "missing.th").as_uri(),
                      retries=0, progress=False)
    assert _leftovers(models) == []


# --------------------------------------------------------------------------------------------- API
def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere"))):
        load_model("vdvae", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere"))):
        load_model("sd", tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=VDVAE_FILE):
        load_model("vdvae", empty)
    with pytest.raises(KeyError, match="unknown model role 'vdvae2'"):
        load_model("vdvae2", empty)
    folder = prepare_model("vdvae", tmp_path / "vdvae", "tiny")
    (folder / CONFIG_FILE).write_text(json.dumps({**dataclasses.asdict(VDVAEConfig.tiny()), "depth": 3}))
    with pytest.raises(ValueError, match=rf"{CONFIG_FILE}.*unknown VDVAEConfig field.*depth"):
        load_model("vdvae", folder)
    with pytest.raises(ValueError, match="one component 'model'"):
        load_model("vdvae", folder, components=["encoder"])


def test_prepare_model_bad_arguments_write_nothing(tmp_path):
    with pytest.raises(KeyError, match="unknown model role"):
        prepare_model("alexnet", tmp_path / "a", "tiny")
    with pytest.raises(ValueError, match="model source"):
        prepare_model("vdvae", tmp_path / "b", "random")
    assert _leftovers(tmp_path) == []


def test_resolve_device_and_dtype():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="model device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")
    # CPU always computes in float32
    for name in ("float32", "float16", "bfloat16"):
        assert resolve_dtype(name, "cpu") == torch.float32
    assert resolve_dtype(torch.float16, torch.device("cpu")) == torch.float32
    assert resolve_dtype("float16", "cuda") == torch.float16
    assert resolve_dtype("bfloat16", "cuda") == torch.bfloat16
    with pytest.raises(ValueError, match="model dtype"):
        resolve_dtype("float64", "cuda")


def test_model_roles_match_registry():
    from brainrecon.models.plan import ROLE_SOURCES
    from brainrecon.models.registry import ROLES

    assert tuple(ROLES) == MODEL_ROLES
    assert all(ROLES[r].repo_id == ROLE_SOURCES[r] for r in MODEL_ROLES)
    # every role but VDVAE (one official .th file) is a Hugging Face repository with components
    assert {name for name, spec in ROLES.items() if not spec.components} == {"vdvae"}


@pytest.mark.parametrize("role,builder,component", [
    ("sd", tiny_models.build_sd_components, "text_encoder"),
    ("clip", tiny_models.build_clip_components, "model"),
    ("vd", tiny_models.build_vd_components, "image_encoder"),
])
def test_prepare_model_tiny_hf_roles(tmp_path, role, builder, component):
    folder = prepare_model(role, tmp_path / role, "tiny", seed=1)
    names = sorted(p.name for p in folder.iterdir())
    if role in ("vd", "sd"):
        assert "model_index.json" in names and component in names
    else:
        assert "config.json" in names and "model.safetensors" in names
    ref = builder(1)[component]
    parts = load_model(role, folder, components=[component], source="tiny")
    assert parts.names() == [component] and parts.source == "tiny"
    assert load_model(role, folder, components=[component]).source == "unspecified"  # HF folders do not tell
    _assert_same_state(_state(ref), _state(getattr(parts, component)))
    assert not hasattr(parts, "unet") and not hasattr(parts, "image_unet")
    if role == "vd":  # the whole role, with its post-load step (dual-guided UNet)
        whole = load_model(role, folder)
        assert whole.text_len == 77 and whole.image_len == 17 and whole.text_unet is None
        with pytest.raises(KeyError, match="no component 'unet'"):
            load_model(role, folder, components=["unet"])
        import shutil

        shutil.rmtree(folder / "image_encoder")
        with pytest.raises(FileNotFoundError, match="image_encoder"):
            load_model(role, folder, components=["image_encoder"])


def test_model_rules_pick_fetch_or_tiny(tmp_path):
    """pretrained -> local rule fetch_models; tiny -> models_build_tiny; roles constrained to registered ones."""
    proc = run_snakemake("-n", "--configfile", REPO / "config" / "config.yaml", "--directory", tmp_path,
                         "--workflow-profile", "none", "resources/models/vdvae", "resources/models/vd")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert re.search(r"fetch_models\s+2", out) and "models_build_tiny" not in out
    smk = (REPO / "workflow" / "rules" / "models.smk").read_text()
    fetch_block = smk[smk.index("rule fetch_models:"):smk.index("rule models_build_tiny:")]
    assert "localrule: True" in fetch_block  # compute nodes may have no internet
    proc = run_snakemake("-n", "--configfile", REPO / "config" / "demo.yaml", "--directory", tmp_path,
                         "--workflow-profile", "none", "resources/demo/models_tiny/sd",
                         "resources/demo/models_tiny/vdvae")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert re.search(r"models_build_tiny\s+2", out) and "fetch_models" not in out
    proc = run_snakemake("-n", "--configfile", REPO / "config" / "config.yaml", "--directory", tmp_path,
                         "--workflow-profile", "none", "resources/models/alexnet")
    assert proc.returncode != 0 and "MissingRuleException" in proc.stdout + proc.stderr
