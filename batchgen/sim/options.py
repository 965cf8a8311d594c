"""The settings (`opts.data`) of a simulated server and how GET /sdapi/v1/options renders them."""

from __future__ import annotations

from typing import Any

# A1111 silently ignores these in POST /options (`restrict_api`).
RESTRICTED = frozenset({"api_enable_requests", "api_forbid_local_requests", "api_useragent"})


def default_options(checkpoint_title: str, checkpoint_sha256: str, forge: bool) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "samples_save": True,
        "samples_format": "png",
        "grid_save": True,
        "return_grid": True,
        "enable_pnginfo": True,
        "jpeg_quality": 80,
        "outdir_samples": "",
        "sd_model_checkpoint": checkpoint_title,
        "sd_checkpoint_hash": checkpoint_sha256,
        "sd_checkpoints_limit": 1,
        "sd_vae": "Automatic",
        "sd_vae_overrides_per_model_preferences": True,
        "CLIP_stop_at_last_layers": 1,
        "eta_noise_seed_delta": 0,
        "randn_source": "GPU",
        "face_restoration": False,
        "face_restoration_model": "CodeFormer",
        "tiling": False,
        "eta_ancestral": 1.0,
        "eta_ddim": 0.0,
        "s_churn": 0.0,
        "s_tmin": 0.0,
        "s_tmax": 0.0,
        "s_noise": 1.0,
        "img2img_fix_steps": False,
        "api_enable_requests": True,
        "api_forbid_local_requests": True,
        "api_useragent": "",
        "show_progress_every_n_steps": 10,
        "live_previews_enable": True,
        "control_net_unit_count": 3,
        "control_net_no_detectmap": False,
        "control_net_model_cache_size": 2,
    }
    if forge:
        opts |= {
            "forge_preset": "sd",
            "forge_additional_modules": [],
            "forge_inference_memory": 1024,
            "forge_async_loading": "Queue",
            "forge_pin_shared_memory": "CPU",
        }
    return opts


def render_options(opts: dict[str, Any], forge: bool) -> dict[str, Any]:
    """A1111 types int options as float in `OptionsModel` (inferred); Forge returns opts as is."""
    if forge:
        return dict(opts)
    return {
        k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
        for k, v in opts.items()
    }
