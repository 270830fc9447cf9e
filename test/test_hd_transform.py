"""engine.hd_transform against onnxruntime-genai's Phi-3-vision processor, and on its own."""
import cv2
import numpy as np
from phi3v_ros.engine.genai_releases import version_tuple
from phi3v_ros.engine.hd_transform import (CLIP_MEAN, CLIP_STD, crop_grid, CROP_SIDE, CropGrid,
                                           FAST_ENLARGED_MAX_ABS_DIFF, FAST_MAX_ABS_DIFF,
                                           FAST_MEAN_ABS_DIFF, MAX_CROPS, prepare_image)
from phi3v_test_utils import gradient_image
import pytest

PROMPT = '<|user|>\n<|image_1|>\nWhat is this?<|end|>\n<|assistant|>\n'
# The processor's pixel_values always hold this many crops (the global view included).
PROCESSOR_CROPS = MAX_CROPS + 1

# (height, width, content) compared with the processor. Both contents for most sizes; the huge
# ones once each, to keep the module under a minute on a shared 2-core machine.
SIZES = [
    (480, 640), (1080, 1920),          # landscape
    (640, 480), (1920, 1080),          # portrait
    (500, 500), (336, 336),            # square
    (1, 1), (2, 3), (16, 16),          # tiny
    (333, 777), (1000, 999), (999, 1000), (481, 641),  # odd
    (10, 2000), (2000, 10), (1, 5376),  # extreme aspect ratios (1 x 5376 is the limit)
    (1008, 1344),                      # already at the resized size: no resampling
    (1000, 1344),                      # 1344 / (1344 / 1000) is 999.99..: one row shrunk away
]
FRAMES = ([(h, w, content) for h, w in SIZES for content in ('random', 'gradient')]
          + [(3000, 4000, 'random'), (2160, 4096, 'gradient')])


def make_frame(height, width, content, seed=0):
    """Draw a seeded test frame: uniform noise (the worst case for resampling) or gradients."""
    if content == 'random':
        rng = np.random.default_rng([height, width, seed])
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return gradient_image(height, width, seed=seed)


def normalise(levels, channel):
    """Normalise uint8 levels of one channel as the processor does (float32 all the way)."""
    levels = np.asarray(levels, dtype=np.float32)
    return (levels / np.float32(255.0) - np.float32(CLIP_MEAN[channel])) / np.float32(
        CLIP_STD[channel])


def assemble(crops, grid):
    """Put the crops [rows * cols, 3, 336, 336] back together as padded planes [3, H, W]."""
    tiles = crops.reshape(grid.rows, grid.cols, 3, CROP_SIDE, CROP_SIDE)
    return tiles.transpose(2, 0, 3, 1, 4).reshape(3, grid.padded_height, grid.padded_width)


def content_box(grid):
    """Return the (top, left) corner of the resized frame inside the padded image."""
    return ((grid.padded_height - grid.resized_height) // 2,
            (grid.padded_width - grid.resized_width) // 2)


def genai_version(og):
    return version_tuple(og.__version__)[:2]


@pytest.fixture(scope='module')
def processor(tiny_model):
    """Return a function: RGB frame -> the processor's (pixel_values, image_sizes, tokens)."""
    og = pytest.importorskip('onnxruntime_genai')
    if genai_version(og) < (0, 7) or not hasattr(og.Images, 'open_bytes'):
        pytest.skip(f'onnxruntime-genai {og.__version__} gives no numpy view of the processor '
                    f'outputs (from 0.7 on)')
    model = og.Model(tiny_model)
    multimodal = model.create_multimodal_processor()

    def run(rgb):
        # PNG is lossless: the processor decodes exactly this frame.
        ok, png = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_PNG_COMPRESSION, 1])
        assert ok
        inputs = multimodal(PROMPT, images=og.Images.open_bytes(png.tobytes()))
        # The model stays referenced by this closure for as long as the processor is used.
        assert model is not None
        return (inputs['pixel_values'].as_numpy(), inputs['image_sizes'].as_numpy(),
                inputs['num_image_tokens'].as_numpy())
    return run


@pytest.fixture(scope='module', params=FRAMES, ids=lambda f: f'{f[2]}-{f[0]}x{f[1]}')
def compared(request, processor):
    """Return one frame and the processor's outputs for it (one frame alive at a time)."""
    height, width, content = request.param
    rgb = make_frame(height, width, content)
    return (rgb,) + processor(rgb)


# -- against the processor (budget 16, the only one it uses) --------------------------------------

def test_exact_mode_is_bit_identical_to_the_processor(compared):
    rgb, pixel_values, image_sizes, num_image_tokens = compared
    inputs = prepare_image(rgb, exact=True)
    crops = 1 + inputs.grid.num_crops
    assert pixel_values.shape == (1, PROCESSOR_CROPS, 3, CROP_SIDE, CROP_SIDE)
    assert pixel_values.dtype == inputs.pixel_values.dtype == np.float32
    assert inputs.pixel_values.shape == (crops, 3, CROP_SIDE, CROP_SIDE)
    assert np.array_equal(inputs.pixel_values, pixel_values[0, :crops])
    assert not pixel_values[0, crops:].any()
    assert image_sizes.dtype == num_image_tokens.dtype == np.int64
    assert image_sizes.tolist() == [list(inputs.image_size)]
    assert num_image_tokens.tolist() == [[inputs.num_image_tokens]]


def test_fast_mode_is_within_its_stated_tolerance_of_the_processor(compared):
    rgb, pixel_values, image_sizes, num_image_tokens = compared
    inputs = prepare_image(rgb)
    crops = 1 + inputs.grid.num_crops
    assert inputs.pixel_values.shape == (crops, 3, CROP_SIDE, CROP_SIDE)
    assert inputs.pixel_values.dtype == np.float32
    assert image_sizes.tolist() == [list(inputs.image_size)]
    assert num_image_tokens.tolist() == [[inputs.num_image_tokens]]
    difference = np.abs(inputs.pixel_values - pixel_values[0, :crops])
    assert difference.max() <= FAST_MAX_ABS_DIFF
    assert difference.mean() <= FAST_MEAN_ABS_DIFF
    grid = inputs.grid
    if grid.resized_height >= rgb.shape[0] and grid.resized_width >= rgb.shape[1]:
        assert difference.max() <= FAST_ENLARGED_MAX_ABS_DIFF


def test_crop_grid_gives_the_processor_sizes_and_tokens(compared):
    rgb, _, image_sizes, num_image_tokens = compared
    grid = crop_grid(rgb.shape[0], rgb.shape[1])
    assert image_sizes.tolist() == [[grid.padded_height, grid.padded_width]]
    assert num_image_tokens.tolist() == [[grid.image_tokens]]


@pytest.mark.parametrize('height,width', [
    (3, 4), (4, 3), (9, 16), (16, 9), (1, 2), (2, 1), (5, 7), (7, 5), (1, 16), (17, 1),
    (1, 100), (100, 1), (2, 1000), (37, 100), (100, 37), (335, 337), (673, 672)])
def test_crop_grid_matches_the_processor_for_any_aspect_ratio(processor, height, width):
    _, image_sizes, num_image_tokens = processor(np.zeros((height, width, 3), np.uint8))
    grid = crop_grid(height, width)
    assert image_sizes.tolist() == [[grid.padded_height, grid.padded_width]]
    assert num_image_tokens.tolist() == [[grid.image_tokens]]


# -- the crop grid and token counts ---------------------------------------------------------------

@pytest.mark.parametrize('height,width,tokens', [
    (480, 640, {1: 313, 4: 757, 9: 1489, 16: 1921}),    # 4:3
    (640, 480, {1: 313, 4: 757, 9: 1489, 16: 1933}),
    (1080, 1920, {1: 313, 4: 757, 9: 1045, 16: 2353}),  # 16:9
    (1920, 1080, {1: 313, 4: 757, 9: 1057, 16: 2377}),
    (720, 1280, {1: 313, 4: 757, 9: 1045, 16: 2353}),
])
def test_tokens_per_image_for_each_budget(height, width, tokens):
    for budget, expected in tokens.items():
        grid = crop_grid(height, width, budget)
        assert grid.image_tokens == expected, budget
        assert prepare_image(np.zeros((height, width, 3), np.uint8), budget).num_image_tokens \
            == expected


@pytest.mark.parametrize('height,width,budget,expected', [
    (480, 640, 16, CropGrid(3, 4, 1008, 1344)),
    (640, 480, 16, CropGrid(4, 3, 1344, 1008)),
    (1080, 1920, 16, CropGrid(3, 5, 945, 1680)),
    (1920, 1080, 16, CropGrid(5, 3, 1680, 945)),
    (1080, 1920, 9, CropGrid(2, 3, 567, 1008)),
    (480, 640, 4, CropGrid(2, 2, 504, 672)),
    (480, 640, 1, CropGrid(1, 1, 252, 336)),
    (500, 500, 16, CropGrid(4, 4, 1344, 1344)),
    (1, 1, 2, CropGrid(1, 1, 336, 336)),
    (1, 5376, 16, CropGrid(1, 16, 1, 5376)),
    (2000, 10, 16, CropGrid(16, 1, 5376, 26)),
])
def test_crop_grid(height, width, budget, expected):
    grid = crop_grid(height, width, budget)
    assert grid == expected
    assert (grid.padded_height, grid.padded_width) == (grid.rows * 336, grid.cols * 336)
    assert grid.image_tokens == (grid.rows * grid.cols + 1) * 144 + 1 + (grid.rows + 1) * 12


@pytest.mark.parametrize('seed', range(4))
def test_crop_grid_uses_the_largest_scale_within_the_budget(seed):
    rng = np.random.default_rng(seed)
    for _ in range(200):
        height, width = (int(n) for n in rng.integers(1, 3000, 2))
        budget = int(rng.integers(1, MAX_CROPS + 1))
        grid = crop_grid(height, width, budget)
        long_side, short_side = max(height, width), min(height, width)
        resized_long = max(grid.resized_height, grid.resized_width)
        resized_short = min(grid.resized_height, grid.resized_width)
        scale = resized_long // CROP_SIDE
        assert resized_long == scale * CROP_SIDE
        assert grid.rows * grid.cols <= budget
        # The next scale up would need more crops than the budget.
        assert (scale + 1) * -(-(scale + 1) * short_side // long_side) > budget
        # The aspect ratio is kept to the pixel, and the long side is not padded.
        assert abs(resized_short - resized_long * short_side / long_side) < 1
        assert (grid.resized_width == grid.padded_width if width >= height
                else grid.resized_height == grid.padded_height)
        assert 0 <= grid.padded_height - grid.resized_height < CROP_SIDE
        assert 0 <= grid.padded_width - grid.resized_width < CROP_SIDE


@pytest.mark.parametrize('max_crops', [0, -1, 17, 100])
def test_budgets_outside_1_to_16_are_refused(max_crops):
    with pytest.raises(ValueError, match='max_crops'):
        crop_grid(480, 640, max_crops)
    with pytest.raises(ValueError, match='max_crops'):
        prepare_image(np.zeros((48, 64, 3), np.uint8), max_crops)


@pytest.mark.parametrize('max_crops', [4.0, True, '4', None])
def test_budgets_that_are_not_ints_are_refused(max_crops):
    with pytest.raises(TypeError, match='max_crops'):
        prepare_image(np.zeros((48, 64, 3), np.uint8), max_crops)


def test_a_numpy_integer_budget_is_accepted():
    assert prepare_image(np.zeros((48, 64, 3), np.uint8), np.int64(4)).grid == \
        crop_grid(48, 64, 4)


@pytest.mark.parametrize('frame', [
    np.zeros((48, 64), np.uint8),               # grey
    np.zeros((48, 64, 4), np.uint8),            # RGBA
    np.zeros((48, 64, 1), np.uint8),
    np.zeros((2, 48, 64, 3), np.uint8),         # a batch
    np.zeros((48, 64, 3), np.float32),
    np.zeros((48, 64, 3), np.uint16),
    np.zeros((0, 64, 3), np.uint8),             # empty
    np.zeros((48, 0, 3), np.uint8),
], ids=['grey', 'rgba', 'one-channel', 'batch', 'float32', 'uint16', 'no-rows', 'no-columns'])
def test_frames_that_are_not_rgb_uint8_are_refused(frame):
    for exact in (False, True):
        with pytest.raises(ValueError, match='RGB'):
            prepare_image(frame, exact=exact)


def test_a_frame_that_is_not_an_array_is_refused():
    with pytest.raises(TypeError):
        prepare_image([[[0, 0, 0]]])


@pytest.mark.parametrize('height,width', [(0, 5), (5, 0), (1, 5377), (5377, 1), (2, 20000)])
def test_empty_and_too_elongated_frames_are_refused(height, width):
    # Beyond 5376:1 the short side would resize to 0 px; the processor fails on those too (0.18:
    # an error; 0.11: an image of width 0, or a crash), so they are refused here.
    with pytest.raises(ValueError):
        crop_grid(height, width)
    if height and width:
        with pytest.raises(ValueError, match='elongated'):
            prepare_image(np.zeros((height, width, 3), np.uint8))


# -- structure at every budget (the processor only ever uses 16) ----------------------------------

# Frames already at their resized size for the budget: no resampling, so every crop is exactly the
# normalised tile of the frame padded with white (an odd padding leaves the extra line last).
UNRESAMPLED = [(251, 336, 1), (336, 251, 1), (227, 672, 4), (672, 227, 4), (505, 1008, 9),
               (807, 1344, 16), (1344, 807, 16), (1002, 1344, 16), (1008, 1344, 16)]


@pytest.mark.parametrize('exact', [False, True], ids=['fast', 'exact'])
@pytest.mark.parametrize('height,width,budget', UNRESAMPLED)
def test_crops_are_the_tiles_of_the_white_padded_frame(height, width, budget, exact):
    rgb = make_frame(height, width, 'random', seed=1)
    grid = crop_grid(height, width, budget)
    assert (grid.resized_height, grid.resized_width) == (height, width)
    inputs = prepare_image(rgb, budget, exact=exact)
    assert inputs.pixel_values.shape == (1 + grid.num_crops, 3, CROP_SIDE, CROP_SIDE)
    top, left = content_box(grid)
    padded = np.full((grid.padded_height, grid.padded_width, 3), 255, np.uint8)
    padded[top:top + height, left:left + width] = rgb
    planes = assemble(inputs.pixel_values[1:], grid)
    for channel in range(3):
        assert np.array_equal(planes[channel], normalise(padded[:, :, channel], channel))


@pytest.mark.parametrize('height,width,budget', UNRESAMPLED)
def test_both_modes_give_the_same_global_view_when_nothing_is_resampled(height, width, budget):
    # The exact global view (double sums, tap after tap) and the fast one (float32 matrix
    # products) are independent implementations of the same weights: with identical crops they
    # agree to float32 rounding, at every budget and shape of grid.
    rgb = make_frame(height, width, 'gradient', seed=2)
    exact = prepare_image(rgb, budget, exact=True).pixel_values
    fast = prepare_image(rgb, budget).pixel_values
    assert np.array_equal(exact[1:], fast[1:])
    assert np.abs(exact[0] - fast[0]).max() <= 1e-5


@pytest.mark.parametrize('exact', [False, True], ids=['fast', 'exact'])
@pytest.mark.parametrize('height,width', [(480, 640), (640, 480), (333, 777), (2000, 10)])
def test_every_budget_gives_its_grid_with_white_centred_padding(height, width, exact):
    rgb = make_frame(height, width, 'gradient', seed=3)
    # gradient_image never reaches 255, so the resized frame never looks like padding.
    assert rgb.max() < 255
    white = [normalise(255, channel) for channel in range(3)]
    for budget in range(1, MAX_CROPS + 1):
        inputs = prepare_image(rgb, budget, exact=exact)
        grid = inputs.grid
        assert grid == crop_grid(height, width, budget)
        assert inputs.pixel_values.shape == (1 + grid.num_crops, 3, CROP_SIDE, CROP_SIDE)
        assert inputs.pixel_values.flags.c_contiguous
        assert inputs.image_size == (grid.padded_height, grid.padded_width)
        assert inputs.num_image_tokens == grid.image_tokens
        top, left = content_box(grid)
        bottom, right = top + grid.resized_height, left + grid.resized_width
        content = np.zeros((grid.padded_height, grid.padded_width), bool)
        content[top:bottom, left:right] = True
        planes = assemble(inputs.pixel_values[1:], grid)
        for channel in range(3):
            assert np.all(planes[channel][~content] == white[channel]), budget
        # Every edge row and column of the resized frame holds content, not padding.
        is_white = np.all(planes == np.asarray(white, np.float32)[:, None, None], axis=0)
        for edge in (is_white[top, left:right], is_white[bottom - 1, left:right],
                     is_white[top:bottom, left], is_white[top:bottom, right - 1]):
            assert not edge.any(), budget
        assert np.isfinite(inputs.pixel_values[0]).all()


@pytest.mark.parametrize('content', ['random', 'gradient'])
@pytest.mark.parametrize('height,width', [(480, 640), (1080, 1920), (1000, 999), (10, 2000)])
def test_fast_mode_is_within_its_tolerance_of_exact_mode_at_every_budget(height, width, content):
    # Exact mode is the processor at budget 16 (above); at the others it is the only reference.
    rgb = make_frame(height, width, content, seed=4)
    for budget in (1, 2, 4, 6, 9, 12):
        exact = prepare_image(rgb, budget, exact=True)
        fast = prepare_image(rgb, budget)
        assert fast.grid == exact.grid
        difference = np.abs(fast.pixel_values - exact.pixel_values)
        assert difference.max() <= FAST_MAX_ABS_DIFF, budget
        assert difference.mean() <= FAST_MEAN_ABS_DIFF, budget
        if exact.grid.resized_height >= height and exact.grid.resized_width >= width:
            assert difference.max() <= FAST_ENLARGED_MAX_ABS_DIFF, budget


@pytest.mark.parametrize('exact', [False, True], ids=['fast', 'exact'])
def test_a_plain_colour_stays_that_colour(exact):
    colour = (10, 200, 93)
    inputs = prepare_image(np.full((1008, 1344, 3), colour, np.uint8), exact=exact)
    expected = np.asarray([normalise(level, channel) for channel, level in enumerate(colour)],
                          np.float32)[:, None, None]
    assert np.array_equal(inputs.pixel_values[1:], np.broadcast_to(
        expected, inputs.pixel_values[1:].shape))
    assert np.abs(inputs.pixel_values[0] - expected).max() <= 1e-5
    # Resampling a plain colour gives it back exactly, at any scale, in Pillow's fixed point.
    resized = prepare_image(np.full((37, 50, 3), colour, np.uint8), exact=exact)
    top, left = content_box(resized.grid)
    planes = assemble(resized.pixel_values[1:], resized.grid)
    box = planes[:, top:top + resized.grid.resized_height, left:left + resized.grid.resized_width]
    assert np.array_equal(box, np.broadcast_to(expected, box.shape))


# -- inputs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('exact', [False, True], ids=['fast', 'exact'])
@pytest.mark.parametrize('height,width', [(480, 640), (1008, 1344), (2000, 10)])
def test_the_frame_is_not_modified_nor_shared(height, width, exact):
    # 1008 x 1344 needs neither resizing nor padding: the frame itself is the padded image.
    rgb = make_frame(height, width, 'random', seed=5)
    before = rgb.copy()
    inputs = prepare_image(rgb, exact=exact)
    assert np.array_equal(rgb, before)
    assert not np.shares_memory(inputs.pixel_values, rgb)
    # Nothing is cached between calls either: scribbling on one result changes no later one.
    first = inputs.pixel_values.copy()
    inputs.pixel_values[...] = 0
    assert np.array_equal(prepare_image(rgb, exact=exact).pixel_values, first)


@pytest.mark.parametrize('exact', [False, True], ids=['fast', 'exact'])
def test_views_and_other_layouts_give_the_same_inputs(exact):
    big = make_frame(700, 900, 'random', seed=6)
    views = {
        'crop': big[50:530, 100:740],
        'flipped': big[::-1, ::-1],
        'strided': big[::2, ::2],
        'reversed channels': big[:, :, ::-1],
        'fortran order': np.asfortranarray(big),
    }
    read_only = big.copy()
    read_only.flags.writeable = False
    views['read-only'] = read_only
    for name, view in views.items():
        expected = prepare_image(np.ascontiguousarray(view), exact=exact)
        got = prepare_image(view, exact=exact)
        assert got.grid == expected.grid, name
        assert np.array_equal(got.pixel_values, expected.pixel_values), name
