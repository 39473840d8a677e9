"""The linear power-loss proof (`tasks.power_loss`): each re-run that skips what it may ends
as the module's full re-run from the first statement does, at every step."""

from __future__ import annotations

from tasks.config import SAMPLE_DIR
from tasks.filelists import lists_in
from tasks.power_loss import MarkRecorder, Marks, for_each_power_loss
from tasks.updater import Package, UpdateResult, apply_package, load_package
from tasks.updater import resume_after_power_loss as full_rerun
from tasks.updater_fs import Device
from tasks.verify import device_from_targetfiles, minor_partitions
from tasks.zipio import ZipSource


def sample_pair() -> tuple[Package, Device]:
    base = ZipSource(SAMPLE_DIR / "firmware/upgrade/targetfiles.zip")
    device, _ = device_from_targetfiles(base, minor_partitions(base, lists_in(
        SAMPLE_DIR / "config")))
    return load_package(SAMPLE_DIR / "work/out/update.zip"), device


def skipping_reruns_agree_with_full_ones(pkg: Package, device: Device) -> tuple[int, int]:
    whole, marks = device.copy(), Marks()
    assert apply_package(pkg, whole, units=MarkRecorder(marks)).code == 0
    total = apply_package(pkg, device.copy()).steps
    rejoined = []

    def check(step: int, result: UpdateResult, after: Device) -> None:
        alone, finished = full_rerun(pkg, device, step)
        assert result.code == alone.code == 0, (step, result.message, alone.message)
        if result.rejoined is None:
            assert after.state() == finished.state(), step
        else:
            rejoined.append(step)
            assert finished.state() == whole.state(), step
        assert result.steps <= alone.steps, step

    for_each_power_loss(pkg, device, range(1, total + 2), check, follow=marks)
    return total, len(rejoined)


def test_the_sample_package_at_every_step() -> None:
    """The sample's script holds the units a re-run must run again, as the module does: a
    recursive mode that an exception undoes, a placeholder extracted then deleted, links
    made anew."""
    pkg, device = sample_pair()
    script = pkg.script.decode()
    for needle in ('set_perm_recursive(0, 0, 0700, 0600, "/system/etc/ql_secret")',
                   'delete("/system/usrdata/new_empty_dir/.dfota_keep")',
                   'symlink("ql_manager_cli"', 'package_extract_dir("system", "/system")'):
        assert needle in script
    total, rejoined = skipping_reruns_agree_with_full_ones(pkg, device)
    assert total > 60 and rejoined >= total - 2


def test_a_re_run_skips_the_units_before_the_cut() -> None:
    pkg, device = sample_pair()
    whole, marks = device.copy(), Marks()
    apply_package(pkg, whole, units=MarkRecorder(marks))
    steps: list[int] = []
    for_each_power_loss(pkg, device, [40], lambda s, r, d: steps.append(r.steps),
                        follow=marks)
    alone, _ = full_rerun(pkg, device, 40)
    assert steps and steps[0] < alone.steps // 4, (steps, alone.steps)
