"""The fault suite's scenarios (inspector/faults.py), each run as an operator would: the real command line
in a child process, on hostile inputs made on the spot.  The large-image scenario uses smaller images here."""

import pytest

from inspector import faults


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def model(work):
    return faults.make_model(work / "model.safetensors")


def check(tally: faults.Tally) -> faults.Tally:
    assert tally.crashes == 0 and not tally.problems, tally.problems
    return tally


def test_every_entry_of_a_hostile_folder_is_accounted_for(work, model):
    tally = check_scenario(faults.hostile_folder, work, model)
    assert tally.files == tally.accounted >= 25


def test_damaged_model_files_and_checkpoints_are_refused_with_a_sentence(work, model):
    tally = check_scenario(faults.damaged_models, work, model)
    assert tally.nan_refused


def test_two_writers_on_one_database_both_finish_with_every_row(work, model):
    tally = faults.Tally()
    faults.two_writers(work, model, tally, n=200)
    check(tally)
    assert tally.writers_ok == 2 and tally.rows_lost == 0


def test_a_killed_writer_is_interrupted_and_resume_loses_nothing(work, model):
    tally = faults.Tally()
    faults.killed_writer(work, model, tally, n=300)
    check(tally)
    assert tally.rows_lost == 0


def test_damaged_videos_end_failed_with_the_frames_lost_counted(work, model):
    check_scenario(faults.damaged_videos, work, model)


def test_bad_sources_are_refused_without_a_database_or_opencv_chatter(work, model):
    check_scenario(faults.bad_sources, work, model)


def test_large_images_are_inspected_with_overlays_and_their_memory_reported(work):
    tally = faults.Tally()
    faults.big_images(work, tally, side=3000, count=2)
    check(tally)
    assert tally.peak_rss_mb > 0


def check_scenario(scenario, work, model) -> faults.Tally:
    tally = faults.Tally()
    scenario(work, model, tally)
    return check(tally)
