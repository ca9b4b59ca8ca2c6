"""Writes tests/reference/fixtures/frame_sample.json: the frame indices that B-VLLM's training code
chooses for a video of `duration` frames when `num_frames` are asked for (bvlm/mm_utils.py
frame_sample, mode 'uniform', copied below verbatim from zhuqiangLu/B-VLLM @ b604b70; the same as
VideoLLaMA2's). tests/data/loader_test.cc checks data/loader.h's uniform_frame_indices against it.

    /usr/bin/python3 tests/reference/make_frame_sample_fixtures.py
"""
import json
import os

import numpy as np


def frame_sample(duration, mode='uniform', num_frames=None, fps=None):
    if mode == 'uniform':
        assert num_frames is not None, "Number of frames must be provided for uniform sampling."
        # NOTE: v1 version
        # Calculate the size of each segment from which a frame will be extracted
        seg_size = float(duration - 1) / num_frames

        frame_ids = []
        for i in range(num_frames):
            # Calculate the start and end indices of each segment
            start = seg_size * i
            end = seg_size * (i + 1)
            # Append the middle index of the segment to the list
            frame_ids.append((start + end) / 2)

        return np.round(np.array(frame_ids) + 1e-6).astype(int)
    raise ValueError(mode)


def main():
    cases = []
    for num_frames in (1, 2, 3, 7, 8, 16, 32):
        for duration in list(range(1, 80)) + [99, 100, 101, 127, 128, 129, 333, 600, 1000, 3601, 10200]:
            cases.append({"duration": duration, "num_frames": num_frames,
                          "indices": [int(i) for i in frame_sample(duration, 'uniform', num_frames)]})
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "frame_sample.json")
    with open(out, "w") as f:
        f.write('{"generator": "tests/reference/make_frame_sample_fixtures.py", "numpy": "%s", "cases": [\n' %
                np.__version__)
        f.write(",\n".join(json.dumps(c, separators=(",", ":")) for c in cases))
        f.write("\n]}\n")
    print(f"wrote {out}: {len(cases)} cases")


if __name__ == "__main__":
    main()
