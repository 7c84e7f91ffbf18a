# Sourced by gpu_check.sh and device_plan.sh (with PY set): the benchmarks' baseline libraries
# (Liger, Cut Cross-Entropy) from ./.whl, installed into /tmp/site and put on PYTHONPATH. A
# caller that already did it (device_plan.sh, then gpu_check.sh in its build step) skips it.
if ls .whl/*.whl >/dev/null 2>&1 && [[ ":${PYTHONPATH:-}:" != *":/tmp/site:"* ]]; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
