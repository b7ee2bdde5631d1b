"""SAM prompts from label maps: exact boxes and centre-most points, seeded jitter, and prompt checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verticals.domains.medical.sam_prompts import PROMPT_MODES, check_prompts, prompts_from_label


def _label() -> np.ndarray:
    """12x16 map: class 1 a 3x4 rectangle (rows 2-4, cols 3-6), class 2 two single pixels, class 3 absent."""
    label = np.zeros((12, 16), dtype=np.int64)
    label[2:5, 3:7] = 1
    label[9, 1] = 2
    label[10, 14] = 2
    return label


def test_exact_prompts_are_tight_boxes_and_centre_most_points() -> None:
    prompts = prompts_from_label(_label(), 4, mode="box")
    assert set(prompts) == {"boxes", "points", "prompt_present"}
    assert prompts["boxes"].dtype == torch.float32 and prompts["points"].dtype == torch.float32
    assert prompts["prompt_present"].tolist() == [True, True, False]
    # class 1: columns 3..6, rows 2..4 -> (x0, y0, x1, y1) with exclusive right/bottom edges
    assert prompts["boxes"][0].tolist() == [3.0, 2.0, 7.0, 5.0]
    # its farthest-from-boundary pixels are (row 3, col 4) and (row 3, col 5): the first in raster order
    assert prompts["points"][0].tolist() == [4.0, 3.0]
    # class 2: one box spans both components; a single pixel is its own centre-most pixel
    assert prompts["boxes"][1].tolist() == [1.0, 9.0, 15.0, 11.0]
    assert tuple(prompts["points"][1].tolist()) in {(1.0, 9.0), (14.0, 10.0)}
    # absent class: the whole image and its centre, valid but flagged absent
    assert prompts["boxes"][2].tolist() == [0.0, 0.0, 16.0, 12.0]
    assert prompts["points"][2].tolist() == [8.0, 6.0]
    check_prompts(prompts["boxes"], prompts["points"], (12, 16))
    one_pixel = np.zeros((5, 5), dtype=np.int64)
    one_pixel[4, 4] = 1
    assert prompts_from_label(torch.from_numpy(one_pixel), 2)["boxes"][0].tolist() == [4.0, 4.0, 5.0, 5.0]
    for mode in PROMPT_MODES:  # without jitter every mode gives the exact prompts
        same = prompts_from_label(_label(), 4, mode=mode)
        assert all(torch.equal(same[key], prompts[key]) for key in prompts)


def test_box_jitter_moves_sides_outward_within_the_limit_and_is_seeded() -> None:
    label, exact = _label(), prompts_from_label(_label(), 4)["boxes"]
    draws = [
        prompts_from_label(label, 4, mode="box", jitter=3.0, generator=np.random.default_rng(s))
        for s in range(20)
    ]
    for prompts in draws:
        box = prompts["boxes"][0]
        assert (box[:2] <= exact[0, :2]).all() and (box[2:] >= exact[0, 2:]).all()  # outward only
        assert (exact[0, :2] - box[:2] <= 3.0).all() and (box[2:] - exact[0, 2:] <= 3.0).all()
        assert box[0] >= 0 and box[1] >= 0 and box[2] <= 16 and box[3] <= 12  # clipped to the image
        assert torch.equal(prompts["boxes"][2], exact[2])  # an absent class is not jittered
        assert torch.equal(
            prompts["points"], prompts_from_label(label, 4)["points"]
        )  # box mode: exact points
    assert len({tuple(p["boxes"][0].tolist()) for p in draws}) > 10
    again = prompts_from_label(label, 4, mode="box", jitter=3.0, generator=np.random.default_rng(0))
    assert torch.equal(again["boxes"], draws[0]["boxes"])
    first = prompts_from_label(label, 4, mode="box", jitter=3.0, generator=torch.Generator().manual_seed(1))
    second = prompts_from_label(label, 4, mode="box", jitter=3.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first["boxes"], second["boxes"])
    torch.manual_seed(5)
    global_first = prompts_from_label(label, 4, mode="box", jitter=3.0)
    torch.manual_seed(5)
    assert torch.equal(global_first["boxes"], prompts_from_label(label, 4, mode="box", jitter=3.0)["boxes"])


def test_point_mode_with_jitter_draws_random_pixels_of_the_class() -> None:
    label = _label()
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        prompts = prompts_from_label(label, 4, mode="point", jitter=1.0, generator=rng)
        x, y = (int(v) for v in prompts["points"][0].tolist())
        assert label[y, x] == 1
        seen.add((x, y))
        x2, y2 = (int(v) for v in prompts["points"][1].tolist())
        assert label[y2, x2] == 2
        assert torch.equal(prompts["boxes"], prompts_from_label(label, 4)["boxes"])  # point mode: exact boxes
    assert len(seen) > 6  # 12 pixels in class 1


def test_prompts_from_label_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"one \[H, W\] label map"):
        prompts_from_label(np.zeros((2, 4, 4), dtype=np.int64), 2)
    with pytest.raises(ValueError, match="integer class indices"):
        prompts_from_label(np.zeros((4, 4), dtype=np.float32), 2)
    with pytest.raises(ValueError, match=r"value\(s\) \[5\] outside the classes 0..3"):
        prompts_from_label(np.full((4, 4), 5), 4)
    with pytest.raises(ValueError, match="num_classes"):
        prompts_from_label(np.zeros((4, 4), dtype=np.int64), 1)
    with pytest.raises(ValueError, match="`mode` must be one of"):
        prompts_from_label(_label(), 4, mode="boxes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`jitter`"):
        prompts_from_label(_label(), 4, jitter=-1.0)
    with pytest.raises(TypeError, match="generator"):
        prompts_from_label(_label(), 4, jitter=1.0, generator=0)  # type: ignore[arg-type]


def test_check_prompts_accepts_valid_prompts_and_names_bad_ones() -> None:
    boxes = torch.tensor([[[0.0, 0.0, 32.0, 32.0], [4.0, 5.0, 6.0, 7.0]]])
    points = torch.tensor([[[0.0, 0.0], [31.5, 31.0]]])
    check_prompts(boxes, points, 32)
    check_prompts(boxes=boxes[0], image_size=32)
    check_prompts(points=points.numpy(), image_size=(32, 40))
    with pytest.raises(
        ValueError, match=r"`boxes` \(image 0, prompt 1\) is \(4.0, 5.0, 40.0, 7.0\).*x1 <= 32"
    ):
        check_prompts(torch.tensor([[[0.0, 0.0, 8.0, 8.0], [4.0, 5.0, 40.0, 7.0]]]), image_size=32)
    with pytest.raises(ValueError, match=r"prompt 0.*0 <= x0 < x1"):
        check_prompts(torch.tensor([[6.0, 5.0, 6.0, 7.0]]), image_size=32)  # x1 <= x0
    with pytest.raises(ValueError, match=r"prompt 0"):
        check_prompts(torch.tensor([[-1.0, 5.0, 6.0, 7.0]]), image_size=32)
    with pytest.raises(ValueError, match=r"shape \[K, 4\] or \[N, K, 4\]"):
        check_prompts(torch.zeros(2, 3), image_size=32)
    with pytest.raises(ValueError, match=r"shape \[K, 2\] or \[N, K, 2\]"):
        check_prompts(points=torch.zeros(1, 2, 2, 2), image_size=32)
    with pytest.raises(ValueError, match=r"`points` \(prompt 1\) is \(3.0, 32.0\).*0 <= y < 32"):
        check_prompts(points=torch.tensor([[1.0, 1.0], [3.0, 32.0]]), image_size=32)
    with pytest.raises(ValueError, match="NaN"):
        check_prompts(points=torch.tensor([[float("nan"), 1.0]]), image_size=32)
    with pytest.raises(ValueError, match="one of each per class"):
        check_prompts(boxes[0], points[0, :1], 32)
    with pytest.raises(ValueError, match="`image_size` is required"):
        check_prompts(boxes[0])
    with pytest.raises(ValueError, match="positive side"):
        check_prompts(boxes[0], image_size=(32, 0))
    # prompts flagged absent are not checked
    absent = torch.tensor([[0.0, 0.0, 0.0, 0.0], [4.0, 5.0, 6.0, 7.0]])
    check_prompts(absent, image_size=32, prompt_present=torch.tensor([False, True]))
    with pytest.raises(ValueError, match="prompt 0"):
        check_prompts(absent, image_size=32, prompt_present=torch.tensor([True, True]))
    with pytest.raises(ValueError, match="one flag per prompt"):
        check_prompts(absent, image_size=32, prompt_present=torch.tensor([True]))
