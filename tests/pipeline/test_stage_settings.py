"""The settings record every pipeline keeps (d2sfm/pipeline/stage_settings.py), and the shared extract-pairs-match
stages of localization on a rerun with more images or other matching options."""

from __future__ import annotations

import pytest

from d2sfm.config import FeatureConfig, MatchConfig, RunConfig
from d2sfm.io.h5 import list_entries
from d2sfm.io.matches_h5 import matched_pairs
from d2sfm.matching.pairs import read_pairs
from d2sfm.pipeline.features import extract_and_match, match_settings
from d2sfm.pipeline.stage_settings import StageSettings
from d2sfm.pipeline.stages import RunFolder
from d2sfm.synthetic.scene import render_scene

ORDER = ("match", "database", "register")


def test_the_first_changed_stage_and_every_later_one_are_redone():
    state: dict = {}
    first = StageSettings(state, {"match": {"ratio": 1.0}, "database": {"pairs": "x"}, "register": {"k": 30}}, ORDER)
    assert first.redo == set()  # nothing recorded yet: nothing to redo
    for stage in ORDER:
        first.finished(stage)
    assert state["stage_settings"]["register"] == {"k": 30}
    same = StageSettings(state, {"match": {"ratio": 1.0}, "database": {"pairs": "x"}, "register": {"k": 30}}, ORDER)
    assert same.redo == set()
    later = StageSettings(state, {"match": {"ratio": 1.0}, "database": {"pairs": "x"}, "register": {"k": 10}}, ORDER)
    assert later.changed == "register" and later.redo == {"register"}
    earlier = StageSettings(state, {"match": {"ratio": 0.8}, "database": {"pairs": "x"}, "register": {"k": 30}}, ORDER)
    assert earlier.redo == set(ORDER)


def test_a_stage_without_a_record_counts_as_unchanged_and_tuples_compare_as_lists():
    state = {"stage_settings": {"match": {"scales": [1.0, 0.5]}}}  # an earlier release recorded no later stage
    settings = StageSettings(state, {"match": {"scales": (1.0, 0.5)}, "database": {"pairs": "y"},
                                     "register": {"k": 30}}, ORDER)
    assert settings.redo == set()


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    folder = tmp_path_factory.mktemp("views")
    render_scene(folder, count=3, width=160, height=120, focal=128.0)
    return folder / "images"


def test_a_rerun_extracts_images_added_since_and_rematches_for_other_options(views, weights_path, tmp_path):
    """The reviewer's case: a second run with one more image (a larger --top-k, more queries) must extract it and
    match its pairs, not skip extraction because the first run recorded its unreadable images; other matching
    options match every pair again."""
    names = sorted(path.name for path in views.iterdir())
    features = FeatureConfig(weights=str(weights_path), scales=(1.0,), conv="winograd")
    run = RunConfig(progress=False)

    def rerun(pairs, matching=MatchConfig()):
        folder = RunFolder(tmp_path / "out")
        settings = StageSettings(folder.state, {"match": match_settings(matching)}, ("match",))
        result = extract_and_match(features, matching, run, folder, views, sorted({n for p in pairs for n in p}),
                                   pairs, settings)
        folder.save()
        return result

    extracted, usable = rerun([(names[0], names[1])])
    assert extracted == set(names[:2]) and usable == [(names[0], names[1])]
    more = [(names[0], names[1]), (names[0], names[2])]
    extracted, usable = rerun(more)
    assert extracted == set(names) and usable == more
    assert set(list_entries(tmp_path / "out" / "features.h5")) == set(names)
    assert read_pairs(tmp_path / "out" / "pairs.txt") == more  # the pair list is this run's
    assert len(matched_pairs(tmp_path / "out" / "matches.h5")) == 2
    before = (tmp_path / "out" / "matches.h5").stat().st_mtime_ns
    rerun(more, MatchConfig(ratio=0.9))
    assert (tmp_path / "out" / "matches.h5").stat().st_mtime_ns != before  # matched again
    assert RunFolder(tmp_path / "out").state["stage_settings"]["match"] == {"min_similarity": None, "ratio": 0.9}


def test_features_of_other_settings_name_the_pipeline_options_that_give_them():
    """The reviewer's case: d2sfm.extract's defaults (single scale, the original's centres) differ from the
    pipelines'; a features.h5 from it in a scene folder must name the options that read it, not an option the
    pipeline does not have ("choose another output file")."""
    from d2sfm.pipeline.features import pipeline_remedy

    extract_defaults = {"scales": [1.0], "geometric_centres": False}
    remedy = pipeline_remedy(extract_defaults, ["geometric_centres", "scales"])
    assert remedy.startswith("rerun with the options they were extracted with (--original-centres --single-scale)")
    assert "--overwrite" in remedy
    assert pipeline_remedy({"scales": [0.5, 1.0, 2.0]}, ["scales"]).startswith("rerun without the options")
    assert pipeline_remedy({"scales": [0.75, 1.5]}, ["scales"]) == "pass --overwrite to extract them again"


def test_stages_to_redo_stay_recorded_until_they_have_run():
    """Killed after the first changed stage recorded its new settings: the later stages' old outputs must still be
    redone by the next run, although their own settings did not change."""
    order = ("pairs", "match", "localize")
    state: dict = {}
    first = StageSettings(state, {"pairs": {"k": 5}, "match": {"r": None}, "localize": {"n": 15}}, order)
    for stage in order:
        first.finished(stage)
    second = StageSettings(state, {"pairs": {"k": 10}, "match": {"r": None}, "localize": {"n": 15}}, order)
    assert second.redo == set(order)
    second.finished("pairs")  # ... saved with the next stage's record, then the run is killed
    third = StageSettings(state, {"pairs": {"k": 10}, "match": {"r": None}, "localize": {"n": 15}}, order)
    assert third.changed is None and third.redo == {"match", "localize"}
    third.finished("match")
    third.finished("localize")
    assert StageSettings(state, third.current, order).redo == set()


def test_an_earlier_release_s_folder_is_compared_with_what_it_ran():
    """Old folders have no record of a stage: compared with what that release did (no matching options), a rerun
    with --ratio matches again; a new folder is not said to have changed."""
    current = {"match": {"min_similarity": None, "ratio": 0.9}}
    old_folder = {"stage_seconds": {"extract": 1.0}}
    settings = StageSettings(old_folder, current, ("match",), implicit={"match": {"min_similarity": None,
                                                                                    "ratio": None}})
    assert settings.changed == "match" and settings.own_settings_changed("match")
    fresh = StageSettings({}, current, ("match",), implicit={"match": {"min_similarity": None, "ratio": None}})
    assert fresh.changed is None and not fresh.own_settings_changed("match")
    resumed = StageSettings({"stage_seconds": {"extract": 1.0}, "stage_settings": {}}, current, ("match",),
                            implicit={"match": {"min_similarity": None, "ratio": None}})
    assert resumed.changed is None  # this release's folder, killed before matching finished: nothing implied
    same = StageSettings({"stage_seconds": {}}, {"match": {"min_similarity": None, "ratio": None}}, ("match",),
                         implicit={"match": {"min_similarity": None, "ratio": None}})
    assert same.redo == set()


def test_an_earlier_stage_s_change_keeps_a_later_stage_s_output_unless_its_own_settings_changed():
    order = ("pairs", "match")
    state: dict = {}
    first = StageSettings(state, {"pairs": {"k": 5}, "match": {"r": None}}, order)
    first.finished("pairs")
    first.finished("match")
    pairs_only = StageSettings(dict(state), {"pairs": {"k": 10}, "match": {"r": None}}, order)
    assert "match" in pairs_only.redo and not pairs_only.own_settings_changed("match")  # kept pairs keep matches
    both = StageSettings(dict(state), {"pairs": {"k": 10}, "match": {"r": 0.9}}, order)
    assert both.changed == "pairs" and both.own_settings_changed("match")  # every match differs
