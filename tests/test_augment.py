import pytest
import torch

from directclr.augment import (
    ViewAugmentation,
    augment,
    blur_kernel_size,
    gaussian_blur,
    grayscale,
    sample_crop_boxes,
)


def _images(n=256, c=3, size=32):
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))  # fmt: skip


def test_output_is_float_in_unit_range_with_input_shape():
    out = augment(_images(), ViewAugmentation(solarize_p=0.5), torch.Generator().manual_seed(1))
    assert out.dtype == torch.float32
    assert out.shape == (256, 3, 32, 32)
    assert out.min() >= 0 and out.max() <= 1


def test_same_seed_same_views_and_different_samples_differ():
    images = _images(8)[:1].repeat(8, 1, 1, 1)
    a = augment(images, ViewAugmentation(), torch.Generator().manual_seed(3))
    b = augment(images, ViewAugmentation(), torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
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


def test_identity_configuration_returns_the_image():
    config = ViewAugmentation(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0,
                              jitter_p=0, grayscale_p=0, blur_p=0, solarize_p=0)  # fmt: skip
    images = _images(16)
    out = augment(images, config, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, images.float() / 255, atol=1e-5, rtol=0)


def test_flip_rate_matches_p():
    config = ViewAugmentation(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.5,
                              jitter_p=0, grayscale_p=0, blur_p=0, solarize_p=0)  # fmt: skip
    images = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand(4000, 1, 16, 16).contiguous()
    out = augment(images, config, torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 0] > out[:, 0, 0, -1]).float().mean()
    assert flipped.item() == pytest.approx(0.5, abs=0.03)


def test_grayscale_and_blur_keep_constant_images_constant():
    images = torch.full((4, 3, 16, 16), 0.25)
    assert torch.allclose(grayscale(images), torch.full((4, 1, 16, 16), 0.25))
    out = gaussian_blur(images, torch.full((4,), 1.5), torch.ones(4, dtype=torch.bool), 5)
    assert torch.allclose(out, images, atol=1e-6)
    assert blur_kernel_size(224, 224) == 23 and blur_kernel_size(8, 8) == 3


def test_bad_ranges_are_rejected():
    with pytest.raises(ValueError, match="crop_scale"):
        ViewAugmentation(crop_scale=(0.9, 0.1))
    with pytest.raises(ValueError, match="hflip_p"):
        ViewAugmentation(hflip_p=1.5)
