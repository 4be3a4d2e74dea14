"""LabConfig refuses every bad option with one clear line; plan_lab is reproducible and sane."""

from __future__ import annotations

import ipaddress

import pytest

from ztfm.errors import ConfigError
from ztfm.lab.spec import (
    ATTACKS,
    DEVICE_TYPES,
    SUBNET,
    LabConfig,
    parse_attacks,
    plan_lab,
    tools_needed,
)


def cfg(**kw: object) -> LabConfig:
    base: dict[str, object] = {
        "devices": 4,
        "duration_s": 60.0,
        "attacks": ("portscan", "syn_flood", "cnc_beacon"),
        "seed": 7,
        "run_id": "abc123",
    }
    base.update(kw)
    return LabConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"duration_s": 0}, "duration"),
        ({"duration_s": -5}, "duration"),
        ({"duration_s": 10}, "at least 20"),
        ({"duration_s": 1e9}, "duration"),
        ({"duration_s": float("nan")}, "duration"),
        ({"duration_s": "60"}, "duration"),
        ({"devices": 0}, "devices"),
        ({"devices": 201}, "devices"),
        ({"devices": 2.5}, "devices"),
        ({"attacks": ("nope",)}, "unknown attack 'nope'"),
        ({"attacks": ("portscan", "portscan")}, "once"),
        ({"seed": -1}, "seed"),
        ({"run_id": "AB12"}, "run id"),
        ({"run_id": "a"}, "run id"),
        ({"run_id": "abcdefghi"}, "run id"),
        ({"run_id": "ab/../x"}, "run id"),
        ({"run_id": ""}, "run id"),
        ({"snaplen": 10}, "snaplen"),
        ({"devices": 1, "attacks": ("bruteforce",)}, "plug"),
        ({"devices": 1, "attacks": ("mqtt_flood",), "run_id": "abc"}, None),
    ],
)
def test_bad_config_is_refused(kw: dict[str, object], needle: str | None) -> None:
    if needle is None:  # the one valid control case: a single sensor can flood MQTT
        assert cfg(**kw).devices == 1
        return
    with pytest.raises(ConfigError) as exc:
        cfg(**kw)
    msg = str(exc.value)
    assert needle in msg
    assert "\n" not in msg


@pytest.mark.parametrize("text", ["bogus", "portscan,bogus", "portscan,,nmap"])
def test_parse_attacks_rejects_unknown(text: str) -> None:
    with pytest.raises(ConfigError, match="unknown attack"):
        parse_attacks(text)


def test_parse_attacks_all_none_and_list() -> None:
    assert parse_attacks("all") == tuple(ATTACKS)
    assert parse_attacks("none") == ()
    assert parse_attacks(" portscan , udp_flood ") == ("portscan", "udp_flood")


def test_plan_is_reproducible_and_seed_dependent() -> None:
    a, b = plan_lab(cfg()), plan_lab(cfg())
    assert a == b
    many = cfg(devices=12, attacks=tuple(ATTACKS))
    plans = {plan_lab(LabConfig(**{**_asdict(many), "seed": s})).schedule for s in range(6)}
    assert len(plans) > 1


def _asdict(c: LabConfig) -> dict[str, object]:
    return {k: getattr(c, k) for k in ("devices", "duration_s", "attacks", "seed", "run_id")}


def test_plan_addresses_names_and_types() -> None:
    p = plan_lab(cfg(devices=9, attacks=tuple(ATTACKS), duration_s=200))
    net = ipaddress.ip_network(f"{SUBNET}.0/24")
    ips = [h.ip for h in p.hosts]
    assert len(set(ips)) == len(ips)
    assert all(
        ipaddress.ip_address(ip) in net and ipaddress.ip_address(ip).is_private for ip in ips
    )
    assert all(ns.startswith("ztfm-abc123-") for ns in p.namespaces)
    assert len(set(p.namespaces)) == len(p.namespaces)
    assert all(len(h.veth) <= 15 for h in p.hosts)
    assert len({h.veth for h in p.hosts}) == len(p.hosts)
    assert {d.kind for d in p.devices} == set(DEVICE_TYPES)


def test_schedule_is_ordered_disjoint_after_warmup_and_on_eligible_devices() -> None:
    c = cfg(devices=8, attacks=tuple(ATTACKS), duration_s=300)
    p = plan_lab(c)
    assert [e.attack for e in p.schedule] == list(ATTACKS)
    prev_end = 0.3 * 300
    for e in p.schedule:
        assert e.start_s >= prev_end
        assert e.end_s > e.start_s
        assert e.end_s <= 300
        prev_end = e.end_s
        kind = ATTACKS[e.attack]
        dev = p.host(e.device)
        assert dev.kind in kind.targets
        if kind.direction == "in":
            assert e.source == "atk"
        else:
            assert e.source == dev.name


def test_unknown_host_lookup_raises() -> None:
    with pytest.raises(ConfigError, match="no host"):
        plan_lab(cfg()).host("dev99")


def test_tools_needed_follow_the_attacks() -> None:
    assert "hping3" not in tools_needed(cfg(attacks=("portscan",)))
    assert "nmap" in tools_needed(cfg(attacks=("portscan",)))
    assert "hydra" in tools_needed(cfg(attacks=("bruteforce",)))
    assert set(tools_needed(cfg(attacks=()))) == {"ip", "tcpdump", "mosquitto", "openssl"}


def test_attack_spec_pins_devices() -> None:
    from ztfm.lab.spec import parse_attack_spec

    names, pins = parse_attack_spec("portscan@dev02, cnc_beacon@dev05 ,udp_flood")
    assert names == ("portscan", "cnc_beacon", "udp_flood")
    assert pins == (("portscan", "dev02"), ("cnc_beacon", "dev05"))
    c = cfg(devices=8, attacks=names, targets=pins)
    plan = plan_lab(c)
    by = {e.attack: e for e in plan.schedule}
    assert by["portscan"].target == "dev02" and by["portscan"].source == "atk"
    assert by["cnc_beacon"].source == "dev05"
    # pinning one attack does not move the seeded choice of the others
    free = plan_lab(cfg(devices=8, attacks=names))
    assert {e.attack: e.device for e in free.schedule}["udp_flood"] == by["udp_flood"].device


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("portscan@", "no device after '@'"),
        ("teleport@dev01", "unknown attack 'teleport'"),
        ("@dev01", "unknown attack ''"),
    ],
)
def test_attack_spec_rejects_bad_pins(text: str, needle: str) -> None:
    from ztfm.lab.spec import parse_attack_spec

    with pytest.raises(ConfigError, match=needle):
        parse_attack_spec(text)


@pytest.mark.parametrize(
    ("attacks", "targets", "needle"),
    [
        (("portscan",), (("portscan", "dev09"),), "no device 'dev09'"),
        (("portscan",), (("portscan", "atk"),), "no device 'atk'"),
        (("portscan",), (("portscan", "../x"),), "no device"),
        (("bruteforce",), (("bruteforce", "dev00"),), "cannot use dev00 (a sensor)"),
        (("mqtt_flood",), (("mqtt_flood", "dev01"),), "cannot use dev01 (a plug)"),
        (("portscan",), (("syn_flood", "dev01"),), "not in the attack list"),
        (("portscan",), (("portscan", "dev01"), ("portscan", "dev02")), "one device only"),
    ],
)
def test_bad_pins_are_refused(attacks: tuple[str, ...], targets: tuple[tuple[str, str], ...],
                              needle: str) -> None:  # fmt: skip
    with pytest.raises(ConfigError) as exc:
        cfg(attacks=attacks, targets=targets)
    assert needle in str(exc.value)


@pytest.mark.parametrize("w", [5.0, 59.0, "30", float("nan")])
def test_bad_warmup_is_refused(w: object) -> None:
    with pytest.raises(ConfigError, match="warm-up"):
        cfg(duration_s=60.0, warmup_s=w)


def test_warmup_moves_the_first_attack() -> None:
    p = plan_lab(cfg(duration_s=300.0, warmup_s=200.0))
    assert min(e.start_s for e in p.schedule) >= 200.0
    assert max(e.end_s for e in p.schedule) <= 300.0
