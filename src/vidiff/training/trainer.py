"""The training loop: one function, read top to bottom.

    setup (accelerator, seed, task = models + loss, optimiser, LR schedule, EMA)
    resume from the latest checkpoint in output_dir, if any
    loop: grad_accum micro-batches -> clip -> step -> EMA -> log / checkpoint / preview
    final checkpoint, preview, export of a loadable model folder

The same code runs on one CPU and on many GPUs: ``accelerate launch`` or ``torchrun`` start the processes, accelerate
wraps the model (DDP, or FSDP when ``distributed.strategy: fsdp``) and handles mixed precision. Data order and the
random draws of each sample do not depend on the number of processes (see :mod:`vidiff.training.data` and
:mod:`vidiff.training.losses`).
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from vidiff.training.checkpointing import (
    TrainState,
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from vidiff.training.config import ConfigError, RunConfig, config_to_dict
from vidiff.training.data import BatchStream, build_batch_sampler, build_datasets
from vidiff.training.ema import ema_to, ema_weights, make_ema
from vidiff.training.logging import TrainLogger
from vidiff.training.losses import sample_generators
from vidiff.training.params import SelectorError, apply_trainable
from vidiff.training.tasks import make_task
from vidiff.utils.io import safe_torch_load

__all__ = ["TrainResult", "train"]


@dataclass
class TrainResult:
    step: int
    finished: bool  # reached max_steps (False: stopped at stop_at_step or by a signal)
    output_dir: Path
    model_dir: Path | None = None
    lora_path: Path | None = None  # train.lora runs: the adapter file (instead of a model folder)
    final_loss: float | None = None
    checkpoints: list[Path] = field(default_factory=list)
    previews: list[Path] = field(default_factory=list)


def _make_accelerator(cfg: RunConfig):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    kwargs: dict[str, Any] = {}
    if cfg.distributed.strategy == "fsdp":
        from accelerate import FullyShardedDataParallelPlugin

        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(**cfg.distributed.fsdp)
    ddp = DistributedDataParallelKwargs(find_unused_parameters=cfg.distributed.find_unused_parameters)
    cpu = not torch.cuda.is_available()
    return Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=cpu, kwargs_handlers=[ddp], **kwargs)


def _seed_everything(seed: int) -> None:
    from accelerate.utils import set_seed

    set_seed(seed)  # python, numpy, torch (all devices)


class _StopFlag:
    """SIGTERM/SIGINT ask the loop to checkpoint and stop after the current step (a second SIGINT aborts)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a worker thread): leave signals alone
                return

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def train(cfg: RunConfig) -> TrainResult:
    """Run (or resume) the training described by ``cfg``; returns where it stopped and what it wrote."""
    cfg.validate()
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    accelerator = _make_accelerator(cfg)
    try:
        return _train(cfg, accelerator)
    finally:
        _shutdown(accelerator)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _shutdown(accelerator: Any) -> None:
    """Leave no process group, no tracker and no accelerate singleton behind (clean exit, and re-entrant in tests)."""
    from accelerate.state import AcceleratorState, GradientState

    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    sys.stdout.flush()
    sys.stderr.flush()


def _train(cfg: RunConfig, accelerator: Any) -> TrainResult:
    out = Path(cfg.output_dir)
    ckpt_root, samples_dir = out / "checkpoints", out / "samples"
    main = accelerator.is_main_process
    say = accelerator.print
    device = accelerator.device
    fsdp = accelerator.distributed_type.name == "FSDP"
    if cfg.distributed.strategy == "fsdp" and not fsdp:
        say("note: distributed.strategy=fsdp needs GPUs; accelerate runs plain data parallel here")

    # ------------------------------------------------------------------ setup
    _seed_everything(cfg.seed)
    try:
        task = make_task(cfg, device)
        summary = apply_trainable(task.module, cfg.train.trainable, cfg.train.frozen)
    except SelectorError as err:
        raise ConfigError(f"train.trainable/frozen: {err}") from err
    described = summary.describe() if cfg.train.lora is None else _add_lora(cfg, task)
    say(f"[vidiff train] task {cfg.task}: {described}; {accelerator.num_processes} process(es) on {device}")
    for name, report in getattr(task, "inflation", {}).items():
        say(f"[vidiff train] {name} initialised from {cfg.model.init_from}: {report.describe()} "
            f"(list in {out / 'init_report.json'})")
    task.module.to(device)
    params = [p for p in task.module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay
    )
    from diffusers.optimization import get_scheduler

    lr_schedule = get_scheduler(
        cfg.optim.schedule, optimizer, num_warmup_steps=cfg.optim.warmup_steps, num_training_steps=cfg.train.max_steps
    )
    model, optimizer = accelerator.prepare(task.module, optimizer)  # the LR schedule is stepped once per step, by us
    params = [p for p in accelerator.unwrap_model(model).parameters() if p.requires_grad]
    ema = make_ema(params, cfg.train.ema_decay, cfg.train.ema_update_after_step) if cfg.train.ema else None

    state = TrainState(fingerprint=cfg.fingerprint())
    accelerator.register_for_checkpointing(state, lr_schedule)
    if ema is not None and not fsdp:
        accelerator.register_for_checkpointing(ema)

    # ------------------------------------------------------------------ resume
    if main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(ckpt_root)
    accelerator.wait_for_everyone()
    resume_from = find_resume_checkpoint(ckpt_root, cfg.checkpoint.resume)
    if resume_from is None and cfg.checkpoint.resume == "never" and list_checkpoints(ckpt_root):
        raise ConfigError(
            f"{ckpt_root} already holds checkpoints of another run and checkpoint.resume is 'never': "
            "choose a new output_dir or remove the old checkpoints"
        )
    if resume_from is not None:
        load_checkpoint(accelerator, resume_from)
        if ema is not None:
            if fsdp:
                ema.load_state_dict(safe_torch_load(resume_from / f"ema.rank{accelerator.process_index}"))
            ema_to(ema, device)
        if state.fingerprint != cfg.fingerprint():
            say(f"warning: {resume_from} was written with different settings (fingerprint {state.fingerprint} vs "
                f"{cfg.fingerprint()}); continuing with the current config")
            state.fingerprint = cfg.fingerprint()
        say(f"[vidiff train] resumed from {resume_from} at step {state.step} "
            f"(epoch {state.epoch}, batch {state.batch_in_epoch})")
    counters = getattr(task, "counters", None)
    if counters is not None:  # one dict, the task's and the state's: every checkpoint saves the live counts
        counters.update(state.task_counters)
        state.task_counters = counters
    if main:
        from vidiff.utils.io import atomic_write_text

        atomic_write_text(out / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        reports = getattr(task, "inflation", {})
        if reports:
            atomic_write_text(out / "init_report.json",
                              json.dumps({name: r.to_dict() for name, r in reports.items()}, indent=2) + "\n")

    # ------------------------------------------------------------------ data
    dataset, n_videos, n_images = build_datasets(cfg.data, _num_frames_hint(cfg), images_only=cfg.task == "t2i",
                                                 masks=cfg.train.foreground_weight > 0,
                                                 truth=getattr(task, "needs_ground_truth", False))
    batch_sampler = build_batch_sampler(cfg.data, n_videos, n_images, accelerator.num_processes,
                                        accelerator.process_index)
    stream = BatchStream(dataset, batch_sampler, num_workers=cfg.data.num_workers, epoch=state.epoch,
                         batch_in_epoch=state.batch_in_epoch, pin_memory=device.type == "cuda", seed=cfg.data.seed)
    logger = TrainLogger(out, ["step", "epoch", "lr", *task.metric_names, "grad_norm", "samples_per_s", "elapsed_s"],
                         enabled=main, resume_step=state.step, tensorboard=cfg.log.tensorboard)
    if main:
        say(f"[vidiff train] output {out}  (log {logger.csv_path}, checkpoints {ckpt_root})")

    probe = _binding_probe(cfg, task, main, say)
    if probe is not None:
        from vidiff.training.binding import truncate_binding_csv

        truncate_binding_csv(out, state.step)

    stop_step = cfg.train.stop_at_step or cfg.train.max_steps
    stopper = _StopFlag()
    stopper.install()
    result = TrainResult(step=state.step, finished=False, output_dir=out)
    progress = _progress(cfg, main, state.step)
    window: dict[str, float] = {}
    window_steps, window_samples, window_time = 0, 0, 0.0
    last_saved = state.step if resume_from is not None else -1
    try:
        # ------------------------------------------------------------------ loop
        while state.step < stop_step:
            t0 = time.perf_counter()
            model.train()
            step_metrics: dict[str, float] = {}
            step_samples = 0
            for micro in range(cfg.train.grad_accum_steps):
                batch = stream.next()
                local = len(batch["caption"])
                positions = [accelerator.process_index * local + j for j in range(local)]
                gens = sample_generators(cfg.seed, state.step, micro, positions)
                last = micro == cfg.train.grad_accum_steps - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(model):
                    loss, metrics = task.loss(model, batch, gens)
                    accelerator.backward(loss / cfg.train.grad_accum_steps)
                for k, v in metrics.items():
                    step_metrics[k] = step_metrics.get(k, 0.0) + v / cfg.train.grad_accum_steps
                step_samples += local * accelerator.num_processes
            grad_norm = None
            if cfg.train.max_grad_norm:
                grad_norm = float(accelerator.clip_grad_norm_(params, cfg.train.max_grad_norm))
            optimizer.step()
            lr_schedule.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(params)
            state.step += 1
            state.epoch, state.batch_in_epoch = stream.position.epoch, stream.position.batch_in_epoch
            state.samples_seen += step_samples
            dt = time.perf_counter() - t0
            state.train_seconds += dt

            # -------------------------------------------------------------- log
            for k, v in step_metrics.items():
                window[k] = window.get(k, 0.0) + v
            window_steps, window_samples, window_time = window_steps + 1, window_samples + step_samples, window_time + dt
            if grad_norm is not None:
                window["grad_norm"] = window.get("grad_norm", 0.0) + grad_norm
            if state.step % cfg.log.every == 0 or state.step == stop_step:
                means = _reduce_means(accelerator, window, window_steps)
                row = {"step": state.step, "epoch": state.epoch, "lr": lr_schedule.get_last_lr()[0], **means,
                       "samples_per_s": window_samples / max(window_time, 1e-9),
                       "elapsed_s": state.train_seconds}
                logger.log(row)
                result.final_loss = means.get("loss")
                if progress is not None:
                    progress.set_postfix(loss=f"{means.get('loss', float('nan')):.4f}",
                                         lr=f"{row['lr']:.2e}", samples_s=f"{row['samples_per_s']:.1f}")
                window, window_steps, window_samples, window_time = {}, 0, 0, 0.0
            if progress is not None:
                progress.update(1)
            if main and state.step % cfg.log.plot_every == 0:
                logger.plot(f"{cfg.task} training loss ({out.name})")

            # -------------------------------------------------------------- checkpoint / preview
            stop_now = _agree(accelerator, stopper.requested)
            if state.step % cfg.checkpoint.every == 0 or state.step == stop_step or stop_now:
                result.checkpoints.append(_save(accelerator, ckpt_root, state, cfg, ema, fsdp))
                last_saved = state.step
            if cfg.sample.every and state.step % cfg.sample.every == 0 and state.step < cfg.train.max_steps:
                result.previews += _preview(accelerator, task, ema, params, samples_dir, state.step, fsdp)
            if probe is not None and (state.step % cfg.binding.every == 0 or state.step == cfg.train.max_steps):
                _run_binding(accelerator, probe, task, model, ema, params, out, state.step, cfg)
            if stop_now:
                say(f"[vidiff train] stop requested: checkpointed step {state.step}; rerun the command to resume")
                break

        # ------------------------------------------------------------------ end
        result.step = state.step
        result.finished = state.step >= cfg.train.max_steps
        if state.step != last_saved:
            result.checkpoints.append(_save(accelerator, ckpt_root, state, cfg, ema, fsdp))
        if result.finished:
            if cfg.sample.at_end:
                result.previews += _preview(accelerator, task, ema, params, samples_dir, state.step, fsdp)
            if cfg.export.at_end and cfg.train.lora is not None:
                result.lora_path = _export_lora(accelerator, task, ema, params, out, state, cfg, result.final_loss)
            elif cfg.export.at_end:
                result.model_dir = _export(accelerator, task, model, ema, params, out / "model", state.step, cfg, fsdp)
        if main:
            plot = logger.plot(f"{cfg.task} training loss ({out.name})")
            binding_plot = out / "binding.png" if probe is not None and (out / "binding.png").is_file() else None
            for label, path in (("log", logger.csv_path), ("loss curve", plot), ("binding gap", binding_plot),
                                ("model", result.model_dir), ("lora", result.lora_path),
                                ("samples", result.previews[-1] if result.previews else None),
                                ("checkpoint", result.checkpoints[-1] if result.checkpoints else None)):
                if path is not None:
                    say(f"[vidiff train] {label}: {path}")
        return result
    finally:
        stopper.uninstall()
        if progress is not None:
            progress.close()
        stream.close()
        logger.close()


# ---------------------------------------------------------------------------------------------------------- helpers


def _num_frames_hint(cfg: RunConfig) -> int | None:
    v = cfg.data.videos
    return v.get("num_frames") if isinstance(v.get("num_frames"), int) else (16 if v.get("type") == "shapes" else None)


def _progress(cfg: RunConfig, main: bool, start: int):
    if not (main and cfg.log.progress):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.train.max_steps, initial=start, desc=f"train {cfg.task}", dynamic_ncols=True,
                file=sys.stderr)


def _reduce_means(accelerator: Any, window: dict[str, float], steps: int) -> dict[str, float]:
    """Means over the logging window and over processes."""
    keys = sorted(window)
    values = torch.tensor([window[k] / max(steps, 1) for k in keys], dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        values = accelerator.reduce(values, reduction="mean")
    return {k: float(v) for k, v in zip(keys, values.tolist()) if math.isfinite(v)}


def _agree(accelerator: Any, flag: bool) -> bool:
    """True on every process if any process got a stop signal (so all of them checkpoint the same step)."""
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(t, reduction="sum").item() > 0)


def _save(accelerator: Any, root: Path, state: TrainState, cfg: RunConfig, ema: Any, fsdp: bool) -> Path:
    extra = {"ema": ema.state_dict()} if (ema is not None and fsdp) else None
    path = save_checkpoint(accelerator, root, state, {"max_steps": cfg.train.max_steps, "task": cfg.task},
                           keep_last=cfg.checkpoint.keep_last, per_process_files=extra)
    return path


def _binding_probe(cfg: RunConfig, task: Any, main: bool, say: Any) -> Any:
    """The conditioning probe of a diffusion task (None for the autoencoder, when off, or on other processes)."""
    if not cfg.binding.every or not main or not hasattr(task, "binding_batch"):
        return None
    from vidiff.training.binding import BindingProbe

    batch = task.binding_batch(cfg.binding.num_samples, cfg.binding.seed)
    probe = BindingProbe(batch, cfg.binding.timesteps, cfg.binding.attributes, seed=cfg.binding.seed)
    say(f"[vidiff train] binding probe every {cfg.binding.every} steps on {len(batch.captions)} held-out clips: "
        f"{', '.join(probe.attributes)} at t = {', '.join(map(str, probe.timesteps))}")
    return probe


def _run_binding(accelerator: Any, probe: Any, task: Any, model: Any, ema: Any, params: list, out: Path, step: int,
                 cfg: RunConfig) -> None:
    """Measure the binding gap with the EMA weights (what export writes), log it, plot it, warn if words are ignored."""
    from vidiff.training.binding import append_binding_csv, plot_binding

    t0 = time.perf_counter()
    net = accelerator.unwrap_model(model)
    was = net.training
    net.eval()
    try:
        with torch.random.fork_rng(devices=[]), ema_weights(ema, params), torch.no_grad():
            result = probe.run(lambda *a: task.binding_loss(net, *a), step)
    finally:
        net.train(was)
    append_binding_csv(out, result)
    plot_binding(out, f"{cfg.task} binding ({out.name})")
    accelerator.print(f"[vidiff train] binding at step {step} ({time.perf_counter() - t0:.0f} s): {result.describe()}")
    ignored = [a for a in result.ignored() if a not in ("caption",)]
    if ignored and step >= 2 * cfg.binding.every:
        accelerator.print(f"[vidiff train] warning: swapping {', '.join(ignored)} changes the loss by < 1 %: the model "
                          "is not using these words yet")


def _preview(accelerator: Any, task: Any, ema: Any, params: list, folder: Path, step: int, fsdp: bool) -> list[Path]:
    """Previews from the EMA weights on the main process; the RNG is forked so training draws are unaffected."""
    if fsdp:
        accelerator.print("note: previews are skipped under FSDP (the weights are sharded); see the exported model")
        return []
    paths: list[Path] = []
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        import random

        import numpy as np

        py_state, np_state = random.getstate(), np.random.get_state()
        devices = [accelerator.device] if accelerator.device.type == "cuda" else []
        t0 = time.perf_counter()
        try:
            with torch.random.fork_rng(devices=devices), ema_weights(ema, params):
                paths = task.preview(folder, f"step-{step:07d}")
        except (OSError, RuntimeError, ValueError) as err:  # a failed preview must not cost the run
            accelerator.print(f"warning: previews at step {step} failed: {type(err).__name__}: {err}")
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        extra = f", reconstruction L1 {task.last_preview_l1:.4f}" if hasattr(task, "last_preview_l1") else ""
        if paths:
            accelerator.print(f"[vidiff train] previews at step {step} ({time.perf_counter() - t0:.1f} s{extra}): "
                              f"{paths[-1]}")
    accelerator.wait_for_everyone()
    return paths


def _add_lora(cfg: RunConfig, task: Any) -> str:
    """Freeze the whole trained module and add the adapters of ``train.lora`` to the U-Net: only they train (and the
    EMA, built from the trainable parameters, averages them only)."""
    from vidiff.models.lora import LoraError, add_lora, lora_parameters
    from vidiff.training.params import TrainableSummary

    spec = cfg.train.lora
    task.module.requires_grad_(False)
    try:
        modules = add_lora(task.unet, spec.rank, spec.alpha, spec.targets, spec.dropout)
    except LoraError as err:
        raise ConfigError(f"train.lora: {err}") from err
    params = lora_parameters(task.unet)
    for p in params:
        p.requires_grad_(True)
    total = sum(p.numel() for p in task.module.parameters())
    names = [n for n, p in task.module.named_parameters() if p.requires_grad]
    summary = TrainableSummary(names, [], sum(p.numel() for p in params), total)
    return f"LoRA rank {spec.rank} on {len(modules)} modules ({', '.join(spec.targets)}), {summary.describe()}"


def _export_lora(accelerator: Any, task: Any, ema: Any, params: list, out: Path, state: TrainState, cfg: RunConfig,
                 final_loss: float | None) -> Path:
    """``out/lora.safetensors`` (EMA weights when configured) and its card ``out/lora.md``, each written atomically."""
    from vidiff.models.lora import lora_file_from_unet, save_lora
    from vidiff.utils.io import atomic_write_text

    path = out / "lora.safetensors"
    with ema_weights(ema if cfg.export.use_ema else None, params):
        if accelerator.is_main_process:
            spec = cfg.train.lora
            words = list(spec.vocabulary)
            for source in (cfg.data.videos, cfg.data.images or {}):
                words += list((source.get("extra_colours") or {}) if isinstance(source, dict) else [])
            training = {"step": state.step, "train_seconds": round(state.train_seconds, 1), "task": cfg.task,
                        "init_from": cfg.model.init_from, "final_loss": final_loss}
            lora = lora_file_from_unet(task.unet, vocabulary=sorted(set(words)),
                                       extra={"training": json.dumps(training)})
            if cfg.model.init_from:
                lora.base_model["folder"] = str(cfg.model.init_from)
            save_lora(lora, path)
            atomic_write_text(out / "lora.md", _lora_card(lora, training, cfg, path))
    accelerator.wait_for_everyone()
    return path


def _lora_card(lora: Any, training: dict, cfg: RunConfig, path: Path) -> str:
    spec, base = cfg.train.lora, cfg.model.init_from or "MODEL_FOLDER"
    loss = "n/a" if training["final_loss"] is None else f"{training['final_loss']:.4f}"
    size = path.stat().st_size if path.is_file() else 0
    words = f"\nWords it teaches: {', '.join(lora.vocabulary)}.\n" if lora.vocabulary else ""
    return (f"# LoRA: {Path(cfg.output_dir).name}\n\n"
            f"Low-rank adapters for `{base}` ({lora.describe()}; alpha {spec.alpha or spec.rank}; "
            f"{size / 1024:.0f} KiB), trained by `vidiff train` for {training['step']} steps "
            f"({training['train_seconds']:.0f} s of training), final loss {loss}.\n{words}\n"
            f"```bash\nvidiff generate \"PROMPT\" --model {base} --lora {path}            # scale 1\n"
            f"vidiff generate \"PROMPT\" --model {base} --lora {path}:0.5        # half strength\n"
            f"vidiff lora merge {base} {path} -o merged_model                     # a full model folder\n```\n\n"
            "Format: docs/lora.md.\n")


def _export(accelerator: Any, task: Any, model: Any, ema: Any, params: list, folder: Path, step: int,
            cfg: RunConfig, fsdp: bool) -> Path:
    """Write the model folder (EMA weights when configured) atomically, replacing an older export."""
    from vidiff.utils.io import atomic_directory

    use_ema = ema if cfg.export.use_ema else None
    with ema_weights(use_ema, params):
        full_state = accelerator.get_state_dict(model) if fsdp else None
        if accelerator.is_main_process:
            if cfg.task == "autoencoder":
                calib = getattr(task, "preview_batch", None)
                if calib is not None:
                    factor = task.calibrate_scaling_factor(calib)
                    if factor is not None:
                        accelerator.print(f"[vidiff train] latent scaling factor (1/std): {factor:.5f}")
            with atomic_directory(folder, overwrite=True) as tmp:
                task.export(tmp, full_state, step)
    accelerator.wait_for_everyone()
    return folder

