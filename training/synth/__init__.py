"""Synthetic training data: samplers, rendering, labels and the sharded writer.

Modules: `poses` (SMPL poses by family), `shapes` (betas), `cameras` (intrinsics and
placement), `appearance` (clothing colours, skin, lighting), `backgrounds`, `occluders`,
`degrade` (blur, noise, JPEG), `labels` (keypoints with visibility), `splits` (per-split
settings), `engine` (one sample), `writer` (shards on disk), `preview` (contact sheet).
"""
