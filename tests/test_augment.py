import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from torch.utils._python_dispatch import TorchDispatchMode

import directclr.augment as augment_module
from directclr.augment import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    SATURATION,
    ViewAugmentation,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    augment,
    blur_kernel_size,
    color_jitter,
    draw_parameters,
    gaussian_blur,
    grayscale,
    resized_crop,
    sample_crop_boxes,
    solarize,
)

OFF = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0, jitter_p=0, grayscale_p=0,
           blur_p=0, solarize_p=0)  # fmt: skip


def _images(n=256, c=3, size=32, seed=0):
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))  # fmt: skip


def _colours(n=16, height=12, width=20, seed=0):
    """Float images with the cases colour code trips on: ties between channels, greys, 0, 1."""
    x = torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(seed))
    x[:, 1, :2] = x[:, 0, :2]  # red = green
    x[:, 2, 2:4] = x[:, 1, 2:4]  # green = blue
    x[:, :, 4:6] = x[:, :1, 4:6]  # grey
    x[:, :, 6, :5] = 0.0
    x[:, :, 7, :5] = 1.0
    return x


def _per_image(fn, images, *params):
    return torch.stack([fn(img, *(p[i].item() for p in params)) for i, img in enumerate(images)])


def _factors(n, low, high, seed=1):
    return low + (high - low) * torch.rand(n, generator=torch.Generator().manual_seed(seed))


# ---- the engine's statistics ------------------------------------------------------------------


def test_output_is_float_in_unit_range_with_input_shape():
    config = ViewAugmentation(solarize_p=0.5)
    out = augment(_images(), config, torch.Generator().manual_seed(1))
    assert out.dtype == torch.float32
    assert out.shape == (256, 3, 32, 32)
    assert out.min() >= 0 and out.max() <= 1
    assert augment(_images(8), config, size=(20, 24)).shape == (8, 3, 20, 24)


def test_same_seed_same_views_and_different_samples_differ():
    images = _images(8)[:1].repeat(8, 1, 1, 1)
    a = augment(images, ViewAugmentation(), torch.Generator().manual_seed(3))
    b = augment(images, ViewAugmentation(), torch.Generator().manual_seed(3))
    c = augment(images, ViewAugmentation(), torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    # Eight copies of one image get eight different views.
    distinct = {tuple(v.flatten()[:64].tolist()) for v in a}
    assert len(distinct) == 8


def test_crop_area_fraction_stays_inside_scale_and_spreads_across_it():
    boxes = sample_crop_boxes(20000, 32, 32, (0.2, 0.9), (3 / 4, 4 / 3),
                              torch.Generator().manual_seed(0))  # fmt: skip
    area = boxes[:, 2] * boxes[:, 3] / (32 * 32)
    # Rounding h and w to pixels moves the area by at most a few percent.
    assert area.min() > 0.17 and area.max() < 0.95
    assert area.quantile(0.1) < 0.33 and area.quantile(0.9) > 0.75
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 32).all() and (left + w <= 32).all()


def test_crop_boxes_are_distributed_as_torchvision_draws_them():
    torch.manual_seed(0)
    crop = T.RandomResizedCrop(24)
    image = torch.zeros(3, 24, 40)
    theirs = torch.tensor([[p["top"], p["left"], p["height"], p["width"]]
                           for p in (crop.make_params([image]) for _ in range(3000))],
                          dtype=torch.float32)  # fmt: skip
    ours = sample_crop_boxes(20000, 24, 40, (0.08, 1.0), (3 / 4, 4 / 3),
                             torch.Generator().manual_seed(0))  # fmt: skip
    for boxes_stat in (
        lambda b: b[:, 2] * b[:, 3] / (24 * 40),  # area fraction
        lambda b: b[:, 3] / b[:, 2],  # aspect ratio
        lambda b: (b[:, 1] + b[:, 3] / 2) / 40,  # horizontal centre
    ):
        a, b = boxes_stat(ours), boxes_stat(theirs)
        for q in (0.1, 0.5, 0.9):
            assert a.quantile(q).item() == pytest.approx(b.quantile(q).item(), abs=0.04)


def test_identity_configuration_returns_the_image():
    images = _images(16)
    out = augment(images, ViewAugmentation(**OFF), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, images.float() / 255, atol=1e-5, rtol=0)


def test_flip_rate_matches_p():
    config = ViewAugmentation(**{**OFF, "hflip_p": 0.5})
    images = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand(4000, 1, 16, 16).contiguous()
    out = augment(images, config, torch.Generator().manual_seed(0))
    flipped = out[:, 0, 0, 0] > out[:, 0, 0, -1]
    assert flipped.float().mean().item() == pytest.approx(0.5, abs=0.03)
    # A flipped view is the mirror image, pixel for pixel.
    torch.testing.assert_close(out[flipped], images[flipped].flip(-1), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("field", "p"), [("jitter_p", 0.6), ("grayscale_p", 0.3), ("solarize_p", 0.2), ("blur_p", 0.1)]
)
def test_each_operation_is_applied_to_a_fraction_p_of_samples(field, p):
    # blur sigma is a fraction of the side: 0.2-0.25 of 8 px is a visible 1.6-2 px blur.
    config = ViewAugmentation(**{**OFF, field: p, "solarize_threshold": 0.0,
                                 "blur_sigma": (0.2, 0.25)})  # fmt: skip
    images = _images(4000, size=8)
    out = augment(images, config, torch.Generator().manual_seed(0))
    changed = (out - images.float() / 255).flatten(1).abs().amax(dim=1) > 1e-4
    assert changed.float().mean().item() == pytest.approx(p, abs=0.03)
    if field == "grayscale_p":
        grey = ((out[:, 0] == out[:, 1]) & (out[:, 1] == out[:, 2])).flatten(1).all(1)
        assert torch.equal(grey, changed)


def test_each_jitter_operation_runs_once_on_the_samples_that_draw_it(monkeypatch):
    # Four order slots, but every operation sees each jittered sample exactly once, and no
    # other sample: 4 evaluations per sample where whole-batch selection would take 16.
    seen = {}
    for name in ("adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue"):
        real = getattr(augment_module, name)

        def counted(x, params, real=real, name=name):
            seen[name] = seen.get(name, 0) + len(x)
            return real(x, params)

        monkeypatch.setattr(augment_module, name, counted)
    drawn = []
    real_draw = augment_module.draw_parameters
    monkeypatch.setattr(
        augment_module, "draw_parameters", lambda *a: drawn.append(real_draw(*a)) or drawn[-1]
    )
    augment(
        _images(512), ViewAugmentation(**{**OFF, "jitter_p": 0.8}), torch.Generator().manual_seed(3)
    )
    # Each operation's rows over the four slots are the same set: the jittered samples.
    rows = drawn[0].rows
    jittered = [sorted(torch.cat(rows[op:16:4]).tolist()) for op in range(4)]
    assert jittered[0] == sorted(set(jittered[0])) and jittered.count(jittered[0]) == 4
    assert 350 < len(jittered[0]) < 470
    assert seen == dict.fromkeys(seen, len(jittered[0])) and len(seen) == 4


def test_a_seed_gives_the_views_it_gave_before_the_draws_were_packed():
    # Pinned from the engine before its parameters travelled in one packed copy: the same
    # generator state gives the same views and leaves the generator in the same state.
    images = _images(16)
    generator = torch.Generator().manual_seed(7)
    out = augment(images, ViewAugmentation(blur_p=0.5, solarize_p=0.5), generator)
    weights = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = [8.2939, -4.4528, -0.2456, -9.9364, 1.1611, -7.7163, -6.1518, 4.6009,
                -13.9799, -1.6351, -21.4638, -5.6916, -7.2249, 2.8659, -2.0852, 1.2135]  # fmt: skip
    torch.testing.assert_close(
        (out * weights).sum(dim=(1, 2, 3)), torch.tensor(expected), atol=2e-3, rtol=0
    )
    assert torch.rand(1, generator=generator).item() == 0.7009416818618774


class _CrossDeviceCopies(TorchDispatchMode):
    """Records every copy between devices that the operations inside the block make."""

    def __init__(self):
        super().__init__()
        self.copies = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.ops.aten._to_copy.default:
            source = args[0]
        elif func is torch.ops.aten.copy_.default:
            source = args[1]
        else:
            return out
        if source.device != out.device:
            self.copies.append((source.device.type, out.device.type, kwargs))
        return out


def test_a_call_makes_one_non_blocking_copy_to_the_device_and_reads_nothing_back():
    # On the meta device tensors have shapes but no values: reading one back (.item(),
    # .tolist(), nonzero) would raise, so the run itself shows no step waits on the device.
    images = _images(64).to("meta")
    for config in (ViewAugmentation(blur_p=0.5, solarize_p=0.5), ViewAugmentation(**OFF)):
        with _CrossDeviceCopies() as seen:
            out = augment(images, config, torch.Generator().manual_seed(0))
        assert out.shape == images.shape and out.device.type == "meta"
        assert [(src, dst, kwargs.get("non_blocking")) for src, dst, kwargs in seen.copies] == [
            ("cpu", "meta", True)
        ]
    with _CrossDeviceCopies() as seen:
        augment(_images(8), ViewAugmentation(), torch.Generator().manual_seed(0))
    assert seen.copies == []  # on the host nothing travels


def test_packed_parameters_arrive_as_drawn(monkeypatch):
    drawn = draw_parameters(
        40,
        3,
        (32, 32),
        (32, 32),
        ViewAugmentation(solarize_p=0.5),
        torch.Generator().manual_seed(1),
    )
    # The copy to a device replaced by a host copy, so the unpacked values can be read.
    monkeypatch.setattr(augment_module, "to_device", lambda tensor, device: tensor.clone())
    moved = drawn.to(torch.device("meta"))
    for name in ("boxes", "flip", "jitter", "sigma"):
        assert torch.equal(getattr(moved, name), getattr(drawn, name)), name
    assert [r.tolist() for r in moved.rows] == [r.tolist() for r in drawn.rows]
    assert all(r.dtype == torch.int64 for r in moved.rows) and moved.flip.dtype == torch.bool
    assert drawn.to(torch.device("cpu")) is drawn


def test_an_operation_on_every_sample_followed_by_one_on_some():
    # Grayscale on the whole batch hands the next operations a batch they write rows into.
    config = ViewAugmentation(grayscale_p=1.0, blur_p=0.5, solarize_p=0.5)
    out = augment(_images(64), config, torch.Generator().manual_seed(0))
    assert (out[:, 0] == out[:, 1]).all() and (out[:, 1] == out[:, 2]).all()


def test_a_generator_off_the_host_is_refused_before_work():
    class OnDevice:
        device = torch.device("meta")

    with pytest.raises(ValueError, match="CPU generator"):
        augment(_images(4), ViewAugmentation(), OnDevice())


def test_engine_runs_on_one_cpu_thread_and_restores_the_thread_count(monkeypatch):
    seen = []
    real_blur = augment_module.gaussian_blur

    def blur(*args):
        seen.append(torch.get_num_threads())
        return real_blur(*args)

    monkeypatch.setattr(augment_module, "gaussian_blur", blur)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        augment(_images(8), ViewAugmentation(blur_p=1.0))
        assert seen == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_single_channel_images_get_every_operation_that_applies_to_them():
    images = _images(64, c=1)
    out = augment(images, ViewAugmentation(solarize_p=0.5), torch.Generator().manual_seed(0))
    assert out.shape == (64, 1, 32, 32)
    assert out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match="1 or 3 channels"):
        augment(_images(4, c=2), ViewAugmentation())


# ---- strength ---------------------------------------------------------------------------------


def test_strength_scales_amounts_and_probabilities_and_one_is_the_recipe():
    recipe = ViewAugmentation(solarize_p=0.2)
    assert recipe.scaled() == recipe
    double = ViewAugmentation(solarize_p=0.2, strength=2).scaled()
    assert double.strength == 1
    assert (double.brightness, double.contrast, double.saturation) == pytest.approx((0.8, 0.8, 0.4))
    assert double.hue == pytest.approx(0.2)
    assert (double.jitter_p, double.grayscale_p, double.blur_p) == (1.0, 0.4, 1.0)
    assert double.solarize_p == pytest.approx(0.4)
    assert double.hflip_p == 0.5  # mirroring never goes above the recipe's rate
    assert double.crop_scale == pytest.approx((0.08**2, 1.0))
    assert double.crop_ratio == pytest.approx(((3 / 4) ** 2, (4 / 3) ** 2))
    assert double.blur_sigma == recipe.blur_sigma
    half = ViewAugmentation(strength=0.5).scaled()
    assert (half.jitter_p, half.hflip_p, half.brightness) == pytest.approx((0.4, 0.25, 0.2))
    assert half.crop_scale[0] == pytest.approx(0.08**0.5)
    assert ViewAugmentation(hue=0.4, strength=3).scaled().hue == 0.5


def test_strength_zero_is_the_identity_and_strength_reaches_the_views():
    images = _images(16)
    out = augment(images, ViewAugmentation(strength=0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, images.float() / 255, atol=1e-5, rtol=0)
    # Half strength: colour jitter (and nothing else here) on 0.8 * 0.5 of the samples.
    config = ViewAugmentation(**{**OFF, "jitter_p": 0.8, "strength": 0.5})
    images = _images(4000, size=8)
    out = augment(images, config, torch.Generator().manual_seed(0))
    changed = (out - images.float() / 255).flatten(1).abs().amax(dim=1) > 1e-4
    assert changed.float().mean().item() == pytest.approx(0.4, abs=0.03)


def test_bad_ranges_are_rejected():
    with pytest.raises(ValueError, match="crop_scale"):
        ViewAugmentation(crop_scale=(0.9, 0.1))
    with pytest.raises(ValueError, match="hflip_p"):
        ViewAugmentation(hflip_p=1.5)
    with pytest.raises(ValueError, match="blur_kernel_size"):
        ViewAugmentation(blur_kernel_size=4)
    with pytest.raises(ValueError, match="strength"):
        ViewAugmentation(strength=-1)


# ---- each operation equals torchvision.transforms.v2.functional with the same parameters ----


@pytest.mark.parametrize(
    ("ours", "theirs", "low", "high"),
    [
        (adjust_brightness, TF.adjust_brightness, 0.4, 1.8),
        (adjust_contrast, TF.adjust_contrast, 0.4, 1.8),
        (adjust_saturation, TF.adjust_saturation, 0.0, 1.8),
        (adjust_hue, TF.adjust_hue, -0.5, 0.5),
    ],
)
def test_colour_operations_match_torchvision(ours, theirs, low, high):
    images = _colours()
    factors = _factors(len(images), low, high)
    torch.testing.assert_close(
        ours(images, factors), _per_image(theirs, images, factors), atol=1e-5, rtol=0
    )
    grey = images[:, :1]
    torch.testing.assert_close(
        ours(grey, factors), _per_image(theirs, grey, factors), atol=1e-5, rtol=0
    )


def test_colour_jitter_applies_each_samples_operations_in_its_own_order():
    images = _colours(n=24)
    n = len(images)
    b, c, s = _factors(n, 0.6, 1.4, 1), _factors(n, 0.6, 1.4, 2), _factors(n, 0.6, 1.4, 3)
    h = _factors(n, -0.1, 0.1, 4)
    order = torch.rand(n, 4, generator=torch.Generator().manual_seed(5)).argsort(dim=1)
    apply = torch.arange(n) % 5 != 0
    out = color_jitter(images, b, c, s, h, order, apply)

    ops = {
        BRIGHTNESS: lambda x, i: TF.adjust_brightness(x, b[i].item()),
        CONTRAST: lambda x, i: TF.adjust_contrast(x, c[i].item()),
        SATURATION: lambda x, i: TF.adjust_saturation(x, s[i].item()),
        HUE: lambda x, i: TF.adjust_hue(x, h[i].item()),
    }
    for i in range(n):
        expected = images[i]
        for op in order[i].tolist() if apply[i] else []:
            expected = ops[op](expected, i)
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)
    assert len({tuple(o) for o in order.tolist()}) > 10  # the orders really differ


def test_grayscale_and_solarize_match_torchvision():
    images = _colours()
    torch.testing.assert_close(grayscale(images), TF.rgb_to_grayscale(images), atol=1e-6, rtol=0)
    for threshold in (0.0, 0.3, 0.5, 1.0):
        torch.testing.assert_close(
            solarize(images, threshold), TF.solarize(images, threshold), atol=0, rtol=0
        )


@pytest.mark.parametrize("kernel_size", [3, 5, 9])
def test_gaussian_blur_matches_torchvision(kernel_size):
    images = _colours(n=8)
    sigma = _factors(len(images), 0.1, 2.0)
    ours = gaussian_blur(images, sigma, kernel_size)
    theirs = _per_image(lambda x, s: TF.gaussian_blur(x, [kernel_size] * 2, [s, s]), images, sigma)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    constant = torch.full((2, 3, 6, 6), 0.25)
    assert torch.allclose(gaussian_blur(constant, torch.tensor([0.5, 2.0]), 9), constant)
    assert blur_kernel_size(224, 224) == 23 and blur_kernel_size(32, 32) == 3


@pytest.mark.parametrize(("size", "antialias"), [((12, 20), True), ((30, 26), True),
                                                 ((5, 7), False)])  # fmt: skip
def test_resized_crop_and_flip_match_torchvision(size, antialias):
    # torchvision's default antialias=True only differs from plain bilinear when shrinking:
    # a crop resized to the input size (the engine's default) or larger matches it exactly;
    # shrinking (the last case) matches antialias=False.
    images = _colours(n=32)
    boxes = sample_crop_boxes(32, 12, 20, (0.08, 1.0), (3 / 4, 4 / 3),
                              torch.Generator().manual_seed(2))  # fmt: skip
    flip = torch.arange(32) % 2 == 1
    ours = resized_crop(images, boxes, size, flip)
    for i in range(32):
        top, left, h, w = (int(v) for v in boxes[i])
        expected = TF.resized_crop(images[i], top, left, h, w, list(size), antialias=antialias)
        if flip[i]:
            expected = TF.horizontal_flip(expected)
        torch.testing.assert_close(ours[i], expected, atol=1e-5, rtol=0)
