"""Nearest-neighbour search of the memory bank on the CPU: torch (what PatchCore uses) against faiss.

    python benchmarks/nn_search.py          (faiss-cpu must be installed to compare; it is not a dependency)

Times both on the shapes the default detector meets: one live frame's cells (1280x720 at a quarter
scale, 40 x 23 cells) and a folder batch (32 images of 29 x 29 cells), against a 2048-patch bank of
232-dimensional descriptors, and checks that they agree.
"""

import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.patchcore import nearest_distance  # noqa: E402


def best_of(fn, repeat: int = 20) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1000


def main() -> None:
    import faiss

    g = torch.Generator().manual_seed(0)
    bank = torch.randn(2048, 232, generator=g)
    index = faiss.IndexFlatL2(232)
    index.add(bank.numpy())
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), faiss {faiss.__version__} "
          f"({faiss.omp_get_max_threads()} threads); bank 2048 x 232")
    for label, n in (("live frame, 920 cells", 920), ("folder batch, 26912 cells", 32 * 841)):
        q = torch.randn(n, 232, generator=g)
        ours = nearest_distance(q, bank)
        theirs = torch.from_numpy(index.search(q.numpy(), 1)[0][:, 0]).clamp_min(0).sqrt()
        assert torch.allclose(ours, theirs, atol=1e-3), "the two searches disagree"
        t_torch = best_of(lambda q=q: nearest_distance(q, bank))
        t_faiss = best_of(lambda q=q: index.search(q.numpy(), 1))
        print(f"  {label}: torch {t_torch:.2f} ms, faiss {t_faiss:.2f} ms")


if __name__ == "__main__":
    main()
