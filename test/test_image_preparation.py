import cv2
import numpy as np
from phi3v_ros.engine.image_preparation import bound_longest_side, encode_image
from phi3v_test_utils import gradient_image
import pytest


@pytest.mark.parametrize('shape,max_side,expected', [
    ((1080, 1920, 3), 1344, (756, 1344, 3)),
    ((1920, 1080, 3), 1344, (1344, 756, 3)),
    ((480, 640, 3), 1344, (480, 640, 3)),       # never upscaled
    ((4000, 10, 3), 100, (100, 1, 3)),          # never below one pixel
    ((1080, 1920, 3), 0, (1080, 1920, 3)),      # 0 = no bound
])
def test_bound_longest_side(shape, max_side, expected):
    assert bound_longest_side(np.zeros(shape, np.uint8), max_side).shape == expected


def test_frame_within_bound_is_returned_without_a_copy():
    frame = np.zeros((480, 640, 3), np.uint8)
    assert bound_longest_side(frame, 1344) is frame


def test_png_round_trip_is_lossless_and_keeps_rgb_order():
    rgb = gradient_image(37, 53)
    encoded = encode_image(rgb, 'png')
    assert encoded.startswith(b'\x89PNG\r\n\x1a\n')
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR),
                           cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decoded, rgb)


def test_jpeg_is_close_to_the_original():
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0] = 200   # pure red must stay red (catches an RGB/BGR swap)
    encoded = encode_image(rgb, 'jpeg', 95)
    assert encoded.startswith(b'\xff\xd8\xff')
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR),
                           cv2.COLOR_BGR2RGB)
    assert np.abs(decoded.astype(int) - rgb).max() <= 4


def test_encode_refuses_what_is_not_rgb_uint8():
    with pytest.raises(ValueError, match='RGB'):
        encode_image(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match='RGB'):
        encode_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match='image_format'):
        encode_image(np.zeros((4, 4, 3), np.uint8), 'bmp')
