"""Train/test transforms and the authors' random erasing."""

import torch
from PIL import Image

from ibdml.config import load_params
from ibdml.data.transforms import (AuthorsRandomErasing, ERASE_FILL, PerImageStandardize,
                                   eval_transform, train_transform)


def test_output_shapes_and_per_image_standardisation():
    p = load_params(None, {"image_size": 32, "normalize": "per_image", "test_resize_ratio": 1.2})
    img = Image.new("RGB", (50, 40), (10, 200, 30))
    assert train_transform(p)(img).shape == eval_transform(p)(img).shape == (3, 32, 32)
    x = PerImageStandardize()(torch.rand(3, 8, 8))
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-5


def test_random_erasing_fills_a_rectangle_with_constants():
    torch.manual_seed(0)
    erase = AuthorsRandomErasing(p=1.0)
    x = torch.full((3, 40, 40), 7.0)
    y = erase(x)
    assert (x == 7.0).all()  # input untouched
    mask = y[0] != 7.0
    rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
    area = mask.sum() / mask.numel()
    assert 0.015 <= area <= 0.41
    assert mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # a full rectangle
    assert torch.allclose(y[:, mask][:, 0], torch.tensor(ERASE_FILL))
    assert torch.equal(AuthorsRandomErasing(p=0.0)(x), x)
