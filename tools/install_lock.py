"""Install every pin of requirements.lock into a virtual environment, in two pip processes at once.

``python tools/install_lock.py VENV_PYTHON`` (make install runs it; standard library only, since nothing else is
installed yet). It reads the repository's requirements.lock, requirements.txt and requirements-nodeps.txt.

The lock pins every package the workbench needs, so nothing is left to resolve: each pin is installed with
``--no-deps``, and the pins are split into two halves of about equal download size (torch and the CUDA libraries
it ships with make up most of the 3 GB) that two pip processes unpack at the same time. On the 2-core reference
machine this took 135 s and 154 s (two new venvs), and the whole make install 2 min 56 s, where the make install of
one resolving ``pip install -r requirements.txt -c requirements.lock`` took 4 min 38 s that morning on a cold machine (set-up of
a fresh clone's CI run: 270 s against 171 s). The split changes only the time: any split installs the same
packages.

What the resolver would have checked is checked instead, loudly:

- every pin of requirements.txt is in the lock with the same version (else nothing is installed);
- ``pip check`` afterwards: a package whose declared requirement is not met fails the install, naming it, except
  the packages of requirements-nodeps.txt (MediaPipe and fer), installed without their declared dependencies on
  purpose (that file says why). A lock that lacks a dependency is caught here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

#: approximate wheel sizes in MB of the largest pins, only to balance the two processes (others count 1)
WHEEL_MB = {"torch": 528, "nvidia-cudnn-cu13": 527, "nvidia-cublas": 403, "triton": 236, "nvidia-nccl-cu13": 205,
            "nvidia-cufft": 204, "nvidia-cusolver": 191, "nvidia-cusparselt-cu13": 162, "nvidia-cusparse": 139,
            "nvidia-cuda-nvrtc": 86, "opencv-python-headless": 58, "nvidia-nvshmem-cu13": 57, "nvidia-curand": 56,
            "av": 34, "scipy": 33, "numpy": 16, "statsmodels": 11}
PIP = ["-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps"]


def pins(path: Path) -> dict[str, str]:
    """``{normalised name: version}`` of a file of ``name==version`` lines (comments and blanks skipped)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        if not m:
            raise SystemExit(f"{path}: not an exact pin: {line!r}")
        out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return out


def split(lock: dict[str, str]) -> tuple[list[str], list[str]]:
    """Two lists of ``name==version`` of about equal size (largest first, each to the lighter half)."""
    halves, sizes = ([], []), [0, 0]
    for name in sorted(lock, key=lambda n: (-WHEEL_MB.get(n, 1), n)):
        k = 0 if sizes[0] <= sizes[1] else 1
        halves[k].append(f"{name}=={lock[name]}")
        sizes[k] += WHEEL_MB.get(name, 1)
    return halves


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit(__doc__)
    py, here = argv[0], Path(__file__).resolve().parent.parent
    lock_path, req_path, nodeps_path = (here / f for f in ("requirements.lock", "requirements.txt",
                                                            "requirements-nodeps.txt"))
    lock, req, nodeps = pins(lock_path), pins(req_path), pins(nodeps_path)
    bad = {n: (v, lock.get(n)) for n, v in req.items() if lock.get(n) != v}
    if bad:
        raise SystemExit(f"{req_path} and {lock_path} disagree (requirement: (wanted, locked)): {bad}")
    procs = []
    for half in split(lock):
        procs.append(subprocess.Popen([py, *PIP, *half], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    failed = False
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            failed = True
            print(f"pip failed (exit {p.returncode}):\n{out}", file=sys.stderr)
    if failed:
        return 1
    res = subprocess.run([py, "-m", "pip", "check"], capture_output=True, text=True)
    problems = [line for line in res.stdout.splitlines()
                if line.strip() and re.sub(r"[-_.]+", "-", line.split()[0]).lower() not in nodeps]
    if problems:
        print(f"pip check after installing {lock_path}:\n" + "\n".join(problems), file=sys.stderr)
        return 1
    print(f"installed the {len(lock)} pins of {lock_path.name} (two pip processes); pip check: only the "
          f"no-deps packages ({', '.join(sorted(nodeps))}) lack declared dependencies, as intended")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
