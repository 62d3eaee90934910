"""The one table of `runtime/` keys: state replicas share through etcd (not config).

Keys are relative to the etcd prefix. Operators never write them (ApplyConfig refuses
`runtime/`); replicas write them through the `RuntimeStore` port and read them back
through the config watch.
"""

from __future__ import annotations

from typing import Final

from ..core.config_values import RUNTIME_KIND

RUNTIME_DIR: Final = f"{RUNTIME_KIND}/"
# `cooldowns/models/<id>` or `cooldowns/providers/<name>` → {"until", "reason"}; leased.
COOLDOWN_DIR: Final = f"{RUNTIME_DIR}cooldowns/"
# `usage/<replica id>` → that replica's quota counts and reservations; leased.
USAGE_DIR: Final = f"{RUNTIME_DIR}usage/"
# `preferences/<user hash>` → {"updated_at"}: drop the user from every replica's cache.
PREFERENCES_DIR: Final = f"{RUNTIME_DIR}preferences/"
# The decision-id signing key (hex), created by the first replica to start.
DECISION_KEY: Final = f"{RUNTIME_DIR}decision-key"
# Actor and note of the latest change written through modelroute (runtime/change_meta.py),
# written in the same transaction as the change it describes.
CHANGE_META_KEY: Final = f"{RUNTIME_DIR}change-meta"

# Keys that change every second or carry no config: they feed runtime state only and must
# not produce a new snapshot (WatchConfig clients would drop their caches).
# The rollout controller's leader key (`usage/rollout_controller.py` LEADER_KEY) too.
ROLLOUT_CONTROLLER_DIR: Final = f"{RUNTIME_DIR}rollout-controller/"
QUIET_RUNTIME_KEYS: Final = (
    USAGE_DIR,
    PREFERENCES_DIR,
    DECISION_KEY,
    CHANGE_META_KEY,
    ROLLOUT_CONTROLLER_DIR,
)


def cooldown_key(subject: str) -> str:
    """The key of a cooldown; `subject` is `models/<id>` or `providers/<name>`."""
    return f"{COOLDOWN_DIR}{subject}"
