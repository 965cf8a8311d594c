"""The generation engine: FIFO queue, loaded checkpoint, options, time model, response bodies."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random
import re
import time
from dataclasses import dataclass
from typing import Any

from . import controlnet
from .config import SimConfig
from .errors import ApiError
from .images import b64, decode_image, image_digest, make_encoder
from .info import Job
from .models import LATENT_UPSCALE_MODES, Checkpoint, Inventory, resolve_sampler
from .options import RESTRICTED, default_options
from .stats import SimStats

log = logging.getLogger(__name__)

SELECTABLE_SCRIPTS = frozenset(
    {"prompt matrix", "prompts from file or textbox", "x/y/z plot", "controlnet m2m"}
)
ALWAYSON_SCRIPTS = frozenset(
    {"controlnet", "refiner", "seed", "sampler", "comments", "hypertile", "extra options"}
)
FORGE_ALWAYSON = frozenset({"never oom integrated", "freeu integrated", "kohya hrfix integrated"})
OOM_MESSAGE = (
    "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 8.00 GiB total capacity; "
    "6.93 GiB already allocated; 0 bytes free; 7.12 GiB reserved in total by PyTorch)"
)
_LORA_TAG = re.compile(r"<lora:([^:>]+)(?::[^>]*)?>")


@dataclass(slots=True)
class Progress:
    """`shared.state` as /sdapi/v1/progress reports it."""

    job: str = ""
    job_count: int = 0
    job_no: int = 0
    sampling_steps: int = 0
    job_timestamp: str = "0"
    started: float = 0.0
    batch_started: float = 0.0
    batch_seconds: float = 0.0
    interrupted: bool = False
    skipped: bool = False


class Engine:
    """One simulated GPU: one generation at a time, in arrival order (asyncio.Lock is FIFO)."""

    def __init__(self, config: SimConfig, stats: SimStats) -> None:
        self.config = config
        self.stats = stats
        self.inv = Inventory(config)
        self.forge = config.flavor == "forge"
        first = self.inv.checkpoints[0]
        self.opts = default_options(first.title, first.sha256, self.forge)
        self.loaded: Checkpoint = first
        self.lock = asyncio.Lock()
        self.encoder = make_encoder(config.encoder)
        self.state = Progress()
        self._wake = asyncio.Event()
        self._seeds = random.Random(config.fault_seed ^ 0x5EED)

    # ----- queue-free routes -----

    def progress(self) -> dict[str, Any]:
        s = self.state
        progress, eta = 0.0, 0.0
        step = 0
        if s.job_count > 0:
            now = time.monotonic()
            frac = 1.0
            if s.batch_seconds > 0:
                frac = min((now - s.batch_started) / s.batch_seconds, 1.0)
            step = int(frac * s.sampling_steps)
            progress = 0.01 + s.job_no / s.job_count
            if s.sampling_steps > 0:
                progress += step / s.sampling_steps / s.job_count
            since = max(now - s.started, 1e-6)
            eta = since / progress - since
            progress = min(progress, 1.0)
        return {
            "progress": progress,
            "eta_relative": eta,
            "state": {
                "skipped": s.skipped,
                "interrupted": s.interrupted,
                "stopping_generation": False,
                "job": s.job,
                "job_count": s.job_count,
                "job_timestamp": s.job_timestamp,
                "job_no": s.job_no,
                "sampling_step": step,
                "sampling_steps": s.sampling_steps,
            },
            "current_image": None,
            "textinfo": None,
        }

    def interrupt(self) -> None:
        self.state.interrupted = True
        self._wake.set()

    def skip(self) -> None:
        self.state.skipped = True
        self._wake.set()

    async def refresh(self) -> None:
        async with self.lock:
            await asyncio.sleep(0)

    async def set_options(self, body: dict[str, Any]) -> None:
        """POST /sdapi/v1/options: validate the checkpoint, set keys, load the model (queued)."""
        if self.forge:
            body = {k: v for k, v in body.items() if self.opts.get(k, object()) != v}
        target = body.get("sd_model_checkpoint")
        ckpt = None
        if target is not None:
            ckpt = self.inv.checkpoint(target) if isinstance(target, str) else None
            if ckpt is None:
                raise ApiError.internal("RuntimeError", f"model {target!r} not found")
        for key, value in body.items():
            self._set_opt(key, value)
        if ckpt is not None and not self.forge:  # Forge loads lazily, at the next generation
            async with self.lock:
                await self._load(ckpt)

    def _set_opt(self, key: str, value: Any) -> None:
        if key in RESTRICTED:
            return
        if self.opts.get(key) == value:
            return
        if key not in self.opts:
            raise ApiError.internal("KeyError", repr(key))
        self.opts[key] = value

    def scripts(self) -> dict[str, list[str]]:
        """GET /sdapi/v1/scripts: lower-case titles, selectable first."""
        alwayson = ALWAYSON_SCRIPTS | (FORGE_ALWAYSON if self.forge else frozenset())
        titles = sorted(SELECTABLE_SCRIPTS) + sorted(alwayson)
        return {"txt2img": titles, "img2img": titles}

    # ----- generation -----

    def check_scripts(self, req: dict[str, Any]) -> None:
        """Script lookups happen before the queue (422s), as in `Api.init_script_args`."""
        name = req.get("script_name")
        if name and name.lower() not in SELECTABLE_SCRIPTS:
            raise ApiError.http(422, f"Script '{name}' not found")
        if name:
            log.warning("script %r is accepted but not simulated", name)
        known = ALWAYSON_SCRIPTS | (FORGE_ALWAYSON if self.forge else frozenset())
        for title in req.get("alwayson_scripts") or {}:
            lowered = str(title).lower()
            if lowered in SELECTABLE_SCRIPTS:
                raise ApiError.http(
                    422, "Cannot have a selectable script in the always on scripts params"
                )
            if lowered not in known:
                raise ApiError.http(422, f"Script '{title}' not found")

    async def generate(self, route: str, req: dict[str, Any], fail: bool) -> dict[str, Any]:
        self.check_scripts(req)
        if route == "img2img":
            if req["init_images"] is None:
                raise ApiError.http(404, "Init image not found")
            if req["mask"] is not None and decode_image(req["mask"]) is None:
                raise ApiError.http(500, "Invalid encoded image")
        async with self.lock:
            saved: dict[str, Any] = {}
            try:
                return await self._run(route, req, fail, saved)
            finally:
                if req["override_settings_restore_afterwards"] is not False:
                    self.opts.update(saved)
                self.state = Progress()

    def closest_checkpoint(self, name: str) -> Checkpoint | None:
        """`sd_models.get_closet_checkpoint_match`: alias, else the shortest title containing it."""
        exact = self.inv.checkpoint(name)
        if exact is not None:
            return exact
        found = [c for c in self.inv.checkpoints if name in c.title]
        return min(found, key=lambda c: len(c.title)) if found else None

    async def _load(self, ckpt: Checkpoint) -> None:
        if ckpt == self.loaded:
            return
        self.stats.switches += 1
        if self.config.switch_s > 0:
            await asyncio.sleep(self.config.switch_s)
        self.loaded = ckpt
        self.opts["sd_checkpoint_hash"] = ckpt.sha256

    async def _run(
        self, route: str, req: dict[str, Any], fail: bool, saved: dict[str, Any]
    ) -> dict[str, Any]:
        self.state = Progress(job=route, job_timestamp=time.strftime("%Y%m%d%H%M%S"))
        units = self._controlnet_units(req)
        overrides = dict(req.get("override_settings") or {})
        target = overrides.get("sd_model_checkpoint")
        if not isinstance(target, str) or self.inv.checkpoint(target) is None:
            overrides.pop("sd_model_checkpoint", None)
        for key in overrides:
            if key in self.opts and key not in saved:
                saved[key] = self.opts[key]
        ckpt = self.inv.checkpoint(str(self.opts["sd_model_checkpoint"])) or self.loaded
        for key, value in overrides.items():
            self._set_opt(key, value)
            if key == "sd_model_checkpoint":
                ckpt = self.inv.checkpoint(value) or ckpt
        await self._load(ckpt)
        self.stats.per_checkpoint[ckpt.title] += 1
        job, out_size, extra_sizes = self._prepare(route, req, ckpt, units)
        init_digest = self._init_images(route, req, job)
        if fail:
            raise ApiError.internal("OutOfMemoryError", OOM_MESSAGE)
        batches = await self._work(route, req, job)
        return self._respond(route, req, job, units, out_size, extra_sizes, init_digest, batches)

    def _controlnet_units(self, req: dict[str, Any]) -> list[controlnet.Unit]:
        scripts = req.get("alwayson_scripts") or {}
        value = next((v for k, v in scripts.items() if str(k).lower() == "controlnet"), None)
        if value is None:
            return []
        return controlnet.parse_units(
            value,
            forge=self.forge,
            modules=self.config.cn_modules,
            slots=int(self.opts.get("control_net_unit_count", 3)),
        )

    def _prepare(
        self, route: str, req: dict[str, Any], ckpt: Checkpoint, units: list[controlnet.Unit]
    ) -> tuple[Job, tuple[int, int], list[tuple[int, int]]]:
        width, height = _int(req["width"], 512), _int(req["height"], 512)
        steps = _int(req["steps"], 50)
        batch_size, n_iter = max(_int(req["batch_size"], 1), 1), max(_int(req["n_iter"], 1), 1)
        sampler, scheduler = resolve_sampler(
            req.get("sampler_name") or req.get("sampler_index"), req.get("scheduler")
        )
        extra: dict[str, Any] = {}
        out_size = (width, height)
        if route == "txt2img" and req.get("enable_hr"):
            out_size = self._hires(req, width, height, extra)
        if route == "img2img":
            extra["Denoising strength"] = req["denoising_strength"]
        self._lora_hashes(req, extra)
        for unit in units:
            extra[f"ControlNet {unit.index}"] = unit.infotext()
        seed = _fixed_seed(req["seed"], self._seeds)
        subseed = _fixed_seed(req["subseed"], self._seeds)
        strength = float(req["subseed_strength"] or 0.0)
        n = batch_size * n_iter
        all_seeds = [seed + i for i in range(n)] if strength == 0 else [seed] * n
        vae = str(self.opts.get("sd_vae", "Automatic"))
        # An unknown VAE falls back to the checkpoint's own, as A1111 logs and carries on.
        vae_name = vae if vae in {v.rsplit("/", 1)[-1] for v in self.config.vaes} else None
        job = Job(
            prompt=req["prompt"] or "",
            negative_prompt=req["negative_prompt"] or "",
            seed=seed,
            subseed=subseed,
            subseed_strength=strength,
            all_seeds=all_seeds,
            all_subseeds=[subseed + i for i in range(n)],
            width=width,
            height=height,
            sampler=sampler,
            scheduler=scheduler,
            cfg_scale=float(req["cfg_scale"] if req["cfg_scale"] is not None else 7.0),
            steps=steps,
            batch_size=batch_size,
            n_iter=n_iter,
            model_name=ckpt.name_for_extra,
            model_hash=ckpt.shorthash,
            vae_name=vae_name,
            vae_hash=hashlib.sha256(vae.encode()).hexdigest()[:10] if vae_name else None,
            seed_resize_from_w=_int(req["seed_resize_from_w"], -1),
            seed_resize_from_h=_int(req["seed_resize_from_h"], -1),
            denoising_strength=req["denoising_strength"],
            clip_skip=int(self.opts.get("CLIP_stop_at_last_layers", 1)),
            version=self.config.server_version,
            job_timestamp=self.state.job_timestamp,
            restore_faces=bool(req["restore_faces"]),
            tiling=bool(req["tiling"]),
            styles=list(req["styles"] or []),
            image_cfg_scale=req.get("image_cfg_scale"),
            extra=extra,
            is_img2img=route == "img2img",
        )
        extra_sizes = self._map_sizes(req, units, (width, height), out_size)
        return job, out_size, extra_sizes

    def _hires(
        self, req: dict[str, Any], width: int, height: int, extra: dict[str, Any]
    ) -> tuple[int, int]:
        upscaler = req.get("hr_upscaler")
        if upscaler is not None and upscaler not in LATENT_UPSCALE_MODES + self.inv.upscaler_names:
            raise ApiError.internal("Exception", f"could not find upscaler named {upscaler}")
        hr_ckpt = req.get("hr_checkpoint_name")
        if hr_ckpt and hr_ckpt != "Use same checkpoint" and not self.closest_checkpoint(hr_ckpt):
            raise ApiError.internal("Exception", f"Could not find checkpoint with name {hr_ckpt}")
        if self.forge and req.get("hr_additional_modules") is None:
            raise ApiError.internal("TypeError", "argument of type 'NoneType' is not iterable")
        strength = req.get("denoising_strength")
        if strength is None:
            raise ApiError.internal(
                "TypeError", "'>' not supported between instances of 'NoneType' and 'int'"
            )
        rx, ry = _int(req["hr_resize_x"], 0), _int(req["hr_resize_y"], 0)
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
        if _int(req["hr_second_pass_steps"], 0):
            extra["Hires steps"] = _int(req["hr_second_pass_steps"], 0)
        extra["Hires upscaler"] = upscaler
        return size

    def _lora_hashes(self, req: dict[str, Any], extra: dict[str, Any]) -> None:
        if req.get("disable_extra_networks"):
            return
        known = {lora.rsplit("/", 1)[-1] for lora in self.config.loras}
        names = [n for n in dict.fromkeys(_LORA_TAG.findall(req["prompt"] or "")) if n in known]
        if names:
            extra["Lora hashes"] = ", ".join(
                f"{n}: {hashlib.sha256(n.encode()).hexdigest()[:12]}" for n in names
            )

    def _map_sizes(
        self,
        req: dict[str, Any],
        units: list[controlnet.Unit],
        size: tuple[int, int],
        hr_size: tuple[int, int],
    ) -> list[tuple[int, int]]:
        """Detected-map sizes; empty when the CN script fails at run time (logged, not raised)."""
        if not units or self.opts.get("control_net_no_detectmap"):
            return []
        for unit in units:
            needs_model = unit.module not in controlnet.MODEL_FREE
            if needs_model and self.inv.cn_model(unit.model) is None:
                log.warning("Error running process: ControlNet model not found: %s", unit.model)
                return []
            image = unit.image
            if image is None and "init_images" in req:
                image = (req.get("init_images") or [None])[0]
            if not isinstance(image, str) or decode_image(image) is None:
                log.warning(
                    "Error running process: ControlNet unit %d has no usable image", unit.index
                )
                return []
        sizes: list[tuple[int, int]] = []
        for unit in units:
            if not unit.save_detected_map:
                continue
            both = req.get("enable_hr") and unit.hr_option == "Both"
            sizes += [hr_size, size] if both else [size]
        return sizes

    def _init_images(self, route: str, req: dict[str, Any], job: Job) -> str:
        if route != "img2img":
            return ""
        images = req["init_images"]
        decoded = [decode_image(i) if isinstance(i, str) else None for i in images]
        if not decoded or any(d is None for d in decoded):
            raise ApiError.http(500, "Invalid encoded image")
        if len(images) > 1:
            if len(images) > job.batch_size:
                raise ApiError.internal(
                    "RuntimeError",
                    f"bad number of images passed: {len(images)}; "
                    f"expecting {job.batch_size} or less",
                )
            job.batch_size = len(images)
            n = job.batch_size * job.n_iter
            job.all_seeds = (
                [job.seed + i for i in range(n)] if not job.subseed_strength else [job.seed] * n
            )
            job.all_subseeds = [job.subseed + i for i in range(n)]
        digest = hashlib.sha256()
        for d in decoded:
            assert d is not None
            digest.update(hashlib.sha256(d[0]).digest())
        return digest.hexdigest()[:16]

    def _seconds_per_batch(self, route: str, req: dict[str, Any], job: Job) -> float:
        steps = job.steps
        if route == "img2img" and not self.opts.get("img2img_fix_steps"):
            steps = int(steps * float(job.denoising_strength or 0.0))
        units = steps * job.width * job.height / 512**2
        if route == "txt2img" and req.get("enable_hr"):
            hr_steps = _int(req["hr_second_pass_steps"], 0) or job.steps
            units *= 1 + hr_steps / max(job.steps, 1) * 4  # rough 2x-area second pass
        return self.config.ms_per_step / 1000 * units * job.batch_size / self.config.speed

    async def _work(self, route: str, req: dict[str, Any], job: Job) -> int:
        """Sleep per batch; interrupt ends the run after the current batch, skip ends the batch."""
        per_batch = self._seconds_per_batch(route, req, job)
        s = self.state
        s.job_count, s.sampling_steps, s.started = job.n_iter, job.steps, time.monotonic()
        done = 0
        for n in range(job.n_iter):
            s.skipped = False
            if s.interrupted:
                break
            s.job_no, s.batch_started, s.batch_seconds = n, time.monotonic(), per_batch
            await self._sleep(per_batch)
            done += 1
        return done

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        self._wake.clear()
        if self.state.interrupted or self.state.skipped:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def _respond(
        self,
        route: str,
        req: dict[str, Any],
        job: Job,
        units: list[controlnet.Unit],
        out_size: tuple[int, int],
        map_sizes: list[tuple[int, int]],
        init_digest: str,
        batches: int,
    ) -> dict[str, Any]:
        count = batches * job.batch_size
        job.all_seeds = job.all_seeds[:count] or job.all_seeds[:0]
        job.all_subseeds = job.all_subseeds[:count]
        infotexts = [job.infotext(i) for i in range(count)]
        w, h = max(out_size[0] // 8 * 8, 8), max(out_size[1] // 8 * 8, 8)
        ckpt_key = f"{job.model_hash}{init_digest}"
        digests = [
            image_digest(job.prompt, job.negative_prompt, s, ckpt_key, w, h) for s in job.all_seeds
        ]
        send = req["send_images"] is not False
        images: list[str] = []
        first = 0
        want_grid = req.get("save_images") and self.opts.get("return_grid") and count >= 2
        if want_grid:
            first = 1
            cols = math.ceil(math.sqrt(count))
            rows = math.ceil(count / cols)
            grid_digest = hashlib.sha256(b"".join(digests)).digest()
            infotexts.insert(0, job.infotext(0))
            if send:
                images.append(
                    b64(self.encoder.encode(grid_digest, w * cols, h * rows, infotexts[0]))
                )
        if send:
            text_index = first
            for digest in digests:
                images.append(b64(self.encoder.encode(digest, w, h, infotexts[text_index])))
                text_index += 1
            for i, (mw, mh) in enumerate(map_sizes if count else []):
                map_digest = hashlib.sha256(digests[0] + f"map{i}".encode()).digest()
                images.append(
                    b64(
                        self.encoder.encode(
                            map_digest, max(mw // 8 * 8, 8), max(mh // 8 * 8, 8), None
                        )
                    )
                )
        self.stats.generations += 1
        self.stats.images += count
        params = dict(req)
        if route == "img2img" and not req.get("include_init_images"):
            params["init_images"] = None
            params["mask"] = None
        return {"images": images, "parameters": params, "info": job.info(infotexts, first)}


def _int(value: Any, default: int) -> int:
    return default if value is None else int(value)


def _fixed_seed(value: Any, rng: random.Random) -> int:
    """`processing.get_fixed_seed`: -1 or None is random, anything else is used as given."""
    if value is None or value == -1:
        return rng.randrange(4294967294)
    return int(value)
