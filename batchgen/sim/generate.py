"""The generation flow: scripts, queue, overrides, ControlNet, time model, response body."""

from __future__ import annotations

import hashlib
import logging
import math
import random
import string
import time
from typing import Any
from urllib.parse import urlsplit

from . import controlnet
from .errors import ApiError
from .images import b64, decode_image, image_digest, make_encoder
from .info import Job
from .prepare import as_int, build_job
from .state import Progress, ServerState

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
# modules/devices.py test_for_nans, as a real A1111 v1.10.1 answered (a1111-api.md §15).
NAN_MESSAGE = (
    "A tensor with NaNs was produced in Unet. Use --disable-nan-check commandline argument "
    "to disable this check."
)


class Engine:
    """Runs txt2img/img2img requests one at a time against a ServerState."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.encoder = make_encoder(state.config.encoder)
        self._seeds = random.Random(state.config.fault_seed ^ 0x5EED)
        self._task_ids = random.Random(state.config.fault_seed ^ 0x7A5C)

    def _alwayson(self) -> frozenset[str]:
        return ALWAYSON_SCRIPTS | (FORGE_ALWAYSON if self.state.forge else frozenset())

    def scripts(self) -> dict[str, list[str]]:
        """GET /sdapi/v1/scripts: lower-case titles, selectable first."""
        titles = sorted(SELECTABLE_SCRIPTS) + sorted(self._alwayson())
        return {"txt2img": titles, "img2img": titles}

    def check_scripts(self, req: dict[str, Any]) -> None:
        """Script lookups happen before the queue (422s), as in `Api.init_script_args`."""
        name = req.get("script_name")
        if name and name.lower() not in SELECTABLE_SCRIPTS:
            raise ApiError.http(422, f"Script '{name}' not found")
        if name:
            log.warning("script %r is accepted but not simulated", name)
        for title in req.get("alwayson_scripts") or {}:
            lowered = str(title).lower()
            if lowered in SELECTABLE_SCRIPTS:
                raise ApiError.http(
                    422, "Cannot have a selectable script in the always on scripts params"
                )
            if lowered not in self._alwayson():
                raise ApiError.http(422, f"Script '{title}' not found")

    async def generate(self, route: str, req: dict[str, Any], fail: bool) -> dict[str, Any]:
        """One request: checks before the queue, then the work under the FIFO lock."""
        self.check_scripts(req)
        if route == "img2img":
            if req["init_images"] is None:
                raise ApiError.http(404, "Init image not found")
            if req["mask"] is not None and decode_image(req["mask"]) is None:
                raise ApiError.http(500, "Invalid encoded image")
        state = self.state
        task_id = req.get("force_task_id") or _task_id(route, self._task_ids)
        state.tasks.add(task_id)
        try:
            async with state.lock:
                state.tasks.start(task_id)
                saved: dict[str, Any] = {}
                try:
                    return await self._run(route, req, fail, saved)
                finally:
                    if req["override_settings_restore_afterwards"]:
                        state.opts.update(saved)  # the checkpoint itself stays loaded
                    state.progress = Progress()
        finally:
            state.tasks.finish(task_id)

    async def _run(
        self, route: str, req: dict[str, Any], fail: bool, saved: dict[str, Any]
    ) -> dict[str, Any]:
        state = self.state
        state.progress = Progress(job=route, job_timestamp=time.strftime("%Y%m%d%H%M%S"))
        units = self._controlnet_units(req)  # Mikubill validates before process_images
        ckpt = state.apply_overrides(req.get("override_settings") or {}, saved)
        await state.load(ckpt)
        state.stats.per_checkpoint[ckpt.title] += 1
        job, out_size = build_job(state, route, req, ckpt, units, self._seeds)
        map_sizes = self._map_sizes(req, units, (job.width, job.height), out_size)
        init_digest = self._init_images(route, req, job)
        if fail:
            raise ApiError.internal("OutOfMemoryError", OOM_MESSAGE)
        marker = state.config.nan_marker
        if marker and marker in str(req.get("prompt") or ""):
            state.stats.faults["nan"] += 1
            raise ApiError.internal("NansException", NAN_MESSAGE)
        batches = await self._work(route, req, job, out_size)
        return self._respond(route, req, job, out_size, map_sizes, init_digest, batches)

    def _controlnet_units(self, req: dict[str, Any]) -> list[controlnet.Unit]:
        scripts = req.get("alwayson_scripts") or {}
        value = next((v for k, v in scripts.items() if str(k).lower() == "controlnet"), None)
        if value is None:
            return []
        return controlnet.parse_units(
            value,
            forge=self.state.forge,
            modules=self.state.config.cn_modules,
            slots=int(self.state.opts.get("control_net_unit_count", 3)),
        )

    def _map_sizes(
        self,
        req: dict[str, Any],
        units: list[controlnet.Unit],
        size: tuple[int, int],
        hr_size: tuple[int, int],
    ) -> list[tuple[int, int]]:
        """Detected-map sizes; none when the CN script fails at run time (logged, not raised)."""
        if not units or self.state.opts.get("control_net_no_detectmap"):
            return []
        for unit in units:
            needs_model = unit.module not in controlnet.MODEL_FREE
            if needs_model and self.state.inv.cn_model(unit.model) is None:
                log.warning("Error running process: ControlNet model not found: %s", unit.model)
                return []
            image = unit.image
            if image is None and "init_images" in req:
                image = (req.get("init_images") or [None])[0]
            if not isinstance(image, str) or decode_image(image) is None:
                log.warning("Error running process: ControlNet unit %d has no image", unit.index)
                return []
        sizes: list[tuple[int, int]] = []
        for unit in units:
            if unit.save_detected_map:
                both = req.get("enable_hr") and unit.hr_option == "Both"
                sizes += [hr_size, size] if both else [size]
        return sizes

    def _init_images(self, route: str, req: dict[str, Any], job: Job) -> str:
        """Decode img2img init images (inside the lock, as A1111 does); digest of their bytes."""
        if route != "img2img":
            return ""
        images = req["init_images"]
        for image in images:
            if isinstance(image, str) and image.startswith(("http://", "https://")):
                # The simulator never fetches; A1111 refuses local URLs by default.
                local = urlsplit(image).hostname in ("localhost", "127.0.0.1", "::1")
                detail = "Request to local resource not allowed" if local else "Invalid image url"
                raise ApiError.http(500, detail)
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
            job.set_batch_size(len(images))
        digest = hashlib.sha256()
        for item in decoded:
            if item is not None:
                digest.update(hashlib.sha256(item[0]).digest())
        return digest.hexdigest()[:16]

    def _seconds_per_batch(
        self, route: str, req: dict[str, Any], job: Job, out_size: tuple[int, int]
    ) -> float:
        """Time model: ms_per_step x steps x (pixels / 512^2) x batch_size / speed."""
        config = self.state.config
        steps = job.steps
        if route == "img2img" and not self.state.opts.get("img2img_fix_steps"):
            steps = int(steps * float(job.denoising_strength or 0.0))
        units = steps * job.width * job.height / 512**2
        if route == "txt2img" and req.get("enable_hr"):
            hr_steps = as_int(req["hr_second_pass_steps"], 0) or job.steps
            units += hr_steps * out_size[0] * out_size[1] / 512**2
        return config.ms_per_step / 1000 * units * job.batch_size / config.speed

    async def _work(
        self, route: str, req: dict[str, Any], job: Job, out_size: tuple[int, int]
    ) -> int:
        """Sleep per batch; interrupt ends the run after the current batch, skip ends the batch."""
        per_batch = self._seconds_per_batch(route, req, job, out_size)
        s = self.state.progress
        s.job_count, s.sampling_steps, s.started = job.n_iter, job.steps, time.monotonic()
        done = 0
        for n in range(job.n_iter):
            s.skipped = False
            if s.interrupted:
                break
            s.job_no, s.batch_started, s.batch_seconds = n, time.monotonic(), per_batch
            await self.state.sleep(per_batch)
            done += 1
        return done

    def _respond(
        self,
        route: str,
        req: dict[str, Any],
        job: Job,
        out_size: tuple[int, int],
        map_sizes: list[tuple[int, int]],
        init_digest: str,
        batches: int,
    ) -> dict[str, Any]:
        count = batches * job.batch_size
        job.all_seeds = job.all_seeds[:count]
        job.all_subseeds = job.all_subseeds[:count]
        infotexts = [job.infotext(i) for i in range(count)]
        w, h = max(out_size[0] // 8 * 8, 8), max(out_size[1] // 8 * 8, 8)
        key = f"{job.model_hash}{init_digest}"
        digests = [
            image_digest(job.prompt, job.negative_prompt, s, key, w, h) for s in job.all_seeds
        ]
        images: list[tuple[bytes, int, int, str | None]] = [
            (d, w, h, text) for d, text in zip(digests, infotexts, strict=True)
        ]
        first = 0
        if req.get("save_images") and self.state.opts.get("return_grid") and count >= 2:
            first = 1
            cols = math.ceil(math.sqrt(count))
            rows = math.ceil(count / cols)
            infotexts.insert(0, job.infotext(0))
            grid = hashlib.sha256(b"".join(digests)).digest()
            images.insert(0, (grid, w * cols, h * rows, infotexts[0]))
        for i, (mw, mh) in enumerate(map_sizes if count else []):
            mdigest = hashlib.sha256(digests[0] + f"map{i}".encode()).digest()
            images.append((mdigest, max(mw // 8 * 8, 8), max(mh // 8 * 8, 8), None))
        encoded = (
            [b64(self.encoder.encode(*image)) for image in images] if req["send_images"] else []
        )
        self.state.stats.generations += 1
        self.state.stats.images += count
        params = dict(req)
        if route == "img2img" and not req.get("include_init_images"):
            params["init_images"] = None
            params["mask"] = None
        return {"images": encoded, "parameters": params, "info": job.info(infotexts, first)}


def _task_id(route: str, rng: random.Random) -> str:
    """`progress.create_task_id`."""
    return f"task({route}-{''.join(rng.choices(string.ascii_letters + string.digits, k=7))})"
