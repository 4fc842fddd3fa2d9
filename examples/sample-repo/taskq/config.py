"""Reading the queue configuration file."""

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_WORKERS = 4


class ConfigError(ValueError):
    """The configuration file is malformed."""


@dataclass
class QueueConfig:
    name: str
    workers: int = DEFAULT_WORKERS
    max_attempts: int = 3


@dataclass
class Config:
    queues: dict[str, QueueConfig] = field(default_factory=dict)
    port: int = 8080


def parse_value(raw: str):
    raw = raw.strip()
    if raw.isdigit():
        return int(raw)
    if raw in ("true", "false"):
        return raw == "true"
    return raw.strip('"')


def load_config(path: Path) -> Config:
    """Parse the configuration file at `path` into a Config."""
    config = Config()
    section = None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            config.queues[section] = QueueConfig(name=section)
            continue
        if "=" not in line:
            raise ConfigError(f"{path}:{number}: expected key = value")
        key, value = (part.strip() for part in line.split("=", 1))
        if section is None:
            setattr(config, key, parse_value(value))
        else:
            setattr(config.queues[section], key, parse_value(value))
    return config
