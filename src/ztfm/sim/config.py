"""Simulation configuration: TOML with documented defaults (``default.toml``), strictly checked."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from ztfm.errors import ConfigError


@dataclass(frozen=True, slots=True)
class FleetConfig:
    dataset: str = "skab"
    path: str = ""
    devices: int = 0
    virtual_per_type: int = 4


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    name: str = "ae"
    hidden: tuple[int, ...] = (32, 8)
    lr: float = 0.003
    batch_size: int = 64
    windows: tuple[int, ...] = (5, 20, 60)
    ewma_alphas: tuple[float, ...] = (0.1,)
    target_far: float = 0.01
    smoothing: int = 5
    whiten: bool = False
    threshold_margin: float = 1.2


@dataclass(frozen=True, slots=True)
class RoundsConfig:
    rounds: int = 10
    fraction: float = 1.0
    min_devices: int = 2
    local_epochs: int = 3
    prox_mu: float = 0.0
    deadline_s: float = 30.0
    server_lr: float = 1.0


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    base_s: float = 2.0
    straggler_prob: float = 0.0
    straggler_factor: float = 20.0
    failure_prob: float = 0.0
    uplink_bps: float = 1e6
    downlink_bps: float = 4e6


@dataclass(frozen=True, slots=True)
class CompareConfig:
    local_only: bool = True
    centralised: bool = True


@dataclass(frozen=True, slots=True)
class RobustConfig:
    aggregator: str = "mean"
    f: int = 0
    equal_weights: bool = False


@dataclass(frozen=True, slots=True)
class AttackConfig:
    name: str = "none"
    fraction: float = 0.0
    params: dict[str, float | int | str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TrustSimConfig:
    enabled: bool = False
    gate: float = 0.4


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    clip_norm: float = 0.0
    noise_multiplier: float = 0.0
    noise: str = "distributed"
    epsilon_budget: float = 0.0
    delta: float = 1e-5


@dataclass(frozen=True, slots=True)
class SecAggSimConfig:
    enabled: bool = False
    group_size: int = 0
    neighbours: int = 0
    threshold: float = 0.0
    min_survivors: float = 0.0
    bits: int = 32
    dropout_prob: float = 0.0


@dataclass(frozen=True, slots=True)
class CompressionConfig:
    keep_ratio: float = 1.0
    error_feedback: bool = True
    rounding: str = "stochastic"
    value_bits: int = 4


@dataclass(frozen=True, slots=True)
class AttestationConfig:
    backend: str = "none"
    tampered: int = 0


@dataclass(frozen=True, slots=True)
class SimConfig:
    seed: int = 0
    fleet: FleetConfig = field(default_factory=FleetConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    robust: RobustConfig = field(default_factory=RobustConfig)
    attacks: AttackConfig = field(default_factory=AttackConfig)
    trust: TrustSimConfig = field(default_factory=TrustSimConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    attestation: AttestationConfig = field(default_factory=AttestationConfig)
    secagg: SecAggSimConfig = field(default_factory=SecAggSimConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seed": self.seed}
        for f in fields(self):
            if f.name != "seed":
                section = getattr(self, f.name)
                out[f.name] = {g.name: _plain(getattr(section, g.name)) for g in fields(section)}
        return out


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return dict(v)
    return list(v) if isinstance(v, tuple) else v


_SECTIONS = {f.name: f for f in fields(SimConfig) if f.name != "seed"}


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    where = f"[{section}] {key}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if isinstance(default, dict):
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float, str)) and not isinstance(v, bool)
            for k, v in value.items()
        ):
            raise ConfigError(f"{where} must be a table of numbers or strings, got {value!r}")
        return dict(value)
    if isinstance(default, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        kind = type(default[0]) if default else float
        out = []
        for v in value:
            if kind is float and isinstance(v, (int, float)) and not isinstance(v, bool):
                out.append(float(v))
            elif isinstance(v, kind) and not isinstance(v, bool):
                out.append(v)
            else:
                raise ConfigError(f"{where} must be a list of {kind.__name__}, got {value!r}")
        return tuple(out)
    raise ConfigError(f"{where}: unsupported option")  # pragma: no cover


def from_mapping(data: dict[str, Any], base: SimConfig | None = None) -> SimConfig:
    """Overlay a parsed TOML mapping on ``base`` (defaults), rejecting unknown keys."""
    cfg = base or SimConfig()
    for key, value in data.items():
        if key == "seed":
            cfg = replace(cfg, seed=_coerce("top", "seed", value, 0))
            continue
        if key not in _SECTIONS:
            raise ConfigError(f"unknown section [{key}]; known: {', '.join(sorted(_SECTIONS))}")
        if not isinstance(value, dict):
            raise ConfigError(f"[{key}] must be a table")
        section = getattr(cfg, key)
        known = {f.name: getattr(section, f.name) for f in fields(section)}
        updates = {}
        for k, v in value.items():
            if k not in known:
                raise ConfigError(f"unknown option [{key}] {k}; known: {', '.join(sorted(known))}")
            updates[k] = _coerce(key, k, v, known[k])
        cfg = replace(cfg, **{key: replace(section, **updates)})
    validate(cfg)
    return cfg


def load_config(path: str | Path | None = None) -> SimConfig:
    """The defaults from ``default.toml``, overlaid with the user's file if given."""
    text = resources.files("ztfm.sim").joinpath("default.toml").read_text()
    cfg = from_mapping(tomllib.loads(text))
    if path is None:
        return cfg
    p = Path(path)
    try:
        user = tomllib.loads(p.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: no such config file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc})") from exc
    return from_mapping(user, cfg)


def validate(cfg: SimConfig) -> None:
    """Range checks that types alone cannot express."""
    checks = [
        (
            cfg.fleet.dataset in {"skab", "lab", "ton_iot"},
            "[fleet] dataset must be skab, lab or ton_iot",
        ),
        (cfg.fleet.devices >= 0, "[fleet] devices must be >= 0"),
        (cfg.fleet.virtual_per_type >= 1, "[fleet] virtual_per_type must be >= 1"),
        (0.0 < cfg.detector.target_far < 0.5, "[detector] target_far must be in (0, 0.5)"),
        (cfg.detector.smoothing >= 0, "[detector] smoothing must be >= 0"),
        (cfg.detector.threshold_margin > 0, "[detector] threshold_margin must be > 0"),
        (cfg.detector.lr > 0, "[detector] lr must be > 0"),
        (cfg.rounds.rounds >= 1, "[rounds] rounds must be >= 1"),
        (0.0 < cfg.rounds.fraction <= 1.0, "[rounds] fraction must be in (0, 1]"),
        (cfg.rounds.min_devices >= 1, "[rounds] min_devices must be >= 1"),
        (cfg.rounds.local_epochs >= 1, "[rounds] local_epochs must be >= 1"),
        (cfg.rounds.prox_mu >= 0, "[rounds] prox_mu must be >= 0"),
        (cfg.rounds.deadline_s > 0, "[rounds] deadline_s must be > 0"),
        (0 <= cfg.network.straggler_prob <= 1, "[network] straggler_prob must be in [0, 1]"),
        (0 <= cfg.network.failure_prob <= 1, "[network] failure_prob must be in [0, 1]"),
        (
            cfg.network.uplink_bps > 0 and cfg.network.downlink_bps > 0,
            "[network] link speeds must be > 0",
        ),
        (cfg.robust.f >= 0, "[robust] f must be >= 0"),
        (0.0 <= cfg.attacks.fraction < 1.0, "[attacks] fraction must be in [0, 1)"),
        (
            cfg.attacks.name == "none" or cfg.attacks.fraction > 0,
            "[attacks] an attack needs fraction > 0",
        ),
        (0.0 <= cfg.trust.gate < 1.0, "[trust] gate must be in [0, 1)"),
        (cfg.privacy.clip_norm >= 0, "[privacy] clip_norm must be >= 0"),
        (cfg.privacy.noise_multiplier >= 0, "[privacy] noise_multiplier must be >= 0"),
        (
            cfg.privacy.noise_multiplier == 0 or cfg.privacy.clip_norm > 0,
            "[privacy] noise needs clip_norm > 0 (the noise is calibrated to the clip norm)",
        ),
        (
            cfg.privacy.noise in {"distributed", "central"},
            "[privacy] noise must be distributed or central",
        ),
        (cfg.privacy.epsilon_budget >= 0, "[privacy] epsilon_budget must be >= 0"),
        (0 < cfg.privacy.delta < 1, "[privacy] delta must be in (0, 1)"),
        (cfg.attestation.backend in {"none", "soft"}, "[attestation] backend must be none or soft"),
        (cfg.attestation.tampered >= 0, "[attestation] tampered must be >= 0"),
        (
            cfg.attestation.tampered == 0 or cfg.attestation.backend != "none",
            "[attestation] tampered devices need an attestation backend",
        ),
        *_secagg_checks(cfg),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


def _secagg_checks(cfg: SimConfig) -> list[tuple[bool, str]]:
    s, c = cfg.secagg, cfg.compression
    return [
        (s.group_size == 0 or s.group_size >= 2, "[secagg] group_size must be 0 or >= 2"),
        (
            s.neighbours == 0 or (s.neighbours >= 2 and s.neighbours % 2 == 0),
            "[secagg] neighbours must be 0 (auto) or an even number >= 2",
        ),
        (
            s.threshold >= 0 and (s.threshold < 1 or float(s.threshold).is_integer()),
            "[secagg] threshold must be 0 (auto), a fraction in (0, 1) or a whole count",
        ),
        (
            s.min_survivors >= 0 and (s.min_survivors < 1 or float(s.min_survivors).is_integer()),
            "[secagg] min_survivors must be 0 (= threshold), a fraction in (0, 1) or a count",
        ),
        (s.bits in {16, 32, 64}, "[secagg] bits must be 16, 32 or 64"),
        (0.0 <= s.dropout_prob < 1.0, "[secagg] dropout_prob must be in [0, 1)"),
        (
            not s.enabled or cfg.privacy.clip_norm > 0,
            "[secagg] needs [privacy] clip_norm > 0 (it sets the fixed-point range)",
        ),
        (
            not s.enabled or s.group_size > 0 or cfg.robust.aggregator in ("mean", "fedavg"),
            "[secagg] a robust aggregator needs group_size > 0 (it runs over group sums)",
        ),
        (
            not s.enabled or not cfg.trust.enabled or s.group_size > 0,
            "[trust] with [secagg] needs group_size > 0: trust is judged from group sums "
            "(one group hides every single update)",
        ),
        (0.0 < c.keep_ratio <= 1.0, "[compression] keep_ratio must be in (0, 1]"),
        (
            isinstance(c.value_bits, int) and 2 <= c.value_bits <= 16,
            "[compression] value_bits must be in [2, 16]",
        ),
        (
            c.rounding in {"stochastic", "nearest"},
            "[compression] rounding must be stochastic or nearest",
        ),
    ]
