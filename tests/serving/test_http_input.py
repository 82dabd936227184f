"""Request parsing pieces that need no server: rejection statuses, top_k, base64, settings."""

from __future__ import annotations

import pytest

from serving.http_input import ApiError, InputLimits, _check_top_k, _decode_base64
from serving.settings import load_serve_params
from tests.serving import images
from transferline.data.imaging import ImageLimits, ImageRejected, decode_image
from transferline.errors import ParamsError

LIMITS = InputLimits(max_request_images=4, max_image_bytes=1000, top_k_default=5, top_k_max=10)


@pytest.mark.parametrize(
    ("data", "limits", "status"),
    [
        (b"", ImageLimits(), 400),
        (b"x" * 2000, ImageLimits(max_bytes=1000), 413),
        (images.flat_png(300, 300), ImageLimits(max_pixels=10_000), 413),
        (images.png_header_only(60000, 60000), ImageLimits(), 413),
        (b"plain text, no image", ImageLimits(), 415),
        (b"%PDF-1.7\n", ImageLimits(), 415),
        (images.truncated_jpeg(), ImageLimits(), 422),
        (images.png_header_only(60, 60)[:20], ImageLimits(), 422),  # starts like a PNG, header cut short
    ],
)
def test_every_decode_rejection_carries_its_status(data, limits, status):
    """The status is chosen where the rejection is raised, not read back from its wording."""
    with pytest.raises(ImageRejected) as rejected:
        decode_image(data, limits)
    assert rejected.value.status == status


@pytest.mark.parametrize(("value", "expected"), [(None, 5), (3, 3), ("7", 7), (10, 10)])
def test_top_k_accepted(value, expected):
    assert _check_top_k(value, LIMITS) == expected


@pytest.mark.parametrize("value", [0, 11, -1, "x", 2.5, True, "1e3"])
def test_top_k_refused(value):
    with pytest.raises(ApiError) as refused:
        _check_top_k(value, LIMITS)
    assert refused.value.status == 422
    assert "from 1 to 10" in refused.value.error


def test_base64_accepts_data_urls_and_line_breaks():
    assert _decode_base64("data:image/png;base64,aGVs\nbG8=", "image_b64") == b"hello"
    with pytest.raises(ApiError) as refused:
        _decode_base64("aGVsbG8", "image_b64")  # missing padding
    assert refused.value.status == 400 and "image_b64 is not valid base64" in refused.value.error


def test_body_limit_leaves_room_for_base64():
    assert LIMITS.max_body_bytes(1) > 1000 * 4 / 3
    assert LIMITS.max_body_bytes(4) > 4 * LIMITS.max_body_bytes(1) - 4 * 64 * 1024


def test_error_response_shape():
    response = ApiError(413, "too big", {"limit": 3}, headers={"Retry-After": "1"}).response()
    assert response.status_code == 413
    assert response.body == b'{"error":"too big","detail":{"limit":3}}'
    assert response.headers["retry-after"] == "1"


def test_serve_params_from_the_project_file_and_env_overrides(tmp_path):
    from tests.serving.conftest import PROJECT_ROOT

    project = load_serve_params(PROJECT_ROOT / "params.yaml", environ={})
    assert project.host == "127.0.0.1"  # loopback unless told otherwise
    assert project.workers >= 1 and project.max_batch_images >= 1
    overridden = load_serve_params(
        PROJECT_ROOT / "params.yaml",
        environ={"TRANSFERLINE_SERVE_BATCHING": "false", "TRANSFERLINE_SERVE_PORT": "4000"},
    )
    assert overridden.batching is False and overridden.port == 4000
    assert load_serve_params(tmp_path / "absent.yaml", environ={}).port == 3000


def test_serve_params_refuse_bad_values():
    with pytest.raises(ParamsError, match=r"serve\.port"):
        load_serve_params("absent.yaml", environ={"TRANSFERLINE_SERVE_PORT": "0"})
    with pytest.raises(ParamsError, match="TRANSFERLINE_SERVE_WORKRES"):
        load_serve_params("absent.yaml", environ={"TRANSFERLINE_SERVE_WORKRES": "2"})
    with pytest.raises(ParamsError, match="top_k_default"):
        load_serve_params("absent.yaml", environ={"TRANSFERLINE_SERVE_TOP_K_DEFAULT": "30"})
