"""Turn a validated request into a resolved `Job`: sampler, seeds, sizes, hires, extra params."""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

from . import controlnet
from .errors import ApiError
from .info import Job
from .models import LATENT_UPSCALE_MODES, Checkpoint, resolve_sampler
from .state import ServerState

_LORA_TAG = re.compile(r"<lora:([^:>]+)(?::[^>]*)?>")


def fixed_seed(value: Any, rng: random.Random) -> int:
    """`processing.get_fixed_seed`: -1 or None is random, anything else is used as given."""
    if value is None or value == -1:
        return rng.randrange(4294967294)
    return int(value)


def as_int(value: Any, default: int) -> int:
    return default if value is None else int(value)


def build_job(
    state: ServerState,
    route: str,
    req: dict[str, Any],
    ckpt: Checkpoint,
    units: list[controlnet.Unit],
    rng: random.Random,
) -> tuple[Job, tuple[int, int]]:
    """The Job and the size of the returned images (the hires size when enable_hr)."""
    width, height = as_int(req["width"], 512), as_int(req["height"], 512)
    batch_size = max(as_int(req["batch_size"], 1), 1)
    n_iter = max(as_int(req["n_iter"], 1), 1)
    sampler, scheduler = resolve_sampler(
        req.get("sampler_name") or req.get("sampler_index"), req.get("scheduler")
    )
    extra: dict[str, Any] = {}
    out_size = (width, height)
    if route == "txt2img" and req.get("enable_hr"):
        out_size = _hires(state, req, width, height, extra)
    if route == "img2img":
        extra["Denoising strength"] = req["denoising_strength"]
    _refiner(state, req, extra)
    _lora_hashes(state, req, extra)
    for unit in units:
        extra[f"ControlNet {unit.index}"] = unit.infotext()
    seed, subseed = fixed_seed(req["seed"], rng), fixed_seed(req["subseed"], rng)
    strength = float(req["subseed_strength"] or 0.0)
    vae = str(state.opts.get("sd_vae", "Automatic"))
    # An unknown VAE falls back to the checkpoint's own, as A1111 logs and carries on.
    known_vae = vae in {v.rsplit("/", 1)[-1] for v in state.config.vaes}
    styles = list(req["styles"] or [])
    job = Job(
        prompt=apply_styles(state.config.style_texts(), styles, req["prompt"] or ""),
        negative_prompt=req["negative_prompt"] or "",
        seed=seed,
        subseed=subseed,
        subseed_strength=strength,
        all_seeds=[],
        all_subseeds=[],
        width=width,
        height=height,
        sampler=sampler,
        scheduler=scheduler,
        cfg_scale=float(req["cfg_scale"] if req["cfg_scale"] is not None else 7.0),
        steps=as_int(req["steps"], 50),
        batch_size=batch_size,
        n_iter=n_iter,
        model_name=ckpt.name_for_extra,
        model_hash=ckpt.shorthash,
        vae_name=vae if known_vae else None,
        vae_hash=hashlib.sha256(vae.encode()).hexdigest()[:10] if known_vae else None,
        seed_resize_from_w=as_int(req["seed_resize_from_w"], -1),
        seed_resize_from_h=as_int(req["seed_resize_from_h"], -1),
        denoising_strength=req["denoising_strength"],
        clip_skip=int(state.opts.get("CLIP_stop_at_last_layers", 1)),
        version=state.config.server_version,
        job_timestamp=state.progress.job_timestamp,
        restore_faces=bool(req["restore_faces"]),
        tiling=bool(req["tiling"]),
        styles=styles,
        image_cfg_scale=req.get("image_cfg_scale"),
        extra=extra,
        is_img2img=route == "img2img",
    )
    job.set_batch_size(batch_size)
    return job, out_size


def _hires(
    state: ServerState, req: dict[str, Any], width: int, height: int, extra: dict[str, Any]
) -> tuple[int, int]:
    upscaler = req.get("hr_upscaler")
    if upscaler is not None and upscaler not in LATENT_UPSCALE_MODES + state.inv.upscaler_names:
        raise ApiError.internal("Exception", f"could not find upscaler named {upscaler}")
    hr_ckpt = req.get("hr_checkpoint_name")
    hr_info = None
    if hr_ckpt and hr_ckpt != "Use same checkpoint":
        hr_info = state.closest_checkpoint(hr_ckpt)
        if hr_info is None:
            raise ApiError.internal("Exception", f"Could not find checkpoint with name {hr_ckpt}")
    if state.forge and req.get("hr_additional_modules") is None:
        raise ApiError.internal("TypeError", "argument of type 'NoneType' is not iterable")
    strength = req.get("denoising_strength")
    if strength is None:
        raise ApiError.internal(
            "TypeError", "'>' not supported between instances of 'NoneType' and 'int'"
        )
    rx, ry = as_int(req["hr_resize_x"], 0), as_int(req["hr_resize_y"], 0)
    scale = float(req["hr_scale"] if req["hr_scale"] is not None else 2.0)
    if rx == 0 and ry == 0:
        size = (int(width * scale), int(height * scale))
    elif ry == 0:
        size = (rx, rx * height // width)
    elif rx == 0:
        size = (ry * width // height, ry)
    else:
        size = (rx, ry)
    extra["Denoising strength"] = strength
    if rx == 0 and ry == 0:
        extra["Hires upscale"] = scale
    else:
        extra["Hires resize"] = f"{rx}x{ry}"
    if as_int(req["hr_second_pass_steps"], 0):
        extra["Hires steps"] = as_int(req["hr_second_pass_steps"], 0)
    extra["Hires upscaler"] = upscaler
    if hr_info is not None:
        extra["Hires checkpoint"] = hr_info.short_title
    return size


def _refiner(state: ServerState, req: dict[str, Any], extra: dict[str, Any]) -> None:
    name = req.get("refiner_checkpoint")
    if name in (None, "", "None", "none"):
        return
    info = state.closest_checkpoint(str(name))
    if info is None:
        raise ApiError.internal("Exception", f"Could not find checkpoint with name {name}")
    extra["Refiner"] = info.short_title
    extra["Refiner switch at"] = req.get("refiner_switch_at")


def _lora_hashes(state: ServerState, req: dict[str, Any], extra: dict[str, Any]) -> None:
    if req.get("disable_extra_networks"):
        return
    known = {lora.rsplit("/", 1)[-1] for lora in state.config.loras}
    names = [n for n in dict.fromkeys(_LORA_TAG.findall(req["prompt"] or "")) if n in known]
    if names:
        extra["Lora hashes"] = ", ".join(
            f"{n}: {hashlib.sha256(n.encode()).hexdigest()[:12]}" for n in names
        )


def apply_styles(known: dict[str, str], names: list[str], prompt: str) -> str:
    """A1111's `apply_styles_to_prompt`: {prompt} is replaced, else the style is appended."""
    for name in names:
        text = known.get(name)
        if text is None:  # unknown names are ignored, as on the real server
            continue
        if "{prompt}" in text:
            prompt = text.replace("{prompt}", prompt)
        elif prompt:
            prompt = f"{prompt}, {text}"
        else:
            prompt = text
    return prompt
