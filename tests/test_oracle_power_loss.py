"""Power loss against the module's real updater (`DFOTA_ORACLE`): the host model's state after
a cut at step k (its /system, /cache and partitions) is where the real updater starts again,
as the module's recovery does at the next boot; it must reach the target, and the model's
re-run from the same state must agree with it. Every k for a package of up to 30 steps, ten
spread over the script (the first and the last among them) for a larger one; every k of
the larger one is a `slow` test."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfota.device.fs import Device
from dfota.device.interpreter import Package
from dfota.device.updater import PowerLoss, apply_package, load_package
from dfota.package.delta import build_delta
from tests.builders import BASE_REV, NEXT_REV, binary, d, edited, f, ln, version_text
from tests.oracle import (
    Outcome,
    differences,
    model_device,
    model_outcome,
    real_run_device,
)
from tests.test_delta import pair, quiet

EVERY_STEP_UP_TO = 30
SPREAD = 10


def cut_points(steps: int, every_up_to: int = EVERY_STEP_UP_TO, spread: int = SPREAD) -> list[int]:
    """Every step of a short script; `spread` steps evenly over a longer one, first and last
    included."""
    if steps <= every_up_to:
        return list(range(1, steps + 1))
    return sorted({1 + round(i * (steps - 1) / (spread - 1)) for i in range(spread)})


def cut_states(pkg: Package, device: Device, points: list[int]) -> Iterator[tuple[int, Device]]:
    """The model's device after the power is cut right after each of `points`: one run
    carried from cut to cut, a copy taken at each."""
    wanted = set(points)
    states: list[tuple[int, Device]] = []
    twin = device.copy()

    def after_step(step: int) -> None:
        if step in wanted:
            states.append((step, twin.copy()))

    with contextlib.suppress(PowerLoss):
        apply_package(pkg, twin, power_loss_at=max(points), after_step=after_step)
    yield from states


def check_every_cut(oracle: Path, source_zip: Path, package: Path, *,
                    every_up_to: int = EVERY_STEP_UP_TO) -> int:
    """The real updater started on the model's state after each cut reaches what its whole
    run reaches, and the model's re-run agrees with it. How many cuts were tried."""
    pkg = load_package(package)
    device = model_device(source_zip)
    whole = real_run_device(oracle, device.copy(), package)
    assert whole.exit == 0, whole.pipe
    steps = apply_package(pkg, device.copy()).steps
    points = cut_points(steps, every_up_to)
    tried = 0
    for step, state in cut_states(pkg, device, points):
        real = real_run_device(oracle, state.copy(), package)
        again = apply_package(pkg, state)
        found = differences(model_outcome(state, again), again.code, real)
        assert not found, f"power loss after step {step} of {steps}:\n" + "\n".join(found)
        assert_reaches(real, whole, f"power loss after step {step} of {steps}")
        tried += 1
    assert tried == len(points) and points[0] == 1 and points[-1] == steps
    return tried


def assert_reaches(real: Outcome, whole: Outcome, when: str) -> None:
    assert real.exit == 0, f"{when}: real updater exit {real.exit}: {real.pipe[-4:]}"
    wrong = [p for p in set(real.system) | set(whole.system)
             if real.system.get(p) != whole.system.get(p)]
    assert not wrong, f"{when}: differs from the whole run at {sorted(wrong)[:5]}"


def small_pair() -> tuple[dict, dict]:
    """Every kind of step in a short script: a patch, a deletion, a removed folder, a link
    retargeted, a new file in a new folder, modes, and the kernel patched."""
    lib = binary(11, 30_000)
    source = {
        "etc/quectel-project-version": f(version_text(BASE_REV, "2022-06-22,15:50")),
        "bin/lib.so": f(lib, 0o755),
        "bin/link": ln("lib.so"),
        "etc/old.conf": f("old\n"),
        "usr/gone": d(),
        "usr/gone/file": f("gone"),
        "dev/pts": d(),
        "firmware/image/m.mdt": f(binary(12, 2000)),
    }
    target = {
        "etc/quectel-project-version": f(version_text(NEXT_REV, "2022-07-15,09:30")),
        "bin/lib.so": f(edited(lib, 10, 20_000), 0o755),
        "bin/link": ln("/bin/lib.so"),
        "usr/new": d(0o750),
        "usr/new/file": f("new\n", 0o4755, 1000, 1000),
        "dev/pts": d(),
        "firmware/image/m.mdt": f(binary(12, 2000)),
    }
    return source, target


def test_cut_points_cover_every_step_of_a_short_script_and_ten_of_a_long_one() -> None:
    assert cut_points(30) == list(range(1, 31))
    points = cut_points(301)
    assert len(points) == SPREAD and points[0] == 1 and points[-1] == 301


@pytest.mark.slow
def test_a_power_loss_at_every_step_of_a_short_package_ends_on_the_real_updater(
        oracle: Path, tmp_path: Path) -> None:
    source, target = small_pair()
    settings = pair(tmp_path, source=source, target=target, lists={})
    build_delta(settings, quiet())
    steps = apply_package(settings.workspace.pending_zip, model_device(Path(settings.base))).steps
    assert steps <= EVERY_STEP_UP_TO
    assert check_every_cut(oracle, Path(settings.base), settings.workspace.pending_zip) == steps


@pytest.mark.slow
def test_a_power_loss_spread_over_the_sample_pairs_package_ends_on_the_real_updater(
        oracle: Path, tmp_path: Path) -> None:
    settings = pair(tmp_path)
    build_delta(settings, quiet())
    assert check_every_cut(oracle, Path(settings.base), settings.workspace.pending_zip) == SPREAD


@pytest.mark.slow
def test_a_power_loss_at_every_step_of_the_sample_pairs_package_ends_on_the_real_updater(
        oracle: Path, tmp_path: Path) -> None:
    settings = pair(tmp_path)
    build_delta(settings, quiet())
    steps = apply_package(settings.workspace.pending_zip, model_device(Path(settings.base))).steps
    assert check_every_cut(oracle, Path(settings.base), settings.workspace.pending_zip,
                           every_up_to=steps) == steps
