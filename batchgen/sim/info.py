"""Infotext and `info` JSON, in the order and format of A1111 `create_infotext` / `Processed.js`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


def quote(value: Any) -> Any:
    """`infotext_utils.quote`: JSON-quote values holding `,`, `:` or a newline."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return value
    return json.dumps(text, ensure_ascii=False)


@dataclass(slots=True)
class Job:
    """One resolved generation: what the processing object holds once seeds are fixed."""

    prompt: str
    negative_prompt: str
    seed: int
    subseed: int
    subseed_strength: float
    all_seeds: list[int]
    all_subseeds: list[int]
    width: int
    height: int
    sampler: str
    scheduler: str
    cfg_scale: float
    steps: int
    batch_size: int
    n_iter: int
    model_name: str
    model_hash: str
    vae_name: str | None
    vae_hash: str | None
    seed_resize_from_w: int
    seed_resize_from_h: int
    denoising_strength: float | None
    clip_skip: int
    version: str
    job_timestamp: str
    restore_faces: bool = False
    tiling: bool = False
    styles: list[str] = field(default_factory=list)
    image_cfg_scale: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    is_img2img: bool = False

    def set_batch_size(self, batch_size: int) -> None:
        """Fix batch_size and derive the seeds: base + i unless a variation strength is set."""
        self.batch_size = batch_size
        n = batch_size * self.n_iter
        if self.subseed_strength == 0:
            self.all_seeds = [self.seed + i for i in range(n)]
        else:
            self.all_seeds = [self.seed] * n
        self.all_subseeds = [self.subseed + i for i in range(n)]

    def infotext(self, index: int) -> str:
        params: dict[str, Any] = {
            "Steps": self.steps,
            "Sampler": self.sampler,
            "Schedule type": self.scheduler,
            "CFG scale": self.cfg_scale,
            "Image CFG scale": self.image_cfg_scale,
            "Seed": self.all_seeds[index],
            "Face restoration": "CodeFormer" if self.restore_faces else None,
            "Size": f"{self.width}x{self.height}",
            "Model hash": self.model_hash,
            "Model": self.model_name,
            "VAE hash": self.vae_hash,
            "VAE": self.vae_name,
            "Variation seed": self.all_subseeds[index] if self.subseed_strength else None,
            "Variation seed strength": self.subseed_strength or None,
            "Seed resize from": (
                f"{self.seed_resize_from_w}x{self.seed_resize_from_h}"
                if self.seed_resize_from_w > 0 and self.seed_resize_from_h > 0
                else None
            ),
            "Denoising strength": self.denoising_strength if self.is_img2img else None,
            "Clip skip": self.clip_skip if self.clip_skip > 1 else None,
            "Tiling": "True" if self.tiling else None,
            **self.extra,
            "Version": self.version,
        }
        text = ", ".join(
            k if k == v else f"{k}: {quote(v)}" for k, v in params.items() if v is not None
        )
        negative = f"\nNegative prompt: {self.negative_prompt}" if self.negative_prompt else ""
        return f"{self.prompt}{negative}\n{text}".strip()

    def info(self, infotexts: list[str], index_of_first_image: int = 0) -> str:
        n = len(self.all_seeds)
        obj = {
            "prompt": self.prompt,
            "all_prompts": [self.prompt] * n,
            "negative_prompt": self.negative_prompt,
            "all_negative_prompts": [self.negative_prompt] * n,
            "seed": self.all_seeds[0] if self.all_seeds else self.seed,
            "all_seeds": self.all_seeds,
            "subseed": self.all_subseeds[0] if self.all_subseeds else self.subseed,
            "all_subseeds": self.all_subseeds,
            "subseed_strength": self.subseed_strength,
            "width": self.width,
            "height": self.height,
            "sampler_name": self.sampler,
            "cfg_scale": self.cfg_scale,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "restore_faces": self.restore_faces,
            "face_restoration_model": "CodeFormer" if self.restore_faces else None,
            "sd_model_name": self.model_name,
            "sd_model_hash": self.model_hash,
            "sd_vae_name": self.vae_name,
            "sd_vae_hash": self.vae_hash,
            "seed_resize_from_w": self.seed_resize_from_w,
            "seed_resize_from_h": self.seed_resize_from_h,
            "denoising_strength": self.denoising_strength,
            "extra_generation_params": self.extra,
            "index_of_first_image": index_of_first_image,
            "infotexts": infotexts,
            "styles": self.styles,
            "job_timestamp": self.job_timestamp,
            "clip_skip": self.clip_skip,
            "is_using_inpainting_conditioning": False,
            "version": self.version,
        }
        return json.dumps(obj, default=lambda o: None)
