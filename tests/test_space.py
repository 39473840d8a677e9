"""The room on the module: the package writer ships whole what /cache could not hold a copy
of, refuses a target its system volume cannot hold, and `doit verify` fails a package the real
updater aborts for want of room (`DFOTA_ORACLE`: the oracle gets the same sizes)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dfota.core.errors import DfotaError
from dfota.core.volumes import DEFAULT_VOLUMES, MB, Volumes
from dfota.device.updater import NO_SPACE, apply_package
from dfota.formats.filelists import lists_in
from dfota.package.delta import build_delta
from dfota.package.mode import parse_mode
from dfota.proof.verify import VerifyInputs, VerifyReport, verify_package
from dfota.settings import DeltaSettings
from tests.builders import base_system, binary, edited, f, next_system
from tests.oracle import differences, model_device, model_outcome, real_run_device
from tests.test_delta import pair, quiet

BIG = "usr/lib/libbig.so"
SMALL_CACHE = Volumes.given(system=64 * MB, cache=256 * 1024)


def big_pair(tmp: Path, volumes: Volumes = DEFAULT_VOLUMES) -> DeltaSettings:
    """The sample pair plus a 400 KB library changed a little: its patch needs a copy of
    the source in /cache when /system is short of room."""
    data = binary(21, 400_000)
    settings = pair(tmp, source={**base_system(), BIG: f(data, 0o755)},
                    target={**next_system(), BIG: f(edited(data, 7, 300_000), 0o755)})
    return dataclasses.replace(settings, volumes=volumes)


def prove(settings: DeltaSettings, volumes: Volumes) -> VerifyReport:
    return verify_package(VerifyInputs(settings.workspace.pending_zip, Path(settings.base),
                                       settings.workspace.target_zip, parse_mode("all"),
                                       lists_in(settings.config_dir), volumes=volumes), quiet())


def kinds(settings: DeltaSettings) -> dict[str, dict]:
    changes = build_delta(settings, quiet()).summary["changes"]
    assert isinstance(changes, list)
    return {c["path"]: c for c in changes}


def test_a_file_whose_source_cache_cannot_hold_is_shipped_whole(tmp_path: Path) -> None:
    assert kinds(big_pair(tmp_path / "roomy"))[BIG]["kind"] == "patched"
    settings = big_pair(tmp_path / "tight", SMALL_CACHE)
    change = kinds(settings)[BIG]
    assert change["kind"] == "whole"
    assert change["reason"] == ("its source (400000 bytes) would not fit /cache (262144 bytes) "
                                "for the updater's copy")
    report = prove(settings, SMALL_CACHE)
    assert report.ok, [c for c in report.checks if not c.ok]


def test_a_target_the_system_volume_cannot_hold_is_refused_in_one_line(tmp_path: Path) -> None:
    settings = big_pair(tmp_path, Volumes.given(system=300_000, cache=64 * MB))
    with pytest.raises(DfotaError) as refused:
        build_delta(settings, quiet())
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"SYSTEM/{BIG}: the target's /system files take ")
    assert "more than the system volume's 300000 (system_size_mb): no package could work" \
        in message


def test_verify_fails_a_package_the_module_would_abort_for_room(tmp_path: Path) -> None:
    settings = big_pair(tmp_path)  # made for a roomy module, proven on a tight one
    build_delta(settings, quiet())
    report = prove(settings, SMALL_CACHE)
    assert not report.ok
    assert f"result {NO_SPACE}" in next(c for c in report.checks if not c.ok).detail


@pytest.mark.parametrize("made_for", [DEFAULT_VOLUMES, SMALL_CACHE], ids=["roomy", "tight"])
@pytest.mark.slow
def test_both_updaters_agree_on_a_tight_module(oracle: Path, tmp_path: Path,
                                               made_for: Volumes) -> None:
    """A package made for a roomy module aborts with 511 on one whose /cache is tight, on
    both updaters; the one made for the tight module reaches the target on both."""
    settings = big_pair(tmp_path, made_for)
    build_delta(settings, quiet())
    device = model_device(Path(settings.base), SMALL_CACHE)
    real = real_run_device(oracle, device.copy(), settings.workspace.pending_zip, SMALL_CACHE)
    result = apply_package(settings.workspace.pending_zip, device)
    found = differences(model_outcome(device, result), result.code, real)
    assert not found, "\n".join(found)
    assert (real.exit, real.error) == ((0, None) if made_for == SMALL_CACHE else (7, NO_SPACE))
