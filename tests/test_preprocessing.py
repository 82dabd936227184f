import numpy as np
from PIL import Image

from transferline.data.preprocessing import PreprocessSpec, normalize, resize_for_model

SPEC = PreprocessSpec(32, "crop", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_crop_keeps_the_centre_of_a_wide_image():
    array = np.zeros((40, 120, 3), dtype=np.uint8)
    array[:, 40:80] = 255  # white centre third
    out = resize_for_model(Image.fromarray(array), SPEC)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out[:, 4:28].min() > 200  # the centre crop is (nearly) all white


def test_squash_keeps_the_whole_image():
    array = np.zeros((40, 120, 3), dtype=np.uint8)
    array[:, 40:80] = 255
    spec = PreprocessSpec(32, "squash", SPEC.mean, SPEC.std)
    out = resize_for_model(Image.fromarray(array), spec)
    assert out.shape == (32, 32, 3)
    assert out[:, 0].max() == 0 and out[:, 16].min() > 200  # black borders survive


def test_tiny_and_extreme_aspect_images_still_fill_the_input():
    for size in [(1, 1), (200, 1), (1, 200)]:
        out = resize_for_model(Image.new("RGB", size, (9, 9, 9)), SPEC)
        assert out.shape == (32, 32, 3)


def test_normalize_matches_the_formula():
    batch = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    out = normalize(batch, SPEC)
    assert out.shape == (2, 3, 32, 32) and out.dtype == np.float32
    expected = (batch[1, 5, 7, 2] / 255.0 - SPEC.mean[2]) / SPEC.std[2]
    assert abs(out[1, 2, 5, 7] - expected) < 1e-6


def test_spec_round_trips_through_its_dict():
    assert PreprocessSpec.from_dict(SPEC.to_dict()) == SPEC
