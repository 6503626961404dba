"""``vidiff serve``: a web page for the three kinds of model folder (text-to-video, image-to-video, text-to-image).

Why a web demo next to the command line: someone trying the models should not need to learn ``vidiff generate`` and
``vidiff animate`` first. The page runs the very pipelines the commands run, with every sampling option the commands
have (pre-filled with the model folder's defaults), and shows what they write: the mp4, the GIF, the contact sheet and
the shapes-world probe verdict.

It is meant for a laptop or a closed network, so it reaches nothing outside the machine: the theme uses the system's
fonts (no web fonts), gradio's analytics and version check are off (the environment variable is set before gradio is
imported), there is no share link and no server-side rendering. One generation runs at a time (all three tabs share one
queue slot): two samplings at once on a small CPU machine only make both slower. Each pipeline is loaded on first use
and kept, so the second request starts sampling at once. Bad input (an empty prompt, a non-finite guidance scale, a
size the autoencoder cannot take, a missing or unreadable image) comes back as one clear message in the page.
"""

from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by gradio when it is imported and when a Blocks is made

import atexit
import errno
import functools
import html
import math
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from .cli_animate import FRAME_STRIDE_PLAYBACK_FPS
from .cli_common import SAMPLER_CHOICES, SEED_RANGE, check_model_folder, describe_error, probe_verdict, resolve_model

__all__ = ["Backend", "ModelInfo", "PortInUseError", "build_app", "launch", "offline_theme"]

DEFAULT_SEED = 123  # the CLI's default
REQUEST_MAX_AGE_S = 3600  # output folders of older requests are removed when a new request comes in
MAX_SIDE = 2048  # refuse sizes that would hold the single queue slot for hours on a CPU
MAX_FRAMES = 256
MAX_STEPS = 1000  # the training schedule's length
MODES = ("animate", "interpolate to a last image", "loop")
SYSTEM_FONTS = ("ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial",
                "sans-serif")
SYSTEM_MONO_FONTS = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "Liberation Mono", "monospace")
EXAMPLE_PROMPTS = {
    "t2v": ["a blue square moving up", "a red circle moving left", "a large yellow triangle moving right slowly"],
    "i2v": ["a red circle moving right", "a red circle moving down", "a red circle standing still"],
    "t2i": ["a large yellow triangle", "a small green circle", "a blue square"],
}


class PortInUseError(OSError):
    """The port the server should listen on is taken (or the host cannot be listened on)."""


def offline_theme() -> gr.themes.Base:
    """gradio's default look with the system's fonts, so the page loads no font from anywhere."""
    return gr.themes.Default(font=list(SYSTEM_FONTS), font_mono=list(SYSTEM_MONO_FONTS))


# ---------------------------------------------------------------------------------------------------------------------
# model folders and their defaults


@dataclass(frozen=True)
class ModelInfo:
    """What the page needs to know about a model folder before its (possibly large) weights are loaded."""

    kind: str  # "t2v", "i2v" or "t2i"
    folder: str
    defaults: dict
    flavour: str | None = None
    family: str | None = None
    vocabulary: tuple[str, ...] = ()

    @property
    def interpolates(self) -> bool:
        """DynamiCrafter models can interpolate towards a last image and make loops; VideoCrafter i2v cannot."""
        return self.kind == "i2v" and self.flavour == "dc"

    @property
    def fps_is_frame_stride(self) -> bool:
        from .pipelines.image_to_video import FRAME_STRIDE_FAMILIES

        return self.kind == "i2v" and self.family in FRAME_STRIDE_FAMILIES


def model_info(model: str | None, kind: str) -> ModelInfo:
    """Resolve ``model`` (None: the embedded default of ``kind``) and read its sampling defaults from model_index.json,
    merged as the pipeline merges them, so the page is filled in without loading any weights."""
    folder = resolve_model(model, kind)
    index = check_model_folder(folder)
    name = index.get("_class_name")
    allowed = ("ImageToVideoPipeline",) if kind == "i2v" else ("TextToVideoPipeline", None)
    if name not in allowed:
        raise ValueError(f"{folder} holds a {name!r} model, which does not fit the {_KIND_NAMES[kind]} tab")
    if kind == "i2v":
        from .pipelines.image_to_video import ImageToVideoPipeline as pipeline_class
    else:
        from .pipelines.text_to_video import TextToVideoPipeline as pipeline_class
    defaults = pipeline_class.folder_defaults(index)
    return ModelInfo(kind=kind, folder=folder, defaults=defaults, flavour=index.get("flavour"),
                     family=index.get("family"), vocabulary=tuple(index.get("vocabulary") or ()))


_KIND_NAMES = {"t2v": "text-to-video", "i2v": "image-to-video", "t2i": "text-to-image"}


# ---------------------------------------------------------------------------------------------------------------------
# checking what the form sends


def _whole(value: Any, name: str, low: int, high: int | None = None) -> int | None:
    """A whole number in [low, high] from a form field (blank: None, i.e. the model's default)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"{name} must be a whole number, got {value}")
    number = int(number)
    if number < low or (high is not None and number > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name} must be {bounds}, got {number}")
    return number


def _real(value: Any, name: str, low: float, high: float = math.inf) -> float | None:
    """A finite number in [low, high] from a form field (blank: None)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if not low <= number <= high:
        bounds = f">= {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
        raise ValueError(f"{name} must be {bounds}, got {number:g}")
    return number


def _seed(value: Any) -> int:
    """The seed field: blank draws a fresh seed (reported with the result)."""
    seed = _whole(value, "Seed", 0, SEED_RANGE - 1)
    return secrets.randbelow(2**53) if seed is None else seed  # 2**53: what a browser number field holds exactly


def _text(value: Any) -> str:
    return "" if value is None else str(value)


@dataclass
class Sampling:
    """The options every tab has, checked; None means the model's default."""

    negative_prompt: str | None
    seed: int
    steps: int | None
    guidance: float | None
    guidance_rescale: float | None
    eta: float | None
    height: int | None
    width: int | None

    @classmethod
    def from_form(cls, negative_prompt: Any, seed: Any, steps: Any, guidance: Any, guidance_rescale: Any, eta: Any,
                  height: Any, width: Any) -> Sampling:
        negative = _text(negative_prompt)
        return cls(
            negative_prompt=negative if negative.strip() else None,
            seed=_seed(seed),
            steps=_whole(steps, "Steps", 1, MAX_STEPS),
            guidance=_real(guidance, "Guidance", 0.0),
            guidance_rescale=_real(guidance_rescale, "Guidance rescale", 0.0, 1.0),
            eta=_real(eta, "Eta", 0.0, 1.0),
            height=_whole(height, "Height", 1, MAX_SIDE),
            width=_whole(width, "Width", 1, MAX_SIDE),
        )

    def pipeline_kwargs(self) -> dict:
        return {"negative_prompt": self.negative_prompt, "seed": self.seed, "num_inference_steps": self.steps,
                "guidance_scale": self.guidance, "guidance_rescale": self.guidance_rescale, "eta": self.eta,
                "height": self.height, "width": self.width}


@dataclass
class Result:
    """What one generation wrote (paths in its request folder) and the lines to show under it."""

    video: str | None = None
    gif: str | None = None
    sheet: str | None = None
    image: str | None = None
    lines: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


Progress = Callable[..., Any]


def _no_progress(*args: Any, **kwargs: Any) -> None:
    return None


# ---------------------------------------------------------------------------------------------------------------------
# the work behind the page


class Backend:
    """Runs the generations behind the page: checks the form values, loads each pipeline once (on first use) and
    writes each request's files into a folder of its own under ``output_dir``.

    Methods raise ``ValueError`` (pipelines' ``PipelineError`` included) or ``OSError`` for bad input; the page turns
    them into messages. A lock keeps generations one at a time even when the backend is used without the queue.
    """

    def __init__(self, t2v: ModelInfo, i2v: ModelInfo, t2i: ModelInfo, output_dir: str | os.PathLike,
                 threads: int | None = None):
        self.models = {"t2v": t2v, "i2v": i2v, "t2i": t2i}
        self.threads = threads  # None: the cores idle when each generation starts (vidiff.utils.threads)
        self.output_dir = Path(output_dir)
        self._pipes: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- pipelines
    def pipeline(self, kind: str, progress: Progress = _no_progress):
        """The pipeline of ``kind``, loaded on the first call and kept."""
        if kind not in self._pipes:
            progress(0.0, desc=f"loading the {_KIND_NAMES[kind]} model")
            folder = self.models[kind].folder
            if kind == "i2v":
                from .pipelines.image_to_video import ImageToVideoPipeline

                self._pipes[kind] = ImageToVideoPipeline.from_pretrained(folder, torch_dtype=None, device="cpu")
            else:
                from .pipelines.text_to_video import TextToVideoPipeline

                self._pipes[kind] = TextToVideoPipeline.from_pretrained(folder, torch_dtype=None, device="cpu")
        return self._pipes[kind]

    # -- request folders
    def _request_dir(self) -> Path:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - REQUEST_MAX_AGE_S
        for old in self.output_dir.glob("request-*"):
            try:
                if old.is_dir() and old.stat().st_mtime < cutoff:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        return Path(tempfile.mkdtemp(prefix=f"request-{time.strftime('%Y%m%d-%H%M%S')}-", dir=self.output_dir))

    # -- running a pipeline
    def _sample(self, call: Callable[..., Any], steps: int, progress: Progress, **kwargs: Any):
        """Run ``call`` with a callback that drives ``progress``; return its output and the warnings it gave."""
        def callback(i: int, *_: Any) -> None:
            progress((min(i + 1, steps), steps), desc="sampling", unit="steps")

        import torch

        from .utils.threads import default_threads

        torch.set_num_threads(self.threads or default_threads())  # a long-lived server: look again each time
        progress((0, steps), desc="sampling", unit="steps")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = call(progress=False, callback=callback, **kwargs)
        said = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
        return out, said

    def _generate(self, kind: str, fps: int | None, steps: int | None, progress: Progress, **kwargs: Any):
        """Load ``kind``'s pipeline and sample with the model's defaults filled in (the caller holds the lock);
        returns ``(pipe, output, warnings, fps, steps, start time)``."""
        start = time.time()
        pipe = self.pipeline(kind, progress)
        fps, steps = pipe.resolve("fps", fps), pipe.resolve("num_inference_steps", steps)
        out, warned = self._sample(pipe, steps, progress, fps=fps, **kwargs)
        return pipe, out, warned, fps, steps, start

    def _finish_video(self, frames, fps: float, start: float, seed: int, steps: int, warned: list[str]) -> Result:
        from .utils.video import save_video_outputs

        folder = self._request_dir()
        mp4, gif, sheet = save_video_outputs(frames[0], folder / "video.mp4", fps=fps, gif=True, contact_sheet=True)
        t, h, w = (int(n) for n in frames.shape[1:4])
        lines = [f"generated {t} frames of {w}x{h} with {steps} steps in {time.time() - start:.1f} s (seed {seed}, "
                 f"played at {fps:g} fps)"]
        lines += [f"warning: {text}" for text in warned]
        return Result(video=str(mp4), gif=str(gif), sheet=str(sheet), lines=lines)

    def text_to_video(self, prompt: Any, negative_prompt: Any = None, seed: Any = DEFAULT_SEED, steps: Any = None,
                      guidance: Any = None, guidance_rescale: Any = None, eta: Any = None, frames: Any = None,
                      height: Any = None, width: Any = None, fps: Any = None, sampler: Any = "ddim",
                      progress: Progress = _no_progress) -> Result:
        """A video from a prompt, as ``vidiff generate`` makes it."""
        prompt = _check_prompt(prompt, "video")
        opts = Sampling.from_form(negative_prompt, seed, steps, guidance, guidance_rescale, eta, height, width)
        num_frames = _whole(frames, "Frames", 1, MAX_FRAMES)
        fps_value = _whole(fps, "fps", 1)
        sampler = _choice(sampler, "Sampler", SAMPLER_CHOICES)
        with self._lock:
            _, out, warned, fps_value, steps_value, start = self._generate(
                "t2v", fps_value, opts.steps, progress, prompt=prompt, num_frames=num_frames, sampler=sampler,
                **opts.pipeline_kwargs())
            progress(1.0, desc="writing the mp4, GIF and contact sheet")
            result = self._finish_video(out.frames, float(fps_value), start, opts.seed, steps_value, warned)
            verdict = probe_verdict(out.frames[0], prompt, self.models["t2v"].folder, fps_value)
        if verdict:
            result.lines.append(verdict)
        return result

    def image_to_video(self, image: Any, prompt: Any = "", mode: Any = MODES[0], last_image: Any = None,
                       negative_prompt: Any = None, seed: Any = DEFAULT_SEED, steps: Any = None, guidance: Any = None,
                       image_guidance: Any = None, guidance_rescale: Any = None, eta: Any = None, frames: Any = None,
                       height: Any = None, width: Any = None, fps: Any = None, playback_fps: Any = None,
                       progress: Progress = _no_progress) -> Result:
        """A video from an image (and an optional prompt), as ``vidiff animate`` makes it."""
        from .pipelines.image_io import open_image

        info = self.models["i2v"]
        mode = _choice(mode or MODES[0], "Mode", MODES)
        if mode != MODES[0] and not info.interpolates:
            raise ValueError(f"{mode!r} needs a DynamiCrafter model; {info.folder} cannot interpolate or loop")
        if image is None or (isinstance(image, str) and not image):
            raise ValueError("no image: upload the image to animate")
        if mode == MODES[1] and not last_image:
            raise ValueError("interpolation needs a last image: upload it, or choose another mode")
        prompt = _text(prompt).strip()
        opts = Sampling.from_form(negative_prompt, seed, steps, guidance, guidance_rescale, eta, height, width)
        num_frames = _whole(frames, "Frames", 1, MAX_FRAMES)
        fps_value = _whole(fps, "fps", 0)
        playback = _real(playback_fps, "Playback fps", 0.0)
        if playback == 0:
            raise ValueError("Playback fps must be > 0")
        image_scale = _real(image_guidance, "Image guidance", 0.0)
        first = _read_image(image, open_image)
        last = _read_image(last_image, open_image) if mode == MODES[1] else None
        with self._lock:
            pipe, out, warned, fps_value, steps_value, start = self._generate(
                "i2v", fps_value, opts.steps, progress, image=first, prompt=prompt, last_image=last,
                loop=mode == MODES[2], num_frames=num_frames, image_guidance_scale=image_scale,
                **opts.pipeline_kwargs())
            if playback is None:
                playback = FRAME_STRIDE_PLAYBACK_FPS if pipe.fps_is_frame_stride else fps_value
            progress(1.0, desc="writing the mp4, GIF and contact sheet")
            result = self._finish_video(out.frames, float(playback), start, opts.seed, steps_value, warned)
            verdict = None
            if prompt and mode == MODES[0]:
                condition = np.asarray(first.convert("RGB").resize(tuple(out.frames.shape[3:1:-1])))
                verdict = probe_verdict(out.frames[0], prompt, info.folder,
                                        None if pipe.fps_is_frame_stride else fps_value, condition_image=condition)
        if verdict:
            result.lines.append(verdict)
        return result

    def text_to_image(self, prompt: Any, negative_prompt: Any = None, seed: Any = DEFAULT_SEED, steps: Any = None,
                      guidance: Any = None, guidance_rescale: Any = None, eta: Any = None, height: Any = None,
                      width: Any = None, fps: Any = None, sampler: Any = "ddim",
                      progress: Progress = _no_progress) -> Result:
        """A PNG from a prompt with a text-to-image folder (the text-to-video pipeline with one frame)."""
        from .utils.video import write_png

        prompt = _check_prompt(prompt, "image")
        opts = Sampling.from_form(negative_prompt, seed, steps, guidance, guidance_rescale, eta, height, width)
        fps_value = _whole(fps, "fps", 1)
        sampler = _choice(sampler, "Sampler", SAMPLER_CHOICES)
        with self._lock:
            _, out, warned, fps_value, steps_value, start = self._generate(
                "t2i", fps_value, opts.steps, progress, prompt=prompt, num_frames=1, sampler=sampler,
                **opts.pipeline_kwargs())
            png = write_png(out.frames[0], self._request_dir() / "image.png")
            h, w = (int(n) for n in out.frames.shape[2:4])
            lines = [f"generated a {w}x{h} image with {steps_value} steps in {time.time() - start:.1f} s "
                     f"(seed {opts.seed})"]
            lines += [f"warning: {text}" for text in warned]
            verdict = probe_verdict(out.frames[0], prompt, self.models["t2i"].folder, fps_value)
        if verdict:
            lines.append(verdict)
        return Result(image=str(png), lines=lines)


def _check_prompt(prompt: Any, what: str) -> str:
    text = _text(prompt).strip()
    if not text:
        raise ValueError(f"the prompt is empty: describe the {what} to generate")
    return text


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _read_image(path: Any, open_image: Callable):
    """The uploaded file as RGB; errors name the file, not the server's cache folder."""
    try:
        return open_image(path)
    except ValueError as err:
        raise ValueError(str(err).replace(str(path), Path(str(path)).name)) from None


# ---------------------------------------------------------------------------------------------------------------------
# the page


def _uploaded_image(**kwargs: Any) -> gr.Image:
    """A ``gr.Image`` upload field whose check of the file fails with a message instead of Pillow's exception (a
    non-image file would otherwise surface as a bare "Error"). The instance's ``preprocess`` is wrapped rather than the
    class subclassed: gradio writes a ``.pyi`` stub next to the module of every component subclass."""
    image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], **kwargs)
    check = image.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return check(payload)
        except gr.Error:
            raise
        except Exception as err:  # Pillow's UnidentifiedImageError, OSError, ValueError, ...
            from PIL import UnidentifiedImageError

            name = getattr(payload, "orig_name", None) or "the uploaded file"
            why = "not a recognised image format" if isinstance(err, UnidentifiedImageError) else describe_error(err)
            raise gr.Error(html.escape(f"cannot read {name} as an image ({why}); upload a PNG, JPEG or WebP file"),
                           print_exception=False) from None

    image.preprocess = preprocess
    return image


PAGE_PROGRESS = gr.Progress()  # gradio spots it as a default and hands each request a tracker of its own


def _for_page(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` for the page: bad input becomes a ``gr.Error`` message; anything unexpected is printed on the
    server (with its traceback) and reported in one line, never as a traceback in the page. ``functools.wraps`` keeps
    ``fn``'s signature visible, which is how gradio finds the progress argument."""
    @functools.wraps(fn)
    def call(*args: Any) -> Any:
        try:
            return fn(*args)
        except gr.Error:
            raise
        except (ValueError, OSError) as err:
            raise gr.Error(html.escape(describe_error(err)), print_exception=False) from None
        except Exception as err:
            traceback.print_exc()
            raise gr.Error(html.escape(f"the generation failed: {describe_error(err)} (details in the server's log)"),
                           print_exception=False) from None

    return call


def _number(label: str, value: Any, elem_id: str, info: str | None = None) -> gr.Number:
    """A number field; cleared by the user it sends None (the model's default). It cannot start blank: gradio shows
    an initial None as 0, hence text fields for the options whose default is "off"."""
    return gr.Number(label=label, value=value, elem_id=elem_id, info=info, precision=None)


def _sampling_fields(prefix: str, d: dict, frames: bool, fps_info: str | None = None) -> dict[str, gr.Component]:
    """The "Advanced" fields shared by the tabs, pre-filled with the model's defaults (blank: the default)."""
    fields: dict[str, gr.Component] = {}
    fields["negative_prompt"] = gr.Textbox(label="Negative prompt", placeholder="what to steer away from (blank: none)",
                                           elem_id=f"{prefix}-negative")
    with gr.Row():
        fields["seed"] = _number("Seed", DEFAULT_SEED, f"{prefix}-seed", "blank: a random seed")
        fields["steps"] = _number("Steps", d["num_inference_steps"], f"{prefix}-steps")
    with gr.Row():
        fields["guidance"] = _number("Guidance", d["guidance_scale"], f"{prefix}-guidance", "classifier-free, >= 0")
        fields["guidance_rescale"] = _number("Guidance rescale", d["guidance_rescale"], f"{prefix}-rescale", "0 to 1")
        fields["eta"] = _number("Eta", d["eta"], f"{prefix}-eta", "DDIM eta, 0 to 1")
    with gr.Row():
        if frames:
            fields["frames"] = _number("Frames", d["num_frames"], f"{prefix}-frames")
        fields["height"] = _number("Height", d["height"], f"{prefix}-height")
        fields["width"] = _number("Width", d["width"], f"{prefix}-width")
        fields["fps"] = _number("fps", d["fps"], f"{prefix}-fps", fps_info)
    return fields


def _examples(info: ModelInfo, prompt: gr.Textbox) -> None:
    """Prompts in the model's words, for the shapes-world models (a closed vocabulary)."""
    if info.vocabulary:
        gr.Examples([[p] for p in EXAMPLE_PROMPTS[info.kind]], inputs=[prompt], label="Prompts this model knows")


def _outputs(prefix: str) -> tuple[gr.Video, gr.Image, gr.Image, gr.Textbox]:
    video = gr.Video(label="Video (mp4)", elem_id=f"{prefix}-video", autoplay=True, loop=True, interactive=False,
                     height=320)
    with gr.Row():
        gif = gr.Image(label="GIF", type="filepath", elem_id=f"{prefix}-gif", interactive=False)
        sheet = gr.Image(label="Contact sheet", type="filepath", elem_id=f"{prefix}-sheet", interactive=False)
    text = gr.Textbox(label="Result", lines=3, interactive=False, elem_id=f"{prefix}-result")
    return video, gif, sheet, text


def _header(t2v: ModelInfo, i2v: ModelInfo, t2i: ModelInfo) -> str:
    from . import __version__

    def name(info: ModelInfo) -> str:
        return f"`{Path(info.folder).name}`"

    lines = [f"## vidiff {__version__}: video diffusion demo",
             f"Models: {name(t2v)} (text to video), {name(i2v)} (image to video), {name(t2i)} (text to image). "
             "Sampling options are under *Advanced*, filled in with each model's defaults; a blank field means the "
             "default. One generation runs at a time; others wait in the queue."]
    return "\n\n".join(lines)


def _vocabulary(t2v: ModelInfo, i2v: ModelInfo, t2i: ModelInfo) -> None:
    """The words of the closed-vocabulary (shapes-world) models, folded away: others have no effect."""
    shapes = [info for info in (t2v, i2v, t2i) if info.vocabulary]
    if shapes:
        words = sorted(set().union(*(info.vocabulary for info in shapes)))
        with gr.Accordion("Words the shapes-world models know", open=False):
            gr.Markdown("Other words are ignored (the result says which): " + ", ".join(words) + ".")


def build_app(t2v_model: str | None = None, i2v_model: str | None = None, t2i_model: str | None = None,
              output_dir: str | os.PathLike | None = None, threads: int | None = None) -> gr.Blocks:
    """The page: tabs "Text to video", "Image to video" and "Text to image" over :class:`Backend`, queued one
    generation at a time. Model folders default to the embedded shapes-world models; their defaults are read now and
    the weights loaded on first use. Files go to ``output_dir`` (default: a temporary folder removed at exit)."""
    t2v, i2v, t2i = model_info(t2v_model, "t2v"), model_info(i2v_model, "i2v"), model_info(t2i_model, "t2i")
    if output_dir is None:
        output_dir = tempfile.mkdtemp(prefix="vidiff-serve-")
        atexit.register(shutil.rmtree, output_dir, ignore_errors=True)
    backend = Backend(t2v, i2v, t2i, output_dir, threads=threads)
    queue = {"concurrency_id": "generation", "concurrency_limit": 1}  # one slot shared by the three tabs

    with gr.Blocks(title="vidiff", analytics_enabled=False, delete_cache=(REQUEST_MAX_AGE_S, REQUEST_MAX_AGE_S)) as demo:
        gr.Markdown(_header(t2v, i2v, t2i))
        _vocabulary(t2v, i2v, t2i)
        with gr.Tabs():
            with gr.Tab("Text to video", id="t2v"):
                with gr.Row():
                    with gr.Column():
                        prompt = gr.Textbox(label="Prompt", placeholder=EXAMPLE_PROMPTS["t2v"][0], lines=2,
                                            elem_id="t2v-prompt")
                        _examples(t2v, prompt)
                        with gr.Accordion("Advanced", open=False, elem_id="t2v-advanced"):
                            f = _sampling_fields("t2v", t2v.defaults, frames=True,
                                                 fps_info="conditioning and playback rate")
                            sampler = gr.Dropdown(list(SAMPLER_CHOICES), value="ddim", label="Sampler", elem_id="t2v-sampler")
                        button = gr.Button("Generate", variant="primary", elem_id="t2v-generate")
                    with gr.Column():
                        outputs = _outputs("t2v")

                def t2v_run(prompt, negative, seed, steps, guidance, rescale, eta, frames, height, width, fps,
                            sampler, progress=PAGE_PROGRESS):
                    r = backend.text_to_video(prompt, negative, seed, steps, guidance, rescale, eta, frames, height,
                                              width, fps, sampler, progress=progress)
                    return r.video, r.gif, r.sheet, r.text

                button.click(_for_page(t2v_run), [prompt, f["negative_prompt"], f["seed"], f["steps"], f["guidance"],
                             f["guidance_rescale"], f["eta"], f["frames"], f["height"], f["width"], f["fps"], sampler],
                             list(outputs), api_name="text_to_video", **queue)

            with gr.Tab("Image to video", id="i2v"):
                with gr.Row():
                    with gr.Column():
                        image = _uploaded_image(label="Image", elem_id="i2v-image")
                        i2v_prompt = gr.Textbox(label="Prompt (optional)", placeholder=EXAMPLE_PROMPTS["i2v"][0],
                                                lines=2, elem_id="i2v-prompt")
                        _examples(i2v, i2v_prompt)
                        mode = gr.Radio(list(MODES), value=MODES[0], label="Mode", visible=i2v.interpolates,
                                        info="interpolation and loops: DynamiCrafter models", elem_id="i2v-mode")
                        last = _uploaded_image(label="Last image", visible=False, elem_id="i2v-last")
                        mode.change(lambda m: gr.update(visible=m == MODES[1]), mode, last, queue=False,
                                    show_progress="hidden", api_visibility="private")
                        with gr.Accordion("Advanced", open=False, elem_id="i2v-advanced"):
                            stride = "frame stride for this model" if i2v.fps_is_frame_stride else "conditioning"
                            g = _sampling_fields("i2v", i2v.defaults, frames=True, fps_info=stride)
                            with gr.Row():  # text fields: a number field cannot start blank ("off")
                                default_image_scale = i2v.defaults.get("image_guidance_scale")
                                image_guidance = gr.Textbox(
                                    label="Image guidance", elem_id="i2v-image-guidance",
                                    value="" if default_image_scale is None else f"{default_image_scale:g}",
                                    placeholder="off", info="blank: off (ordinary guidance); a number: "
                                    "DynamiCrafter's multi-condition guidance")
                                playback = gr.Textbox(label="Playback fps", elem_id="i2v-playback-fps",
                                                      placeholder="as fps", info="blank: fps, or 8 where fps is a "
                                                      "frame stride")
                        i2v_button = gr.Button("Generate", variant="primary", elem_id="i2v-generate")
                    with gr.Column():
                        i2v_outputs = _outputs("i2v")

                def i2v_run(image, prompt, mode, last, negative, seed, steps, guidance, image_guidance, rescale, eta,
                            frames, height, width, fps, playback, progress=PAGE_PROGRESS):
                    r = backend.image_to_video(image, prompt, mode, last, negative, seed, steps, guidance,
                                               image_guidance, rescale, eta, frames, height, width, fps, playback,
                                               progress=progress)
                    return r.video, r.gif, r.sheet, r.text

                i2v_button.click(_for_page(i2v_run), [image, i2v_prompt, mode, last, g["negative_prompt"], g["seed"],
                                 g["steps"], g["guidance"], image_guidance, g["guidance_rescale"], g["eta"],
                                 g["frames"], g["height"], g["width"], g["fps"], playback], list(i2v_outputs),
                                 api_name="image_to_video", **queue)

            with gr.Tab("Text to image", id="t2i"):
                with gr.Row():
                    with gr.Column():
                        t2i_prompt = gr.Textbox(label="Prompt", placeholder=EXAMPLE_PROMPTS["t2i"][0], lines=2,
                                                elem_id="t2i-prompt")
                        _examples(t2i, t2i_prompt)
                        with gr.Accordion("Advanced", open=False, elem_id="t2i-advanced"):
                            h = _sampling_fields("t2i", t2i.defaults, frames=False, fps_info="conditioning")
                            t2i_sampler = gr.Dropdown(list(SAMPLER_CHOICES), value="ddim", label="Sampler",
                                                   elem_id="t2i-sampler")
                        t2i_button = gr.Button("Generate", variant="primary", elem_id="t2i-generate")
                    with gr.Column():
                        png = gr.Image(label="Image (PNG)", type="filepath", format="png", interactive=False,
                                       elem_id="t2i-image")
                        t2i_text = gr.Textbox(label="Result", lines=3, interactive=False, elem_id="t2i-result")

                def t2i_run(prompt, negative, seed, steps, guidance, rescale, eta, height, width, fps, sampler,
                            progress=PAGE_PROGRESS):
                    r = backend.text_to_image(prompt, negative, seed, steps, guidance, rescale, eta, height, width,
                                              fps, sampler, progress=progress)
                    return r.image, r.text

                t2i_button.click(_for_page(t2i_run), [t2i_prompt, h["negative_prompt"], h["seed"], h["steps"],
                                 h["guidance"], h["guidance_rescale"], h["eta"], h["height"], h["width"], h["fps"],
                                 t2i_sampler], [png, t2i_text], api_name="text_to_image", **queue)

    demo.backend = backend  # for callers (and tests) that want to look behind the page
    demo.queue(default_concurrency_limit=1, max_size=32)
    return demo


# ---------------------------------------------------------------------------------------------------------------------
# serving it


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`PortInUseError` with one readable line when ``host:port`` cannot be listened on."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise PortInUseError(f"cannot listen on host {host!r}: {err.strerror or err}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the web server binds
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise PortInUseError(f"port {port} on {host} is already in use (another vidiff serve?); "
                                     "choose another with --port") from None
            raise PortInUseError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def launch(t2v_model: str | None = None, i2v_model: str | None = None, t2i_model: str | None = None, *,
           host: str = "127.0.0.1", port: int = 7860, threads: int | None = None, block: bool = True,
           output_dir: str | os.PathLike | None = None, quiet: bool = False) -> gr.Blocks:
    """Build the page and serve it on ``http://host:port``: no share link, no analytics, system fonts.

    ``block=True`` serves until Ctrl-C and then closes the server; ``block=False`` returns the running app (stop it with
    ``.close()``). ``threads`` sets torch's CPU thread count for every generation (default: the cores idle when it starts).
    """
    check_port_free(host, port)
    demo = build_app(t2v_model, i2v_model, t2i_model, output_dir=output_dir, threads=threads)
    try:
        demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True,
                    show_error=False, quiet=True, ssr_mode=False, pwa=False, mcp_server=False,
                    enable_monitoring=False, theme=offline_theme(), max_file_size="50mb",
                    allowed_paths=[str(demo.backend.output_dir)])
    except OSError as err:  # the port was taken between the check and the launch
        raise PortInUseError(f"cannot serve on {host}:{port}: {describe_error(err)}") from None
    if not quiet:
        print(f"vidiff serve: {demo.local_url} (Ctrl-C to stop)", flush=True)
    if block:
        previous = None
        if threading.current_thread() is threading.main_thread():  # `kill` (systemd, docker stop) as Ctrl-C
            previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            while demo.is_running:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        finally:
            demo.close(verbose=False)
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    return demo


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
