"""The model folder: one module reads and writes model_index.json, records each component's class and loads it."""

from __future__ import annotations

import json
import shutil

import pytest

from vidiff.model_folder import FAMILIES, ModelFolderError, class_path, component_class, load_component, read_index
from vidiff.models.autoencoder import LDMAutoencoderKL
from vidiff.models.unet3d import UNet3DModel
from vidiff.pipelines.base import PipelineError
from vidiff.pipelines.text_to_video import TextToVideoPipeline

SOURCE = __import__("vidiff.cli_common", fromlist=["EMBEDDED_MODELS"]).EMBEDDED_MODELS / "shapes_t2i"


class CustomAutoencoder(LDMAutoencoderKL):
    """A VAE trained with a custom class (training's ``class_path``) must load back as that class."""


@pytest.fixture
def folder(tmp_path):
    out = tmp_path / "model"
    shutil.copytree(SOURCE, out)
    return out


def _edit_index(folder, **changes):
    index = json.loads((folder / "model_index.json").read_text())
    index.update(changes)
    (folder / "model_index.json").write_text(json.dumps(index))


def test_recorded_classes_are_loaded_and_old_folders_use_the_defaults(folder):
    index = read_index(folder)
    assert component_class(index, "unet") == "vidiff.models.unet3d:UNet3DModel"  # recorded or default: the same
    _edit_index(folder, component_classes={"vae": class_path(CustomAutoencoder)})
    assert type(load_component(folder, "vae")) is CustomAutoencoder
    assert type(load_component(folder, "unet")) is UNet3DModel  # not recorded: the default class
    pipe = TextToVideoPipeline.from_pretrained(folder)
    assert type(pipe.vae) is CustomAutoencoder


@pytest.mark.parametrize(
    ("classes", "match"),
    [
        ({"vae": "vidiff.models.nowhere:VAE"}, "cannot import the component class 'vidiff.models.nowhere:VAE'"),
        ({"vae": "json:dumps"}, "has no from_pretrained"),
    ],
)
def test_a_bad_recorded_class_is_one_clear_error(folder, classes, match):
    _edit_index(folder, component_classes=classes)
    with pytest.raises(PipelineError, match=match):
        TextToVideoPipeline.from_pretrained(folder)


def test_unreadable_folders_name_the_problem(tmp_path, folder):
    with pytest.raises(ModelFolderError, match="model folder not found"):
        read_index(tmp_path / "missing")
    with pytest.raises(ModelFolderError, match="no model_index.json"):
        read_index(tmp_path)
    (folder / "model_index.json").write_text("{not json")
    with pytest.raises(PipelineError, match="cannot read .*model_index.json"):
        TextToVideoPipeline.from_pretrained(folder)
    (folder / "model_index.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        read_index(folder, ValueError)
    shutil.rmtree(folder / "vae")
    (folder / "model_index.json").write_text("{}")
    with pytest.raises(PipelineError, match="lacks its vae/ component"):
        TextToVideoPipeline.from_pretrained(folder)


def test_families_carry_flavour_task_and_sampling_defaults():
    assert FAMILIES["dc_512"].flavour == "dc" and FAMILIES["dc_512"].task == "i2v"
    assert FAMILIES["vc2_t2v_512"].defaults["guidance_scale"] == 12.0
