"""Command-line parsing shared by entry points: one typed dataclass from the arguments or from one JSON/YAML file."""

from __future__ import annotations

from transformers import HfArgumentParser


def parse_config(config_class: type, argv: list[str], *, prog: str, description: str):
    """An instance of ``config_class`` from ``argv``: options, or the path of one ``.json``/``.yaml``/``.yml`` file
    holding them all. Validation errors of the dataclass (ValueError) and unreadable files end like argparse's
    usage errors: a one-line message and exit status 2."""
    parser = HfArgumentParser(config_class, description=description, prog=prog)
    try:
        if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
            parse = parser.parse_json_file if argv[0].endswith(".json") else parser.parse_yaml_file
            (config,) = parse(argv[0], allow_extra_keys=False)
        else:
            (config,) = parser.parse_args_into_dataclasses(argv)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    return config
