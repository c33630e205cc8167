"""The Python API: the README's example runs as written, and the API's promises (typed configs with a comment per
field, presets, names that a module cannot hide)."""

import ast
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import d2sfm
from d2sfm.errors import D2sfmError

REPO = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md has no API example (an api-example marker before a python block)"
    return match.group(1)


def test_the_readme_example_runs_as_written(tmp_path, weights_path):
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=900,
                         env={**os.environ, "D2SFM_WEIGHTS": str(weights_path)})
    assert run.returncode == 0, run.stderr[-3000:]
    registered, points = map(int, re.search(r"^(\d+) images, (\d+) points$", run.stdout, re.M).groups())
    assert registered >= 5 and points > 100, run.stdout  # 6 renders of a textured courtyard
    extracted, matched, pairs = map(int, re.search(r"^(\d+) images extracted, (\d+) of (\d+) pairs matched$",
                                                   run.stdout, re.M).groups())
    assert (extracted, matched, pairs) == (6, 15, 15)
    scene = tmp_path / "outputs" / "api_demo"
    for name in ("features.h5", "matches.h5", "database.db", "stats.json", "model.png", "sparse/0",
                 "by_stage/features.h5", "by_stage/matches.h5", "by_stage/pairs.txt"):
        assert (scene / name).exists(), name
    assert "mapping" in run.stdout and "'extract'" in run.stdout  # the statistics printed are stats.json's
    assert "[extract]" not in run.stdout + run.stderr  # the library logs; this program configured no logging


def test_library_code_logs_and_prints_nothing(capsys, caplog):
    """What the commands show comes from the d2sfm logger: a program that imports d2sfm silences or redirects it."""
    import logging

    from d2sfm.pipeline.stages import Stages

    with caplog.at_level(logging.INFO, logger="d2sfm"):
        Stages().run("example", False, lambda: None)
        Stages().run("example", True, lambda: None)
    assert [record.getMessage() for record in caplog.records] == ["[example]", "[example] done earlier, skipped"]
    assert capsys.readouterr().out == ""


def test_an_imported_command_module_does_not_hide_the_api_function():
    import d2sfm.extract
    import d2sfm.localize
    import d2sfm.match
    import d2sfm.reconstruct
    import d2sfm.refine
    import d2sfm.train  # noqa: F401
    from d2sfm import api
    from d2sfm.training import trainer

    assert (d2sfm.extract, d2sfm.match, d2sfm.reconstruct, d2sfm.localize, d2sfm.refine, d2sfm.train) == (
        api.extract, api.match, api.reconstruct, api.localize, api.refine, trainer.train)


def test_importing_d2sfm_stays_light():
    """The API is loaded on first use: ``import d2sfm`` alone imports neither torch nor pycolmap."""
    code = "import sys, d2sfm\nassert not {'torch', 'pycolmap'} & set(sys.modules), 'heavy import'\n"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_every_config_field_has_a_default_and_a_comment():
    source = (REPO / "d2sfm" / "config.py").read_text(encoding="utf-8")
    lines = source.splitlines()
    classes = [node for node in ast.parse(source).body if isinstance(node, ast.ClassDef)]
    fields = [(cls.name, node) for cls in classes for node in cls.body if isinstance(node, ast.AnnAssign)]
    assert len(fields) > 40
    for name, node in fields:
        assert node.value is not None, f"{name}.{node.target.id} has no default"
        composed = "default_factory" in ast.unparse(node.value)
        assert composed or "#" in lines[node.lineno - 1], f"{name}.{node.target.id} has no comment"


def test_presets_and_their_refusals():
    assert {"d2-ms", "d2-ms-unrefined", "d2-ss", "d2-ss-unrefined", "d2-original", "sift"} <= set(d2sfm.PRESETS)
    single = d2sfm.preset("d2-ss", run=d2sfm.RunConfig(device="cpu"))
    assert single.features.scales == (1.0,) and single.refine.enabled and single.run.device == "cpu"
    assert d2sfm.PRESETS["d2-ms"] == d2sfm.ReconstructionConfig()  # the command's defaults
    assert not d2sfm.PRESETS["d2-original"].features.geometric_centres
    with pytest.raises(D2sfmError, match="no preset"):
        d2sfm.preset("d2-xl")
    with pytest.raises(D2sfmError, match="method"):
        d2sfm.FeatureConfig(method="orb")
    with pytest.raises(dataclasses.FrozenInstanceError):
        single.features.method = "sift"


def test_localize_refuses_what_it_does_not_know(tmp_path):
    with pytest.raises(D2sfmError, match="no benchmark"):
        d2sfm.localize("cmu", tmp_path)
    with pytest.raises(D2sfmError, match="takes a AachenConfig"):
        d2sfm.localize("aachen", tmp_path, d2sfm.InLocConfig())


def test_retrieval_pairs_need_the_features_file():
    names = [f"{i:03d}.jpg" for i in range(101)]
    with pytest.raises(D2sfmError, match="global descriptors"):
        d2sfm.pairs(names)  # auto: above 100 images, retrieval
    assert len(d2sfm.pairs(names[:5])) == 10


def test_evaluation_and_refinement_are_functions_of_the_api(tmp_path):
    """What evaluate poses / evaluate gt / refine do on the command line, a script calls directly."""
    truth = tmp_path / "truth.txt"
    truth.write_text("a.jpg 1 0 0 0 0 0 0\nb.jpg 1 0 0 0 1 0 0\n")
    predicted = tmp_path / "predicted.txt"
    predicted.write_text("a.jpg 1 0 0 0 0.1 0 0\n")  # 0.1 m off; b.jpg missing
    scores = d2sfm.evaluate_poses(truth, predicted, "0.25,2;0.05,1")
    assert scores.recalls == [50.0, 0.0] and scores.missing == ["b.jpg"]
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(D2sfmError, match="empty.txt: holds no poses"):
        d2sfm.evaluate_poses(empty, predicted)
    (tmp_path / "images").mkdir()
    with pytest.raises(D2sfmError, match="no such COLMAP database or model folder"):
        d2sfm.refine(tmp_path / "database.db", tmp_path / "images")
    with pytest.raises(D2sfmError, match="RefineConfig.method"):
        d2sfm.refine(tmp_path / "database.db", tmp_path / "images", method="bogus")
    with pytest.raises(D2sfmError, match="not a COLMAP model folder"):
        d2sfm.refine(tmp_path / "images", tmp_path / "images")
    for target, options, named in [(tmp_path / "images", {"weights": "d2_tf"}, "weights"),
                                   (tmp_path / "images", {"method": "featuremetric"}, "method"),
                                   (tmp_path / "database.db", {"complete_tracks": True}, "complete_tracks"),
                                   (tmp_path / "database.db", {"weights": "d2_tf"}, "weights")]:
        with pytest.raises(D2sfmError, match=named):  # refused, not ignored
            d2sfm.refine(target, tmp_path / "images", **options)
