"""Each U-Net condition is its own argument: text and image tokens, a concatenated latent, fps / frame stride, and the
per-call (per-row) weights of the text and image streams. The official combined ``context`` layout still works."""

from __future__ import annotations

import pytest
import torch

from vidiff.models.resampler import Resampler
from vidiff.models.unet3d import UNet3DModel

T, N_TEXT, PER_FRAME, DIM = 4, 5, 3, 32
I2V_UNET = dict(in_channels=8, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(1, 2), num_head_channels=16, context_dim=DIM, temporal_attention=True,
                addition_attention=True, init_attention_heads=2, temporal_length=T, fps_condition=True,
                image_cross_attention=True, image_tokens_per_frame=PER_FRAME, per_frame_image_tokens=True,
                text_context_len=N_TEXT)


@pytest.fixture(scope="module")
def unet() -> UNet3DModel:
    torch.manual_seed(0)
    model = UNet3DModel(**I2V_UNET).eval()
    with torch.no_grad():  # zero-initialised output projections would hide every stream: make all weights random
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "x": torch.randn(2, 4, T, 8, 8, generator=g),
        "image_latent": torch.randn(2, 4, T, 8, 8, generator=g),
        "text": torch.randn(2, N_TEXT, DIM, generator=g),
        "per_frame": torch.randn(2, T, PER_FRAME, DIM, generator=g),
        "shared": torch.randn(2, 7, DIM, generator=g),
        "t": torch.tensor([100, 800]),
    }


def _run(unet, inputs, **kw) -> torch.Tensor:
    with torch.no_grad():
        return unet(inputs["x"], inputs["t"], concat=kw.pop("concat", inputs["image_latent"]), fps=8, **kw)


def test_explicit_conditions_equal_the_official_combined_layout(unet, inputs):
    text, per_frame, shared = inputs["text"], inputs["per_frame"], inputs["shared"]
    explicit = _run(unet, inputs, text_context=text, image_context=per_frame)
    combined = torch.cat([text, per_frame.flatten(1, 2)], dim=1)  # official: text ⧺ frame-major image tokens
    assert torch.equal(explicit, _run(unet, inputs, context=combined))
    # a token count that is not frames × per-frame tokens is one set shared by every frame, as in the official code
    assert torch.equal(_run(unet, inputs, text_context=text, image_context=shared),
                       _run(unet, inputs, context=torch.cat([text, shared], dim=1)))
    # shared tokens are the per-frame layout with the same tokens on every frame
    same = shared[:, None].expand(-1, T, -1, -1)
    assert torch.equal(_run(unet, inputs, text_context=text, image_context=shared),
                       _run(unet, inputs, text_context=text, image_context=same))
    # and the frames' own tokens matter
    assert not torch.allclose(explicit, _run(unet, inputs, text_context=text, image_context=per_frame.flip(1)))


def test_concat_is_the_channel_concatenation_and_a_single_frame_latent_is_repeated(unet, inputs):
    text, image = inputs["text"], inputs["per_frame"]
    ref = _run(unet, inputs, text_context=text, image_context=image)
    with torch.no_grad():
        manual = unet(torch.cat([inputs["x"], inputs["image_latent"]], 1), inputs["t"], text, image_context=image, fps=8)
        still = inputs["image_latent"][:, :, :1].expand(-1, -1, T, -1, -1)
        repeated = unet(inputs["x"], inputs["t"], text, image_context=image, concat=still[:, :, 0], fps=8)
        full = unet(inputs["x"], inputs["t"], text, image_context=image, concat=still, fps=8)
    assert torch.equal(ref, manual)
    assert torch.equal(repeated, full)


def test_stream_weights_are_per_call_and_per_row(unet, inputs):
    text, image = inputs["text"], inputs["per_frame"]
    one = _run(unet, inputs, text_context=text, image_context=image, image_scale=1.0)
    assert torch.equal(one, _run(unet, inputs, text_context=text, image_context=image))  # configured λ_v is 1
    silent = _run(unet, inputs, text_context=text, image_context=image, image_scale=0.0)
    assert torch.equal(silent, _run(unet, inputs, text_context=text))  # λ_v = 0: the text-only model
    assert not torch.allclose(one, silent)
    # one weight per batch row: row 0 full image stream, row 1 none; UniVid's (λ_t, λ_v) per sample
    rows = _run(unet, inputs, text_context=text, image_context=image, image_scale=torch.tensor([1.0, 0.0]))
    assert torch.allclose(rows[0], one[0], atol=1e-6) and torch.allclose(rows[1], silent[1], atol=1e-6)
    half = _run(unet, inputs, text_context=text, image_context=image, text_scale=0.5)
    mixed = _run(unet, inputs, text_context=text, image_context=image, text_scale=torch.tensor([1.0, 0.5]))
    assert torch.allclose(mixed[0], one[0], atol=1e-6) and torch.allclose(mixed[1], half[1], atol=1e-6)
    assert not torch.allclose(half, one)
    # λ_t = 0, λ_v = 1: the image-only stream, whatever the caption
    img_only = _run(unet, inputs, text_context=text, image_context=image, text_scale=0.0)
    assert torch.allclose(img_only, _run(unet, inputs, text_context=text.flip(0), image_context=image, text_scale=0.0))


def test_frame_stride_feeds_the_fps_embedding(unet, inputs):
    text = inputs["text"]
    with torch.no_grad():
        a = unet(inputs["x"], inputs["t"], text, concat=inputs["image_latent"], frame_stride=3)
        b = unet(inputs["x"], inputs["t"], text, concat=inputs["image_latent"], fps=3)
        c = unet(inputs["x"], inputs["t"], text, concat=inputs["image_latent"], fps=9)
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_context": "frames"}, "per-frame image_context has 2 frames"),
        ({"image_context": "4d_bad"}, "image_context must be"),
        ({"concat": None}, "takes 8 input channels, got 4"),
        ({"concat": "short"}, "concat must be"),
        ({"text_context": "long"}, "more than this model's text length 5"),
        ({"image_scale": "three"}, r"one value per batch row \(2,\)"),
        ({"both": True}, "not both"),
        ({"fps_and_stride": True}, "give fps or frame_stride"),
    ],
)
def test_bad_conditions_get_one_clear_error(unet, inputs, kwargs, message):
    x, t, text = inputs["x"], inputs["t"], inputs["text"]
    kw = {"text_context": text, "concat": inputs["image_latent"]}
    if kwargs.get("image_context") == "frames":
        kw["image_context"] = inputs["per_frame"][:, :2]
    elif kwargs.get("image_context") == "4d_bad":
        kw["image_context"] = torch.randn(2, DIM)
    if "concat" in kwargs:
        kw["concat"] = None if kwargs["concat"] is None else inputs["image_latent"][:, :, :2]
    if kwargs.get("text_context") == "long":
        kw["text_context"] = torch.cat([text, inputs["shared"]], 1)
    if kwargs.get("image_scale") == "three":
        kw["image_scale"] = torch.ones(3)
    if kwargs.get("both"):
        kw["context"] = text
    if kwargs.get("fps_and_stride"):
        kw.update(fps=4, frame_stride=2)
    with pytest.raises(ValueError, match=message), torch.no_grad():
        unet(x, t, **kw)


def test_image_context_on_a_text_only_unet_is_refused():
    unet = UNet3DModel(**{**I2V_UNET, "in_channels": 4, "image_cross_attention": False})
    with pytest.raises(ValueError, match="no image cross-attention"), torch.no_grad():
        unet(torch.randn(1, 4, T, 8, 8), 10, torch.randn(1, N_TEXT, DIM), image_context=torch.randn(1, 3, DIM))


def test_projector_gives_the_unet_layout():
    per_frame = Resampler(dim=16, depth=1, dim_head=8, heads=2, num_queries=3, embedding_dim=12, output_dim=DIM,
                          video_length=T).eval()
    shared = Resampler(dim=16, depth=1, dim_head=8, heads=2, num_queries=3, embedding_dim=12, output_dim=DIM).eval()
    clip = torch.randn(2, 9, 12)
    with torch.no_grad():
        assert per_frame.image_context(clip).shape == (2, T, 3, DIM)
        assert torch.equal(per_frame.image_context(clip).flatten(1, 2), per_frame(clip))  # frame-major, as official
        assert shared.image_context(clip).shape == (2, 3, DIM)
        # another frame count: every frame sees all tokens, as the official U-Net does when the count does not match
        assert torch.equal(per_frame.image_context(clip, num_frames=2), per_frame(clip))
        assert torch.equal(per_frame.image_context(clip, num_frames=T), per_frame.image_context(clip))
