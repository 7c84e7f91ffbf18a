"""Tuning files shipped with the package (data only; nothing to import).

`<device slug>.json` files written by `xlmr-fast tune` on our GPUs (slug: the
`torch.cuda.get_device_name()` with every run of other characters than letters and digits
replaced by `_`, e.g. `NVIDIA_H100_80GB_HBM3.json`). `xlmr_fast/tuning.py` reads the one for the
GPU a job runs on; a file in the user's cache (`~/.cache/xlmr_fast/tuning/`, written by
`xlmr-fast tune` there) overrides it key by key. Commit a file here only from a device run,
with its timings (the file keeps them), and say so in bench/results/.
"""
