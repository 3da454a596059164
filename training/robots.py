"""Robot configs: which RLDS step features hold a robot's action, proprio and images.

Pure Python (no torch, no TensorFlow) so the controller's checks can import it.
Keys are paths inside one RLDS step, e.g. ``observation/state``; the flat key in
the stored ``tf.train.Example`` is ``steps/`` + that path.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class RobotConfigError(ValueError):
    """A robot config is malformed, unknown, or does not fit a dataset."""


@dataclasses.dataclass(frozen=True)
class RobotConfig:
    """The feature keys and dimensions one robot's policy is trained on."""

    name: str
    action_key: str
    action_dim: int
    proprio_key: str
    proprio_dim: int
    image_keys: tuple[str, ...] = ()
    instruction_key: str = "language_instruction"
    # Dims to normalise (OpenVLA's "mask"); None = all. LIBERO's gripper is already -1/+1.
    action_norm_mask: tuple[bool, ...] | None = None
    # Keys that exist in this robot's datasets but must never feed the policy,
    # with the reason: seed 003 issue 3 (libero's 7-dim joint_state).
    forbidden_keys: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for field in ("action_dim", "proprio_dim"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise RobotConfigError(f"robot {self.name}: {field} must be a positive int, got {value!r}")
        for key in (self.action_key, self.proprio_key):
            if key in self.forbidden_keys:
                raise RobotConfigError(
                    f"robot {self.name}: key {key!r} must not be used: {self.forbidden_keys[key]}"
                )
        if self.action_norm_mask is not None and len(self.action_norm_mask) != self.action_dim:
            raise RobotConfigError(
                f"robot {self.name}: action_norm_mask has {len(self.action_norm_mask)} entries, action_dim is {self.action_dim}"
            )

    def with_keys(self, action_key: str | None = None, proprio_key: str | None = None) -> RobotConfig:
        """This config with other action/proprio keys (re-validated)."""
        changes: dict[str, Any] = {}
        if action_key:
            changes["action_key"] = action_key
        if proprio_key:
            changes["proprio_key"] = proprio_key
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (as written into stats files and cache manifests)."""
        out = dataclasses.asdict(self)
        out["image_keys"] = list(self.image_keys)
        out["action_norm_mask"] = None if self.action_norm_mask is None else list(self.action_norm_mask)
        out["forbidden_keys"] = dict(self.forbidden_keys)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> RobotConfig:
        """Build from a mapping, naming the source and field on error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise RobotConfigError(f"{source}: unknown field(s) {unknown}; known: {sorted(fields)}")
        missing = sorted(f for f in ("name", "action_key", "action_dim", "proprio_key", "proprio_dim") if f not in data)
        if missing:
            raise RobotConfigError(f"{source}: missing field(s) {missing}")
        kwargs = dict(data)
        kwargs["image_keys"] = tuple(kwargs.get("image_keys", ()))
        kwargs["forbidden_keys"] = dict(kwargs.get("forbidden_keys") or {})
        if kwargs.get("action_norm_mask") is not None:
            kwargs["action_norm_mask"] = tuple(bool(v) for v in kwargs["action_norm_mask"])
        try:
            return cls(**kwargs)
        except RobotConfigError as exc:
            raise RobotConfigError(f"{source}: {exc}") from None


LIBERO = RobotConfig(
    name="libero",
    action_key="action",
    action_dim=7,  # 6 arm deltas + gripper
    proprio_key="observation/state",
    proprio_dim=8,  # 7 joint positions + gripper
    image_keys=("observation/image", "observation/wrist_image"),
    action_norm_mask=(True,) * 6 + (False,),
    forbidden_keys={
        "observation/joint_state": (
            "joint_state is 7-dim (joints without the gripper); libero proprio is "
            "observation/state, 8-dim (seed 003 known issue 3)"
        ),
    },
)

ROBOTS: dict[str, RobotConfig] = {LIBERO.name: LIBERO}


def get_robot(name_or_path: str) -> RobotConfig:
    """A built-in robot by name, or one read from a ``.json``/``.yaml`` file."""
    if name_or_path in ROBOTS:
        return ROBOTS[name_or_path]
    path = Path(name_or_path)
    if path.suffix in (".json", ".yaml", ".yml"):
        if not path.is_file():
            raise RobotConfigError(f"{path}: robot config file not found")
        text = path.read_text()
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml  # only needed for YAML robot files; pyyaml is a base dependency

            data = yaml.safe_load(text)
        if not isinstance(data, dict):
            raise RobotConfigError(f"{path}: expected a mapping of robot fields")
        return RobotConfig.from_dict(data, source=str(path))
    raise RobotConfigError(f"unknown robot {name_or_path!r}; built-in: {sorted(ROBOTS)} (or pass a .json/.yaml file)")
