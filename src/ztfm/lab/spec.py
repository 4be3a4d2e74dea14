"""What a lab run is: its configuration, fleet, addresses and attack schedule (pure, no I/O).

``plan_lab(config)`` turns a validated ``LabConfig`` into a ``LabPlan``: which namespaces exist,
which device runs which behaviour with which seed, and when each attack starts and stops (the
ground truth). The same config and seed always give the same plan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ztfm.errors import ConfigError

DEVICE_TYPES: tuple[str, ...] = ("sensor", "plug", "camera", "gateway")

SUBNET = "10.213.0"  # private /24 that exists only inside the lab's namespaces
PREFIX_LEN = 24
SERVICES_IP = f"{SUBNET}.2"  # broker, DNS, NTP, HTTPS firmware server, UDP sink, plug controller
ATTACKER_IP = f"{SUBNET}.3"  # attacker host and C&C server
FIRST_DEVICE_HOST = 10
MAX_DEVICES = 200
MAX_DURATION_S = 3600.0
NAME_RE = re.compile(r"^[a-z0-9]{3,8}$")
DEVICE_RE = re.compile(r"^dev(\d{2,3})$")


@dataclass(frozen=True, slots=True)
class AttackKind:
    """One attack the lab can launch.

    ``direction`` is ``"in"`` when the attacker host targets a device (the target's capture shows
    it) and ``"out"`` when a compromised device originates it (the source's capture shows it).
    ``targets`` lists the device types it may hit (or originate from). ``stealthy`` attacks are
    reported separately: they are meant to be hard.
    """

    name: str
    direction: str
    tool: str
    targets: tuple[str, ...]
    stealthy: bool = False


ATTACKS: dict[str, AttackKind] = {
    a.name: a
    for a in (
        AttackKind("portscan", "in", "nmap", DEVICE_TYPES),
        AttackKind("servicescan", "in", "nmap", DEVICE_TYPES),
        AttackKind("syn_flood", "in", "hping3", DEVICE_TYPES),
        AttackKind("udp_flood", "in", "hping3", DEVICE_TYPES),
        AttackKind("icmp_flood", "in", "hping3", DEVICE_TYPES),
        AttackKind("bruteforce", "in", "hydra", ("plug",)),
        AttackKind("mqtt_flood", "out", "python", ("sensor",)),
        AttackKind("mqtt_malformed", "out", "python", ("sensor",)),
        AttackKind("cnc_beacon", "out", "python", DEVICE_TYPES),
        AttackKind("telnet_propagation", "out", "python", DEVICE_TYPES),
        AttackKind("exfil", "out", "python", DEVICE_TYPES, stealthy=True),
    )
}

#: Tools every run needs, and the tool each attack needs.
BASE_TOOLS: tuple[str, ...] = ("ip", "tcpdump", "mosquitto", "openssl")

#: Packet rates and counts are explicit so that every flood is bounded.
FLOOD_RATE_PPS = 200
SCAN_MAX_RATE_PPS = 300


@dataclass(frozen=True, slots=True)
class LabConfig:
    """User-facing options of one run; ``__post_init__`` rejects every bad value."""

    devices: int
    duration_s: float
    attacks: tuple[str, ...]
    seed: int
    run_id: str
    snaplen: int = 192
    #: seconds of benign traffic before the first attack; None = max(10, 30 % of the run)
    warmup_s: float | None = None
    #: (attack, device) pairs pinning an attack to a device, e.g. (("portscan", "dev02"),);
    #: other attacks pick an eligible device from the seed.
    targets: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.devices, int) or not 1 <= self.devices <= MAX_DEVICES:
            raise ConfigError(f"devices must be an integer in 1..{MAX_DEVICES}, got {self.devices}")
        if not isinstance(self.duration_s, int | float) or not (
            0 < float(self.duration_s) <= MAX_DURATION_S
        ):
            raise ConfigError(
                f"duration must be in (0, {MAX_DURATION_S:.0f}] seconds, got {self.duration_s}"
            )
        if float(self.duration_s) < 20:
            raise ConfigError(
                f"duration must be at least 20 s (warm-up + attacks), got {self.duration_s}"
            )
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise ConfigError(f"unknown attack {unknown[0]!r}; known: {', '.join(ATTACKS)}")
        if len(set(self.attacks)) != len(self.attacks):
            raise ConfigError("each attack may be listed once")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed}")
        if not NAME_RE.match(self.run_id):
            raise ConfigError(f"run id must be 3-8 lowercase letters/digits, got {self.run_id!r}")
        if not 64 <= self.snaplen <= 65535:
            raise ConfigError(f"snaplen must be in 64..65535, got {self.snaplen}")
        for name in self.attacks:
            kind = ATTACKS[name]
            if not any(self.devices > i for i, t in enumerate(DEVICE_TYPES) if t in kind.targets):
                raise ConfigError(
                    f"attack {name!r} needs a device of type "
                    f"{'/'.join(kind.targets)}; add more devices"
                )

        if self.warmup_s is not None and not (
            isinstance(self.warmup_s, int | float)
            and 10.0 <= float(self.warmup_s) <= 0.9 * float(self.duration_s)
        ):
            raise ConfigError(
                f"warm-up must be between 10 s and 90 % of the run, got {self.warmup_s}"
            )
        pinned = [a for a, _ in self.targets]
        if len(set(pinned)) != len(pinned):
            raise ConfigError("each attack may be pinned to one device only")
        for name, dev in self.targets:
            if name not in self.attacks:
                raise ConfigError(f"target given for {name!r}, which is not in the attack list")
            m = DEVICE_RE.match(dev)
            if m is None or int(m.group(1)) >= self.devices:
                raise ConfigError(
                    f"no device {dev!r} in a lab of {self.devices} devices "
                    f"(dev00..dev{self.devices - 1:02d})"
                )
            dtype = DEVICE_TYPES[int(m.group(1)) % len(DEVICE_TYPES)]
            if dtype not in ATTACKS[name].targets:
                raise ConfigError(
                    f"attack {name!r} cannot use {dev} (a {dtype}); it needs a "
                    f"{'/'.join(ATTACKS[name].targets)}"
                )

    @property
    def prefix(self) -> str:
        """Prefix of every namespace of this run (``ztfm-<id>-``)."""
        return f"ztfm-{self.run_id}-"


def parse_attacks(text: str) -> tuple[str, ...]:
    """Parse ``"portscan,syn_flood"`` (or ``"all"``) into attack names; unknown names raise."""
    text = text.strip()
    if text == "all":
        return tuple(ATTACKS)
    if not text or text == "none":
        return ()
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    for n in names:
        if n not in ATTACKS:
            raise ConfigError(f"unknown attack {n!r}; known: {', '.join(ATTACKS)}")
    return names


def parse_attack_spec(text: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Parse ``"portscan@dev02,syn_flood"`` into attack names and (attack, device) pins.

    ``@devNN`` pins an attack to a device: the target of an inbound attack, the compromised
    source of an outbound one. Unknown attack names raise ``ConfigError``.
    """
    t = text.strip()
    if t in ("all", "none", ""):
        return parse_attacks(t), ()
    names: list[str] = []
    pins: list[tuple[str, str]] = []
    for part in t.split(","):
        name, sep, dev = (x.strip() for x in part.partition("@"))
        if not name and not sep:
            continue
        if name not in ATTACKS:
            raise ConfigError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")
        if sep and not dev:
            raise ConfigError(f"no device after '@' in {part.strip()!r}")
        names.append(name)
        if sep:
            pins.append((name, dev))
    return tuple(names), tuple(pins)


@dataclass(frozen=True, slots=True)
class Host:
    """One namespace of the lab with its address on the lab bridge."""

    name: str  # short role name, e.g. "dev03", "srv", "atk"
    netns: str  # full namespace name, e.g. "ztfm-ab12cd-dev03"
    ip: str
    veth: str  # bridge-side interface name (<= 15 chars)
    kind: str  # device type, or "services" / "attacker"
    seed: int


#: Pseudo-host for attacks aimed at the whole subnet (a worm's scan): labelled with address
#: 0.0.0.0, which the loader reads as "any peer but the fleet's services host".
LAN = Host(name="lan", netns="", ip="0.0.0.0", veth="", kind="lan", seed=0)


@dataclass(frozen=True, slots=True)
class AttackEvent:
    """One scheduled attack: the ground truth the labels are written from."""

    attack: str
    source: str  # host name ("atk" or a device name)
    target: str  # host name (a device, or "srv" for the broker)
    start_s: float  # offset from the run's start
    end_s: float
    seed: int

    @property
    def device(self) -> str:
        """The device whose own capture shows this attack."""
        return self.target if ATTACKS[self.attack].direction == "in" else self.source


@dataclass(frozen=True, slots=True)
class LabPlan:
    config: LabConfig
    bridge_ns: str
    services: Host
    attacker: Host
    devices: tuple[Host, ...]
    schedule: tuple[AttackEvent, ...]
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def hosts(self) -> tuple[Host, ...]:
        return (self.services, self.attacker, *self.devices)

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.bridge_ns, *(h.netns for h in self.hosts))

    def host(self, name: str) -> Host:
        if name == LAN.name:
            return LAN
        for h in self.hosts:
            if h.name == name:
                return h
        raise ConfigError(f"no host {name!r} in this lab")


def _host(cfg: LabConfig, name: str, ip_host: int, kind: str, seed: int) -> Host:
    return Host(
        name=name,
        netns=f"{cfg.prefix}{name}",
        ip=f"{SUBNET}.{ip_host}",
        veth=f"z{cfg.run_id}{ip_host}"[:15],
        kind=kind,
        seed=seed,
    )


def plan_lab(cfg: LabConfig) -> LabPlan:
    """Fleet, addresses and a non-overlapping attack schedule derived from ``cfg.seed``.

    Device types rotate (sensor, plug, camera, gateway, sensor, ...) so every type is present
    from four devices on. The first ~30 % of the run (at least 10 s) is benign warm-up; the rest
    is split into equal slots, one per attack, each attack taking ~60 % of its slot so that
    quiet gaps separate attacks and every window's label is unambiguous.
    """
    rng = np.random.default_rng(cfg.seed)
    seeds = rng.integers(0, 2**31 - 1, size=cfg.devices + 2 + len(cfg.attacks))
    services = _host(cfg, "srv", 2, "services", int(seeds[0]))
    attacker = _host(cfg, "atk", 3, "attacker", int(seeds[1]))
    devices = tuple(
        _host(
            cfg,
            f"dev{i:02d}",
            FIRST_DEVICE_HOST + i,
            DEVICE_TYPES[i % len(DEVICE_TYPES)],
            int(seeds[2 + i]),
        )
        for i in range(cfg.devices)
    )
    dur = float(cfg.duration_s)
    warmup = max(10.0, 0.3 * dur) if cfg.warmup_s is None else float(cfg.warmup_s)
    tail = 3.0
    schedule: list[AttackEvent] = []
    if cfg.attacks:
        slot = (dur - warmup - tail) / len(cfg.attacks)
        for j, name in enumerate(cfg.attacks):
            kind = ATTACKS[name]
            eligible = [d for d in devices if d.kind in kind.targets]
            dev = eligible[int(rng.integers(len(eligible)))]  # drawn even when pinned
            dev = next((d for d in devices if (name, d.name) in cfg.targets), dev)
            length = max(3.0, 0.6 * slot)
            start = warmup + j * slot + 0.2 * slot
            end = min(start + length, dur - tail)
            if kind.direction == "in":
                src, tgt = attacker.name, dev.name
            else:
                tgt = {"mqtt": services.name, "telnet": LAN.name}.get(name.split("_")[0], "atk")
                src = dev.name
            schedule.append(
                AttackEvent(
                    name, src, tgt, round(start, 3), round(end, 3), int(seeds[2 + cfg.devices + j])
                )
            )
    return LabPlan(
        config=cfg,
        bridge_ns=f"{cfg.prefix}br",
        services=services,
        attacker=attacker,
        devices=devices,
        schedule=tuple(schedule),
    )


def tools_needed(cfg: LabConfig) -> tuple[str, ...]:
    """Executables this run needs on PATH."""
    extra = {ATTACKS[a].tool for a in cfg.attacks} - {"python"}
    return tuple(dict.fromkeys((*BASE_TOOLS, *sorted(extra))))
