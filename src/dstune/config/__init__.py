from dstune.config.load import apply_override, dump_config, load_config, validate_config
from dstune.config.schema import RunConfig

__all__ = ["RunConfig", "apply_override", "dump_config", "load_config", "validate_config"]
