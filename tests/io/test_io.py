"""features.h5 survives a writer killed at any moment: entries are complete or absent, never corrupt."""

import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np

from d2sfm.io.features import Features
from d2sfm.io.h5 import FeatureWriter, list_entries, read_features

WRITER = textwrap.dedent("""
    import sys, numpy as np
    from d2sfm.io.h5 import FeatureWriter
    from d2sfm.io.features import Features
    writer = FeatureWriter(sys.argv[1], {"test": 1})
    index = len(writer.done)
    print("ready", flush=True)
    while True:
        n = 500 + index
        rng = np.random.default_rng(index)
        writer.write(f"nested/img{index:05d}.jpg", Features(
            rng.random((n, 2), dtype=np.float32), np.ones(n, np.float32), np.full(n, index, np.float32),
            rng.random((n, 512), dtype=np.float32), (640, 480)))
        print(f"wrote {index}", flush=True)
        index += 1
""")


def test_sigkill_during_writes_never_corrupts_the_file(tmp_path):
    """Kills paced by the writer's own progress (not by the clock, which a loaded machine stretches): each kill
    lands a random moment after a random number of finished writes, most of them in the middle of the next one."""
    path = tmp_path / "features.h5"
    rng = random.Random(0)
    for _ in range(6):
        before = len(list_entries(path)) if path.exists() else 0
        process = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "ready"
        for _ in range(rng.randint(1, 4)):
            line = process.stdout.readline().strip()
            assert line.startswith("wrote "), line
        reported = int(line.split()[1]) + 1  # writes finished and reported, counting those of earlier runs
        time.sleep(rng.uniform(0.0, 0.03))
        process.send_signal(signal.SIGKILL)
        process.wait()
        names = list_entries(path)
        for name in names:
            features = read_features(path, name)
            index = int(name[-9:-4])
            assert len(features.keypoints) == 500 + index and (features.scores == index).all()
        # every reported write survived; at most the writes between the report and the kill were added
        assert sorted(names) == [f"nested/img{index:05d}.jpg" for index in range(len(names))]
        assert reported <= len(names) and len(names) > before


def test_rewriting_an_entry_replaces_it(tmp_path):
    path = tmp_path / "f.h5"
    writer = FeatureWriter(path, {"x": 1})
    for n in (5, 3):
        writer.write("a/b.png", Features(np.zeros((n, 2), np.float32), np.ones(n, np.float32),
                                         np.ones(n, np.float32), np.zeros((n, 512), np.float32), (4, 4)))
    assert list_entries(path) == ["a/b.png"] and len(read_features(path, "a/b.png").keypoints) == 3
