"""The linear power-loss proof (`dfota.device.power_loss`): each re-run that skips what it may ends
as the module's full re-run from the first statement does, at every step."""

from __future__ import annotations

from pathlib import Path

from dfota.device.fs import Device
from dfota.device.interpreter import Package
from dfota.device.power_loss import for_each_power_loss
from dfota.device.units import MarkRecorder, Marks
from dfota.device.updater import UpdateResult, apply_package, load_package
from dfota.device.updater import resume_after_power_loss as full_rerun
from dfota.package.delta import build_delta
from tests.builders import BASE_REV, NEXT_REV, binary, d, f, ln, version_text
from tests.oracle import model_device
from tests.test_delta import pair, quiet
from tests.test_updater import APP1, MOUNT, device, package, sha1


def sample_pair(tmp: Path) -> tuple[Package, Device]:
    """The sample chain's package and a module running its source."""
    settings = pair(tmp)
    build_delta(settings, quiet())
    return load_package(settings.workspace.pending_zip), model_device(Path(settings.base))


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


def test_the_sample_package_at_every_step(tmp_path: Path) -> None:
    """The sample pair's package: every kind of change, names of every sort."""
    pkg, device = sample_pair(tmp_path)
    for needle in (b"package_extract_dir(", b"symlink(", b"delete_recursive(", b"set_perm(",
                   b"apply_patch(\"MTD:boot"):
        assert needle in pkg.script
    total, rejoined = skipping_reruns_agree_with_full_ones(pkg, device)
    assert total > 60 and rejoined >= total - 2


def test_a_re_run_skips_the_units_before_the_cut(tmp_path: Path) -> None:
    pkg, device = sample_pair(tmp_path)
    whole, marks = device.copy(), Marks()
    apply_package(pkg, whole, units=MarkRecorder(marks))
    steps: list[int] = []
    for_each_power_loss(pkg, device, [40], lambda s, r, d: steps.append(r.steps),
                        follow=marks)
    alone, _ = full_rerun(pkg, device, 40)
    assert steps and steps[0] < alone.steps // 4, (steps, alone.steps)


def test_a_placeholder_types_changed_and_nested_exceptions(tmp_path: Path) -> None:
    """An empty folder's placeholder extracted then deleted, a link that becomes a file and a
    file that becomes a folder, modes set recursively then undone twice in a tree."""
    source = {
        "etc/quectel-project-version": f(version_text(BASE_REV, "2022-06-22,15:50")),
        "bin/tool": ln("busybox"),
        "bin/busybox": f(binary(3, 5000), 0o755),
        "etc/conf": f("a file\n"),
    }
    target = {
        "etc/quectel-project-version": f(version_text(NEXT_REV, "2022-07-15,09:30")),
        "bin/tool": f(binary(4, 3000), 0o755),
        "bin/busybox": f(binary(3, 5000), 0o755),
        "etc/conf": d(),
        "etc/conf/a": f("inside\n"),
        "opt/empty": d(0o700),
        "opt/app": d(),
        "opt/app/bin": d(),
        **{f"opt/app/bin/t{i}": f(f"tool {i}\n", 0o755 if i % 3 else 0o4750, 0, i % 2)
           for i in range(12)},
        **{f"opt/app/share/d{i}": f(f"data {i}\n", 0o600 if i == 5 else 0o644)
           for i in range(12)},
    }
    settings = pair(tmp_path, source=source, target=target, lists={})
    build_delta(settings, quiet())
    pkg = load_package(settings.workspace.pending_zip)
    assert b".dfota_keep" in pkg.script and b"set_perm_recursive" in pkg.script
    total, rejoined = skipping_reruns_agree_with_full_ones(pkg, model_device(Path(settings.base)))
    assert total > 40 and rejoined >= total - 2


def every_step_agrees(pkg: Package, device: Device) -> int:
    """`skipping_reruns_agree_with_full_ones` without a count: the re-runs run whole."""
    whole, marks = device.copy(), Marks()
    assert apply_package(pkg, whole, units=MarkRecorder(marks)).code == 0
    total = apply_package(pkg, device.copy()).steps

    def check(step: int, result: UpdateResult, after: Device) -> None:
        alone, finished = full_rerun(pkg, device, step)
        assert result.code == alone.code, step
        assert (whole if result.rejoined is not None else after).state() == \
            finished.state(), step

    return for_each_power_loss(pkg, device, range(1, total + 1), check, follow=marks)


def test_a_mode_set_back_later_is_skipped_and_a_read_of_it_runs_the_re_run_whole(
        tmp_path: Path) -> None:
    """set_perm 0644 then 0755 on one file: a re-run after the second skips the first (the
    second sets the mode back before anything reads it). But a statement that reads the
    mode between them, once what it depends on changed, makes the re-run run whole."""
    app = sha1(APP1)
    quiet_pair = (MOUNT + 'set_perm(0, 0, 0644, "/system/bin/app");\n'
                  'set_perm(0, 0, 0755, "/system/bin/app");\n'
                  'package_extract_file("conf", "/system/data/conf");\n')
    pkg = load_package(package(tmp_path, quiet_pair, {"conf": b"a=1\n"}))
    assert every_step_agrees(pkg, device()) == 0
    branchy = (MOUNT + 'set_perm(0, 0, 0644, "/system/bin/app");\n'
               f'file_getprop("/system/data/conf", "a") == "1" && '
               f'apply_patch_check("/system/bin/app", "{app}");\n'
               'set_perm(0, 0, 0755, "/system/bin/app");\n'
               'package_extract_file("conf", "/system/data/conf");\n')
    pkg = load_package(package(tmp_path, branchy, {"conf": b"a=1\n"}))
    assert every_step_agrees(pkg, device()) == 1  # the cut after the last step
