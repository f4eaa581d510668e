import os
import subprocess
import sys

import pytest

# allocate-and-touch a 5.8 MiB buffer 50 times (a proxy step's logits) and count the process's minor page faults
_PROBE = """
import resource, numpy as np, tads_assets
from tads_assets.core import malloc
for _ in range(5):
    np.ones((22, 256, 256), np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    a = np.ones((22, 256, 256), np.float32); b = np.exp(-a); del a, b
print(malloc.keep_freed_memory(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(env_value):
    env = {**os.environ, "TADS_MALLOC_TUNING": env_value}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True).stdout
    applied, faults = out.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensors_are_reused_instead_of_page_faulting_on_every_allocation():
    tuned, faults_tuned = _faults("on")
    default, faults_default = _faults("off")
    assert tuned and not default
    # glibc's defaults hand each freed 5.8 MiB block back, so every allocation faults its ~1,400 pages in again
    assert faults_default > 50 * 1000
    assert faults_tuned < faults_default / 20
