"""The conditioning probe: the binding gap and implicit classification, on a stand-in model whose loss depends on known
words, and the plot/CSV the trainer writes."""

from __future__ import annotations

import torch

from vidiff.data.shapes import parse_caption
from vidiff.training.binding import BindingBatch, BindingProbe, append_binding_csv, plot_binding, read_binding_csv

CAPTIONS = ["a red circle moving left", "a blue square moving up", "a large green triangle moving down",
            "a white circle standing still on a gray background"]


def _batch(images: bool = False) -> BindingBatch:
    """Clip i has latents (and conditioning image) filled with i, so a stand-in model knows which clip it sees."""
    n = len(CAPTIONS)
    rows = torch.arange(n).float()
    return BindingBatch(rows[:, None, None, None, None].expand(-1, 4, 2, 4, 4).clone(), list(CAPTIONS),
                        [parse_caption(c) for c in CAPTIONS], torch.full((n,), 4.0),
                        rows[:, None, None, None].expand(-1, 3, 8, 8).clone() if images else None)


def _colour_reader(latents, noise, t, captions, fps, images):
    """Loss 1 when the caption names the clip's true colour, 2 otherwise; ignores every other word."""
    truth = [parse_caption(c).primary.colour for c in CAPTIONS]
    rows = latents[:, 0, 0, 0, 0].long().tolist()
    named = [parse_caption(c).primary.colour if parse_caption(c) else None for c in captions]
    return torch.tensor([1.0 if named[k] == truth[r] else 2.0 for k, r in enumerate(rows)])


def test_probe_finds_the_word_the_model_reads_and_the_words_it_ignores():
    probe = BindingProbe(_batch(), timesteps=[100, 900], attributes=["colour", "shape", "motion", "size", "background",
                                                                     "caption", "empty"])
    result = probe.run(_colour_reader, step=10)
    assert result.accuracy["colour"] == 1.0 and result.gap["colour"] > 90  # every wrong colour doubles the loss
    assert result.chance["colour"] == 1 / 8
    for ignored in ("shape", "motion", "size", "background"):
        assert abs(result.gap[ignored]) < 1e-6, ignored
    assert set(result.ignored()) >= {"shape", "motion", "size", "background"} and "colour" not in result.ignored()
    assert result.gap["empty"] > 90  # no colour word at all counts as wrong


def test_image_swap_is_measured_for_image_conditioned_batches():
    def image_reader(latents, noise, t, captions, fps, images):
        return 1.0 + (images[:, 0, 0, 0] != latents[:, 0, 0, 0, 0]).float()

    probe = BindingProbe(_batch(images=True), timesteps=[500], attributes=["image", "colour"])
    assert probe.attributes == ["image", "colour"]
    result = probe.run(image_reader, step=1)
    assert result.gap["image"] > 90 and result.accuracy["image"] == 1.0
    assert abs(result.gap["colour"]) < 1e-6


def test_attributes_without_a_vocabulary_fall_back_to_caption_checks():
    batch = _batch()
    batch.attributes = None
    probe = BindingProbe(batch, timesteps=[500], attributes=["colour", "caption", "empty", "image"])
    assert probe.attributes == ["caption", "empty"]


def test_csv_and_plot_keep_one_history(tmp_path):
    probe = BindingProbe(_batch(), timesteps=[500], attributes=["colour", "shape"])
    for step in (10, 20):
        append_binding_csv(tmp_path, probe.run(_colour_reader, step))
    append_binding_csv(tmp_path, probe.run(_colour_reader, 20))  # re-measured after a resume: replaces, no duplicate
    rows = read_binding_csv(tmp_path / "binding.csv")
    assert [(r["step"], r["attribute"]) for r in rows] == [("10", "colour"), ("10", "shape"), ("20", "colour"),
                                                          ("20", "shape")]
    path = plot_binding(tmp_path, "test")
    assert path.is_file() and path.stat().st_size > 1000


def test_a_word_read_only_at_low_noise_is_not_drowned_by_the_large_high_noise_loss():
    """The shape word matters only at t=300, where the loss is small (0.03 vs 0.06 when wrong); at t=900 the loss is
    0.5 whatever the caption. Averaging losses before the ratio would report a 5 % gap; per timestep it is 50 %."""
    truth = [parse_caption(c).primary.shape for c in CAPTIONS]

    def shape_at_low_noise(latents, noise, t, captions, fps, images):
        rows = latents[:, 0, 0, 0, 0].long().tolist()
        named = [parse_caption(c).primary.shape if parse_caption(c) else None for c in captions]
        low = torch.tensor([0.03 if named[k] == truth[r] else 0.06 for k, r in enumerate(rows)])
        return torch.where(t < 500, low, torch.full_like(low, 0.5))

    result = BindingProbe(_batch(), timesteps=[300, 900], attributes=["shape", "colour"]).run(shape_at_low_noise, 1)
    assert 49 < result.gap["shape"] < 51 and result.accuracy["shape"] == 1.0
    assert abs(result.gap["colour"]) < 1e-6 and "shape" not in result.ignored()
