"""Writes tests/reference/fixtures/clip_image.safetensors: B-VLLM's pixel pre-processing computed the
way Hugging Face's CLIPImageProcessor (openai/clip-vit-large-patch14-336) and LLaVA's expand2square
compute it (../shared/research/bvllm.md §2.1), for tests/data/clip_image_test.cc.

The steps are transformers' (image_processing_clip.py and image_transforms.py), written out here
with the same libraries because transformers itself is not installed:
  - expand2square (mode "pad" only): a square of side max(w, h) filled with
    tuple(int(m * 255) for m in mean), the image pasted at ((side - w) // 2, (side - h) // 2);
  - resize: get_resize_output_image_size (short side = size, long side = int(size * long / short)),
    then PIL.Image.fromarray(u8).resize((w, h), resample=BICUBIC), back to a u8 array;
  - center_crop: top = (h - crop) // 2, left = (w - crop) // 2, zero padding when the image is
    smaller (transformers' exact index arithmetic);
  - rescale: (u8.astype(float64) * (1 / 255)).astype(float32);
  - normalize: (x - mean) / std in float32 (mean and std cast to float32), then HWC -> CHW.

Per case NAME: NAME.image (u8 [H, W, 3], the input), NAME.options (i64 [size, crop, pad]),
NAME.mean_std (f64 [2, 3]), NAME.padded (pad mode: u8, the square), NAME.resized (u8 after
resize), NAME.pixel_values (f32 [3, crop, crop]). The full-size case frame336 has no stored input
(frame336_pattern(), which the C++ test repeats, makes it: 480x640 like a video frame) and, to
stay small, keeps of the resized and cropped u8 [336, 336, 3] only its FNV-1a 64 hash
(frame336.cropped_fnv1a, the u64's bits as i64 [1]) and every 8th row (frame336.cropped_every8),
and pixel_values[:, ::16, ::16] (frame336.pixel_values_every16).

    /usr/bin/python3 tests/reference/make_clip_image_fixtures.py   # needs numpy, PIL, torch

Pillow's version is written into the file's metadata.
"""
import math
import os

import numpy as np
import PIL
import torch
from PIL import Image

from safetensors_writer import save_safetensors

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def expand2square(image, background):
    # LLaVA / VideoLLaMA2 mm_utils.expand2square.
    pil = Image.fromarray(image)
    width, height = pil.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(pil.mode, (side, side), background)
    result.paste(pil, ((side - width) // 2, (side - height) // 2))
    return np.array(result)


def resize_output_size(height, width, size):
    # transformers.image_transforms.get_resize_output_image_size with default_to_square=False.
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def resize(image, size):
    out_h, out_w = resize_output_size(image.shape[0], image.shape[1], size)
    return np.array(Image.fromarray(image).resize((out_w, out_h), resample=Image.BICUBIC))


def center_crop(image, crop):
    # transformers.image_transforms.center_crop on an HWC array, padding path included.
    orig_h, orig_w = image.shape[:2]
    top = (orig_h - crop) // 2
    bottom = top + crop
    left = (orig_w - crop) // 2
    right = left + crop
    if top >= 0 and bottom <= orig_h and left >= 0 and right <= orig_w:
        return image[top:bottom, left:right]
    new_h, new_w = max(crop, orig_h), max(crop, orig_w)
    new_image = np.zeros_like(image, shape=(new_h, new_w, image.shape[2]))
    top_pad = math.ceil((new_h - orig_h) / 2)
    left_pad = math.ceil((new_w - orig_w) / 2)
    new_image[top_pad : top_pad + orig_h, left_pad : left_pad + orig_w] = image
    top, bottom, left, right = top + top_pad, bottom + top_pad, left + left_pad, right + left_pad
    return new_image[max(0, top) : min(new_h, bottom), max(0, left) : min(new_w, right)]


def preprocess(image, size, crop, pad, mean=CLIP_MEAN, std=CLIP_STD):
    out = {}
    if pad:
        image = expand2square(image, tuple(int(m * 255) for m in mean))
        out["padded"] = image
    resized = resize(image, size)
    out["resized"] = resized
    cropped = center_crop(resized, crop)
    out["cropped"] = cropped
    x = (cropped.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)
    out["pixel_values"] = np.ascontiguousarray(x.transpose(2, 0, 1))
    return out


def frame336_pattern(height=480, width=640):
    # Gradients, a pseudo-random texture and an 8-pixel checkerboard (sharp edges make the
    # bicubic filter overshoot, so clipping is exercised); tests/data/clip_image_test.cc repeats it.
    y, x, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(3), indexing="ij")
    v = x * 3 + y * 5 + c * 80 + ((x * y * 7 + c * 13) % 97) * 2 + ((x // 8 + y // 8) % 2) * 64
    return (v % 256).astype(np.uint8)


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def main():
    rng = np.random.default_rng(20241124)
    cases = [
        # name, (H, W), size, crop, pad
        ("landscape", (30, 40), 24, 24, False),
        ("portrait", (45, 23), 24, 24, False),
        ("already_size", (24, 24), 24, 24, False),
        ("upscale", (10, 17), 24, 24, False),
        ("upscale_square", (13, 13), 24, 24, False),
        ("tall_thin", (99, 7), 24, 24, False),
        ("one_row", (1, 5), 24, 24, False),
        ("odd", (31, 57), 24, 24, False),
        ("short_side_is_size_wide", (24, 61), 24, 24, False),
        ("short_side_is_size_tall", (50, 24), 24, 24, False),
        ("downscale_4x", (97, 131), 24, 24, False),
        ("crop_smaller", (30, 40), 24, 20, False),
        ("crop_larger_pads_zeros", (30, 41), 20, 24, False),
        ("pad_landscape", (30, 40), 24, 24, True),
        ("pad_portrait", (45, 23), 24, 24, True),
        ("pad_odd_difference", (20, 27), 24, 24, True),
        ("pad_square", (24, 24), 24, 24, True),
    ]
    tensors = {}

    def put(name, key, array):
        tensors[f"{name}.{key}"] = torch.from_numpy(np.ascontiguousarray(array))

    for name, (h, w), size, crop, pad in cases:
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        out = preprocess(image, size, crop, pad)
        put(name, "image", image)
        put(name, "options", np.array([size, crop, int(pad)], dtype=np.int64))
        put(name, "mean_std", np.array([CLIP_MEAN, CLIP_STD], dtype=np.float64))
        if pad:
            put(name, "padded", out["padded"])
        put(name, "resized", out["resized"])
        put(name, "pixel_values", out["pixel_values"])

    # Options other than CLIP's: mean/std 0.5 (and so the pad colour 127).
    image = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    half = (0.5, 0.5, 0.5)
    out = preprocess(image, 24, 24, True, mean=half, std=half)
    put("other_mean_std", "image", image)
    put("other_mean_std", "options", np.array([24, 24, 1], dtype=np.int64))
    put("other_mean_std", "mean_std", np.array([half, half], dtype=np.float64))
    put("other_mean_std", "padded", out["padded"])
    put("other_mean_std", "resized", out["resized"])
    put("other_mean_std", "pixel_values", out["pixel_values"])

    # Full size, as B-VLLM runs it: a 480x640 frame -> 336x448 -> 336x336.
    out = preprocess(frame336_pattern(), 336, 336, False)
    cropped = np.ascontiguousarray(out["cropped"])
    put("frame336", "cropped_fnv1a", np.array([fnv1a64(cropped.tobytes())], dtype=np.uint64).view(np.int64))
    put("frame336", "cropped_every8", cropped[::8])
    put("frame336", "pixel_values_every16", out["pixel_values"][:, ::16, ::16])

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "clip_image.safetensors")
    save_safetensors(path, tensors, {"format": "pt", "pillow": PIL.__version__, "numpy": np.__version__})
    print(f"wrote {path}: {len(tensors)} tensors, {os.path.getsize(path)} bytes, Pillow {PIL.__version__}")


if __name__ == "__main__":
    main()
